//! A multi-producer, multi-consumer channel where every receiver gets
//! every value, as tokio's `sync::broadcast`, for blocking code.
//!
//! The channel keeps the last `capacity` values. A receiver that falls
//! further behind loses the oldest ones: its next `recv` returns
//! [`RecvError::Lagged`] with how many it missed, and the one after that
//! the oldest value still kept. Values are cloned out to each receiver.
//!
//! # Examples
//!
//! ```
//! use greenstack_runtime::sync::broadcast;
//! # let rt = greenstack_runtime::Runtime::new()?;
//! rt.block_on(|| {
//!     let (tx, mut rx1) = broadcast::channel(16);
//!     let mut rx2 = tx.subscribe();
//!     tx.send("to everyone").unwrap();
//!     assert_eq!(rx1.recv().unwrap(), "to everyone");
//!     assert_eq!(rx2.recv().unwrap(), "to everyone");
//! });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Condvar, Mutex};
use crate::cancel::{End, Point};

/// Sending failed: no receiver is left. The value comes back (std's
/// channel error, as [`mpmc`](super::mpmc) uses).
pub use std::sync::mpsc::SendError;

/// Why a receive failed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum RecvError {
    /// Every sender is gone and this receiver has seen every value.
    Closed,
    /// This receiver fell behind by more than the capacity: this many
    /// values were lost to it. The next receive gets the oldest kept.
    Lagged(u64),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Closed => f.write_str("the broadcast channel is closed"),
            RecvError::Lagged(n) => write!(f, "the receiver lagged behind by {n} values"),
        }
    }
}

impl std::error::Error for RecvError {}

/// Why a [`Receiver::try_recv`] or [`Receiver::recv_timeout`] got nothing.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum TryRecvError {
    /// Nothing new now (or before the timeout).
    Empty,
    /// As [`RecvError::Closed`].
    Closed,
    /// As [`RecvError::Lagged`].
    Lagged(u64),
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no new value on the broadcast channel"),
            TryRecvError::Closed => f.write_str("the broadcast channel is closed"),
            TryRecvError::Lagged(n) => write!(f, "the receiver lagged behind by {n} values"),
        }
    }
}

impl std::error::Error for TryRecvError {}

struct State<T> {
    /// The kept values; the front one has sequence number `next - len`.
    buf: VecDeque<T>,
    /// The sequence number the next value gets.
    next: u64,
    senders: usize,
    receivers: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    sent: Condvar,
    capacity: usize,
}

/// Makes a broadcast channel keeping the last `capacity` values.
///
/// # Panics
///
/// If `capacity` is 0.
pub fn channel<T: Clone>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(
        capacity > 0,
        "a broadcast channel needs a capacity of at least 1"
    );
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: VecDeque::with_capacity(capacity.min(1024)),
            next: 0,
            senders: 1,
            receivers: 1,
        }),
        sent: Condvar::new(),
        capacity,
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared, next: 0 },
    )
}

/// A sending half; clone for more.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A receiving half: it gets every value sent after it was made (by
/// [`channel`] or [`Sender::subscribe`]); a clone continues from where its
/// original is.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The sequence number of the next value this receiver takes.
    next: u64,
}

impl<T: Clone> Sender<T> {
    /// Sends to every receiver; returns how many there are, or the value
    /// back if there is none. Never waits: a full channel drops its oldest
    /// value.
    pub fn send(&self, value: T) -> Result<usize, SendError<T>> {
        let mut st = self.shared.state.lock();
        if st.receivers == 0 {
            return Err(SendError(value));
        }
        if st.buf.len() == self.shared.capacity {
            st.buf.pop_front();
        }
        st.buf.push_back(value);
        st.next += 1;
        let n = st.receivers;
        drop(st);
        self.shared.sent.notify_all();
        Ok(n)
    }

    /// A new receiver, which gets the values sent from now on.
    pub fn subscribe(&self) -> Receiver<T> {
        let mut st = self.shared.state.lock();
        st.receivers += 1;
        Receiver {
            shared: Arc::clone(&self.shared),
            next: st.next,
        }
    }

    /// How many receivers there are.
    pub fn receiver_count(&self) -> usize {
        self.shared.state.lock().receivers
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.state.lock().senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.senders -= 1;
        let last = st.senders == 0;
        drop(st);
        if last {
            self.shared.sent.notify_all();
        }
    }
}

impl<T: Clone> Receiver<T> {
    /// Waits for the next value (parking a coroutine, blocking a thread).
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] if values were lost to this receiver,
    /// [`RecvError::Closed`] once every sender is gone and it has seen
    /// every value.
    pub fn recv(&mut self) -> Result<T, RecvError> {
        match self.take(true, None) {
            Ok(v) => Ok(v),
            Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(_) => Err(RecvError::Closed),
        }
    }

    /// The next value if there is one now.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.take(false, None)
    }

    /// Waits at most `timeout` for the next value (`Empty` after it,
    /// never early, unless the coroutine is cancelled: see [`crate::cancel`]).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, TryRecvError> {
        self.take(true, Instant::now().checked_add(timeout))
    }

    /// A cancellation point: a cancelled (or timed-out) receiver finds
    /// the channel closed once it has no value to take.
    fn take(&mut self, block: bool, deadline: Option<Instant>) -> Result<T, TryRecvError> {
        let point = if block {
            Point::new(deadline)
        } else {
            Point::plain(None)
        };
        let mut st = self.shared.state.lock();
        loop {
            let oldest = st.next - st.buf.len() as u64;
            if self.next < oldest {
                let lost = oldest - self.next;
                self.next = oldest;
                return Err(TryRecvError::Lagged(lost));
            }
            if self.next < st.next {
                let v = st.buf[(self.next - oldest) as usize].clone();
                self.next += 1;
                return Ok(v);
            }
            if st.senders == 0 {
                return Err(TryRecvError::Closed);
            }
            if !block {
                return Err(TryRecvError::Empty);
            }
            match point.ended() {
                Some(End::Deadline) => return Err(TryRecvError::Empty),
                Some(End::Cancelled | End::Elapsed) => return Err(TryRecvError::Closed),
                None => st = self.shared.sent.wait_point(st, point).0,
            }
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.state.lock().receivers += 1;
        Receiver {
            shared: Arc::clone(&self.shared),
            next: self.next,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.state.lock().receivers -= 1;
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}
