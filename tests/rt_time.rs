//! `greenstack::time`: `sleep` and `sleep_until` never return early (in
//! coroutines and on plain threads), timers fire in deadline order, a zero
//! sleep returns, and many concurrent sleepers on one worker all wake (the
//! worker never blocks on one timer, not even an endless one). A wait with
//! a timeout that ends early disarms its timer and frees what it held
//! (issue 17, item 12): channel and socket waits with long timeouts keep
//! the armed-timer count and the heap flat.
//!
//! Timing: only lower bounds are asserted (a sleep never ends early). Every
//! test runs under a hang guard.

mod common;
#[allow(unused_imports)]
use common::*;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use greenstack::net::{TcpListener, TcpStream};
use greenstack::sync::{mpsc, Barrier};
use greenstack::time::{sleep, sleep_until};
use greenstack::{JoinHandle, Runtime};

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
/// generous spacing gives. Returns the order received.
fn timers_fire_in_deadline_order(workers: usize, spacing: Duration) -> Vec<usize> {
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
    assert_eq!(got.len(), N, "every sleeper woke");
    assert_no_nofault_violations(&rt);
    got
}

/// [`timers_fire_in_deadline_order`] up to three times, the spacing
/// doubled each time: a machine that stalls a worker (or the barrier's
/// last arrival) for longer than the spacing can reorder wake-ups that
/// are fine, but a wrong order fails every attempt.
fn timers_fire_in_deadline_order_retried(workers: usize, spacing: Duration) {
    let mut got = Vec::new();
    for attempt in 0..3 {
        got = timers_fire_in_deadline_order(workers, spacing * (1 << attempt));
        if got.windows(2).all(|w| w[0] < w[1]) {
            return;
        }
    }
    panic!("wake order on {workers} worker(s), three times: last {got:?}");
}

#[test]
fn timers_fire_in_deadline_order_one_worker() {
    bounded("timer order, 1 worker", || {
        timers_fire_in_deadline_order_retried(1, Duration::from_millis(30))
    });
}

