//! tokio's HTTP server of the comparison harness: hyper 1.x's hello-world
//! server (http1 only, a task per connection) on tokio's multi-thread
//! runtime with 2 workers, answering every request with `Hello, world!`
//! (the body of `examples/http_hello`, which the harness compares it with).
//!
//! Usage: `compare-tokio-http [ADDR]` (default `127.0.0.1:8080`). As in
//! hyper's own examples the accept loop is `#[tokio::main]`'s body (it runs
//! in `block_on` on the main thread); the connections run on the workers.
//! `pipeline_flush(true)` is what TechEmpower's hyper entry sets: the
//! responses to a pipelined batch go out in one write. hyper adds a `date`
//! header to every response.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"Hello, world!")))
        .expect("a valid response"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("hyper listening on http://{}/", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            // EMFILE and the like: the next accept may succeed.
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            // A client that resets mid-request is its own business.
            let _ = http1::Builder::new()
                .pipeline_flush(true)
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}
