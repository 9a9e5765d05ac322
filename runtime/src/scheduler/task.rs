//! What a coroutine is to the rest of the runtime: its shared header, the
//! never-started task that idle workers may steal, the public `Coroutine`
//! handle and the `JoinHandle`.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use super::join::{JoinState, Outcome};
use super::park::ParkState;
use super::Shared;
use crate::stack::Slot;

/// Shared, thread-safe facts about one coroutine. Holds nothing `!Send`:
/// the coroutine itself lives in its worker's slab and never leaves it.
pub(crate) struct Header {
    /// Unique within the process, from 1.
    pub(crate) id: NonZeroU64,
    /// Set at spawn.
    pub(crate) name: Option<Arc<str>>,
    /// The park token.
    pub(crate) park: ParkState,
    /// The worker that started it (`usize::MAX` before it starts). Written
    /// once, on that worker, before the coroutine first runs.
    pub(crate) home: AtomicUsize,
    /// Its key in the home worker's slab, written with `home`.
    pub(crate) key: AtomicUsize,
    /// Set at shutdown before the coroutine is force-unwound, so its body
    /// lets the unwind pass instead of reporting it as a panic.
    pub(crate) cancelling: AtomicBool,
    /// The runtime it belongs to, for remote wake-ups.
    pub(crate) shared: Arc<Shared>,
    /// For a `block_on` root: the thread it runs on.
    pub(crate) root_thread: Option<std::thread::Thread>,
}

impl Header {
    /// Makes the coroutine runnable if it is parked, else leaves a token.
    pub(crate) fn unpark(&self) {
        if self.park.unpark() {
            self.shared.counters.wakeups.add(1);
            super::worker::schedule(self);
        }
    }
}

impl Wake for Header {
    fn wake(self: Arc<Self>) {
        self.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.unpark();
    }
}

/// A coroutine that has not run yet: its `Send` closure and its stack slot.
/// This is all an idle worker ever steals.
pub(crate) struct NewTask {
    pub(crate) header: Arc<Header>,
    pub(crate) slot: Slot,
    /// Runs the body; returns the completion to announce once the stack
    /// is released.
    pub(crate) run: Box<dyn FnOnce() -> super::join::Pending + Send + 'static>,
}

/// A coroutine's unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoroutineId(pub(crate) NonZeroU64);

impl CoroutineId {
    /// The id as a number (unique in the process, never 0).
    pub fn as_u64(self) -> NonZeroU64 {
        self.0
    }
}

impl fmt::Display for CoroutineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A handle to a coroutine, as [`std::thread::Thread`] is to a thread:
/// its id, its name, and a way to unpark it. Cheap to clone; `Send` and
/// `Sync`.
#[derive(Clone)]
pub struct Coroutine {
    pub(crate) header: Arc<Header>,
}

impl Coroutine {
    /// The coroutine's unique id.
    pub fn id(&self) -> CoroutineId {
        CoroutineId(self.header.id)
    }

    /// The name given at spawn, if any.
    pub fn name(&self) -> Option<&str> {
        self.header.name.as_deref()
    }

    /// Makes the coroutine runnable if it is parked in
    /// [`park`](crate::park); otherwise its next `park` returns at once.
    /// Callable from any thread.
    pub fn unpark(&self) {
        self.header.unpark();
    }

    /// A [`Waker`] that unparks this coroutine.
    pub fn waker(&self) -> Waker {
        Waker::from(Arc::clone(&self.header))
    }
}

impl fmt::Debug for Coroutine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coroutine")
            .field("id", &self.id())
            .field("name", &self.name())
            .finish()
    }
}

/// The payload of the `Err` that [`JoinHandle::join`] returns for a
/// coroutine that never finished: the runtime was dropped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the coroutine was cancelled: its runtime shut down before it finished")
    }
}

impl std::error::Error for Cancelled {}

/// An owned permission to join a coroutine, as [`std::thread::JoinHandle`]
/// is for a thread. Dropping it detaches the coroutine.
///
/// It is also a [`Future`] of the same result, so async code can await a
/// coroutine.
pub struct JoinHandle<T> {
    state: Option<crate::loom::sync::Arc<JoinState<T>>>,
    coroutine: Option<Coroutine>,
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(
        state: crate::loom::sync::Arc<JoinState<T>>,
        coroutine: Option<Coroutine>,
    ) -> Self {
        JoinHandle {
            state: Some(state),
            coroutine,
        }
    }

    /// Waits for the coroutine to finish and returns its value, or the
    /// payload of its panic as `Err`.
    ///
    /// Inside a coroutine this parks the calling coroutine; on a plain
    /// thread it blocks the thread.
    pub fn join(mut self) -> std::thread::Result<T> {
        let state = self.state.take().expect("join handle already used");
        if !state.is_complete() {
            if super::worker::current_is_cancelling() {
                // A destructor of a coroutine force-unwound at shutdown
                // cannot wait: the coroutine it joins may never run again.
                state.detach();
                return Err(Box::new(Cancelled));
            }
            let waker = super::current_waker();
            while !state.register(&waker) {
                super::park_current();
            }
        }
        into_result(state.take())
    }

    /// Whether the coroutine has finished (its value is ready).
    pub fn is_finished(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.is_complete())
    }

    /// The coroutine, if it runs on a greenstack worker (`None` for
    /// [`spawn_blocking`](crate::spawn_blocking) jobs).
    pub fn coroutine(&self) -> Option<&Coroutine> {
        self.coroutine.as_ref()
    }
}

fn into_result<T>(o: Outcome<T>) -> std::thread::Result<T> {
    match o {
        Outcome::Value(v) => Ok(v),
        Outcome::Panic(p) => Err(p),
        Outcome::Cancelled => Err(Box::new(Cancelled) as Box<dyn Any + Send>),
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            s.detach();
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = std::thread::Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = self
            .state
            .as_ref()
            .expect("JoinHandle polled after completion");
        if state.register(cx.waker()) {
            let state = self.state.take().expect("checked above");
            Poll::Ready(into_result(state.take()))
        } else {
            Poll::Pending
        }
    }
}

impl<T> Unpin for JoinHandle<T> {}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("coroutine", &self.coroutine)
            .field("finished", &self.is_finished())
            .finish()
    }
}
