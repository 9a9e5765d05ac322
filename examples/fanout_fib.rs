//! Fan-out Fibonacci: a coroutine per call, spread over the workers by
//! work stealing. Prints the value, the coroutine count and the time on 1
//! worker and on all of them.
//!
//! Run with `cargo run --release --example fanout_fib [N]` (default 27).

use std::time::Instant;

/// fib(n) with `fib(n - 1)` in a new coroutine and `fib(n - 2)` inline.
fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let left = greenstack::spawn!(move || fib(n - 1));
    let right = fib(n - 2);
    left.join().expect("fib does not panic") + right
}

fn main() -> std::io::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(27);
    let all = std::thread::available_parallelism().map_or(1, usize::from);
    let mut first = None;
    for workers in [1, all] {
        let rt = greenstack::Runtime::builder().workers(workers).build()?;
        let t = Instant::now();
        let v = rt.block_on(move || fib(n));
        let secs = t.elapsed().as_secs_f64();
        let s = rt.stats();
        let spawned = s.spawned - 1;
        println!(
            "fib({n}) = {v} on {workers} worker(s): {spawned} coroutines in {:.1} ms ({:.0} ns each), {} steals",
            secs * 1e3,
            secs * 1e9 / spawned as f64,
            s.steals
        );
        match first {
            None => first = Some(secs),
            Some(one) => println!("speed-up 1 -> {workers} workers: {:.2}x", one / secs),
        }
    }
    Ok(())
}
