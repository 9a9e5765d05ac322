//! The channel core behind `mpsc` and `mpmc` (`oneshot` has its own).
//!
//! One spinlock (see `wait.rs` for why) guards the queue, the counts of live ends, and two FIFO
//! queues of parked waiters (receivers waiting for a value, senders waiting
//! for room). Waiters are [`Node`]s on their own stacks (see `wait.rs` for
//! the protocol), so waiting allocates nothing.
//!
//! - A send that finds a receiver waiting hands the value straight into its
//!   node: the receiver returns it without taking the lock again. Receivers
//!   wait only on an empty queue, and a sender queues a value only when no
//!   receiver waits, so the queue is empty whenever a receiver waits and
//!   direct hand-over keeps FIFO order.
//! - A send with nobody waiting only pushes: no wake path at all.
//! - Each receive wakes the senders waiting for room (none: nothing to do).
//! - A rendezvous channel (capacity 0) lets a value into the queue, then
//!   holds its sender until a receiver has taken it (counted by sequence
//!   numbers), so `send` returns only after the hand-over, as std's
//!   `sync_channel(0)` does. Handing the value to a waiting receiver is that
//!   hand-over already. So a rendezvous queue holds at most one value, and
//!   only while its sender waits (a sender that stops waiting, timed out or
//!   unwound, takes its value back out).
//! - When the last receiver goes, the values queued go with it, dropped on
//!   the thread dropping it, as std's are (a queued value that owns a reply
//!   `Sender` must not keep its requester waiting); senders see the
//!   disconnect, and a waiting sender gets its own value back. A rendezvous
//!   value stays for its sender to take back, as std's sender keeps it.
//! - A wait cut short by an unwind (the runtime cancels parked coroutines at
//!   shutdown by unwinding them from their park) leaves its queue, and what
//!   reached it meanwhile goes on: a value handed to a receiver that is
//!   being unwound goes to the next receiver (or back to the queue's
//!   front), and a rendezvous sender takes its value back.

use std::collections::VecDeque;
use std::sync::mpsc::RecvError;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use super::wait::{Defer, Node, NodePtr, SpinGuard, SpinLock, Wakers};
use crate::cancel::{End, Point};

pub(crate) struct Chan<T> {
    state: SpinLock<State<T>>,
}

struct State<T> {
    queue: VecDeque<T>,
    /// `None`: unbounded. `Some(0)`: rendezvous.
    cap: Option<usize>,
    senders: usize,
    receivers: usize,
    /// Values ever pushed (or handed over), and ever taken.
    pushed: u64,
    taken: u64,
    /// Receivers waiting for a value; non-empty only while `queue` is empty.
    recv_waiters: VecDeque<NodePtr<T>>,
    /// Senders waiting for room (or for their rendezvous value to be taken).
    send_waiters: VecDeque<NodePtr<()>>,
    /// Selects watching the channel (`sync::select`): woken, and removed,
    /// at the next change that may make an end ready (a value queued or
    /// taken, a receiver waiting, an end gone).
    watchers: Vec<(u64, Waker)>,
    /// The next watcher key.
    next_watch: u64,
    /// A receiving select's watch that outlives its select, [`KEPT`]: a
    /// coroutine that selects on this channel again and again (a receive
    /// loop) registers once and leaves nothing to remove, where a keyed
    /// watcher costs a waker clone to register and a lock and a drop to
    /// remove each time. Woken, and emptied, by every change `watchers`
    /// is woken by except a take (which cannot make a receive ready).
    /// Left behind when its select returns, it may wake that coroutine
    /// once more, spuriously, as every wait allows. tokio's mpsc keeps its
    /// one receiver's waker registered in the same way.
    kept: Option<Waker>,
}

impl<T> State<T> {
    /// Whether a select watches (a keyed watcher or the kept one).
    #[inline(always)]
    fn watched(&self) -> bool {
        !self.watchers.is_empty() || self.kept.is_some()
    }
}

/// A watcher key that names no watcher (keys count up from 0 and never
/// reach it): see [`Chan::select_recv`].
pub(crate) const NO_WATCH: u64 = u64::MAX;

/// The key of a receive's watch kept in `State::kept`: nothing to remove
/// when the select stops watching (see there). Keys never reach it either.
pub(crate) const KEPT: u64 = u64::MAX - 1;

