//! A coroutine's life on its worker: started over its stack (steps 4 and
//! 5 of the run loop), resumed, and finished (stack back to the arena,
//! outcome announced to its joiner) or abandoned; and the stack checker
//! that runs after each resume.

use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::Ordering;

use corosensei::{CoroutineResult, Yielder};

use super::*;
use crate::scheduler::task::{NewTask, Stack};

/// Most spare `Running` allocations a worker keeps (see `Local::spare`):
/// about 11 KiB.
pub(super) const SPARE_RUNNING: usize = 64;

/// Ready coroutines from which a worker prefetches the next one's state
/// (see `Local::prefetch_next`): below that, as in a ping-pong, it is
/// still in cache.
const PREFETCH_READY: usize = 8;

/// Hints the CPU to bring the cache line at `addr` in. Never faults, on
/// any address.
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch hint reads nothing Rust can see and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// The stack checker: reports use past 1/2 (info) and 7/8 (warn) of the
/// reserve, once each per coroutine.
pub(super) fn check_stack(r: &Running) {
    let committed = r.gauge.committed();
    if committed == r.checked.get() {
        return;
    }
    r.checked.set(committed);
    let level = stack_level(committed, r.gauge.reserve());
    let reported = r.reported.get();
    if level <= reported {
        return;
    }
    r.reported.set(level);
    let (id, name) = (r.header.id.get(), r.header.name().unwrap_or("<unnamed>"));
    let reserve = r.gauge.reserve();
    if reported < 1 {
        tracing::info!(
            coroutine.id = id,
            coroutine.name = name,
            committed,
            reserve,
            "coroutine stack reached 1/2 of its reserve"
        );
    }
    if level == 2 {
        tracing::warn!(
            coroutine.id = id,
            coroutine.name = name,
            committed,
            reserve,
            "coroutine stack past 7/8 of its reserve"
        );
    }
}

/// 0 below half the reserve, 1 from half, 2 past 7/8. Growth doubles the
/// committed size, so "from half" (not "past half") is what a power-of-two
/// reserve reaches on its way up.
pub(super) fn stack_level(committed: usize, reserve: usize) -> u8 {
    if committed * 8 > reserve * 7 {
        2
    } else if committed * 2 >= reserve {
        1
    } else {
        0
    }
}

