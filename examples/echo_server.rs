//! A TCP echo server: one coroutine per connection, written as plain
//! blocking code.
//!
//! Run with `cargo run --release --example echo_server [ADDR]` (default
//! `127.0.0.1:7878`), then e.g. `nc 127.0.0.1 7878`. It prints the address it
//! listens on, and per connection how many bytes it echoed.

use std::io::{Read, Write};

use greenstack::net::{TcpListener, TcpStream};

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

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".into());
    let rt = greenstack::Runtime::new()?;
    rt.block_on(move || -> std::io::Result<()> {
        let listener = TcpListener::bind(&addr)?;
        println!("echo server listening on {}", listener.local_addr()?);
        for conn in listener.incoming() {
            let conn = conn?;
            let peer = conn.peer_addr()?;
            greenstack::Builder::new()
                .name(format!("conn-{peer}"))
                .spawn(move || match handle(conn) {
                    Ok(n) => println!("{peer}: echoed {n} bytes"),
                    Err(e) => println!("{peer}: {e}"),
                })?;
        }
        Ok(())
    })
}