/// Wakers taken from `State::watchers`, to wake after unlocking. One is
/// the common case (one select watching), moved out alone: the list keeps
/// its capacity, so the next select's `watch` allocates nothing.
enum Taken {
    One(Waker),
    Many(Option<Waker>, Vec<(u64, Waker)>),
}

/// Takes the watchers of `st`, the kept one too, to wake after unlocking
/// (`wake_watchers`).
#[inline]
fn take_watchers<T>(st: &mut State<T>) -> Option<Taken> {
    match (st.kept.take(), st.watchers.len()) {
        (None, _) => take_keyed(st),
        (Some(k), 0) => Some(Taken::One(k)),
        (k, _) => Some(Taken::Many(k, std::mem::take(&mut st.watchers))),
    }
}

/// Takes the keyed watchers of `st` only: for a take, which may make a
/// send ready but not a receive.
#[inline]
fn take_keyed<T>(st: &mut State<T>) -> Option<Taken> {
    match st.watchers.len() {
        0 => None,
        1 => st.watchers.pop().map(|(_, w)| Taken::One(w)),
        _ => Some(Taken::Many(None, std::mem::take(&mut st.watchers))),
    }
}

/// Wakes what [`take_watchers`] took. Only the check is inlined: without
/// a select watching (the common case) it is all the call costs, where the
/// whole function, left out of line by the compiler, cost 19 instructions
/// per channel hand-off (callgrind, `channel_pingpong workers=1`).
#[inline(always)]
fn wake_watchers(t: Option<Taken>) {
    if let Some(t) = t {
        wake_taken(t);
    }
}

/// [`wake_watchers`]' work, out of line.
#[cold]
#[inline(never)]
fn wake_taken(t: Taken) {
    match t {
        Taken::One(w) => w.wake(),
        Taken::Many(kept, ws) => {
            if let Some(w) = kept {
                w.wake();
            }
            for (_, w) in ws {
                w.wake();
            }
        }
    }
}

/// Why a receive returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvFail {
    Empty,
    Disconnected,
    Timeout,
}

/// Why a send did not deliver; the value comes back.
pub(crate) enum SendFail<T> {
    Full(T),
    Disconnected(T),
    Timeout(T),
}

impl<T> Chan<T> {
    pub(crate) fn new(cap: Option<usize>) -> Arc<Chan<T>> {
        Arc::new(Chan {
            state: SpinLock::new(State {
                queue: VecDeque::new(),
                cap,
                senders: 1,
                receivers: 1,
                pushed: 0,
                taken: 0,
                recv_waiters: VecDeque::new(),
                send_waiters: VecDeque::new(),
                watchers: Vec::new(),
                next_watch: 0,
                kept: None,
            }),
        })
    }

    /// Whether a receive would return at once (a value, or the
    /// disconnect).
    pub(crate) fn recv_ready(&self) -> bool {
        let st = self.state.lock();
        !st.queue.is_empty() || st.senders == 0
    }

    /// Whether a non-blocking send would complete (deliver, or fail with
    /// the disconnect).
    pub(crate) fn send_ready(&self) -> bool {
        let st = self.state.lock();
        st.receivers == 0
            || match st.cap {
                None => true,
                Some(0) => !st.recv_waiters.is_empty(),
                Some(c) => st.queue.len() < c,
            }
    }

    /// Wakes `waker` at the channel's next change (see `State::watchers`);
    /// returns the key for [`unwatch`](Self::unwatch).
    pub(crate) fn watch(&self, waker: &Waker) -> u64 {
        let mut st = self.state.lock();
        let key = st.next_watch;
        st.next_watch += 1;
        st.watchers.push((key, waker.clone()));
        key
    }

