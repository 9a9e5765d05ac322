//! Two sleep tokens: a coroutine parking on its worker, and a helper
//! thread (the watchdog, the trimmer) sleeping until it is needed. Both are
//! modeled with loom (`scheduler/tests/loom_park.rs`). Workers sleep in
//! their driver's `epoll_wait` instead (see `idle.rs` and
//! `scheduler/tests/loom_idle.rs`).
//!
//! # Coroutine park/unpark ([`ParkState`])
//!
//! A token, as `std::thread::park` has, in one atomic byte:
//!
//! 1. `park()` in the coroutine first tries `NOTIFIED -> EMPTY`: a token left
//!    by an earlier `unpark` is consumed and park returns at once.
//! 2. Otherwise the coroutine suspends with a park request. Only after the
//!    switch, on the worker's stack, does the scheduler call
//!    [`ParkState::commit_park`]: `EMPTY -> PARKED`. The coroutine is fully
//!    suspended by then, so whoever sees `PARKED` may schedule it.
//! 3. `unpark()` from any thread: `EMPTY -> NOTIFIED` leaves a token (the
//!    coroutine is running, or between steps 1 and 2, and will see it);
//!    `PARKED -> EMPTY` makes the caller responsible for scheduling it, once.
//! 4. If an `unpark` lands between the suspend and `commit_park`, the CAS in
//!    step 2 finds `NOTIFIED`; the scheduler clears it and requeues the
//!    coroutine itself. No wake-up is lost, and none schedules it twice.
//! 5. A finished coroutine is `DONE`; unparking it does nothing.
//!
//! # Helper thread sleep ([`Parker`])
//!
//! A mutex-protected token and a condvar: `unpark` sets the token and
//! notifies; `park` waits until the token is set and clears it. An `unpark`
//! that comes before `park` is kept, so a wake-up sent just before the
//! sleep is not missed.

use crate::loom::sync::atomic::{AtomicU8, Ordering};
use crate::loom::sync::{Condvar, Mutex};

const EMPTY: u8 = 0;
const PARKED: u8 = 1;
const NOTIFIED: u8 = 2;
const DONE: u8 = 3;

/// A coroutine's park token (see the module docs).
#[derive(Debug)]
pub(crate) struct ParkState(AtomicU8);

impl ParkState {
    /// A running coroutine with no token.
    pub(crate) fn new() -> ParkState {
        ParkState(AtomicU8::new(EMPTY))
    }

    /// Step 1: consumes a pending token. True if there was one.
    pub(crate) fn take_token(&self) -> bool {
        // A plain load first: most parks find no token, and a failing CAS
        // is still a locked instruction. A token arriving just after the
        // load is found by `commit_park` (step 4).
        if self.0.load(Ordering::Relaxed) != NOTIFIED {
            return false;
        }
        // Acquire: pairs with the Release in `unpark`, so what the unparker
        // wrote before unparking is visible once park returns.
        self.0
            .compare_exchange(NOTIFIED, EMPTY, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Step 2, on the worker after the coroutine suspended. True if it is now
    /// parked; false if a token arrived meanwhile and it must be requeued.
    pub(crate) fn commit_park(&self) -> bool {
        // AcqRel: Release pairs with the Acquire in `unpark` (the suspended
        // state is published before anyone may schedule it); Acquire pairs
        // with the Release in `unpark` on the failure path below.
        match self
            .0
            .compare_exchange(EMPTY, PARKED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(NOTIFIED) => {
                self.0.store(EMPTY, Ordering::Relaxed);
                false
            }
            Err(other) => unreachable!("commit_park in state {other}"),
        }
    }

    /// Step 3. True if the caller must now schedule the coroutine.
    pub(crate) fn unpark(&self) -> bool {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (new, schedule) = match cur {
                EMPTY => (NOTIFIED, false),
                PARKED => (EMPTY, true),
                _ => return false, // NOTIFIED already, or DONE
            };
            // AcqRel: Release publishes the unparker's writes to the
            // coroutine; Acquire pairs with `commit_park`'s Release.
            match self
                .0
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return schedule,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Whether the coroutine is parked (no unpark since `commit_park`).
    pub(crate) fn is_parked(&self) -> bool {
        self.0.load(Ordering::Acquire) == PARKED
    }

    /// Ends a park from the parked side (its deadline passed): `PARKED ->
    /// EMPTY`. False if an unpark got there first (it schedules the
    /// coroutine itself).
    pub(crate) fn cancel_park(&self) -> bool {
        self.0
            .compare_exchange(PARKED, EMPTY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the coroutine has finished (step 5).
    #[cfg_attr(greenstack_loom, allow(dead_code))]
    pub(crate) fn is_done(&self) -> bool {
        self.0.load(Ordering::Acquire) == DONE
    }

    /// Step 5: the coroutine has finished.
    pub(crate) fn finish(&self) {
        self.0.store(DONE, Ordering::Release);
    }
}

/// A worker's sleep token (see the module docs).
#[derive(Debug)]
pub(crate) struct Parker {
    notified: Mutex<bool>,
    cvar: Condvar,
}

impl Parker {
    pub(crate) fn new() -> Parker {
        Parker {
            notified: Mutex::new(false),
            cvar: Condvar::new(),
        }
    }

    /// Sleeps until a token is available, then consumes it. (Workers sleep
    /// in their driver; this is the protocol loom checks.)
    #[cfg_attr(not(greenstack_loom), allow(dead_code))]
    pub(crate) fn park(&self) {
        let mut n = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        while !*n {
            n = self.cvar.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n = false;
    }

    /// Sleeps until a token is available or `timeout` passes; consumes the
    /// token if there is one.
    #[cfg(not(greenstack_loom))]
    pub(crate) fn park_timeout(&self, timeout: std::time::Duration) {
        let mut n = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        if !*n {
            n = self
                .cvar
                .wait_timeout(n, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *n = false;
    }

    /// Leaves a token and wakes the sleeper, if any.
    pub(crate) fn unpark(&self) {
        let mut n = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        *n = true;
        drop(n);
        self.cvar.notify_one();
    }
}
