//! A counting semaphore with FIFO hand-off: the fairness core of
//! [`Mutex`](super::Mutex) and [`RwLock`](super::RwLock).
//!
//! Permits released while coroutines wait go straight to the waiter at the
//! front of the queue (if it asks for no more than are free), so a waiter is
//! served after at most the waiters ahead of it: no barging, no starvation.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use crate::loom::sync::Mutex;
use std::time::Duration;

use super::wait::{deadline_after, lock, wake_all, Defer, Waiter};
use crate::cancel::Point;

/// A counting semaphore that parks coroutines (or blocks threads) while no
/// permit is free; waiters are served in arrival order.
///
/// # Examples
///
/// ```
/// use greenstack_runtime::sync::Semaphore;
/// let sem = Semaphore::new(2);
/// let a = sem.acquire();
/// let _b = sem.acquire();
/// assert!(sem.try_acquire().is_none());
/// drop(a);
/// assert!(sem.try_acquire().is_some());
/// ```
pub struct Semaphore {
    state: Mutex<State>,
}

struct State {
    permits: usize,
    queue: VecDeque<Arc<Waiter>>,
}

/// Permits held from a [`Semaphore`]; released on drop.
#[must_use = "the permits are released when the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
    n: usize,
}

impl Semaphore {
    /// A semaphore with `permits` permits.
    pub const fn new(permits: usize) -> Semaphore {
        Semaphore {
            state: Mutex::new(State {
                permits,
                queue: VecDeque::new(),
            }),
        }
    }

    /// Permits free right now.
    pub fn available_permits(&self) -> usize {
        lock(&self.state).permits
    }

    /// Waits for one permit.
    pub fn acquire(&self) -> SemaphoreGuard<'_> {
        self.acquire_many(1)
    }

    /// Waits for `n` permits at once.
    pub fn acquire_many(&self, n: usize) -> SemaphoreGuard<'_> {
        self.acquire_until(n, Point::plain(None))
            .expect("no deadline")
    }

    /// Waits for one permit for at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphoreGuard<'_>> {
        self.acquire_until(1, Point::new(deadline_after(timeout)))
    }

    /// Takes one permit if one is free and nobody waits.
    pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
        self.try_acquire_many(1)
    }

    /// Takes `n` permits if that many are free and nobody waits.
    pub fn try_acquire_many(&self, n: usize) -> Option<SemaphoreGuard<'_>> {
        let mut st = lock(&self.state);
        if st.queue.is_empty() && st.permits >= n {
            st.permits -= n;
            Some(SemaphoreGuard { sem: self, n })
        } else {
            None
        }
    }

    /// Adds `n` permits, serving waiters in order.
    pub fn add_permits(&self, n: usize) {
        let woken = {
            let mut st = lock(&self.state);
            st.permits = st.permits.saturating_add(n);
            grant(&mut st)
        };
        wake_all(woken);
    }

    pub(crate) fn acquire_until(&self, n: usize, point: Point) -> Option<SemaphoreGuard<'_>> {
        let node = {
            let mut st = lock(&self.state);
            if st.queue.is_empty() && st.permits >= n {
                st.permits -= n;
                return Some(SemaphoreGuard { sem: self, n });
            }
            let node = Waiter::new(n);
            st.queue.push_back(Arc::clone(&node));
            node
        };
        // If the wait is unwound (the runtime cancels parked coroutines at
        // shutdown by unwinding them from their park; or any panic out of
        // it), leave the queue, and pass on permits granted meanwhile:
        // otherwise the next release hands the permits to a waiter that is
        // gone, and they are lost for good (a `Mutex` stays locked).
        let leave = Defer::new(|| self.leave(&node));
        if node.wait(&point) {
            leave.disarm();
            return Some(SemaphoreGuard { sem: self, n });
        }
        leave.disarm();
        // Timed out: leave the queue, unless a grant raced in.
        let woken = {
            let mut st = lock(&self.state);
            if node.is_notified() {
                return Some(SemaphoreGuard { sem: self, n });
            }
            st.queue.retain(|w| !Arc::ptr_eq(w, &node));
            // We may have blocked smaller requests behind us.
            grant(&mut st)
        };
        wake_all(woken);
        None
    }

    /// A waiter that will not take its permits leaves: out of the queue if
    /// still there, else (the permits were granted to it) giving them back;
    /// either way the waiters it held back are served. Never parks, so it
    /// may run during an unwind.
    fn leave(&self, node: &Arc<Waiter>) {
        let woken = {
            let mut st = lock(&self.state);
            if node.is_notified() {
                // Granted under this lock, so `is_notified` is exact here.
                st.permits = st.permits.saturating_add(node.want);
            } else {
                st.queue.retain(|w| !Arc::ptr_eq(w, node));
            }
            grant(&mut st)
        };
        wake_all(woken);
    }

    fn release(&self, n: usize) {
        self.add_permits(n);
    }
}

/// Hands free permits to the waiters at the front, in order. Returns the
/// waiters to wake once the lock is released.
fn grant(st: &mut State) -> Vec<Arc<Waiter>> {
    let mut woken = Vec::new();
    while let Some(front) = st.queue.front() {
        if front.want > st.permits {
            break;
        }
        st.permits -= front.want;
        let w = st.queue.pop_front().expect("front exists");
        w.notify();
        woken.push(w);
    }
    woken
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        self.sem.release(self.n);
    }
}

impl SemaphoreGuard<'_> {
    /// Keeps the permits taken: they are not released on drop.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("available", &self.available_permits())
            .finish()
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard")
            .field("permits", &self.n)
            .finish()
    }
}
