//! A bounded stress of the scheduler on 2 workers: spawns, parks, unparks
//! (local, from a second runtime's coroutines, from blocking-pool threads),
//! joins, panics and a shared lock, each at a pseudo-random stack depth or right above the
//! committed stack floor, so the runtime's no-fault sections run where a
//! missing prefault would fault. Afterwards no growth fault may have hit a
//! no-fault section, and every coroutine must have finished. The same stress
//! with the runtime's prefault switched off shows the check can fail.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use greenstack::stack::StackArena;
use greenstack::{Builder, Coroutine, JoinHandle, Runtime, RuntimeStats};

/// How long a wait loop may poll before the test fails. A hang guard, not a
/// timing assertion: it is far above any expected wait, so a lost wake-up
/// fails the test instead of hanging it.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Rounds of the stress; each spawns [`PER_ROUND`] tasks and their helpers.
const ROUNDS: u64 = 40;

/// Tasks per round.
const PER_ROUND: u64 = 250;

/// Polls `cond` (every millisecond) until it holds; fails after
/// [`HANG_GUARD`] naming `what`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "hang guard: still waiting for {what}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// A small deterministic generator (splitmix64), so a failure reproduces.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `f` about `kib` KiB deeper on the stack than the caller (1 KiB
/// frames).
#[inline(never)]
fn at_depth<R>(kib: u64, f: impl FnOnce() -> R) -> R {
    let frame = black_box([kib as u8; 1024]);
    if kib == 0 {
        let r = f();
        black_box(&frame);
        return r;
    }
    let r = at_depth(kib - 1, f);
    black_box(&frame);
    r
}

/// The stack pointer, near enough: the address of a local.
#[inline(never)]
fn sp() -> usize {
    let here = 0u8;
    black_box(&here) as *const u8 as usize
}

/// How far below its caller [`near_floor`] may go: well inside the 256 KiB
/// reserve, with room left for `f` and a panic's backtrace.
const NEAR_FLOOR_LIMIT: usize = 96 * 1024;

/// Runs `f` with the stack pointer less than `margin` + 64 bytes above the
/// committed floor of the caller's stack, so code in `f` that needs more
/// than that takes a growth fault unless something prefaulted. If the
/// floor lies more than [`NEAR_FLOOR_LIMIT`] below the caller, runs `f`
/// there.
fn near_floor<R>(margin: usize, f: impl FnOnce() -> R) -> R {
    /// One step down: a few dozen bytes of frame.
    #[inline(never)]
    fn descend<R>(start: usize, margin: usize, f: impl FnOnce() -> R) -> R {
        let here = sp();
        let floor = greenstack::stack::testing::floor_of(here).expect("running on an arena stack");
        if here - floor < margin + 64 || start - here > NEAR_FLOOR_LIMIT {
            return f();
        }
        let pad = black_box([0u8; 16]);
        let r = descend(start, margin, f);
        black_box(&pad);
        r
    }
    descend(sp(), margin, f)
}

/// Where on the stack a step of the stress runs: below 4096, about
/// `spot / 85` KiB below the caller (0..48 KiB); from 4096 on, `spot - 4096`
/// bytes above the committed floor (see [`near_floor`]). Below the floor
/// the margins sweep the runtime's own stack use, so whichever of its
/// sections is deepest lands across the floor now and then.
fn at<R>(spot: u64, f: impl FnOnce() -> R) -> R {
    if spot < 4096 {
        at_depth(spot / 85, f)
    } else {
        near_floor((spot - 4096) as usize, f)
    }
}

/// A spot on the stack drawn from `r` (see [`at`]).
fn spot(r: u64) -> u64 {
    (r >> 3) % 8192
}

/// A spot just above the floor drawn from `r` (see [`at`]).
fn floor_spot(r: u64) -> u64 {
    4096 + (r >> 20) % 1024
}

/// A parker: parks (at `spot`) until its flag is set, then returns `v`.
fn parker(flag: Arc<AtomicBool>, spot: u64, v: u64) -> u64 {
    at(spot, || {
        while !flag.load(Ordering::Acquire) {
            greenstack::park();
        }
    });
    v
}

