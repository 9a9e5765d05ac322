//! What a timeout costs a wait: a token bounced between two coroutines
//! through two `sync::mpsc` channels on 1 worker, each side receiving with
//! plain `recv` or with `recv_timeout(60 s)` (every park needs a timer, and
//! the value arrives long before its deadline). Reports time per round
//! trip (two hand-offs, two parks).
//!
//! Issue 17, item 12: a wait with a timeout should cost at most 1.5x a plain
//! wait. `cargo bench --bench rt_timer`; compare `recv_timeout_60s` with
//! `recv`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use greenstack::sync::mpsc;
use greenstack::Runtime;

/// The timeout of the timed variant: far beyond any run, so every timer
/// is cancelled, never fired.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Bounces a token `rounds` times between two coroutines on `rt`'s
/// workers; both receive with a timeout if `timed`. Returns the time.
fn pingpong(rt: &Runtime, rounds: u64, timed: bool) -> Duration {
    let recv = move |rx: &mpsc::Receiver<u64>| {
        if timed {
            rx.recv_timeout(TIMEOUT).ok()
        } else {
            rx.recv().ok()
        }
    };
    rt.spawn(move || {
        let (to_b, from_a) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let b = greenstack::spawn(move || {
            while let Some(v) = recv(&from_a) {
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let mut v = 0;
        for _ in 0..rounds {
            to_b.send(v).expect("partner alive");
            v = recv(&from_b).expect("partner alive");
        }
        let t = start.elapsed();
        drop(to_b);
        b.join().expect("partner does not panic");
        assert_eq!(v, rounds);
        t
    })
    .join()
    .expect("pinger does not panic")
}

/// The benchmark group: one criterion iteration is one round trip.
fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_pingpong_1_worker");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let rt = Runtime::builder().workers(1).build().expect("runtime");
    g.bench_function("recv", |b| {
        b.iter_custom(|iters| pingpong(&rt, iters, false))
    });
    g.bench_function("recv_timeout_60s", |b| {
        b.iter_custom(|iters| pingpong(&rt, iters, true))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
