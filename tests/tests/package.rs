//! The Debian package (`scripts/package`): its control data, file list, modes and conffiles,
//! lintian's verdict, then the package unpacked into a clean root (`dpkg-deb -x`) where its maintainer scripts
//! run as dpkg would run them there (`DPKG_ROOT`), its binaries, man pages and completions are
//! used, and its logrotate rule rotates a log.
//!
//! It packages the debug binaries `cargo build --workspace --bins` built (scripts/test builds
//! them first), so nothing is compiled here; `PIDCAP_DEB=FILE.deb` checks a prebuilt package
//! instead (the release one from `scripts/package`). Every tool it uses must be installed
//! (scripts/deps --test): a missing one fails the test, it never skips.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// What the package must install, with the mode `dpkg-deb -c` shows.
const FILES: &[(&str, &str)] = &[
    ("usr/bin/pidcapd", "-rwxr-xr-x"),
    ("usr/bin/pidcap", "-rwxr-xr-x"),
    ("usr/lib/systemd/system/pidcapd.service", "-rw-r--r--"),
    ("usr/lib/sysusers.d/pidcap.conf", "-rw-r--r--"),
    ("usr/lib/tmpfiles.d/pidcap.conf", "-rw-r--r--"),
    ("etc/logrotate.d/pidcap", "-rw-r--r--"),
    ("etc/pidcap/pidcap.toml", "-rw-r--r--"),
    ("usr/share/man/man1/pidcap.1.gz", "-rw-r--r--"),
    ("usr/share/man/man8/pidcapd.8.gz", "-rw-r--r--"),
    ("usr/share/bash-completion/completions/pidcap", "-rw-r--r--"),
    (
        "usr/share/bash-completion/completions/pidcapd",
        "-rw-r--r--",
    ),
    ("usr/share/zsh/vendor-completions/_pidcap", "-rw-r--r--"),
    ("usr/share/zsh/vendor-completions/_pidcapd", "-rw-r--r--"),
    (
        "usr/share/fish/vendor_completions.d/pidcap.fish",
        "-rw-r--r--",
    ),
    (
        "usr/share/fish/vendor_completions.d/pidcapd.fish",
        "-rw-r--r--",
    ),
    ("usr/share/doc/pidcap/copyright", "-rw-r--r--"),
    ("usr/share/doc/pidcap/changelog.Debian.gz", "-rw-r--r--"),
];

/// Files an upgrade must not overwrite once the admin edited them.
const CONFFILES: &[&str] = &["/etc/pidcap/pidcap.toml", "/etc/logrotate.d/pidcap"];

/// Stand-ins for the commands that would act on the host's running systemd, so the
/// maintainer scripts can run against the clean root; each records how it was called.
const HOST_SYSTEMD_COMMANDS: &[&str] = &["systemctl", "systemd-tmpfiles", "deb-systemd-invoke"];

#[test]
fn package_installs_pidcap_as_a_debian_service() {
    pidcap_e2e::require_root();
    let work = TempDir::new().expect("temp dir");
    // logrotate rotates as user pidcap, which must reach the log below this directory.
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let deb = package(work.path());

    check_control(&deb);
    check_lintian(&deb);
    let listing = contents(&deb);
    check_files(&listing);
    check_conffiles(&deb, &listing);

    let root = work.path().join("root");
    let control = work.path().join("control");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    check_unit_matches_files(&root);
    check_binaries(&root, &deb);
    check_changelog(&root, &deb);
    check_man_pages(&root, &listing);
    check_completions(&root);
    check_logrotate(&root, work.path());
    check_maintainer_scripts(&control, &root, work.path());
}

/// `$PIDCAP_DEB`, or a package of the debug binaries made by `scripts/package --debug`.
fn package(work: &Path) -> PathBuf {
    if let Some(deb) = std::env::var_os("PIDCAP_DEB") {
        return PathBuf::from(deb);
    }
    let out = work.join("deb");
    let printed = run(Command::new(Path::new(REPO).join("scripts/package"))
        .arg("--debug")
        .arg("--output")
        .arg(&out)
        .current_dir(REPO));
    let deb = PathBuf::from(printed.trim());
    assert!(
        deb.is_file(),
        "scripts/package printed {printed:?}, not a .deb"
    );
    deb
}

fn check_control(deb: &Path) {
    let fields = run(Command::new("dpkg-deb").arg("-f").arg(deb));
    let field = |name: &str| {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} field in:\n{fields}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "pidcap");
    let depends = field("Depends");
    assert!(depends.contains("libpcap0.8"), "Depends: {depends}");
    // postinst runs systemd-sysusers.
    assert!(depends.contains("systemd"), "Depends: {depends}");
}

