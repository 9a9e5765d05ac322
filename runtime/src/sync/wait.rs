//! The waiting machinery every primitive shares: a waiter node, the lock
//! helper that enters a no-fault section, and the park loop with deadline.
//!
//! Every primitive keeps its state behind a std `Mutex`, held only for a few
//! instructions and never across a park. A waiter enqueues a [`Waiter`]
//! under that lock, releases it, and parks until the node is notified (or
//! its deadline passes). The notifier marks the node and wakes it after
//! releasing the lock. Coroutine and thread park tokens keep a wake-up that
//! arrives before the park, so none is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::stack::NoFaultSection;

/// One parked coroutine or thread, in some primitive's queue.
#[derive(Debug)]
pub(crate) struct Waiter {
    waker: Waker,
    notified: AtomicBool,
    /// What the waiter asks for (permits, for the semaphore).
    pub(crate) want: usize,
}

impl Waiter {
    /// A node for the caller, asking for `want`.
    pub(crate) fn new(want: usize) -> Arc<Waiter> {
        Arc::new(Waiter {
            waker: crate::scheduler::current_waker(),
            notified: AtomicBool::new(false),
            want,
        })
    }

    /// Marks the node notified; the caller wakes it (after unlocking) with
    /// [`wake`](Self::wake).
    pub(crate) fn notify(&self) {
        // Release: what the notifier did under the lock is visible to the
        // woken waiter's Acquire load.
        self.notified.store(true, Ordering::Release);
    }

    /// Wakes the waiter.
    pub(crate) fn wake(&self) {
        self.waker.wake_by_ref();
    }

    /// Whether the node has been notified.
    pub(crate) fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Parks until notified or `deadline`. True if notified.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.is_notified() {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            crate::time::park_until(deadline);
        }
    }
}

/// A primitive's state, locked inside a no-fault section: the section is
/// entered (prefaulting the stack) before the lock is taken and left after
/// it is released, so no growth fault can happen while it is held.
pub(crate) struct Locked<'a, S> {
    // Field order is drop order: the guard goes first.
    guard: MutexGuard<'a, S>,
    _section: NoFaultSection,
}

impl<S> std::ops::Deref for Locked<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.guard
    }
}

impl<S> std::ops::DerefMut for Locked<'_, S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.guard
    }
}

/// Locks `m` inside a no-fault section. Our critical sections never panic
/// while holding the lock, so poisoning is ignored.
pub(crate) fn lock<S>(m: &Mutex<S>) -> Locked<'_, S> {
    let section = NoFaultSection::enter();
    Locked {
        guard: m.lock().unwrap_or_else(|p| p.into_inner()),
        _section: section,
    }
}

/// `now + d`, or `None` (wait forever) if that overflows.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Wakes every waiter in `list` (after the caller released its lock).
pub(crate) fn wake_all(list: Vec<Arc<Waiter>>) {
    for w in list {
        w.wake();
    }
}
