//! `greenstack::block_on_future`: running a future from coroutine code (or
//! a plain thread), parking the coroutine while the future is pending.
//!
//! - a future completed from another OS thread wakes the coroutine waiting
//!   in `block_on_future`, and the worker keeps running other coroutines
//!   meanwhile;
//! - a `JoinHandle` awaited as a future, directly and inside an `async`
//!   block, including a panicking coroutine's;
//! - `block_on_future` on a plain thread;
//! - a stress of many cross-thread completions, where a lost wake-up would
//!   hang (caught by the hang guard).

mod common;
#[allow(unused_imports)]
use common::*;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use greenstack::sync::mpsc;
use greenstack::{block_on_future, JoinHandle};

/// The shared half of a [`Signal`]: a completion flag and the waker of the
/// last poll.
#[derive(Default)]
struct SignalState {
    done: AtomicBool,
    waker: Mutex<Option<Waker>>,
    polls: AtomicUsize,
}

/// A oneshot-style future: pending until [`Completer::complete`] is called
/// (from any thread), then ready. It counts its polls.
#[derive(Clone, Default)]
struct Signal(Arc<SignalState>);

/// Completes a [`Signal`].
#[derive(Clone)]
struct Completer(Arc<SignalState>);

impl Signal {
    /// A pending signal and its completer.
    fn new() -> (Signal, Completer) {
        let s = Signal::default();
        let c = Completer(Arc::clone(&s.0));
        (s, c)
    }

    /// How many times the future was polled.
    fn polls(&self) -> usize {
        self.0.polls.load(Ordering::SeqCst)
    }
}

impl Completer {
    /// Marks the signal done and wakes the last registered waker.
    fn complete(&self) {
        self.0.done.store(true, Ordering::SeqCst);
        let w = self.0.waker.lock().unwrap().take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl Future for Signal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.polls.fetch_add(1, Ordering::SeqCst);
        // Register first, then check: a completion between the two finds
        // the waker; one before the registration is seen by the check.
        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.0.done.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A future that is pending `n` times, waking itself each time (so the
/// executor must poll it again), then ready with the number of polls.
struct SelfWaking {
    left: usize,
    polls: usize,
}

impl Future for SelfWaking {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        self.polls += 1;
        if self.left == 0 {
            return Poll::Ready(self.polls);
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A future completed by a plain thread after a short sleep wakes the
/// coroutine blocked in `block_on_future`; meanwhile the only worker keeps
/// running other coroutines (the waiting one is parked, not spinning or
/// blocking the thread).
#[test]
fn future_completed_from_another_thread_wakes_the_coroutine() {
    bounded("thread completes future", || {
        for workers in [1, 2] {
            let rt = runtime(workers);
            let (sig, done) = Signal::new();
            let sig2 = sig.clone();
            let waiter = rt.spawn(move || {
                block_on_future(sig2);
                "woken"
            });
            // The worker is free while the waiter waits.
            let (tx, rx) = mpsc::channel();
            let other = rt.spawn(move || {
                for i in 0..100 {
                    greenstack::yield_now();
                    tx.send(i).unwrap();
                }
            });
            assert_eq!(rx.iter().count(), 100);
            other.join().unwrap();
            assert!(!waiter.is_finished(), "block_on_future returned early");
            let completer = thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                done.complete();
            });
            assert_eq!(waiter.join().unwrap(), "woken");
            completer.join().unwrap();
            assert!(sig.polls() >= 2, "polled once pending, once ready");
            assert_no_nofault_violations(&rt);
        }
    });
}

/// On one worker, a future completed by another *coroutine*: it can only
/// run if the waiting coroutine parked instead of blocking the worker.
#[test]
fn future_completed_by_another_coroutine_on_one_worker() {
    bounded("coroutine completes future", || {
        let rt = runtime(1);
        let out = rt.block_on(|| {
            let (sig, done) = Signal::new();
            let completer = greenstack::spawn(move || {
                greenstack::time::sleep(Duration::from_millis(5));
                done.complete();
                1
            });
            block_on_future(sig);
            completer.join().unwrap() + 1
        });
        assert_eq!(out, 2);
        assert_no_nofault_violations(&rt);
    });
}

/// A future that wakes itself while pending is polled again each time, in
/// a coroutine and on a plain thread.
#[test]
fn self_waking_future_is_polled_until_ready() {
    bounded("self-waking future", || {
        let rt = runtime(2);
        let polls = rt.block_on(|| block_on_future(SelfWaking { left: 50, polls: 0 }));
        assert_eq!(polls, 51);
        assert_eq!(block_on_future(SelfWaking { left: 50, polls: 0 }), 51);
        assert_eq!(block_on_future(async { 5 }), 5);
        assert_no_nofault_violations(&rt);
    });
}

/// A `JoinHandle` awaited inside `block_on_future` gives the coroutine's
/// value, or its panic as `Err`; several handles awaited in one `async`
/// block.
#[test]
fn join_handle_awaited_in_block_on_future() {
    bounded("join handle as future", || {
        for workers in [1, 2] {
            let rt = runtime(workers);
            let (sum, panicked) = rt.block_on(|| {
                let slow = greenstack::spawn(|| {
                    greenstack::time::sleep(Duration::from_millis(10));
                    40
                });
                let v = block_on_future(slow).expect("no panic");
                let hs: Vec<JoinHandle<u64>> =
                    (0..10u64).map(|i| greenstack::spawn(move || i)).collect();
                let sum = block_on_future(async move {
                    let mut s = 0;
                    for h in hs {
                        s += h.await.expect("no panic");
                    }
                    s
                });
                let bad = greenstack::spawn(|| -> u32 { panic!("expected test panic") });
                let panicked = block_on_future(bad).is_err();
                (v + sum, panicked)
            });
            assert_eq!(sum, 40 + 45);
            assert!(panicked, "a panicking coroutine's handle gives Err");
            assert_no_nofault_violations(&rt);
        }
    });
}

/// `block_on_future` on a plain thread: a future completed by another
/// thread, one completed by a coroutine, and a coroutine's `JoinHandle`.
#[test]
fn block_on_future_on_a_plain_thread() {
    bounded("block_on_future on a thread", || {
        let (sig, done) = Signal::new();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(10));
            done.complete();
        });
        block_on_future(sig);
        t.join().unwrap();

        let rt = runtime(2);
        let (sig, done) = Signal::new();
        let c = rt.spawn(move || {
            greenstack::time::sleep(Duration::from_millis(10));
            done.complete();
        });
        block_on_future(sig);
        c.join().unwrap();

        let h = rt.spawn(|| {
            greenstack::time::sleep(Duration::from_millis(10));
            "from a coroutine"
        });
        assert_eq!(block_on_future(h).unwrap(), "from a coroutine");
        assert_no_nofault_violations(&rt);
    });
}

