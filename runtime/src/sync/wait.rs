//! The waiting machinery every primitive shares: waiter nodes, the lock
//! helper that enters a no-fault section, and the park loop with deadline.
//!
//! Every primitive keeps its state behind a std `Mutex`, held only for a few
//! instructions and never across a park. A waiter enqueues a node under
//! that lock, releases it, and parks until the node is notified (or its
//! deadline passes). The notifier marks the node and wakes it after
//! releasing the lock. Coroutine and thread park tokens keep a wake-up that
//! arrives before the park, so none is lost.
//!
//! Two kinds of node: the shared [`Waiter`] (an `Arc`, used by the locks,
//! condvar and semaphore) and the allocation-free [`Node`], which lives on
//! the waiting coroutine's own stack (used by the channels).
//!
//! # The stack-node protocol ([`Node`], [`NodePtr`])
//!
//! A queue holds raw pointers to nodes on the waiters' stacks, so the whole
//! protocol is about never touching a node after its owner may have
//! returned from the wait (and popped its stack frame):
//!
//! 1. The waiter builds the node (its waker inside), pushes a pointer to it
//!    under the primitive's lock, unlocks and parks until `notified`.
//! 2. A notifier pops the pointer under the same lock and, still under the
//!    lock, writes the handed-over value (if any), *moves the wake target
//!    out*, and stores `state = NOTIFIED` (Release). After unlocking it
//!    wakes the target, then stores `state = DONE` (Release) as its very
//!    last access to the node.
//! 3. The waiter leaves only (a) after loading `state == DONE` (Acquire: the
//!    notifier is done with the node *and* with the wake target), spinning
//!    briefly if it sees `NOTIFIED` first, or (b) after its deadline passes
//!    and it has taken the lock again: if its pointer is still queued it
//!    removes it (no notifier can reach the node any more); if not, a
//!    notifier popped it, and the waiter waits for `DONE` as in (a)
//!    ([`Node::settle`]). Either way the node is the waiter's alone again.
//! 4. (b) also runs when the wait is cut short by an unwind: the runtime
//!    cancels parked coroutines at shutdown by unwinding them from inside
//!    their park, and their channels may outlive them. A [`Defer`] guard, armed around
//!    every wait and disarmed only on (a), does it.
//!
//! Why two steps: a coroutine's wake target is a plain pointer to its
//! header, not a counted `Waker` (a count bumped and dropped on every wait
//! is two locked instructions, on a line both workers write). The header
//! lives while its coroutine does, and the coroutine cannot finish before
//! its wait returns, which step 3 holds back until the wake is done. The
//! spin in (a) is at most the notifier's few instructions between its
//! unlock and `DONE` (the notifier never suspends there).
//!
//! crossbeam-channel's `zero.rs` hands a stack `Packet` over the same way
//! (a final `ready` store, after which the other side may free it).

use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::cancel::Point;
use crate::loom::cell::UnsafeCell;
use crate::loom::hint::{backoff, Backoff};
use crate::loom::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use crate::loom::sync::{Mutex, MutexGuard};
use crate::stack::NoFaultSection;

/// One parked coroutine or thread, in some primitive's queue.
#[derive(Debug)]
pub(crate) struct Waiter {
    waker: Waker,
    notified: AtomicBool,
    /// What the waiter asks for (permits, for the semaphore).
    pub(crate) want: usize,
}

impl Waiter {
    /// A node for the caller, asking for `want`.
    pub(crate) fn new(want: usize) -> Arc<Waiter> {
        Arc::new(Waiter {
            waker: crate::scheduler::current_waker(),
            notified: AtomicBool::new(false),
            want,
        })
    }

    /// Marks the node notified; the caller wakes it (after unlocking) with
    /// [`wake`](Self::wake).
    pub(crate) fn notify(&self) {
        // Release: what the notifier did under the lock is visible to the
        // woken waiter's Acquire load.
        self.notified.store(true, Ordering::Release);
    }

    /// Wakes the waiter.
    pub(crate) fn wake(&self) {
        self.waker.wake_by_ref();
    }

    /// Whether the node has been notified.
    pub(crate) fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Parks until notified or `point` ends the wait. True if notified.
    pub(crate) fn wait(&self, point: &Point) -> bool {
        loop {
            if self.is_notified() {
                return true;
            }
            if point.ended().is_some() {
                return false;
            }
            crate::time::park_until(point.deadline());
        }
    }
}

/// `Node::state`: queued, or not yet notified.
const WAITING: u8 = 0;
/// Popped and handed over; the notifier may still be waking the target.
const NOTIFIED: u8 = 1;
/// The notifier is done with the node and the target.
const DONE: u8 = 2;