    /// A select's receive, in one look under one lock: removes the
    /// watcher `unwatch` (if not woken and removed already), then takes a
    /// value, `Ok(Ok(v))`, or the disconnect, `Ok(Err(RecvError))`. With
    /// neither, registers `watch` and returns its key, as `Err(key)`:
    /// registered under the lock of the look that missed, so the next
    /// change wakes it. The registration is the kept one ([`KEPT`], see
    /// `State::kept`) when that is free or already `watch`'s, else a keyed
    /// one as [`watch`](Self::watch) makes. A select waiting on a channel
    /// takes the lock twice per value this way (register, then leave and
    /// take), where `unwatch`, `recv` and `watch` would take it four times.
    ///
    /// "No watcher" is [`NO_WATCH`] on both sides: a plain word, not an
    /// `Option<u64>`, which, returned through memory, was written as two
    /// 8-byte stores and read back as one 16-byte load the CPU cannot
    /// forward from them (`perf annotate` of `select_pingpong workers=1`:
    /// the select loop's hottest instruction).
    pub(crate) fn select_recv(
        &self,
        unwatch: u64,
        watch: Option<&Waker>,
    ) -> Result<Result<T, RecvError>, u64> {
        let mut st = self.state.lock();
        // Dropped after unlocking.
        let removed = if unwatch == NO_WATCH || unwatch == KEPT {
            None
        } else {
            st.watchers
                .iter()
                .position(|(k, _)| *k == unwatch)
                .map(|i| st.watchers.swap_remove(i))
        };
        if let Some(v) = st.queue.pop_front() {
            st.taken += 1;
            woken_by_take(st);
            drop(removed);
            return Ok(Ok(v));
        }
        if st.senders == 0 {
            drop(st);
            drop(removed);
            return Ok(Err(RecvError));
        }
        let key = match watch {
            Some(waker) => match &st.kept {
                Some(k) if k.will_wake(waker) => KEPT,
                None => {
                    st.kept = Some(waker.clone());
                    KEPT
                }
                Some(_) => {
                    let key = st.next_watch;
                    st.next_watch += 1;
                    st.watchers.push((key, waker.clone()));
                    key
                }
            },
            None => NO_WATCH,
        };
        drop(st);
        drop(removed);
        Err(key)
    }

    /// Removes the watcher `key`, if not woken (and removed) already. A
    /// [`KEPT`] watch stays (see `State::kept`).
    pub(crate) fn unwatch(&self, key: u64) {
        if key == KEPT {
            return;
        }
        let removed = {
            let mut st = self.state.lock();
            st.watchers
                .iter()
                .position(|(k, _)| *k == key)
                .map(|i| st.watchers.swap_remove(i))
        };
        // Its waker drops after unlocking.
        drop(removed);
    }

    pub(crate) fn add_sender(&self) {
        self.state.lock().senders += 1;
    }

    pub(crate) fn add_receiver(&self) {
        self.state.lock().receivers += 1;
    }

    /// A sender is gone; the last one wakes every receiver.
    pub(crate) fn drop_sender(&self) {
        let woken = {
            let mut st = self.state.lock();
            st.senders -= 1;
            if st.senders == 0 {
                (notify_all(&mut st.recv_waiters), take_watchers(&mut st))
            } else {
                (Wakers::default(), None)
            }
        };
        woken.0.wake();
        wake_watchers(woken.1);
    }

    /// A receiver is gone. The last one drops every queued value (after
    /// unlocking, on the caller's thread, as std does) and wakes every
    /// sender, which then sees the disconnect. A rendezvous value stays: its
    /// sender is waiting and takes it back with the error.
    pub(crate) fn drop_receiver(&self) {
        let (woken, dropped) = {
            let mut st = self.state.lock();
            st.receivers -= 1;
            if st.receivers == 0 {
                let dropped = if st.cap == Some(0) {
                    VecDeque::new()
                } else {
                    // Counted as taken: `pushed - taken` stays the queue's
                    // length.
                    st.taken += st.queue.len() as u64;
                    std::mem::take(&mut st.queue)
                };
                (
                    (notify_all(&mut st.send_waiters), take_watchers(&mut st)),
                    dropped,
                )
            } else {
                ((Wakers::default(), None), VecDeque::new())
            }
        };
        woken.0.wake();
        wake_watchers(woken.1);
        drop(dropped);
    }

