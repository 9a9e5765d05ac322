//! The arena as an allocator: pooling without system calls, reclaim,
//! exhaustion, cross-thread free, and the builder's validation.

use std::collections::HashSet;
use std::hint::black_box;

use std::sync::Arc;
use std::time::Duration;

use corosensei::{Coroutine, CoroutineResult};
use greenstack::stack::{mmap, ArenaStats, Slot, StackArena};
use greenstack::sync::Barrier;
use greenstack::{Builder, Runtime};

mod common;

/// What a fresh or trimmed slot keeps committed by default.
const PAGE: usize = greenstack::stack::DEFAULT_INITIAL_COMMIT;

/// Grows `slot` by recursing through about `bytes` of stack, returns it.
fn grow(slot: Slot, bytes: usize) -> Slot {
    #[inline(never)]
    fn dig(top: usize, bytes: usize) -> usize {
        let pad = black_box([1u8; 1024]);
        let here = 0u8;
        if top - black_box(&here) as *const u8 as usize >= bytes {
            return pad[0] as usize;
        }
        dig(top, bytes) + pad[1] as usize
    }
    greenstack::stack::prepare_thread().unwrap();
    let top = slot.top();
    let mut co = Coroutine::with_stack(slot, move |_: &corosensei::Yielder<(), ()>, ()| {
        dig(top, bytes)
    });
    assert!(matches!(co.resume(()), CoroutineResult::Return(n) if n > 0));
    co.into_stack()
}

#[test]
fn pooled_reuse_makes_no_system_call() {
    let arena = StackArena::new().unwrap();
    // Warm: the class exists and one slot has been set up and grown a bit.
    let slot = grow(arena.allocate().unwrap(), 20 * 1024);
    drop(slot);
    let before = mmap::syscalls();
    for _ in 0..1_000_000 {
        drop(black_box(arena.allocate().unwrap()));
    }
    assert_eq!(
        mmap::syscalls() - before,
        0,
        "release/reallocate of a pooled slot made system calls"
    );
    let s = arena.stats();
    assert_eq!((s.live_slots, s.pooled_slots), (0, 1));
}

#[test]
fn warm_slot_is_reused_first_and_keeps_its_pages() {
    let arena = StackArena::new().unwrap();
    let a = arena.allocate().unwrap();
    let b = arena.allocate().unwrap();
    let (a_top, b_top) = (a.top(), b.top());
    let b = grow(b, 64 * 1024);
    let grown = b.committed();
    assert!(grown > 64 * 1024);
    drop(a);
    drop(b);
    // LIFO: the slot released last comes back first, still grown.
    let again = arena.allocate().unwrap();
    assert_eq!(again.top(), b_top);
    assert_eq!(again.committed(), grown);
    assert_eq!(arena.allocate().unwrap().top(), a_top);
}

#[test]
fn release_over_budget_gives_pages_back() {
    let arena = StackArena::builder().pool_budget(0).build().unwrap();
    let slot = grow(arena.allocate().unwrap(), 100 * 1024);
    let grown = slot.committed();
    assert!(grown > 100 * 1024);
    let before = arena.stats();
    drop(slot);
    let after = arena.stats();
    assert_eq!(
        after.bytes_reclaimed - before.bytes_reclaimed,
        (grown - PAGE) as u64
    );
    assert_eq!(after.committed_bytes, PAGE);
    let slot = arena.allocate().unwrap();
    assert_eq!(
        slot.committed(),
        PAGE,
        "a trimmed slot keeps only its retained top"
    );
    assert_eq!(
        slot.high_water(),
        grown,
        "the high-water mark survives the trim"
    );
    // And it grows again after the trim.
    let slot = grow(slot, 100 * 1024);
    assert!(slot.committed() > 100 * 1024);
}

#[test]
fn retained_commit_is_kept_on_trim() {
    let arena = StackArena::builder()
        .pool_budget(0)
        .initial_commit(4096)
        .retained_commit(16 * 1024)
        .build()
        .unwrap();
    let slot = grow(arena.allocate().unwrap(), 100 * 1024);
    drop(slot);
    assert_eq!(arena.allocate().unwrap().committed(), 16 * 1024);
}

#[test]
fn idle_pooled_slots_are_trimmed_after_a_full_interval() {
    let arena = StackArena::new().unwrap();
    let slot = grow(arena.allocate().unwrap(), 100 * 1024);
    let grown = slot.committed();
    drop(slot);
    // Released during this interval: the first trim leaves it alone.
    assert_eq!(arena.trim_idle(), 0);
    assert_eq!(arena.stats().committed_bytes, grown);
    // It sat through a whole interval: the second trim gives it back, the
    // retained top's pages included (the top stays committed).
    assert_eq!(arena.trim_idle(), grown as u64);
    assert_eq!(
        arena.trim_idle(),
        0,
        "a trimmed idle slot is not trimmed again"
    );
    assert_eq!(arena.stats().committed_bytes, PAGE);
    assert_eq!(arena.allocate().unwrap().committed(), PAGE);
}

