//! The join-handle state machine: a coroutine finishing, a joiner waiting,
//! and a handle being dropped, in any order. Modeled with loom
//! (`scheduler/tests/loom_join.rs`).
//!
//! # State bits
//!
//! - `COMPLETE`: the outcome is written. Set once, by the completer, with
//!   Release after writing `outcome`; whoever sees it with Acquire may read
//!   the outcome.
//! - `DETACHED`: the handle is gone without joining; nobody will read the
//!   outcome. Set once, by the handle's drop.
//! - `WAKER`: the `waker` cell holds the joiner's waker and belongs to the
//!   completer. While it is clear and `COMPLETE` is clear, the cell belongs
//!   to the joiner.
//!
//! # Steps
//!
//! 1. Completer: write `outcome`, then `fetch_or(COMPLETE)`. If `DETACHED`
//!    was set, nobody will read: drop the outcome (reporting a panic). Else
//!    if `WAKER` was set, take the waker and wake it.
//! 2. Joiner ([`JoinState::register`]): if `COMPLETE`, done. To store a new
//!    waker it first clears `WAKER` with a CAS that fails if `COMPLETE`
//!    appeared (then the completer owns the cell, and the joiner is done);
//!    writes the cell; then sets `WAKER` with a CAS that again fails only on
//!    `COMPLETE`. Either the completer sees `WAKER` and wakes, or the joiner
//!    sees `COMPLETE`: never neither.
//! 3. Detach: `fetch_or(DETACHED)`. If `COMPLETE` was set, the outcome is
//!    unread and ours to drop (reporting a panic).
//!
//! The outcome is dropped exactly once: by the joiner that takes it, by the
//! completer that saw `DETACHED`, or by the detacher that saw `COMPLETE`.

use std::any::Any;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::task::Waker;

use crate::loom::cell::UnsafeCell;
use crate::loom::sync::atomic::{AtomicU8, Ordering};
use crate::loom::sync::Arc;

const COMPLETE: u8 = 1;
const DETACHED: u8 = 2;
const WAKER: u8 = 4;

/// How a coroutine ended.
pub(crate) enum Outcome<T> {
    /// It returned this value.
    Value(T),
    /// It panicked with this payload, boxed once more: a thin pointer, so
    /// an outcome of a word-sized `T` is 16 bytes, not 24, and a task cell
    /// falls in a smaller allocation class (see `task::Cell`). A panic's
    /// extra allocation is nothing beside its unwinding.
    Panic(Box<Box<dyn Any + Send + 'static>>),
    /// It was dropped before finishing (runtime shutdown).
    Cancelled,
}

/// An outcome nobody will read, handed back by the party that must drop it
/// so that party can report an unobserved panic under the coroutine's name
/// (the state itself does not keep the name: 24 bytes per coroutine).
#[must_use = "an unread outcome should be reported"]
pub(crate) struct Unread<T>(Option<Outcome<T>>);

impl<T> Unread<T> {
    /// Reports a panic in it (as coroutine `id`, `name`), then drops it.
    pub(crate) fn report(self, id: u64, name: Option<&str>) {
        if let Some(Outcome::Panic(p)) = &self.0 {
            let msg = panic_message(p.as_ref().as_ref());
            tracing::error!(
                coroutine.id = id,
                coroutine.name = name.unwrap_or("<unnamed>"),
                panic = msg,
                "coroutine panicked and no one joined it"
            );
        }
    }
}

/// Shared between a `spawn_blocking` job's completer and its join handle:
/// the protocol's three parts in one allocation. (A coroutine's parts live
/// in its task cell instead, see `task::Cell`; both are driven through a
/// [`JoinRef`].)
pub(crate) struct JoinState<T> {
    state: AtomicU8,
    outcome: UnsafeCell<Option<Outcome<T>>>,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the cells are accessed only as the protocol in the module docs
// allows: `outcome` is written by the completer before COMPLETE and read by
// exactly one party after; `waker` is owned by the joiner or the completer as
// the WAKER/COMPLETE bits say. `T: Send` because the outcome moves from the
// coroutine's thread to the joiner's.
unsafe impl<T: Send> Send for JoinState<T> {}
// SAFETY: as above; no `&T` is ever handed out through a shared reference.
unsafe impl<T: Send> Sync for JoinState<T> {}

impl<T> JoinState<T> {
    pub(crate) fn new() -> JoinState<T> {
        JoinState {
            state: AtomicU8::new(0),
            outcome: UnsafeCell::new(None),
            waker: UnsafeCell::new(None),
        }
    }

