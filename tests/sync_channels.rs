//! std's channel semantics for `greenstack::sync::{mpsc, mpmc, oneshot}`,
//! checked from coroutines, from plain threads that touch no runtime (only
//! the channel), and across the two (coroutine sender with thread receiver
//! and the other way round): disconnection in both directions, the end of
//! `iter`, `recv_timeout` (never early), the rendezvous of `sync_channel(0)`,
//! `try_recv` and `try_send`. mpmc: each value reaches exactly one receiver.
//! oneshot: the value, a dropped sender, a dropped receiver.
//!
//! Timing: only lower bounds are asserted (a timeout never fires early).
//! Every test runs under a hang guard, so a lost wake-up fails instead of
//! hanging.

mod common;
#[allow(unused_imports)]
use common::*;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenstack::sync::{mpmc, mpsc, oneshot};
use greenstack::Runtime;

/// Runs `scenario(a, b, rt)` for every pairing of sides: thread/thread with
/// no runtime at all, then coroutine/coroutine, coroutine/thread and
/// thread/coroutine on a 2-worker runtime, and coroutine/coroutine on a
/// 1-worker runtime. `a` is the sending side, `b` the receiving side.
fn each_pairing(what: &'static str, scenario: fn(Side, Side, Option<&Runtime>)) {
    each_pairing_for(what, HANG_GUARD, scenario);
}

/// [`each_pairing`] with a hang guard of `limit`.
fn each_pairing_for(
    what: &'static str,
    limit: Duration,
    scenario: fn(Side, Side, Option<&Runtime>),
) {
    bounded_for(what, limit, move || {
        scenario(Side::Th, Side::Th, None);
        let rt = runtime(2);
        for (a, b) in [
            (Side::Co, Side::Co),
            (Side::Co, Side::Th),
            (Side::Th, Side::Co),
        ] {
            scenario(a, b, Some(&rt));
        }
        assert_no_nofault_violations(&rt);
        drop(rt);
        let rt1 = runtime(1);
        scenario(Side::Co, Side::Co, Some(&rt1));
        assert_no_nofault_violations(&rt1);
    });
}

// ---------------------------------------------------------------- mpsc ---