/// Many round trips between a thread and coroutines, each a fresh future
/// completed from the other side: a lost wake-up would hang.
#[test]
fn many_cross_thread_completions() {
    bounded("cross-thread completions", || {
        const ROUNDS: usize = 2_000;
        let rt = runtime(2);
        // The coroutine hands the thread a completer for its next wait
        // through a std channel, and waits; the thread completes it.
        let (tx, rx) = std::sync::mpsc::channel::<Completer>();
        let waiter = rt.spawn(move || {
            for _ in 0..ROUNDS {
                let (sig, done) = Signal::new();
                tx.send(done).unwrap();
                block_on_future(sig);
            }
        });
        let completer = thread::spawn(move || {
            let mut n = 0;
            for done in rx.iter() {
                if n % 2 == 0 {
                    // Sometimes complete a little later, so some wake-ups
                    // find the coroutine parked and some arrive before it
                    // parks. (A spin, not `yield_now`: a thread yield on a
                    // busy machine can cost a whole scheduler tick.)
                    for _ in 0..(n % 7) * 200 {
                        std::hint::spin_loop();
                    }
                }
                done.complete();
                n += 1;
            }
            n
        });
        waiter.join().unwrap();
        assert_eq!(completer.join().unwrap(), ROUNDS);
        assert_no_nofault_violations(&rt);
    });
}

/// Uses 128 KiB of the stack it runs on.
#[inline(never)]
fn deep_poll_frame() -> u8 {
    let mut buf = [0u8; 128 * 1024];
    std::hint::black_box(&mut buf);
    buf[128 * 1024 - 1]
}

/// `spawn_future` polls each future on its worker's own stack, as tokio
/// polls its tasks: a hundred futures parked at once, each of whose polls
/// used 128 KiB of stack, leave the coroutines' stacks near their spawn
/// size (measured: 32 KiB each; polled on their own stacks, as
/// `spawn(|| block_on_future(f))` does, 258 KiB each). A future polled there still parks its coroutine, wakes it
/// from another thread, and reaches its `JoinHandle`.
#[test]
fn spawn_future_polls_on_the_worker_stack() {
    bounded("spawn_future on the worker stack", || {
        const N: usize = 100;
        let rt = runtime(2);
        let before = rt.stats().arena.committed_bytes;
        let (signals, completers): (Vec<_>, Vec<_>) = (0..N).map(|_| Signal::new()).unzip();
        let handles: Vec<_> = signals
            .into_iter()
            .enumerate()
            .map(|(i, sig)| {
                rt.spawn_future(async move {
                    let b = deep_poll_frame();
                    sig.await;
                    usize::from(b) + i
                })
            })
            .collect();
        while rt.stats().parks < N as u64 {
            nap(Duration::from_millis(1));
        }
        let grown = rt.stats().arena.committed_bytes.saturating_sub(before);
        assert!(
            grown < N * 64 * 1024,
            "{N} parked futures committed {grown} bytes of coroutine stack"
        );
        for c in completers {
            c.complete();
        }
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), i);
        }
    });
}

