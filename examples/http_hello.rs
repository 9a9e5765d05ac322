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
fn serve(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = vec![0u8; 8192];
    let mut filled = 0;
    loop {
        // Answer every complete request in the buffer (pipelining works).
        while let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
            let head = &buf[..end];
            let close = contains_ignore_case(head, b"connection: close");
            conn.write_all(RESPONSE)?;
            buf.copy_within(end + 4..filled, 0);
            filled -= end + 4;
            if close {
                return Ok(());
            }
        }
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

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let rt = greenstack::Runtime::new()?;
    rt.block_on(move || -> std::io::Result<()> {
        let listener = TcpListener::bind(&addr)?;
        println!("http_hello listening on http://{}/", listener.local_addr()?);
        for conn in listener.incoming() {
            let conn = conn?;
            greenstack::spawn(move || {
                // A client that resets mid-request is its own business.
                let _ = serve(conn);
            });
        }
        Ok(())
    })
}
