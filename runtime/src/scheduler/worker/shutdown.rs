//! A worker's part of the runtime's shutdown.
//!
//! A started coroutine is always suspended in `suspend_running` (in `switch.rs`), the one
//! place it switches out. Cancelling it is resuming it there with
//! `Header::cancelling` set, so it throws a `CancelUnwind` instead of
//! returning to its wait: the unwind runs its destructors on its own stack,
//! with every wait on the way taking its waiter out of its queue, and the
//! body's `catch_unwind` turns the payload into `Cancelled` for the
//! joiner. The worker does not drop suspended corosensei coroutines
//! (corosensei's forced unwind would re-throw at every switch, so a
//! destructor that waits could only spin or abort).
//!
//! 1. Drop the never-started tasks (deque, incoming queue, injector), so a
//!    destructor joining one hears `Cancelled` at once.
//! 2. Set `cancelling` on every started coroutine and make each runnable
//!    exactly once: a parked one by `cancel_park` (if an unpark got there
//!    first, it is already queued), a ready one is queued already.
//! 3. Run the ready queue and the inbox as usual. A destructor that waits
//!    while its cancellation unwinds (`cancel_in_flight`) really parks; the
//!    coroutine it waits for is being cancelled too, on this worker or
//!    another, and its wake-up arrives as any other. std's panic count of
//!    the thread stays raised while that coroutine is away (std counts per
//!    OS thread): the others are cancelled before any of their code runs,
//!    but once one has caught its cancellation, its coroutine-locals'
//!    destructors and its result's drop see `std::thread::panicking()`
//!    true too, and a std `MutexGuard` dropped there poisons its mutex.
//!    That is the price of letting destructors wait at shutdown; outside
//!    shutdown a coroutine may not switch while unwinding at all.
//! 4. When none is left, or `shutdown_timeout` passed, the remaining ones
//!    (still waiting, or having caught their cancellation
//!    `CANCEL_THROWS` times) are abandoned: reported, their joiners told
//!    `Cancelled`, their `Running` leaked with its stack. The leaked
//!    header holds the runtime's `Shared`, so the arena is never unmapped
//!    under a waiter node on a leaked stack that a queue still links.

use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

use super::*;
use crate::scheduler::task::TaskRef;

impl Local {
    /// A graceful shutdown's deadline passed: cancels every coroutine
    /// started here but the spared one (`Shared::cancel_all`); the ones
    /// started from now on are cancelled in `start`.
    #[cold]
    pub(super) fn cancel_all(&self) {
        self.cancelled_all.set(true);
        let spared = self.shared.cancel_spared.load(Ordering::SeqCst);
        let headers: Vec<TaskRef> = self
            .slab
            .borrow()
            .iter()
            .flatten()
            .map(|r| r.header.clone())
            .filter(|h| h.id.get() != spared)
            .collect();
        for h in headers {
            crate::cancel::request(&h);
        }
    }

    /// Step 6: see "Shutdown" in the module docs.
    pub(super) fn shut_down(&self) {
        // 1. Tasks that never ran.
        self.discard_queued();
        // 2. Every started coroutine, runnable once more, cancelling.
        for key in self.started_keys() {
            let slab = self.slab.borrow();
            let Some(Some(r)) = slab.get(key) else {
                continue;
            };
            r.header.set_cancelling();
            if r.header.park.cancel_park() {
                drop(slab);
                self.ready.borrow_mut().push_back(key);
            }
        }
        // 3. Run them until none is left or the time is up: in rounds of
        // what is ready at the start of each, so a coroutine that keeps
        // yielding (a destructor spinning on `yield_now`) cannot keep the
        // deadline, timers and I/O from being looked at.
        let deadline = Instant::now() + self.shared.shutdown_timeout;
        loop {
            // Spawns made meanwhile (by a destructor) never run.
            self.discard_queued();
            self.drain_inbox();
            let round = self.ready.borrow().len();
            for _ in 0..round {
                let next = self.ready.borrow_mut().pop_front();
                let Some(key) = next else { break };
                self.resume(key);
            }
            if self.slab.borrow().iter().all(Option::is_none) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if !self.ready.borrow().is_empty() {
                // Still busy: fire due timers and collect I/O, no sleep.
                self.driver.poll(&self.ws().driver, false);
                continue;
            }
            // Some wait in a destructor: sleep until a wake-up (announced as
            // a sleeper, so remote unparks wake us), I/O, a timer, or the
            // deadline.
            self.shared.idle.announce(self.index);
            fence(Ordering::SeqCst);
            if self.ws().inbox.is_empty() {
                self.driver.poll_at_most(&self.ws().driver, deadline - now);
            }
            self.shared.idle.remove_sleeper(self.index);
        }
        // 4. Whatever is left is abandoned.
        for key in self.started_keys() {
            self.abandon(key, "it was still waiting when the shutdown timeout passed");
        }
        self.discard_queued();
        self.ready.borrow_mut().clear();
        while !self.ws().inbox.is_empty() {
            let _ = self.ws().inbox.steal();
        }
        self.wait_for_watchdog();
    }

    /// The slab keys of the coroutines started here and not finished,
    /// collected first so the slab is not borrowed while each is handled.
    fn started_keys(&self) -> Vec<usize> {
        self.slab
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(k, r)| r.as_ref().map(|_| k))
            .collect()
    }

    /// Drops every never-started task this worker could take: its deque,
    /// its incoming queue and the injector (their joiners see
    /// `Cancelled`).
    fn discard_queued(&self) {
        while let Some(t) = self.deque.pop() {
            discard(&self.shared, t);
        }
        discard_all(&self.shared, &self.ws().incoming);
        discard_all(&self.shared, &self.shared.injector);
    }
}
