//! loom models of the slot allocator (`stack/arena.rs`).
//!
//! Run with:
//! `RUSTFLAGS="--cfg greenstack_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2 \
//!  cargo test -p greenstack-runtime --lib --release loom_`

use std::collections::HashSet;
use std::sync::Arc;

use loom::thread;

use crate::stack::arena::{Exhausted, SlotAllocator};

/// Two threads allocating at once never receive the same slot, whether
/// they race on the never-used slots (`pooled = 0`), on the free list
/// (`pooled = 2`), or one on each (`pooled = 1`).
#[test]
fn loom_concurrent_allocations_are_distinct() {
    for pooled in 0..=2 {
        loom::model(move || {
            let a = Arc::new(SlotAllocator::new(3));
            let taken: Vec<u32> = (0..pooled).map(|_| a.allocate().unwrap().index()).collect();
            for i in taken {
                a.release(i);
            }
            let a2 = Arc::clone(&a);
            let t = thread::spawn(move || a2.allocate().unwrap().index());
            let mine = a.allocate().unwrap().index();
            let theirs = t.join().unwrap();
            assert_ne!(mine, theirs, "slot handed out twice (pooled = {pooled})");
        });
    }
}

/// Allocate on one thread, free on another while a third allocates, then
/// allocate everything: nothing lost, nothing duplicated.
#[test]
fn loom_cross_thread_free_loses_nothing() {
    loom::model(|| {
        let a = Arc::new(SlotAllocator::new(2));
        let x = a.allocate().unwrap().index();
        let a2 = Arc::clone(&a);
        let freer = thread::spawn(move || a2.release(x));
        let a3 = Arc::clone(&a);
        let taker = thread::spawn(move || a3.allocate().map(|c| c.index()));
        freer.join().unwrap();
        let taken = taker.join().unwrap();

        let mut live: HashSet<u32> = HashSet::new();
        if let Ok(i) = taken {
            assert!(live.insert(i));
        }
        while let Ok(c) = a.allocate() {
            assert!(
                live.insert(c.index()),
                "slot {} handed out twice",
                c.index()
            );
        }
        assert_eq!(live.len(), 2, "a slot was lost: {live:?}");
    });
}

/// With the pool full, concurrent allocators are told `Exhausted` exactly
/// when no slot is free, and never while one is.
#[test]
fn loom_exhaustion_is_exact() {
    loom::model(|| {
        let a = Arc::new(SlotAllocator::new(2));
        let x = a.allocate().unwrap().index();
        let _y = a.allocate().unwrap().index();
        let a2 = Arc::clone(&a);
        // One thread frees x; two others race for slots. Exactly one slot is
        // free at any time after the free, so at most one allocator wins, and
        // once the free is done and nobody holds it, allocation succeeds.
        let freer = thread::spawn(move || a2.release(x));
        let a3 = Arc::clone(&a);
        let racer = thread::spawn(move || a3.allocate().map(|c| c.index()));
        let mine = a.allocate().map(|c| c.index());
        freer.join().unwrap();
        let theirs = racer.join().unwrap();
        match (mine, theirs) {
            (Ok(m), Ok(t)) => panic!("two slots {m} and {t} handed out with only one free"),
            (Ok(i), Err(Exhausted)) | (Err(Exhausted), Ok(i)) => assert_eq!(i, x),
            (Err(Exhausted), Err(Exhausted)) => {
                // Both looked before the free landed; now it must be there.
                assert_eq!(a.allocate().map(|c| c.index()), Ok(x));
            }
        }
        assert_eq!(a.allocate(), Err(Exhausted));
    });
}

/// A trimmer and an allocator racing for the same pooled slot: the
/// allocator waits out the trim and gets the slot; nobody sees it twice.
#[test]
fn loom_trim_and_allocate_exclude_each_other() {
    loom::model(|| {
        let a = Arc::new(SlotAllocator::new(1));
        let x = a.allocate().unwrap().index();
        a.release(x);
        let a2 = Arc::clone(&a);
        let trimmer = thread::spawn(move || {
            if a2.begin_trim(x) {
                assert!(!a2.is_live(x), "slot live while being trimmed");
                a2.end_trim(x);
            }
        });
        assert_eq!(a.allocate().map(|c| c.index()), Ok(x));
        assert!(a.is_live(x));
        trimmer.join().unwrap();
        assert!(a.is_live(x), "trim ended by making a live slot pooled");
    });
}

/// A trimmer racing an allocation that takes a never-used slot (item 14 of
/// issue 17): the slot was never pooled, so the trim must not claim it, and
/// the allocation's slot stays live whatever the interleaving. Before the
/// state byte had its own value for never-used slots, a trim between the
/// bump of `fresh` and the store of `LIVE` read the fresh slot as pooled,
/// claimed it, and its `end_trim` reset the live slot to pooled.
#[test]
fn loom_trim_never_claims_a_fresh_slot() {
    loom::model(|| {
        let a = Arc::new(SlotAllocator::new(1));
        let a2 = Arc::clone(&a);
        let trimmer = thread::spawn(move || {
            if a2.begin_trim(0) {
                a2.end_trim(0);
                panic!("trim claimed slot 0, which was never pooled");
            }
        });
        assert_eq!(a.allocate().map(|c| c.index()), Ok(0));
        trimmer.join().unwrap();
        assert!(a.is_live(0), "a live slot reads as not live");
    });
}

/// Credits (`Credits`, the promise of a slot a spawn takes): two threads
/// taking batches from a count that cannot serve both in full never get
/// more than exist between them, and what they give back is all there.
#[test]
fn loom_credits_are_never_over_granted_or_lost() {
    use crate::stack::arena::Credits;
    loom::model(|| {
        let c = Arc::new(Credits::new(3));
        let c2 = Arc::clone(&c);
        let t = thread::spawn(move || {
            let got = c2.take(2);
            c2.give(got.min(1));
            got - got.min(1)
        });
        let mine = c.take(2);
        let theirs = t.join().unwrap();
        assert!(mine <= 2, "took {mine} of a batch of 2");
        assert!(
            mine + theirs + c.free() == 3,
            "credits over-granted or lost: mine {mine}, theirs {theirs}, free {}",
            c.free()
        );
        assert!(c.take(1) == usize::from(mine + theirs < 3));
    });
}
