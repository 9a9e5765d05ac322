//! A channel for exactly one value.
//!
//! # Examples
//!
//! ```
//! use greenstack_runtime::sync::oneshot;
//! # let rt = greenstack_runtime::Runtime::new()?;
//! rt.block_on(|| {
//!     let (tx, rx) = oneshot::channel();
//!     greenstack_runtime::spawn(move || tx.send("done").unwrap());
//!     assert_eq!(rx.recv().unwrap(), "done");
//! });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::chan::{recv_timeout_error, try_recv_error, unsent, Chan};
use super::wait::deadline_after;

pub use std::sync::mpsc::{RecvError, RecvTimeoutError, TryRecvError};

/// A new one-value channel.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let c = Chan::new(Some(1));
    (
        Sender {
            chan: Arc::clone(&c),
        },
        Receiver { chan: c },
    )
}

/// Sends the one value.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

/// Receives the one value.
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends the value; gives it back if the receiver is gone.
    pub fn send(self, t: T) -> Result<(), T> {
        self.chan.send(t, false, None).map_err(unsent)
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.chan.receivers_gone()
    }
}

impl<T> Receiver<T> {
    /// Waits for the value; fails if the sender was dropped without sending.
    pub fn recv(self) -> Result<T, RecvError> {
        self.chan.recv(true, None).map_err(|_| RecvError)
    }

    /// The value if it has been sent.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.chan.recv(false, None).map_err(try_recv_error)
    }

    /// Waits at most `timeout` for the value.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.chan
            .recv(true, deadline_after(timeout))
            .map_err(recv_timeout_error)
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
        f.debug_struct("oneshot::Sender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("oneshot::Receiver").finish_non_exhaustive()
    }
}