#[test]
fn exhaustion_is_an_error_and_recovers() {
    let arena = StackArena::builder().capacity(3).build().unwrap();
    let slots: Vec<Slot> = (0..3).map(|_| arena.allocate().unwrap()).collect();
    let err = arena.allocate().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::OutOfMemory);
    assert!(err.to_string().contains("all 3 slots"), "{err}");
    drop(slots);
    assert!(arena.allocate().is_ok());
}

#[test]
fn slots_freed_on_other_threads_are_reused_and_never_duplicated() {
    let arena = StackArena::builder().capacity(64).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Slot>();
    let freer = std::thread::spawn(move || {
        let mut n = 0;
        for slot in rx {
            drop(slot);
            n += 1;
        }
        n
    });
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let arena = arena.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let batch: Vec<Slot> = (0..8)
                        .map(|_| loop {
                            if let Ok(s) = arena.allocate() {
                                break s;
                            }
                            std::thread::yield_now();
                        })
                        .collect();
                    let tops: HashSet<usize> = batch.iter().map(Slot::top).collect();
                    assert_eq!(tops.len(), batch.len(), "one slot handed out twice");
                    for s in batch {
                        tx.send(s).unwrap();
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(freer.join().unwrap(), 2 * 20_000 * 8);
    let s: ArenaStats = arena.stats();
    assert_eq!(s.live_slots, 0);
    assert!(s.pooled_slots <= 64);
}

#[test]
fn builder_rejects_bad_settings_with_clear_errors() {
    let cases: Vec<(&str, std::io::Result<StackArena>)> = vec![
        (
            "capacity must be at least 1",
            StackArena::builder().capacity(0).build(),
        ),
        (
            "below one page",
            StackArena::builder().stack_size(100).build(),
        ),
        (
            "below one page",
            StackArena::builder().stack_size(0).build(),
        ),
        (
            "exceeds the largest reserve",
            StackArena::builder().stack_size(usize::MAX).build(),
        ),
        ("guard size", StackArena::builder().guard_size(0).build()),
        ("guard size", StackArena::builder().guard_size(100).build()),
        (
            "initial commit",
            StackArena::builder().initial_commit(0).build(),
        ),
        (
            "cannot hold",
            StackArena::builder()
                .stack_size(64 * 1024)
                .initial_commit(64 * 1024)
                .build(),
        ),
        (
            "retained commit",
            StackArena::builder()
                .initial_commit(8192)
                .retained_commit(4096)
                .build(),
        ),
        (
            "max growth step",
            StackArena::builder().max_growth_step(0).build(),
        ),
        (
            "capacity",
            StackArena::builder().capacity(usize::MAX).build(),
        ),
    ];
    for (want, got) in cases {
        let err = got.expect_err(want);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        assert!(
            err.to_string().contains(want),
            "error {err:?} should mention {want:?}"
        );
    }
    let arena = StackArena::new().unwrap();
    assert!(arena.allocate_with(usize::MAX).is_err());
    assert!(arena.allocate_with(0).is_err());
    assert_eq!(arena.allocate_with(1 << 20).unwrap().reserve(), 1 << 20);
    assert_eq!(
        arena.allocate_with(5000).unwrap().reserve(),
        64 * 1024,
        "rounded up to the smallest class that holds guard and initial commit"
    );
}

/// Writes a pattern over the top 16 KiB of `slot` from inside a coroutine,
/// returns the slot.
fn scribble(slot: Slot) -> Slot {
    greenstack::stack::prepare_thread().unwrap();
    let mut co = Coroutine::with_stack(slot, move |_: &corosensei::Yielder<(), ()>, ()| {
        let secret = black_box([0xa5u8; 16 * 1024]);
        secret[7] as usize
    });
    assert!(matches!(co.resume(()), CoroutineResult::Return(0xa5)));
    co.into_stack()
}

/// Bytes equal to 0xa5 in the top 32 KiB of `slot`.
fn leftovers(slot: &Slot) -> usize {
    (slot.top() - 32 * 1024..slot.top())
        // SAFETY: the top 32 KiB of a live slot are committed and readable,
        // and nothing runs on this slot while we read it.
        .filter(|&a| unsafe { (a as *const u8).read_volatile() } == 0xa5)
        .count()
}

#[test]
fn scrub_zeroes_a_reused_stack_and_is_off_by_default() {
    for scrub in [false, true] {
        let arena = StackArena::builder().scrub(scrub).build().unwrap();
        let slot = scribble(arena.allocate().unwrap());
        let top = slot.top();
        drop(slot);
        let again = arena.allocate().unwrap();
        assert_eq!(again.top(), top, "the same warm slot comes back");
        let left = leftovers(&again);
        if scrub {
            assert_eq!(
                left, 0,
                "scrubbed slot still holds {left} bytes of the old data"
            );
        } else {
            assert!(
                left > 8 * 1024,
                "without scrubbing the old data is still there ({left} bytes)"
            );
        }
    }
}

/// Runs [`DEEP`] coroutines on `rt` that each grow their stack by 512 KiB
/// and wait for one another there (so all are live at once), and joins
/// them. Returns their growth, as the arena counted it.
fn deep_burst(rt: &Runtime) -> u64 {
    /// Recurses until the stack is 512 KiB below `top` (frame sizes differ
    /// between debug and release builds), waits there, and returns the
    /// depth reached.
    #[inline(never)]
    fn dig(top: usize, barrier: &Barrier) -> usize {
        let pad = black_box([1u8; 1024]);
        if top - black_box(&pad) as *const _ as usize >= 512 << 10 {
            barrier.wait();
            return pad[0] as usize;
        }
        dig(top, barrier) + pad[1] as usize
    }
    let before = rt.stats().arena.bytes_grown;
    let barrier = Arc::new(Barrier::new(DEEP));
    let handles: Vec<_> = (0..DEEP)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            Builder::new()
                .stack_size(1 << 20)
                .spawn_on(rt, move || {
                    let here = 0u8;
                    dig(black_box(&here) as *const u8 as usize, &barrier)
                })
                .expect("spawning a deep coroutine")
        })
        .collect();
    for h in handles {
        assert!(h.join().expect("a deep coroutine does not panic") > 0);
    }
    rt.stats().arena.bytes_grown - before
}

