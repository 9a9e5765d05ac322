//! `greenstack::sync`'s locks and coordination primitives: the Mutex's FIFO
//! hand-off (a bound on how long a contender waits, derived below), a
//! writer that a stream of readers cannot starve, Condvar (notify_one,
//! notify_all, timeouts, wait_while), Semaphore (at most N holders),
//! Barrier (one leader per round, reusable) and WaitGroup; each across
//! coroutines and plain threads where that means something (a thread holds
//! the lock while coroutines wait, and the other way round).
//!
//! Timing: only lower bounds are asserted (a timeout never fires early).
//! Every test runs under a hang guard: a starved waiter or a lost wake-up
//! fails the test instead of hanging it.

mod common;
#[allow(unused_imports)]
use common::*;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use greenstack::sync::{mpsc, Barrier, Condvar, Mutex, RwLock, Semaphore, WaitGroup};
use greenstack::JoinHandle;

/// Lets others run: a coroutine yields; a thread spins briefly (a thread
/// `yield_now` on a busy machine can cost a whole scheduler tick).
fn pause() {
    if greenstack::try_current().is_some() {
        greenstack::yield_now();
    } else {
        for _ in 0..1_000 {
            std::hint::spin_loop();
        }
    }
}

/// Polls `cond`, pausing in between, until it holds. Bounded by the test's
/// hang guard.
fn spin_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        nap(Duration::from_millis(1));
    }
}

// --------------------------------------------------------------- Mutex ---

/// Eight coroutines contend on one Mutex, each `ITERS` times: lock, append
/// its id to the log kept inside the mutex, yield while holding, unlock.
///
/// # The bound, from FIFO hand-off
///
/// The log's order is the order of holding (only the holder appends). Take
/// two consecutive entries of coroutine X, at positions p < q, and the
/// `gap = q - p - 1` entries of others between them. X's next `lock()`
/// enqueues it at some instant E after its unlock. Split the gap at E:
///
/// - *After E.* A coroutine can append after E and before X only if it held
///   the permit at E (at most one: the holder, or the waiter the permit was
///   just handed to) or waited in the queue ahead of X (a release hands the
///   permit to the queue's front, and nobody takes a free permit while
///   someone waits, so newcomers and re-lockers queue behind X). Those are
///   distinct others, each appending once: at most `N - 1 = 7`.
/// - *Before E.* X runs without switching from its unlock to its enqueue
///   (neither does anything that parks or yields), so its worker runs
///   nothing else meanwhile: entries before E come from coroutines on the
///   *other* worker, and form a prefix of the gap.
///
/// So `gap - (leading run of other-worker entries in the gap) <= 7`, for
/// every pair, from the very first acquisition: no warm-up needed. On one
/// worker the run is always empty and this is plainly `gap <= 7`: between
/// two acquisitions by the same coroutine every other one acquires at most
/// once. (On two workers the raw gap has no bound from fairness alone: if
/// the OS deschedules X's worker between its unlock and its next lock, the
/// other worker's coroutines may cycle through the lock meanwhile, which is
/// not unfair to X, which was not waiting.)
fn mutex_fifo_hand_off(workers: usize) {
    const N: usize = 8;
    const ITERS: usize = 200;
    let rt = runtime(workers);
    let m = Arc::new(Mutex::new(Vec::<usize>::with_capacity(N * ITERS)));
    // All eight start contending together (an early one could otherwise be
    // done before a late one starts).
    let gate = Arc::new(Barrier::new(N));
    let handles: Vec<JoinHandle<ThreadId>> = (0..N)
        .map(|id| {
            let m = Arc::clone(&m);
            let gate = Arc::clone(&gate);
            rt.spawn(move || {
                // Started coroutines never change threads: this is its
                // worker for good.
                let home = thread::current().id();
                gate.wait();
                for _ in 0..ITERS {
                    let mut g = m.lock();
                    g.push(id);
                    greenstack::yield_now();
                    drop(g);
                }
                home
            })
        })
        .collect();
    let homes: Vec<ThreadId> = handles
        .into_iter()
        .map(|h| h.join().expect("a contender does not panic"))
        .collect();
    let log = std::mem::take(&mut *m.lock());
    assert_eq!(log.len(), N * ITERS);
    let mut max_raw_gap = 0;
    for x in 0..N {
        let pos: Vec<usize> = (0..log.len()).filter(|&i| log[i] == x).collect();
        assert_eq!(pos.len(), ITERS, "coroutine {x} acquired too rarely");
        for w in pos.windows(2) {
            let between = &log[w[0] + 1..w[1]];
            max_raw_gap = max_raw_gap.max(between.len());
            let foreign_prefix = between
                .iter()
                .take_while(|&&y| homes[y] != homes[x])
                .count();
            if workers == 1 {
                assert_eq!(foreign_prefix, 0);
            }
            assert!(
                between.len() - foreign_prefix < N,
                "coroutine {x} waited behind {} acquisitions ({} of them before it \
                 could have queued) between log positions {} and {}: {between:?}",
                between.len(),
                foreign_prefix,
                w[0],
                w[1]
            );
        }
    }
    println!(
        "{workers} worker(s): largest raw gap between a coroutine's acquisitions: {max_raw_gap}"
    );
    if workers == 1 {
        // All eight did contend: the rotation reached its full length.
        assert_eq!(max_raw_gap, N - 1, "not all {N} coroutines contended");
    }
    assert_no_nofault_violations(&rt);
}

