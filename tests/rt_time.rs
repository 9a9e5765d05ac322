//! `greenstack::time`: `sleep` and `sleep_until` never return early (in
//! coroutines and on plain threads), timers fire in deadline order, a zero
//! sleep returns, and many concurrent sleepers on one worker all wake (the
//! worker never blocks on one timer, not even an endless one).
//!
//! Timing: only lower bounds are asserted (a sleep never ends early). Every
//! test runs under a hang guard.

mod common;
#[allow(unused_imports)]
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use greenstack::sync::{mpsc, Barrier};
use greenstack::time::{sleep, sleep_until};
use greenstack::JoinHandle;

/// Sleeps for `d` with `greenstack::time::sleep` and asserts it did not
/// return early; returns the time it took.
fn checked_sleep(d: Duration) -> Duration {
    let t = Instant::now();
    sleep(d);
    let elapsed = t.elapsed();
    assert!(elapsed >= d, "sleep({d:?}) returned after {elapsed:?}");
    elapsed
}

/// The durations the never-early tests sleep, from sub-millisecond to a
/// few tens of milliseconds.
const DURATIONS: [Duration; 6] = [
    Duration::from_micros(100),
    Duration::from_millis(1),
    Duration::from_millis(3),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(40),
];

#[test]
fn sleep_never_returns_early_in_coroutines() {
    bounded("coroutine sleeps", || {
        for workers in [1, 2] {
            let rt = runtime(workers);
            // Forty coroutines sleep through the durations at once, each
            // starting at a different point of the list.
            let hs: Vec<JoinHandle<()>> = (0..40)
                .map(|i| {
                    rt.spawn(move || {
                        for k in 0..DURATIONS.len() {
                            checked_sleep(DURATIONS[(i + k) % DURATIONS.len()]);
                        }
                        let deadline = Instant::now() + Duration::from_millis(7);
                        sleep_until(deadline);
                        assert!(Instant::now() >= deadline, "sleep_until returned early");
                    })
                })
                .collect();
            for h in hs {
                h.join().expect("a sleeper does not panic");
            }
            assert_no_nofault_violations(&rt);
        }
    });
}

#[test]
fn sleep_never_returns_early_on_plain_threads() {
    bounded("thread sleeps", || {
        // No runtime at all.
        let ts: Vec<thread::JoinHandle<()>> = (0..4)
            .map(|i| {
                thread::spawn(move || {
                    for k in 0..DURATIONS.len() {
                        checked_sleep(DURATIONS[(i + k) % DURATIONS.len()]);
                    }
                    let deadline = Instant::now() + Duration::from_millis(7);
                    sleep_until(deadline);
                    assert!(Instant::now() >= deadline, "sleep_until returned early");
                })
            })
            .collect();
        ts.into_iter().for_each(|t| t.join().unwrap());

        // A thread sleeping while a runtime runs, with stray unparks from a
        // coroutine: a thread unpark must not cut the sleep short.
        let rt = runtime(1);
        let me = thread::current();
        let unparker = rt.spawn(move || {
            for _ in 0..20 {
                me.unpark();
                sleep(Duration::from_millis(1));
            }
        });
        checked_sleep(Duration::from_millis(30));
        unparker.join().unwrap();
        assert_no_nofault_violations(&rt);
    });
}

/// A coroutine unparked (its token set) while it sleeps still sleeps its
/// full time: `sleep` never returns early, whatever wakes it.
#[test]
fn sleep_is_not_cut_short_by_unpark() {
    bounded("sleep vs unpark", || {
        let rt = runtime(2);
        let sleeper = rt.spawn(|| checked_sleep(Duration::from_millis(50)));
        let c = sleeper.coroutine().expect("a coroutine").clone();
        for _ in 0..20 {
            c.unpark();
            thread::sleep(Duration::from_millis(1));
        }
        sleeper.join().unwrap();
        assert_no_nofault_violations(&rt);
    });
}

/// Timers fire in deadline order: `N` coroutines, spawned in a shuffled
/// order, pass a common barrier and then sleep `(k + 1) * SPACING` for their
/// `k`; each sends `k` on waking. The order received is sorted. On one
/// worker this is exact (one timer heap, fired in deadline order); on two
/// it needs no more than `SPACING` of skew between the workers, which the
/// generous spacing gives.
fn timers_fire_in_deadline_order(workers: usize, spacing: Duration) {
    const N: usize = 8;
    // A fixed shuffle of 0..N.
    const ORDER: [usize; N] = [5, 2, 7, 0, 3, 6, 1, 4];
    let rt = runtime(workers);
    let gate = Arc::new(Barrier::new(N));
    let (tx, rx) = mpsc::channel::<usize>();
    for k in ORDER {
        let gate = Arc::clone(&gate);
        let tx = tx.clone();
        drop(rt.spawn(move || {
            gate.wait();
            checked_sleep(spacing * (k as u32 + 1));
            tx.send(k).unwrap();
        }));
    }
    drop(tx);
    let got: Vec<usize> = rx.iter().collect();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "wake order on {workers} worker(s)"
    );
    assert_no_nofault_violations(&rt);
}

#[test]
fn timers_fire_in_deadline_order_one_worker() {
    bounded("timer order, 1 worker", || {
        timers_fire_in_deadline_order(1, Duration::from_millis(30))
    });
}

#[test]
fn timers_fire_in_deadline_order_two_workers() {
    bounded("timer order, 2 workers", || {
        timers_fire_in_deadline_order(2, Duration::from_millis(40))
    });
}

