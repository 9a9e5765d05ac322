//! `JoinSet`: joined in the order they finish, from coroutines and plain
//! threads; panics, cancel-all, cancel-on-drop, timeouts, and a runtime
//! that goes away under the set.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use greenstack::sync::mpsc;
use greenstack::{cancel, time, Cancelled, JoinSet, Runtime};

const FOREVER: Duration = Duration::from_secs(3600);

#[test]
fn results_come_in_the_order_the_coroutines_finish() {
    bounded("order", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            let rt2 = runtime(2);
            let out = start(side, Some(&rt), move || {
                let mut set = JoinSet::new();
                // Each waits for its own go, sent in the reverse order.
                let mut gos = Vec::new();
                for i in 0..5u32 {
                    let (tx, rx) = mpsc::channel::<()>();
                    gos.push(tx);
                    set.spawn_on(&rt2, move || {
                        rx.recv().unwrap();
                        i
                    });
                }
                assert_eq!(set.len(), 5);
                let mut order = Vec::new();
                for tx in gos.into_iter().rev() {
                    tx.send(()).unwrap();
                    order.push(set.join_next().unwrap().unwrap());
                }
                assert!(set.join_next().is_none());
                assert!(set.is_empty());
                order
            })
            .join();
            assert_eq!(out, [4, 3, 2, 1, 0], "{side:?}");
        }
    });
}

#[test]
fn a_panic_is_that_coroutines_result_and_the_others_go_on() {
    bounded("panic", || {
        let rt = runtime(2);
        rt.block_on(|| {
            let mut set = JoinSet::new();
            set.spawn(|| panic!("one of them"));
            set.spawn(|| 2);
            let mut ok = 0;
            let mut panics = 0;
            for r in std::iter::from_fn(|| set.join_next()) {
                match r {
                    Ok(v) => ok += v,
                    Err(p) => {
                        assert_eq!(p.downcast_ref::<&str>(), Some(&"one of them"));
                        panics += 1;
                    }
                }
            }
            assert_eq!((ok, panics), (2, 1));
        });
    });
}

#[test]
fn cancel_all_ends_their_waits_and_they_are_still_joined() {
    bounded("cancel all", || {
        let rt = runtime(2);
        rt.block_on(|| {
            let mut set = JoinSet::new();
            let (_tx, rx) = mpsc::channel::<u32>();
            let rx = Arc::new(rx);
            for _ in 0..4 {
                let rx = Arc::clone(&rx);
                set.spawn(move || (rx.recv().is_err(), cancel::is_cancelled()));
            }
            set.cancel_all();
            let all = set.join_all();
            assert_eq!(all.len(), 4);
            for r in all {
                assert_eq!(r.unwrap(), (true, true));
            }
        });
    });
}

#[test]
fn dropping_the_set_cancels_what_it_holds() {
    bounded("drop", || {
        let rt = runtime(2);
        let stopped = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<()>();
        {
            let mut set = JoinSet::new();
            for _ in 0..3 {
                let stopped = Arc::clone(&stopped);
                let tx = tx.clone();
                set.spawn_on(&rt, move || {
                    time::sleep(FOREVER);
                    if cancel::is_cancelled() {
                        stopped.fetch_add(1, Ordering::SeqCst);
                    }
                    drop(tx);
                });
            }
        }
        drop(tx);
        // Every sender is gone once all three have returned.
        assert!(rx.recv().is_err());
        assert_eq!(stopped.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn timed_and_non_blocking_joins_never_end_early() {
    bounded("timeouts", || {
        let rt = runtime(2);
        let mut set = JoinSet::new();
        assert!(set.try_join_next().is_none());
        assert!(set.join_next_timeout(Duration::from_millis(1)).is_none());
        let (tx, rx) = mpsc::channel::<()>();
        set.spawn_on(&rt, move || rx.recv().is_ok());
        assert!(set.try_join_next().is_none());
        let t = Instant::now();
        let d = Duration::from_millis(30);
        assert!(set.join_next_timeout(d).is_none());
        assert!(t.elapsed() >= d, "returned early");
        assert_eq!(set.len(), 1, "still in the set");
        tx.send(()).unwrap();
        assert!(set.join_next_timeout(FOREVER).unwrap().unwrap());
    });
}

#[test]
fn a_cancelled_caller_stops_waiting_and_the_set_keeps_its_coroutines() {
    bounded("cancelled caller", || {
        let rt = runtime(2);
        let (tx, rx) = mpsc::channel::<()>();
        let caller = rt.spawn(move || {
            let mut set = JoinSet::new();
            set.spawn(move || rx.recv().is_ok());
            let r = set.join_next();
            (r.is_none(), set.len())
        });
        caller.cancel();
        assert_eq!(caller.join().unwrap(), (true, 1));
        drop(tx);
    });
}

#[test]
fn coroutines_a_dropped_runtime_never_ran_are_joined_as_cancelled() {
    bounded("runtime gone", || {
        let rt = Runtime::builder().workers(1).build().unwrap();
        let mut set = JoinSet::new();
        // The first holds the only worker; the others never start.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        set.spawn_on(&rt, move || {
            let _ = rx.recv();
        });
        for _ in 0..3 {
            set.spawn_on(&rt, || ());
        }
        drop(rt);
        drop(tx);
        let mut cancelled = 0;
        while let Some(r) = set.join_next() {
            if let Err(p) = r {
                assert!(p.downcast_ref::<Cancelled>().is_some());
                cancelled += 1;
            }
        }
        assert!(cancelled >= 3, "{cancelled}");
    });
}

/// A coroutine of the set abandoned at shutdown (its closure never ends:
/// an accept loop that retries every error, abandoned after a few
/// `ECANCELED`s) is still joined, as cancelled, instead of `join_next`
/// waiting for good.
#[test]
fn a_coroutine_abandoned_at_shutdown_is_joined_as_cancelled() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    bounded("a set with an abandoned coroutine", || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let rt = Runtime::builder()
            .workers(1)
            .shutdown_timeout(Duration::from_secs(3600))
            .build()
            .unwrap();
        let mut set: JoinSet<()> = JoinSet::new();
        let started = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&started);
        set.spawn_on(&rt, move || {
            s2.store(true, SeqCst);
            loop {
                let _ = listener.accept();
            }
        });
        while !started.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(rt);
        let r = set.join_next().expect("the set holds one coroutine");
        let p = r.expect_err("an abandoned coroutine has no value");
        assert!(p.downcast_ref::<Cancelled>().is_some());
        assert!(set.join_next().is_none());
    });
}
