//! Build-time generators for the Debian package (`scripts/package`).
//!
//! `xtask deb-assets DIR` writes, from the clap definitions as they are at build time: gzipped
//! man pages (`pidcap(1)`, one `pidcap-COMMAND(1)` per subcommand, `pidcapd(8)`), bash, zsh
//! and fish completions for both binaries, and the packaged systemd unit
//! (`systemd/pidcapd.service` with `ExecStart=` in `/usr/bin`). The output depends on nothing
//! but the sources (no dates, no host names), so two runs give the same bytes.
//!
//! Not a default member of the workspace: plain `cargo build` never builds it;
//! `cargo build --workspace` (scripts/test) does, which is what `scripts/package --debug` runs.

mod unit;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{self, Stdio};

use anyhow::{bail, Context};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// Where the package installs the binaries; the unit's `ExecStart=` must name it.
const BIN_DIR: &str = "/usr/bin";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [task, dir] if task == "deb-assets" => deb_assets(Path::new(dir)),
        _ => bail!("usage: xtask deb-assets DIR"),
    }
}

/// The two command lines the package documents, with their man page sections.
fn commands() -> [(Command, &'static str); 2] {
    [
        (pidcap_cli::command(), "1"),
        (pidcapd::config::Flags::command(), "8"),
    ]
}

fn deb_assets(dir: &Path) -> anyhow::Result<()> {
    // Stale pages of a removed subcommand must not be packaged.
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    for (cmd, section) in commands() {
        write_man_pages(cmd.clone(), section, &dir.join("man"))?;
        write_completions(cmd, &dir.join("completions"))?;
    }
    write_unit(&dir.join("systemd"))
}

/// The command's page and, recursively, one page per visible subcommand (`pidcap-ps.1`).
fn write_man_pages(mut cmd: Command, section: &str, dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    // `pidcap help X` is `pidcap X --help`: no page of its own, so none is listed either.
    cmd = cmd.disable_help_subcommand(true);
    // Building sets each subcommand's display name (`pidcap-ps`), the page's file name.
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub.clone(), section, dir)?;
    }
    let page = clap_mangen::Man::new(cmd).section(section).manual("pidcap");
    let path = dir.join(format!("{}.gz", page.get_filename()));
    let mut roff = Vec::new();
    page.render(&mut roff)?;
    fs::write(&path, gzip(&roff)?).with_context(|| format!("write {}", path.display()))
}

/// Debian policy 12.1: man pages are installed `gzip -9n` compressed (`-n`: no name or time
/// in the header, so the bytes are reproducible). cargo-deb compresses only files it did not
/// find under the target directory, which these are.
fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = process::Command::new("gzip")
        .arg("-9nc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    // Written from another thread: gzip's output pipe fills while its input is still open.
    let bytes = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output()?;
    writer.join().expect("gzip writer thread")?;
    if !out.status.success() {
        bail!("gzip: {}", out.status);
    }
    Ok(out.stdout)
}

/// Files named as Debian's bash-completion, zsh and fish packages look them up.
fn write_completions(mut cmd: Command, dir: &Path) -> anyhow::Result<()> {
    let name = cmd.get_name().to_owned();
    for (shell, file) in [
        (Shell::Bash, format!("bash/{name}")),
        (Shell::Zsh, format!("zsh/_{name}")),
        (Shell::Fish, format!("fish/{name}.fish")),
    ] {
        let path = dir.join(file);
        fs::create_dir_all(path.parent().context("completion path")?)?;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut script);
        fs::write(&path, script).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn write_unit(dir: &Path) -> anyhow::Result<()> {
    let source = workspace_root().join("systemd/pidcapd.service");
    let text = fs::read_to_string(&source).with_context(|| format!("read {}", source.display()))?;
    let packaged =
        unit::packaged(&text, BIN_DIR).with_context(|| format!("rewrite {}", source.display()))?;
    fs::create_dir_all(dir)?;
    fs::write(dir.join("pidcapd.service"), packaged)?;
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
        .to_path_buf()
}
