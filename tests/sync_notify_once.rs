//! `sync::Notify`: tokio's semantics for blocking code, from coroutines and
//! plain threads: a stored permit, `notify_one` wakes one waiter,
//! `notify_waiters` wakes all of them and stores nothing, and timeouts are
//! never early. `sync::OnceLock`: std's, with initializers that park.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bounded;
use greenstack::sync::Notify;
use greenstack::Runtime;

/// Polls until `cond` holds (under the test's hang guard).
fn wait_for(mut cond: impl FnMut() -> bool) {
    while !cond() {
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_permit_is_stored_once_and_timeouts_are_never_early() {
    bounded("notify permits", || {
        let n = Notify::new();
        n.notify_one();
        n.notify_one(); // still one permit
        assert!(
            n.notified_timeout(Duration::ZERO),
            "the permit was not stored"
        );
        let t = Instant::now();
        assert!(
            !n.notified_timeout(Duration::from_millis(20)),
            "a second permit"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(20),
            "the timeout was early"
        );
    });
}

/// Two coroutines and a plain thread wait: `notify_one` wakes exactly one
/// of them, `notify_waiters` the other two, and leaves no permit.
#[test]
fn notify_one_wakes_one_and_notify_waiters_wakes_the_rest() {
    bounded("notify wake-ups", || {
        let rt = Runtime::new().unwrap();
        let n = Arc::new(Notify::new());
        let woken = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let waiter = |n: Arc<Notify>, woken: Arc<AtomicUsize>, started: Arc<AtomicUsize>| {
            move || {
                started.fetch_add(1, SeqCst);
                n.notified();
                woken.fetch_add(1, SeqCst);
            }
        };
        let c1 = rt.spawn(waiter(n.clone(), woken.clone(), started.clone()));
        let c2 = rt.spawn(waiter(n.clone(), woken.clone(), started.clone()));
        let t = std::thread::spawn(waiter(n.clone(), woken.clone(), started.clone()));
        wait_for(|| started.load(SeqCst) == 3);
        // Let them reach the wait (a notification before that is a permit,
        // which one of them takes: still exactly one wakes).
        std::thread::sleep(Duration::from_millis(50));
        n.notify_one();
        wait_for(|| woken.load(SeqCst) >= 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(woken.load(SeqCst), 1, "notify_one woke more than one");
        // A waiter still on its way to the wait would miss a single
        // `notify_waiters` (it stores no permit): repeat it until all have
        // woken. Repeated, it still stores none (checked below).
        while woken.load(SeqCst) < 3 {
            n.notify_waiters();
            std::thread::sleep(Duration::from_millis(1));
        }
        c1.join().unwrap();
        c2.join().unwrap();
        t.join().unwrap();
        assert_eq!(woken.load(SeqCst), 3);
        assert!(
            !n.notified_timeout(Duration::from_millis(10)),
            "notify_waiters left a permit"
        );
    });
}

/// `OnceLock` on one worker: a second caller arrives while the first one's
/// initializer sleeps (parks); it parks too, instead of blocking the
/// worker the initializer needs, and both get the first's value. A
/// panicking initializer leaves the cell empty for the next.
#[test]
fn once_lock_initializers_park_and_a_panic_leaves_it_empty() {
    use greenstack::sync::OnceLock;
    bounded("OnceLock on one worker", || {
        let rt = greenstack::RuntimeBuilder::default()
            .workers(1)
            .build()
            .unwrap();
        let cell: Arc<OnceLock<u32>> = Arc::new(OnceLock::new());
        let (a, b) = (cell.clone(), cell.clone());
        let got = rt.block_on(move || {
            let first = greenstack::spawn(move || {
                *a.get_or_init(|| {
                    greenstack::time::sleep(Duration::from_millis(50));
                    5
                })
            });
            let second = greenstack::spawn(move || {
                greenstack::time::sleep(Duration::from_millis(10));
                *b.get_or_init(|| 6)
            });
            (first.join().unwrap(), second.join().unwrap())
        });
        assert_eq!(got, (5, 5));
        assert_eq!(cell.set(7), Err(7));

        let fresh: OnceLock<u32> = OnceLock::new();
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fresh.get_or_init(|| panic!("the initializer fails"));
        }));
        assert!(p.is_err());
        assert_eq!(fresh.get(), None);
        assert_eq!(*fresh.get_or_init(|| 9), 9);
        assert_eq!(fresh.into_inner(), Some(9));
    });
}
