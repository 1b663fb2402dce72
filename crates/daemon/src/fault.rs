//! What happens when a thread of the daemon panics, and a test-only way to make one panic.
//!
//! A panic anywhere ends the whole daemon with [`EX_SOFTWARE`]: a dead refresher, watcher or
//! tracer would otherwise leave stale tables behind a service that looks healthy. systemd
//! restarts it (`Restart=on-failure`) and the counters continue from the last checkpoint
//! (see [`crate::persist::checkpoint`]): at most one log interval is lost.

/// sysexits.h: an internal software error.
pub const EX_SOFTWARE: i32 = 70;

/// Installs the hook: the default report (message, location), an error event naming the
/// thread, then exit with [`EX_SOFTWARE`].
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        tracing::error!(thread, panic = %info, "a daemon thread panicked; exiting so that systemd restarts pidcapd (counters continue from the last checkpoint)");
        std::process::exit(EX_SOFTWARE);
    }));
}

/// Test-only fault injection, in debug builds alone: stalls the calling thread (until `stop`)
/// when `PIDCAP_FAULT_STALL` names `thread`, as a thread stuck in a system call would be.
/// Release builds compile this to nothing.
pub fn stall_point(thread: &str, stop: &std::sync::atomic::AtomicBool) {
    static STALL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if !cfg!(debug_assertions) {
        return;
    }
    let target = STALL.get_or_init(|| std::env::var("PIDCAP_FAULT_STALL").ok());
    if target.as_deref() == Some(thread) {
        tracing::warn!(
            thread,
            "fault injected: this thread stalls (PIDCAP_FAULT_STALL)"
        );
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Test-only fault injection, in debug builds alone: panics when `PIDCAP_FAULT_PANIC` names
/// `thread`. Release builds compile this to nothing.
pub fn inject(thread: &str) {
    if cfg!(debug_assertions)
        && std::env::var("PIDCAP_FAULT_PANIC").is_ok_and(|target| target == thread)
    {
        panic!("fault injected into the {thread} thread (PIDCAP_FAULT_PANIC)");
    }
}
