//! Contention: one CPU hog per core at the daemon's own priority, as on a busy host, so the
//! daemon's threads, the kernel's softirqs and the workload compete for every CPU.
//!
//! Invariants: the hogs are plain processes (`sh` spinning), started at the suite's own nice
//! level, never touching the network; Drop kills and reaps every one of them, and each is
//! killed by the kernel if the suite dies first (`PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// The hogs; alive while this is.
#[derive(Debug)]
pub struct Hogs {
    children: Vec<Child>,
}

impl Hogs {
    /// One spinning process per CPU this process may run on.
    pub fn one_per_core() -> std::io::Result<Hogs> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let children = (0..cores)
            .map(|_| {
                let mut command = Command::new("sh");
                command
                    .args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                // SAFETY: prctl is async-signal-safe; it only sets this child's own
                // parent-death signal between fork and exec.
                unsafe {
                    command.pre_exec(
                        || match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                            0 => Ok(()),
                            _ => Err(std::io::Error::last_os_error()),
                        },
                    );
                }
                command.spawn()
            })
            .collect::<std::io::Result<Vec<Child>>>()?;
        Ok(Hogs { children })
    }

    pub fn count(&self) -> usize {
        self.children.len()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
