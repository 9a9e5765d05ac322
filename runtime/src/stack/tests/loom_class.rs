//! loom models of a size class's pool (`stack/class.rs`): deferred trims and
//! the trimmer's pass, a deferred slot taken by an allocation, trims racing
//! a fresh allocation, and a magazine's slot flushed back while others
//! allocate and trim. They drive the production `Class` (real reservations
//! and system calls; the slot metadata and the pool's bookkeeping are loom
//! atomics through the shim).
//!
//! Run with:
//! `RUSTFLAGS="--cfg greenstack_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2 \
//!  cargo test -p greenstack-runtime --lib --release --target-dir target/loom loom_`

use std::sync::Arc;

use loom::thread;

use crate::loom::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use crate::stack::class::{Class, Geometry, GuardMode, Trimmer, DEFERRED};
use crate::stack::mmap::page_size;

/// A class of `capacity` slots of eight pages (a one-page guard, a
/// one-page top) with the `mprotect` fallback (any kernel), `pool_budget`
/// bytes of pooled excess, deferred trims and a trimmer whose wake-ups are
/// only counted (the models run its pass by hand).
fn class(capacity: usize, pool_budget: usize) -> Arc<Class> {
    let page = page_size();
    let class = Class::new(Geometry {
        stride: 8 * page,
        guard: page,
        initial_commit: page,
        retained_commit: page,
        max_step: 8 * page,
        pool_budget,
        scrub: false,
        defer_trim: true,
        capacity,
        mode: GuardMode::Mprotect,
    })
    .expect("reserving a class");
    let wakes = AtomicUsize::new(0);
    let _ = class
        .trimmer
        .set(std::sync::Arc::new(Trimmer::new(Box::new(move || {
            wakes.fetch_add(1, Relaxed);
        }))));
    Arc::new(class)
}

/// Grows live slot `i` by a fault two pages under its top, as the fault
/// handler would: the floor moves three pages down (excess over the
/// retained top: three pages).
fn grow(c: &Class, i: u32) {
    let top = c.slot_top(i as usize);
    c.grow(i as usize, top - 2 * page_size()).expect("growing");
    assert_eq!(floor(c, i), top - 4 * page_size());
}

/// A fresh slot, grown.
fn allocate_grown(c: &Class) -> u32 {
    let i = c.allocate().expect("a free slot");
    grow(c, i);
    i
}

/// What `Slot::drop` does for a slot the thread's magazine does not keep.
fn free(c: &Class, i: u32) {
    if c.retire(i) {
        c.release_deferred(i);
    } else {
        c.alloc.release(i);
    }
}

fn floor(c: &Class, i: u32) -> usize {
    c.metas[i as usize].floor.load(Relaxed)
}

/// The committed floor a trimmed slot keeps.
fn keep(c: &Class, i: u32) -> usize {
    c.slot_top(i as usize) - c.geo.retained_commit
}

/// Two releases defer their over-budget pages while the trimmer runs a
/// pass: whatever the interleaving, a slot left deferred is covered by a
/// pass still asked for (`trim_pending`), and the passes that follow trim
/// every deferred slot exactly once, leaving the pool's excess at zero.
#[test]
fn loom_deferred_trim_is_never_lost() {
    loom::model(|| {
        let c = class(2, 0);
        let a = allocate_grown(&c);
        let b = allocate_grown(&c);
        let c2 = Arc::clone(&c);
        let other = thread::spawn(move || free(&c2, b));
        let c3 = Arc::clone(&c);
        let trimmer = thread::spawn(move || {
            c3.trim_over_budget(&|| false);
        });
        free(&c, a);
        other.join().unwrap();
        trimmer.join().unwrap();
        for i in [a, b] {
            if c.metas[i as usize].pooled_excess.load(Relaxed) & DEFERRED != 0 {
                assert!(
                    c.trim_pending(),
                    "slot {i} is left deferred with no trimmer pass asked for"
                );
            }
        }
        while c.trim_pending() {
            c.trim_over_budget(&|| false);
        }
        for i in [a, b] {
            assert_eq!(c.metas[i as usize].pooled_excess.load(Relaxed), 0);
            assert_eq!(floor(&c, i), keep(&c, i), "slot {i} not trimmed");
        }
        assert_eq!(c.pool_excess.load(Relaxed), 0, "pool excess miscounted");
        assert_eq!(
            c.counters
                .bytes_reclaimed
                .load(std::sync::atomic::Ordering::Relaxed),
            2 * 3 * page_size() as u64,
            "a deferred excess was trimmed twice or never"
        );
    });
}

