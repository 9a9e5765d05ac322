//! Multi-producer, single-consumer channels with std's API and semantics,
//! parking coroutines instead of threads (and blocking plain threads).
//!
//! # Examples
//!
//! ```
//! use greenstack_runtime::sync::mpsc;
//! # let rt = greenstack_runtime::Runtime::new()?;
//! rt.block_on(|| {
//!     let (tx, rx) = mpsc::channel();
//!     for i in 0..3 {
//!         let tx = tx.clone();
//!         greenstack_runtime::spawn(move || tx.send(i).unwrap());
//!     }
//!     drop(tx);
//!     let mut got: Vec<i32> = rx.iter().collect();
//!     got.sort();
//!     assert_eq!(got, [0, 1, 2]);
//! });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::chan::{recv_timeout_error, try_recv_error, try_send_error, unsent, Chan};
use super::wait::deadline_after;

pub use std::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

/// An unbounded channel: `send` never waits.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let c = Chan::new(None);
    (
        Sender {
            chan: Arc::clone(&c),
        },
        Receiver { chan: c },
    )
}

/// A bounded channel: `send` waits while `bound` values are queued. With
/// `bound == 0` every send waits until a receiver takes the value.
pub fn sync_channel<T>(bound: usize) -> (SyncSender<T>, Receiver<T>) {
    let c = Chan::new(Some(bound));
    (
        SyncSender {
            chan: Arc::clone(&c),
        },
        Receiver { chan: c },
    )
}

/// The sending end of [`channel`]. Clone it for more producers.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

/// The sending end of [`sync_channel`]. Clone it for more producers.
pub struct SyncSender<T> {
    chan: Arc<Chan<T>>,
}

/// The receiving end of a channel. Dropping it drops the values still
/// queued (on the dropping thread) and fails every later send, as std's.
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// The channel, for `select`.
    pub(crate) fn chan(&self) -> &super::chan::Chan<T> {
        &self.chan
    }

    /// Sends a value; fails only if the receiver is gone.
    pub fn send(&self, t: T) -> Result<(), SendError<T>> {
        self.chan
            .send(t, true, None)
            .map_err(|e| SendError(unsent(e)))
    }
}

impl<T> SyncSender<T> {
    /// The channel, for `select`.
    pub(crate) fn chan(&self) -> &super::chan::Chan<T> {
        &self.chan
    }

    /// Sends a value, waiting for room; fails only if the receiver is gone.
    pub fn send(&self, t: T) -> Result<(), SendError<T>> {
        self.chan
            .send(t, true, None)
            .map_err(|e| SendError(unsent(e)))
    }

    /// Sends if there is room now.
    pub fn try_send(&self, t: T) -> Result<(), TrySendError<T>> {
        self.chan.send(t, false, None).map_err(try_send_error)
    }

    /// Sends, waiting at most `timeout` for room (or, with bound 0, for a
    /// receiver). On timeout the value comes back as `TrySendError::Full`.
    pub fn send_timeout(&self, t: T, timeout: Duration) -> Result<(), TrySendError<T>> {
        self.chan
            .send(t, true, deadline_after(timeout))
            .map_err(try_send_error)
    }
}

impl<T> Receiver<T> {
    /// The channel, for `select`.
    pub(crate) fn chan(&self) -> &super::chan::Chan<T> {
        &self.chan
    }

    /// Waits for a value; fails once every sender is gone and the queue is
    /// empty.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.chan.recv(true, None).map_err(|_| RecvError)
    }

    /// A value if one is queued now.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.chan.recv(false, None).map_err(try_recv_error)
    }

    /// Waits at most `timeout` for a value.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_deadline_opt(deadline_after(timeout))
    }

    /// Waits until `deadline` for a value.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        self.recv_deadline_opt(Some(deadline))
    }

    fn recv_deadline_opt(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        self.chan.recv(true, deadline).map_err(recv_timeout_error)
    }

    /// Iterates over values until every sender is gone.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// Iterates over the values queued now, without waiting.
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }
}

/// Blocking iterator over a [`Receiver`]; see [`Receiver::iter`].
#[derive(Debug)]
pub struct Iter<'a, T> {
    rx: &'a Receiver<T>,
}

/// Non-blocking iterator; see [`Receiver::try_iter`].
#[derive(Debug)]
pub struct TryIter<'a, T> {
    rx: &'a Receiver<T>,
}

/// Owning blocking iterator; see `Receiver::into_iter`.
#[derive(Debug)]
pub struct IntoIter<T> {
    rx: Receiver<T>,
}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<'a, T> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;
    fn into_iter(self) -> IntoIter<T> {
        IntoIter { rx: self }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.add_sender();
        Sender {
            chan: Arc::clone(&self.chan),
        }
    }
}

impl<T> Clone for SyncSender<T> {
    fn clone(&self) -> Self {
        self.chan.add_sender();
        SyncSender {
            chan: Arc::clone(&self.chan),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.chan.drop_sender();
    }
}

impl<T> Drop for SyncSender<T> {
    fn drop(&mut self) {
        self.chan.drop_sender();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.chan.drop_receiver();
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for SyncSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncSender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}