impl Local {
    /// Step 4: creates the coroutine here and runs it.
    pub(super) fn start(&self, task: NewTask) {
        let (header, stack, run) = task.into_parts();
        if self.cancelled_all.get() {
            header.request_cancel();
        }
        let slot = match stack {
            Stack::Ready(slot) => slot,
            Stack::AtStart(reservation) => {
                let slot = match reservation {
                    Some(r) => r.into_slot(&self.shared.arena),
                    None => Err(std::io::Error::other(
                        "the coroutine's stack was already taken",
                    )),
                };
                match slot {
                    Ok(mut slot) => {
                        slot.set_identity(header.id.get(), header.name());
                        slot
                    }
                    Err(e) => {
                        let msg = format!(
                            "greenstack: no stack for coroutine {} when it started: {e}",
                            header.id
                        );
                        contain(
                            "reporting a coroutine without a stack",
                            || tracing::error!(coroutine.id = header.id.get(), error = %e, "no stack for a coroutine that was to start"),
                        );
                        header.park.finish();
                        // Dropping the closure may panic; the worker must not.
                        // SAFETY: `header`, the task's reference, lives to the
                        // end of this function.
                        let failed =
                            catch_unwind(AssertUnwindSafe(|| unsafe { run.fail(Box::new(msg)) }));
                        drop_quietly(failed);
                        self.shared.counters.finished.add(1);
                        return;
                    }
                }
            }
        };
        let key = self.free_keys.borrow_mut().pop().unwrap_or_else(|| {
            let mut slab = self.slab.borrow_mut();
            slab.push(None);
            slab.len() - 1
        });
        // Worker counts and slab keys stay far below `u32::MAX - 1`: the
        // builder caps workers, and a key per live coroutine on one worker.
        header.home.store(self.index as u32, Ordering::Release);
        header.key.store(key as u32, Ordering::Release);
        // Coroutines of different workers never share a stack colour.
        let mut slot = slot;
        slot.set_colour(self.index);
        // SAFETY: the gauge goes into the same `Running` as the coroutine that
        // owns the slot, and is read only while that coroutine exists.
        let gauge = unsafe { slot.gauge() };
        let co = move || {
            Co::with_stack(slot, move |y: &Yielder<(), Request>, ()| {
                if let Some(r) = current_running() {
                    r.yielder.set(y);
                }
                // SAFETY: the task's `Running` (below) holds a reference to its
                // cell for as long as this coroutine exists.
                unsafe { run.run() }
            })
        };
        let place = self
            .spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Box::new(MaybeUninit::uninit()));
        let span = coroutine_span(&header);
        let running = Running::new(co, header, span, gauge, place);
        self.slab.borrow_mut()[key] = Some(running);
        self.count_started(1);
        self.resume(key);
    }

    /// Step 5: runs coroutine `key` until it suspends or returns.
    pub(super) fn resume(&self, key: usize) {
        self.resume_inline(key);
    }

    /// [`resume`](Self::resume), inlined into the run loop: each function
    /// return between the loop and the switch is one the CPU mispredicts
    /// after every switch back (its return-address predictor holds the
    /// coroutine's calls, not the loop's).
    #[inline(always)]
    pub(super) fn resume_inline(&self, key: usize) {
        let p: *const Running = match self.slab.borrow().get(key) {
            Some(Some(r)) => &**r,
            _ => return, // a stale key (cannot happen; harmless if it did)
        };
        // SAFETY: the box stays in the slab until `finish` below removes it;
        // only this thread touches the slab.
        let r = unsafe { &*p };
        let ws = self.ws();
        // This worker is their only writer: plain load and store, no
        // locked read-modify-write on every resume.
        bump(&ws.switches);
        ws.current
            .store(r.header.as_ptr().cast_mut(), Ordering::Release);
        if self.ready.borrow().len() >= PREFETCH_READY {
            self.prefetch_next();
        }
        let result = r.resume(p);
        ws.current.store(ptr::null_mut(), Ordering::Release);
        match result {
            CoroutineResult::Yield(req) => match req.asked() {
                Asked::Yield => self.ready.borrow_mut().push_back(key),
                Asked::Park(deadline) => {
                    if r.header.park.commit_park() {
                        bump(&ws.parks);
                        // The timer an earlier wait left armed moves to this
                        // wait's deadline, or goes (see `Driver::arm`). Most
                        // parks have neither (the call alone was 21
                        // instructions of a channel hand-off's 656).
                        let old = r.timer.take();
                        if old.is_some() || deadline.is_some() {
                            r.timer.set(self.driver.arm(old, deadline, &r.header));
                        }
                    } else {
                        self.ready.borrow_mut().push_back(key);
                    }
                }
                Asked::Abandon(why) => self.abandon(key, why),
            },
            CoroutineResult::Return(stored) => self.finish(key, stored),
        }
    }

    /// With many coroutines ready, the next one's `Running`, header and
    /// the top of its parked stack are likely cold: asks the CPU to fetch
    /// them while the current one runs. `perf record` of `tcp_echo
    /// workers=2 n=1000` put 3.4% of all samples on the first store after
    /// the switch into a coroutine (its cold stack); with this, 11.55 ->
    /// 11.15 µs per request (medians of 8, alternating; n=100: 9.84 ->
    /// 9.68).
    #[inline(never)]
    pub(super) fn prefetch_next(&self) {
        let ready = self.ready.borrow();
        let slab = self.slab.borrow();
        let running = |i: usize| match ready.get(i).map(|&k| slab.get(k)) {
            Some(Some(Some(r))) => Some(&**r),
            _ => None,
        };
        // Two steps, so no demand load waits on a miss: the one after next
        // only has its `Running` fetched; the next one's (fetched at the
        // previous resume) is read for its header and parked stack.
        if let Some(r) = running(1) {
            let at = r as *const Running as usize;
            for off in (0..std::mem::size_of::<Running>()).step_by(64) {
                prefetch(at + off);
            }
        }
        if let Some(r) = running(0) {
            prefetch(r.header.as_ptr() as usize);
            let sp = r.parked_sp.get();
            if sp != 0 {
                for off in (0..512).step_by(64) {
                    prefetch(sp.wrapping_sub(128).wrapping_add(off));
                }
            }
        }
    }

    /// Releases a finished coroutine: its slab entry, stack and header.
    /// `stored`: its cell holds an outcome to announce.
    pub(super) fn finish(&self, key: usize, stored: bool) {
        let running = self.slab.borrow_mut()[key].take();
        let Some(running) = running else { return };
        self.count_started(-1);
        running.header.park.finish();
        self.wait_for_watchdog();
        // Stack back to the arena first, then tell the joiner (the task
        // reference, taken out, keeps the cell alive for that).
        let (header, timer, place) = Running::dismantle(running);
        {
            let mut spare = self.spare.borrow_mut();
            if spare.len() < SPARE_RUNNING {
                spare.push(place);
            }
        }
        self.driver.disarm(timer, &header);
        self.free_keys.borrow_mut().push(key);
        self.shared.counters.finished.add(1);
        if stored {
            // Publishing drops the value of a detached coroutine and wakes a
            // joiner's waker: user code, which must not unwind the worker.
            // A panic there is reported and the worker goes on (std aborts
            // on "thread result panicked on drop"; a runtime of a million
            // coroutines should not die of one value's destructor).
            // SAFETY: the run stored an outcome and returned true, once.
            contain(
                "announcing a finished coroutine's result (its drop or the joiner's waker)",
                || unsafe { header.publish() },
            );
        }
        drop_quietly(header);
    }

    /// Gives up on started coroutine `key` at shutdown (see "Shutdown" in
    /// the module docs): reported, its joiner told `Cancelled`, its
    /// `Running` and stack leaked.
    #[cold]
    pub(super) fn abandon(&self, key: usize, why: &str) {
        let Some(running) = self.slab.borrow_mut()[key].take() else {
            return;
        };
        self.count_started(-1);
        // Later unparks (a waiter node on its stack may still be linked in
        // some queue) find it finished and do nothing.
        running.header.park.finish();
        self.driver.disarm(running.timer.take(), &running.header);
        let id = running.header.id;
        let name = running.header.name().unwrap_or("<unnamed>");
        contain("reporting an abandoned coroutine", || {
            tracing::error!(
                coroutine.id = id.get(),
                coroutine.name = name,
                "coroutine abandoned at shutdown: {why}; its stack and what it holds are leaked"
            )
        });
        // SAFETY: its body started (it is in the slab) and it is never
        // resumed again: its `Running` is leaked just below, once.
        contain("releasing an abandoned coroutine's joiner", || unsafe {
            running.header.abandon()
        });
        // Leaked whole: its stack (inside the corosensei coroutine) may
        // hold waiter nodes that queues still link, and its header keeps
        // the runtime's `Shared`, and so the arena mapping those stacks,
        // alive for good.
        std::mem::forget(running);
        self.shared.counters.finished.add(1);
    }

    /// Makes sure the watchdog is not reading a header we are about to free
    /// (see `watchdog.rs`).
    pub(super) fn wait_for_watchdog(&self) {
        let ws = self.ws();
        ws.current.store(ptr::null_mut(), Ordering::SeqCst);
        // The watchdog's read is a few instructions, but its thread may be
        // preempted inside it: spin, then yield (crossbeam's snooze).
        let backoff = crossbeam_utils::Backoff::new();
        while ws.watch_reading.load(Ordering::SeqCst) {
            backoff.snooze();
        }
    }
}
