//! loom models of the park protocols (`scheduler/park.rs`).

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use crate::scheduler::park::{ParkState, Parker};

/// A coroutine park as coroutine and worker run it: the coroutine tries
/// the token (step 1), suspends, and the worker commits the park (step 2)
/// or requeues it. Returns false if the token was taken without suspending.
fn coroutine_park(state: &ParkState, runnable: &AtomicUsize) -> bool {
    if state.take_token() {
        return false;
    }
    if !state.commit_park() {
        // A token raced in: the worker requeues it itself.
        runnable.fetch_add(1, Ordering::SeqCst);
    }
    true
}

/// An unpark racing a park is never lost: the coroutine ends up runnable
/// exactly once (requeued by its worker or scheduled by the unparker), or
/// consumed the token without suspending.
#[test]
fn loom_park_unpark_no_lost_wakeup() {
    loom::model(|| {
        let state = Arc::new(ParkState::new());
        let runnable = Arc::new(AtomicUsize::new(0));
        let (s2, r2) = (Arc::clone(&state), Arc::clone(&runnable));
        let waker = thread::spawn(move || {
            if s2.unpark() {
                r2.fetch_add(1, Ordering::SeqCst);
            }
        });
        let suspended = coroutine_park(&state, &runnable);
        waker.join().unwrap();
        let woken = runnable.load(Ordering::SeqCst);
        assert_eq!(
            woken,
            usize::from(suspended),
            "suspended = {suspended}, scheduled {woken} times"
        );
    });
}

/// Two unparkers and a parker: the coroutine is scheduled at most once per
/// park and never left parked.
#[test]
fn loom_two_unparkers_schedule_once() {
    loom::model(|| {
        let state = Arc::new(ParkState::new());
        let runnable = Arc::new(AtomicUsize::new(0));
        let wakers: Vec<_> = (0..2)
            .map(|_| {
                let (s, r) = (Arc::clone(&state), Arc::clone(&runnable));
                thread::spawn(move || {
                    if s.unpark() {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        let suspended = coroutine_park(&state, &runnable);
        for w in wakers {
            w.join().unwrap();
        }
        let woken = runnable.load(Ordering::SeqCst);
        // Suspended: it was made runnable exactly once (by its worker or an
        // unparker), never left parked, never twice. Token taken: never.
        assert_eq!(
            woken,
            usize::from(suspended),
            "suspended = {suspended}, scheduled {woken} times"
        );
    });
}

/// A thread that found nothing to do sleeps on its parker (the watchdog,
/// the trimmer; workers sleep in epoll, see `loom_idle.rs`); a wake-up sent
/// at any point before or during that sleep ends it.
#[test]
fn loom_worker_parker_keeps_early_wakeup() {
    loom::model(|| {
        let parker = Arc::new(Parker::new());
        let work = Arc::new(AtomicBool::new(false));
        let (p2, w2) = (Arc::clone(&parker), Arc::clone(&work));
        let producer = thread::spawn(move || {
            w2.store(true, Ordering::SeqCst);
            p2.unpark();
        });
        if !work.load(Ordering::SeqCst) {
            parker.park(); // must return: the unpark is kept as a token
        }
        producer.join().unwrap();
        assert!(work.load(Ordering::SeqCst));
    });
}
