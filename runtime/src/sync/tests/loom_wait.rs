//! loom models of the wait-queue node protocol and the spin lock
//! (`sync/wait.rs`), through a one-value hand-off built the way the
//! channel core (`sync/chan.rs`) uses them, and through the channel core
//! itself.
//!
//! What loom checks here: a waiter parks its loom thread (`loom::rt`), so a
//! lost wake-up is a deadlock report; the node's cells and the lock's value
//! are loom cells, so an access not ordered by the protocol is a causality
//! violation; and dropping a node (under loom, `Node`'s `Drop`) checks that
//! every notifier access to it happened before, so a notifier touching the
//! node after its owner left is one too. Each waiter is also run as a
//! "coroutine" (`loom::rt::as_coroutine`), whose node names its header
//! uncounted, as in production: a wake-up that reaches the header after the
//! coroutine ended is then a causality violation as well.

use std::collections::VecDeque;
use std::time::Instant;

use loom::cell::UnsafeCell;
use loom::sync::{Arc, Mutex};
use loom::thread;

use crate::loom::rt::as_coroutine;
use crate::sync::chan::{Chan, RecvFail};
use crate::sync::wait::{lock, wake_all, Defer, Node, NodePtr, SpinLock, Waiter};

/// An unbounded hand-off: a receiver takes a value or queues a node on
/// its stack; a sender hands its value to the first queued node or leaves
/// it queued. Both follow the node protocol exactly as `Chan::recv`, `hand_over`
/// and `Chan::wait_queued` do.
struct Slot {
    state: SpinLock<SlotState>,
}

struct SlotState {
    values: VecDeque<u32>,
    waiters: VecDeque<NodePtr<u32>>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: SpinLock::new(SlotState {
                values: VecDeque::new(),
                waiters: VecDeque::new(),
            }),
        }
    }

    /// Hands `v` to a queued receiver (waking it after the unlock), or
    /// leaves it in the slot.
    fn send(&self, v: u32) {
        let mut st = self.state.lock();
        if let Some(w) = st.waiters.pop_front() {
            // SAFETY: popped just above, under the lock; receivers follow
            // the node protocol (`recv`).
            let woken = unsafe { w.notify(Some(v)) };
            drop(st);
            woken.wake();
        } else {
            st.values.push_back(v);
        }
    }

    /// Takes the value, waiting for it until `deadline` (step 1: queue a
    /// node; 3: wait for `DONE`, or leave the queue on a timeout).
    fn recv(&self, deadline: Option<Instant>) -> Option<u32> {
        let mut node: Node<u32>;
        let point = crate::cancel::Point::plain(deadline);
        {
            let mut st = self.state.lock();
            if let Some(v) = st.values.pop_front() {
                return Some(v);
            }
            // The channel looks at its point here, under the lock, then
            // waits with `wait_checked`, which skips its first look. The
            // model leaves the look out: its past deadline then stands for
            // one that passed right after the look, so the receiver still
            // queues, and gives up only after (the race with a notifier
            // that `loom_node_cancel_races_notify` checks).
            node = Node::new();
            st.waiters.push_back(node.ptr());
        }
        {
            let leave = Defer::new(|| {
                self.state.lock().waiters.retain(|w| !w.is(&node));
                node.settle();
            });
            if node.wait_checked(&point) {
                leave.disarm();
            }
        }
        node.take_value()
        // `node` drops here: under loom, the check that no notifier still
        // touches it.
    }
}

/// Runs `f` on the calling thread, as a coroutine or as a plain thread.
fn run_as<R>(coroutine: bool, f: impl FnOnce() -> R) -> R {
    if coroutine {
        as_coroutine(f)
    } else {
        f()
    }
}

/// A receiver that queues and parks racing a sender: the value is handed
/// over exactly once and the receiver is woken (no deadlock), whether the
/// sender comes before the receiver queues, while it queues, or after it
/// parked.
#[test]
fn loom_node_handoff_wakes_waiter() {
    for coroutine in [false, true] {
        loom::model(move || {
            let slot = Arc::new(Slot::new());
            let s2 = Arc::clone(&slot);
            let sender = thread::spawn(move || s2.send(7));
            assert_eq!(run_as(coroutine, || slot.recv(None)), Some(7));
            sender.join().unwrap();
            assert!(slot.state.lock().values.is_empty(), "value left behind");
        });
    }
}

/// A receiver that queues and gives up at once (its deadline is past: the
/// same steps as a wait cut short by an unwind) racing a sender: the value
/// ends up either with the receiver or in the slot, never lost or twice,
/// and the receiver's node is never touched after it returned.
#[test]
fn loom_node_cancel_races_notify() {
    for coroutine in [false, true] {
        loom::model(move || {
            let slot = Arc::new(Slot::new());
            let s2 = Arc::clone(&slot);
            let sender = thread::spawn(move || s2.send(7));
            let got = run_as(coroutine, || slot.recv(Some(Instant::now())));
            sender.join().unwrap();
            let left = slot.state.lock().values.pop_front();
            assert_eq!(got.or(left), Some(7), "value lost");
            assert!(got.is_none() || left.is_none(), "value delivered twice");
            assert!(
                slot.state.lock().waiters.is_empty(),
                "a dead node stays queued"
            );
        });
    }
}

/// A lock with FIFO hand-off over shared [`Waiter`] nodes, built as
/// `Semaphore` (one permit) builds it: an unlock with a waiter queued hands
/// the lock to it, notified under the state lock and woken after.
struct HandOff {
    state: Mutex<HandOffState>,
    /// What the lock protects, reached without the state lock.
    data: UnsafeCell<u32>,
}

struct HandOffState {
    locked: bool,
    queue: VecDeque<std::sync::Arc<Waiter>>,
}

