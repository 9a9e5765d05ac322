//! Balancing: where a spawn goes (`placement`), what an idle worker takes
//! from the others (stealing never-started tasks only: a started coroutine
//! stays on its worker), and what a busy worker gives away (rebalancing,
//! handing out a burst).

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_deque::{Injector, Steal};

use super::*;
use crate::scheduler::task::NewTask;
use crate::scheduler::WorkerShared;

/// Children a coroutine spawns before its spawns may be placed elsewhere
/// (see `Local::placement`).
const SPAWNER_CHILDREN: u32 = 16;

/// How much more load (started coroutines and queued tasks) than another
/// worker a worker may hold before a busy one takes some of its queued
/// tasks (see `Local::rebalance`).
const REBALANCE_MARGIN: usize = 8;

/// Queued tasks a worker's deque must hold before a busy worker takes some
/// to even out the load (see `Local::rebalance`): a burst, not fan-out.
const REBALANCE_QUEUE: usize = 64;

/// Most tasks one steal takes (crossbeam's own batch limit).
const STEAL_MAX: usize = 32;

/// Most tasks a worker hands from a burst in its deque to another worker
/// at one look (see `Local::hand_out_burst`).
const HAND_OUT_MAX: usize = 64;

/// A worker's load as stealing and hand-outs weigh it: started coroutines
/// (which stay there) plus tasks queued for it.
pub(super) fn load(w: &WorkerShared) -> usize {
    w.started.load(Ordering::Relaxed) + w.stealer.len() + w.incoming.len()
}

/// What `Local::stuck` compares of a worker: its switch count and the
/// lengths of its deque and incoming queue.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct WorkerState(u64, usize, usize);

impl WorkerState {
    pub(super) fn of(w: &WorkerShared) -> WorkerState {
        WorkerState(
            w.switches.load(Ordering::Relaxed),
            w.stealer.len(),
            w.incoming.len(),
        )
    }
}

impl Local {
    /// Where the calling coroutine's new child goes: `None` for this
    /// worker's deque, or the worker whose incoming queue takes it (this
    /// one included). Started coroutines never move, so a coroutine that
    /// spawns many long-lived ones (an accept loop) would keep them all
    /// here while other workers idle; and sending them to the injector, or
    /// to a deque an idle worker steals from, left the split to timing
    /// (measured: `tcp_echo n=1000` ended with 207/794 and 253/748
    /// connections on 2 workers). So such a spawner places each child on
    /// the least loaded worker itself, load being started coroutines plus
    /// tasks in its incoming queue, which only its worker takes from.
    ///
    /// "Such a spawner": one that accepted a connection since its previous
    /// spawn (`note_accept`), or one past [`SPAWNER_CHILDREN`] children
    /// (fib's fan-out keeps its locality) that suspended since its
    /// previous spawn. A burst of spawns without a suspension (a million
    /// short tasks, or a thousand clients started in a loop) goes to the
    /// local deque, where idle workers steal and busy ones rebalance
    /// (`rebalance`): placing each of `spawn_join`'s million children
    /// through the incoming queues cost 180 -> 320 ns per task.
    ///
    /// The accept counts apart from suspensions because an accept loop
    /// under a storm of connections (wrk opening 100 at once) finds each
    /// one pending and never suspends: as a burst, the first 16 and then
    /// whatever the other worker had not stolen stayed here, and
    /// `examples/hyper_server` under `wrk -c100` served 80 connections on
    /// one worker and 20 on the other (about 3,580 against 5,915 requests
    /// per connection in 4 s).
    pub(super) fn placement(&self) -> Option<usize> {
        let r = code_running()?;
        let n = r.children.get().wrapping_add(1);
        r.children.set(n);
        let resumes = r.resumes.get();
        let waited = r.resumes_at_spawn.replace(resumes) != resumes;
        if !r.accepted.replace(false) {
            if n <= SPAWNER_CHILDREN {
                return None;
            }
            if !waited {
                self.ws().burst.store(true, Ordering::Relaxed);
                return None;
            }
        }
        // Not `load`: counting deque lengths here sent half of a million
        // short children of a burst through the incoming queues.
        let placed = |w: &WorkerShared| w.started.load(Ordering::Relaxed) + w.incoming.len();
        let mine = placed(self.ws());
        Some(match self.least_loaded_other(placed) {
            Some((at, least)) if least < mine => at,
            _ => self.index,
        })
    }

    /// The other running worker with the least `load`, and that load (the
    /// first in index order on a tie).
    fn least_loaded_other(&self, load: impl Fn(&WorkerShared) -> usize) -> Option<(usize, usize)> {
        self.shared
            .workers
            .iter()
            .enumerate()
            .filter(|&(i, w)| i != self.index && w.running.load(Ordering::Acquire))
            .map(|(i, w)| (i, load(w)))
            .min_by_key(|&(_, l)| l)
    }

    /// Adds `delta` to this worker's count of started coroutines.
    pub(super) fn count_started(&self, delta: isize) {
        let c = &self.ws().started;
        // This worker is its only writer.
        c.store(
            c.load(Ordering::Relaxed).wrapping_add_signed(delta),
            Ordering::Relaxed,
        );
    }

