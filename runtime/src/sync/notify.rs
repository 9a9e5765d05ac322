//! [`Notify`]: a wake-up without data, as tokio's `sync::Notify`, for
//! blocking code.

use std::time::{Duration, Instant};

use super::{Condvar, Mutex};
use crate::cancel::Point;

/// Wakes waiting coroutines (or threads) without passing data, as tokio's
/// `Notify`: [`notify_one`](Self::notify_one) wakes one waiter, or, if
/// none waits, leaves a permit that the next [`notified`](Self::notified)
/// takes at once (at most one is stored);
/// [`notify_waiters`](Self::notify_waiters) wakes every current waiter and
/// leaves no permit.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use greenstack_runtime::sync::Notify;
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let ready = Arc::new(Notify::new());
///     let r = Arc::clone(&ready);
///     let waiter = greenstack_runtime::spawn(move || r.notified());
///     ready.notify_one(); // wakes it, or leaves it a permit
///     waiter.join().unwrap();
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Notify {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// A `notify_one` that found no waiter.
    permit: bool,
    /// Waiters in `notified` now.
    waiting: usize,
    /// `notify_one` wake-ups not yet taken by a waiter (at most `waiting`).
    wakeups: usize,
    /// Bumped by `notify_waiters`: every waiter that saw the old value
    /// returns.
    generation: u64,
}

impl Notify {
    /// A `Notify` with no permit.
    pub fn new() -> Notify {
        Notify::default()
    }

    /// Wakes one waiter; if none waits, stores a permit for the next.
    pub fn notify_one(&self) {
        let mut st = self.state.lock();
        if st.waiting > st.wakeups {
            st.wakeups += 1;
            self.cv.notify_one();
        } else {
            st.permit = true;
        }
    }

    /// Wakes every waiter waiting now; stores no permit.
    pub fn notify_waiters(&self) {
        let mut st = self.state.lock();
        st.generation = st.generation.wrapping_add(1);
        st.wakeups = 0;
        self.cv.notify_all();
    }

    /// Waits for a notification (returns at once if a permit is stored, and
    /// takes it).
    pub fn notified(&self) {
        self.wait(Point::plain(None));
    }

    /// Waits at most `timeout` for a notification; true if one came.
    pub fn notified_timeout(&self, timeout: Duration) -> bool {
        self.wait(Point::new(Some(
            Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(far_future),
        )))
    }

    /// Waits until notified or `point` ends the wait (timed out, or the
    /// coroutine cancelled): false then.
    fn wait(&self, point: Point) -> bool {
        let mut st = self.state.lock();
        if std::mem::take(&mut st.permit) {
            return true;
        }
        let generation = st.generation;
        st.waiting += 1;
        // Leaves the waiter count right if the wait unwinds (a runtime's
        // shutdown cancels it), and passes on a wake-up meant for it.
        let mut guard = Leave {
            notify: self,
            st: Some(st),
        };
        loop {
            let st = guard.st.take().expect("the lock is held here");
            let st = self.cv.wait_point(st, point).0;
            let st = guard.st.insert(st);
            if st.generation != generation {
                return true;
            }
            if st.wakeups > 0 {
                st.wakeups -= 1;
                return true;
            }
            if point.ended().is_some() {
                return false;
            }
        }
    }
}

/// Leaves `notified`: one waiter fewer; a wake-up no remaining waiter can
/// take becomes the permit.
struct Leave<'a> {
    notify: &'a Notify,
    st: Option<super::MutexGuard<'a, State>>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut st = match self.st.take() {
            Some(st) => st,
            None => self.notify.state.lock(),
        };
        st.waiting -= 1;
        if st.wakeups > st.waiting {
            st.wakeups -= 1;
            st.permit = true;
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}
