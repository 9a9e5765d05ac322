//! Deferred trimming, driven by hand: the arena gets a trimmer whose wake-up
//! only counts, and the test runs the trimmer's pass itself.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use corosensei::{Coroutine, CoroutineResult};

use crate::stack::{prepare_thread, Slot, StackArena, DEFAULT_INITIAL_COMMIT};

/// What a trimmed slot keeps committed.
const TOP: usize = DEFAULT_INITIAL_COMMIT;

/// Grows `slot` by recursing through about 100 KiB of stack, returns it.
fn grow(slot: Slot) -> Slot {
    #[inline(never)]
    fn dig(top: usize) -> usize {
        let pad = black_box([1u8; 1024]);
        if top - black_box(&pad) as *const _ as usize >= 100 << 10 {
            return pad[0] as usize;
        }
        dig(top) + pad[1] as usize
    }
    prepare_thread().unwrap();
    let top = slot.top();
    let mut co = Coroutine::with_stack(slot, move |_: &corosensei::Yielder<(), ()>, ()| dig(top));
    assert!(matches!(co.resume(()), CoroutineResult::Return(n) if n > 0));
    let slot = co.into_stack();
    assert!(slot.committed() > 100 << 10, "{}", slot.committed());
    slot
}

/// An arena with a zero pool budget (every grown release is over it) and a
/// trimmer whose wake-ups are counted in the returned counter.
fn arena(defer: bool) -> (StackArena, Arc<AtomicUsize>) {
    let arena = StackArena::builder()
        .pool_budget(0)
        .defer_trim(defer)
        .build()
        .unwrap();
    let wakes = Arc::new(AtomicUsize::new(0));
    let w = Arc::clone(&wakes);
    arena.set_trimmer(Box::new(move || {
        w.fetch_add(1, Ordering::Relaxed);
    }));
    (arena, wakes)
}

#[test]
fn over_budget_releases_wait_for_one_pass_and_wake_the_trimmer_once() {
    let (arena, wakes) = arena(true);
    let (a, b) = (
        grow(arena.allocate().unwrap()),
        grow(arena.allocate().unwrap()),
    );
    let grown = (a.committed() + b.committed()) as u64;
    drop(a);
    drop(b);
    let s = arena.stats();
    assert_eq!(
        s.committed_bytes as u64, grown,
        "deferred: nothing given back yet"
    );
    assert_eq!(s.bytes_reclaimed, 0);
    assert!(arena.trim_pending());
    assert_eq!(wakes.load(Ordering::Relaxed), 1, "one wake-up per pass");
    assert_eq!(
        arena.trim_over_budget(&|| false),
        grown - 2 * TOP as u64,
        "the pass gives back all of both slots' excess"
    );
    assert_eq!(arena.stats().committed_bytes, 2 * TOP);
    assert!(!arena.trim_pending());
    assert_eq!(arena.trim_over_budget(&|| false), 0, "nothing asked for");
}

/// A deferring arena that has had one grown slot released over budget:
/// the arena, that slot's top, and what it had committed.
fn one_deferred_release() -> (StackArena, usize, usize) {
    let (arena, _) = arena(true);
    let slot = grow(arena.allocate().unwrap());
    let (top, grown) = (slot.top(), slot.committed());
    drop(slot);
    (arena, top, grown)
}

#[test]
fn a_deferred_slot_allocated_before_the_pass_is_trimmed_by_the_allocation() {
    let (arena, top, _) = one_deferred_release();
    let again = arena.allocate().unwrap();
    assert_eq!(again.top(), top, "the same slot comes back");
    assert_eq!(again.committed(), TOP, "its deferred excess is gone");
    assert_eq!(arena.trim_over_budget(&|| false), 0, "nothing left to trim");
}

#[test]
fn a_pass_told_to_stop_leaves_its_work_pending() {
    let (arena, _, grown) = one_deferred_release();
    assert_eq!(arena.trim_over_budget(&|| true), 0);
    assert!(
        arena.trim_pending(),
        "the request survives the stopped pass"
    );
    assert_eq!(arena.trim_over_budget(&|| false), (grown - TOP) as u64);
}

#[test]
fn without_deferral_or_once_the_trimmer_stops_release_trims_at_once() {
    // (defer_trim, trimmer stopped): off and running, on and stopped.
    for (defer, stopped) in [(false, false), (true, true)] {
        let (arena, wakes) = arena(defer);
        if stopped {
            arena.stop_trimmer();
        }
        drop(grow(arena.allocate().unwrap()));
        assert_eq!(arena.stats().committed_bytes, TOP, "defer_trim({defer})");
        assert_eq!(wakes.load(Ordering::Relaxed), 0);
        assert!(!arena.trim_pending());
    }
}