    /// Takes tasks placed on this worker (see `placement`) or handed to it
    /// (`hand_out_burst`): a batch into the deque and one to start. They
    /// are this worker's share of the load, so the deque is then marked as
    /// holding a burst: an idle thief takes from it only what evens the
    /// loads (`steal_limit`). Without the mark, a thief took whole batches
    /// of connections an accept loop had placed here by load, and the
    /// split it had made (50/50 of 100 in
    /// `an_accept_loops_connections_spread_over_the_workers_under_a_storm`)
    /// ended 32/68 or 69/31 in some runs.
    pub(super) fn take_incoming(&self) -> Option<NewTask> {
        let incoming = &self.ws().incoming;
        if incoming.is_empty() {
            return None;
        }
        let t = self.batch_from(incoming);
        if !self.deque.is_empty() {
            self.ws().burst.store(true, Ordering::Relaxed);
        }
        t
    }

    pub(super) fn steal_injector(&self) -> Option<NewTask> {
        let t = self.batch_from(&self.shared.injector)?;
        self.shared.counters.steals.add(1);
        Some(t)
    }

    /// Takes a batch from `queue`: one task to start, the rest into this
    /// worker's deque.
    fn batch_from(&self, queue: &Injector<NewTask>) -> Option<NewTask> {
        loop {
            match queue.steal_batch_and_pop(&self.deque) {
                Steal::Success(t) => return Some(t),
                Steal::Empty => return None,
                Steal::Retry => {}
            }
        }
    }

    /// Steals from another worker. A worker's only queued task is left to
    /// it during a searcher's first [`SINGLE_GRACE`] spin rounds: it is
    /// most often the child its running coroutine is about to wait for or
    /// talk to, best run there (see `submit`).
    ///
    /// From a worker whose deque holds a burst (see `hand_out_burst`) it
    /// takes only while the victim's load exceeds its own, at most half the
    /// difference: started coroutines stay where they start, and a thief
    /// taking whole batches of long-lived children while their spawner was
    /// still spawning (each child parks at once, so the thief is idle
    /// again) ended up with nearly all of them: 183 of 200 in
    /// `a_burst_of_long_lived_children_spreads_over_the_workers`.
    pub(super) fn steal_others(&self) -> Option<NewTask> {
        self.steal_batch_from(|i, victim| self.steal_limit(i, victim))
            .or_else(|| self.steal_stuck_incoming())
    }

    /// Takes a batch from the incoming queue of a worker that is stuck
    /// (see `stuck`): tasks handed out or placed there wait for that
    /// worker alone otherwise, behind a coroutine that may never yield.
    fn steal_stuck_incoming(&self) -> Option<NewTask> {
        let n = self.shared.workers.len();
        for off in 1..n {
            let i = (self.index + off) % n;
            let victim = &self.shared.workers[i];
            if self.may_take_incoming(i, victim) {
                if let Some(t) = self.batch_from(&victim.incoming) {
                    self.shared.counters.steals.add(1);
                    return Some(t);
                }
            }
        }
        None
    }

    /// Whether this idle worker may take from worker `i`'s incoming queue:
    /// only from a stuck worker (see `stuck`).
    fn may_take_incoming(&self, i: usize, victim: &WorkerShared) -> bool {
        if victim.incoming.is_empty() {
            return false;
        }
        if self.stuck(i, victim) {
            return true;
        }
        self.left_work.set(true);
        false
    }

    /// Whether worker `i`, whose queued work this idle worker would
    /// otherwise leave alone, is stuck: its switch count and queue lengths
    /// have not changed for [`BURST_RECHECK`] (one coroutine holds it; a
    /// spawner still spawning changes its deque's length). Called while
    /// this worker spins and after each of its capped sleeps.
    pub(super) fn stuck(&self, i: usize, victim: &WorkerShared) -> bool {
        let now = WorkerState::of(victim);
        let mut seen = self.seen.borrow_mut();
        if seen.len() != self.shared.workers.len() {
            seen.resize(self.shared.workers.len(), None);
        }
        match seen[i] {
            Some((was, since)) if was == now => since.elapsed() >= BURST_RECHECK,
            _ => {
                seen[i] = Some((now, Instant::now()));
                false
            }
        }
    }

    /// How many tasks this idle worker may take from worker `i`'s deque
    /// (`None`: leave them).
    ///
    /// A burst is left to its worker once the loads are even, unless that
    /// worker is stuck (see `stuck`). A worker that leaves a burst sleeps
    /// at most [`BURST_RECHECK`], so a burst behind a coroutine that keeps
    /// its worker busy is still taken within about twice that time.
    fn steal_limit(&self, i: usize, victim: &WorkerShared) -> Option<usize> {
        let min_len = if self.steal_singles.get() { 1 } else { 2 };
        if victim.stealer.len() < min_len {
            return None;
        }
        if !victim.burst.load(Ordering::Relaxed) {
            return Some(STEAL_MAX);
        }
        let excess = load(victim).saturating_sub(load(self.ws()));
        if excess > 1 {
            return Some((excess / 2).min(STEAL_MAX));
        }
        if self.stuck(i, victim) {
            return Some(STEAL_MAX);
        }
        self.left_work.set(true);
        None
    }

