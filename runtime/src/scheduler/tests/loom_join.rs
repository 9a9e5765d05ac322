//! loom models of the join-handle state machine (`scheduler/join.rs`):
//! finish against join against detach.

use std::task::{Wake, Waker};

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use crate::scheduler::join::{Completer, JoinState, Outcome};

/// Counts wake-ups.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts drops of the value, so "dropped exactly once" can be checked.
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A joiner that registers while the coroutine completes: it either sees
/// the outcome at once or is woken exactly once; the value is read once.
#[test]
fn loom_join_races_completion() {
    loom::model(|| {
        let state: Arc<JoinState<u32>> = Arc::new(JoinState::new());
        let completer = Completer::new(Arc::clone(&state));
        let finisher = thread::spawn(move || completer.complete(Outcome::Value(7)));
        let counter = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(std::sync::Arc::clone(&counter));
        let ready_now = state.register(&waker);
        finisher.join().unwrap();
        let wakes = counter.0.load(Ordering::SeqCst);
        if ready_now {
            assert_eq!(wakes, 0, "woken although the outcome was seen at once");
        } else {
            assert_eq!(wakes, 1, "registered but woken {wakes} times");
        }
        assert!(state.is_complete());
        assert!(matches!(state.take(), Outcome::Value(7)));
    });
}

/// A joiner re-registering (as a future re-polled with a new waker) while
/// the coroutine completes: no wake-up lost, the waker cell never raced.
#[test]
fn loom_reregister_races_completion() {
    loom::model(|| {
        let state: Arc<JoinState<u32>> = Arc::new(JoinState::new());
        let completer = Completer::new(Arc::clone(&state));
        let first = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        let second = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        let done_early = state.register(&Waker::from(std::sync::Arc::clone(&first)));
        assert!(!done_early);
        let finisher = thread::spawn(move || completer.complete(Outcome::Value(1)));
        let done = state.register(&Waker::from(std::sync::Arc::clone(&second)));
        finisher.join().unwrap();
        let wakes = first.0.load(Ordering::SeqCst) + second.0.load(Ordering::SeqCst);
        assert!(done || wakes == 1, "registered and never woken");
        assert!(wakes <= 1, "woken {wakes} times");
    });
}

/// Detach racing completion: the value is dropped exactly once, by one of
/// the two.
#[test]
fn loom_detach_races_completion() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let state: Arc<JoinState<Tracked>> = Arc::new(JoinState::new());
        let completer = Completer::new(Arc::clone(&state));
        let value = Tracked(Arc::clone(&drops));
        let finisher = thread::spawn(move || completer.complete(Outcome::Value(value)));
        drop(state.detach());
        finisher.join().unwrap();
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "the value was not dropped exactly once"
        );
        drop(state);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

/// A completer dropped without completing (the coroutine was cancelled)
/// still releases a registered joiner, with `Cancelled`.
#[test]
fn loom_cancelled_completer_wakes_joiner() {
    loom::model(|| {
        let state: Arc<JoinState<u32>> = Arc::new(JoinState::new());
        let completer = Completer::new(Arc::clone(&state));
        let dropper = thread::spawn(move || drop(completer));
        let counter = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        let ready_now = state.register(&Waker::from(std::sync::Arc::clone(&counter)));
        dropper.join().unwrap();
        assert!(ready_now || counter.0.load(Ordering::SeqCst) == 1);
        assert!(matches!(state.take(), Outcome::Cancelled));
    });
}
