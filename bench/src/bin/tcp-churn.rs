//! `tcp-churn`: short TCP connections on loopback, as fast as it can, bounded in count AND time.
//!
//! Serves on `--port` of 127.0.0.1 itself and runs `--workers` client threads; each client
//! connection sends `--messages` requests of `--size` bytes, reads each echo, and closes. This
//! is the socket tracer's worst case (a state change per handshake and close, an event per
//! send and receive on both ends) and a connection-churn workload for the attribution.
//! Prints one line: `connections=N messages=M seconds=S cps=R`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Port to serve on (127.0.0.1).
    #[arg(long)]
    port: u16,
    /// Stop after this many connections (all workers together).
    #[arg(long, default_value_t = 20_000)]
    connections: u64,
    /// Request/echo exchanges per connection.
    #[arg(long, default_value_t = 10)]
    messages: u32,
    /// Bytes per request.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Stop after this many seconds, whatever was done.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || serve(listener));
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..args.workers.max(1))
        .map(|_| {
            let (done, stop) = (done.clone(), stop.clone());
            let (limit, messages, size) = (args.connections, args.messages, args.size);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let request = vec![7u8; size];
                let mut echo = vec![0u8; size];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if done.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                    exchange(addr, messages, &request, &mut echo)?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked")?;
    }
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let connections = done.load(Ordering::Relaxed).min(args.connections);
    println!(
        "connections={connections} messages={} seconds={seconds:.3} cps={:.0}",
        connections * u64::from(args.messages),
        connections as f64 / seconds
    );
    Ok(())
}

/// One client connection: `messages` request/echo round trips, then close.
fn exchange(
    addr: SocketAddr,
    messages: u32,
    request: &[u8],
    echo: &mut [u8],
) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    for _ in 0..messages {
        s.write_all(request)?;
        s.read_exact(echo)?;
    }
    Ok(())
}

/// Echoes every connection on its own thread until the peer closes.
fn serve(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut buf = [0u8; 4096];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
