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

// # Protocol
//
// No lock: one atomic state word, a value cell and one waker slot, in one
// allocation (48 bytes for a `u64` value, against ~250 for the general
// channel core plus a waiter node). The state bits:
//
// - `COMPLETE`: the sender sent or was dropped. Set once, by the sender
//   only, as its last step (Release, with `VALUE` if it sent).
// - `VALUE`: the cell holds the value. Set with `COMPLETE`; cleared by
//   whoever takes the value (a receiver, or the sender taking it back from
//   a gone receiver), with an RMW, so exactly one side takes it.
// - `RX_GONE`: the receiver was dropped.
// - `WAKER_SET`: the slot holds the waker of a waiting receiver, which the
//   sender takes (and wakes) if it sees this bit when it sets `COMPLETE`.
// - `WAKER_BUSY`: a receiver owns the slot for a moment, to fill or empty
//   it. A claim, not a lock: nobody ever waits for it to clear.
//
// Who may touch the slot:
//
// 1. A receiver fills it only after a CAS from a state with none of
//    `COMPLETE | WAKER_SET | WAKER_BUSY` to one with `WAKER_BUSY`, then
//    turns `WAKER_BUSY` into `WAKER_SET` (Release, publishing the waker).
//    If `COMPLETE` was set in between, the sender saw `WAKER_SET` clear and
//    will not look, so the receiver empties the slot itself.
// 2. The sender's `fetch_or(COMPLETE)` returns the bits before it: if
//    `WAKER_SET` was among them the slot is the sender's (no receiver CAS
//    succeeds once `COMPLETE` is set), and it takes and wakes the waker.
// 3. A receiver that stops waiting without `COMPLETE` (a timeout) empties
//    the slot after a CAS `WAKER_SET -> WAKER_BUSY` that requires
//    `COMPLETE` clear; if that fails, the sender owns the slot (step 2) and
//    the value is there to take.
//
// So every receiver leaves the slot empty (or the sender's), and no stale
// waker survives a wait, not even one cut short by an unwind (step 3 then
// runs from a drop guard). `Receiver` is `Sync` (as it was), so two threads
// may wait through `&Receiver` at once; the one that does not get the slot
// polls every millisecond instead. That is a pathological use, and still
// correct: it only adds latency.

use std::fmt;
use std::mem::MaybeUninit;
use std::task::Waker;
use std::time::{Duration, Instant};

use super::chan::{recv_timeout_error, try_recv_error, RecvFail};
use super::wait::{deadline_after, Defer};
use crate::cancel::{End, Point};
use crate::loom::cell::UnsafeCell;
use crate::loom::sync::atomic::{AtomicUsize, Ordering};
use crate::loom::sync::Arc;

pub use std::sync::mpsc::{RecvError, RecvTimeoutError, TryRecvError};

/// The sender sent or was dropped (see the protocol above).
const COMPLETE: usize = 1;
/// The value cell holds the value.
const VALUE: usize = 2;
/// The receiver was dropped.
const RX_GONE: usize = 4;
/// The waker slot holds a waiting receiver's waker.
const WAKER_SET: usize = 8;
/// A receiver is filling or emptying the waker slot.
const WAKER_BUSY: usize = 16;

/// How often a receiver that could not register its waker re-checks.
const POLL: Duration = Duration::from_millis(1);