/// Deadlines 1 ms apart, all passing while the only worker is busy: once
/// it is free, the expired timers fire in one batch, in deadline order, so
/// the wake order is exactly the deadline order.
///
/// The coroutines arm their timers first (the busy coroutine waits, by
/// yielding, until all have announced themselves; each announces right
/// before `sleep_until`, which parks it without a switch in between). A
/// coroutine that only got to arm after its deadline had passed would not
/// park at all; such a run proves nothing and is repeated, with a larger
/// head start.
#[test]
fn sleep_until_wakes_in_deadline_order_on_one_worker() {
    bounded("sleep_until order", || {
        const N: usize = 16;
        let rt = runtime(1);
        for attempt in 1u32..=5 {
            let head_start = Duration::from_millis(20) * attempt * attempt;
            let (got, late) = rt.block_on(move || {
                let (tx, rx) = mpsc::channel::<usize>();
                let armed = Arc::new(AtomicUsize::new(0));
                let late = Arc::new(AtomicUsize::new(0));
                let t0 = Instant::now() + head_start;
                for k in [9, 3, 14, 0, 7, 12, 5, 1, 15, 10, 2, 8, 13, 4, 11, 6] {
                    let (tx, armed, late) = (tx.clone(), Arc::clone(&armed), Arc::clone(&late));
                    drop(greenstack::spawn(move || {
                        let deadline = t0 + Duration::from_millis(k as u64);
                        if Instant::now() >= deadline {
                            late.fetch_add(1, Ordering::SeqCst);
                        }
                        armed.fetch_add(1, Ordering::SeqCst);
                        sleep_until(deadline);
                        assert!(Instant::now() >= deadline, "sleep_until returned early");
                        tx.send(k).unwrap();
                    }));
                }
                drop(tx);
                while armed.load(Ordering::SeqCst) < N {
                    greenstack::yield_now();
                }
                // Keep the only worker busy past every deadline.
                while Instant::now() < t0 + Duration::from_millis(N as u64 + 5) {
                    std::hint::spin_loop();
                }
                let got = rx.iter().collect::<Vec<_>>();
                (got, late.load(Ordering::SeqCst))
            });
            if late > 0 {
                println!("attempt {attempt}: {late} coroutine(s) armed after their deadline");
                continue;
            }
            assert_eq!(got, (0..N).collect::<Vec<_>>());
            assert_no_nofault_violations(&rt);
            return;
        }
        panic!("the coroutines never managed to arm their timers in time");
    });
}

#[test]
fn zero_sleep_returns() {
    bounded("zero sleep", || {
        sleep(Duration::ZERO);
        sleep_until(Instant::now());
        sleep_until(Instant::now() - Duration::from_millis(5));
        for workers in [1, 2] {
            let rt = runtime(workers);
            rt.block_on(|| {
                for _ in 0..1_000 {
                    sleep(Duration::ZERO);
                }
                sleep_until(Instant::now() - Duration::from_millis(5));
                // Many coroutines doing zero sleeps at once.
                let hs: Vec<JoinHandle<()>> = (0..100)
                    .map(|_| greenstack::spawn(|| sleep(Duration::ZERO)))
                    .collect();
                hs.into_iter().for_each(|h| h.join().unwrap());
            });
            assert_no_nofault_violations(&rt);
        }
    });
}

/// Two thousand coroutines sleep at once on a single worker, with
/// durations spread over 1..=60 ms, next to one coroutine that sleeps for
/// an hour and one that sleeps forever (`Duration::MAX`): every short
/// sleeper wakes (never early), so the worker never blocks on any one
/// timer. Dropping the runtime then cancels the two long sleepers.
#[test]
fn many_concurrent_sleepers_on_one_worker_all_wake() {
    bounded("many sleepers", || {
        const N: usize = 2_000;
        let rt = runtime(1);
        let long = rt.spawn(|| sleep(Duration::from_secs(3_600)));
        let forever = rt.spawn(|| sleep(Duration::MAX));
        let woke = Arc::new(AtomicUsize::new(0));
        let hs: Vec<JoinHandle<()>> = (0..N)
            .map(|i| {
                let woke = Arc::clone(&woke);
                rt.spawn(move || {
                    let d = Duration::from_millis(1 + (i * 37 % 60) as u64);
                    checked_sleep(d);
                    woke.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for h in hs {
            h.join().expect("a sleeper does not panic");
        }
        assert_eq!(woke.load(Ordering::SeqCst), N);
        assert!(!long.is_finished() && !forever.is_finished());
        // The only worker still runs new coroutines next to the long
        // sleepers.
        assert_eq!(rt.block_on(|| 1 + 1), 2);
        assert_no_nofault_violations(&rt);
        drop(rt);
        let cancelled = long.join().expect_err("cancelled at shutdown");
        assert!(cancelled.downcast_ref::<greenstack::Cancelled>().is_some());
        assert!(forever.join().is_err(), "cancelled at shutdown");
    });
}

/// A sleeping coroutine does not hold up the others on its worker: on one
/// worker, while one coroutine sleeps for an hour, another runs a thousand
/// yields and finishes.
#[test]
fn a_sleeper_does_not_block_its_worker() {
    bounded("sleeper vs worker", || {
        let rt = runtime(1);
        let sleeper = rt.spawn(|| sleep(Duration::from_secs(3_600)));
        let busy = rt.spawn(|| {
            for _ in 0..1_000 {
                greenstack::yield_now();
            }
            7
        });
        assert_eq!(busy.join().unwrap(), 7);
        assert!(!sleeper.is_finished());
        assert_no_nofault_violations(&rt);
    });
}
