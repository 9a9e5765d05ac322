//! hyper 1.x serving HTTP/1.1 on greenstack, no tokio runtime: one
//! coroutine per connection awaits hyper's connection future, reading and
//! writing a `greenstack::net::TcpStream` through hyper's I/O traits
//! (driven by the worker's own poller). Needs the `hyper` feature.
//!
//! Run with `cargo run --release --example hyper_server
//! [ADDR] [HEADER_TIMEOUT_SECS]` (default `127.0.0.1:8080`, no timeout),
//! then `curl http://127.0.0.1:8080/` or `wrk -c 100 -d 10s
//! http://127.0.0.1:8080/`.
//!
//! With `HEADER_TIMEOUT_SECS`, hyper drops a connection whose request head
//! takes longer than that to arrive, on greenstack's timers
//! (`greenstack::hyper_rt::Timer`). Without it hyper arms no timer, as in
//! hyper's own hello-world and the tokio server the compare harness
//! measures this one against: the timer costs about a sixth of the
//! instructions of a request (callgrind, 20,000 requests: 152M with it,
//! 125M without).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

async fn hello(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("Content-Type", "text/plain")
        .body(Full::new(Bytes::from_static(b"Hello, world!")))
        .expect("a valid response"))
}

#[greenstack::main]
fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let header_timeout = match args.next() {
        Some(s) => match s.parse::<u64>() {
            Ok(secs) => Some(std::time::Duration::from_secs(secs)),
            Err(_) => {
                eprintln!("hyper_server: HEADER_TIMEOUT_SECS must be a whole number of seconds, not {s:?}");
                std::process::exit(2);
            }
        },
        None => None,
    };
    let listener = greenstack::net::TcpListener::bind(&addr)?;
    println!(
        "hyper_server listening on http://{}/",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                // Out of fds, or a connection reset before it was
                // accepted: serve on after a pause.
                eprintln!("hyper_server: accept: {e}");
                greenstack::time::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        stream.set_nodelay(true)?;
        greenstack::spawn_future(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            // Answers to pipelined requests go out in one write.
            builder.pipeline_flush(true);
            if let Some(t) = header_timeout {
                builder
                    .timer(greenstack::hyper_rt::Timer)
                    .header_read_timeout(t);
            }
            let conn = builder.serve_connection(stream, hyper::service::service_fn(hello));
            // A client that resets mid-request, or is too slow, is its own
            // business.
            let _ = conn.await;
        });
    }
}
