//! A real container: podman (with runc) running a busybox root filesystem built here from
//! `/bin/busybox` (busybox-static; `scripts/deps --test` installs both), on podman's default
//! bridge network. No image registry is needed.
//!
//! Invariants: each container is named `pidcap-e2e-<test pid>-<n>` and removed (`podman rm
//! -f`) on Drop; every podman call is bounded by [`PODMAN_TIMEOUT`]; a failure to run one
//! panics with podman's own message (never a silent skip).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The image built from the local busybox.
pub const IMAGE: &str = "localhost/pidcap-e2e-busybox:1";
/// The longest any podman call may take.
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running container.
#[derive(Debug)]
pub struct Container {
    pub name: String,
    /// Podman's container id (64 hex digits): the one in its cgroup path.
    pub id: String,
    /// Its address on podman's bridge.
    pub ip: std::net::IpAddr,
}

/// Runs `podman args` (with runc, and limits this machine allows), bounded; its stdout.
pub fn podman(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg(PODMAN_TIMEOUT.as_secs().to_string())
        .arg("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?}: {e} (scripts/deps --test installs podman)"));
    assert!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds [`IMAGE`] from `/bin/busybox` unless it exists.
fn ensure_image() {
    let exists = Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("rootfs/bin");
    std::fs::create_dir_all(&bin).expect("rootfs");
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("copy /bin/busybox (scripts/deps --test installs busybox-static)");
    for applet in ["sh", "nc", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    let tar = dir.path().join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success(), "tar of the busybox root filesystem");
    podman(&["import", tar.to_str().expect("utf-8 path"), IMAGE]);
}

impl Container {
    /// Starts a container running `sh -c script` on podman's default network.
    pub fn run(script: &str) -> Container {
        crate::require_root();
        ensure_image();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("pidcap-e2e-{}-{n}", std::process::id());
        let _ = Command::new("podman").args(["rm", "-f", &name]).output();
        let id = podman(&[
            "run",
            "-d",
            "--name",
            &name,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            IMAGE,
            "/bin/sh",
            "-c",
            script,
        ]);
        // Removed on Drop from here on, also if it has no address (it exited at once).
        let mut container = Container {
            name,
            id,
            ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
        };
        let ip = podman(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            &container.name,
        ]);
        container.ip = ip.parse().unwrap_or_else(|_| {
            let logs = podman(&["logs", &container.name]);
            panic!(
                "container {} has no address ({ip:?}); its output: {logs}",
                container.name
            )
        });
        container
    }

    /// The host pid of the container's first process.
    pub fn pid(&self) -> u32 {
        podman(&["inspect", "--format", "{{.State.Pid}}", &self.name])
            .parse()
            .expect("container pid")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args([
                "60",
                "podman",
                "--runtime",
                "runc",
                "rm",
                "-f",
                "-t",
                "0",
                &self.name,
            ])
            .output();
    }
}