/// Debian's own package checker finds no error (its warnings are left to people).
fn check_lintian(deb: &Path) {
    run(Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(deb));
}

/// `dpkg-deb -c`: each path (without `./`) with its mode and owner.
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "dpkg-deb -c line: {line}");
            let path = fields[5].trim_start_matches("./").trim_end_matches('/');
            (
                path.to_owned(),
                (fields[0].to_owned(), fields[1].to_owned()),
            )
        })
        .collect()
}

fn check_files(listing: &BTreeMap<String, (String, String)>) {
    for (path, mode) in FILES {
        let (found, _) = listing
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not in the package"));
        assert_eq!(found, mode, "{path}");
    }
    for (path, (mode, owner)) in listing {
        assert!(
            owner == "root/root" || owner == "0/0",
            "{path} belongs to {owner}"
        );
        let world_writable = mode.as_bytes()[8] == b'w';
        let special = mode.contains(['s', 'S', 't', 'T']);
        assert!(!world_writable && !special, "{path} has mode {mode}");
    }
}

fn check_conffiles(deb: &Path, listing: &BTreeMap<String, (String, String)>) {
    let conffiles = run(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"));
    let listed: BTreeSet<&str> = conffiles.lines().map(str::trim).collect();
    for file in CONFFILES {
        assert!(
            listed.contains(file),
            "{file} is not a conffile: {conffiles}"
        );
        assert!(
            listing.contains_key(&file[1..]),
            "conffile {file} is not in the package"
        );
    }
}

/// The unit starts the packaged binary, and tmpfiles.d makes exactly the directories the unit
/// asks systemd for, with its owner and modes; sysusers.d creates that owner.
fn check_unit_matches_files(root: &Path) {
    let unit = read(&root.join("usr/lib/systemd/system/pidcapd.service"));
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec.len(), 1, "ExecStart= lines: {exec:?}");
    let program = exec[0].trim_start_matches(['-', '@', ':', '+', '!']);
    let program = program
        .split_whitespace()
        .next()
        .expect("ExecStart= program");
    assert_eq!(program, "/usr/bin/pidcapd");
    let installed = fs::metadata(root.join(&program[1..]))
        .unwrap_or_else(|e| panic!("ExecStart={program} is not in the package: {e}"));
    assert!(installed.mode() & 0o111 != 0, "{program} is not executable");

    let one = |key: &str, default: &str| {
        let values = unit_values(&unit, key);
        values.last().map_or(default.to_owned(), |v| v.to_string())
    };
    let (user, group) = (one("User", ""), one("Group", ""));
    let wanted: BTreeSet<String> = [
        (
            "/run/",
            one("RuntimeDirectory", ""),
            one("RuntimeDirectoryMode", "0755"),
        ),
        (
            "/var/log/",
            one("LogsDirectory", ""),
            one("LogsDirectoryMode", "0755"),
        ),
        (
            "/var/lib/",
            one("StateDirectory", ""),
            one("StateDirectoryMode", "0755"),
        ),
    ]
    .into_iter()
    .map(|(base, dir, mode)| format!("d {base}{dir} {mode} {user} {group} -"))
    .collect();
    let tmpfiles: BTreeSet<String> =
        config_lines(&read(&root.join("usr/lib/tmpfiles.d/pidcap.conf")))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
    assert_eq!(
        tmpfiles, wanted,
        "tmpfiles.d against the unit's directories"
    );

    let sysusers = read(&root.join("usr/lib/sysusers.d/pidcap.conf"));
    assert!(
        config_lines(&sysusers).any(|l| l.starts_with(&format!("u {user} "))),
        "sysusers.d does not create {user}: {sysusers}"
    );
}

fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

fn config_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn check_binaries(root: &Path, deb: &Path) {
    let version = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Version"));
    let upstream = version
        .trim()
        .split('-')
        .next()
        .expect("version")
        .to_owned();
    let pidcap = run(Command::new(root.join("usr/bin/pidcap")).arg("--version"));
    assert_eq!(pidcap.trim(), format!("pidcap {upstream}"));
    let pidcapd = run(Command::new(root.join("usr/bin/pidcapd")).arg("--version"));
    assert_eq!(pidcapd.trim(), format!("pidcapd {upstream}"));
    let help = run(Command::new(root.join("usr/bin/pidcapd")).arg("--help"));
    assert!(help.contains("--config"), "pidcapd --help:\n{help}");
}

