//! Property tests of the stack arena as a slot allocator: random sequences
//! of allocations and frees, checked against a model that knows only the
//! capacity and which slots are live.
//!
//! The model: a set of live slot tops and a capacity. An allocation must
//! succeed exactly while fewer than `capacity` slots are live, must hand
//! out a top no live slot has, and otherwise fails with `OutOfMemory`
//! naming the exhaustion. `stats()` must count the model's live slots, and
//! every slot ever handed out and not live as pooled.
//!
//! Frees happen on the test thread, or on a second thread that stays alive
//! (so slots it frees may sit in its per-thread magazine).

use std::collections::HashSet;
use std::sync::mpsc;
use std::thread;

use greenstack::stack::{Slot, StackArena};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// One step of a sequence.
#[derive(Debug, Clone)]
enum Op {
    /// Allocate a slot.
    Alloc,
    /// Free the live slot at this position (modulo the number live); a
    /// no-op when none is live.
    Free(usize),
}

/// Allocations and frees, allocations a little more likely, so sequences
/// reach exhaustion (of up to about 100 slots) and come back from it.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    weighted_ops(3, 2)
}

/// Up to 400 steps, allocations and frees weighted `alloc` to `free`.
fn weighted_ops(alloc: u32, free: u32) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        alloc => Just(Op::Alloc),
        free => any::<usize>().prop_map(Op::Free),
    ];
    prop::collection::vec(op, 1..400)
}

/// Where a freed slot is dropped.
enum Freer {
    /// On the test thread.
    Here,
    /// On a second thread, which acknowledges each drop.
    Thread {
        tx: mpsc::Sender<Slot>,
        ack: mpsc::Receiver<()>,
    },
}

impl Freer {
    /// A freer on a second thread that lives until the freer is dropped.
    fn thread() -> (Freer, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Slot>();
        let (ack_tx, ack) = mpsc::channel();
        let h = thread::spawn(move || {
            for slot in rx {
                drop(slot);
                if ack_tx.send(()).is_err() {
                    break;
                }
            }
        });
        (Freer::Thread { tx, ack }, h)
    }

    /// Drops `slot` and returns once it is dropped.
    fn free(&self, slot: Slot) {
        match self {
            Freer::Here => drop(slot),
            Freer::Thread { tx, ack } => {
                tx.send(slot).expect("the freeing thread runs");
                ack.recv().expect("the freeing thread acknowledges");
            }
        }
    }
}

/// Runs [`check`] on a thread of its own, which exits afterwards.
///
/// Slots dropped on a thread may stay in its magazine, and keep their
/// arena's size class registered with the fault handler until the thread
/// exits (see `dropped_arenas_release_their_classes` below); a fresh thread
/// per case keeps one case's arena from outliving it.
fn check_on_own_thread(
    capacity: usize,
    ops: Vec<Op>,
    freer_thread: bool,
) -> Result<(), TestCaseError> {
    thread::spawn(move || {
        if !freer_thread {
            return check(capacity, &ops, &Freer::Here);
        }
        let (freer, h) = Freer::thread();
        let r = check(capacity, &ops, &freer);
        drop(freer);
        h.join().expect("the freeing thread");
        r
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs `ops` on a fresh arena of `capacity` slots against the model.
fn check(capacity: usize, ops: &[Op], freer: &Freer) -> Result<(), TestCaseError> {
    let arena = StackArena::builder()
        .capacity(capacity)
        .build()
        .map_err(|e| TestCaseError::fail(format!("building the arena: {e}")))?;
    // The real slots, and the model: live tops, and every top ever seen.
    let mut live: Vec<Slot> = Vec::new();
    let mut tops: HashSet<usize> = HashSet::new();
    let mut seen: HashSet<usize> = HashSet::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Alloc => match arena.allocate() {
                Ok(slot) => {
                    prop_assert!(
                        tops.len() < capacity,
                        "step {step}: allocation succeeded with all {capacity} slots live"
                    );
                    prop_assert!(
                        tops.insert(slot.top()),
                        "step {step}: top {:#x} handed out while live",
                        slot.top()
                    );
                    seen.insert(slot.top());
                    live.push(slot);
                }
                Err(e) => {
                    prop_assert_eq!(
                        tops.len(),
                        capacity,
                        "step {}: allocation failed with {} of {} slots live: {}",
                        step,
                        tops.len(),
                        capacity,
                        e
                    );
                    prop_assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory);
                    prop_assert!(
                        e.to_string().contains("exhausted"),
                        "error does not name the exhaustion: {}",
                        e
                    );
                }
            },
            Op::Free(i) => {
                if live.is_empty() {
                    continue;
                }
                let slot = live.swap_remove(i % live.len());
                prop_assert!(tops.remove(&slot.top()));
                freer.free(slot);
            }
        }
        let s = arena.stats();
        prop_assert_eq!(s.live_slots, tops.len(), "step {}: {:?}", step, s);
        prop_assert_eq!(
            s.pooled_slots,
            seen.len() - tops.len(),
            "step {}: {:?}",
            step,
            s
        );
    }
    Ok(())
}

