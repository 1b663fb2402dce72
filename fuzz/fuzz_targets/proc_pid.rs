//! /proc/<pid> text parsers: `stat` (comm and start time), `status` (real uid) and `cmdline`,
//! through the public reader `ProcRoot::process` over a scratch proc root.
//!
//! Input: the three files' contents separated by 0xFF bytes (stat, status, cmdline). The
//! files are written under /dev/shm (or the temp dir) for each input. Besides never
//! panicking, the start time read alone agrees with the one `process` reads.

use std::fs;
use std::path::PathBuf;

use pidcap_sockets::ProcRoot;

const PID: u32 = 1;

fn scratch_root() -> PathBuf {
    let base = ["/dev/shm", "/tmp"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let root = base.join(format!("pidcap-fuzz-proc-{}", std::process::id()));
    fs::create_dir_all(root.join(PID.to_string())).expect("scratch proc root");
    root
}

fn main() {
    let root = scratch_root();
    let dir = root.join(PID.to_string());
    let proc = ProcRoot::new(&root);
    afl::fuzz!(|data: &[u8]| {
        let mut parts = data.splitn(3, |&b| b == 0xff);
        for name in ["stat", "status", "cmdline"] {
            let part = parts.next().unwrap_or_default();
            fs::write(dir.join(name), part).expect("scratch file written");
        }
        let start = proc.start_time(PID).ok();
        if let Ok(info) = proc.process(PID) {
            assert_eq!(start, Some(info.key.start_time));
            assert_eq!(info.key.pid, PID);
        }
    });
}