/// The changelog's newest entry is this version (packaging/deb/changelog needs an entry per
/// release).
fn check_changelog(root: &Path, deb: &Path) {
    let version = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Version"));
    let changelog = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/doc/pidcap/changelog.Debian.gz")));
    let newest = changelog.lines().next().unwrap_or_default();
    assert!(
        newest.starts_with(&format!("pidcap ({}) ", version.trim())),
        "packaging/deb/changelog starts with {newest:?}, not version {}",
        version.trim()
    );
}

/// Every page formats without a warning, and every subcommand of the packaged `pidcap` has
/// its page (the pages are generated from the same clap definitions).
fn check_man_pages(root: &Path, listing: &BTreeMap<String, (String, String)>) {
    let pages: Vec<&String> = listing
        .keys()
        .filter(|p| p.starts_with("usr/share/man/man") && p.ends_with(".gz"))
        .collect();
    for page in &pages {
        let output = command_output(
            Command::new("man")
                .args(["--warnings", "-l"])
                .arg(root.join(page))
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80")
                .env("LC_ALL", "C.UTF-8"),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.is_empty(),
            "man -l {page}: {stderr}"
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("NAME"),
            "{page}"
        );
    }
    for sub in subcommands(root) {
        let page = format!("usr/share/man/man1/pidcap-{sub}.1.gz");
        assert!(pages.contains(&&page), "`pidcap {sub}` has no page {page}");
    }
}

/// The subcommands `pidcap --help` lists, `help` aside.
fn subcommands(root: &Path) -> Vec<String> {
    let help = run(Command::new(root.join("usr/bin/pidcap")).arg("--help"));
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(
        commands.contains(&"ps".to_owned()),
        "pidcap --help:\n{help}"
    );
    commands
}

/// Bash parses and registers both; zsh and fish (not installed here) are checked by content.
fn check_completions(root: &Path) {
    for bin in ["pidcap", "pidcapd"] {
        let bash = root.join("usr/share/bash-completion/completions").join(bin);
        run(Command::new("bash").arg("-n").arg(&bash));
        let script = format!("source {} && complete -p {bin}", bash.display());
        let registered = run(Command::new("bash").args(["-c", &script]));
        assert!(
            registered.contains(bin),
            "bash completion for {bin}: {registered}"
        );
        let zsh = read(&root.join(format!("usr/share/zsh/vendor-completions/_{bin}")));
        assert!(
            zsh.starts_with(&format!("#compdef {bin}")),
            "zsh completion for {bin}"
        );
        let fish = read(&root.join(format!("usr/share/fish/vendor_completions.d/{bin}.fish")));
        assert!(
            fish.contains(&format!("complete -c {bin} ")),
            "fish completion for {bin}"
        );
    }
}

/// `logrotate -d` accepts the rule as packaged; the same rule, pointed at a log in `work`,
/// rotates it twice: renamed, left for the daemon to create again, compressed one rotation
/// later.
fn check_logrotate(root: &Path, work: &Path) {
    // The rule rotates as user pidcap, which must exist (as the privileges test, the way the
    // package's postinst does).
    run(Command::new("systemd-sysusers").arg(root.join("usr/lib/sysusers.d/pidcap.conf")));
    let rule_path = root.join("etc/logrotate.d/pidcap");
    let debug = command_output(
        Command::new("logrotate")
            .arg("-d")
            .arg("-s")
            .arg(work.join("logrotate-d.state"))
            .arg(&rule_path),
    );
    let said = String::from_utf8_lossy(&debug.stderr).into_owned()
        + &String::from_utf8_lossy(&debug.stdout);
    assert!(
        debug.status.success() && !said.contains("error"),
        "logrotate -d:\n{said}"
    );

    let dir = work.join("log");
    fs::create_dir(&dir).expect("log dir");
    let rule = read(&rule_path);
    let moved = rule.replace(
        "/var/log/pidcap/usage.jsonl",
        &dir.join("usage.jsonl").to_string_lossy(),
    );
    assert_ne!(moved, rule, "the rule names /var/log/pidcap/usage.jsonl");
    let moved_path = work.join("logrotate.conf");
    fs::write(&moved_path, moved).expect("write rule");
    run(Command::new("chown").args(["pidcap:pidcap"]).arg(&dir));
    for round in 1..=2 {
        write_log(&dir, round);
        run(Command::new("logrotate")
            .arg("-f")
            .arg("-s")
            .arg(work.join("logrotate.state"))
            .arg(&moved_path));
        assert!(
            !dir.join("usage.jsonl").exists(),
            "round {round}: logrotate created the log"
        );
        assert_eq!(
            read(&dir.join("usage.jsonl.1")),
            format!("{{\"round\":{round}}}\n")
        );
    }
    assert!(
        dir.join("usage.jsonl.2.gz").is_file(),
        "the older log is not compressed"
    );
}