/// Wakes `target` after setting `flag`, from `spot`.
fn wake(flag: &AtomicBool, target: &Coroutine, spot: u64) {
    at(spot, || {
        flag.store(true, Ordering::Release);
        target.unpark();
    });
}

/// One task of the stress: picks an action from `seed` and checks its
/// result. Returns the value it contributes to the round's sum. `other` is
/// a second runtime, whose coroutines wake this one's from afar.
fn task(seed: u64, other: &Runtime) -> u64 {
    let r = mix(seed);
    let place = spot(r);
    match r % 8 {
        // Spawn a child deep, join it shallow.
        0 => {
            let h = at(place, || greenstack::spawn(move || seed ^ 1));
            h.join().unwrap() ^ 1
        }
        // Park until a sibling (which may run on the other worker) wakes us.
        1 => {
            let flag = Arc::new(AtomicBool::new(false));
            let me = greenstack::current();
            let waker = {
                let flag = Arc::clone(&flag);
                greenstack::spawn(move || wake(&flag, &me, floor_spot(r)))
            };
            let v = parker(flag, place, seed);
            waker.join().unwrap();
            v
        }
        // Wake a coroutine we spawned, from deep down.
        2 => {
            let flag = Arc::new(AtomicBool::new(false));
            let p = {
                let flag = Arc::clone(&flag);
                greenstack::spawn(move || parker(flag, spot(r >> 13), seed))
            };
            greenstack::yield_now();
            wake(&flag, p.coroutine().unwrap(), place);
            p.join().unwrap()
        }
        // Panic deep in a child; the join sees it.
        3 => {
            let h =
                greenstack::spawn(move || at(place, || -> u64 { panic!("stress panic {seed}") }));
            let p = h.join().expect_err("the child panicked");
            let msg = p.downcast_ref::<String>().expect("a String payload");
            assert_eq!(msg, &format!("stress panic {seed}"));
            seed
        }
        // Yield a few times, somewhere down the stack.
        4 => at(place, || {
            for _ in 0..(r >> 16) % 4 {
                greenstack::yield_now();
            }
            seed
        }),
        // Woken by a coroutine of the other runtime, right at its stack
        // floor: the remote path (inbox, worker wake-up) in a no-fault
        // section on that coroutine's stack.
        5 => {
            let flag = Arc::new(AtomicBool::new(false));
            let arrived = Arc::new(AtomicBool::new(false));
            let me = greenstack::current();
            let waker = {
                let (flag, arrived) = (Arc::clone(&flag), Arc::clone(&arrived));
                Builder::new()
                    .spawn_on(other, move || {
                        // Most likely parked by the time we get down there,
                        // so the unpark schedules it (the no-fault path).
                        while !arrived.load(Ordering::Acquire) {
                            greenstack::yield_now();
                        }
                        wake(&flag, &me, floor_spot(r));
                    })
                    .expect("spawning on the other runtime")
            };
            at(place, || {
                arrived.store(true, Ordering::Release);
                while !flag.load(Ordering::Acquire) {
                    greenstack::park();
                }
            });
            waker.join().unwrap();
            seed
        }
        // Take and release a shared lock (its state edited in a no-fault
        // section), 0 to 8 KiB above the floor: the frames down to the
        // section take a few hundred bytes to a few KiB (more in debug
        // builds), so the sweep makes the section itself straddle the
        // floor now and then.
        6 => {
            static SHARED: std::sync::OnceLock<greenstack::sync::Mutex<u64>> =
                std::sync::OnceLock::new();
            let m = SHARED.get_or_init(|| greenstack::sync::Mutex::new(0));
            at(4096 + (r >> 20) % 8192, || *m.lock() += 1);
            seed
        }
        // Woken from a plain thread of the blocking pool.
        _ => {
            let flag = Arc::new(AtomicBool::new(false));
            let me = greenstack::current();
            let b = {
                let flag = Arc::clone(&flag);
                greenstack::spawn_blocking(move || {
                    flag.store(true, Ordering::Release);
                    me.unpark();
                })
            };
            let v = parker(flag, place, seed);
            b.join().unwrap();
            v
        }
    }
}