#[test]
fn timers_fire_in_deadline_order_two_workers() {
    bounded("timer order, 2 workers", || {
        timers_fire_in_deadline_order_retried(2, Duration::from_millis(40))
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

/// Waits with short or zero timeouts on one worker, next to a coroutine
/// that keeps the worker busy without reading the clock: a zero timeout
/// reports `Timeout` at once, again and again; timeouts of a few
/// milliseconds report `Timeout` no earlier than their deadline, though
/// the worker's kept clock reading (runtime/src/time.rs) is stale whenever
/// the busy coroutine has run for a while.
#[test]
fn short_timeouts_end_never_early_next_to_a_busy_coroutine() {
    bounded("short timeouts", || {
        let rt = runtime(1);
        rt.spawn(|| {
            let (_tx, rx) = mpsc::channel::<()>();
            let busy = greenstack::spawn(|| {
                let mut x = 0u64;
                for i in 0..2_000 {
                    for j in 0..20_000u64 {
                        x = std::hint::black_box(x.wrapping_add(i ^ j));
                    }
                    greenstack::yield_now();
                }
                x
            });
            for _ in 0..1_000 {
                assert_eq!(
                    rx.recv_timeout(Duration::ZERO),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
            }
            for ms in [1u64, 2, 5, 1, 3] {
                let t = Instant::now();
                let d = Duration::from_millis(ms);
                assert_eq!(rx.recv_timeout(d), Err(mpsc::RecvTimeoutError::Timeout));
                assert!(t.elapsed() >= d, "recv_timeout({d:?}) ended early");
                checked_sleep(d);
            }
            busy.join().expect("busy coroutine does not panic");
        })
        .join()
        .expect("waiter does not panic");
        assert_eq!(rt.stats().timers, 0);
        assert_no_nofault_violations(&rt);
    });
}

// ---------------------------------------------------------------------------
// Timers of waits that end early (issue 17, item 12)
// ---------------------------------------------------------------------------

/// Bytes allocated through the global allocator and not yet freed.
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counting live bytes in [`LIVE_BYTES`] (read only
/// by the memory test, which runs alone in a child process).
struct Counting;

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `alloc`'s contract for `l`.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from this allocator (so from `System`) with `l`.
        unsafe { System.dealloc(p, l) };
        LIVE_BYTES.fetch_sub(l.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: `p` came from this allocator (so from `System`) with `l`,
        // and our caller upholds `realloc`'s contract for `new`.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE_BYTES.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The timeout of the waits below: far beyond any run, so a timer that is
/// still armed when its wait ends early stays (unfixed) for a minute.
const LONG: Duration = Duration::from_secs(60);

/// Armed timers a test may see at any moment: at most one per coroutine
/// (that of its last timed wait, see `RuntimeStats::timers`), and these
/// tests run two.
const FEW_TIMERS: u64 = 2;

/// Bounces a token `rounds` times between two coroutines on `rt`, both
/// receiving with `recv_timeout(LONG)` (every wait ends early, when the
/// value arrives). Every 1000 rounds the pinger reads the armed-timer
/// count; returns the largest it saw.
fn timed_pingpong(rt: &Arc<Runtime>, rounds: u64) -> u64 {
    let stats = Arc::clone(rt);
    rt.spawn(move || {
        let (to_b, from_a) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let b = greenstack::spawn(move || {
            while let Ok(v) = from_a.recv_timeout(LONG) {
                to_a.send(v + 1).expect("pinger alive");
            }
        });
        let (mut v, mut most) = (0, 0);
        for i in 0..rounds {
            to_b.send(v).expect("partner alive");
            v = from_b
                .recv_timeout(LONG)
                .expect("a reply long before the timeout");
            if i % 1000 == 0 {
                most = most.max(stats.stats().timers);
            }
        }
        drop(to_b);
        b.join().expect("partner does not panic");
        assert_eq!(v, rounds);
        most
    })
    .join()
    .expect("pinger does not panic")
}

/// `n` short-lived coroutines on `rt`, each ending a `recv_timeout(LONG)`
/// early (its value arrives while it is parked) and then returning.
fn short_timed_waits(rt: &Runtime, n: u64) {
    rt.spawn(move || {
        for i in 0..n {
            let (ready_tx, ready) = mpsc::channel::<()>();
            let (tx, rx) = mpsc::channel::<u64>();
            let h = greenstack::spawn(move || {
                ready_tx.send(()).expect("spawner alive");
                rx.recv_timeout(LONG)
                    .expect("a value long before the timeout")
            });
            // It is about to park (one worker: it runs until it does).
            ready.recv().expect("waiter alive");
            tx.send(i).expect("waiter alive");
            assert_eq!(h.join().expect("waiter does not panic"), i);
        }
    })
    .join()
    .expect("spawner does not panic")
}

/// A 1-worker ping-pong of 100,000 round trips with `recv_timeout(60 s)`:
/// the armed-timer count stays at most one per coroutine, not one per
/// round trip, and is 0 once both have finished. (Before the fix every
/// early-ended wait left its timer armed until its deadline: 200,000
/// here.)
#[test]
fn early_ended_recv_timeouts_disarm_their_timers() {
    bounded("recv_timeout ping-pong timers", || {
        let rt = Arc::new(runtime(1));
        let most = timed_pingpong(&rt, 100_000);
        assert!(
            most <= FEW_TIMERS,
            "{most} timers armed during the ping-pong; want at most {FEW_TIMERS}"
        );
        short_timed_waits(&rt, 1_000);
        assert_eq!(rt.stats().timers, 0, "timers left armed: {:?}", rt.stats());
        assert_no_nofault_violations(&rt);
    });
}

/// Socket reads with a read timeout arm a timer at every wait: a 1-worker
/// TCP echo of 10,000 one-byte requests, both ends with a 60 s read
/// timeout, keeps at most one timer per coroutine armed, and none once
/// both have finished.
#[test]
fn socket_read_timeouts_disarm_their_timers() {
    bounded("socket read timeout timers", || {
        const TRIPS: u64 = 10_000;
        let rt = Arc::new(runtime(1));
        let stats = Arc::clone(&rt);
        let most = rt
            .spawn(move || {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("local addr");
                let server = greenstack::spawn(move || {
                    let (mut s, _) = listener.accept().expect("accept");
                    s.set_read_timeout(Some(LONG)).expect("read timeout");
                    let mut b = [0u8; 1];
                    while s.read(&mut b).expect("a request before the timeout") == 1 {
                        s.write_all(&b).expect("echo");
                    }
                });
                let mut c = TcpStream::connect(addr).expect("connect");
                c.set_read_timeout(Some(LONG)).expect("read timeout");
                let (mut b, mut most) = ([0u8; 1], 0);
                for i in 0..TRIPS {
                    c.write_all(&[i as u8]).expect("request");
                    c.read_exact(&mut b).expect("a reply before the timeout");
                    assert_eq!(b[0], i as u8);
                    if i % 100 == 0 {
                        most = most.max(stats.stats().timers);
                    }
                }
                drop(c);
                server.join().expect("server does not panic");
                most
            })
            .join()
            .expect("client does not panic");
        assert!(
            most <= FEW_TIMERS,
            "{most} timers armed during the echo; want at most {FEW_TIMERS}"
        );
        assert_eq!(rt.stats().timers, 0, "timers left armed: {:?}", rt.stats());
        assert_no_nofault_violations(&rt);
    });
}

/// Names the child process of the memory test.
const MEMORY_CHILD_ENV: &str = "GREENSTACK_TIME_MEMORY_CHILD";

/// Bytes the heap may grow by in the memory test, whatever the number of
/// round trips: the runtime's own vectors settling. (Before the fix: about
/// 70 bytes per round trip of the ping-pong, over 14 MB here, and a timer
/// entry plus a task allocation per short-lived waiter.)
const HEAP_SLACK: isize = 64 * 1024;

/// Early-ended timed waits free what their timers held, at once: after
/// 100,000 `recv_timeout(60 s)` round trips on 1 worker, and after 10,000
/// short-lived coroutines that each ended such a wait early and returned,
/// the live heap (counted by this binary's global allocator) is where it
/// was after a warm-up, give or take [`HEAP_SLACK`], though every timeout
/// is still a minute away. Before the fix each wait's timer entry kept its
/// waker, and with it its task's allocation, until the deadline.
///
/// Runs in a child process, alone, so other tests' allocations do not
/// count.
#[test]
fn early_ended_timed_waits_free_their_memory() {
    if std::env::var_os(MEMORY_CHILD_ENV).is_some() {
        memory_child();
        return;
    }
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args([
        "early_ended_timed_waits_free_their_memory",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(MEMORY_CHILD_ENV, "1");
    let out = common::output_bounded(cmd, "the memory child");
    assert!(
        out.status.success(),
        "child: status {:?} (signal {:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.status.signal(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The memory test's body (in the child).
fn memory_child() {
    let rt = Arc::new(runtime(1));
    let live = || LIVE_BYTES.load(Ordering::Relaxed);
    // Warm-up: the worker's queues, spare allocations and timer slab grow
    // to their working size.
    timed_pingpong(&rt, 1_000);
    short_timed_waits(&rt, 1_000);
    let before = live();
    timed_pingpong(&rt, 100_000);
    let after_pingpong = live();
    short_timed_waits(&rt, 10_000);
    let after_short = live();
    println!(
        "heap: {before} bytes after warm-up, {after_pingpong} after the ping-pong, \
         {after_short} after the short-lived waiters; {} timers armed",
        rt.stats().timers
    );
    assert!(
        after_pingpong - before < HEAP_SLACK,
        "the ping-pong grew the heap by {} bytes",
        after_pingpong - before
    );
    assert!(
        after_short - after_pingpong < HEAP_SLACK,
        "the short-lived waiters grew the heap by {} bytes",
        after_short - after_pingpong
    );
    assert_eq!(rt.stats().timers, 0);
}

/// `Interval`: ticks due at `start + n * period` whatever the caller does
/// between them, never returned early; missed ticks per the behaviour
/// (burst: all of them at once; delay: one, then a period from now; skip:
/// one, then back on the original schedule). From a coroutine and from a
/// plain thread.
#[test]
fn interval_ticks_without_drift_and_handles_missed_ticks() {
    use greenstack::time::{interval_at, MissedTickBehavior};
    let period = Duration::from_millis(10);
    let check = move || {
        // No drift: 3 ms of work between ticks moves no due instant.
        let start = Instant::now() + period;
        let mut every = interval_at(start, period);
        for n in 0..5u32 {
            let due = every.tick();
            assert_eq!(due, start + period * n);
            assert!(Instant::now() >= due, "tick {n} returned early");
            std::thread::sleep(Duration::from_millis(3));
        }
        // Burst: a 35 ms pause misses the ticks due meanwhile; each comes
        // back at once, in order, then the schedule goes on.
        let mut burst = interval_at(Instant::now(), period);
        let start = burst.tick();
        std::thread::sleep(Duration::from_millis(35));
        for n in 1..=3u32 {
            assert_eq!(burst.tick(), start + period * n);
        }
        assert_eq!(burst.deadline(), start + period * 4);
        // Delay: one tick for the missed ones, then a period from it.
        let mut delay = interval_at(Instant::now(), period);
        delay.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let start = delay.tick();
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(delay.tick(), start + period);
        assert!(
            delay.deadline() > start + period * 3,
            "{:?}",
            delay.deadline() - start
        );
        // Skip: one tick, then the first instant of the original schedule
        // after now.
        let mut skip = interval_at(Instant::now(), period);
        skip.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let start = skip.tick();
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(skip.tick(), start + period);
        let next = skip.deadline() - start;
        assert_eq!(
            next.as_nanos() % period.as_nanos(),
            0,
            "{next:?} is off the schedule"
        );
        assert!(next >= period * 4, "{next:?}: a missed tick was kept");
    };
    bounded("intervals on a plain thread", check);
    let rt = Runtime::new().unwrap();
    bounded("intervals in a coroutine", move || {
        rt.block_on_worker(check)
    });
}
