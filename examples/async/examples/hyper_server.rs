//! hyper 1.x serving HTTP/1.1 on greenstack, no tokio runtime: one
//! coroutine per connection awaits hyper's connection future, reading and
//! writing a `greenstack::net::TcpStream` through hyper's I/O traits
//! (driven by the worker's own poller), with greenstack's timer for
//! hyper's timeouts. Needs the `hyper` feature.
//!
//! Run with `cargo run --release --example hyper_server
//! [ADDR]` (default `127.0.0.1:8080`), then `curl http://127.0.0.1:8080/`
//! or `wrk -c 100 -d 10s http://127.0.0.1:8080/`.

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
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
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
        greenstack::spawn(move || {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(greenstack::hyper_rt::Timer)
                // Answers to pipelined requests go out in one write.
                .pipeline_flush(true)
                .serve_connection(stream, hyper::service::service_fn(hello));
            // A client that resets mid-request is its own business.
            let _ = greenstack::block_on_future(conn);
        });
    }
}
