//! One size class of the arena: a reservation cut into slots of one stride,
//! the per-slot metadata the fault handler reads, and the memory side of
//! allocation, growth and reclaim.
//!
//! ```text
//!  class base (≡ 1 MiB mod 2 MiB)                                  base + capacity·stride
//!  │ slot 0                      │ slot 1                      │ …
//!  ├──────┬────────────┬──────┬──┼──────┬──────────────────────┤
//!  │ hard │ unmarked   │ band │██│ hard │ …                    │
//!  │guard │ (RW, never │(mark-│██│guard │                      │
//!  │      │  touched)  │ ers) │██│      │                      │
//!  └──────┴────────────┴──────┴──┴──────┴──────────────────────┘
//!  slot_base         floor-band floor top = slot_base + stride
//!                                  ██ committed: [floor, top)
//! ```
//!
//! With guard markers, the reservation is mapped read-write chunk by chunk,
//! and what must fault carries markers: the hard guard, and a band of
//! [`BAND`] bytes below the committed floor (the whole ungrown zone for
//! reserves up to the band's size). Rust's stack probes touch frames page by
//! page, so a growing stack always meets the band before anything below it.
//! With the fallback, the reservation stays `PROT_NONE` and committing is
//! `mprotect`.
//!
//! The pool's trim bookkeeping (deferred trims, the trimmer's pass, idle
//! trims, slots retired into a thread's magazine) is loom-modeled in
//! `stack/tests/loom_class.rs`, through the shim's atomics.
//!
//! Slot tops sit 1 MiB past a 2 MiB boundary, so a slot's top page, the band
//! under it and the next slot's hard guard share one 2 MiB region and one
//! page-table page (DESIGN.md, "Page tables are part of the cost").

use std::io;
#[cfg(not(greenstack_loom))]
use std::ptr::NonNull;
// The slot metadata and the pool's trim bookkeeping use the loom shim, so
// the models in `stack/tests/loom_class.rs` explore them; statistics and
// the chunk map stay on std's atomics (they order nothing the models check).
use crate::loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::atomic::{AtomicU64 as StdAtomicU64, AtomicUsize as StdAtomicUsize};

use crate::loom::sync::Mutex;
use once_cell::sync::OnceCell;

use super::arena::{Claim, Credits, Exhausted, SlotAllocator};
use super::mmap;

/// Bytes of guard markers kept below the committed floor in marker mode.
///
/// 256 KiB: deep enough that no Rust frame, and no sane C frame, steps over
/// it; small enough that a slot's top page, the band and the neighbour's
/// hard guard fit one 2 MiB page-table region (top ≡ 1 MiB mod 2 MiB).
pub(crate) const BAND: usize = 256 * 1024;

/// Most bytes below a growth fault that the growth populates at once (see
/// `Class::grow`; never more than the stack already held, so at most that
/// much memory is charged ahead of use, a few times per coroutine since
/// growth quadruples the commit). `deep_stack` in `benches/compare` (1,000
/// coroutines × 256 KiB, where the kernel's page faults are most of the
/// time) went from 142–149 to 127–138 ms in alternating runs (Go: 130–133);
/// a fixed 64 KiB gave 138–147.
pub(crate) const POPULATE_AHEAD: usize = 128 * 1024;

/// How the ungrown part of a slot is made to fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    /// Guard markers (`MADV_GUARD_INSTALL`, Linux 6.13+): one mapping for the
    /// whole arena.
    Markers,
    /// `PROT_NONE` plus `mprotect`: works on any kernel, but each live stack
    /// costs two mappings, so `vm.max_map_count` caps live stacks.
    Mprotect,
}

/// What the fault handler and the allocator know about one slot. All zero
/// means "never set up"; the array is an anonymous mapping ([`Metas`]), so
/// untouched slots cost no resident memory.
///
/// One cache line per slot: at 56 bytes, neighbouring slots shared lines,
/// and slots in different workers' magazines are often neighbours, so every
/// spawn and finish (identity stores, `pooled_excess`) bounced a line
/// between CPUs.
#[repr(C, align(64))]
pub(crate) struct SlotMeta {
    /// Lowest committed address: `[floor, top)` is committed. 0 until the
    /// slot's memory is set up. Written by the owner and by the fault handler
    /// on the owner's thread; read by stats from anywhere.
    pub(crate) floor: AtomicUsize,
    /// The most bytes this slot has had committed, across reuse.
    pub(crate) high_water: AtomicUsize,
    /// Coroutine id, for the overflow report (0: none).
    pub(crate) id: AtomicU64,
    /// Name bytes for the overflow report: a leaked `Box<str>` owned by the
    /// live `Slot` (freed by `Slot::drop_name`).
    pub(crate) name_ptr: AtomicUsize,
    /// Length of the name at `name_ptr`.
    pub(crate) name_len: AtomicUsize,
    /// Committed bytes beyond the retained top that this pooled slot adds to
    /// the class's `pool_excess`, with [`DEFERRED`] set if they took the
    /// pool over budget and wait for the trimmer. 0 while live.
    pub(crate) pooled_excess: AtomicUsize,
    /// The class's trim epoch when this slot was last released.
    pub(crate) released_epoch: AtomicU64,
}

