//! Statistics counters that many threads bump without sharing a cache line.
//!
//! A single atomic counter bumped by every worker on every spawn turns into
//! a cache line bouncing between cores (measured: `fanout_fib` on 2 workers
//! spent about a quarter of its time in such counters). Each thread bumps
//! its own padded shard instead; reading sums the shards, which is exact
//! once the bumps have happened and cheap enough for `stats()`.
//!
//! The first [`SHARDS`] threads to bump a counter each own a shard outright:
//! only that thread ever writes it, so a bump is a plain load and store
//! (no `lock`-prefixed read-modify-write, which cost ~6 ns each and a spawn
//! made eight of them). Later threads share one extra shard and bump it
//! with `fetch_add`. Shard indices are never reused, so an exited thread's
//! shard keeps its count and no new thread writes it. No counter is bumped
//! from a signal handler, which could otherwise interrupt a load-store pair
//! on its own thread.
//!
//! Bumps are Release and sums Acquire (plain moves on x86-64): a reader
//! that sees a bump sees what its thread did before it. Counts derived as
//! a difference rely on it (`Shared::live`: spawned less finished, where a
//! coroutine's spawn happens before its finish).

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Number of owned shards; threads beyond it share the last shard.
const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's shard: `< SHARDS` if it owns one, else `SHARDS`.
#[inline]
fn shard() -> usize {
    SHARD.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_SHARD.fetch_add(1, Ordering::Relaxed).min(SHARDS);
        s.set(v);
        v
    })
}

/// A counter split across cache-padded shards.
pub(crate) struct Sharded {
    shards: [CachePadded<AtomicI64>; SHARDS + 1],
}

impl Default for Sharded {
    fn default() -> Self {
        Sharded {
            shards: std::array::from_fn(|_| CachePadded::new(AtomicI64::new(0))),
        }
    }
}

impl Sharded {
    /// Adds `n` (may be negative) on the calling thread's shard.
    #[inline]
    pub(crate) fn add(&self, n: i64) {
        let s = shard();
        let cell = &self.shards[s];
        if s < SHARDS {
            // This thread is the shard's only writer (module docs).
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Release,
            );
        } else {
            cell.fetch_add(n, Ordering::Release);
        }
    }

    /// The sum over all shards.
    pub(crate) fn sum(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .fold(0i64, i64::wrapping_add)
    }

    /// The sum, as an unsigned count (never below zero).
    pub(crate) fn get(&self) -> u64 {
        self.sum().max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// More threads than owned shards, all bumping at once: the owners'
    /// plain stores and the sharers' `fetch_add`s lose nothing.
    #[test]
    fn concurrent_bumps_from_owners_and_sharers_all_count() {
        let c = Arc::new(Sharded::default());
        let threads: Vec<_> = (0..2 * SHARDS + 3)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add(2);
                        c.add(-1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.sum(), (2 * SHARDS as i64 + 3) * 10_000);
    }
}
