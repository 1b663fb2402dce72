//! `timed -- CMD ARGS…`: runs a command once and prints
//! `wall_s=… user_s=… sys_s=… maxrss_kib=… exit=…` on stderr-free stdout (the command's own
//! output goes where it would). Peak RSS is the kernel's `ru_maxrss` from `wait4`, the same
//! figure as `VmHWM` at exit. Exits with the command's status.

use std::process::Command;
use std::time::Instant;

fn seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).skip_while(|a| a == "--").collect();
    let (program, rest) = argv
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("usage: timed -- CMD [ARGS…]"))?;
    let started = Instant::now();
    let child = Command::new(program).args(rest).spawn()?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child we just spawned (not reaped elsewhere).
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    anyhow::ensure!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
    let wall = started.elapsed().as_secs_f64();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    println!(
        "wall_s={wall:.4} user_s={:.4} sys_s={:.4} maxrss_kib={} exit={code}",
        seconds(usage.ru_utime),
        seconds(usage.ru_stime),
        usage.ru_maxrss
    );
    std::process::exit(code)
}