/// A waiter's node on its own stack (see the module docs). `V` is what a
/// notifier may hand over with the wake-up (a channel value, or `()`).
pub(crate) struct Node<V> {
    /// Whom to wake; moved out by the notifier under the lock (step 2).
    target: UnsafeCell<Option<WakeTarget>>,
    /// A value handed over by the notifier, under the lock, before
    /// `state` leaves `WAITING`.
    value: UnsafeCell<Option<V>>,
    /// `WAITING`, `NOTIFIED` or `DONE` (module docs).
    state: AtomicU8,
}

impl<V> Node<V> {
    /// A node for the caller (its coroutine, or its thread's waker).
    pub(crate) fn new() -> Node<V> {
        Node {
            target: UnsafeCell::new(Some(WakeTarget::current())),
            value: UnsafeCell::new(None),
            state: AtomicU8::new(WAITING),
        }
    }

    /// The pointer to queue. The node must not move while it is queued.
    pub(crate) fn ptr(&self) -> NodePtr<V> {
        NodePtr(NonNull::from(self))
    }

    /// Parks until notified or `point` ends the wait (step 3). True if
    /// notified (and the notifier done); if false, the caller must take the
    /// lock and unqueue the node, then [`settle`](Self::settle), before it
    /// may drop it.
    ///
    /// The caller found `point` not ended just before it queued the node
    /// (under the lock): the first look at `point` here is skipped (two
    /// looks per wait cost 62 instructions of a channel hand-off's 780,
    /// callgrind, `channel_pingpong workers=1`). An end that comes after
    /// the caller's look still ends the wait: a cancellation unparks the
    /// coroutine and a deadline is the park's own, so the park returns and
    /// the next round sees it.
    pub(crate) fn wait_checked(&self, point: &Point) -> bool {
        let mut look = false;
        loop {
            // Acquire: pairs with the Release stores in `NodePtr::notify`
            // and `Notified::wake`, so the handed-over value is visible.
            if self.state.load(Ordering::Acquire) != WAITING {
                self.settle();
                return true;
            }
            if look && point.ended().is_some() {
                return false;
            }
            look = true;
            crate::time::park_until(point.deadline());
        }
    }

    /// Whether a notifier has popped the node (then [`settle`](Self::settle)
    /// before leaving).
    pub(crate) fn is_notified(&self) -> bool {
        // Acquire: as in `wait_checked`.
        self.state.load(Ordering::Acquire) != WAITING
    }

    /// Waits out a notifier that popped the node but may still be waking
    /// its target (step 3). Returns at once for a node never notified.
    pub(crate) fn settle(&self) {
        let mut spins = 0u32;
        while self.state.load(Ordering::Acquire) == NOTIFIED {
            // A spin hint, then `yield_now` after 64 rounds: the notifier
            // is a thread the OS preempted mid-wake.
            backoff(spins);
            spins += 1;
        }
    }

    /// The value a notifier handed over, if any. Call only once the node
    /// is the caller's alone again (step 3), which `&mut` stands for.
    pub(crate) fn take_value(&mut self) -> Option<V> {
        // SAFETY: `&mut self`: the node is ours alone (step 3).
        self.value.with_mut(|v| unsafe { (*v).take() })
    }

    /// [`take_value`](Self::take_value) through a shared reference, for an
    /// unwind guard that only has one.
    ///
    /// # Safety
    ///
    /// - The node is the caller's alone again (step 3): out of its queue,
    ///   and [`settle`](Self::settle)d if a notifier popped it.
    /// - No other reference reads or writes the value meanwhile.
    pub(crate) unsafe fn take_value_shared(&self) -> Option<V> {
        // SAFETY: by the contract nobody else touches the cell.
        self.value.with_mut(|v| unsafe { (*v).take() })
    }
}

/// Under loom, dropping a node checks that every access of a notifier to it
/// happened before (step 3): loom reports a causality violation otherwise.
#[cfg(greenstack_loom)]
impl<V> Drop for Node<V> {
    fn drop(&mut self) {
        self.state.with_mut(|_| ());
    }
}

/// Whom a node's notifier wakes.
pub(crate) enum WakeTarget {
    /// A coroutine, by its header, uncounted: alive while its wait lasts
    /// (module docs).
    Coroutine(NonNull<crate::scheduler::Header>),
    /// A plain thread (or anything else with a waker).
    Other(Waker),
}

impl WakeTarget {
    /// The caller's.
    fn current() -> WakeTarget {
        match crate::scheduler::current_header_ptr() {
            Some(h) => WakeTarget::Coroutine(h),
            None => WakeTarget::Other(crate::scheduler::current_waker()),
        }
    }
}

/// A queued pointer to a [`Node`] on some waiter's stack.
pub(crate) struct NodePtr<V>(NonNull<Node<V>>);