    /// Takes a batch from the first other worker (in ring order) for which
    /// `limit` (given its index) gives the most tasks to take: one task to
    /// start, the rest into this worker's deque.
    fn steal_batch_from(
        &self,
        limit: impl Fn(usize, &WorkerShared) -> Option<usize>,
    ) -> Option<NewTask> {
        let n = self.shared.workers.len();
        for off in 1..n {
            let i = (self.index + off) % n;
            let victim = &self.shared.workers[i];
            let Some(limit) = limit(i, victim) else {
                continue;
            };
            loop {
                match victim
                    .stealer
                    .steal_batch_with_limit_and_pop(&self.deque, limit)
                {
                    Steal::Success(t) => {
                        self.shared.counters.steals.add(1);
                        return Some(t);
                    }
                    Steal::Empty => break,
                    Steal::Retry => {}
                }
            }
        }
        None
    }

    /// A busy worker's steal: takes a batch of never-started tasks from a
    /// worker whose load (started coroutines plus queued tasks) exceeds
    /// this one's by more than [`REBALANCE_MARGIN`]. Idle workers steal
    /// anyway; this is for a burst of long-lived spawns (1,000 client
    /// connections spawned in a loop) that lands on one worker's deque
    /// while the others are busy: without it the others took one batch
    /// when the burst began and never came back (`tcp_echo n=1000` ran
    /// 975 of 1,000 clients on one worker). Looked at every 32 ticks, and
    /// only at deques of [`REBALANCE_QUEUE`] or more tasks: fan-out such as
    /// fib keeps a few children queued whose parents wait for them, and
    /// taking those from a busy worker split parents from children (fib(25)
    /// on 2 workers went from 175 to 320 ns per task).
    pub(super) fn rebalance(&self) -> Option<NewTask> {
        let mine = load(self.ws());
        self.steal_batch_from(|_, victim| {
            (victim.stealer.len() >= REBALANCE_QUEUE && load(victim) > mine + REBALANCE_MARGIN)
                .then_some(STEAL_MAX)
        })
    }

    /// The pushing half of `rebalance`, for a burst of spawns (one
    /// coroutine spawning past [`SPAWNER_CHILDREN`] children without
    /// suspending) that is still queued here: when this worker's load
    /// exceeds the least loaded other worker's by more than
    /// [`REBALANCE_MARGIN`], hands it half the difference (at most half the
    /// deque, and at most [`HAND_OUT_MAX`] tasks) through its incoming
    /// queue, and wakes it. Should that worker be stuck in one coroutine,
    /// idle workers take them from there (`steal_stuck_incoming`).
    ///
    /// Pulling alone left the split to timing: an idle worker woken by the
    /// burst's second spawn took one batch of 32 if it woke in time, and
    /// none if it did not (a wake-up here can take longer than starting a
    /// hundred clients). `tcp_echo workers=2 n=100` began its clients
    /// 33/67 or 0/100 over the two workers in most runs; pinned for life,
    /// the pairs on the busier worker finished last (client finish times
    /// 1.2–2.5 s in one run) and the other worker idled meanwhile. With
    /// this hand-out every run printed began 50/50. Only bursts: handing
    /// out from fib's fan-out deque as well split parents from their
    /// children (fib(25) on 2 workers, 191 -> 262 ns per task).
    pub(super) fn hand_out_burst(&self) {
        let burst = &self.ws().burst;
        if !burst.load(Ordering::Relaxed) {
            return;
        }
        let len = self.deque.len();
        if len < 2 {
            burst.store(false, Ordering::Relaxed);
            return;
        }
        let mine = load(self.ws());
        let Some((to, least)) = self.least_loaded_other(load) else {
            return;
        };
        if mine <= least + REBALANCE_MARGIN {
            return;
        }
        let target = &self.shared.workers[to];
        let own = &self.ws().stealer;
        let mut moved = 0;
        // Oldest first, through this worker's own stealer: the owner's
        // `pop` takes the newest.
        while moved < ((mine - least) / 2).min(len / 2).min(HAND_OUT_MAX) {
            match own.steal() {
                Steal::Success(t) => {
                    if !push_shared(&self.shared, &target.incoming, t) {
                        return;
                    }
                    moved += 1;
                }
                Steal::Empty => break,
                Steal::Retry => {}
            }
        }
        if moved > 0 {
            self.shared.notify_worker(to);
        }
    }

    /// Whether other workers' deques hold tasks this worker may steal now
    /// (see `steal_others`).
    pub(super) fn others_have_tasks(&self) -> bool {
        let min_len = if self.steal_singles.get() { 1 } else { 2 };
        self.shared.workers.iter().enumerate().any(|(i, w)| {
            i != self.index
                && ((w.stealer.len() >= min_len && self.steal_limit(i, w).is_some())
                    || self.may_take_incoming(i, w))
        })
    }
}