    /// Sends `v`, waiting for room (and, for a rendezvous, for a receiver to
    /// take it) until `deadline`; `block == false` never waits.
    pub(crate) fn send(
        &self,
        v: T,
        block: bool,
        deadline: Option<Instant>,
    ) -> Result<(), SendFail<T>> {
        // The common cases first, straight through: a receiver waits, or
        // there is room (never for a rendezvous: its sender waits below).
        let v = {
            let mut st = self.state.lock();
            if st.receivers == 0 {
                return Err(SendFail::Disconnected(v));
            }
            if let Some(w) = st.recv_waiters.pop_front() {
                // SAFETY: popped just above, under `st`.
                unsafe { hand_over(st, w, v) };
                return Ok(());
            }
            let room = match st.cap {
                None => true,
                Some(c) => st.queue.len() < c,
            };
            if room {
                // No receiver waits: nobody to wake but a select.
                st.queue.push_back(v);
                st.pushed += 1;
                if st.watched() {
                    let w = take_watchers(&mut st);
                    drop(st);
                    wake_watchers(w);
                }
                return Ok(());
            }
            v
        };
        self.send_slow(v, block, deadline)
    }

    /// `send` when the value can neither be handed over nor queued at once:
    /// the queue is full, or the channel is a rendezvous.
    #[inline(never)]
    fn send_slow(&self, v: T, block: bool, deadline: Option<Instant>) -> Result<(), SendFail<T>> {
        let mut value = Some(v);
        let mut my_seq = None;
        // A cancellation point: a cancelled (or timed-out) sender finds the
        // channel disconnected and gets its value back.
        let point = Point::new(deadline);
        loop {
            // Declared before the lock so it outlives the wait; it does not
            // move while queued.
            let node: Node<()>;
            let watchers;
            {
                let mut st = self.state.lock();
                if my_seq.is_some_and(|seq| st.taken >= seq) {
                    // Rendezvous: a receiver took our value (it may have
                    // left since; the hand-over happened).
                    return Ok(());
                }
                if st.receivers == 0 {
                    // Take our value back out if it is still queued (a
                    // rendezvous queue holds at most one value: ours).
                    let v = match value.take() {
                        Some(v) => v,
                        None => withdraw(&mut st),
                    };
                    return Err(SendFail::Disconnected(v));
                }
                if my_seq.is_some() {
                    // Rendezvous: still waiting for our value to be taken.
                } else if let Some(w) = st.recv_waiters.pop_front() {
                    let v = value.take().expect("value not yet sent");
                    // SAFETY: popped just above, under `st`.
                    unsafe { hand_over(st, w, v) };
                    return Ok(());
                } else if st.cap == Some(0) && !block {
                    // std: a rendezvous try_send succeeds only if a receiver
                    // is already waiting.
                    return Err(SendFail::Full(value.take().expect("value not yet sent")));
                } else {
                    let room = match st.cap {
                        None => true,
                        Some(c) => st.queue.len() < c.max(1),
                    };
                    if room {
                        // No receiver waits: nobody to wake but a select.
                        st.queue
                            .push_back(value.take().expect("value not yet sent"));
                        st.pushed += 1;
                        if st.cap != Some(0) || !block {
                            let w = take_watchers(&mut st);
                            drop(st);
                            wake_watchers(w);
                            return Ok(());
                        }
                        my_seq = Some(st.pushed);
                    } else if !block {
                        return Err(SendFail::Full(value.take().expect("value not yet sent")));
                    }
                }
                if let Some(end) = point.ended() {
                    let v = match value.take() {
                        Some(v) => v,
                        // A rendezvous value nobody took: withdraw it, which
                        // makes room for the senders waiting.
                        None => {
                            let v = withdraw(&mut st);
                            let woken = notify_all(&mut st.send_waiters);
                            let w = take_watchers(&mut st);
                            drop(st);
                            woken.wake();
                            wake_watchers(w);
                            v
                        }
                    };
                    return Err(match end {
                        End::Deadline => SendFail::Timeout(v),
                        End::Cancelled | End::Elapsed => SendFail::Disconnected(v),
                    });
                }
                node = Node::new();
                st.send_waiters.push_back(node.ptr());
                // A rendezvous value just queued makes the channel ready
                // for a selecting receiver.
                watchers = take_watchers(&mut st);
            }
            wake_watchers(watchers);
            // The loop reports a timeout. An unwound rendezvous sender takes
            // its value back (its `send` never returned, so it must not be
            // delivered, and the queue must not keep a value nobody waits
            // for).
            self.wait_queued(
                &node,
                |st| &mut st.send_waiters,
                &point,
                || {
                    if let Some(seq) = my_seq {
                        self.withdraw_unwound(seq);
                    }
                },
            );
        }
    }

