//! Coroutine switches through the scheduler, in ns per `yield_now`.
//!
//! - `yield_pingpong/1_worker`: on a 1-worker runtime, two coroutines each
//!   call `greenstack::yield_now()` [`YIELDS`] times, so the worker
//!   alternates between them; the `block_on` body that spawns and joins
//!   them waits on the calling thread. One iteration is both loops, timed
//!   from inside `block_on`: the two spawns, the `2 * YIELDS` yields and
//!   the joins (the spawns and joins are a rounding error against the
//!   yields). Each yield is a switch out to the worker, a trip through its
//!   run loop and ready queue, and a switch into the other coroutine.
//!
//! Reports `Throughput::Elements(2 * YIELDS)`, so ns per yield is
//! `1e9 / thrpt` (or the time per iteration / elements).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use greenstack::Runtime;

/// `yield_now` calls per coroutine per iteration.
const YIELDS: u64 = 100_000;

/// Yields [`YIELDS`] times; returns how many.
fn yielder() -> u64 {
    let mut n = 0u64;
    for _ in 0..YIELDS {
        greenstack::yield_now();
        n = black_box(n + 1);
    }
    n
}

/// One iteration on `rt`; returns the time it took.
fn pingpong_once(rt: &Runtime) -> Duration {
    let (n, elapsed) = rt.block_on(|| {
        let start = Instant::now();
        let a = greenstack::spawn(yielder);
        let b = greenstack::spawn(yielder);
        let n = a.join().expect("yielder panicked") + b.join().expect("yielder panicked");
        (n, start.elapsed())
    });
    assert_eq!(n, 2 * YIELDS);
    elapsed
}

/// Registers `yield_pingpong/1_worker`.
fn yield_pingpong(c: &mut Criterion) {
    let rt = Runtime::builder()
        .workers(1)
        .build()
        .expect("build the runtime");
    let mut g = c.benchmark_group("yield_pingpong");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(2 * YIELDS));
    g.bench_function("1_worker", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| pingpong_once(&rt)).sum())
    });
    g.finish();
    // Every resume of a yielder but its first follows one of its yields.
    let runs: u64 = rt.stats().worker_runs.iter().sum();
    assert!(runs >= 2 * YIELDS, "{runs} resumes");
}

criterion_group!(benches, yield_pingpong);
criterion_main!(benches);
