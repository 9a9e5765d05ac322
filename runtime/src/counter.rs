//! Statistics counters that many threads bump without sharing a cache line.
//!
//! A single atomic counter bumped by every worker on every spawn turns into
//! a cache line bouncing between cores (measured: `fanout_fib` on 2 workers
//! spent about a quarter of its time in such counters). Each thread bumps
//! its own padded shard instead; reading sums the shards, which is exact
//! once the bumps have happened and cheap enough for `stats()`.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Number of shards; threads beyond it share (still correct, just slower).
const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard() -> usize {
    SHARD.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
        s.set(v);
        v
    })
}

/// A counter split across cache-padded shards.
pub(crate) struct Sharded {
    shards: [CachePadded<AtomicI64>; SHARDS],
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
        self.shards[shard()].fetch_add(n, Ordering::Relaxed);
    }

    /// The sum over all shards.
    pub(crate) fn sum(&self) -> i64 {
        self.shards.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }

    /// The sum, as an unsigned count (never below zero).
    pub(crate) fn get(&self) -> u64 {
        self.sum().max(0) as u64
    }
}
