//! loom models of the futex queues (`sync/futex_queue.rs`), the waits the
//! futex hook takes over from std's locks: a waiter checks the word and
//! queues under the queue's lock after counting itself; a waker changes
//! the word, fences, and looks at the count before it takes any lock.
//!
//! A lost wake-up (the waker read a count of 0, or missed the node, while
//! the waiter queued on the old value) leaves the waiter parked: a loom
//! deadlock report. The waiter runs as a "coroutine" (`as_coroutine`), so
//! a wake that reaches its node or header after it left is a causality
//! violation (see `loom_wait.rs`).

use std::time::Instant;

use loom::sync::Arc;
use loom::thread;

use crate::loom::rt::as_coroutine;
use crate::loom::sync::atomic::{AtomicU32, Ordering};
use crate::sync::futex_queue::{FutexQueues, NotWoken};

fn addr(word: &AtomicU32) -> usize {
    word as *const AtomicU32 as usize
}

/// Fresh queues, a word holding 0, and a loom thread that runs `wait` as
/// a coroutine on them.
fn waiter<R: Send + 'static>(
    wait: impl FnOnce(&FutexQueues, &AtomicU32) -> R + Send + 'static,
) -> (Arc<FutexQueues>, Arc<AtomicU32>, thread::JoinHandle<R>) {
    let q = Arc::new(FutexQueues::new());
    let word = Arc::new(AtomicU32::new(0));
    let (q2, word2) = (Arc::clone(&q), Arc::clone(&word));
    let h = thread::spawn(move || as_coroutine(|| wait(&q2, &word2)));
    (q, word, h)
}

/// std's lock-wait shape: wait while the word is 0; the waker sets it to
/// 1 and wakes one. The waiter always gets out.
#[test]
fn loom_futex_wake_after_a_change_is_never_lost() {
    loom::model(|| {
        let (q, word, h) = waiter(|q, word| {
            while word.load(Ordering::Acquire) == 0 {
                let r = q.wait(word, 0, None, crate::time::park_until, || false);
                assert!(matches!(r, Ok(()) | Err(NotWoken::Changed)), "{r:?}");
            }
        });
        word.store(1, Ordering::Release);
        q.wake(addr(&word), 1);
        h.join().unwrap();
    });
}

/// A waiter whose deadline has passed races a waker: it is woken (the
/// waker counted it) or it timed out (the waker found nobody), never both
/// and never neither, and the waker is done with its node before it
/// leaves.
#[test]
fn loom_futex_timeout_races_a_wake() {
    loom::model(|| {
        let (q, word, h) = waiter(|q, word| {
            let past = Instant::now();
            q.wait(word, 0, Some(past), crate::time::park_until, || false)
        });
        // The waker does not change the word: a wake-up of whoever waits
        // (a condvar's notify after its counter was read, say).
        let woken = q.wake(addr(&word), 1);
        let r = h.join().unwrap();
        match r {
            Ok(()) => assert_eq!(woken, 1),
            Err(NotWoken::TimedOut) => assert_eq!(woken, 0),
            other => panic!("{other:?}"),
        }
    });
}