/// Values queued before the last sender went away are all delivered, then
/// `recv` fails (again and again), as do `try_recv` and `recv_timeout`.
fn scenario_drain_then_disconnected(a: Side, b: Side, rt: Option<&Runtime>) {
    const N: u32 = 100;
    // Phase 1: every sender is gone before the receiver starts.
    let (tx, rx) = mpsc::channel::<u32>();
    start(a, rt, move || {
        let tx2 = tx.clone();
        for i in 0..N {
            if i % 2 == 0 { &tx } else { &tx2 }.send(i).unwrap();
        }
    })
    .join();
    start(b, rt, move || {
        for i in 0..N {
            assert_eq!(rx.recv(), Ok(i), "queued value {i} ({a:?} -> {b:?})");
        }
        assert_eq!(rx.recv(), Err(mpsc::RecvError));
        assert_eq!(rx.recv(), Err(mpsc::RecvError), "disconnection is sticky");
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    })
    .join();

    // Phase 2: the receiver waits first; three senders send and go away
    // while it waits.
    let (tx, rx) = mpsc::channel::<u32>();
    let receiver = start(b, rt, move || {
        let mut got = Vec::new();
        while let Ok(v) = rx.recv() {
            got.push(v);
        }
        assert_eq!(rx.recv(), Err(mpsc::RecvError));
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
        got
    });
    let senders: Vec<_> = (0..3u32)
        .map(|s| {
            let tx = tx.clone();
            start(a, rt, move || {
                nap(Duration::from_millis(5));
                for i in 0..N {
                    tx.send(s * N + i).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    senders.into_iter().for_each(Task::join);
    let mut got = receiver.join();
    got.sort_unstable();
    assert_eq!(got, (0..3 * N).collect::<Vec<_>>(), "{a:?} -> {b:?}");
}

#[test]
fn mpsc_recv_drains_then_reports_disconnection() {
    each_pairing("drain then disconnected", scenario_drain_then_disconnected);
}

/// After the receiver is gone, `send` fails with `SendError` carrying the
/// value back (for `Sender` and `SyncSender`), `try_send` with
/// `Disconnected`, and a sender blocked on a full channel is released with
/// its value.
fn scenario_send_after_receiver_dropped(a: Side, b: Side, rt: Option<&Runtime>) {
    let (tx, rx) = mpsc::channel::<String>();
    let (stx, srx) = mpsc::sync_channel::<String>(4);
    start(b, rt, move || {
        drop(rx);
        drop(srx);
    })
    .join();
    start(a, rt, move || {
        let e = tx.send("carried back".to_string()).unwrap_err();
        assert_eq!(e.0, "carried back");
        let e = stx.send("sync carried back".to_string()).unwrap_err();
        assert_eq!(e.0, "sync carried back");
        match stx.try_send("try".to_string()) {
            Err(mpsc::TrySendError::Disconnected(v)) => assert_eq!(v, "try"),
            other => panic!("try_send after the receiver left: {other:?}"),
        }
    })
    .join();

    // A sender parked on a full bounded channel gets its value back when the
    // receiver drops (whether it parked before the drop or not).
    let (stx, srx) = mpsc::sync_channel::<u32>(1);
    let sender = start(a, rt, move || {
        stx.send(1).unwrap();
        stx.send(2).map_err(|e| e.0)
    });
    start(b, rt, move || {
        nap(Duration::from_millis(20));
        drop(srx);
    })
    .join();
    assert_eq!(sender.join(), Err(2), "{a:?} -> {b:?}");
}

#[test]
fn mpsc_send_after_receiver_dropped_returns_the_value() {
    each_pairing(
        "send after receiver dropped",
        scenario_send_after_receiver_dropped,
    );
}

/// `iter` (and `into_iter`) end once every sender is gone, after yielding
/// every value sent.
fn scenario_iter_ends(a: Side, b: Side, rt: Option<&Runtime>) {
    const PER: u32 = 50;
    let (tx, rx) = mpsc::channel::<u32>();
    let receiver = start(b, rt, move || {
        let mut got: Vec<u32> = rx.iter().collect();
        // `iter` ended, so more `recv`s fail at once.
        assert_eq!(rx.recv(), Err(mpsc::RecvError));
        got.sort_unstable();
        got
    });
    let senders: Vec<_> = (0..4u32)
        .map(|s| {
            let tx = tx.clone();
            start(a, rt, move || {
                for i in 0..PER {
                    tx.send(s * PER + i).unwrap();
                    if i % 10 == 0 {
                        nap(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    drop(tx);
    senders.into_iter().for_each(Task::join);
    assert_eq!(receiver.join(), (0..4 * PER).collect::<Vec<_>>());

    // `into_iter` on a bounded channel, the last sender leaving while the
    // receiver waits.
    let (tx, rx) = mpsc::sync_channel::<u32>(2);
    let receiver = start(b, rt, move || rx.into_iter().sum::<u32>());
    start(a, rt, move || {
        for i in 1..=10 {
            tx.send(i).unwrap();
        }
        nap(Duration::from_millis(10));
        drop(tx);
    })
    .join();
    assert_eq!(receiver.join(), 55, "{a:?} -> {b:?}");
}

#[test]
fn mpsc_iter_ends_when_senders_drop() {
    each_pairing("iter ends", scenario_iter_ends);
}

/// `recv_timeout` with a live but silent sender reports `Timeout`, never
/// before the timeout has passed; a value sent in time is received; a
/// disconnection is reported as such.
fn scenario_recv_timeout(a: Side, b: Side, rt: Option<&Runtime>) {
    let (tx, rx) = mpsc::channel::<u32>();
    let rx = start(b, rt, move || {
        for ms in [1u64, 10, 50] {
            let timeout = Duration::from_millis(ms);
            let t = Instant::now();
            assert_eq!(
                rx.recv_timeout(timeout),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            let elapsed = t.elapsed();
            assert!(
                elapsed >= timeout,
                "recv_timeout({timeout:?}) returned after {elapsed:?}"
            );
        }
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            rx.recv_deadline(deadline),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        assert!(Instant::now() >= deadline, "recv_deadline returned early");
        rx
    })
    .join();

    // A value that arrives before the timeout is received.
    let receiver = start(b, rt, move || {
        let v = rx.recv_timeout(Duration::from_secs(30));
        (v, rx)
    });
    let sender = start(a, rt, move || {
        nap(Duration::from_millis(20));
        tx.send(7).unwrap();
        tx
    });
    let (v, rx) = receiver.join();
    assert_eq!(v, Ok(7), "{a:?} -> {b:?}");

    // The last sender leaving ends a timed wait with `Disconnected`.
    let receiver = start(b, rt, move || rx.recv_timeout(Duration::from_secs(30)));
    start(a, rt, move || {
        let tx = sender.join();
        nap(Duration::from_millis(10));
        drop(tx);
    })
    .join();
    assert_eq!(receiver.join(), Err(mpsc::RecvTimeoutError::Disconnected));
}

#[test]
fn mpsc_recv_timeout_is_never_early() {
    each_pairing("recv_timeout", scenario_recv_timeout);
}

/// `sync_channel(0)`: `send` returns only after a receiver took the value.
///
/// The check is deterministic: the sender counts its *returned* sends in
/// `returned`; before its `i`-th `recv` (0-based) the receiver has taken
/// exactly `i` values, so at most `i` sends can have returned. A send that
/// returned before its value was taken would make `returned` reach `i + 1`
/// there. The naps before each `recv` give such a bug time to show; a
/// correct channel passes however the threads are scheduled.
fn scenario_rendezvous(a: Side, b: Side, rt: Option<&Runtime>) {
    const K: usize = 20;
    let (tx, rx) = mpsc::sync_channel::<usize>(0);
    let returned = Arc::new(AtomicUsize::new(0));
    let sender = {
        let returned = Arc::clone(&returned);
        start(a, rt, move || {
            for i in 0..K {
                tx.send(i).unwrap();
                returned.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    let receiver = {
        let returned = Arc::clone(&returned);
        start(b, rt, move || {
            for i in 0..K {
                nap(Duration::from_millis(if i < 5 { 10 } else { 1 }));
                let r = returned.load(Ordering::SeqCst);
                assert!(
                    r <= i,
                    "send #{r} returned before the receiver took value #{}",
                    r - 1
                );
                assert_eq!(rx.recv(), Ok(i));
            }
            rx
        })
    };
    sender.join();
    let rx = receiver.join();
    assert_eq!(returned.load(Ordering::SeqCst), K);
    // Nothing was left behind in the channel.
    assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
}

#[test]
fn mpsc_sync_channel_zero_is_a_rendezvous() {
    each_pairing("rendezvous", scenario_rendezvous);
}

/// `try_recv`: `Empty` while a sender lives and nothing is queued, the
/// value once sent, `Disconnected` once the senders are gone.
fn scenario_try_recv(a: Side, b: Side, rt: Option<&Runtime>) {
    let (tx, rx) = mpsc::channel::<u32>();
    let rx = start(b, rt, move || {
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Empty));
        rx
    })
    .join();
    start(a, rt, move || {
        tx.send(1).unwrap();
        tx.send(2).unwrap();
    })
    .join();
    start(b, rt, move || {
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [2]);
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    })
    .join();
}

#[test]
fn mpsc_try_recv_empty_then_disconnected() {
    each_pairing("try_recv", scenario_try_recv);
}

/// `try_send` on a full bounded channel gives the value back as `Full`;
/// once the receiver makes room it succeeds. `send_timeout` on a full
/// channel waits at least its timeout.
fn scenario_try_send_full(a: Side, b: Side, rt: Option<&Runtime>) {
    let (tx, rx) = mpsc::sync_channel::<u32>(2);
    let tx = start(a, rt, move || {
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(mpsc::TrySendError::Full(3)));
        let timeout = Duration::from_millis(20);
        let t = Instant::now();
        assert_eq!(
            tx.send_timeout(4, timeout),
            Err(mpsc::TrySendError::Full(4))
        );
        assert!(t.elapsed() >= timeout, "send_timeout returned early");
        tx
    })
    .join();
    let rx = start(b, rt, move || {
        assert_eq!(rx.recv(), Ok(1));
        rx
    })
    .join();
    start(a, rt, move || {
        tx.try_send(5).unwrap();
        assert_eq!(tx.try_send(6), Err(mpsc::TrySendError::Full(6)));
    })
    .join();
    start(b, rt, move || {
        assert_eq!(rx.iter().collect::<Vec<_>>(), [2, 5]);
    })
    .join();
}

#[test]
fn mpsc_try_send_full() {
    each_pairing("try_send full", scenario_try_send_full);
}

/// std: `try_send` on `sync_channel(0)` with no receiver waiting fails at
/// once with `Full`, giving the value back.
fn scenario_try_send_rendezvous_without_receiver(a: Side, _b: Side, rt: Option<&Runtime>) {
    let (tx, rx) = mpsc::sync_channel::<u32>(0);
    let r = start(a, rt, move || tx.try_send(1)).join();
    assert_eq!(r, Err(mpsc::TrySendError::Full(1)));
    // Nothing was left queued either.
    assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    // The same for mpmc's rendezvous channel.
    let (tx, _rx) = mpmc::bounded::<u32>(0);
    let r = start(a, rt, move || tx.try_send(2)).join();
    assert_eq!(r, Err(mpmc::TrySendError::Full(2)));
}

#[test]
fn mpsc_try_send_on_rendezvous_without_receiver_is_full() {
    // `try_send` never waits: a short guard is plenty.
    each_pairing_for(
        "try_send on sync_channel(0)",
        Duration::from_secs(5),
        scenario_try_send_rendezvous_without_receiver,
    );
}

/// std: a rendezvous `send` whose value was taken returns `Ok`, even if
/// the receiver is dropped right after taking it.
fn scenario_rendezvous_receiver_leaves_after_recv(a: Side, b: Side, rt: Option<&Runtime>) {
    for _ in 0..20 {
        let (tx, rx) = mpsc::sync_channel::<u32>(0);
        let sender = start(a, rt, move || tx.send(9).map_err(|e| e.0));
        let receiver = start(b, rt, move || {
            let v = rx.recv();
            drop(rx);
            v
        });
        assert_eq!(receiver.join(), Ok(9));
        assert_eq!(sender.join(), Ok(()), "{a:?} -> {b:?}");
    }
}

#[test]
fn mpsc_rendezvous_send_succeeds_when_receiver_leaves_after_taking() {
    each_pairing(
        "rendezvous receiver leaves",
        scenario_rendezvous_receiver_leaves_after_recv,
    );
}

// ---------------------------------------------------------------- mpmc ---

/// Four receivers (two coroutines, two threads) and three senders (a
/// coroutine, a thread, a coroutine) share one channel: every value is
/// received exactly once. Run for an unbounded, a bounded and a rendezvous
/// channel.
fn mpmc_exactly_once(rt: &Runtime, bound: Option<usize>) {
    const PER: u32 = 1_000;
    let (tx, rx) = match bound {
        None => mpmc::channel::<u32>(),
        Some(b) => mpmc::bounded::<u32>(b),
    };
    let receivers: Vec<Task<Vec<u32>>> = [Side::Co, Side::Th, Side::Co, Side::Th]
        .into_iter()
        .map(|side| {
            let rx = rx.clone();
            start(side, Some(rt), move || rx.iter().collect())
        })
        .collect();
    drop(rx);
    let senders: Vec<Task<()>> = [Side::Co, Side::Th, Side::Co]
        .into_iter()
        .enumerate()
        .map(|(s, side)| {
            let tx = tx.clone();
            let base = s as u32 * PER;
            start(side, Some(rt), move || {
                for i in 0..PER {
                    tx.send(base + i).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    senders.into_iter().for_each(Task::join);
    let mut all = Vec::new();
    for r in receivers {
        all.extend(r.join());
    }
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), total, "a value was received twice ({bound:?})");
    assert_eq!(
        all,
        (0..3 * PER).collect::<Vec<_>>(),
        "values lost ({bound:?})"
    );
}

#[test]
fn mpmc_each_value_received_exactly_once() {
    bounded("mpmc exactly once", || {
        let rt = runtime(2);
        for bound in [None, Some(8), Some(1), Some(0)] {
            mpmc_exactly_once(&rt, bound);
        }
        assert_no_nofault_violations(&rt);
    });
}

/// mpmc disconnection: the last receiver leaving fails `send` with the
/// value; the last sender leaving ends `recv` after the queue drains.
fn scenario_mpmc_disconnect(a: Side, b: Side, rt: Option<&Runtime>) {
    let (tx, rx) = mpmc::channel::<u32>();
    let rx2 = rx.clone();
    start(a, rt, move || {
        tx.send(1).unwrap();
        tx.send(2).unwrap();
    })
    .join();
    start(b, rt, move || {
        assert_eq!(rx.recv(), Ok(1));
        drop(rx);
        assert_eq!(rx2.recv(), Ok(2));
        assert_eq!(rx2.recv(), Err(mpmc::RecvError));
        assert_eq!(rx2.try_recv(), Err(mpmc::TryRecvError::Disconnected));
    })
    .join();

    let (tx, rx) = mpmc::bounded::<String>(1);
    let tx2 = tx.clone();
    start(b, rt, move || drop(rx)).join();
    start(a, rt, move || {
        assert_eq!(tx.send("a".into()).unwrap_err().0, "a");
        match tx2.try_send("b".into()) {
            Err(mpmc::TrySendError::Disconnected(v)) => assert_eq!(v, "b"),
            other => panic!("try_send after the receivers left: {other:?}"),
        }
    })
    .join();

    // A timed receive times out, never early.
    let (tx, rx) = mpmc::channel::<u32>();
    start(b, rt, move || {
        let timeout = Duration::from_millis(15);
        let t = Instant::now();
        assert_eq!(
            rx.recv_timeout(timeout),
            Err(mpmc::RecvTimeoutError::Timeout)
        );
        assert!(t.elapsed() >= timeout, "mpmc recv_timeout returned early");
        drop(tx);
    })
    .join();
}

#[test]
fn mpmc_disconnect_semantics() {
    each_pairing("mpmc disconnect", scenario_mpmc_disconnect);
}

// ------------------------------------------------------------- oneshot ---

/// oneshot: the value arrives (the receiver waiting first); a sender
/// dropped without sending fails the waiting receiver with `RecvError`; a
/// dropped receiver makes `send` return the value.
fn scenario_oneshot(a: Side, b: Side, rt: Option<&Runtime>) {
    let (tx, rx) = oneshot::channel::<String>();
    let receiver = start(b, rt, move || rx.recv());
    start(a, rt, move || {
        nap(Duration::from_millis(10));
        tx.send("value".into()).unwrap();
    })
    .join();
    assert_eq!(receiver.join().as_deref(), Ok("value"));

    let (tx, rx) = oneshot::channel::<u32>();
    // The sender waits for the receiver's first look, so a receiver thread
    // that starts late on a loaded machine still finds the channel open.
    let looked = Arc::new(AtomicUsize::new(0));
    let looked2 = Arc::clone(&looked);
    let receiver = start(b, rt, move || {
        assert_eq!(rx.try_recv(), Err(oneshot::TryRecvError::Empty));
        looked2.store(1, Ordering::SeqCst);
        rx.recv()
    });
    start(a, rt, move || {
        while looked.load(Ordering::SeqCst) == 0 {
            nap(Duration::from_millis(1));
        }
        nap(Duration::from_millis(10));
        drop(tx);
    })
    .join();
    assert_eq!(receiver.join(), Err(oneshot::RecvError), "{a:?} -> {b:?}");

    let (tx, rx) = oneshot::channel::<String>();
    start(b, rt, move || drop(rx)).join();
    start(a, rt, move || {
        assert!(tx.is_closed());
        assert_eq!(tx.send("back".into()), Err("back".to_string()));
    })
    .join();

    let (tx, rx) = oneshot::channel::<u32>();
    start(b, rt, move || {
        let timeout = Duration::from_millis(15);
        let t = Instant::now();
        assert_eq!(
            rx.recv_timeout(timeout),
            Err(oneshot::RecvTimeoutError::Timeout)
        );
        assert!(
            t.elapsed() >= timeout,
            "oneshot recv_timeout returned early"
        );
        assert!(!tx.is_closed());
        tx.send(3).unwrap();
        assert_eq!(rx.try_recv(), Ok(3));
    })
    .join();
}

#[test]
fn oneshot_value_dropped_sender_dropped_receiver() {
    each_pairing("oneshot", scenario_oneshot);
}

/// Many short exchanges between a coroutine and a thread in both
/// directions (request on one channel, reply on another): a lost cross
/// wake-up would hang here.
#[test]
fn mpsc_ping_pong_between_coroutine_and_thread() {
    bounded("ping-pong", || {
        const ROUNDS: u32 = 2_000;
        let rt = runtime(2);
        for (a, b) in [
            (Side::Co, Side::Th),
            (Side::Th, Side::Co),
            (Side::Co, Side::Co),
        ] {
            let (req_tx, req_rx) = mpsc::channel::<u32>();
            let (rep_tx, rep_rx) = mpsc::sync_channel::<u32>(0);
            let server = start(b, Some(&rt), move || {
                for v in req_rx.iter() {
                    rep_tx.send(v * 2).unwrap();
                }
            });
            let client = start(a, Some(&rt), move || {
                for i in 0..ROUNDS {
                    req_tx.send(i).unwrap();
                    assert_eq!(rep_rx.recv(), Ok(i * 2));
                }
                // Kept alive until the server is done: see the ignored
                // rendezvous test for what dropping it here runs into.
                rep_rx
            });
            let rep_rx = client.join();
            server.join();
            drop(rep_rx);
        }
        assert_no_nofault_violations(&rt);
    });
}

/// Values sent from many senders keep each sender's order (per-sender
/// FIFO), as std's channels do.
#[test]
fn mpsc_per_sender_order_is_kept() {
    bounded("per-sender order", || {
        const PER: u32 = 500;
        let rt = runtime(2);
        let (tx, rx) = mpsc::sync_channel::<(u32, u32)>(3);
        let senders: Vec<_> = (0..6u32)
            .map(|s| {
                let tx = tx.clone();
                let side = if s % 2 == 0 { Side::Co } else { Side::Th };
                start(side, Some(&rt), move || {
                    for i in 0..PER {
                        tx.send((s, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let receiver = start(Side::Co, Some(&rt), move || {
            let mut next = [0u32; 6];
            let mut seen = BTreeSet::new();
            for (s, i) in rx.iter() {
                assert_eq!(i, next[s as usize], "sender {s} out of order");
                next[s as usize] += 1;
                seen.insert((s, i));
            }
            seen.len()
        });
        senders.into_iter().for_each(Task::join);
        assert_eq!(receiver.join(), 6 * PER as usize);
        assert_no_nofault_violations(&rt);
    });
}

// -------------------------------------------------------------- stress ---

/// Receivers that time out again and again (1–40 µs) while values arrive,
/// mixed with plain blocking receivers, coroutines and threads on a
/// 2-worker runtime: a timed-out waiter leaving the queue must never take
/// a value with it, nor a wake-up meant for another. Every value is
/// received exactly once, for unbounded, bounded and rendezvous channels.
#[test]
fn stress_timeouts_race_sends_without_losing_values() {
    bounded("stress timeouts", || {
        const PER: u32 = if cfg!(miri) { 50 } else { 3_000 };
        let rt = runtime(2);
        for bound in [None, Some(1), Some(0)] {
            let (tx, rx) = match bound {
                None => mpmc::channel::<u32>(),
                Some(b) => mpmc::bounded::<u32>(b),
            };
            let receivers: Vec<Task<Vec<u32>>> = [Side::Co, Side::Th, Side::Co, Side::Co]
                .into_iter()
                .enumerate()
                .map(|(r, side)| {
                    let rx = rx.clone();
                    start(side, Some(&rt), move || {
                        let mut got = Vec::new();
                        let mut spin = r as u64;
                        loop {
                            if r == 3 {
                                // One plain blocking receiver.
                                match rx.recv() {
                                    Ok(v) => got.push(v),
                                    Err(_) => return got,
                                }
                                continue;
                            }
                            spin = spin.wrapping_mul(7).wrapping_add(1);
                            let t = Duration::from_micros(1 + spin % 40);
                            match rx.recv_timeout(t) {
                                Ok(v) => got.push(v),
                                Err(mpmc::RecvTimeoutError::Timeout) => {}
                                Err(mpmc::RecvTimeoutError::Disconnected) => return got,
                            }
                        }
                    })
                })
                .collect();
            drop(rx);
            let senders: Vec<Task<()>> = [Side::Co, Side::Th, Side::Co]
                .into_iter()
                .enumerate()
                .map(|(s, side)| {
                    let tx = tx.clone();
                    let base = s as u32 * PER;
                    start(side, Some(&rt), move || {
                        for i in 0..PER {
                            tx.send(base + i).unwrap();
                            if i % 64 == 0 {
                                greenstack::yield_now();
                            }
                        }
                    })
                })
                .collect();
            drop(tx);
            senders.into_iter().for_each(Task::join);
            let mut all: Vec<u32> = receivers.into_iter().flat_map(Task::join).collect();
            let total = all.len();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), total, "a value was received twice ({bound:?})");
            assert_eq!(all.len(), 3 * PER as usize, "values lost ({bound:?})");
        }
        // Rendezvous senders that time out while receivers come and go.
        let (tx, rx) = mpsc::sync_channel::<u32>(0);
        let sender = start(Side::Co, Some(&rt), move || {
            let mut sent = 0u32;
            let mut i = 0u32;
            while sent < PER {
                match tx.send_timeout(sent, Duration::from_micros(1 + u64::from(i % 30))) {
                    Ok(()) => sent += 1,
                    Err(mpsc::TrySendError::Full(v)) => assert_eq!(v, sent),
                    Err(e) => panic!("{e:?}"),
                }
                i += 1;
            }
        });
        let receiver = start(Side::Th, Some(&rt), move || {
            let mut next = 0;
            loop {
                match rx.recv_timeout(Duration::from_micros(25)) {
                    Ok(v) => {
                        assert_eq!(v, next);
                        next += 1;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return next,
                }
            }
        });
        sender.join();
        assert_eq!(receiver.join(), PER);
        assert_no_nofault_violations(&rt);
    });
}

/// Many oneshots whose send, drop, and the receiver's waits race:
/// coroutines and threads, on a 2-worker runtime. A lost wake-up hangs
/// (and the guard fails the test); a value must arrive exactly when sent.
#[test]
fn stress_oneshot_races() {
    bounded("stress oneshot", || {
        const ROUNDS: u32 = if cfg!(miri) { 50 } else { 2_000 };
        let rt = runtime(2);
        for (a, b) in [
            (Side::Co, Side::Co),
            (Side::Co, Side::Th),
            (Side::Th, Side::Co),
        ] {
            let rounds = if a == Side::Th || b == Side::Th {
                ROUNDS / 10
            } else {
                ROUNDS
            };
            for i in 0..rounds {
                let (tx, rx) = oneshot::channel::<u32>();
                let sends = i % 5 != 4;
                let sender = start(a, Some(&rt), move || {
                    if i % 3 == 0 {
                        greenstack::yield_now();
                    }
                    if sends {
                        tx.send(i).unwrap();
                    } else {
                        drop(tx);
                    }
                });
                let receiver = start(b, Some(&rt), move || match i % 4 {
                    0 => rx.recv().ok(),
                    1 => loop {
                        match rx.recv_timeout(Duration::from_micros(u64::from(i % 20))) {
                            Ok(v) => return Some(v),
                            Err(oneshot::RecvTimeoutError::Timeout) => {}
                            Err(oneshot::RecvTimeoutError::Disconnected) => return None,
                        }
                    },
                    2 => loop {
                        match rx.try_recv() {
                            Ok(v) => return Some(v),
                            Err(oneshot::TryRecvError::Empty) => greenstack::yield_now(),
                            Err(oneshot::TryRecvError::Disconnected) => return None,
                        }
                    },
                    _ => match rx.recv_timeout(Duration::from_micros(3)) {
                        Ok(v) => Some(v),
                        Err(_) => rx.recv().ok(),
                    },
                });
                sender.join();
                assert_eq!(
                    receiver.join(),
                    sends.then_some(i),
                    "round {i} {a:?}->{b:?}"
                );
            }
        }
        assert_no_nofault_violations(&rt);
    });
}

/// A rendezvous `send_timeout` that times out takes its value back; the
/// next `send` must still complete once a receiver takes it (a withdrawn
/// value used to stay counted, so later sends waited forever).
#[test]
fn mpsc_rendezvous_send_after_a_timed_out_send() {
    bounded("rendezvous after timeout", || {
        let (tx, rx) = mpsc::sync_channel::<u32>(0);
        assert_eq!(
            tx.send_timeout(1, Duration::from_millis(1)),
            Err(mpsc::TrySendError::Full(1))
        );
        let receiver = std::thread::spawn(move || (rx.recv(), rx.recv()));
        tx.send(2).unwrap();
        tx.send(3).unwrap();
        assert_eq!(receiver.join().unwrap(), (Ok(2), Ok(3)));
    });
}

/// Two waiters on one `&oneshot::Receiver` (it is `Sync`), a coroutine and
/// a thread: one gets the value, the other then sees the sender gone.
#[test]
fn oneshot_two_waiters_on_one_receiver() {
    bounded("oneshot two waiters", || {
        let rt = runtime(2);
        for round in 0..20u32 {
            let (tx, rx) = oneshot::channel::<u32>();
            let rx = Arc::new(rx);
            let waiters: Vec<Task<Option<u32>>> = [Side::Co, Side::Th]
                .into_iter()
                .map(|side| {
                    let rx = Arc::clone(&rx);
                    start(side, Some(&rt), move || {
                        match rx.recv_timeout(Duration::from_secs(60)) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                assert_eq!(e, oneshot::RecvTimeoutError::Disconnected);
                                None
                            }
                        }
                    })
                })
                .collect();
            nap(Duration::from_micros(u64::from(round % 4) * 200));
            tx.send(round).unwrap();
            let got: Vec<Option<u32>> = waiters.into_iter().map(Task::join).collect();
            assert_eq!(
                got.iter().flatten().collect::<Vec<_>>(),
                [&round],
                "{got:?}"
            );
        }
        assert_no_nofault_violations(&rt);
    });
}

/// Every channel end stays `Send` and `Sync` for a `Send` value, as before
/// the lock-free oneshot and the stack-node waiters.
#[test]
fn channel_ends_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<mpsc::Sender<u32>>();
    send_sync::<mpsc::SyncSender<u32>>();
    send_sync::<mpsc::Receiver<u32>>();
    send_sync::<mpmc::Sender<u32>>();
    send_sync::<mpmc::Receiver<u32>>();
    send_sync::<oneshot::Sender<u32>>();
    send_sync::<oneshot::Receiver<u32>>();
}

/// A coroutine parked in a channel wait when its runtime shuts down is
/// force-unwound; its wait must leave the channel's queue on the way out,
/// so a later send (from a thread the runtime never owned) reaches the
/// other receiver instead of the unwound coroutine's dead stack frame.
#[test]
fn waiters_unwound_at_shutdown_leave_the_queue() {
    bounded("unwound waiters", || {
        for round in 0..3 {
            let (tx, rx) = mpmc::channel::<u32>();
            let (btx, brx) = mpmc::bounded::<u32>(0);
            let (otx, orx) = oneshot::channel::<u32>();
            let orx = Arc::new(orx);
            let parked = Arc::new(AtomicUsize::new(0));
            let rt = runtime(1 + round % 2);
            {
                let (rx, parked) = (rx.clone(), Arc::clone(&parked));
                rt.spawn(move || {
                    parked.fetch_add(1, Ordering::SeqCst);
                    let _ = rx.recv();
                });
            }
            {
                let (btx, parked) = (btx.clone(), Arc::clone(&parked));
                rt.spawn(move || {
                    parked.fetch_add(1, Ordering::SeqCst);
                    let _ = btx.send(1);
                });
            }
            {
                let (orx, parked) = (Arc::clone(&orx), Arc::clone(&parked));
                rt.spawn(move || {
                    parked.fetch_add(1, Ordering::SeqCst);
                    let _ = orx.recv_timeout(Duration::from_secs(3600));
                });
            }
            while parked.load(Ordering::SeqCst) < 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(20));
            drop(rt);
            tx.send(7).unwrap();
            assert_eq!(rx.try_recv(), Ok(7), "round {round}");
            // The rendezvous sender left its queue too, and took its value
            // back out (its `send` never returned): nothing to receive.
            assert_eq!(
                brx.try_recv(),
                Err(mpmc::TryRecvError::Empty),
                "round {round}"
            );
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                otx.send(9).unwrap();
            });
            // Woken by the sender (not by a 1 ms poll around a stale waker).
            assert_eq!(orx.recv_timeout(Duration::from_secs(60)), Ok(9));
            sender.join().unwrap();
        }
    });
}

// ------------------------------------------- the last receiver leaving ---

/// Counts its drops, and records the thread each happened on.
struct Counted {
    drops: Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Not `unwrap`: a failed assertion holding the log must not turn
        // into a panic in a destructor during the unwind.
        self.drops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(std::thread::current().id());
    }
}

/// A drop log, and a way to make payloads that write to it.
fn drop_log() -> (
    Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>,
    impl Fn() -> Counted,
) {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    (log, move || Counted {
        drops: Arc::clone(&l),
    })
}

/// As std: dropping the last receiver drops every queued value, right
/// there and on the dropping thread (or coroutine's worker thread), while
/// senders are still alive; a later `send` gives its value back without
/// dropping it; a sender parked on a full channel is released with its own
/// value. For `channel`, `sync_channel`, mpmc's `channel` and `bounded`,
/// and oneshot. Before the fix the values stayed until the last sender
/// went.
fn scenario_last_receiver_drops_queued_values(a: Side, b: Side, rt: Option<&Runtime>) {
    const N: usize = 5;
    /// Sends N payloads, then drops the receiver on side `b` and checks
    /// the log there.
    fn check<S: Send + 'static, R: Send + 'static>(
        what: &'static str,
        (a, b, rt): (Side, Side, Option<&Runtime>),
        tx: S,
        rx: R,
        send: fn(&S, Counted) -> Result<(), Counted>,
    ) -> S {
        let (log, make) = drop_log();
        let make = Arc::new(make);
        let tx = {
            let make = Arc::clone(&make);
            start(a, rt, move || {
                for _ in 0..N {
                    assert!(send(&tx, make()).is_ok(), "{what}: send");
                }
                tx
            })
            .join()
        };
        assert!(log.lock().unwrap().is_empty(), "{what}: dropped early");
        let log2 = Arc::clone(&log);
        start(b, rt, move || {
            drop(rx);
            let log = log2.lock().unwrap();
            assert_eq!(log.len(), N, "{what}: queued values outlived the receiver");
            let me = std::thread::current().id();
            assert!(log.iter().all(|t| *t == me), "{what}: dropped elsewhere");
        })
        .join();
        // A send now gives its value back, undropped.
        let back = send(&tx, make()).expect_err("send to a gone receiver");
        assert_eq!(log.lock().unwrap().len(), N, "{what}: value not given back");
        drop(back);
        assert_eq!(log.lock().unwrap().len(), N + 1);
        tx
    }
    let sides = (a, b, rt);
    let (tx, rx) = mpsc::channel();
    check("channel", sides, tx, rx, |tx, v| {
        tx.send(v).map_err(|e| e.0)
    });
    let (tx, rx) = mpsc::sync_channel(N);
    check("sync_channel", sides, tx, rx, |tx, v| {
        tx.send(v).map_err(|e| e.0)
    });
    let (tx, rx) = mpmc::channel();
    check("mpmc::channel", sides, tx, rx, |tx, v| {
        tx.send(v).map_err(|e| e.0)
    });
    let (tx, rx) = mpmc::bounded(N);
    let rx2 = rx.clone();
    let tx = check("mpmc::bounded", sides, tx, (rx, rx2), |tx, v| {
        tx.send(v).map_err(|e| e.0)
    });
    match tx.try_send(Counted {
        drops: Arc::new(std::sync::Mutex::new(Vec::new())),
    }) {
        Err(mpmc::TrySendError::Disconnected(_)) => {}
        other => panic!(
            "mpmc try_send after the receivers left: {:?}",
            other.is_ok()
        ),
    }

    // oneshot: the value sent before the receiver went is dropped with it
    // (`send` consumes the sender, so the receiver holds the last
    // reference: this held before the fix too).
    let (log, make) = drop_log();
    let (tx, rx) = oneshot::channel();
    let v = make();
    start(a, rt, move || assert!(tx.send(v).is_ok())).join();
    let log2 = Arc::clone(&log);
    start(b, rt, move || {
        drop(rx);
        assert_eq!(
            log2.lock().unwrap().len(),
            1,
            "oneshot value outlived its receiver"
        );
    })
    .join();

    // A sender parked on a full channel is released with its own value;
    // the queued one is dropped by the receiver's side.
    let (log, make) = drop_log();
    let (stx, srx) = mpsc::sync_channel::<Counted>(1);
    let first = make();
    let second = make();
    let (queued_tx, queued_rx) = mpsc::channel::<()>();
    let sender = start(a, rt, move || {
        stx.send(first).map_err(|_| ()).unwrap();
        queued_tx.send(()).unwrap();
        stx.send(second).map_err(|e| e.0).err()
    });
    let log2 = Arc::clone(&log);
    start(b, rt, move || {
        queued_rx.recv().unwrap();
        nap(Duration::from_millis(20));
        drop(srx);
        // The queued one at least; the second too if it was not yet parked.
        assert!(!log2.lock().unwrap().is_empty());
    })
    .join();
    let back = sender
        .join()
        .expect("the parked sender gets its value back");
    assert_eq!(log.lock().unwrap().len(), 1, "{a:?} -> {b:?}");
    drop(back);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[test]
fn last_receiver_drops_queued_values() {
    each_pairing(
        "last receiver drops queued values",
        scenario_last_receiver_drops_queued_values,
    );
}

/// Only the last receiver's drop empties an mpmc channel: with one left,
/// the values wait for it.
#[test]
fn mpmc_values_stay_while_a_receiver_is_left() {
    bounded("mpmc values stay", || {
        let (log, make) = drop_log();
        let (tx, rx) = mpmc::channel();
        let rx2 = rx.clone();
        tx.send(make()).map_err(|_| ()).unwrap();
        tx.send(make()).map_err(|_| ()).unwrap();
        drop(rx);
        assert!(log.lock().unwrap().is_empty());
        drop(rx2.recv().unwrap());
        assert_eq!(log.lock().unwrap().len(), 1);
        drop(rx2);
        assert_eq!(log.lock().unwrap().len(), 2);
        drop(tx);
    });
}

/// The request/reply case: a request carrying its reply `Sender`
/// is queued, then the server's receiver is dropped without serving it. The
/// requester, waiting on the reply, must see the disconnect (the reply
/// sender went with the queued request) instead of waiting for ever. For
/// every channel kind carrying the request, and a oneshot reply too.
fn scenario_request_reply(a: Side, b: Side, rt: Option<&Runtime>) {
    /// Runs `request` (which queues a request and returns the wait for its
    /// reply) on side `a`, then drops `server` on side `b` once the request
    /// is queued, and returns what the wait gave.
    fn run<S: Send + 'static, W: Send + 'static, R: Send + 'static>(
        (a, b, rt): (Side, Side, Option<&Runtime>),
        server: S,
        request: impl FnOnce() -> W + Send + 'static,
        wait: fn(W) -> R,
    ) -> R {
        let (queued_tx, queued_rx) = mpsc::channel::<()>();
        let requester = start(a, rt, move || {
            let w = request();
            queued_tx.send(()).unwrap();
            wait(w)
        });
        start(b, rt, move || {
            queued_rx.recv().unwrap();
            // Let the requester start waiting first (either order must work).
            nap(Duration::from_millis(5));
            drop(server);
        })
        .join();
        requester.join()
    }
    let sides = (a, b, rt);

    // mpsc request, mpsc reply. The request's sender stays alive (returned
    // with the wait): only the receiver's drop can free the request.
    let (req_tx, req_rx) = mpsc::channel::<(u32, mpsc::Sender<u32>)>();
    let r = run(
        sides,
        req_rx,
        move || {
            let (reply_tx, reply_rx) = mpsc::channel();
            req_tx.send((1, reply_tx)).map_err(|_| ()).unwrap();
            (req_tx, reply_rx)
        },
        |(_req_tx, reply_rx)| reply_rx.recv(),
    );
    assert_eq!(r, Err(mpsc::RecvError), "{a:?} -> {b:?}");

    // sync_channel request, oneshot reply.
    let (req_tx, req_rx) = mpsc::sync_channel::<oneshot::Sender<u32>>(4);
    let r = run(
        sides,
        req_rx,
        move || {
            let (reply_tx, reply_rx) = oneshot::channel();
            req_tx.send(reply_tx).map_err(|_| ()).unwrap();
            (req_tx, reply_rx)
        },
        |(_req_tx, reply_rx)| reply_rx.recv(),
    );
    assert_eq!(r, Err(oneshot::RecvError), "{a:?} -> {b:?}");

    // mpmc request (two server receivers, both dropped), mpmc reply.
    let (req_tx, req_rx) = mpmc::bounded::<mpmc::Sender<u32>>(4);
    let req_rx2 = req_rx.clone();
    let r = run(
        sides,
        (req_rx, req_rx2),
        move || {
            let (reply_tx, reply_rx) = mpmc::channel();
            req_tx.send(reply_tx).map_err(|_| ()).unwrap();
            (req_tx, reply_rx)
        },
        |(_req_tx, reply_rx)| reply_rx.recv(),
    );
    assert_eq!(r, Err(mpmc::RecvError), "{a:?} -> {b:?}");
}

#[test]
fn request_reply_sees_the_disconnect_when_the_server_receiver_drops() {
    each_pairing("request/reply", scenario_request_reply);
}

/// A rendezvous sender parked when the receiver drops gets its own value
/// back (std keeps it in the sender), and nothing is dropped meanwhile.
fn scenario_rendezvous_receiver_dropped(a: Side, b: Side, rt: Option<&Runtime>) {
    let (log, make) = drop_log();
    let (tx, rx) = mpsc::sync_channel::<Counted>(0);
    let v = make();
    let sender = start(a, rt, move || tx.send(v).map_err(|e| e.0).err());
    start(b, rt, move || {
        nap(Duration::from_millis(10));
        drop(rx);
    })
    .join();
    let back = sender.join().expect("the value comes back");
    assert!(log.lock().unwrap().is_empty(), "{a:?} -> {b:?}");
    drop(back);
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[test]
fn rendezvous_sender_gets_its_value_back_when_the_receiver_drops() {
    each_pairing(
        "rendezvous receiver dropped",
        scenario_rendezvous_receiver_dropped,
    );
}
