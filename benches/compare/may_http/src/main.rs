//! may's HTTP server of the comparison harness: may_minihttp's own
//! `hello-world` example with the worker count set, answering every
//! request with `Hello, world!` (the body of `examples/http_hello`, which
//! the harness compares it with).
//!
//! Usage: `compare-may-http [ADDR] [WORKERS]` (default `127.0.0.1:8080`, 2).
//! may_minihttp adds `Server: M` and a `Date` header to every response.

use std::io;

use may_minihttp::{HttpServer, HttpService, Request, Response};

#[derive(Clone)]
struct HelloWorld;

impl HttpService for HelloWorld {
    fn call(&mut self, _req: Request, rsp: &mut Response) -> io::Result<()> {
        rsp.header("Content-Type: text/plain").body("Hello, world!");
        Ok(())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let workers = args
        .next()
        .map_or(2, |w| w.parse().expect("WORKERS is a number"));
    may::config().set_workers(workers);
    let server = HttpServer(HelloWorld).start(&addr).expect("bind");
    println!("may_minihttp listening on http://{addr}/");
    server.join().expect("the accept coroutine does not panic");
}
