//! Condition variables, barriers and wait groups.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use crate::loom::sync::Mutex as StdMutex;
use std::time::Duration;

use super::mutex::{Mutex, MutexGuard};
use super::wait::{deadline_after, lock, wake_all, Defer, Waiter};
use crate::cancel::Point;

/// A condition variable for [`Mutex`], with std's API: waiting parks the
/// coroutine (or blocks the thread) and releases the mutex meanwhile.
/// Waiters are notified in arrival order.
#[derive(Default)]
pub struct Condvar {
    waiters: StdMutex<VecDeque<Arc<Waiter>>>,
}

/// Whether a timed wait returned because its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// True if the wait ended by timing out.
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

impl Condvar {
    /// A condition variable with no waiters.
    pub const fn new() -> Condvar {
        Condvar {
            waiters: StdMutex::new(VecDeque::new()),
        }
    }

    /// Releases `guard`'s mutex, waits for a notification, and locks again.
    /// Spurious wake-ups are possible: wait in a loop (or use
    /// [`wait_while`](Self::wait_while)).
    pub fn wait<'a, T: ?Sized>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait_point(guard, Point::plain(None)).0
    }

    /// Waits while `condition` holds.
    pub fn wait_while<'a, T: ?Sized>(
        &self,
        mut guard: MutexGuard<'a, T>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        while condition(&mut *guard) {
            guard = self.wait(guard);
        }
        guard
    }

    /// As [`wait`](Self::wait), for at most `dur`.
    pub fn wait_timeout<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        dur: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
        self.wait_point(guard, Point::new(deadline_after(dur)))
    }

    /// As [`wait_while`](Self::wait_while), for at most `dur` in all.
    pub fn wait_timeout_while<'a, T: ?Sized>(
        &self,
        mut guard: MutexGuard<'a, T>,
        dur: Duration,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
        let deadline = deadline_after(dur);
        while condition(&mut *guard) {
            let (g, r) = self.wait_point(guard, Point::new(deadline));
            guard = g;
            if r.timed_out() {
                let still = condition(&mut *guard);
                return (guard, WaitTimeoutResult(still));
            }
        }
        (guard, WaitTimeoutResult(false))
    }

    /// Waits until notified or `point` ends the wait (for the crate's own
    /// cancellable waits built on a condvar: watch, broadcast, notify).
    pub(crate) fn wait_point<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        point: Point,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
        let node = Waiter::new(1);
        lock(&self.waiters).push_back(Arc::clone(&node));
        // If the wait is unwound (the runtime cancels parked coroutines at
        // shutdown by unwinding them from their park; or any panic out of
        // it), leave the queue, or pass on a notification that reached us
        // meanwhile: a `notify_one` taken by a waiter that is gone would be
        // lost to the live ones. Armed before the mutex is released, so an
        // unwind out of the unlock is covered too.
        let leave = Defer::new(|| {
            let mut q = lock(&self.waiters);
            if node.is_notified() {
                // Notified under this lock (`notify_one`), so exact: pass
                // it on (after `notify_all`, a spurious wake-up at worst).
                drop(q);
                self.notify_one();
            } else {
                q.retain(|w| !Arc::ptr_eq(w, &node));
            }
        });
        // Enqueued before the mutex is released: a notify issued by whoever
        // takes the mutex next cannot miss us.
        let mutex: &'a Mutex<T> = guard.unlock();
        let notified = node.wait(&point);
        leave.disarm();
        if !notified {
            let mut q = lock(&self.waiters);
            if !node.is_notified() {
                q.retain(|w| !Arc::ptr_eq(w, &node));
            }
        }
        (mutex.lock(), WaitTimeoutResult(!node.is_notified()))
    }

    /// Wakes one waiter, the longest waiting.
    pub fn notify_one(&self) {
        let w = {
            let mut q = lock(&self.waiters);
            let w = q.pop_front();
            // Marked under the lock, so a waiter that leaves (timed out or
            // unwound) sees exactly whether this notification is its own.
            if let Some(w) = &w {
                w.notify();
            }
            w
        };
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        let all: Vec<_> = {
            let mut q = lock(&self.waiters);
            // Marked under the lock, as in `notify_one`.
            q.drain(..).inspect(|w| w.notify()).collect()
        };
        wake_all(all);
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar").finish_non_exhaustive()
    }
}

