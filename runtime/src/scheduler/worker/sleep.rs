//! Step 3 of the run loop: an idle worker spins a little, announces itself
//! idle, re-checks every source of work and sleeps in epoll; the
//! searching state that keeps a burst of spawns from waking every sleeper.

use std::sync::atomic::Ordering;

use super::*;
use crate::stack;

/// Most rounds of 32 spin hints an idle worker checks its sources for before
/// it sleeps: about 50 µs on the machine the benches run on (an AMD EPYC
/// virtual machine, where a `pause` takes ~25 ns). How many it
/// spins adapts between [`MIN_SPIN_ROUNDS`] and this (see `Local::sleep`).
pub(super) const SPIN_ROUNDS: u32 = 64;

/// Fewest spin rounds of an idle worker (see `Local::sleep`): never fewer
/// than the grace during which it leaves another worker's only task alone.
const MIN_SPIN_ROUNDS: u32 = SINGLE_GRACE;

impl Local {
    /// Whether any source of work is non-empty (step 3's re-check).
    fn has_work(&self) -> bool {
        !self.ready.borrow().is_empty()
            || !self.deque.is_empty()
            || !self.ws().inbox.is_empty()
            || !self.ws().incoming.is_empty()
            || !self.shared.injector.is_empty()
            || self.others_have_tasks()
            || self.shared.shutdown.load(Ordering::Acquire)
    }

    /// Step 3: announce, re-check, sleep.
    pub(super) fn sleep(&self) {
        // Spin a little first: work that arrives within microseconds (a
        // producer spawning in a loop, a coroutine on another worker waking
        // one here) is then taken without the eventfd write and context
        // switch a sleep and wake-up cost (~5 µs).
        //
        // Only work handed over by other threads shows in the spin: I/O
        // readiness waits in epoll until the spin ends, and the spin takes
        // a core from whatever else runs on the machine (a load generator
        // on the same 2 cores: `perf record` of `examples/hyper_server`
        // under `wrk -c100` had 15% of its samples in this loop). So its
        // length adapts, between `MIN_SPIN_ROUNDS` and `SPIN_ROUNDS`: it
        // halves when a sleep ends with I/O alone, and doubles when the spin
        // finds work or a sleep ends with another thread's wake-up alone.
        // Under `wrk -t1 -c100` (8 alternating runs of 4 s, with a floor of
        // 2 rounds, since raised to the single-task grace) the server's CPU
        // per request went from 16.7 to 13.0 µs (hyper on tokio: 11.4) and
        // its median from 67k to 75k req/s (tokio: 73k); tcp_echo,
        // channel_pingpong and spawn_join with 2 workers did not move
        // beyond the machine's noise.
        self.left_work.set(false);
        let burst = &self.ws().burst;
        if self.deque.is_empty() && burst.load(Ordering::Relaxed) {
            // Idle with nothing queued: no burst is left here.
            burst.store(false, Ordering::Relaxed);
        }
        let rounds = self.spin_rounds.get();
        for round in 0..rounds {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
            self.steal_singles.set(round >= SINGLE_GRACE);
            if self.has_work() {
                self.spin_rounds.set((rounds * 2).min(SPIN_ROUNDS));
                return;
            }
        }
        self.steal_singles.set(true);
        // Announce, then the SeqCst fence (inside `announce`), then the
        // re-check: the sleeper's half of the Dekker pair in `idle.rs`.
        self.shared.idle.announce(self.index);
        self.left_work.set(false);
        let block = !self.has_work();
        if block {
            // Going to sleep: the stacks this worker holds back become
            // available to the others (and to idle trimming).
            stack::flush_thread_magazines();
        }
        // Sleeps in epoll until a wake-up, I/O or the next timer (or, having
        // left queued work to another worker, a recheck); without blocking,
        // still collects I/O that is ready.
        let polled = if block && self.left_work.get() {
            self.driver.poll_at_most(&self.ws().driver, BURST_RECHECK)
        } else {
            self.driver.poll(&self.ws().driver, block)
        };
        if block && polled.io != polled.wake_up {
            self.spin_rounds.set(if polled.io {
                (rounds / 2).max(MIN_SPIN_ROUNDS)
            } else {
                (rounds * 2).min(SPIN_ROUNDS)
            });
        }
        self.shared.idle.remove_sleeper(self.index);
        // Awake again: searching until the next pick finds work, so spawns
        // meanwhile need not wake anyone else.
        self.searching.set(true);
        self.shared.idle.start_searching();
    }

    /// Ends this worker's search. Having found work, the last searcher
    /// wakes another sleeper if work is still waiting, so a burst of spawns
    /// still reaches every worker, one wake-up at a time.
    pub(super) fn stop_searching(&self, found: bool) {
        if !self.searching.replace(false) {
            return;
        }
        let last = self.shared.idle.stop_searching();
        if found && last && (!self.deque.is_empty() || !self.shared.injector.is_empty()) {
            self.shared.notify_one();
        }
    }
}