    /// The protocol over this state's parts.
    pub(crate) fn get(&self) -> JoinRef<'_, T> {
        // SAFETY: the three parts are this state's own, initialised at
        // `new`, and live as long as the borrow.
        unsafe { JoinRef::new(&self.state, &self.waker, NonNull::from(&self.outcome)) }
    }

    /// See [`JoinRef::is_complete`].
    #[cfg_attr(not(greenstack_loom), allow(dead_code))]
    pub(crate) fn is_complete(&self) -> bool {
        self.get().is_complete()
    }

    /// See [`JoinRef::complete`].
    pub(crate) fn complete(&self, outcome: Outcome<T>) -> Unread<T> {
        // SAFETY: a standalone state's outcome cell is initialised at `new`.
        unsafe { self.get().complete(outcome) }
    }

    /// See [`JoinRef::register`].
    #[cfg_attr(not(greenstack_loom), allow(dead_code))]
    pub(crate) fn register(&self, waker: &Waker) -> bool {
        self.get().register(waker)
    }

    /// See [`JoinRef::take`].
    #[cfg_attr(not(greenstack_loom), allow(dead_code))]
    pub(crate) fn take(&self) -> Outcome<T> {
        self.get().take()
    }

    /// See [`JoinRef::detach`].
    #[cfg_attr(not(greenstack_loom), allow(dead_code))]
    pub(crate) fn detach(&self) -> Unread<T> {
        self.get().detach()
    }
}

/// The join protocol (see the module docs) over its three parts, wherever
/// they live: a [`JoinState`] of their own, or a coroutine's task cell,
/// where the state bits sit in the header and the outcome shares its
/// memory with the closure (the closure is gone before an outcome exists),
/// so a cell is 32 bytes smaller than with a `JoinState` inside.
pub(crate) struct JoinRef<'a, T> {
    state: &'a AtomicU8,
    waker: &'a UnsafeCell<Option<Waker>>,
    /// A pointer, not a reference: in a task cell this memory still holds
    /// the closure until the coroutine's body takes it, and it is read only
    /// after `COMPLETE` or written by the completer, by when it holds an
    /// outcome cell.
    outcome: NonNull<UnsafeCell<Option<Outcome<T>>>>,
    _outcome: PhantomData<&'a UnsafeCell<Option<Outcome<T>>>>,
}

impl<T> Clone for JoinRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for JoinRef<'_, T> {}

impl<'a, T> JoinRef<'a, T> {
    /// # Safety
    /// The three parts belong to one join state and live for `'a`; `state`
    /// started at 0 and `waker` at `None`; `outcome` is valid for reads and
    /// writes for `'a` and holds an initialised cell (of `None` until the
    /// completer stores) whenever the protocol reaches it: from before
    /// [`store`](Self::store) or [`complete`](Self::complete) is called.
    pub(crate) unsafe fn new(
        state: &'a AtomicU8,
        waker: &'a UnsafeCell<Option<Waker>>,
        outcome: NonNull<UnsafeCell<Option<Outcome<T>>>>,
    ) -> Self {
        JoinRef {
            state,
            waker,
            outcome,
            _outcome: PhantomData,
        }
    }

