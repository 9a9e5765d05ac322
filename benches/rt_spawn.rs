//! Spawn + join through the scheduler, in ns per coroutine.
//!
//! - `spawn_join/1M_2workers`: on a 2-worker runtime, one coroutine (the
//!   `block_on` body, which runs on the calling thread) spawns [`TASKS`]
//!   tiny coroutines, each returning its index, into the runtime's
//!   injector, from which both workers take them; it then joins them in
//!   spawn order and checks the sum. Each sample is one whole run (flat
//!   sampling); only the spawns and joins are timed, not building the
//!   runtime or the hand-off into `block_on`. The first run (warm-up) sets
//!   the stack slots up; later runs take them from the arena's pool, so
//!   this is the steady-state spawn path. With one run per sample criterion
//!   always prints "Unable to complete 10 samples"; that is expected (10
//!   runs of about a second each, plus the warm-up).
//! - `fanout_fib/{1,2}_workers`: `fib(`[`FIB_N`]`)` where every node with
//!   `n >= 2` runs `fib(n - 1)` in a spawned coroutine and `fib(n - 2)`
//!   inline, then joins the child: a tree of [`fib_spawns`] coroutines,
//!   most of which park in a join at least once. The root node runs on the
//!   calling thread (`block_on`), every other node on the workers. Run on 1
//!   and on 2 workers; the ratio of the two is the speed-up from the second
//!   worker. Flat sampling: every sample is the same number of whole trees.
//!
//! Both report `Throughput::Elements(coroutines spawned)`, so ns per task
//! is `1e9 / thrpt` (or the time per iteration / elements). Each benchmark
//! asserts, from `rt.stats()`, that it spawned exactly that many.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use greenstack::Runtime;

/// Coroutines spawned per `spawn_join` run.
const TASKS: u64 = 1_000_000;

/// Argument of the `fanout_fib` tree.
const FIB_N: u32 = 25;

/// `fib(n)`, spawning a coroutine for `fib(n - 1)` at every node with
/// `n >= 2`.
fn fib(n: u32) -> u64 {
    if n < 2 {
        return u64::from(n);
    }
    let child = greenstack::spawn(move || fib(n - 1));
    let inline = fib(n - 2);
    child.join().expect("fib coroutine panicked") + inline
}

/// `fib(n)` computed without coroutines, to check [`fib`]'s answer.
fn fib_plain(n: u32) -> u64 {
    (0..n).fold((0u64, 1u64), |(a, b), _| (b, a + b)).0
}

/// Coroutines [`fib`]`(n)` spawns: `s(n) = s(n-1) + s(n-2) + 1` with
/// `s(0) = s(1) = 0`, which is `fib(n + 1) - 1`.
fn fib_spawns(n: u32) -> u64 {
    fib_plain(n + 1) - 1
}

/// A runtime with `workers` workers and otherwise the defaults.
fn runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .build()
        .expect("build the runtime")
}

/// One `spawn_join` run on `rt`: spawns [`TASKS`] coroutines from inside
/// `block_on`, joins them all; returns the time the spawns and joins took.
fn spawn_join_once(rt: &Runtime) -> Duration {
    let (sum, elapsed) = rt.block_on(|| {
        let start = Instant::now();
        let handles: Vec<_> = (0..TASKS)
            .map(|i| greenstack::spawn(move || black_box(i)))
            .collect();
        let sum: u64 = handles
            .into_iter()
            .map(|h| h.join().expect("task panicked"))
            .sum();
        (sum, start.elapsed())
    });
    assert_eq!(sum, TASKS * (TASKS - 1) / 2);
    elapsed
}

/// One `fanout_fib` run on `rt`; returns the time `fib` took.
fn fanout_fib_once(rt: &Runtime) -> Duration {
    let (v, elapsed) = rt.block_on(|| {
        let start = Instant::now();
        let v = fib(black_box(FIB_N));
        (v, start.elapsed())
    });
    assert_eq!(v, fib_plain(FIB_N));
    elapsed
}

/// Registers `spawn_join/1M_2workers`.
fn spawn_join(c: &mut Criterion) {
    let rt = runtime(2);
    let before = rt.stats().spawned;
    let mut g = c.benchmark_group("spawn_join");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(TASKS));
    let mut runs = 0u64;
    g.bench_function("1M_2workers", |b| {
        b.iter_custom(|iters| {
            runs += iters;
            (0..iters).map(|_| spawn_join_once(&rt)).sum()
        })
    });
    g.finish();
    // Each run also spawns its `block_on` body.
    assert_eq!(rt.stats().spawned - before, runs * (TASKS + 1));
}

/// Registers `fanout_fib/{1,2}_workers`.
fn fanout_fib(c: &mut Criterion) {
    let spawns = fib_spawns(FIB_N);
    let mut g = c.benchmark_group("fanout_fib");
    g.sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(spawns));
    for workers in [1, 2] {
        let rt = runtime(workers);
        let before = rt.stats().spawned;
        let mut runs = 0u64;
        g.bench_function(format!("{workers}_workers"), |b| {
            b.iter_custom(|iters| {
                runs += iters;
                (0..iters).map(|_| fanout_fib_once(&rt)).sum()
            })
        });
        assert_eq!(rt.stats().spawned - before, runs * (spawns + 1));
    }
    g.finish();
}

criterion_group!(benches, spawn_join, fanout_fib);
criterion_main!(benches);
