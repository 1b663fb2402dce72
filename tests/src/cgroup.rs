//! Control groups named the way container runtimes name theirs, for processes the tests
//! start: a Docker, Podman or Kubernetes container as far as its cgroup path tells.
//!
//! The machine's layout is probed, not assumed: a cgroup is created in the unified (v2)
//! hierarchy (at `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`) and in the v1 `name=systemd`
//! one (`/sys/fs/cgroup/systemd`), in each that is mounted.
//!
//! Invariants: every path lies under `/pidcap-e2e-<test pid>/`, so concurrent test
//! processes never share a cgroup; Drop moves the processes still inside back to the root of
//! each hierarchy and removes the directories, deepest first.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One cgroup path, created in every mounted hierarchy.
#[derive(Debug)]
pub struct Cgroup {
    /// The path as `/proc/<pid>/cgroup` shows it, e.g. `/pidcap-e2e-7/docker-<id>.scope`.
    pub path: String,
    /// The cgroup's directory in each hierarchy.
    dirs: Vec<PathBuf>,
    /// The hierarchies' roots, for Drop.
    roots: Vec<PathBuf>,
}

/// The mounted hierarchies a test may create cgroups in.
fn roots() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut roots = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(kind), Some(opts)) = (fields.get(1), fields.get(2), fields.get(3))
        else {
            continue;
        };
        let systemd_v1 = *kind == "cgroup" && opts.split(',').any(|o| o == "name=systemd");
        if *kind == "cgroup2" || systemd_v1 {
            roots.push(PathBuf::from(dir));
        }
    }
    roots
}

impl Cgroup {
    /// Creates `/pidcap-e2e-<pid>/<name>` (`name` may hold `/`) in every hierarchy.
    /// Panics when none is mounted or writable: the test cannot place its processes.
    pub fn new(name: &str) -> Cgroup {
        crate::require_root();
        let path = format!("/pidcap-e2e-{}/{name}", std::process::id());
        let roots = roots();
        assert!(
            !roots.is_empty(),
            "no cgroup2 or name=systemd hierarchy mounted"
        );
        let dirs: Vec<PathBuf> = roots
            .iter()
            .map(|root| root.join(path.trim_start_matches('/')))
            .collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        }
        Cgroup { path, dirs, roots }
    }

    /// A command that moves itself into this cgroup, then execs `program args` (so the
    /// program is in the cgroup from its first instruction, and keeps the pid).
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let procs: Vec<OsString> = self
            .dirs
            .iter()
            .map(|d| d.join("cgroup.procs").into_os_string())
            .collect();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"for f in $PIDCAP_E2E_CGROUP_PROCS; do echo $$ > "$f" || exit 97; done; exec "$0" "$@""#)
            .arg(program)
            .args(args)
            .env("PIDCAP_E2E_CGROUP_PROCS", procs.join(&OsString::from(" ")));
        command
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for (dir, root) in self.dirs.iter().zip(&self.roots) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
            // Deepest first, up to (and including) the test's own top directory.
            let mut at = dir.clone();
            while at.starts_with(root) && at != *root {
                if std::fs::remove_dir(&at).is_err() {
                    break;
                }
                at.pop();
            }
        }
    }
}