/// Arena-wide knobs a class needs, already validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Bytes per slot, a power of two; the reserve including the hard guard.
    pub(crate) stride: usize,
    /// Hard guard at the bottom of each slot, page multiple.
    pub(crate) guard: usize,
    /// Committed top of a fresh slot, page multiple.
    pub(crate) initial_commit: usize,
    /// Committed top a pooled slot keeps, page multiple, >= initial.
    pub(crate) retained_commit: usize,
    /// Most bytes one growth fault commits.
    pub(crate) max_step: usize,
    /// Pooled committed bytes beyond retained tops before release trims.
    pub(crate) pool_budget: usize,
    /// Zero a reused slot's committed stack before handing it out.
    pub(crate) scrub: bool,
    /// Leave over-budget trims to a background trimmer, when one is set.
    pub(crate) defer_trim: bool,
    /// Number of slots.
    pub(crate) capacity: usize,
    /// How the ungrown zone faults.
    pub(crate) mode: GuardMode,
}

/// Counters, bumped by normal code and by the fault handler (atomics only).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) growth_faults: StdAtomicU64,
    pub(crate) bytes_grown: StdAtomicU64,
    pub(crate) bytes_reclaimed: StdAtomicU64,
    pub(crate) committed: StdAtomicUsize,
    /// Slots live now. The pooled ones are the rest of those ever handed
    /// out (`Class::pooled`): one counter bumped per allocation and per
    /// release, not two.
    pub(crate) live: crate::counter::Sharded,
    pub(crate) violations: StdAtomicU64,
}

/// One size class.
pub(crate) struct Class {
    /// Validated geometry.
    pub(crate) geo: Geometry,
    /// First slot's base address.
    pub(crate) base: usize,
    /// The whole reservation, for `munmap`.
    reservation: (usize, usize),
    /// Per-slot metadata, `capacity` entries.
    pub(crate) metas: Metas,
    /// Which slots are live or pooled.
    pub(crate) alloc: SlotAllocator,
    /// Slots `0..mapped` lie in chunks already made read-write (marker mode).
    mapped: StdAtomicUsize,
    /// Slots set up in `mprotect` mode, whose mappings this class holds
    /// from the process's budget (`mmap::claim_slot_mappings`) until it is
    /// unmapped.
    mapped_slots: StdAtomicUsize,
    /// Serializes chunk mapping (rare: once per [`CHUNK_BYTES`]).
    chunk_lock: Mutex<()>,
    /// Sum of `pooled_excess` over pooled slots.
    pub(crate) pool_excess: crossbeam_utils::CachePadded<AtomicUsize>,
    /// Bumped by each `trim_idle`.
    epoch: AtomicU64,
    /// Statistics.
    pub(crate) counters: Counters,
    /// Slots not promised to anyone: `capacity` less the live slots, the
    /// reservations of coroutines that have not started, and the credits
    /// threads hold for their next ones (see `stack::take_credit`).
    pub(crate) credits: Credits,
    /// Set when the arena is dropped: threads stop caching its slots.
    pub(crate) closed: std::sync::atomic::AtomicBool,
    /// Wakes the background thread that trims the pool back under budget
    /// (`trim_over_budget`); unset, release trims at once.
    pub(crate) trimmer: OnceCell<std::sync::Arc<Trimmer>>,
    /// A release left the pool over budget for the trimmer to mend.
    trim_wanted: AtomicBool,
}

/// The link to a runtime's background trimmer, shared by its arena's
/// classes; see [`Class::trimmer`].
pub(crate) struct Trimmer {
    wake: Box<dyn Fn() + Send + Sync>,
    /// Cleared when the trimmer thread ends: releases then trim at once.
    alive: std::sync::atomic::AtomicBool,
}

