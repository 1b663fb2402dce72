//! `query-clients`: holds many query-socket clients on a pidcapd for a bounded time: `--idle`
//! connections that send nothing and `--watch` connections that each stream `watch` frames.
//!
//! Prints `clients_ready idle=N watch=M` on stdout once every connection is open (so a script
//! can start its traffic then), and at the end one line:
//! `idle_open=N watch_open=M frames=F frame_errors=E` — idle connections still open, watch
//! clients still streaming, frames read in all, and frames that were not `"ok":true`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

/// Holds idle and watching query clients; see the module docs.
#[derive(Debug, Parser)]
struct Args {
    /// pidcapd's query socket.
    #[arg(long)]
    socket: PathBuf,
    /// Connections that send nothing.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Connections that stream `watch` frames.
    #[arg(long, default_value_t = 100)]
    watch: usize,
    /// The watch clients' interval.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Close everything after this long.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
}

#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    frame_errors: AtomicU64,
    watch_open: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds.clamp(0.1, 600.0));
    let idle: Vec<UnixStream> = (0..args.idle)
        .map(|i| UnixStream::connect(&args.socket).with_context(|| format!("idle client {i}")))
        .collect::<anyhow::Result<_>>()?;
    let counts = Arc::new(Counts::default());
    let mut threads = Vec::new();
    for i in 0..args.watch {
        let mut stream = UnixStream::connect(&args.socket).with_context(|| format!("watch {i}"))?;
        stream.write_all(
            format!(
                "{{\"cmd\":\"watch\",\"interval_ms\":{}}}\n",
                args.interval_ms
            )
            .as_bytes(),
        )?;
        let counts = counts.clone();
        threads.push(std::thread::spawn(move || {
            read_frames(stream, deadline, &counts)
        }));
    }
    println!("clients_ready idle={} watch={}", args.idle, args.watch);
    std::io::stdout().flush()?;
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    for thread in threads {
        let _ = thread.join();
    }
    let idle_open = idle.iter().filter(|s| still_open(s)).count();
    println!(
        "idle_open={idle_open} watch_open={} frames={} frame_errors={}",
        counts.watch_open.load(Ordering::Relaxed),
        counts.frames.load(Ordering::Relaxed),
        counts.frame_errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Reads frames until `deadline`; counts the client as open if it was still streaming then.
fn read_frames(stream: UnixStream, deadline: Instant, counts: &Counts) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while Instant::now() < deadline {
        // A timeout may leave half a frame in `line`: it is completed by the next read.
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if !line.ends_with('\n') => continue,
            Ok(_) => {
                let counter = if line.contains("\"ok\":true") {
                    &counts.frames
                } else {
                    &counts.frame_errors
                };
                counter.fetch_add(1, Ordering::Relaxed);
                line.clear();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
    counts.watch_open.fetch_add(1, Ordering::Relaxed);
}

/// True when the daemon has not closed the connection (nothing to read, no EOF).
fn still_open(stream: &UnixStream) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut byte = [0u8; 1];
    matches!((&*stream).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