#[test]
fn mutex_fifo_hand_off_one_worker() {
    bounded("mutex fairness, 1 worker", || mutex_fifo_hand_off(1));
}

#[test]
fn mutex_fifo_hand_off_two_workers() {
    bounded("mutex fairness, 2 workers", || mutex_fifo_hand_off(2));
}

/// Four coroutines and four threads increment a counter under the mutex,
/// pausing while holding it; an `inside` flag catches two holders at once.
#[test]
fn mutex_excludes_across_coroutines_and_threads() {
    bounded("mutex exclusion", || {
        const ITERS: u64 = 300;
        let rt = runtime(2);
        let m = Arc::new(Mutex::new(0u64));
        let inside = Arc::new(AtomicBool::new(false));
        let tasks: Vec<Task<()>> = (0..8)
            .map(|i| {
                let m = Arc::clone(&m);
                let inside = Arc::clone(&inside);
                let side = if i % 2 == 0 { Side::Co } else { Side::Th };
                start(side, Some(&rt), move || {
                    for _ in 0..ITERS {
                        let mut g = m.lock();
                        assert!(!inside.swap(true, Ordering::SeqCst), "two holders");
                        let v = *g;
                        pause();
                        *g = v + 1;
                        inside.store(false, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        tasks.into_iter().for_each(Task::join);
        assert_eq!(*m.lock(), 8 * ITERS);
        assert_no_nofault_violations(&rt);
    });
}

/// A plain thread holds the mutex while coroutines wait for it on a
/// 1-worker runtime: the waiters park (another coroutine still runs on the
/// only worker), none gets in before the thread unlocks, all get in after.
#[test]
fn mutex_held_by_thread_while_coroutines_wait() {
    bounded("thread holds, coroutines wait", || {
        let rt = runtime(1);
        let m = Arc::new(Mutex::new(0u32));
        let g = m.lock();
        let waiting = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<JoinHandle<()>> = (0..5)
            .map(|_| {
                let m = Arc::clone(&m);
                let waiting = Arc::clone(&waiting);
                rt.spawn(move || {
                    waiting.fetch_add(1, Ordering::SeqCst);
                    *m.lock() += 1;
                })
            })
            .collect();
        spin_until(|| waiting.load(Ordering::SeqCst) == 5);
        // The only worker is not blocked by the five waiters.
        assert_eq!(rt.block_on(|| 6 * 7), 42);
        // And none of them got in while the thread holds the lock.
        thread::sleep(Duration::from_millis(20));
        assert_eq!(*g, 0);
        assert!(m.try_lock().is_none());
        let timeout = Duration::from_millis(10);
        let t = Instant::now();
        assert!(m.lock_timeout(timeout).is_none());
        assert!(t.elapsed() >= timeout, "lock_timeout returned early");
        drop(g);
        waiters
            .into_iter()
            .for_each(|h| h.join().expect("a waiter does not panic"));
        assert_eq!(*m.lock(), 5);
        assert_no_nofault_violations(&rt);
    });
}

/// A coroutine holds the mutex while plain threads wait for it: the threads
/// block until it unlocks and see what it wrote; a coroutine waiting with
/// `lock_timeout` gives up no earlier than its timeout.
#[test]
fn mutex_held_by_coroutine_while_threads_wait() {
    bounded("coroutine holds, threads wait", || {
        let rt = runtime(2);
        let m = Arc::new(Mutex::new(Vec::<&'static str>::new()));
        let (locked_tx, locked_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = {
            let m = Arc::clone(&m);
            rt.spawn(move || {
                let mut g = m.lock();
                locked_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                greenstack::time::sleep(Duration::from_millis(10));
                g.push("holder");
            })
        };
        locked_rx.recv().unwrap();
        let threads: Vec<thread::JoinHandle<()>> = (0..3)
            .map(|_| {
                let m = Arc::clone(&m);
                thread::spawn(move || {
                    let mut g = m.lock();
                    assert_eq!(g.first(), Some(&"holder"), "got in before the holder left");
                    g.push("thread");
                })
            })
            .collect();
        let timed = {
            let m = Arc::clone(&m);
            rt.spawn(move || {
                let timeout = Duration::from_millis(15);
                let t = Instant::now();
                let got = m.lock_timeout(timeout).is_some();
                (got, t.elapsed() >= timeout)
            })
        };
        assert_eq!(timed.join().unwrap(), (false, true), "lock_timeout");
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*m.lock(), ["holder", "thread", "thread", "thread"]);
        assert_no_nofault_violations(&rt);
    });
}

// -------------------------------------------------------------- RwLock ---

/// Four reader coroutines read in an endless stream (each holds its read
/// lock across a yield and re-locks at once, so on one worker some reader
/// always holds it) until the writer has written `WRITES` times. A lock
/// that let new readers in past a waiting writer would starve the writer
/// forever: the hang guard would fail the test.
fn rwlock_writer_not_starved(workers: usize, writer: Side) {
    const READERS: usize = 4;
    const WRITES: u64 = 20;
    let rt = runtime(workers);
    let lock = Arc::new(RwLock::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let max_active = Arc::new(AtomicUsize::new(0));
    let writing = Arc::new(AtomicBool::new(false));
    let readers: Vec<JoinHandle<()>> = (0..READERS)
        .map(|_| {
            let (lock, stop, reads, active, max_active, writing) = (
                Arc::clone(&lock),
                Arc::clone(&stop),
                Arc::clone(&reads),
                Arc::clone(&active),
                Arc::clone(&max_active),
                Arc::clone(&writing),
            );
            rt.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let g = lock.read();
                    let n = active.fetch_add(1, Ordering::SeqCst) + 1;
                    max_active.fetch_max(n, Ordering::SeqCst);
                    assert!(!writing.load(Ordering::SeqCst), "a reader beside a writer");
                    let seen = *g;
                    greenstack::yield_now();
                    assert_eq!(*g, seen, "the value changed under a read lock");
                    active.fetch_sub(1, Ordering::SeqCst);
                    reads.fetch_add(1, Ordering::SeqCst);
                    drop(g);
                }
            })
        })
        .collect();
    let w = {
        let (lock, stop, reads, active, writing, overlapped) = (
            Arc::clone(&lock),
            Arc::clone(&stop),
            Arc::clone(&reads),
            Arc::clone(&active),
            Arc::clone(&writing),
            Arc::clone(&max_active),
        );
        start(writer, Some(&rt), move || {
            // Let the stream of readers get going first, overlapping (on
            // one worker, readers spawned from outside may start one at a
            // time: had the writer queued before a second reader started,
            // the readers could alternate with it one by one, and the
            // check below would fail though the lock is fair).
            spin_until(|| {
                reads.load(Ordering::SeqCst) >= 200
                    && (workers > 1 || overlapped.load(Ordering::SeqCst) >= 2)
            });
            for _ in 0..WRITES {
                let mut g = lock.write();
                assert_eq!(active.load(Ordering::SeqCst), 0, "a writer beside readers");
                writing.store(true, Ordering::SeqCst);
                *g += 1;
                pause();
                writing.store(false, Ordering::SeqCst);
                drop(g);
                pause();
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    w.join();
    readers
        .into_iter()
        .for_each(|h| h.join().expect("a reader does not panic"));
    assert_eq!(*lock.read(), WRITES);
    if workers == 1 {
        // The readers did overlap: a reader-preferring lock would have
        // starved the writer here.
        assert!(
            max_active.load(Ordering::SeqCst) >= 2,
            "readers never overlapped"
        );
    }
    assert_no_nofault_violations(&rt);
}

#[test]
fn rwlock_writer_not_starved_by_readers_one_worker() {
    bounded("rwlock writer, 1 worker", || {
        rwlock_writer_not_starved(1, Side::Co)
    });
}

#[test]
fn rwlock_writer_not_starved_by_readers_two_workers() {
    bounded("rwlock writer, 2 workers", || {
        rwlock_writer_not_starved(2, Side::Co)
    });
}

#[test]
fn rwlock_thread_writer_not_starved_by_coroutine_readers() {
    bounded("rwlock thread writer", || {
        rwlock_writer_not_starved(1, Side::Th)
    });
}

/// Plain-thread readers share the lock with a coroutine reader; a
/// coroutine writer waits for all of them, and `try_write`/`try_read` agree.
#[test]
fn rwlock_readers_share_writer_excludes_across_sides() {
    bounded("rwlock sharing", || {
        let rt = runtime(2);
        let lock = Arc::new(RwLock::new(String::from("before")));
        let held = Arc::new(Barrier::new(4));
        let release = Arc::new(AtomicBool::new(false));
        let readers: Vec<Task<()>> = [Side::Th, Side::Th, Side::Co]
            .into_iter()
            .map(|side| {
                let (lock, held, release) =
                    (Arc::clone(&lock), Arc::clone(&held), Arc::clone(&release));
                start(side, Some(&rt), move || {
                    let g = lock.read();
                    assert_eq!(*g, "before");
                    // All three readers hold the lock at once.
                    held.wait();
                    spin_until(|| release.load(Ordering::SeqCst));
                    drop(g);
                })
            })
            .collect();
        held.wait();
        assert!(lock.try_write().is_none(), "try_write beside readers");
        assert!(lock.try_read().is_some(), "try_read with no writer waiting");
        let writer = {
            let lock = Arc::clone(&lock);
            rt.spawn(move || *lock.write() = String::from("after"))
        };
        nap(Duration::from_millis(20));
        assert!(!writer.is_finished(), "the writer got in beside readers");
        release.store(true, Ordering::SeqCst);
        readers.into_iter().for_each(Task::join);
        writer.join().unwrap();
        assert_eq!(*lock.read(), "after");
        assert_no_nofault_violations(&rt);
    });
}

// ------------------------------------------------------------- Condvar ---

/// The state the condvar tests share: a mutex-protected record and its
/// condvar.
struct Shared<T> {
    m: Mutex<T>,
    cv: Condvar,
}

/// A fresh [`Shared`] around `v`.
fn shared<T>(v: T) -> Arc<Shared<T>> {
    Arc::new(Shared {
        m: Mutex::new(v),
        cv: Condvar::new(),
    })
}

/// notify_one hand-off between each pairing of sides: the waiter waits in
/// a loop on a flag, the notifier sets it and notifies.
#[test]
fn condvar_wait_notify_one_across_sides() {
    bounded("condvar notify_one", || {
        let rt = runtime(2);
        for (waiter, notifier) in [
            (Side::Co, Side::Co),
            (Side::Co, Side::Th),
            (Side::Th, Side::Co),
            (Side::Th, Side::Th),
        ] {
            for _ in 0..20 {
                let s = shared(false);
                let w = {
                    let s = Arc::clone(&s);
                    start(waiter, Some(&rt), move || {
                        let mut g = s.m.lock();
                        while !*g {
                            g = s.cv.wait(g);
                        }
                    })
                };
                let s2 = Arc::clone(&s);
                start(notifier, Some(&rt), move || {
                    *s2.m.lock() = true;
                    s2.cv.notify_one();
                })
                .join();
                w.join();
            }
        }
        assert_no_nofault_violations(&rt);
    });
}

/// Waiters (coroutines and threads) announce themselves under the mutex
/// and then wait; `wait` enqueues before it releases the mutex, so once the
/// notifier sees all of them announced (under the mutex), all are queued.
/// Then: one `notify_one` per token lets them through one by one, and a
/// single `notify_all` wakes every waiter of a second round. A notify that
/// reached fewer waiters would leave one waiting: the hang guard fails.
#[test]
fn condvar_notify_one_and_notify_all_reach_every_waiter() {
    bounded("condvar notify_all", || {
        const W: usize = 8;
        let rt = runtime(2);
        // (announced, tokens, go)
        let s = shared((0usize, 0usize, false));
        let waiters: Vec<Task<()>> = (0..W)
            .map(|i| {
                let s = Arc::clone(&s);
                let side = if i % 2 == 0 { Side::Co } else { Side::Th };
                start(side, Some(&rt), move || {
                    // Round 1: take one token.
                    let mut g = s.m.lock();
                    g.0 += 1;
                    g = s.cv.wait_while(g, |st| st.1 == 0);
                    g.1 -= 1;
                    // Round 2: wait for `go`.
                    g.0 += 1;
                    let g = s.cv.wait_while(g, |st| !st.2);
                    drop(g);
                })
            })
            .collect();
        spin_until(|| s.m.lock().0 == W);
        for _ in 0..W {
            s.m.lock().1 += 1;
            s.cv.notify_one();
        }
        spin_until(|| s.m.lock().0 == 2 * W);
        assert_eq!(s.m.lock().1, 0, "every token was taken");
        s.m.lock().2 = true;
        s.cv.notify_all();
        waiters.into_iter().for_each(Task::join);
        assert_no_nofault_violations(&rt);
    });
}

/// `wait_timeout` with nobody notifying times out (`timed_out()`), never
/// before its timeout, and hands the mutex back; with a notify in time it
/// does not time out. In a coroutine and on a plain thread.
#[test]
fn condvar_wait_timeout() {
    bounded("condvar wait_timeout", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            let s = shared(0u32);
            let s2 = Arc::clone(&s);
            start(side, Some(&rt), move || {
                for ms in [1u64, 10, 30] {
                    let timeout = Duration::from_millis(ms);
                    let g = s2.m.lock();
                    let t = Instant::now();
                    let (mut g, r) = s2.cv.wait_timeout(g, timeout);
                    let elapsed = t.elapsed();
                    assert!(r.timed_out(), "nobody notified ({side:?})");
                    assert!(
                        elapsed >= timeout,
                        "wait_timeout({timeout:?}) after {elapsed:?}"
                    );
                    *g += 1; // The mutex is held again.
                }
                let timeout = Duration::from_millis(20);
                let t = Instant::now();
                let (g, r) = s2.cv.wait_timeout_while(s2.m.lock(), timeout, |v| *v < 100);
                assert!(r.timed_out());
                assert!(t.elapsed() >= timeout, "wait_timeout_while returned early");
                assert_eq!(*g, 3);
            })
            .join();

            // Notified in time: no timeout.
            let s = shared(false);
            let w = {
                let s = Arc::clone(&s);
                start(side, Some(&rt), move || {
                    let (g, r) =
                        s.cv.wait_timeout_while(s.m.lock(), Duration::from_secs(30), |v| !*v);
                    assert!(!r.timed_out(), "notified in time");
                    *g
                })
            };
            let other = if side == Side::Co { Side::Th } else { Side::Co };
            let s2 = Arc::clone(&s);
            start(other, Some(&rt), move || {
                nap(Duration::from_millis(10));
                *s2.m.lock() = true;
                s2.cv.notify_all();
            })
            .join();
            assert!(w.join());
            let s3 = shared(());
            let s4 = Arc::clone(&s3);
            let w = start(side, Some(&rt), move || {
                let g = s4.m.lock();
                let (_g, r) = s4.cv.wait_timeout(g, Duration::from_secs(30));
                r.timed_out()
            });
            // Notify until the waiter is gone (it may not be queued yet on
            // the first notifications).
            let notifier = start(other, Some(&rt), move || loop {
                s3.cv.notify_one();
                if Arc::strong_count(&s3) == 1 {
                    break;
                }
                nap(Duration::from_millis(2));
            });
            assert!(!w.join(), "a notified wait_timeout reported a time-out");
            notifier.join();
        }
        assert_no_nofault_violations(&rt);
    });
}

/// `wait_while` returns only once the predicate is false, however often
/// the notifier wakes it before that.
#[test]
fn condvar_wait_while() {
    bounded("condvar wait_while", || {
        let rt = runtime(2);
        for (waiter, notifier) in [
            (Side::Co, Side::Th),
            (Side::Th, Side::Co),
            (Side::Co, Side::Co),
        ] {
            let s = shared(0u32);
            let w = {
                let s = Arc::clone(&s);
                start(waiter, Some(&rt), move || {
                    *s.cv.wait_while(s.m.lock(), |v| *v < 5)
                })
            };
            let s2 = Arc::clone(&s);
            start(notifier, Some(&rt), move || {
                for _ in 0..5 {
                    nap(Duration::from_millis(2));
                    *s2.m.lock() += 1;
                    s2.cv.notify_all();
                }
            })
            .join();
            assert_eq!(w.join(), 5);
        }
        assert_no_nofault_violations(&rt);
    });
}

// ----------------------------------------------------------- Semaphore ---

/// Twelve tasks (coroutines and threads) share 3 permits and record how
/// many hold one at once: never more than 3.
#[test]
fn semaphore_at_most_n_holders() {
    bounded("semaphore", || {
        const PERMITS: usize = 3;
        let rt = runtime(2);
        let sem = Arc::new(Semaphore::new(PERMITS));
        let held = Arc::new(AtomicUsize::new(0));
        let max_held = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<Task<()>> = (0..12)
            .map(|i| {
                let (sem, held, max_held) =
                    (Arc::clone(&sem), Arc::clone(&held), Arc::clone(&max_held));
                let side = if i % 3 == 2 { Side::Th } else { Side::Co };
                start(side, Some(&rt), move || {
                    for k in 0..50 {
                        let p = sem.acquire();
                        let n = held.fetch_add(1, Ordering::SeqCst) + 1;
                        max_held.fetch_max(n, Ordering::SeqCst);
                        assert!(n <= PERMITS, "{n} holders of {PERMITS} permits");
                        if k % 10 == 0 {
                            nap(Duration::from_millis(1));
                        } else {
                            pause();
                        }
                        held.fetch_sub(1, Ordering::SeqCst);
                        drop(p);
                    }
                })
            })
            .collect();
        tasks.into_iter().for_each(Task::join);
        let max = max_held.load(Ordering::SeqCst);
        assert!((1..=PERMITS).contains(&max), "max holders {max}");
        assert_eq!(sem.available_permits(), PERMITS);
        println!("semaphore: at most {max} of {PERMITS} permits held at once");
        assert_no_nofault_violations(&rt);
    });
}

/// `try_acquire`, `acquire_many`, `acquire_timeout` (never early) and
/// `add_permits` waking a waiter, in a coroutine and on a thread.
#[test]
fn semaphore_try_timeout_and_add_permits() {
    bounded("semaphore api", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            let sem = Arc::new(Semaphore::new(2));
            let s = Arc::clone(&sem);
            start(side, Some(&rt), move || {
                let a = s.try_acquire().expect("a free permit");
                let b = s.acquire();
                assert!(s.try_acquire().is_none());
                let timeout = Duration::from_millis(15);
                let t = Instant::now();
                assert!(s.acquire_timeout(timeout).is_none());
                assert!(t.elapsed() >= timeout, "acquire_timeout returned early");
                drop((a, b));
                let both = s.acquire_many(2);
                assert_eq!(s.available_permits(), 0);
                both.forget();
                assert_eq!(s.available_permits(), 0);
            })
            .join();
            let other = if side == Side::Co { Side::Th } else { Side::Co };
            let s = Arc::clone(&sem);
            let waiter = start(other, Some(&rt), move || {
                let _p = s.acquire();
            });
            nap(Duration::from_millis(10));
            sem.add_permits(1);
            waiter.join();
            assert_eq!(sem.available_permits(), 1);
        }
        assert_no_nofault_violations(&rt);
    });
}

// ------------------------------------------------------------- Barrier ---

/// Five parties (three coroutines, two threads) pass a barrier 30 times:
/// nobody leaves a round before all five arrived, and exactly one party
/// per round is the leader.
#[test]
fn barrier_one_leader_per_round_and_reusable() {
    bounded("barrier", || {
        const PARTIES: usize = 5;
        const ROUNDS: usize = 30;
        let rt = runtime(2);
        let barrier = Arc::new(Barrier::new(PARTIES));
        let arrived: Arc<Vec<AtomicUsize>> =
            Arc::new((0..ROUNDS).map(|_| AtomicUsize::new(0)).collect());
        let leaders: Arc<Vec<AtomicUsize>> =
            Arc::new((0..ROUNDS).map(|_| AtomicUsize::new(0)).collect());
        let parties: Vec<Task<()>> = (0..PARTIES)
            .map(|i| {
                let (barrier, arrived, leaders) = (
                    Arc::clone(&barrier),
                    Arc::clone(&arrived),
                    Arc::clone(&leaders),
                );
                let side = if i < 3 { Side::Co } else { Side::Th };
                start(side, Some(&rt), move || {
                    for r in 0..ROUNDS {
                        if (r + i) % 7 == 0 {
                            nap(Duration::from_millis(1));
                        }
                        arrived[r].fetch_add(1, Ordering::SeqCst);
                        if barrier.wait().is_leader() {
                            leaders[r].fetch_add(1, Ordering::SeqCst);
                        }
                        assert_eq!(
                            arrived[r].load(Ordering::SeqCst),
                            PARTIES,
                            "left round {r} before everyone arrived"
                        );
                    }
                })
            })
            .collect();
        parties.into_iter().for_each(Task::join);
        for (r, l) in leaders.iter().enumerate() {
            assert_eq!(l.load(Ordering::SeqCst), 1, "leaders in round {r}");
        }
        // A barrier of one (and of zero, as std's) never waits.
        assert!(Barrier::new(1).wait().is_leader());
        assert!(Barrier::new(0).wait().is_leader());
        assert_no_nofault_violations(&rt);
    });
}

// ----------------------------------------------------------- WaitGroup ---

/// `wait` returns once every task (coroutines and threads) called `done`,
/// after all their work; waiters on both sides; `wait_timeout` times out
/// (never early) while the count is above zero.
#[test]
fn wait_group_waits_for_every_task() {
    bounded("wait group", || {
        const TASKS: usize = 16;
        let rt = runtime(2);
        let wg = Arc::new(WaitGroup::new());
        let work = Arc::new(AtomicUsize::new(0));
        wg.add(TASKS);
        assert_eq!(wg.count(), TASKS);
        let waiters: Vec<Task<usize>> = [Side::Co, Side::Th]
            .into_iter()
            .map(|side| {
                let (wg, work) = (Arc::clone(&wg), Arc::clone(&work));
                start(side, Some(&rt), move || {
                    wg.wait();
                    work.load(Ordering::SeqCst)
                })
            })
            .collect();
        let timeout = Duration::from_millis(15);
        let t = Instant::now();
        assert!(!wg.wait_timeout(timeout), "count is above zero");
        assert!(t.elapsed() >= timeout, "wait_timeout returned early");
        for i in 0..TASKS {
            let (wg, work) = (Arc::clone(&wg), Arc::clone(&work));
            let side = if i % 4 == 3 { Side::Th } else { Side::Co };
            // Detached: the wait group is the only way to know they ended.
            drop(start(side, Some(&rt), move || {
                nap(Duration::from_millis(1 + (i % 5) as u64));
                work.fetch_add(1, Ordering::SeqCst);
                wg.done();
            }));
        }
        for w in waiters {
            assert_eq!(
                w.join(),
                TASKS,
                "a waiter returned before all work was done"
            );
        }
        assert_eq!(wg.count(), 0);
        assert!(wg.wait_timeout(Duration::from_secs(30)));
        assert_no_nofault_violations(&rt);
    });
}

/// `done` past zero panics (a plain thread suffices).
#[test]
fn wait_group_done_past_zero_panics() {
    let wg = WaitGroup::new();
    wg.add(1);
    wg.done();
    let r = catch_unwind(AssertUnwindSafe(|| wg.done()));
    assert!(r.is_err(), "done() at zero did not panic");
}

// ------------------------------------------------------------ variance ---

/// std's `test_read_guard_covariance`, ported: `RwLockReadGuard` is
/// covariant in `T`, as std's is, so a guard of `&'long i32` passes for
/// one of `&'short i32`. Compiling is the test (it did not, before).
#[test]
fn read_guard_covariance() {
    fn do_stuff<'a>(_: greenstack::sync::RwLockReadGuard<'_, &'a i32>, _: &'a i32) {}
    let j: i32 = 5;
    let lock = RwLock::new(&j);
    {
        let i = 6;
        do_stuff(lock.read(), &i);
    }
    drop(lock);
}

/// Every guard is covariant in its lifetime, as std's are, and the read
/// guard in `T` too (compile-time checks). Their invariance in `T` where
/// std's are invariant (`MutexGuard`, `RwLockWriteGuard`) is pinned by the
/// compile-fail case `tests/ui/fail/guard_invariance.rs`.
#[test]
fn guard_variance_matches_std() {
    use greenstack::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard, SemaphoreGuard};
    fn read_in_t<'a, 'g>(g: RwLockReadGuard<'g, &'static str>) -> RwLockReadGuard<'g, &'a str> {
        g
    }
    fn mutex_in_lifetime<'g>(g: MutexGuard<'static, u8>) -> MutexGuard<'g, u8> {
        g
    }
    fn read_in_lifetime<'g>(g: RwLockReadGuard<'static, u8>) -> RwLockReadGuard<'g, u8> {
        g
    }
    fn write_in_lifetime<'g>(g: RwLockWriteGuard<'static, u8>) -> RwLockWriteGuard<'g, u8> {
        g
    }
    fn permit_in_lifetime<'g>(g: SemaphoreGuard<'static>) -> SemaphoreGuard<'g> {
        g
    }
    static M: Mutex<u8> = Mutex::new(1);
    static L: RwLock<u8> = RwLock::new(2);
    static S: Semaphore = Semaphore::new(1);
    static STR: RwLock<&str> = RwLock::new("covariant");
    assert_eq!(*read_in_t(STR.read()), "covariant");
    assert_eq!(*mutex_in_lifetime(M.lock()), 1);
    assert_eq!(*read_in_lifetime(L.read()), 2);
    assert_eq!(*write_in_lifetime(L.write()), 2);
    drop(permit_in_lifetime(S.acquire()));
}