impl Trimmer {
    /// A link whose trimmer `wake` wakes.
    pub(crate) fn new(wake: Box<dyn Fn() + Send + Sync>) -> Trimmer {
        Trimmer {
            wake,
            alive: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Whether the trimmer still runs.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// The trimmer thread is ending. A release racing with this may still
    /// defer; its slot is trimmed by its next allocation, an idle trim, or
    /// the arena's unmapping.
    pub(crate) fn stop(&self) {
        self.alive.store(false, Ordering::Release);
    }

    fn wake(&self) {
        (self.wake)();
    }
}

/// Fewest slots a class falls back to when the address space refuses its
/// reservation (see [`Class::new`]).
const MIN_FALLBACK_CAPACITY: usize = 64;

/// Smallest capacity for which threads keep magazines of warm slots: 4,096
/// (32 slots per thread is then at most 0.8% of it).
pub(crate) const MAGAZINE_MIN_CAPACITY: usize = 4096;

/// Bit of `SlotMeta::pooled_excess`: the slot's excess took the pool over
/// budget and is left for the trimmer (or the next allocation) to give
/// back. A flag bit, so the one load that takes the excess takes the flag
/// too.
pub(crate) const DEFERRED: usize = 1 << (usize::BITS - 1);

/// `released_epoch` of a pooled slot whose pages `trim_idle` already gave
/// back (so later trims skip it until it is used again).
const IDLE_TRIMMED: u64 = u64::MAX;

/// Bytes of reservation made read-write at a time in marker mode.
const CHUNK_BYTES: usize = 64 << 20;

/// Why a growth fault could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrowError {
    /// `madvise`/`mprotect` failed (errno).
    Os(i32),
}

impl Class {
    /// Reserves address space for a class and sets up its bookkeeping.
    ///
    /// A reservation the address space cannot take (an `RLIMIT_AS` limit,
    /// `ulimit -v`, or valgrind, whose address space manager refuses the
    /// default 256 GiB) is retried at half the capacity, down to
    /// [`MIN_FALLBACK_CAPACITY`] slots, rather than failing every spawn; a
    /// class that had to shrink says so in a `tracing` warning, and its
    /// exhaustion error names the capacity it got.
    pub(crate) fn new(mut geo: Geometry) -> io::Result<Class> {
        const TWO_MIB: usize = 2 << 20;
        let wanted = geo.capacity;
        let (raw, len) = loop {
            let len = geo
                .capacity
                .checked_mul(geo.stride)
                .and_then(|l| l.checked_add(2 * TWO_MIB))
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "arena too large"))?;
            match mmap::reserve(len) {
                Ok(raw) => break (raw, len),
                Err(e)
                    if geo.capacity > MIN_FALLBACK_CAPACITY
                        && matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EINVAL)) =>
                {
                    geo.capacity = (geo.capacity / 2).max(MIN_FALLBACK_CAPACITY);
                }
                Err(e) => return Err(e),
            }
        };
        if geo.capacity < wanted {
            tracing::warn!(
                slot_kib = geo.stride >> 10,
                wanted,
                capacity = geo.capacity,
                "the address space refused the stack arena's reservation: this size class has fewer slots"
            );
        }
        // First slot top ≡ 1 MiB (mod 2 MiB); tops are base + k·stride, and
        // for strides under 2 MiB the offset is harmless.
        let want = TWO_MIB / 2;
        let top0 = raw + geo.stride;
        let shift = (want + TWO_MIB - top0 % TWO_MIB) % TWO_MIB;
        let base = raw + shift;
        Ok(Class {
            geo,
            base,
            reservation: (raw, len),
            metas: Metas::new(geo.capacity).inspect_err(|_| {
                // SAFETY: the reservation was made above and nothing uses it.
                let _ = unsafe { mmap::unmap(raw, len) };
            })?,
            alloc: SlotAllocator::new(geo.capacity),
            mapped: StdAtomicUsize::new(0),
            mapped_slots: StdAtomicUsize::new(0),
            chunk_lock: Mutex::new(()),
            pool_excess: crossbeam_utils::CachePadded::new(AtomicUsize::new(0)),
            epoch: AtomicU64::new(0),
            counters: Counters::default(),
            credits: Credits::new(geo.capacity),
            closed: std::sync::atomic::AtomicBool::new(false),
            trimmer: OnceCell::new(),
            trim_wanted: AtomicBool::new(false),
        })
    }

    /// The address range the handler attributes to this class.
    pub(crate) fn span(&self) -> (usize, usize) {
        (self.base, self.base + self.geo.capacity * self.geo.stride)
    }

    /// Lowest address of slot `index` (its hard guard).
    pub(crate) fn slot_base(&self, index: usize) -> usize {
        self.base + index * self.geo.stride
    }

    /// One past the highest address of slot `index`.
    pub(crate) fn slot_top(&self, index: usize) -> usize {
        self.slot_base(index) + self.geo.stride
    }

    /// Lowest address that may ever be committed in slot `index`.
    pub(crate) fn zone_bottom(&self, index: usize) -> usize {
        self.slot_base(index) + self.geo.guard
    }

    /// Takes a slot and makes sure its top is committed.
    pub(crate) fn allocate(&self) -> io::Result<u32> {
        let claim = self.alloc.allocate().map_err(|Exhausted| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "stack arena exhausted: all {} slots of {} KiB are live or cached by other threads (raise the arena's capacity)",
                    self.geo.capacity,
                    self.geo.stride / 1024
                ),
            )
        })?;
        let index = claim.index();
        let meta = &self.metas[index as usize];
        if let Claim::Pooled(_) = claim {
            self.unpool_excess(index as usize);
            if let Err(e) = self.scrub(index as usize) {
                self.alloc.release(index);
                return Err(e);
            }
        }
        if meta.floor.load(Ordering::Relaxed) == 0 {
            if let Err(e) = self.set_up(index as usize) {
                // Give the index back unset; the next taker retries set-up.
                self.alloc.release(index);
                return Err(e);
            }
        }
        self.counters.live.add(1);
        Ok(index)
    }

    /// Slots pooled now (in the shared pool or a thread's magazine): those
    /// ever handed out, less the live ones. The live count is read first,
    /// Acquire: an allocation whose bump it sees took its fresh index
    /// before, so the difference is never below zero; it may count a slot
    /// being handed out as pooled for a moment (a statistic only).
    pub(crate) fn pooled(&self) -> u64 {
        let live = self.counters.live.get();
        (self.alloc.touched() as u64).saturating_sub(live)
    }

    /// First use of a slot: map its chunk, guard its zone, commit its top.
    fn set_up(&self, index: usize) -> io::Result<()> {
        let g = &self.geo;
        let top = self.slot_top(index);
        let floor = top - g.initial_commit;
        let zb = self.zone_bottom(index);
        match g.mode {
            GuardMode::Markers => {
                self.map_chunk_for(index)?;
                mmap::check_injected(mmap::Fault::GuardInstall)?;
                let band_lo = floor.saturating_sub(BAND).max(zb);
                // SAFETY: the slot is ours (just claimed, never set up), its
                // chunk is read-write, and it holds no data yet.
                unsafe {
                    if band_lo == zb {
                        mmap::guard_install(self.slot_base(index), floor - self.slot_base(index))?;
                    } else {
                        mmap::guard_install(self.slot_base(index), g.guard)?;
                        mmap::guard_install(band_lo, floor - band_lo)?;
                    }
                }
            }
            GuardMode::Mprotect => {
                mmap::check_injected(mmap::Fault::GuardInstall)?;
                // The two mappings the committed top costs come out of the
                // process's budget first, so the stacks never take the
                // mappings malloc and thread stacks need (`MapBudget`).
                mmap::claim_slot_mappings()?;
                // SAFETY: the top of our own freshly claimed slot, inside the
                // class reservation, holding no data.
                if let Err(e) = unsafe { mmap::protect(floor, top - floor, true) } {
                    mmap::unclaim_slot_mappings(1);
                    return Err(map_limit_error(e));
                }
                self.mapped_slots.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.counters
            .committed
            .fetch_add(top - floor, Ordering::Relaxed);
        let meta = &self.metas[index];
        meta.high_water.fetch_max(top - floor, Ordering::Relaxed);
        meta.floor.store(floor, Ordering::Release);
        Ok(())
    }

    /// Makes the chunk holding slot `index` read-write (marker mode).
    fn map_chunk_for(&self, index: usize) -> io::Result<()> {
        // Acquire: pairs with the Release store below, so a slot under
        // `mapped` is known to be read-write.
        if index < self.mapped.load(Ordering::Acquire) {
            return Ok(());
        }
        let _held = self.chunk_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mapped = self.mapped.load(Ordering::Acquire);
        if index < mapped {
            return Ok(());
        }
        let per_chunk = (CHUNK_BYTES / self.geo.stride).max(1);
        let end = ((index / per_chunk) + 1) * per_chunk;
        let end = end.min(self.geo.capacity);
        mmap::check_injected(mmap::Fault::ChunkMap)?;
        let lo = self.slot_base(mapped);
        let hi = self.slot_base(end);
        // SAFETY: `[lo, hi)` is inside our reservation and has never been
        // handed out (it lies at or beyond `mapped`).
        unsafe { mmap::protect(lo, hi - lo, true) }?;
        self.mapped.store(end, Ordering::Release);
        Ok(())
    }

    /// Takes back a slot that `retire` left in a thread's magazine: the
    /// pooled-slot half of `allocate`, without touching the shared free list.
    ///
    /// # Errors
    ///
    /// If scrubbing fails; the slot then goes back to the shared pool.
    pub(crate) fn reuse_retired(&self, index: u32) -> io::Result<()> {
        self.unpool_excess(index as usize);
        if let Err(e) = self.scrub(index as usize) {
            self.alloc.release(index);
            return Err(e);
        }
        self.counters.live.add(1);
        Ok(())
    }

    /// A pooled slot is being taken (by an allocation, which holds it live,
    /// or by a trim, which holds it claimed): its excess leaves the pool's
    /// count. If the trimmer has not reached it yet, it is trimmed now, so a
    /// deferred excess never goes live with a new coroutine (the budget
    /// bounds what pooled slots hold, and a deferral only delays the trim).
    fn unpool_excess(&self, index: usize) {
        let meta = &self.metas[index];
        // The caller holds the slot (live or claimed for trimming), so no
        // one else writes its excess (the trimmer's pass only reads it): a
        // plain load and store, no locked swap.
        let excess = meta.pooled_excess.load(Ordering::Relaxed);
        if excess == 0 {
            return;
        }
        meta.pooled_excess.store(0, Ordering::Relaxed);
        self.pool_excess
            .fetch_sub(excess & !DEFERRED, Ordering::Relaxed);
        if excess & DEFERRED != 0 {
            self.trim(index);
        }
    }

    /// With scrubbing on, discards the committed pages of a slot about to be
    /// reused, so the next coroutine reads zeros, never its predecessor's
    /// data. One `madvise(MADV_DONTNEED)`; the pages fault back in as zero
    /// pages on first touch (`benches/stack_alloc.rs` measures the cost).
    fn scrub(&self, index: usize) -> io::Result<()> {
        if !self.geo.scrub {
            return Ok(());
        }
        let floor = self.metas[index].floor.load(Ordering::Acquire);
        if floor == 0 {
            return Ok(()); // never set up: nothing was ever written
        }
        let top = self.slot_top(index);
        // SAFETY: the slot is ours (just claimed, not yet handed out) and
        // its committed range holds only a finished coroutine's dead stack.
        unsafe { mmap::discard(floor, top - floor) }
    }

    /// Slots a thread may keep retired in its magazine: 32 for arenas of at
    /// least [`MAGAZINE_MIN_CAPACITY`] slots, none for smaller ones. A slot
    /// in one thread's magazine is not available to another thread, so in a
    /// big arena up to 32 slots per thread (under 1% of the capacity) count
    /// as in use for exhaustion; small arenas, where that would show, keep
    /// exhaustion exact by caching nothing.
    pub(crate) fn magazine_size(&self) -> usize {
        if self.geo.capacity >= MAGAZINE_MIN_CAPACITY && !self.closed.load(Ordering::Relaxed) {
            32
        } else {
            0
        }
    }

    /// Readies a live slot for the pool, but leaves it claimed in the
    /// allocator: the caller either releases it there or keeps it in its
    /// thread's magazine (then `reuse_retired` takes it back).
    ///
    /// If the slot's pages take the pool over budget, they are trimmed now,
    /// or, with a live trimmer and `defer_trim` on, marked [`DEFERRED`] for
    /// the trimmer (or the slot's next allocation, whichever comes first):
    /// then this returns true, and the caller must release the slot to the
    /// shared pool, where the trimmer can claim it, and then call
    /// `request_trim`. Deferring keeps `madvise` and its TLB shootdowns off
    /// the path that finishes a coroutine.
    #[must_use = "a deferred slot must go to the shared pool"]
    pub(crate) fn retire(&self, index: u32) -> bool {
        let mut deferred = false;
        let meta = &self.metas[index as usize];
        meta.id.store(0, Ordering::Relaxed);
        meta.name_len.store(0, Ordering::Relaxed);
        meta.name_ptr.store(0, Ordering::Relaxed);
        let floor = meta.floor.load(Ordering::Relaxed);
        let keep = self.slot_top(index as usize) - self.geo.retained_commit;
        if floor != 0 && floor < keep {
            let excess = keep - floor;
            let before = self.pool_excess.fetch_add(excess, Ordering::Relaxed);
            if before + excess <= self.geo.pool_budget {
                meta.pooled_excess.store(excess, Ordering::Relaxed);
            } else if self.geo.defer_trim && self.trimmer.get().is_some_and(|t| t.is_alive()) {
                meta.pooled_excess
                    .store(excess | DEFERRED, Ordering::Relaxed);
                deferred = true;
            } else {
                self.pool_excess.fetch_sub(excess, Ordering::Relaxed);
                self.trim(index as usize);
            }
        }
        meta.released_epoch
            .store(self.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
        self.counters.live.add(-1);
        deferred
    }

    /// Releases a slot `retire` deferred to the shared pool, where the
    /// trimmer can claim it, then asks the trimmer for a pass.
    pub(crate) fn release_deferred(&self, index: u32) {
        self.alloc.release(index);
        self.request_trim();
    }

    /// Whether a release asked the trimmer for a pass not yet begun.
    pub(crate) fn trim_pending(&self) -> bool {
        self.trim_wanted.load(Ordering::Relaxed)
    }

    /// Wakes the trimmer for a slot `retire` deferred, once the slot is in
    /// the shared pool (so the pass it wakes can claim it).
    pub(crate) fn request_trim(&self) {
        // AcqRel: the release of the slot before this is visible to the
        // pass that clears the flag; a pass that cleared it earlier is
        // followed by a new one, as the swap then sees false and wakes.
        if !self.trim_wanted.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.trimmer.get() {
                t.wake();
            }
        }
    }

    /// The trimmer's pass, if a release asked for one: trims every pooled
    /// slot marked [`DEFERRED`], as their releases would have. A deferred
    /// slot allocated meanwhile was trimmed by its allocation; deferred
    /// slots never sit in a thread's magazine. `stop` is polled between
    /// slots (shutdown). Returns the bytes given back.
    pub(crate) fn trim_over_budget(&self, stop: &dyn Fn() -> bool) -> u64 {
        // Acquire: pairs with the AcqRel swap in `request_trim`.
        if !self.trim_wanted.swap(false, Ordering::Acquire) {
            return 0;
        }
        let before = self.counters.bytes_reclaimed.load(Ordering::Relaxed);
        for index in 0..self.alloc.touched() {
            let meta = &self.metas[index];
            if meta.pooled_excess.load(Ordering::Relaxed) & DEFERRED == 0 {
                continue;
            }
            if stop() {
                // Unfinished: the next pass (or allocation) takes the rest.
                self.trim_wanted.store(true, Ordering::Relaxed);
                break;
            }
            if self.alloc.begin_trim(index as u32) {
                self.unpool_excess(index);
                self.alloc.end_trim(index as u32);
            }
        }
        self.counters.bytes_reclaimed.load(Ordering::Relaxed) - before
    }

    /// Gives back everything below the retained top of slot `index`, which
    /// the caller owns exclusively (releasing it, or trimming it).
    fn trim(&self, index: usize) {
        let meta = &self.metas[index];
        let floor = meta.floor.load(Ordering::Relaxed);
        let keep = self.slot_top(index) - self.geo.retained_commit;
        if floor == 0 || floor >= keep {
            return;
        }
        let len = keep - floor;
        // SAFETY: the slot is exclusively ours and everything below its
        // retained top is dead stack; `[floor, keep)` is inside the slot.
        let done = unsafe {
            match self.geo.mode {
                GuardMode::Markers => mmap::guard_install(floor, len),
                GuardMode::Mprotect => {
                    mmap::discard(floor, len).and_then(|()| mmap::protect(floor, len, false))
                }
            }
        };
        if done.is_ok() {
            meta.floor.store(keep, Ordering::Release);
            self.counters.committed.fetch_sub(len, Ordering::Relaxed);
            self.counters
                .bytes_reclaimed
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        // On failure the pages simply stay committed: nothing is lost, and
        // the slot remains usable as it was.
    }

    /// Gives back the pages of slots that have sat in the pool since before
    /// the previous call: everything below the retained top is uncommitted,
    /// and the retained top's pages are discarded (it stays committed, so
    /// reuse takes no growth fault). Returns the bytes given back.
    pub(crate) fn trim_idle(&self) -> u64 {
        let now = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let before = self.counters.bytes_reclaimed.load(Ordering::Relaxed);
        for index in 0..self.alloc.touched() {
            let meta = &self.metas[index];
            let released = meta.released_epoch.load(Ordering::Relaxed);
            if released == IDLE_TRIMMED
                || released.saturating_add(2) > now
                || meta.floor.load(Ordering::Relaxed) == 0
            {
                continue;
            }
            if !self.alloc.begin_trim(index as u32) {
                continue;
            }
            self.unpool_excess(index);
            self.trim(index);
            // The retained top too: it stays committed (no growth fault on
            // reuse) but its pages go back, to fault in again as zeros.
            let top = self.slot_top(index);
            let keep = top - self.geo.retained_commit;
            // SAFETY: the slot is pooled and claimed for trimming; its stack
            // is dead.
            if unsafe { mmap::discard(keep, top - keep) }.is_ok() {
                self.counters
                    .bytes_reclaimed
                    .fetch_add((top - keep) as u64, Ordering::Relaxed);
            }
            meta.released_epoch.store(IDLE_TRIMMED, Ordering::Relaxed);
            self.alloc.end_trim(index as u32);
        }
        self.counters.bytes_reclaimed.load(Ordering::Relaxed) - before
    }

    /// With the `mprotect` fallback, gives back the mappings of this
    /// class's pooled slots: each one's committed stack is discarded and
    /// made inaccessible again, so it no longer splits the reservation, and
    /// its next allocation sets it up afresh. Called when the process's
    /// mapping budget is spent (`StackArena`'s allocation), so the slots
    /// one size class has pooled do not keep another from being set up.
    /// Returns how many slots gave theirs back.
    pub(crate) fn reclaim_mappings(&self) -> usize {
        if self.geo.mode != GuardMode::Mprotect {
            return 0;
        }
        let mut freed = 0;
        for index in 0..self.alloc.touched() {
            let meta = &self.metas[index];
            if meta.floor.load(Ordering::Relaxed) == 0 || !self.alloc.begin_trim(index as u32) {
                continue;
            }
            self.unpool_excess(index);
            let floor = meta.floor.load(Ordering::Relaxed);
            let top = self.slot_top(index);
            // SAFETY: the slot is pooled and claimed for trimming, so its
            // stack is dead; `[floor, top)` is its committed range.
            let done = floor != 0
                && unsafe {
                    mmap::discard(floor, top - floor)
                        .and_then(|()| mmap::protect(floor, top - floor, false))
                }
                .is_ok();
            if done {
                meta.floor.store(0, Ordering::Release);
                self.counters
                    .committed
                    .fetch_sub(top - floor, Ordering::Relaxed);
                self.counters
                    .bytes_reclaimed
                    .fetch_add((top - floor) as u64, Ordering::Relaxed);
                self.mapped_slots.fetch_sub(1, Ordering::Relaxed);
                mmap::unclaim_slot_mappings(1);
                freed += 1;
            }
            self.alloc.end_trim(index as u32);
        }
        freed
    }

    /// Grows live slot `index`, whose fault at `addr` lies in
    /// `[zone_bottom, floor)`, down past `addr`.
    ///
    /// Async-signal-safe: atomics and `madvise`/`mprotect` only. Called from
    /// the fault handler on the thread running the slot's coroutine, the only
    /// thread that moves its floor while it is live.
    pub(crate) fn grow(&self, index: usize, addr: usize) -> Result<(), GrowError> {
        let g = &self.geo;
        let page = mmap::page_size();
        let meta = &self.metas[index];
        let top = self.slot_top(index);
        let zb = self.zone_bottom(index);
        let floor = meta.floor.load(Ordering::Acquire);
        let committed = top - floor;
        // Geometric: grow by three times what is committed (so the commit
        // about quadruples), capped; see the module docs of `stack`.
        let step = (3 * committed).clamp(page, g.max_step.max(page)) & !(page - 1);
        let want = (addr & !(page - 1)).min(floor.saturating_sub(step));
        let new_floor = want.max(zb);
        let len = floor - new_floor;
        if mmap::injected(mmap::Fault::Grow) {
            return Err(GrowError::Os(libc::ENOMEM));
        }
        // SAFETY: `[new_floor, floor)` lies in this live slot's growable zone;
        // it holds no data (it was never committed). `mprotect` is not on
        // POSIX's async-signal-safe list, but on Linux it is a plain system
        // call that takes no user-space lock, as is `madvise`.
        let rc = unsafe {
            match g.mode {
                GuardMode::Markers => {
                    let rc = mmap::raw_guard_remove(new_floor, len);
                    let band_lo = new_floor.saturating_sub(BAND).max(zb);
                    let band_hi = floor.saturating_sub(BAND).max(zb).min(new_floor);
                    if rc == 0 && band_lo < band_hi {
                        mmap::raw_guard_install(band_lo, band_hi - band_lo)
                    } else {
                        rc
                    }
                }
                GuardMode::Mprotect => mmap::raw_protect(new_floor, len, true),
            }
        };
        if rc != 0 {
            return Err(GrowError::Os(errno()));
        }
        // Populate ahead: the pages just below the fault are the ones the
        // coroutine touches next, and one system call faults them in
        // together instead of one page fault each. As much as the stack
        // already held, up to `POPULATE_AHEAD`, so a coroutine that stops
        // right past the fault holds at most twice what it used. A failure
        // (EINVAL before Linux 5.14, or no memory) leaves the pages to
        // fault one by one.
        let fault_page = addr & !(page - 1);
        let ahead = POPULATE_AHEAD.min(committed);
        let pop_lo = fault_page.saturating_sub(ahead).max(new_floor);
        let pop_hi = (fault_page + page).min(floor);
        if pop_lo < pop_hi {
            // SAFETY: `[pop_lo, pop_hi)` lies in the range just committed
            // (read-write, guard removed), which holds no data: populating
            // writes nothing the coroutine can see (pages read as zero
            // either way). A plain system call, like the ones above.
            let _ =
                unsafe { mmap::raw_madvise(pop_lo, pop_hi - pop_lo, libc::MADV_POPULATE_WRITE) };
        }
        // Release: pairs with Acquire loads of `floor` in stats and in the
        // handler on later faults.
        meta.floor.store(new_floor, Ordering::Release);
        meta.high_water
            .fetch_max(top - new_floor, Ordering::Relaxed);
        self.counters.committed.fetch_add(len, Ordering::Relaxed);
        self.counters.growth_faults.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_grown
            .fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Class {
    fn drop(&mut self) {
        let (addr, len) = self.reservation;
        // SAFETY: the class is being dropped, so no slot of it is live (each
        // live `Slot` holds an `Arc` to it) and the fault handler no longer
        // finds it (the arena unregisters it first).
        if unsafe { mmap::unmap(addr, len) }.is_ok() {
            mmap::unclaim_slot_mappings(*self.mapped_slots.get_mut());
        }
    }
}

/// Turns ENOMEM from `mprotect` on the fallback into an error that names the
/// sysctl to raise.
fn map_limit_error(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ENOMEM) {
        let limit = mmap::max_map_count()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unknown".into());
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "cannot commit a coroutine stack: the kernel's mapping limit vm.max_map_count \
                 ({limit}) is reached (each live stack costs two mappings without guard markers); \
                 raise it with `sysctl -w vm.max_map_count=N` or use Linux 6.13+"
            ),
        )
    } else {
        e
    }
}

/// The calling thread's errno.
pub(crate) fn errno() -> i32 {
    // SAFETY: `__errno_location` returns this thread's errno slot, always
    // valid to read.
    unsafe { *libc::__errno_location() }
}

/// The per-slot metadata array in an anonymous mapping of its own:
/// page-aligned, so each [`SlotMeta`] gets its cache line, and zero-filled
/// by the kernel page by page on first touch. `calloc` with a 64-byte
/// alignment is `posix_memalign` plus a `memset` of the whole array (all of
/// a class's metadata resident as soon as the class is made), which is why
/// this is by hand.
#[cfg(not(greenstack_loom))]
pub(crate) struct Metas {
    ptr: NonNull<SlotMeta>,
    len: usize,
}

// SAFETY: `Metas` owns its mapping like a `Box<[SlotMeta]>`, and `SlotMeta`
// is all atomics, so sharing or sending the table is as safe as sharing or
// sending the slice.
#[cfg(not(greenstack_loom))]
unsafe impl Send for Metas {}
// SAFETY: as for `Send`.
#[cfg(not(greenstack_loom))]
unsafe impl Sync for Metas {}

#[cfg(not(greenstack_loom))]
impl Metas {
    /// `n` all-zero entries.
    fn new(n: usize) -> io::Result<Metas> {
        let bytes = n
            .checked_mul(std::mem::size_of::<SlotMeta>())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "arena too large"))?;
        if bytes == 0 {
            return Ok(Metas {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        let addr = mmap::map_zeroed(bytes)?;
        Ok(Metas {
            // `map_zeroed` never returns 0 on success.
            ptr: NonNull::new(addr as *mut SlotMeta).expect("mmap returned null"),
            len: n,
        })
    }
}

#[cfg(not(greenstack_loom))]
impl std::ops::Deref for Metas {
    type Target = [SlotMeta];

    fn deref(&self) -> &[SlotMeta] {
        // SAFETY: `ptr` is page-aligned (or dangling with `len` 0) and points
        // at `len` entries the mapping holds until drop; zero bytes are a
        // valid `SlotMeta` (all atomics), and nothing hands out `&mut`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

// `Metas` unmaps its entries without dropping them, which is right only
// while a `SlotMeta` needs no drop (it is all atomics).
#[cfg(not(greenstack_loom))]
const _: () = assert!(!std::mem::needs_drop::<SlotMeta>());

#[cfg(not(greenstack_loom))]
impl Drop for Metas {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: the mapping is ours (made in `new`) and `&mut self`
            // means no reference into it is left; its entries need no drop
            // (asserted at compile time above).
            let _ = unsafe {
                mmap::unmap(
                    self.ptr.as_ptr() as usize,
                    self.len * std::mem::size_of::<SlotMeta>(),
                )
            };
        }
    }
}

/// Under loom, the metadata are loom atomics, which must be made with
/// `new` (zeroed bytes are not one): a plain vector of fresh entries.
#[cfg(greenstack_loom)]
pub(crate) struct Metas(Box<[SlotMeta]>);

#[cfg(greenstack_loom)]
impl Metas {
    fn new(n: usize) -> io::Result<Metas> {
        Ok(Metas(
            (0..n)
                .map(|_| SlotMeta {
                    floor: AtomicUsize::new(0),
                    high_water: AtomicUsize::new(0),
                    id: AtomicU64::new(0),
                    name_ptr: AtomicUsize::new(0),
                    name_len: AtomicUsize::new(0),
                    pooled_excess: AtomicUsize::new(0),
                    released_epoch: AtomicU64::new(0),
                })
                .collect(),
        ))
    }
}

#[cfg(greenstack_loom)]
impl std::ops::Deref for Metas {
    type Target = [SlotMeta];

    fn deref(&self) -> &[SlotMeta] {
        &self.0
    }
}
