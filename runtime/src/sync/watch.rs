//! A single-value channel that keeps only the latest value, as tokio's
//! `sync::watch`, for blocking code: receivers wait for a change (parking
//! a coroutine, blocking a thread) and read the current value.
//!
//! # Examples
//!
//! ```
//! use greenstack_runtime::sync::watch;
//! # let rt = greenstack_runtime::Runtime::new()?;
//! rt.block_on(|| {
//!     let (tx, mut rx) = watch::channel("starting");
//!     let h = greenstack_runtime::spawn(move || {
//!         rx.changed().unwrap();
//!         *rx.borrow_and_update()
//!     });
//!     tx.send("ready").unwrap();
//!     assert_eq!(h.join().unwrap(), "ready");
//! });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Condvar, Mutex, RwLock, RwLockReadGuard};
use crate::cancel::{End, Point};

/// Sending failed: no receiver is left. The value comes back (std's
/// channel error, as [`mpmc`](super::mpmc) uses).
pub use std::sync::mpsc::SendError;

/// The sender is gone: no change will come.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct RecvError;

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the watch channel's sender is gone")
    }
}

impl std::error::Error for RecvError {}

struct Shared<T> {
    value: RwLock<T>,
    /// The version (bumped by each send) and whether the sender is gone.
    state: Mutex<(u64, bool)>,
    changed: Condvar,
    receivers: AtomicUsize,
}

/// A read of the channel's value; holding it delays sends (which park).
pub type Ref<'a, T> = RwLockReadGuard<'a, T>;

/// Makes a watch channel holding `init`.
pub fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        value: RwLock::new(init),
        state: Mutex::new((0, false)),
        changed: Condvar::new(),
        receivers: AtomicUsize::new(1),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared, seen: 0 },
    )
}

/// The sending half; dropping it ends the receivers' waits with
/// [`RecvError`].
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A receiving half; clone for more (a clone has seen what its original
/// has).
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

impl<T> Sender<T> {
    /// Replaces the value and wakes the receivers; fails (giving the value
    /// back) if every receiver is gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        if self.shared.receivers.load(Ordering::Acquire) == 0 {
            return Err(SendError(value));
        }
        self.send_replace(value);
        Ok(())
    }

    /// Replaces the value whether or not anyone receives, wakes the
    /// receivers, and returns the old value.
    pub fn send_replace(&self, value: T) -> T {
        let old = std::mem::replace(&mut *self.shared.value.write(), value);
        self.bump();
        old
    }

    /// Changes the value in place and wakes the receivers.
    pub fn send_modify(&self, modify: impl FnOnce(&mut T)) {
        modify(&mut self.shared.value.write());
        self.bump();
    }

    /// The current value.
    pub fn borrow(&self) -> Ref<'_, T> {
        self.shared.value.read()
    }

    /// A new receiver, which has seen the current value.
    pub fn subscribe(&self) -> Receiver<T> {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        let seen = self.shared.state.lock().0;
        Receiver {
            shared: Arc::clone(&self.shared),
            seen,
        }
    }

    /// How many receivers there are.
    pub fn receiver_count(&self) -> usize {
        self.shared.receivers.load(Ordering::Acquire)
    }

    fn bump(&self) {
        let mut st = self.shared.state.lock();
        st.0 = st.0.wrapping_add(1);
        drop(st);
        self.shared.changed.notify_all();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.state.lock().1 = true;
        self.shared.changed.notify_all();
    }
}

impl<T> Receiver<T> {
    /// The current value, without marking it seen.
    pub fn borrow(&self) -> Ref<'_, T> {
        self.shared.value.read()
    }

    /// The current value, marked seen: [`changed`](Self::changed) waits for
    /// the next send.
    pub fn borrow_and_update(&mut self) -> Ref<'_, T> {
        // The version first: a send between the two reads is then seen
        // again by `changed` (a spurious change), never missed.
        self.seen = self.shared.state.lock().0;
        self.shared.value.read()
    }

    /// Whether a value was sent since this receiver last marked one seen;
    /// `Err` if the sender is gone.
    pub fn has_changed(&self) -> Result<bool, RecvError> {
        let st = self.shared.state.lock();
        if st.1 {
            return Err(RecvError);
        }
        Ok(st.0 != self.seen)
    }

    /// Waits for a value this receiver has not seen and marks it seen;
    /// `Err` once the sender is gone (a value sent before that still
    /// counts).
    pub fn changed(&mut self) -> Result<(), RecvError> {
        self.wait(None).map(|_| ())
    }

    /// [`changed`](Self::changed), waiting at most `timeout`: `Ok(false)`
    /// if nothing changed by then.
    pub fn changed_timeout(&mut self, timeout: Duration) -> Result<bool, RecvError> {
        self.wait(Instant::now().checked_add(timeout))
    }

    /// A cancellation point: a cancelled (or timed-out) receiver finds the
    /// sender gone.
    fn wait(&mut self, deadline: Option<Instant>) -> Result<bool, RecvError> {
        let point = Point::new(deadline);
        let mut st = self.shared.state.lock();
        loop {
            if st.0 != self.seen {
                self.seen = st.0;
                return Ok(true);
            }
            if st.1 {
                return Err(RecvError);
            }
            match point.ended() {
                Some(End::Deadline) => return Ok(false),
                Some(End::Cancelled | End::Elapsed) => return Err(RecvError),
                None => st = self.shared.changed.wait_point(st, point).0,
            }
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        Receiver {
            shared: Arc::clone(&self.shared),
            seen: self.seen,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<T: fmt::Debug> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T: fmt::Debug> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}