// SAFETY: `data` is reached only by the holder of the lock (`locked`, or a
// hand-off through a notified waiter).
unsafe impl Sync for HandOff {}

impl HandOff {
    fn new() -> HandOff {
        HandOff {
            state: Mutex::new(HandOffState {
                locked: false,
                queue: VecDeque::new(),
            }),
            data: UnsafeCell::new(0),
        }
    }

    /// `Semaphore::acquire_until` without a deadline.
    fn lock(&self) {
        let node = {
            let mut st = lock(&self.state);
            if st.queue.is_empty() && !st.locked {
                st.locked = true;
                return;
            }
            let node = Waiter::new(1);
            st.queue.push_back(std::sync::Arc::clone(&node));
            node
        };
        assert!(node.wait(&crate::cancel::Point::plain(None)), "no deadline");
    }

    /// `Semaphore::add_permits(1)`: hands the lock to the first waiter.
    fn unlock(&self) {
        let woken = {
            let mut st = lock(&self.state);
            match st.queue.pop_front() {
                Some(w) => {
                    w.notify();
                    vec![w]
                }
                None => {
                    st.locked = false;
                    Vec::new()
                }
            }
        };
        wake_all(woken);
    }

    /// Increments the protected value (the caller holds the lock).
    fn bump(&self) {
        // SAFETY: the caller holds the lock.
        self.data.with_mut(|d| unsafe { *d += 1 });
    }
}

/// A holder unlocks while another thread queues for the lock: the waiter
/// is never left waiting (no lost wake-up), and sees the holder's change
/// (the hand-off orders them). Then both again, the other way round.
#[test]
fn loom_waiter_handoff_orders_holders() {
    loom::model(|| {
        let m = Arc::new(HandOff::new());
        m.lock();
        let m2 = Arc::clone(&m);
        let other = thread::spawn(move || {
            m2.lock();
            m2.bump();
            m2.unlock();
        });
        m.bump();
        m.unlock();
        other.join().unwrap();
        m.lock();
        // SAFETY: we hold the lock.
        assert_eq!(m.data.with(|d| unsafe { *d }), 2);
        m.unlock();
    });
}

/// Two threads increment a counter under the spin lock: no increment is
/// lost and loom sees no unordered access to the locked value.
#[test]
fn loom_spin_lock_excludes() {
    loom::model(|| {
        let lock = Arc::new(SpinLock::new(0u32));
        let l2 = Arc::clone(&lock);
        let other = thread::spawn(move || *l2.lock() += 1);
        *lock.lock() += 1;
        other.join().unwrap();
        assert_eq!(*lock.lock(), 2);
    });
}

/// The channel core itself: a blocking `recv` racing `send` (the hand-over
/// to a waiting receiver, or the queue).
#[test]
fn loom_chan_recv_races_send() {
    loom::model(|| {
        let chan = Chan::<u32>::new(None);
        let c2 = std::sync::Arc::clone(&chan);
        let sender = thread::spawn(move || assert!(c2.send(7, true, None).is_ok()));
        let got = as_coroutine(|| chan.recv(true, None));
        assert_eq!(got.ok(), Some(7));
        sender.join().unwrap();
        assert_eq!(chan.recv(false, None).err(), Some(RecvFail::Empty));
    });
}

/// The channel core, rendezvous (`sync_channel(0)`): the sender waits on
/// its own node until a receiver took its value; both are released.
#[test]
fn loom_chan_rendezvous() {
    loom::model(|| {
        let chan = Chan::<u32>::new(Some(0));
        let c2 = std::sync::Arc::clone(&chan);
        let sender = thread::spawn(move || as_coroutine(|| c2.send(7, true, None).is_ok()));
        let got = as_coroutine(|| chan.recv(true, None));
        assert_eq!(got.ok(), Some(7));
        assert!(sender.join().unwrap(), "the value was taken");
    });
}

/// The channel core: a receiver waiting while the last sender leaves is
/// woken with `Disconnected` (`notify_all` without a value).
#[test]
fn loom_chan_last_sender_wakes_receiver() {
    loom::model(|| {
        let chan = Chan::<u32>::new(None);
        let c2 = std::sync::Arc::clone(&chan);
        let dropper = thread::spawn(move || c2.drop_sender());
        assert_eq!(chan.recv(true, None).err(), Some(RecvFail::Disconnected));
        dropper.join().unwrap();
    });
}

/// Wakes the loom thread that made it (a select's waker, as loom sees it).
struct Unparker(loom::thread::Thread);

impl std::task::Wake for Unparker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// The channel core's select receive (`Chan::select_recv`) racing two
/// sends: each of two selects in a row looks, and on a miss registers
/// under the lock of that look and parks until woken. The second select
/// finds its watch kept from the first (`State::kept`, nothing registered
/// again), so a send that a kept watch failed to see would leave it parked
/// for good: a deadlock report. Values arrive in order.
#[test]
fn loom_chan_select_recv_keeps_its_watch() {
    loom::model(|| {
        let chan = Chan::<u32>::new(None);
        let c2 = std::sync::Arc::clone(&chan);
        let sender = thread::spawn(move || {
            assert!(c2.send(1, true, None).is_ok());
            assert!(c2.send(2, true, None).is_ok());
        });
        let waker = std::task::Waker::from(std::sync::Arc::new(Unparker(thread::current())));
        let select = || loop {
            match chan.select_recv(crate::sync::chan::NO_WATCH, Some(&waker)) {
                Ok(got) => return got.expect("the sender is alive"),
                Err(key) => {
                    assert_eq!(key, crate::sync::chan::KEPT, "the receiver's own watch");
                    thread::park();
                }
            }
        };
        assert_eq!(select(), 1);
        assert_eq!(select(), 2);
        sender.join().unwrap();
    });
}
