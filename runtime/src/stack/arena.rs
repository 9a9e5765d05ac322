//! The slot allocator: which slot indices are live, pooled or never used.
//!
//! This file holds only atomics and indices, no system calls, so that loom can
//! explore it (`stack/tests/loom_arena.rs`). The memory behind a slot is the
//! business of `stack/class.rs`.
//!
//! # The protocol
//!
//! A slot index is in exactly one of three places:
//!
//! 1. **never used**: `index >= fresh`. Allocation bumps `fresh` with a CAS
//!    that refuses to pass `capacity`.
//! 2. **pooled**: on the free list, a Treiber stack threaded through `next`.
//!    The head word packs a 32-bit ABA tag with `index + 1` (0 means empty);
//!    every push and pop bumps the tag, so a pop whose view of `next[index]`
//!    went stale fails its CAS and retries.
//! 3. **live**: handed out, owned by exactly one `Slot`.
//!
//! The free list is LIFO so the slot released last, whose pages are warmest,
//! is reused first.
//!
//! The bug this protocol exists to rule out is the one of the microkernel
//! allocator in `shared/seeds`: a claim that is not yet visible to a
//! concurrent allocator, so the same slot is handed out twice. Here a claim is
//! the CAS itself, on the head word or on `fresh`; there is no window between
//! choosing a slot and publishing the choice.
//!
//! # Exhaustion is exact
//!
//! `allocate` reports [`Exhausted`] only after observing, in order: the free
//! list empty with tag `t`, `fresh == capacity`, and the free list still empty
//! with tag `t`. The tag changes on every push and pop, so nothing entered or
//! left the list between the first and last reads; `fresh` never decreases.
//! So at the moment `fresh` was read, every slot was live.
//!
//! # Trimming pooled slots
//!
//! A pooled slot may have its pages given back while it sits on the list. The
//! trimmer claims it with a CAS on its state byte, `POOLED -> TRIMMING`; an
//! allocator that pops a slot being trimmed waits (one `madvise`, bounded) for
//! `TRIMMING -> POOLED` before it may take it with `POOLED -> LIVE`.
//!
//! A never-used slot's state byte reads `UNUSED`, not `POOLED`, so the
//! trimmer's CAS cannot claim it. Otherwise (as before issue 17, item 14)
//! this interleaving reset a live slot to pooled:
//!
//! 1. an allocator bumps `fresh` past slot `i` (state still the initial
//!    value);
//! 2. a trimmer reads `fresh > i`, and its CAS takes the initial value for
//!    `POOLED`: it now holds `i` for trimming;
//! 3. the allocator stores `LIVE` and hands `i` out;
//! 4. the trimmer's `end_trim` stores `POOLED` over `LIVE`, and gives back
//!    the pages of a running stack if it trimmed first.
//!
//! The `fresh` check in `begin_trim` is only a fast path; the state byte
//! alone decides.

use crossbeam_utils::CachePadded;

use crate::loom::hint::backoff;
use crate::loom::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// State byte: never handed out (the zeroed arrays start here). Left only
/// by the `fresh` bump's `UNUSED -> LIVE`; never returns.
const UNUSED: u8 = 0;
/// State byte: owned by one `Slot`.
const LIVE: u8 = 1;
/// State byte: pooled, and a trimmer is giving its pages back right now.
const TRIMMING: u8 = 2;
/// State byte: on the free list (or about to be pushed), free to take.
const POOLED: u8 = 3;

/// The head word's index half: `index + 1`, or 0 for an empty list.
const INDEX_MASK: u64 = 0xffff_ffff;

/// The slots of a class not yet promised to anyone (see `stack::take_credit`):
/// a count that threads take from only while it stays non-negative, so no
/// more than `capacity` slots and reservations exist at once. A take is one
/// CAS of the count from `c` to `c - n` with `n <= c`; a give is an add.
pub(crate) struct Credits {
    count: CachePadded<AtomicUsize>,
}

impl Credits {
    /// `capacity` credits, all free.
    pub(crate) fn new(capacity: usize) -> Credits {
        Credits {
            count: CachePadded::new(AtomicUsize::new(capacity)),
        }
    }

    /// Takes up to `want` credits; how many it got (0: none is free).
    pub(crate) fn take(&self, want: usize) -> usize {
        // Relaxed: the count orders nothing else; a credit is a number, and
        // the slot a credit is turned into is claimed by the allocator's
        // own CAS.
        let mut c = self.count.load(Ordering::Relaxed);
        loop {
            let n = c.min(want);
            if n == 0 {
                return 0;
            }
            match self
                .count
                .compare_exchange_weak(c, c - n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return n,
                Err(now) => c = now,
            }
        }
    }