/// A usage log as the daemon writes it: its own file, mode 0640.
fn write_log(dir: &Path, round: u32) {
    let log = dir.join("usage.jsonl");
    fs::write(&log, format!("{{\"round\":{round}}}\n")).expect("write log");
    fs::set_permissions(&log, fs::Permissions::from_mode(0o640)).expect("chmod log");
    run(Command::new("chown").arg("pidcap:pidcap").arg(&log));
}

/// The scripts as dpkg runs them for the root: postinst creates the user and enables the unit
/// without starting it; remove keeps logs and state, purge deletes them and the enablement.
fn check_maintainer_scripts(control: &Path, root: &Path, work: &Path) {
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let postinst = read(&control.join("postinst"));
    assert!(
        postinst.contains("systemd-tmpfiles --create pidcap.conf"),
        "{postinst}"
    );
    let prerm = read(&control.join("prerm"));
    assert!(
        prerm.contains("deb-systemd-invoke stop pidcapd.service"),
        "{prerm}"
    );

    let stubs = stub_host_systemd(work);
    let maintscript = |script: &str, action: &str| {
        let path = format!(
            "{}:{}",
            stubs.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("sh")
            .arg("-e")
            .arg(control.join(script))
            .arg(action)
            .env("DPKG_ROOT", root)
            .env("DPKG_MAINTSCRIPT_PACKAGE", "pidcap")
            .env("DPKG_MAINTSCRIPT_NAME", script)
            .env("PATH", path));
    };
    maintscript("postinst", "configure");
    let passwd = read(&root.join("etc/passwd"));
    assert!(
        passwd.lines().any(|l| l.starts_with("pidcap:")),
        "no user pidcap: {passwd}"
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants/pidcapd.service");
    assert!(
        wants.is_symlink(),
        "postinst did not enable pidcapd.service"
    );
    let calls = fs::read_to_string(stubs.join("calls")).unwrap_or_default();
    assert!(
        !calls.contains("start"),
        "postinst started something: {calls}"
    );

    // What postinst's tmpfiles call does when systemd runs, made here in the root.
    run(Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.display()))
        .arg("pidcap.conf"));
    check_directories(root, &passwd);

    fs::write(root.join("var/log/pidcap/usage.jsonl"), "{}\n").expect("write log");
    maintscript("prerm", "remove");
    maintscript("postrm", "remove");
    assert!(
        root.join("var/log/pidcap/usage.jsonl").exists(),
        "remove deleted the log"
    );
    maintscript("postrm", "purge");
    for gone in ["var/log/pidcap", "var/lib/pidcap"] {
        assert!(!root.join(gone).exists(), "purge left /{gone}");
    }
    assert!(!wants.is_symlink(), "purge left the unit enabled");
}

fn stub_host_systemd(work: &Path) -> PathBuf {
    let dir = work.join("host-systemd");
    fs::create_dir(&dir).expect("stub dir");
    for name in HOST_SYSTEMD_COMMANDS {
        let stub = dir.join(name);
        let calls = dir.join("calls");
        fs::write(
            &stub,
            format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\n", calls.display()),
        )
        .expect("write stub");
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).expect("chmod stub");
    }
    dir
}

/// /run/pidcap, /var/log/pidcap and /var/lib/pidcap: mode 0755, owned by the root's pidcap.
fn check_directories(root: &Path, passwd: &str) {
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("pidcap:"))
        .expect("pidcap");
    let uid: u32 = entry
        .split(':')
        .nth(2)
        .and_then(|u| u.parse().ok())
        .expect("uid");
    for dir in ["run/pidcap", "var/log/pidcap", "var/lib/pidcap"] {
        let meta = fs::metadata(root.join(dir)).unwrap_or_else(|e| panic!("/{dir}: {e}"));
        assert_eq!(meta.uid(), uid, "/{dir} owner");
        assert_eq!(meta.mode() & 0o7777, 0o755, "/{dir} mode");
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `command` to success and returns its stdout; panics with its stderr otherwise.
fn run(command: &mut Command) -> String {
    let output = command_output(command);
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout),
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Fails loudly, naming the Debian package to install, when the program is missing.
fn command_output(command: &mut Command) -> std::process::Output {
    command.output().unwrap_or_else(|e| {
        let program = command.get_program().to_string_lossy().into_owned();
        panic!(
            "cannot run {program}: {e}. The package test needs dpkg, man-db, logrotate, lintian, \
             systemd, bash and cargo-deb (scripts/deps --test and scripts/package install them)"
        )
    })
}
