//! A multi-producer, multi-consumer channel: both ends clone, and each
//! value goes to exactly one receiver (the longest waiting, if any wait).
//!
//! # Examples
//!
//! ```
//! use greenstack_runtime::sync::mpmc;
//! let (tx, rx) = mpmc::channel();
//! let rx2 = rx.clone();
//! tx.send(1).unwrap();
//! tx.send(2).unwrap();
//! assert_eq!(rx.recv().unwrap() + rx2.recv().unwrap(), 3);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::chan::{recv_timeout_error, try_recv_error, try_send_error, unsent, Chan, SendFail};
use super::wait::deadline_after;

pub use std::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

/// An unbounded channel.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let c = Chan::new(None);
    (
        Sender {
            chan: Arc::clone(&c),
        },
        Receiver { chan: c },
    )
}

/// A bounded channel (0: rendezvous).
pub fn bounded<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let c = Chan::new(Some(bound));
    (
        Sender {
            chan: Arc::clone(&c),
        },
        Receiver { chan: c },
    )
}

/// The sending end; clone for more producers.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

/// The receiving end; clone for more consumers. Dropping the last one
/// drops the values still queued (on the dropping thread) and fails every
/// later send, as std's `mpsc` does.
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// The channel, for `select`.
    pub(crate) fn chan(&self) -> &super::chan::Chan<T> {
        &self.chan
    }

    /// Sends, waiting for room in a bounded channel; fails only when every
    /// receiver is gone.
    pub fn send(&self, t: T) -> Result<(), SendError<T>> {
        self.chan
            .send(t, true, None)
            .map_err(|e| SendError(unsent(e)))
    }

    /// Sends if there is room now.
    pub fn try_send(&self, t: T) -> Result<(), TrySendError<T>> {
        self.chan.send(t, false, None).map_err(try_send_error)
    }

    /// Sends, waiting at most `timeout` for room in a bounded channel (for
    /// a rendezvous channel, for a receiver to take it). The value comes
    /// back in the error. Never times out early (a cancelled coroutine finds
    /// the channel disconnected: see [`crate::cancel`]).
    pub fn send_timeout(&self, t: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.chan
            .send(t, true, deadline_after(timeout))
            .map_err(|e| match e {
                SendFail::Disconnected(v) => SendTimeoutError::Disconnected(v),
                SendFail::Full(v) | SendFail::Timeout(v) => SendTimeoutError::Timeout(v),
            })
    }
}

/// Why [`Sender::send_timeout`] failed, with the value (crossbeam-channel's
/// type of the same name).
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum SendTimeoutError<T> {
    /// The channel stayed full until the timeout.
    Timeout(T),
    /// Every receiver is gone.
    Disconnected(T),
}

impl<T> SendTimeoutError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(v) | SendTimeoutError::Disconnected(v) => v,
        }
    }

    /// Whether the send timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendTimeoutError::Timeout(_) => "Timeout(..)",
            SendTimeoutError::Disconnected(_) => "Disconnected(..)",
        })
    }
}

impl<T> fmt::Display for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendTimeoutError::Timeout(_) => "timed out waiting on send operation",
            SendTimeoutError::Disconnected(_) => "sending on a disconnected channel",
        })
    }
}

impl<T> std::error::Error for SendTimeoutError<T> {}

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
        self.chan
            .recv(true, deadline_after(timeout))
            .map_err(recv_timeout_error)
    }

    /// Iterates until every sender is gone.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
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

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.chan.add_receiver();
        Receiver {
            chan: Arc::clone(&self.chan),
        }
    }
}

impl<T> Drop for Sender<T> {
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
        f.debug_struct("mpmc::Sender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("mpmc::Receiver").finish_non_exhaustive()
    }
}