    /// The outcome's cell.
    ///
    /// # Safety
    /// Only where the protocol reaches the outcome (see [`JoinRef::new`]).
    unsafe fn outcome(&self) -> &'a UnsafeCell<Option<Outcome<T>>> {
        // SAFETY: by the caller and `new`'s contract the cell is
        // initialised and lives for `'a`.
        unsafe { self.outcome.as_ref() }
    }

    /// Whether the outcome is written.
    pub(crate) fn is_complete(&self) -> bool {
        self.state.load(Ordering::Acquire) & COMPLETE != 0
    }

    /// Step 1. Called once. Returns the outcome if nobody will read it.
    ///
    /// # Safety
    /// The outcome cell is initialised (see [`JoinRef::new`]): in a task
    /// cell, the closure was taken.
    pub(crate) unsafe fn complete(&self, outcome: Outcome<T>) -> Unread<T> {
        // SAFETY: by the caller.
        unsafe {
            self.store(outcome);
            self.publish()
        }
    }

    /// Step 1, first half: writes the outcome without announcing it.
    ///
    /// # Safety
    /// As for [`complete`](Self::complete).
    pub(crate) unsafe fn store(&self, outcome: Outcome<T>) {
        // SAFETY: the completer reaches the outcome (initialised, by
        // `new`'s contract); before COMPLETE only it touches it.
        unsafe { self.outcome() }.with_mut(|p| unsafe { *p = Some(outcome) });
    }

    /// Step 1, second half: announces the stored outcome.
    ///
    /// # Safety
    /// [`store`](Self::store) was called first.
    pub(crate) unsafe fn publish(&self) -> Unread<T> {
        // AcqRel: Release publishes the outcome (pairs with the Acquire in
        // `register`/`detach`); Acquire pairs with the Release that set
        // WAKER, so the waker in the cell is visible.
        let prev = self.state.fetch_or(COMPLETE, Ordering::AcqRel);
        debug_assert_eq!(prev & COMPLETE, 0, "completed twice");
        if prev & DETACHED != 0 {
            // SAFETY: stored (the caller stored first); DETACHED was set
            // before COMPLETE, so no one will read.
            return Unread(unsafe { self.outcome() }.with_mut(|p| unsafe { (*p).take() }));
        }
        if prev & WAKER != 0 {
            // SAFETY: WAKER set and COMPLETE now set: the cell is ours.
            if let Some(w) = self.waker.with_mut(|p| unsafe { (*p).take() }) {
                w.wake();
            }
        }
        Unread(None)
    }

    /// Step 2: stores `waker` to be woken on completion. Returns true if the
    /// outcome is already there (the waker is then not stored).
    pub(crate) fn register(&self, waker: &Waker) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        if cur & COMPLETE != 0 {
            return true;
        }
        if cur & WAKER != 0 {
            // Take the cell back before touching it: clear WAKER, unless
            // COMPLETE appeared (then the completer owns the cell).
            match self.state.compare_exchange(
                cur,
                cur & !WAKER,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => cur &= !WAKER,
                Err(_) => return true, // only COMPLETE can have changed
            }
        }
        // SAFETY: WAKER and COMPLETE are clear: the cell is the joiner's.
        self.waker.with_mut(|p| unsafe {
            if !(*p).as_ref().is_some_and(|w| w.will_wake(waker)) {
                *p = Some(waker.clone());
            }
        });
        // Release: publishes the waker to the completer.
        self.state
            .compare_exchange(cur, cur | WAKER, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }

    /// Takes the outcome. Call only after seeing completion, once; called
    /// before, it takes nothing and gives `Cancelled` (checked, not only
    /// assumed: in a task cell the outcome's memory still holds the
    /// closure until the body has run).
    pub(crate) fn take(&self) -> Outcome<T> {
        if !self.is_complete() {
            debug_assert!(false, "a join outcome taken before completion");
            return Outcome::Cancelled;
        }
        // SAFETY: COMPLETE was just observed with Acquire, so the outcome
        // is stored, and the handle (the only other reader) is being
        // consumed.
        unsafe { self.outcome() }
            .with_mut(|p| unsafe { (*p).take() })
            .unwrap_or(Outcome::Cancelled)
    }

    /// Step 3: the handle is dropped without joining. Returns the outcome
    /// if it was already there (unread, ours to drop).
    pub(crate) fn detach(&self) -> Unread<T> {
        // AcqRel: Acquire pairs with `complete`'s Release so the outcome is
        // visible if COMPLETE was set.
        let prev = self.state.fetch_or(DETACHED, Ordering::AcqRel);
        if prev & COMPLETE != 0 {
            // SAFETY: COMPLETE seen, so the outcome is stored; the
            // completer no longer touches it.
            return Unread(unsafe { self.outcome() }.with_mut(|p| unsafe { (*p).take() }));
        }
        Unread(None)
    }
}

/// Whether a join state's bits (`JoinRef`'s `state`) say the outcome was
/// stored: the completer's last step happened.
pub(crate) fn is_complete(state: u8) -> bool {
    state & COMPLETE != 0
}

/// The message of a panic payload, if it is a string.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "<non-string panic payload>"
    }
}

/// Completes the state when dropped, with `Cancelled` unless completed
/// explicitly: a `spawn_blocking` job dropped before it ran (the pool shut
/// down) still releases its joiner. (Coroutines complete through their
/// task cell, `task.rs`.)
pub(crate) struct Completer<T>(Option<Arc<JoinState<T>>>);

impl<T> Completer<T> {
    pub(crate) fn new(state: Arc<JoinState<T>>) -> Completer<T> {
        Completer(Some(state))
    }

    pub(crate) fn complete(mut self, outcome: Outcome<T>) {
        if let Some(s) = self.0.take() {
            s.complete(outcome).report(0, Some("<blocking job>"));
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.complete(Outcome::Cancelled)
                .report(0, Some("<blocking job>"));
        }
    }
}