    /// An unwound rendezvous sender's value, numbered `seq`, leaves the
    /// queue if no receiver took it; it is dropped here, after unlocking.
    #[cold]
    fn withdraw_unwound(&self, seq: u64) {
        let (v, woken) = {
            let mut st = self.state.lock();
            if st.taken >= seq {
                return;
            }
            let v = withdraw(&mut st);
            (
                v,
                (notify_all(&mut st.send_waiters), take_watchers(&mut st)),
            )
        };
        woken.0.wake();
        wake_watchers(woken.1);
        drop(v);
    }

    /// A value handed to a receiver that was unwound before it could return
    /// it goes on: to the next waiting receiver, or back to the queue's
    /// front (receivers wait only on an empty queue, so the order is kept).
    /// A rendezvous sender that handed it over has returned already, so
    /// with no other receiver waiting its value is dropped, as if received
    /// (the rendezvous queue holds only a waiting sender's value).
    #[cold]
    fn pass_on(&self, v: T) {
        let unreceived = {
            let mut st = self.state.lock();
            if let Some(w) = st.recv_waiters.pop_front() {
                // Counted as taken already, when it was handed to us.
                // SAFETY: popped just above, under `st`; receivers follow
                // the node protocol.
                let woken = unsafe { w.notify(Some(v)) };
                drop(st);
                woken.wake();
                return;
            }
            if st.cap == Some(0) || st.receivers == 0 {
                Some(v)
            } else {
                st.taken -= 1;
                st.queue.push_front(v);
                let w = take_watchers(&mut st);
                drop(st);
                wake_watchers(w);
                None
            }
        };
        drop(unreceived);
    }

    /// Receives a value, waiting until `deadline` if `block`.
    pub(crate) fn recv(&self, block: bool, deadline: Option<Instant>) -> Result<T, RecvFail> {
        // A cancellation point: a cancelled (or timed-out) receiver finds
        // the channel disconnected once it is empty. Made when first
        // needed: a value ready at once costs no look at the limits.
        let mut point: Option<Point> = None;
        loop {
            // Declared before the lock so it outlives the wait; it does not
            // move while queued.
            let mut node: Node<T>;
            let mut watchers = None;
            {
                let mut st = self.state.lock();
                if let Some(v) = st.queue.pop_front() {
                    st.taken += 1;
                    woken_by_take(st);
                    return Ok(v);
                }
                if st.senders == 0 {
                    return Err(RecvFail::Disconnected);
                }
                if !block {
                    return Err(RecvFail::Empty);
                }
                let p = point.get_or_insert_with(|| Point::new(deadline));
                if let Some(end) = p.ended() {
                    return Err(match end {
                        End::Deadline => RecvFail::Timeout,
                        End::Cancelled | End::Elapsed => RecvFail::Disconnected,
                    });
                }
                node = Node::new();
                st.recv_waiters.push_back(node.ptr());
                // A waiting receiver makes a rendezvous channel ready for
                // a selecting sender.
                if st.cap == Some(0) {
                    watchers = take_watchers(&mut st);
                }
            }
            wake_watchers(watchers);
            // A value handed over before a timeout is still ours; one handed
            // over to us as we are unwound goes on to another receiver.
            let p = point.expect("made before queueing");
            self.wait_queued(
                &node,
                |st| &mut st.recv_waiters,
                &p,
                || {
                    // SAFETY: run by `wait_queued` once the node has left its
                    // queue and settled.
                    if let Some(v) = unsafe { node.take_value_shared() } {
                        self.pass_on(v);
                    }
                },
            );
            if let Some(v) = node.take_value() {
                return Ok(v);
            }
            // Woken without a value (the last sender left) or timed out:
            // the loop decides.
        }
    }

    /// Waits on `node`, queued in the queue `queue` picks, until it is
    /// notified or `deadline`. On a timeout or an unwind the node first
    /// leaves its queue (node protocol, steps 3 and 4); on an unwind,
    /// `unwound` then runs (the node is the caller's alone again).
    fn wait_queued<V>(
        &self,
        node: &Node<V>,
        queue: fn(&mut State<T>) -> &mut VecDeque<NodePtr<V>>,
        point: &Point,
        unwound: impl FnOnce(),
    ) {
        let leave = Defer::new(|| {
            self.unqueue(node, queue);
            unwound();
        });
        // The callers checked `point` under the lock just before queueing
        // the node.
        let notified = node.wait_checked(point);
        leave.disarm();
        if !notified {
            self.unqueue(node, queue);
        }
    }