/// A future polled on the worker's stack may spawn: a coroutine and another
/// future, both awaited through their `JoinHandle`s, and a panic in a poll
/// there is its own `JoinHandle`'s `Err` while the spawner goes on.
#[test]
fn a_future_on_the_worker_stack_spawns_and_awaits() {
    bounded("spawning from spawn_future", || {
        let rt = runtime(2);
        let h = rt.spawn_future(async {
            let co: JoinHandle<u32> = greenstack::spawn(|| {
                greenstack::time::sleep(Duration::from_millis(2));
                40
            });
            let fut = greenstack::spawn_future(async { 2u32 });
            let bad = greenstack::spawn_future(async {
                if deep_poll_frame() == 0 {
                    panic!("in a poll on the worker stack");
                }
            });
            let sum = co.await.unwrap() + fut.await.unwrap();
            (sum, bad.await.is_err())
        });
        assert_eq!(h.join().unwrap(), (42, true));
        assert_no_nofault_violations(&rt);
    });
}

/// `Runtime::block_on` inside a future polled on a worker's stack would
/// block the worker: it panics there, as inside a coroutine, and the panic
/// is the future's `JoinHandle`'s `Err`.
#[test]
fn block_on_inside_a_spawned_future_panics() {
    bounded("block_on in spawn_future", || {
        let rt = std::sync::Arc::new(runtime(2));
        let inner = std::sync::Arc::clone(&rt);
        let h = rt.spawn_future(async move { inner.block_on(|| 1) });
        let err = h.join().unwrap_err();
        let msg = panic_message(&*err);
        assert!(msg.contains("block_on called from inside"), "{msg}");
    });
}

greenstack::coroutine_local! {
    static REQUEST: std::cell::Cell<u32> = std::cell::Cell::new(0);
}

/// Pending once (waking itself), then ready: a poll, a park, a poll.
fn one_park() -> impl Future<Output = ()> {
    let mut parked = false;
    std::future::poll_fn(move |cx| {
        if parked {
            return Poll::Ready(());
        }
        parked = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

/// A future polled on the worker's stack is still its coroutine's code:
/// it sees its own coroutine-locals (not another future's, which share
/// the worker's thread) across its parks, and its own cancellation.
#[test]
fn a_future_on_the_worker_stack_keeps_its_coroutine_locals_and_cancellation() {
    bounded("coroutine-locals and cancellation in spawn_future", || {
        let rt = runtime(1);
        let a = rt.spawn_future(async {
            REQUEST.with(|r| r.set(7));
            one_park().await;
            REQUEST.with(|r| r.get())
        });
        assert_eq!(a.join().unwrap(), 7);
        let b = rt.spawn_future(async { REQUEST.with(|r| r.get()) });
        assert_eq!(b.join().unwrap(), 0, "a new future saw another's value");
        // Pending (waking itself) until it sees its cancellation.
        let (running_tx, running_rx) = std::sync::mpsc::channel::<()>();
        let h = rt.spawn_future(async move {
            let mut polls = 0u64;
            std::future::poll_fn(|cx| {
                polls += 1;
                if polls == 1 {
                    running_tx.send(()).unwrap();
                }
                if greenstack::cancel::is_cancelled() {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .await;
            greenstack::cancel::is_cancelled()
        });
        running_rx.recv().unwrap();
        h.cancel();
        assert!(h.join().unwrap());
    });
}

/// `block_on_future` inside a future polled on the worker's stack could
/// only block the worker (for good, if what it waits for needs the
/// worker): it panics, and the panic is the future's `JoinHandle`'s `Err`.
#[test]
fn block_on_future_inside_a_spawned_future_panics() {
    bounded("block_on_future in spawn_future", || {
        let rt = runtime(1);
        let h = rt.spawn_future(async { block_on_future(async { 1 }) });
        let err = h.join().unwrap_err();
        let msg = panic_message(&*err);
        assert!(
            msg.contains("block_on_future called inside a future"),
            "{msg}"
        );
        // The worker goes on.
        assert_eq!(rt.spawn_future(async { 5 }).join().unwrap(), 5);
    });
}
