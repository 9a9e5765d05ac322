//! Channel ping-pong: a token bounced between two coroutines through two
//! `sync::mpsc` channels, on 1 and on 2 workers. Reports time per one-way
//! hand-off (a send plus the receive it wakes).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use greenstack::sync::mpsc;
use greenstack::Runtime;

/// Round trips per measured iteration.
const ROUNDS: u64 = 10_000;

/// Bounces a token `rounds` times between two coroutines; returns the time.
/// Both run on the workers (`block_on`'s own root runs on the calling
/// thread, so it only waits).
fn pingpong(rt: &Runtime, rounds: u64) -> Duration {
    rt.spawn(move || {
        let (to_b, from_a) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let start = Instant::now();
        let b = greenstack::spawn(move || {
            for v in from_a.iter() {
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let mut v = 0;
        for _ in 0..rounds {
            to_b.send(v).expect("partner alive");
            v = from_b.recv().expect("partner alive");
        }
        drop(to_b);
        b.join().expect("partner does not panic");
        assert_eq!(v, rounds);
        start.elapsed()
    })
    .join()
    .expect("pinger does not panic")
}

/// The benchmark group.
fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_pingpong");
    g.throughput(Throughput::Elements(2 * ROUNDS));
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for workers in [1, 2] {
        let rt = Runtime::builder()
            .workers(workers)
            .build()
            .expect("runtime");
        g.bench_function(
            format!("{workers}_worker{}", if workers > 1 { "s" } else { "" }),
            |b| b.iter_custom(|iters| (0..iters).map(|_| pingpong(&rt, ROUNDS)).sum()),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
