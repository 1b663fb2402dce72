//! `trace-routes`: holds the socket tracer open for `--seconds`, reading its rings as
//! pidcapd's tracer thread does, with the route lookups of every thread traced (`--routes
//! all`: what a traced thread costs), of one other thread only (`--routes others`: what
//! every other thread pays for the filter test), or of none (`--routes off`), then exits.
//! `bench/run routes` runs a flood of unconnected UDP sends beside it (a route lookup per
//! datagram: route tracing's worst case). Prints one line at the end:
//! `routes=MODE connects=N routed=M`.

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use pidcap_sockets::trace::{find_tracefs, RouteScope, SockTracer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Routes {
    All,
    Others,
    Off,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    routes: Routes,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tracefs = find_tracefs().ok_or_else(|| anyhow::anyhow!("no tracefs (run as root)"))?;
    let mut tracer = SockTracer::open(&tracefs)?;
    anyhow::ensure!(
        tracer.can_trace_routes(),
        "this kernel has no route-lookup tracepoints"
    );
    // SAFETY: gettid has no preconditions.
    let own_thread = unsafe { libc::gettid() } as u32;
    let scope = match args.routes {
        Routes::All => RouteScope::All,
        Routes::Others => RouteScope::Threads(vec![own_thread]),
        Routes::Off => RouteScope::Off,
    };
    tracer.trace_routes(&scope)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let (mut claims, mut connects, mut routed) = (Vec::new(), 0, 0);
    while Instant::now() < deadline {
        claims.clear();
        // pidcapd's tracer waits 5 ms between reads while events come.
        tracer.poll(Duration::from_millis(5), &mut claims)?;
        connects += tracer.connected().len();
        routed += tracer
            .connected()
            .iter()
            .filter(|c| c.route.is_some())
            .count();
    }
    println!(
        "routes={:?} connects={connects} routed={routed}",
        args.routes
    );
    Ok(())
}