// SAFETY: a `NodePtr` is only dereferenced by a notifier holding the lock of
// the queue it was popped from (and, for the final `DONE` store, by the
// `Notified` it became), and the node it points to stays alive until then
// (module docs, step 3). Through it the notifier moves the wake target
// (a header, `Sync`, or a `Waker`, `Send`) out and a `V` in, which the waiter
// then takes on its own thread: hence `V: Send`.
unsafe impl<V: Send> Send for NodePtr<V> {}

impl<V> NodePtr<V> {
    /// Step 2, under the lock: hands over `value` and marks the node
    /// notified. Wake the result after unlocking.
    ///
    /// # Safety
    ///
    /// - The caller holds the lock of the queue this pointer was in, and has
    ///   just removed it from that queue under the same lock.
    /// - The node's owner follows step 3.
    pub(crate) unsafe fn notify(self, value: Option<V>) -> Notified<V> {
        let node = self.0.as_ptr();
        // SAFETY: by the contract the node is alive and, until `state`
        // leaves WAITING, nobody else reads or writes its cells: its owner
        // only loads `state` until then, and other notifiers need the
        // queue's lock and can no longer find the pointer.
        let target = unsafe {
            if value.is_some() {
                (*node).value.with_mut(|v| *v = value);
            }
            let target = (*node)
                .target
                .with_mut(|t| (*t).take())
                .expect("a queued node has its wake target");
            // Release: pairs with the Acquire in `Node::wait`.
            (*node).state.store(NOTIFIED, Ordering::Release);
            target
        };
        Notified {
            node: ManuallyDrop::new(self),
            target: ManuallyDrop::new(target),
        }
    }

    /// Whether this points to `node`.
    pub(crate) fn is(&self, node: &Node<V>) -> bool {
        std::ptr::eq(self.0.as_ptr(), node)
    }
}

/// A notified node still to wake (step 2, after the unlock). Waking, or
/// dropping, finishes the step: the node is released with `DONE`.
pub(crate) struct Notified<V> {
    node: ManuallyDrop<NodePtr<V>>,
    target: ManuallyDrop<WakeTarget>,
}

impl<V> Notified<V> {
    /// Wakes the target, then releases the node.
    pub(crate) fn wake(self) {
        drop(self);
    }
}

impl<V> Drop for Notified<V> {
    fn drop(&mut self) {
        // SAFETY: taken once, here.
        let target = unsafe { ManuallyDrop::take(&mut self.target) };
        match target {
            // SAFETY: the node's owner is held in its wait until `DONE`
            // below, so its coroutine and header are alive.
            WakeTarget::Coroutine(h) => unsafe { h.as_ref() }.unpark(),
            WakeTarget::Other(w) => w.wake(),
        }
        // SAFETY: the owner waits for this store before dropping the node.
        // Release: our wake happens before the owner returns. The last
        // access to the node.
        unsafe { self.node.0.as_ref() }
            .state
            .store(DONE, Ordering::Release);
    }
}

/// Runs its closure when dropped, unless [`disarm`](Self::disarm)ed: the
/// waiter's way out of its queue on a timeout *or an unwind* (protocol
/// step 4).
pub(crate) struct Defer<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Defer<F> {
    /// Arms `f`.
    pub(crate) fn new(f: F) -> Defer<F> {
        Defer(Some(f))
    }

    /// Drops `f` without running it. The guard itself is forgotten, so the
    /// path that waited successfully does not call into its `Drop` (an
    /// out-of-line call with the closure's body inlined: callgrind counted
    /// 21 instructions per channel hand-off for it).
    pub(crate) fn disarm(mut self) {
        drop(self.0.take());
        std::mem::forget(self);
    }
}

impl<F: FnOnce()> Drop for Defer<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Nodes notified under a lock, to wake after it is released. The first
/// one is kept inline, so waking one waiter allocates nothing.
pub(crate) struct Wakers<V> {
    first: Option<Notified<V>>,
    rest: Vec<Notified<V>>,
}

impl<V> Default for Wakers<V> {
    fn default() -> Self {
        Wakers {
            first: None,
            rest: Vec::new(),
        }
    }
}

impl<V> Wakers<V> {
    /// Adds one.
    pub(crate) fn push(&mut self, w: Notified<V>) {
        if self.first.is_none() {
            self.first = Some(w);
        } else {
            self.rest.push(w);
        }
    }

    /// Wakes them all, in order.
    pub(crate) fn wake(self) {
        if let Some(w) = self.first {
            w.wake();
        }
        for w in self.rest {
            w.wake();
        }
    }
}

