//! Coroutines waiting on futex words: the queues behind the futex hook
//! (`hook/futex.rs`), which takes std's lock waits over so that they park
//! the coroutine instead of the worker thread.
//!
//! A waiter queues a node on its own stack (the protocol of `wait::Node`)
//! in one of [`BUCKETS`] spinlocked queues, chosen by the word's address,
//! after checking under that lock that the word still holds the value it
//! expects (as the kernel checks under its hash-bucket lock), then parks.
//! A waker changes the word, then wakes queued waiters of that address.
//!
//! A wake that finds no waiter anywhere must cost next to nothing (it is
//! every contended std unlock in the process): one fence and one load of
//! [`FutexQueues::waiters`]. The waiter counts itself before it reads the
//! word; the waker has changed the word before it reads the count; a
//! `SeqCst` fence on each side orders the two (the store-buffering
//! pattern, as `scheduler/idle.rs`'s sleepers): either the waker
//! sees the count, takes the lock and finds the node, or the waiter sees
//! the changed word and does not wait. Modeled with loom
//! (`sync/tests/loom_futex_queue.rs`), against this file.

use std::time::Instant;

use crate::loom::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};
use crate::sync::wait::{Node, NodePtr, SpinLock, Wakers};

/// How many queues (a power of two; two under loom, which then also
/// explores waiters of different words sharing one).
#[cfg(not(greenstack_loom))]
pub(crate) const BUCKETS: usize = 64;
#[cfg(greenstack_loom)]
pub(crate) const BUCKETS: usize = 2;

/// A queued waiter: the address of the word it waits on, and its node.
struct Entry {
    addr: usize,
    node: NodePtr<()>,
}

/// Why a [`FutexQueues::wait`] returned without a wake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotWoken {
    /// The word did not hold the expected value.
    Changed,
    /// The deadline passed.
    TimedOut,
    /// `stop` said so.
    Stopped,
}

/// The queues and their waiter count (module docs).
pub(crate) struct FutexQueues {
    /// Waiters queued, or about to be: 0 after a waker's fence means none
    /// is, nor can one be that has not seen the waker's change.
    waiters: AtomicUsize,
    queues: [SpinLock<Vec<Entry>>; BUCKETS],
}

impl FutexQueues {
    /// No waiters.
    pub(crate) fn new() -> FutexQueues {
        FutexQueues {
            waiters: AtomicUsize::new(0),
            queues: std::array::from_fn(|_| SpinLock::new(Vec::new())),
        }
    }

    /// The queue of `addr`.
    fn queue(&self, addr: usize) -> &SpinLock<Vec<Entry>> {
        // Futex words are 4-byte aligned: mix the bits above that.
        let h = (addr >> 2).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.queues[h % BUCKETS]
    }

    /// Whether a waiter may be queued: call after changing a word (the
    /// waker's side of the module docs' pattern).
    #[inline]
    pub(crate) fn may_have_waiters(&self) -> bool {
        // SeqCst fence: pairs with the waiter's (the load is SeqCst too,
        // a plain load on x86-64).
        fence(Ordering::SeqCst);
        self.waiters.load(Ordering::SeqCst) != 0
    }

    /// Waits while `word` holds `expected`, until a [`wake`](Self::wake)
    /// of its address, `deadline`, or `stop()` (asked each time the
    /// waiter is unparked). `park(deadline)` parks the caller until it is
    /// unparked or the deadline passes.
    pub(crate) fn wait(
        &self,
        word: &AtomicU32,
        expected: u32,
        deadline: Option<Instant>,
        park: impl Fn(Option<Instant>),
        stop: impl Fn() -> bool,
    ) -> Result<(), NotWoken> {
        let addr = word as *const AtomicU32 as usize;
        let node = Node::<()>::new();
        let q = self.queue(addr);
        {
            let mut g = q.lock();
            // Counted before the word is read (module docs): the SeqCst
            // fence pairs with the waker's. (SeqCst accesses alone would
            // do by the C++ model, which loom models only through fences;
            // this is the slow path, so the fence costs little.)
            self.waiters.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if word.load(Ordering::SeqCst) != expected {
                self.waiters.fetch_sub(1, Ordering::Relaxed);
                return Err(NotWoken::Changed);
            }
            g.push(Entry {
                addr,
                node: node.ptr(),
            });
        }
        let notified = loop {
            if node.is_notified() {
                node.settle();
                break true;
            }
            if stop() || deadline.is_some_and(|d| crate::time::expired(Some(d))) {
                break false;
            }
            park(deadline);
        };
        let r = if notified {
            Ok(())
        } else {
            let mut g = q.lock();
            match g.iter().position(|e| e.node.is(&node)) {
                Some(i) => {
                    // Still queued: no waker can reach the node any more.
                    g.remove(i);
                    drop(g);
                    Err(if stop() {
                        NotWoken::Stopped
                    } else {
                        NotWoken::TimedOut
                    })
                }
                None => {
                    // A waker popped it just now: wait until it is done.
                    drop(g);
                    node.settle();
                    Ok(())
                }
            }
        };
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        r
    }

    /// Wakes up to `max` waiters queued on `addr`, oldest first; returns
    /// how many. Call after changing the word.
    pub(crate) fn wake(&self, addr: usize, max: usize) -> usize {
        if !self.may_have_waiters() {
            return 0;
        }
        let mut woken = Wakers::default();
        let mut n = 0;
        {
            let mut g = self.queue(addr).lock();
            let mut i = 0;
            while i < g.len() && n < max {
                if g[i].addr == addr {
                    let e = g.remove(i);
                    // SAFETY: popped under its queue's lock just now; the
                    // waiter follows the node protocol (`wait` leaves only
                    // after `DONE`, or after taking this lock and finding
                    // its entry still queued).
                    woken.push(unsafe { e.node.notify(None) });
                    n += 1;
                } else {
                    i += 1;
                }
            }
        }
        woken.wake();
        n
    }

    /// Forgets every waiter, and every queue's lock: in a child forked
    /// while some waited, where none of them exists (a wake would pick a
    /// parent's coroutine instead of the child's), nor does a thread that
    /// held a queue's lock at the fork. The queues' old vectors leak (one
    /// may have been half grown); no allocation.
    ///
    /// # Safety
    ///
    /// Only in a forked child before it starts a thread (a
    /// `pthread_atfork` child handler).
    #[cfg_attr(greenstack_loom, allow(dead_code))]
    pub(crate) unsafe fn forget_all_after_fork(&self) {
        self.waiters.store(0, Ordering::Relaxed);
        for q in &self.queues {
            // SAFETY: the caller's contract; `Vec::new` does not allocate.
            unsafe { q.reset_after_fork(Vec::new()) };
        }
    }
}