/// Settled counters of one stress run: its main runtime's and the
/// waking runtime's.
struct Outcome {
    /// The 2-worker runtime the tasks run on.
    main: RuntimeStats,
    /// The 1-worker runtime whose coroutines wake tasks from afar.
    other: RuntimeStats,
}

/// Waits until every coroutine `rt` spawned has finished and been released,
/// then returns its counters.
fn settled(rt: &Runtime) -> RuntimeStats {
    wait_until("every coroutine to finish", || {
        let s = rt.stats();
        s.finished == s.spawned && s.live == 0
    });
    rt.stats()
}

/// Runs the stress on fresh runtimes: [`ROUNDS`] rounds of [`PER_ROUND`]
/// tasks, each round from a `block_on`.
fn run_stress() -> Outcome {
    // Released stacks go back to their 32 KiB initial commit (on the
    // trimmer, or when the slot is allocated again, whichever is first: the
    // trimmer's claims race with the workers' allocations here), so every
    // coroutine's floor starts where `near_floor` can reach it.
    let build = |workers| {
        Runtime::builder()
            .workers(workers)
            .arena(StackArena::builder().pool_budget(0))
            .build()
            .unwrap()
    };
    let rt = build(2);
    // Shared with the tasks; the last reference stays here, so the runtime
    // is never dropped on a worker.
    let other = Arc::new(build(1));
    for round in 0..ROUNDS {
        let other = Arc::clone(&other);
        let sum = rt.block_on(move || {
            let hs: Vec<(u64, JoinHandle<u64>)> = (0..PER_ROUND)
                .map(|i| {
                    let seed = round * PER_ROUND + i;
                    let other = Arc::clone(&other);
                    (seed, greenstack::spawn(move || task(seed, &other)))
                })
                .collect();
            let mut sum = 0u64;
            for (seed, h) in hs {
                let v = h.join().expect("a task does not panic");
                assert_eq!(v, seed, "task {seed}");
                sum = sum.wrapping_add(v);
            }
            sum
        });
        let base = round * PER_ROUND;
        let want = (base..base + PER_ROUND).fold(0u64, u64::wrapping_add);
        assert_eq!(sum, want, "round {round}");
    }
    // Counters settle once each worker has released what it finished.
    Outcome {
        main: settled(&rt),
        other: settled(&other),
    }
}

#[test]
fn stress_leaves_no_nofault_violations() {
    // First show that the check can fail: without the runtime's prefault,
    // the same stress takes growth faults inside no-fault sections. Both
    // halves are in one test, as the switch is process-wide.
    // A run takes only a few such faults (0 to 5 were seen), so it is
    // repeated until one does.
    greenstack::stack::testing::set_runtime_prefault(false);
    let missed = (0..8)
        .map(|_| {
            let without = run_stress();
            without.main.arena.nofault_violations + without.other.arena.nofault_violations
        })
        .find(|&missed| missed > 0);
    greenstack::stack::testing::set_runtime_prefault(true);
    assert!(
        missed.is_some(),
        "the stress never faulted in a no-fault section without prefault, in 8 runs"
    );

    let Outcome { main, other } = run_stress();
    for s in [&main, &other] {
        assert_eq!(s.finished, s.spawned, "{s:?}");
        assert!(s.arena.growth_faults > 0, "no stack ever grew: {s:?}");
        assert_eq!(s.arena.nofault_violations, 0, "{s:?}");
        assert_eq!(s.arena.live_slots, 0, "{s:?}");
    }
    // Tasks, their helpers and block_on's coroutines.
    assert!(main.spawned > ROUNDS * PER_ROUND, "{main:?}");
    assert!(main.parks > 0 && main.wakeups > 0, "{main:?}");
    assert!(other.spawned > 0, "{other:?}");
}