    /// Gives back `n` credits taken before.
    pub(crate) fn give(&self, n: usize) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// Free credits now.
    #[cfg(greenstack_loom)]
    pub(crate) fn free(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// No slot is free: every one of `capacity` slots is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exhausted;

/// Hands out slot indices `0..capacity` to any thread, and takes them back
/// from any thread.
pub(crate) struct SlotAllocator {
    /// Packed `(tag << 32) | (index + 1)` of the free list's top; low half 0
    /// when the list is empty.
    /// Padded (as is `fresh`): every thread that allocates or releases
    /// writes it, and the fields read on each allocation must not share its
    /// cache line.
    head: CachePadded<AtomicU64>,
    /// `next[i]`: the entry below pooled slot `i`, as `index + 1` (0 ends the
    /// list). Only meaningful while `i` is on the list.
    next: Box<[AtomicU32]>,
    /// One of `UNUSED`, `LIVE`, `POOLED`, `TRIMMING` per slot.
    state: Box<[AtomicU8]>,
    /// Slots `fresh..capacity` have never been handed out.
    fresh: CachePadded<AtomicU32>,
    /// How many slots exist; at most `u32::MAX - 1` so `index + 1` fits.
    capacity: u32,
}

/// How an allocation was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// A slot that was used before and sat in the pool.
    Pooled(u32),
    /// A slot never handed out before: its memory needs setting up.
    Fresh(u32),
}

impl Claim {
    /// The slot's index, however it was found.
    pub(crate) fn index(self) -> u32 {
        match self {
            Claim::Pooled(i) | Claim::Fresh(i) => i,
        }
    }
}

impl SlotAllocator {
    /// An allocator of `capacity` slots, all never used.
    ///
    /// # Panics
    ///
    /// If `capacity` is `u32::MAX` or more (the caller validates first).
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(
            capacity < u32::MAX as usize,
            "slot capacity {capacity} too large"
        );
        SlotAllocator {
            head: CachePadded::new(AtomicU64::new(0)),
            next: zeroed_u32s(capacity),
            state: zeroed_u8s(capacity),
            fresh: CachePadded::new(AtomicU32::new(0)),
            capacity: capacity as u32,
        }
    }

    /// How many slots have ever been handed out (pooled or live now).
    pub(crate) fn touched(&self) -> usize {
        self.fresh.load(Ordering::Acquire) as usize
    }

