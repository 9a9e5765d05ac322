//! A minimal HTTP/1.1 keep-alive responder: one coroutine per connection,
//! answering every request with `Hello, world!`. Standard load tools (wrk,
//! ab, hey) can drive it.
//!
//! Run with `cargo run --release --example http_hello [ADDR]` (default
//! `127.0.0.1:8080`), then `curl http://127.0.0.1:8080/` or
//! `wrk -c 100 -d 10s http://127.0.0.1:8080/`. SIGTERM or Ctrl-C stops it
//! gracefully: it stops accepting once the open connections have closed
//! (at most 5 s later).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use greenstack::net::{TcpListener, TcpStream};
use greenstack::signal::Signals;
use greenstack::sync::WaitGroup;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!";

/// Serves requests on one connection until the client closes it or asks to
/// close. Requests are read up to the blank line; bodies are not expected.
/// Every complete request in what one read brought is answered, and the
/// answers go out in one write: a pipelining client (wrk's pipelined mode,
/// TechEmpower's plaintext test) sends many at once.
fn serve(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = vec![0u8; 8192];
    let mut out = Vec::with_capacity(RESPONSE.len() * 16);
    let mut filled = 0;
    loop {
        let mut start = 0;
        let mut close = false;
        while let Some(end) = find(&buf[start..filled], b"\r\n\r\n") {
            close = contains_ignore_case(&buf[start..start + end], b"connection: close");
            out.extend_from_slice(RESPONSE);
            start += end + 4;
            if close {
                break;
            }
        }
        if !out.is_empty() {
            conn.write_all(&out)?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            conn.write_all(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n",
            )?;
            return Ok(());
        }
        let n = conn.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[greenstack::main]
fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    // Before the listener: from here on SIGTERM and SIGINT are ours.
    let signals = Signals::new(&[libc::SIGTERM, libc::SIGINT])?;
    let listener = TcpListener::bind(&addr)?;
    let local = listener.local_addr()?;
    println!("http_hello listening on http://{local}/");
    let open = Arc::new(WaitGroup::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let (connections, stop) = (Arc::clone(&open), Arc::clone(&stopping));
    let acceptor = greenstack::spawn!(name = "acceptor", move || loop {
        match listener.accept() {
            // Told to stop: the listener closes here, so new connections
            // are refused from now on.
            Ok(_) if stop.load(Ordering::Acquire) => return,
            Ok((conn, _)) => {
                connections.add(1);
                let open = Arc::clone(&connections);
                greenstack::spawn(move || {
                    // A client that resets mid-request is its own business.
                    let _ = serve(conn);
                    open.done();
                });
            }
            // The runtime shuts down: stop.
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            // Out of fds (a load tool opening more connections than the
            // limit allows) or a connection reset before it was accepted:
            // serve on, after a pause (running out of fds is no busy loop).
            Err(e) => {
                eprintln!("http_hello: accept: {e}");
                greenstack::time::sleep(Duration::from_millis(10));
            }
        }
    });
    // Graceful shutdown: on SIGTERM or SIGINT, stop taking connections,
    // then wait for the open ones to close (at most 5 s: returning from
    // main drops the runtime, which cancels what still runs).
    let sig = signals.recv()?;
    stopping.store(true, Ordering::Release);
    // Wake the acceptor with a connection of our own.
    drop(TcpStream::connect(local));
    let _ = acceptor.join();
    println!("http_hello: signal {sig}, draining");
    let drained = open.wait_timeout(Duration::from_secs(5));
    println!(
        "http_hello: {}",
        if drained {
            "drained"
        } else {
            "drain timed out"
        }
    );
    Ok(())
}