    /// Takes `node` out of its queue if still there, then waits out its
    /// notifier if one popped it (node protocol, step 3b).
    #[cold]
    fn unqueue<V>(&self, node: &Node<V>, queue: fn(&mut State<T>) -> &mut VecDeque<NodePtr<V>>) {
        queue(&mut self.state.lock()).retain(|w| !w.is(node));
        node.settle();
    }
}

/// Unlocks `st` after a value was taken from its queue, then wakes the
/// senders waiting for room and the selects watching with a key (the kept
/// watch is a receive's, which a take cannot make ready). Neither waits on an
/// unbounded channel nobody selects on: then it only unlocks (gathering the
/// empty lists cost 3% of `select_pingpong`'s time).
#[inline(always)]
fn woken_by_take<T>(mut st: SpinGuard<'_, State<T>>) {
    if st.send_waiters.is_empty() && st.watchers.is_empty() {
        return;
    }
    let woken = notify_all(&mut st.send_waiters);
    let w = take_keyed(&mut st);
    drop(st);
    woken.wake();
    wake_watchers(w);
}

/// Hands `v` to the waiting receiver `w`, unlocks `st`, and wakes the
/// receiver. A receiver waits only on an empty queue, so this keeps FIFO
/// order.
///
/// # Safety
///
/// `w` was just popped from `st.recv_waiters`, under `st`.
unsafe fn hand_over<T>(mut st: SpinGuard<'_, State<T>>, w: NodePtr<T>, v: T) {
    debug_assert!(st.queue.is_empty());
    st.pushed += 1;
    st.taken += 1;
    // SAFETY: by the contract `w` was just popped from its queue under the
    // lock we hold, and receivers follow the node protocol (`recv`).
    let woken = unsafe { w.notify(Some(v)) };
    drop(st);
    woken.wake();
}

/// Takes our rendezvous value back out of the queue (which holds at most
/// one value: ours, the last pushed) and uncounts it, so the next sender's
/// sequence number is again one past what receivers will have taken.
fn withdraw<T>(st: &mut SpinGuard<'_, State<T>>) -> T {
    st.pushed -= 1;
    st.queue
        .pop_back()
        .expect("our rendezvous value is still queued")
}

/// Notifies every node of `q` (emptying it); wake the result after
/// unlocking.
fn notify_all<V>(q: &mut VecDeque<NodePtr<V>>) -> Wakers<V> {
    let mut woken = Wakers::default();
    for w in q.drain(..) {
        // SAFETY: `w` is removed from its queue under the lock, which the
        // caller holds; every user of these queues follows the node
        // protocol.
        woken.push(unsafe { w.notify(None) });
    }
    woken
}

/// std's error for a failed `try_recv`.
pub(crate) fn try_recv_error(e: RecvFail) -> std::sync::mpsc::TryRecvError {
    match e {
        RecvFail::Disconnected => std::sync::mpsc::TryRecvError::Disconnected,
        RecvFail::Empty | RecvFail::Timeout => std::sync::mpsc::TryRecvError::Empty,
    }
}

/// std's error for a failed `recv_timeout`.
pub(crate) fn recv_timeout_error(e: RecvFail) -> std::sync::mpsc::RecvTimeoutError {
    match e {
        RecvFail::Disconnected => std::sync::mpsc::RecvTimeoutError::Disconnected,
        RecvFail::Empty | RecvFail::Timeout => std::sync::mpsc::RecvTimeoutError::Timeout,
    }
}

/// std's error for a failed `try_send` (a timeout counts as full).
pub(crate) fn try_send_error<T>(e: SendFail<T>) -> std::sync::mpsc::TrySendError<T> {
    match e {
        SendFail::Full(v) | SendFail::Timeout(v) => std::sync::mpsc::TrySendError::Full(v),
        SendFail::Disconnected(v) => std::sync::mpsc::TrySendError::Disconnected(v),
    }
}

/// The value a failed send gives back.
pub(crate) fn unsent<T>(e: SendFail<T>) -> T {
    match e {
        SendFail::Full(v) | SendFail::Disconnected(v) | SendFail::Timeout(v) => v,
    }
}