    /// Takes a slot: the most recently released one if any, else a fresh one.
    pub(crate) fn allocate(&self) -> Result<Claim, Exhausted> {
        loop {
            // Acquire: pairs with the Release CAS in `release`, so the
            // releasing thread's writes to the slot (and `next[i]`) are
            // visible before we use them.
            let head = self.head.load(Ordering::Acquire);
            let top = (head & INDEX_MASK) as u32;
            if top != 0 {
                let index = top - 1;
                let below = self.next[index as usize].load(Ordering::Relaxed);
                let new = tagged(head, below);
                if self
                    .head
                    .compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.take(index);
                    return Ok(Claim::Pooled(index));
                }
                continue;
            }
            match self.bump() {
                Some(index) => {
                    // Nobody else may claim the index: the trimmer's CAS
                    // wants `POOLED`, and `UNUSED` is not it.
                    let prev = self.state[index as usize].swap(LIVE, Ordering::Relaxed);
                    debug_assert_eq!(prev, UNUSED, "fresh slot {index} was already used");
                    return Ok(Claim::Fresh(index));
                }
                None => {
                    // Exhausted only if the list stayed empty with the same
                    // tag across the read of `fresh` (see module docs).
                    if self.head.load(Ordering::Acquire) == head {
                        return Err(Exhausted);
                    }
                }
            }
        }
    }

    /// Puts a live slot back on the free list.
    ///
    /// The caller must own `index` (it came from `allocate` and was not
    /// released since); releasing twice is a bug and trips a debug assertion.
    pub(crate) fn release(&self, index: u32) {
        let prev = self.state[index as usize].swap(POOLED, Ordering::Release);
        debug_assert_eq!(prev, LIVE, "slot {index} released while not live");
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            self.next[index as usize].store((head & INDEX_MASK) as u32, Ordering::Relaxed);
            // Release: pairs with the Acquire load in `allocate`.
            match self.head.compare_exchange_weak(
                head,
                tagged(head, index + 1),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Claims pooled slot `index` for trimming. Returns false if it is live,
    /// never used, or already being trimmed. A true return must be followed by
    /// `end_trim(index)`.
    pub(crate) fn begin_trim(&self, index: u32) -> bool {
        // A fast path only (slots past `fresh` read `UNUSED`, which the CAS
        // below refuses anyway).
        if index >= self.fresh.load(Ordering::Acquire) {
            return false;
        }
        // Acquire: pairs with the Release swap in `release`, so the releasing
        // thread's bookkeeping for the slot is visible to the trimmer.
        self.state[index as usize]
            .compare_exchange(POOLED, TRIMMING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Ends a trim begun by `begin_trim`.
    pub(crate) fn end_trim(&self, index: u32) {
        // Release: pairs with the Acquire CAS in `take`, so the trimmer's
        // bookkeeping is visible to whoever allocates the slot next.
        let prev = self.state[index as usize].swap(POOLED, Ordering::Release);
        debug_assert_eq!(prev, TRIMMING);
    }

    /// Whether `index` is live right now.
    pub(crate) fn is_live(&self, index: u32) -> bool {
        index < self.capacity && self.state[index as usize].load(Ordering::Acquire) == LIVE
    }

    /// Marks a just-popped slot live, waiting out a trim in progress (one
    /// `madvise`; spinning first, then yielding the thread, as the trimmer
    /// may be a thread the OS preempted mid-trim).
    fn take(&self, index: u32) {
        let state = &self.state[index as usize];
        let mut round = 0u32;
        loop {
            match state.compare_exchange_weak(POOLED, LIVE, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return,
                Err(s @ (LIVE | UNUSED)) => {
                    unreachable!("slot {index} popped from the free list in state {s}")
                }
                Err(_) => {
                    backoff(round);
                    round = round.saturating_add(1);
                }
            }
        }
    }

    /// Claims the lowest never-used index, or `None` at capacity.
    fn bump(&self) -> Option<u32> {
        let mut fresh = self.fresh.load(Ordering::Relaxed);
        loop {
            if fresh >= self.capacity {
                return None;
            }
            match self.fresh.compare_exchange_weak(
                fresh,
                fresh + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(fresh),
                Err(actual) => fresh = actual,
            }
        }
    }
}

/// The head word after a push or pop: tag bumped, index half replaced.
fn tagged(head: u64, index_plus_one: u32) -> u64 {
    let tag = (head >> 32).wrapping_add(1) & INDEX_MASK;
    (tag << 32) | index_plus_one as u64
}

/// `n` zeroed atomics. Under std the allocation comes from `calloc`, so a
/// million-slot allocator costs no resident memory until slots are used.
#[cfg(not(greenstack_loom))]
fn zeroed_u32s(n: usize) -> Box<[AtomicU32]> {
    let v = vec![0u32; n].into_boxed_slice();
    let raw = Box::into_raw(v) as *mut [AtomicU32];
    // SAFETY: `AtomicU32` has the same size, alignment and bit validity as
    // `u32` (documented on the type), so a boxed `[u32]` is a valid boxed
    // `[AtomicU32]` of the same length, allocated with the same layout.
    unsafe { Box::from_raw(raw) }
}

/// `n` zeroed atomics (see `zeroed_u32s`).
#[cfg(not(greenstack_loom))]
fn zeroed_u8s(n: usize) -> Box<[AtomicU8]> {
    let v = vec![0u8; n].into_boxed_slice();
    let raw = Box::into_raw(v) as *mut [AtomicU8];
    // SAFETY: `AtomicU8` has the same size, alignment and bit validity as
    // `u8`, so the cast keeps the allocation's layout and contents valid.
    unsafe { Box::from_raw(raw) }
}

#[cfg(greenstack_loom)]
fn zeroed_u32s(n: usize) -> Box<[AtomicU32]> {
    (0..n).map(|_| AtomicU32::new(0)).collect()
}

#[cfg(greenstack_loom)]
fn zeroed_u8s(n: usize) -> Box<[AtomicU8]> {
    (0..n).map(|_| AtomicU8::new(0)).collect()
}

#[cfg(all(test, not(greenstack_loom)))]
mod tests {
    use super::*;

    #[test]
    fn lifo_reuse_then_exhaustion() {
        let a = SlotAllocator::new(3);
        assert_eq!(a.allocate(), Ok(Claim::Fresh(0)));
        assert_eq!(a.allocate(), Ok(Claim::Fresh(1)));
        a.release(0);
        a.release(1);
        assert_eq!(a.allocate(), Ok(Claim::Pooled(1)));
        assert_eq!(a.allocate(), Ok(Claim::Pooled(0)));
        assert_eq!(a.allocate(), Ok(Claim::Fresh(2)));
        assert_eq!(a.allocate(), Err(Exhausted));
        a.release(2);
        assert_eq!(a.allocate(), Ok(Claim::Pooled(2)));
    }

    #[test]
    fn trim_claims_only_pooled_slots() {
        let a = SlotAllocator::new(2);
        assert!(!a.begin_trim(0), "never-used slot is not trimmable");
        let i = a.allocate().unwrap().index();
        assert!(!a.begin_trim(i), "live slot is not trimmable");
        a.release(i);
        assert!(a.begin_trim(i));
        assert!(
            !a.begin_trim(i),
            "a slot is trimmed by one trimmer at a time"
        );
        a.end_trim(i);
        assert_eq!(a.allocate(), Ok(Claim::Pooled(i)));
        assert!(a.is_live(i));
    }
}
