//! A minimal HTTP/1.1 keep-alive responder: one coroutine per connection,
//! answering every request with `Hello, world!`. Standard load tools (wrk,
//! ab, hey) can drive it.
//!
//! Run with `cargo run --release --example http_hello [ADDR]` (default
//! `127.0.0.1:8080`), then `curl http://127.0.0.1:8080/` or
//! `wrk -c 100 -d 10s http://127.0.0.1:8080/`.

use std::io::{Read, Write};

use greenstack::net::{TcpListener, TcpStream};

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
    let listener = TcpListener::bind(&addr)?;
    println!("http_hello listening on http://{}/", listener.local_addr()?);
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                greenstack::spawn(move || {
                    // A client that resets mid-request is its own business.
                    let _ = serve(conn);
                });
            }
            // Out of fds (a load tool opening more connections than the
            // limit allows) or a connection reset before it was accepted:
            // the server serves on.
            // A pause, so running out of fds is not a busy loop.
            Err(e) => {
                eprintln!("http_hello: accept: {e}");
                greenstack::time::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
