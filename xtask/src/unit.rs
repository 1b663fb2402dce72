//! The packaged copy of `systemd/pidcapd.service`: the same file, with `ExecStart=` naming the
//! package's binary directory instead of the manual install's `/usr/local/bin` (README).

use anyhow::{bail, Context};

const KEY: &str = "ExecStart=";
/// systemd's executable prefixes (`-`: failure ignored, `@`, `:`, `+`, `!`), kept as written.
const PREFIXES: &[char] = &['-', '@', ':', '+', '!'];

/// The unit as the package installs it: a first line saying so (the file's own install notes
/// are the manual install's), then `text` with its program moved to `dir`.
pub fn packaged(text: &str, dir: &str) -> anyhow::Result<String> {
    let note = format!(
        "# Installed by the pidcap Debian package, with ExecStart= in {dir}; change it with\n\
         # `systemctl edit pidcapd`. The install notes below are for a manual install.\n"
    );
    Ok(note + &with_exec_dir(text, dir)?)
}

/// `text` with its one `ExecStart=` program moved to `dir`, arguments and prefixes kept.
/// Fails unless there is exactly one `ExecStart=` line, so a second one is never left stale.
pub fn with_exec_dir(text: &str, dir: &str) -> anyhow::Result<String> {
    let exec_lines = text.lines().filter(|l| l.starts_with(KEY)).count();
    if exec_lines != 1 {
        bail!("expected one {KEY} line, found {exec_lines}");
    }
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match line.strip_prefix(KEY) {
            Some(value) => out.push_str(&rewrite(value, dir)?),
            None => out.push_str(line),
        }
    }
    Ok(out)
}

fn rewrite(value: &str, dir: &str) -> anyhow::Result<String> {
    let body = value.trim_start_matches(PREFIXES);
    let prefixes = &value[..value.len() - body.len()];
    let program_len = body.find(char::is_whitespace).unwrap_or(body.len());
    let (program, rest) = body.split_at(program_len);
    let name = program
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .context("ExecStart= names no program")?;
    Ok(format!("{KEY}{prefixes}{dir}/{name}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_program_directory_changes() {
        let unit = "# ExecStart=/usr/local/bin/old\n[Service]\nExecStart=/usr/local/bin/pidcapd\nUser=pidcap\n";
        let packaged = with_exec_dir(unit, "/usr/bin").unwrap();
        assert_eq!(
            packaged,
            "# ExecStart=/usr/local/bin/old\n[Service]\nExecStart=/usr/bin/pidcapd\nUser=pidcap\n"
        );
    }

    #[test]
    fn prefixes_and_arguments_are_kept() {
        let packaged = with_exec_dir("ExecStart=-/opt/pidcapd --config /etc/x", "/usr/bin");
        assert_eq!(
            packaged.unwrap(),
            "ExecStart=-/usr/bin/pidcapd --config /etc/x"
        );
    }

    #[test]
    fn a_unit_without_exactly_one_exec_start_is_refused() {
        assert!(with_exec_dir("[Service]\n", "/usr/bin").is_err());
        assert!(with_exec_dir("ExecStart=/a/x\nExecStart=/a/y\n", "/usr/bin").is_err());
    }

    #[test]
    fn the_repository_unit_is_packaged_with_usr_bin() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/pidcapd.service");
        let text = std::fs::read_to_string(path).unwrap();
        let packaged = packaged(&text, "/usr/bin").unwrap();
        assert!(packaged.contains("\nExecStart=/usr/bin/pidcapd\n"));
        assert!(packaged.starts_with("# Installed by the pidcap Debian package"));
        assert_eq!(packaged.lines().count(), text.lines().count() + 2);
    }
}
