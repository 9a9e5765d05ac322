//! An async HTTP client (reqwest) from coroutines, through the `tokio`
//! feature: one coroutine per request awaits reqwest's future with
//! `block_on_future`; greenstack's tokio runtime (one thread) drives the
//! sockets and wakes each coroutine when its response is in. Needs the
//! `tokio` feature.
//!
//! Run with `cargo run --release --example async_client
//! URL [REQUESTS]` (default 1,000 requests) against a server, e.g.
//! `examples/http_hello`. Prints how many answered 200 and the rate.

use std::time::Instant;

#[greenstack::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("usage: async_client URL [REQUESTS]")?;
    let n: usize = match args.next() {
        Some(s) => s.parse()?,
        None => 1000,
    };
    let client = reqwest::Client::new();
    let start = Instant::now();
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            greenstack::spawn(move || {
                greenstack::block_on_future(async move {
                    let resp = client.get(&url).send().await?;
                    let status = resp.status();
                    let body = resp.text().await?;
                    Ok::<_, reqwest::Error>((status, body))
                })
            })
        })
        .collect();
    let mut ok = 0;
    let mut body = String::new();
    for r in requests {
        match r.join().expect("a request coroutine panicked") {
            Ok((status, b)) if status.is_success() => {
                ok += 1;
                body = b;
            }
            Ok((status, _)) => eprintln!("async_client: status {status}"),
            Err(e) => eprintln!("async_client: {e}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "async_client: {ok} of {n} requests answered 200 ({body:?}) in {:.1} ms, {:.0} requests/s",
        secs * 1e3,
        n as f64 / secs
    );
    if ok == n {
        Ok(())
    } else {
        Err(format!("{} requests failed", n - ok).into())
    }
}
