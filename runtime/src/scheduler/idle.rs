//! Which workers sleep, so a spawn wakes at most one of them and a remote
//! wake-up reaches the one it is for.
//!
//! A worker going to sleep `announce`s itself, issues a SeqCst fence and
//! re-checks every queue; a waker pushes work, issues a SeqCst fence and
//! reads the sleeper count. Of two such sequences at least one sees the
//! other's write, so a sleeper either finds the work or is found and woken.
//!
//! **Searching.** A worker that just woke counts itself in `searching`
//! until its next pick. A spawn that sees a searcher wakes nobody: the
//! searcher will find the work. This is the same Dekker pair: the searcher
//! decrements `searching` (SeqCst) before it announces itself and re-checks
//! the queues, and the spawner pushes before it reads `searching`. The last
//! searcher to find work wakes one more sleeper if work is still queued, so
//! a burst spreads to every worker without one wake-up per spawn (which
//! cost an eventfd write and a context switch each: `benches/rt_spawn.rs`).
//!
//! Modeled with loom (`scheduler/tests/loom_idle.rs`): this file, driven by
//! a copy of the worker's steps and a mock of the epoll sleep, with a spawn
//! or a remote wake-up racing a worker's decision to sleep; a task left
//! queued while every worker sleeps is reported as a deadlock.

use crate::loom::sync::atomic::{fence, AtomicUsize, Ordering};
use crate::loom::sync::{Mutex, MutexGuard};

/// The set of sleeping workers.
pub(crate) struct Idle {
    sleepers: Mutex<Vec<usize>>,
    /// `sleepers.len()`, readable without the lock.
    count: AtomicUsize,
    /// Workers woken and still looking for work.
    searching: AtomicUsize,
}

impl Idle {
    pub(crate) fn new(workers: usize) -> Idle {
        Idle {
            sleepers: Mutex::new(Vec::with_capacity(workers)),
            count: AtomicUsize::new(0),
            searching: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<usize>> {
        self.sleepers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Worker `w` is about to sleep: the caller re-checks every source of
    /// work after this returns, and sleeps only if it found none. Its last
    /// step is the sleeper's SeqCst fence (module docs).
    pub(crate) fn announce(&self, w: usize) {
        let mut s = self.lock();
        if !s.contains(&w) {
            s.push(w);
        }
        self.count.store(s.len(), Ordering::SeqCst);
        drop(s);
        fence(Ordering::SeqCst);
    }

    /// A worker woke and looks for work: spawns meanwhile need not wake
    /// anyone else (module docs).
    pub(crate) fn start_searching(&self) {
        self.searching.fetch_add(1, Ordering::SeqCst);
    }

    /// A searching worker's next pick is done. True if it was the last
    /// searcher (which, having found work, wakes another sleeper if work is
    /// still queued).
    pub(crate) fn stop_searching(&self) -> bool {
        self.searching.fetch_sub(1, Ordering::SeqCst) == 1
    }

    /// Takes one sleeper to wake, if any and if no worker is searching.
    /// Its first step is the waker's SeqCst fence (module docs), so a
    /// caller that just pushed work needs none of its own.
    pub(crate) fn pop_sleeper(&self) -> Option<usize> {
        fence(Ordering::SeqCst);
        if self.searching.load(Ordering::SeqCst) > 0 || self.count.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut s = self.lock();
        let w = s.pop();
        self.count.store(s.len(), Ordering::SeqCst);
        w
    }

    /// Takes worker `w` out of the sleepers. True if it was there (the
    /// caller then owes it a wake-up).
    pub(crate) fn remove_sleeper(&self, w: usize) -> bool {
        fence(Ordering::SeqCst);
        if self.count.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut s = self.lock();
        let found = s
            .iter()
            .position(|&x| x == w)
            .map(|i| s.swap_remove(i))
            .is_some();
        self.count.store(s.len(), Ordering::SeqCst);
        found
    }
}