/// Lets `n` coroutines (or threads) wait until all have arrived, as std's
/// `Barrier` does; reusable.
pub struct Barrier {
    n: usize,
    state: Mutex<(usize, u64)>,
    cvar: Condvar,
}

/// Returned by [`Barrier::wait`]: exactly one waiter per round is the
/// leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierWaitResult(bool);

impl BarrierWaitResult {
    /// Whether this waiter was the leader (the last to arrive).
    pub fn is_leader(&self) -> bool {
        self.0
    }
}

impl Barrier {
    /// A barrier for `n` parties (0 behaves as 1, as std's does).
    pub const fn new(n: usize) -> Barrier {
        Barrier {
            n,
            state: Mutex::new((0, 0)),
            cvar: Condvar::new(),
        }
    }

    /// Waits at most `timeout` for all parties of this round: `None` if it
    /// did not complete by then, and this caller left the round (it needs
    /// another party to complete). Never `None` early, unless the coroutine
    /// is cancelled (see [`crate::cancel`]).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<BarrierWaitResult> {
        let mut g = self.state.lock();
        let generation = g.1;
        g.0 += 1;
        if g.0 >= self.n {
            g.0 = 0;
            g.1 = g.1.wrapping_add(1);
            drop(g);
            self.cvar.notify_all();
            return Some(BarrierWaitResult(true));
        }
        let (mut g, _) = self
            .cvar
            .wait_timeout_while(g, timeout, |s| s.1 == generation);
        if g.1 != generation {
            Some(BarrierWaitResult(false))
        } else {
            g.0 -= 1;
            None
        }
    }

    /// Waits until all parties of this round have called `wait`.
    pub fn wait(&self) -> BarrierWaitResult {
        let mut g = self.state.lock();
        let generation = g.1;
        g.0 += 1;
        if g.0 < self.n {
            let _g = self.cvar.wait_while(g, |s| s.1 == generation);
            BarrierWaitResult(false)
        } else {
            g.0 = 0;
            g.1 = g.1.wrapping_add(1);
            drop(g);
            self.cvar.notify_all();
            BarrierWaitResult(true)
        }
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier").field("n", &self.n).finish()
    }
}

/// Waits for a group of tasks to finish, as Go's `sync.WaitGroup`: `add`
/// before starting each, `done` when each ends, `wait` for the count to
/// reach zero.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use greenstack_runtime::sync::WaitGroup;
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let wg = Arc::new(WaitGroup::new());
///     for _ in 0..4 {
///         wg.add(1);
///         let wg = Arc::clone(&wg);
///         greenstack_runtime::spawn(move || wg.done());
///     }
///     wg.wait();
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default)]
pub struct WaitGroup {
    count: Mutex<usize>,
    cvar: Condvar,
}

impl WaitGroup {
    /// A group with a count of zero.
    pub const fn new() -> WaitGroup {
        WaitGroup {
            count: Mutex::new(0),
            cvar: Condvar::new(),
        }
    }

    /// Adds `n` to the count.
    pub fn add(&self, n: usize) {
        let mut c = self.count.lock();
        *c = c.checked_add(n).expect("WaitGroup count overflowed");
    }

    /// Subtracts one from the count, waking the waiters at zero.
    ///
    /// # Panics
    ///
    /// If the count is already zero.
    pub fn done(&self) {
        let mut c = self.count.lock();
        *c = c
            .checked_sub(1)
            .expect("WaitGroup::done called more often than add");
        if *c == 0 {
            drop(c);
            self.cvar.notify_all();
        }
    }

    /// The current count.
    pub fn count(&self) -> usize {
        *self.count.lock()
    }

    /// Waits until the count is zero.
    pub fn wait(&self) {
        let _g = self.cvar.wait_while(self.count.lock(), |c| *c > 0);
    }

    /// Waits at most `dur` for the count to reach zero; true if it did.
    pub fn wait_timeout(&self, dur: Duration) -> bool {
        let (_g, r) = self
            .cvar
            .wait_timeout_while(self.count.lock(), dur, |c| *c > 0);
        !r.timed_out()
    }
}

impl fmt::Debug for WaitGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGroup")
            .field("count", &self.count())
            .finish()
    }
}