/// A primitive's state, locked inside a no-fault section: the section is
/// entered (prefaulting the stack) before the lock is taken and left after
/// it is released, so no growth fault can happen while it is held.
pub(crate) struct Locked<'a, S> {
    // Field order is drop order: the guard goes first.
    guard: MutexGuard<'a, S>,
    _section: NoFaultSection,
}

impl<S> std::ops::Deref for Locked<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.guard
    }
}

impl<S> std::ops::DerefMut for Locked<'_, S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.guard
    }
}

/// Locks `m` inside a no-fault section. Our critical sections never panic
/// while holding the lock, so poisoning is ignored.
pub(crate) fn lock<S>(m: &Mutex<S>) -> Locked<'_, S> {
    let section = NoFaultSection::enter();
    Locked {
        guard: m.lock().unwrap_or_else(|p| p.into_inner()),
        _section: section,
    }
}

/// A spinlock for the channel core's state, entered inside a no-fault
/// section like [`lock`].
///
/// Why not the std mutex: its unlock is an atomic swap (it must learn
/// whether to wake a sleeper), a second locked instruction per critical
/// section. Here unlocking is a plain Release store. Spinning is fine
/// because every critical section is a few dozen instructions that never
/// park, yield or take a growth fault (the no-fault section prefaults
/// first), so a holder on a worker always runs to its unlock; only a plain
/// thread preempted by the OS mid-section makes others wait, and they back
/// off to `yield_now` after a few rounds (crossbeam's `Backoff::snooze`).
/// Measured with `channel_pingpong workers=1 n=100000` (benches/compare,
/// median of 9 interleaved runs): 108.4 ns per hand-off with the std mutex,
/// 99.8 ns with this lock.
pub(crate) struct SpinLock<S> {
    locked: AtomicBool,
    value: UnsafeCell<S>,
}

// SAFETY: the lock hands `S` from thread to thread, so `S: Send` suffices,
// as for `std::sync::Mutex`.
unsafe impl<S: Send> Send for SpinLock<S> {}
// SAFETY: `value` is only reached through a `SpinGuard`, and at most one
// exists at a time (the `locked` flag), as for `std::sync::Mutex`.
unsafe impl<S: Send> Sync for SpinLock<S> {}

impl<S> SpinLock<S> {
    /// An unlocked lock around `value`.
    pub(crate) fn new(value: S) -> SpinLock<S> {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Puts `value` in and unlocks, whoever held the lock, leaking the old
    /// value: for a child process after `fork`, where a thread that held
    /// the lock at the fork does not exist and the old value may be half
    /// changed.
    ///
    /// # Safety
    ///
    /// Only where no other thread can reach the lock: in a forked child
    /// before it starts a thread (a `pthread_atfork` child handler).
    #[cfg_attr(greenstack_loom, allow(dead_code))]
    pub(crate) unsafe fn reset_after_fork(&self, value: S) {
        // SAFETY: no other thread reaches the value (the caller's
        // contract); `write` leaves the old one alone, whatever its state.
        self.value
            .with_mut(|v| unsafe { std::ptr::write(v, value) });
        self.locked.store(false, Ordering::Release);
    }

    /// Locks inside a no-fault section (entered first, left after the
    /// unlock).
    pub(crate) fn lock(&self) -> SpinGuard<'_, S> {
        let section = NoFaultSection::enter();
        // Acquire: pairs with the Release store in `SpinGuard::drop`.
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            let backoff = Backoff::new();
            while self.locked.load(Ordering::Relaxed) {
                backoff.snooze();
            }
        }
        SpinGuard {
            lock: self,
            _section: section,
        }
    }
}

/// A held [`SpinLock`].
pub(crate) struct SpinGuard<'a, S> {
    // Field order is drop order, but `Drop` unlocks before either goes.
    lock: &'a SpinLock<S>,
    _section: NoFaultSection,
}

impl<S> std::ops::Deref for SpinGuard<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        // SAFETY: we hold the lock, so nobody else reaches the value.
        self.lock.value.with(|v| unsafe { &*v })
    }
}

impl<S> std::ops::DerefMut for SpinGuard<'_, S> {
    fn deref_mut(&mut self) -> &mut S {
        // SAFETY: we hold the lock, so nobody else reaches the value.
        self.lock.value.with_mut(|v| unsafe { &mut *v })
    }
}

impl<S> Drop for SpinGuard<'_, S> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `SpinLock::lock`. The section
        // is left after this (field drop).
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// `now + d`, or `None` (wait forever) if that overflows. The reading is
/// kept for the wait's own checks (`crate::time::expired`).
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    crate::time::deadline_after(d)
}

/// Wakes every waiter in `list` (after the caller released its lock).
pub(crate) fn wake_all(list: Vec<Arc<Waiter>>) {
    for w in list {
        w.wake();
    }
}