/// Coroutines in [`deep_burst`].
const DEEP: usize = 16;

/// Pool budget of the runtimes below: a quarter of one burst's growth.
const DEEP_BUDGET: usize = 2 << 20;

/// Waits until no slot is live (a slot goes back just after its coroutine's
/// result reaches the joiner); returns the statistics read after that (a
/// snapshot is not atomic: the one that saw the last slot go may not show
/// that release's trim yet).
fn until_all_released(rt: &Runtime) -> ArenaStats {
    while rt.stats().arena.live_slots != 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    rt.stats().arena
}

/// The pool's committed bytes beyond the retained tops.
fn pool_excess(s: &ArenaStats) -> usize {
    s.committed_bytes - s.pooled_slots * PAGE
}

#[test]
fn a_runtime_trims_the_pool_back_under_budget_in_the_background() {
    common::bounded("background trim", || {
        let rt = Runtime::builder()
            .workers(2)
            .arena(StackArena::builder().pool_budget(DEEP_BUDGET))
            .build()
            .unwrap();
        let grown = deep_burst(&rt);
        assert!(grown >= (DEEP as u64) * (512 << 10), "grown {grown}");
        until_all_released(&rt);
        // The trimmer gives the excess back soon after, with no call from
        // here.
        let s = loop {
            let s = rt.stats().arena;
            if pool_excess(&s) <= DEEP_BUDGET {
                break s;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(s.bytes_reclaimed > 0, "{s:?}");
        // Meanwhile pooled stacks stay usable: a second burst runs on them.
        deep_burst(&rt);
        until_all_released(&rt);
    });
}

#[test]
fn a_runtime_without_deferred_trim_is_under_budget_once_the_slots_are_back() {
    common::bounded("trim at once", || {
        let rt = Runtime::builder()
            .workers(2)
            .arena(
                StackArena::builder()
                    .pool_budget(DEEP_BUDGET)
                    .defer_trim(false),
            )
            .build()
            .unwrap();
        deep_burst(&rt);
        let s = until_all_released(&rt);
        assert!(pool_excess(&s) <= DEEP_BUDGET, "{s:?}");
        assert!(s.bytes_reclaimed > 0, "{s:?}");
    });
}

/// Issue 17, item 15: `prefault(bytes)` commits `bytes` below the caller
/// however far that reaches past the 256 KiB band of guard markers under
/// the floor, so the code after it takes no growth fault. In marker mode
/// the zone below the band is unmarked, and a prefault reaching there was
/// a read of never-touched memory that committed nothing.
#[test]
fn prefault_commits_past_the_marker_band() {
    const WANT: usize = 2 << 20;
    let arena = StackArena::builder().stack_size(8 << 20).build().unwrap();
    let slot = arena.allocate().unwrap();
    greenstack::stack::prepare_thread().unwrap();
    let a = arena.clone();
    let mut co = Coroutine::with_stack(slot, move |_: &corosensei::Yielder<(), ()>, ()| {
        let here = 0u8;
        let sp = black_box(&here) as *const u8 as usize;
        greenstack::stack::prefault(WANT);
        let floor = greenstack::stack::testing::floor_of(sp).expect("on an arena stack");
        let faults = a.stats().growth_faults;
        // Recurse through most of what was prefaulted: no fault may come.
        #[inline(never)]
        fn dig(top: usize, bytes: usize) -> usize {
            let pad = black_box([1u8; 1024]);
            let here = 0u8;
            if top - black_box(&here) as *const u8 as usize >= bytes {
                return pad[0] as usize;
            }
            dig(top, bytes) + pad[1] as usize
        }
        assert!(dig(sp, WANT - (64 << 10)) > 0);
        (sp - floor, a.stats().growth_faults - faults)
    });
    let (committed_below, faults_after) = match co.resume(()) {
        CoroutineResult::Return(r) => r,
        CoroutineResult::Yield(()) => unreachable!(),
    };
    assert!(
        committed_below >= WANT,
        "prefault({WANT}) left only {committed_below} bytes committed below the caller"
    );
    assert_eq!(faults_after, 0, "growth faults after the prefault");
}