/// What both ends share.
struct Inner<T> {
    /// The bits above.
    state: AtomicUsize,
    /// Written by the sender before `COMPLETE`; read by whoever clears
    /// `VALUE`.
    value: UnsafeCell<MaybeUninit<T>>,
    /// A waiting receiver's waker (ownership: protocol steps 1–3).
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the cells are shared only under the protocol above: the value
// cell is written by the one sender before `COMPLETE` and read by the one
// side that clears `VALUE`; the waker slot belongs to one side at a time,
// handed over with Release/Acquire on `state`. Values and wakers move
// between threads, hence `T: Send` (as for the std-mutex core before).
unsafe impl<T: Send> Send for Inner<T> {}
// SAFETY: as above; every access through `&Inner` follows the protocol,
// including concurrent receivers through `&Receiver`.
unsafe impl<T: Send> Sync for Inner<T> {}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self`, so every other access happened before.
        if self.state.load(Ordering::Relaxed) & VALUE != 0 {
            // SAFETY: `VALUE` set means the cell holds an untaken value, and
            // `&mut self` means nobody else can reach it.
            self.value.with_mut(|v| unsafe { (*v).assume_init_drop() });
        }
    }
}

/// A new one-value channel.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: AtomicUsize::new(0),
        value: UnsafeCell::new(MaybeUninit::uninit()),
        waker: UnsafeCell::new(None),
    });
    (
        Sender {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

/// Sends the one value.
pub struct Sender<T> {
    inner: Arc<Inner<T>>,
}

/// Receives the one value.
pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Sender<T> {
    /// Sends the value; gives it back if the receiver is gone.
    pub fn send(self, t: T) -> Result<(), T> {
        let inner = &*self.inner;
        // SAFETY: before `COMPLETE` only the sender touches the cell, and
        // there is one sender (`send` consumes it; `COMPLETE` is not set).
        inner.value.with_mut(|v| unsafe { (*v).write(t) });
        // Release: publishes the value (and the end of our slot use) to the
        // receiver's Acquire loads. Acquire: pairs with the receiver's
        // Release when it set `WAKER_SET` (the waker is written).
        let prev = inner.state.fetch_or(COMPLETE | VALUE, Ordering::AcqRel);
        if prev & RX_GONE != 0 {
            // The receiver was gone before the value arrived, so nobody
            // will take it: take it back.
            inner.state.fetch_and(!VALUE, Ordering::Relaxed);
            // SAFETY: we wrote the cell above and just cleared `VALUE`;
            // the receiver is gone, so nobody else can take it.
            return Err(inner.value.with_mut(|v| unsafe { (*v).assume_init_read() }));
        }
        wake_if_waiting(inner, prev);
        Ok(())
        // Drop sees `COMPLETE` and does nothing.
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) & RX_GONE != 0
    }
}

/// Protocol step 2: wakes the receiver whose waker `prev` (the state
/// before the sender set `COMPLETE`) says is in the slot.
fn wake_if_waiting<T>(inner: &Inner<T>, prev: usize) {
    if prev & WAKER_SET != 0 {
        // SAFETY: `WAKER_SET` was set before `COMPLETE`, so the slot holds a
        // waker and is now ours (step 2): no receiver CAS succeeds once
        // `COMPLETE` is set.
        let waker = inner.waker.with_mut(|w| unsafe { (*w).take() });
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for the value; fails if the sender was dropped without sending.
    pub fn recv(self) -> Result<T, RecvError> {
        self.recv_inner(true, None).map_err(|_| RecvError)
    }

    /// The value if it has been sent.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.recv_inner(false, None).map_err(try_recv_error)
    }

    /// Waits at most `timeout` for the value.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_inner(true, deadline_after(timeout))
            .map_err(recv_timeout_error)
    }

    fn recv_inner(&self, block: bool, deadline: Option<Instant>) -> Result<T, RecvFail> {
        if let Some(r) = self.take() {
            return r;
        }
        if !block {
            return Err(RecvFail::Empty);
        }
        let registered = match self.register() {
            Register::Complete => return self.take().expect("complete"),
            Register::Done => true,
            Register::Busy => false,
        };
        // If the wait is unwound (the runtime's shutdown unwinds parked
        // coroutines from their park), take our waker back out, so the next
        // waiter can register; a no-op once `COMPLETE`.
        let leave = registered.then(|| {
            Defer::new(|| {
                self.unregister();
            })
        });
        // A cancellation point: a cancelled (or timed-out) receiver finds
        // the sender gone.
        let point = Point::new(deadline);
        let deadline = point.deadline();
        loop {
            if let Some(r) = self.take() {
                // `COMPLETE`: the sender took our waker (step 2), if any.
                return r;
            }
            let now = Instant::now();
            if let Some(end) = point.ended() {
                if let Some(leave) = leave {
                    leave.disarm();
                    if !self.unregister() {
                        // Completed meanwhile: the value (if any) is ours.
                        return self.take().expect("complete");
                    }
                }
                return Err(match end {
                    End::Deadline => RecvFail::Timeout,
                    End::Cancelled | End::Elapsed => RecvFail::Disconnected,
                });
            }
            if registered {
                crate::time::park_until(deadline);
            } else {
                let poll = now.checked_add(POLL);
                crate::time::park_until(match (deadline, poll) {
                    (Some(d), Some(p)) => Some(d.min(p)),
                    (d, p) => d.or(p),
                });
            }
        }
    }

    /// `None` until `COMPLETE`; then the value, once, or `Disconnected`.
    fn take(&self) -> Option<Result<T, RecvFail>> {
        // Acquire: pairs with the sender's Release `fetch_or(COMPLETE)`.
        let s = self.inner.state.load(Ordering::Acquire);
        if s & COMPLETE == 0 {
            return None;
        }
        if s & VALUE == 0 {
            return Some(Err(RecvFail::Disconnected));
        }
        // Acquire: as above, for the value we now claim.
        let prev = self.inner.state.fetch_and(!VALUE, Ordering::Acquire);
        if prev & VALUE == 0 {
            // Another receiver (through `&Receiver`) got it first.
            return Some(Err(RecvFail::Disconnected));
        }
        // SAFETY: we cleared `VALUE`, so the written value is ours alone.
        Some(Ok(self
            .inner
            .value
            .with_mut(|v| unsafe { (*v).assume_init_read() })))
    }

    /// Whether the sender has sent or gone (a receive returns at once).
    pub(crate) fn is_complete(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) & COMPLETE != 0
    }

    /// For `select`: puts `waker` in the slot, to be woken at completion.
    /// False if it is not there (complete already, or the slot is busy).
    pub(crate) fn watch(&self, waker: &Waker) -> bool {
        matches!(self.register_waker(waker.clone()), Register::Done)
    }

    /// Undoes a [`watch`](Self::watch) that returned true.
    pub(crate) fn unwatch(&self) {
        self.unregister();
    }

    /// Protocol step 1: puts the caller's waker in the slot.
    fn register(&self) -> Register {
        self.register_waker(crate::scheduler::current_waker())
    }

    /// [`register`](Self::register) with `waker`.
    fn register_waker(&self, waker: Waker) -> Register {
        let state = &self.inner.state;
        let mut s = state.load(Ordering::Relaxed);
        loop {
            if s & COMPLETE != 0 {
                return Register::Complete;
            }
            if s & (WAKER_SET | WAKER_BUSY) != 0 {
                return Register::Busy;
            }
            // Acquire: the slot's last owner is done with it (it released
            // it with an RMW on `state`).
            match state.compare_exchange_weak(
                s,
                s | WAKER_BUSY,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => s = actual,
            }
        }
        // SAFETY: `WAKER_BUSY` is ours, and with `WAKER_SET` clear the
        // sender will not look at the slot (step 1).
        self.inner.waker.with_mut(|w| unsafe { *w = Some(waker) });
        // Release: publishes the waker to the sender's Acquire `fetch_or`.
        let prev = state.fetch_xor(WAKER_BUSY | WAKER_SET, Ordering::AcqRel);
        if prev & COMPLETE != 0 {
            // The sender saw `WAKER_SET` clear and will not wake us; the
            // slot is still ours, so empty it.
            // SAFETY: as just said; no receiver CAS succeeds after
            // `COMPLETE`.
            drop(self.inner.waker.with_mut(|w| unsafe { (*w).take() }));
            return Register::Complete;
        }
        Register::Done
    }

    /// Protocol step 3: empties the slot of our waker. False if `COMPLETE`
    /// came first (the sender owns the slot then).
    fn unregister(&self) -> bool {
        let state = &self.inner.state;
        let mut s = state.load(Ordering::Relaxed);
        loop {
            if s & COMPLETE != 0 {
                return false;
            }
            debug_assert!(s & WAKER_SET != 0, "our waker is registered");
            let new = (s & !WAKER_SET) | WAKER_BUSY;
            match state.compare_exchange_weak(s, new, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => s = actual,
            }
        }
        // SAFETY: the CAS took `WAKER_SET` away before `COMPLETE`, so the
        // sender will not look (step 2), and `WAKER_BUSY` keeps other
        // receivers out (step 1).
        drop(self.inner.waker.with_mut(|w| unsafe { (*w).take() }));
        // Release: the slot is free again, for the next owner's Acquire.
        state.fetch_and(!WAKER_BUSY, Ordering::Release);
        true
    }
}

/// How [`Receiver::register`] went.
enum Register {
    /// The waker is in the slot.
    Done,
    /// The sender completed; nothing is registered.
    Complete,
    /// Another receiver holds the slot; poll.
    Busy,
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let inner = &*self.inner;
        // Only the sender sets `COMPLETE`, so its own earlier `send` shows.
        if inner.state.load(Ordering::Relaxed) & COMPLETE != 0 {
            return;
        }
        // AcqRel: as in `send` (Release publishes nothing but the end).
        let prev = inner.state.fetch_or(COMPLETE, Ordering::AcqRel);
        wake_if_waiting(inner, prev);
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // An untaken value stays in the cell until the last end goes
        // (`Inner::drop`); a sender that sees `RX_GONE` first takes its
        // value back instead. Release: pairs with the sender's Acquire.
        self.inner.state.fetch_or(RX_GONE, Ordering::Release);
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