/// A deferred slot taken by an allocation while the trimmer's pass runs:
/// the allocation never gets it with its excess still committed (one of the
/// two trims it), and the trimmer never touches it once it is live.
#[test]
fn loom_deferred_slot_never_goes_live_with_its_excess() {
    loom::model(|| {
        let c = class(1, 0);
        let a = allocate_grown(&c);
        free(&c, a);
        assert!(c.trim_pending());
        let c2 = Arc::clone(&c);
        let trimmer = thread::spawn(move || {
            c2.trim_over_budget(&|| false);
        });
        assert_eq!(c.allocate().ok(), Some(a));
        assert_eq!(floor(&c, a), keep(&c, a), "a deferred excess went live");
        grow(&c, a);
        let grown = floor(&c, a);
        trimmer.join().unwrap();
        assert!(c.alloc.is_live(a), "the live slot reads as pooled");
        assert_eq!(floor(&c, a), grown, "the trimmer trimmed a live slot");
        assert_eq!(c.pool_excess.load(Relaxed), 0, "pool excess miscounted");
    });
}

/// Every kind of trim racing the allocation of a never-used slot (item 14
/// of issue 17, through the class): none claims the slot, so its committed
/// top keeps what the new owner wrote, and it stays live. At this level the
/// trims' own pre-checks (a floor of 0 means never set up) also keep them
/// off the slot, so the state byte alone is checked by
/// `loom_arena::loom_trim_never_claims_a_fresh_slot`.
#[test]
fn loom_trims_racing_a_fresh_allocation_leave_it_alone() {
    loom::model(|| {
        let c = class(1, usize::MAX / 4);
        let c2 = Arc::clone(&c);
        let trimmer = thread::spawn(move || {
            c2.trim_idle();
            c2.trim_idle();
            c2.reclaim_mappings();
        });
        let a = c.allocate().expect("a fresh slot");
        let byte = (c.slot_top(a as usize) - 1) as *mut u8;
        // SAFETY: the top page of a slot just handed out is committed
        // (read-write) and belongs to its owner, this thread.
        unsafe { byte.write_volatile(0xa5) };
        trimmer.join().unwrap();
        assert!(c.alloc.is_live(a), "the live slot reads as pooled");
        // SAFETY: as above; the slot is still ours.
        let now = unsafe { byte.read_volatile() };
        assert_eq!(now, 0xa5, "a trim discarded a live stack's top");
        assert_eq!(floor(&c, a), c.slot_top(a as usize) - c.geo.initial_commit);
    });
}

/// A magazine's life across threads: a thread retires its slot into its
/// magazine (live in the allocator, its excess counted in the pool) and
/// later flushes it to the shared pool, while another thread allocates and
/// the trimmer runs idle trims. The pool's count of excess always matches
/// the slots that are pooled, each pooled slot counts exactly the excess it
/// still holds (a trim that missed the count the magazine's owner wrote
/// would leave it counting pages already given back), and a slot the
/// allocation got is never trimmed under it.
#[test]
fn loom_magazine_flush_races_allocation_and_trim() {
    loom::model(|| {
        let c = class(2, usize::MAX / 4);
        let a = allocate_grown(&c);
        let c2 = Arc::clone(&c);
        let owner = thread::spawn(move || {
            // `Slot::drop` with room in the magazine: retired, kept.
            assert!(!c2.retire(a), "within budget, nothing is deferred");
            // The magazine is flushed (the thread sleeps or exits).
            c2.alloc.release(a);
        });
        let c3 = Arc::clone(&c);
        let trimmer = thread::spawn(move || {
            c3.trim_idle();
            c3.trim_idle();
        });
        let got = c.allocate().expect("two slots, at most one live");
        let before = floor(&c, got);
        owner.join().unwrap();
        trimmer.join().unwrap();
        assert_eq!(floor(&c, got), before, "a trim moved a live slot's floor");
        let pooled: usize = (0..2u32)
            .filter(|&i| !c.alloc.is_live(i))
            .map(|i| c.metas[i as usize].pooled_excess.load(Relaxed) & !DEFERRED)
            .sum();
        let live_excess: usize = (0..2u32)
            .filter(|&i| c.alloc.is_live(i))
            .map(|i| c.metas[i as usize].pooled_excess.load(Relaxed))
            .sum();
        assert_eq!(live_excess, 0, "a live slot still counts as pooled excess");
        for i in (0..2u32).filter(|&i| !c.alloc.is_live(i) && floor(&c, i) != 0) {
            assert_eq!(
                c.metas[i as usize].pooled_excess.load(Relaxed) & !DEFERRED,
                keep(&c, i) - floor(&c, i),
                "pooled slot {i} counts excess it does not hold"
            );
        }
        assert_eq!(
            c.pool_excess.load(Relaxed),
            pooled,
            "pool excess miscounted"
        );
    });
}
