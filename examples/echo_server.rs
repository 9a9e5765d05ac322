//! A TCP echo server: one coroutine per connection, written as plain
//! blocking code.
//!
//! Run with `cargo run --release --example echo_server [ADDR]` (default
//! `127.0.0.1:7878`), then e.g. `nc 127.0.0.1 7878`. It prints the address it
//! listens on, and per connection how many bytes it echoed. SIGTERM or
//! Ctrl-C stops it gracefully: no new connections, and it exits once the
//! open ones have closed (after 5 s at most).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use greenstack::net::{TcpListener, TcpStream};
use greenstack::signal::Signals;
use greenstack::sync::WaitGroup;

/// Echoes everything until the client closes its side.
fn handle(mut conn: TcpStream) -> std::io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        conn.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[greenstack::main]
fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".into());
    let signals = Signals::new(&[libc::SIGTERM, libc::SIGINT])?;
    let listener = TcpListener::bind(&addr)?;
    let local = listener.local_addr()?;
    println!("echo server listening on {local}");
    let open = Arc::new(WaitGroup::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let (connections, stop) = (Arc::clone(&open), Arc::clone(&stopping));
    let acceptor = greenstack::spawn!(name = "acceptor", move || -> std::io::Result<()> {
        loop {
            let (conn, peer) = listener.accept()?;
            if stop.load(Ordering::Acquire) {
                // The listener closes as this returns.
                return Ok(());
            }
            connections.add(1);
            let open = Arc::clone(&connections);
            greenstack::Builder::new()
                .name(format!("conn-{peer}"))
                .spawn(move || {
                    match handle(conn) {
                        Ok(n) => println!("{peer}: echoed {n} bytes"),
                        Err(e) => println!("{peer}: {e}"),
                    }
                    open.done();
                })?;
        }
    });
    let sig = signals.recv()?;
    stopping.store(true, Ordering::Release);
    // Wake the acceptor with a connection of our own.
    drop(TcpStream::connect(local));
    acceptor.join().expect("the acceptor does not panic")?;
    println!("signal {sig}: draining");
    let drained = open.wait_timeout(Duration::from_secs(5));
    println!(
        "{}",
        if drained {
            "drained"
        } else {
            "drain timed out"
        }
    );
    Ok(())
}