/// Moderate case counts keep each property at a few seconds; failures are
/// not persisted (no files are written next to the tests).
fn config() -> Config {
    Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Everything on one thread, in arenas too small to keep per-thread
    /// magazines.
    #[test]
    fn alloc_free_matches_the_model(capacity in 8usize..64, ops in ops()) {
        check_on_own_thread(capacity, ops, false)?;
    }

    /// Frees on a second thread, in arenas too small to keep per-thread
    /// magazines.
    #[test]
    fn alloc_here_free_there_matches_the_model(capacity in 8usize..64, ops in ops()) {
        check_on_own_thread(capacity, ops, true)?;
    }

    /// One thread, in arenas large enough for a magazine (capacity / 64
    /// slots, at most 32): slots it keeps back are still this thread's to
    /// take.
    #[test]
    fn alloc_free_matches_the_model_with_magazines(
        capacity in 64usize..160,
        ops in weighted_ops(4, 1),
    ) {
        check_on_own_thread(capacity, ops, false)?;
    }

    /// Frees on a second thread that stays alive, in arenas large enough
    /// for magazines: a slot that thread keeps back in its magazine must
    /// not make an allocation here fail while the model has a free slot.
    #[test]
    fn alloc_here_free_there_matches_the_model_with_magazines(
        capacity in 64usize..160,
        ops in weighted_ops(4, 1),
    ) {
        check_on_own_thread(capacity, ops, true)?;
    }
}

/// The smallest case the property above finds: 63 of 64 slots live, the
/// 64th freed on a thread that stays alive (so it sits in that thread's
/// magazine). The arena's docs say magazines are sized so "slots held back
/// by one thread never make another thread's allocation fail", and that
/// exhaustion is exact; here the allocation fails, and its message says all
/// 64 slots are live while `stats()` says 63.
#[test]
fn exhaustion_is_exact_when_another_thread_keeps_a_freed_slot() {
    let arena = StackArena::builder().capacity(64).build().unwrap();
    let mut live: Vec<Slot> = (0..64).map(|_| arena.allocate().unwrap()).collect();
    let one = live.pop().unwrap();
    let (freed_tx, freed) = mpsc::channel();
    let (done_tx, done) = mpsc::channel::<()>();
    let keeper = thread::spawn(move || {
        drop(one);
        freed_tx.send(()).unwrap();
        // Stay alive (with the slot in this thread's magazine) until told.
        let _ = done.recv();
    });
    freed.recv().unwrap();
    let stats = arena.stats();
    assert_eq!((stats.live_slots, stats.pooled_slots), (63, 1));
    let got = arena.allocate();
    done_tx.send(()).unwrap();
    keeper.join().unwrap();
    assert!(
        got.is_ok(),
        "63 of 64 slots live, yet: {:?} ({stats:?})",
        got.err()
    );
}

/// Set in the child process of [`dropped_arenas_release_their_classes`].
const CHILD_ENV: &str = "GREENSTACK_PROPTEST_CHILD";

/// Slots freed on a thread go to its magazine, which holds a reference to
/// the slot's size class: the class (its reservation, and its entry in the
/// fault handler's table of 64) outlives its arena until the thread exits.
/// So one thread that builds and drops 64 arenas (or runtimes whose
/// `block_on` ran on it) can allocate no more stacks at all.
///
/// Runs in a child process: while it fails it holds every entry of the
/// process-wide table, which would fail the other tests of this binary.
#[test]
fn dropped_arenas_release_their_classes() {
    if std::env::var_os(CHILD_ENV).is_some() {
        for i in 0..100 {
            // 64 slots or more: the arena keeps a magazine per thread.
            let arena = StackArena::builder().capacity(64).build().unwrap();
            let slot = arena
                .allocate()
                .unwrap_or_else(|e| panic!("arena {i} on this thread: {e}"));
            drop(slot);
            drop(arena);
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "dropped_arenas_release_their_classes",
            "--exact",
            "--include-ignored",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("running the child test process");
    assert!(
        out.status.success(),
        "child failed: {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
