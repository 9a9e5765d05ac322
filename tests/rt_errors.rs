//! Bad input and panics: capacity exhaustion through the runtime, stack
//! sizes the arena cannot serve, every public size or duration at 0, 1 and
//! the maximum of its type, and panics where std's threads have a rule (a
//! panic while unwinding, a panicking destructor at shutdown, a panic in
//! `block_on`'s root).
//!
//! Nothing here may panic unless the API documents it, nor hang: each test
//! runs under the hang guard, and a wait at `Duration::MAX` always has
//! something else that completes it. Scenarios that may end the process run
//! in a child process (this binary re-run with an environment variable).

mod common;

use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use greenstack::net::{TcpListener, TcpStream, UdpSocket, UnixStream};
use greenstack::stack::{ArenaBuilder, StackArena};
use greenstack::sync::{mpmc, mpsc, oneshot, Barrier, Condvar, Mutex, Semaphore, WaitGroup};
use greenstack::{Builder, Cancelled, JoinHandle, Runtime};

/// The three values every size is tried at: 0, 1 and the maximum.
const SIZES: [usize; 3] = [0, 1, usize::MAX];

/// The three values every duration is tried at: 0, 1 ns and the maximum.
const DURATIONS: [Duration; 3] = [Duration::ZERO, Duration::from_nanos(1), Duration::MAX];

/// A short pause before the other side completes a wait, so the waiter is
/// (most likely) already waiting. Not a timing assertion.
const LATER: Duration = Duration::from_millis(5);

/// The largest page multiple: the maximum of a size that must be one.
fn page_max() -> usize {
    usize::MAX & !(page() - 1)
}

/// The page size.
fn page() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).expect("a positive page size")
}

/// Asserts `r` is an error of `kind` whose message contains `needle`.
#[track_caller]
fn assert_err<T>(what: &str, r: io::Result<T>, kind: io::ErrorKind, needle: &str) {
    match r {
        Ok(_) => panic!("{what}: succeeded, want an error naming {needle:?}"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{what}: {e}");
            assert!(
                e.to_string().contains(needle),
                "{what}: error {e:?} does not mention {needle:?}"
            );
        }
    }
}

/// Polls `cond` every millisecond; the caller runs under the hang guard.
fn wait_for(mut cond: impl FnMut() -> bool) {
    while !cond() {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Joins a coroutine, re-raising its panic here.
fn join<T>(h: JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// Names the scenario a child process plays.
const CHILD_ENV: &str = "GREENSTACK_ERRORS_CHILD";

/// The scenario this process should play, if it is a child.
fn child_scenario() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Re-runs this binary's test `name` (ignored or not) as a child playing
/// `scenario`, under the hang guard; returns how it ended.
fn run_child(name: &str, scenario: &str) -> Output {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args([name, "--exact", "--nocapture", "--include-ignored"])
        .args(["--test-threads=1"])
        .env(CHILD_ENV, scenario);
    common::output_bounded(cmd, scenario)
}

/// How a child ended, for assertion messages.
fn describe(out: &Output) -> String {
    format!(
        "status {:?} (signal {:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.status.signal(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// Capacity exhaustion
// ---------------------------------------------------------------------------

/// With every slot of a 4-slot arena live, `Builder::spawn` (in a
/// coroutine) and `Builder::spawn_on` (outside) give `Err` naming the
/// limit, `spawn` and `Runtime::spawn` panic with a message naming it, and
/// once coroutines finish, spawning works again.
#[test]
fn capacity_exhaustion_through_the_runtime() {
    bounded("capacity exhaustion", || {
        let rt = Runtime::builder()
            .workers(2)
            .arena(StackArena::builder().capacity(4))
            .build()
            .expect("a runtime with a 4-slot arena");
        let gate = Arc::new(Semaphore::new(0));
        let park = |rt: &Runtime| {
            let gate = Arc::clone(&gate);
            spawn_when_a_slot_is_free(rt, move || gate.acquire().forget())
        };
        let parked: Vec<JoinHandle<()>> = (0..4).map(|_| park(&rt)).collect();
        wait_for(|| rt.stats().parks >= 4);
        assert_eq!(rt.stats().arena.live_slots, 4);

        // Outside the runtime: all 4 slots are live.
        let names_limit = |msg: &str| msg.contains("exhausted") && msg.contains("all 4 slots");
        match Builder::new().spawn_on(&rt, || ()) {
            Ok(_) => panic!("spawn_on succeeded with every slot live"),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::OutOfMemory, "{e}");
                assert!(names_limit(&e.to_string()), "{e}");
            }
        }
        let p = catch_unwind(AssertUnwindSafe(|| rt.spawn(|| ())))
            .expect_err("Runtime::spawn with every slot live panics");
        let msg = panic_message(p.as_ref());
        assert!(
            msg.starts_with("greenstack: cannot spawn") && names_limit(&msg),
            "{msg}"
        );

        // Inside: one coroutine finishes, a tester takes its slot, and
        // tries both spawns with all 4 live again.
        gate.add_permits(1);
        let tester = spawn_when_a_slot_is_free(&rt, move || {
            let err = Builder::new()
                .name("one too many")
                .spawn(|| ())
                .map(drop)
                .map_err(|e| (e.kind(), e.to_string()));
            let panicked = catch_unwind(|| greenstack::spawn(|| ()))
                .map(drop)
                .map_err(|p| panic_message(p.as_ref()));
            (err, panicked)
        });
        let (err, panicked) = join(tester);
        let (kind, msg) = err.expect_err("Builder::spawn succeeded with every slot live");
        assert_eq!(kind, io::ErrorKind::OutOfMemory, "{msg}");
        assert!(names_limit(&msg), "{msg}");
        let msg = panicked.expect_err("spawn with every slot live panics");
        assert!(
            msg.starts_with("greenstack: cannot spawn") && names_limit(&msg),
            "{msg}"
        );

        // Release the rest: spawning works again, up to 4 at once.
        gate.add_permits(4);
        for h in parked {
            join(h);
        }
        assert_eq!(join(spawn_when_a_slot_is_free(&rt, || 5)), 5);
        let again: Vec<JoinHandle<()>> = (0..4).map(|_| park(&rt)).collect();
        gate.add_permits(4);
        for h in again {
            join(h);
        }
        let s = rt.stats();
        wait_for(|| rt.stats().finished == rt.stats().spawned);
        assert_no_nofault_violations(&rt);
        println!("{s:?}");
    });
}

/// A burst of spawns far ahead of the workers: the queued coroutines hold
/// no stack (each takes one when it first runs), yet every spawn reserves
/// one, so the spawn past the arena's capacity fails at once with the
/// limit named; the reserved ones all run, and the runtime keeps serving.
#[test]
fn a_burst_holds_no_stacks_and_fails_at_spawn_past_the_capacity() {
    bounded("a burst past the capacity", || {
        const SLOTS: usize = 1_500;
        let rt = Runtime::builder()
            .workers(1)
            .arena(StackArena::builder().capacity(SLOTS))
            .build()
            .expect("a runtime with a small arena");
        if rt.arena().guard_mode() == greenstack::stack::GuardMode::Mprotect {
            // The `mprotect` fallback (kernels before 6.13) takes every
            // stack at spawn (tests/stack_memory.rs, `mapping_limit_*`).
            return;
        }
        let gate = Arc::new(Semaphore::new(0));
        let g = Arc::clone(&gate);
        let arena = rt.arena().clone();
        // One coroutine spawns until a spawn fails, without yielding: on
        // one worker, none of them starts before the burst is queued.
        let (handles, live_while_queued, err) = join(rt.spawn(move || {
            let mut handles = Vec::new();
            let err = loop {
                let g = Arc::clone(&g);
                match Builder::new().spawn(move || g.acquire().forget()) {
                    Ok(h) => handles.push(h),
                    Err(e) => break e,
                }
                assert!(handles.len() < SLOTS, "spawned past the capacity");
            };
            (handles, arena.stats().live_slots, err)
        }));
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory, "{err}");
        assert!(
            err.to_string().contains("exhausted") && err.to_string().contains("all 1500 slots"),
            "{err}"
        );
        // Every slot but the spawner's own was promised; one is live.
        assert_eq!(handles.len(), SLOTS - 1);
        assert_eq!(live_while_queued, 1, "queued coroutines held stacks");
        gate.add_permits(SLOTS);
        for h in handles {
            h.join().expect("a reserved coroutine runs");
        }
        assert_eq!(join(spawn_when_a_slot_is_free(&rt, || 7)), 7);
        wait_for(|| rt.stats().finished == rt.stats().spawned);
        assert_eq!(rt.stats().live, 0);
    });
}

/// Spawns `f` on `rt`, retrying (every millisecond, under the caller's
/// hang guard) while the arena is exhausted.
///
/// Needed after coroutines finish: `join` returns before the worker
/// releases the stack (see the next test), and even once `stats()` counts
/// the slot free, the allocator may not have it back yet (`Slot`'s drop
/// retires it, counting it pooled, before it releases it to the free
/// list).
fn spawn_when_a_slot_is_free<T: Send + 'static>(
    rt: &Runtime,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let mut f = Some(f);
    loop {
        let g = f.take().expect("not spawned yet");
        // The closure comes back on failure through this cell.
        let cell = Arc::new(std::sync::Mutex::new(Some(g)));
        let c2 = Arc::clone(&cell);
        match Builder::new().spawn_on(rt, move || {
            let g = c2.lock().unwrap().take().expect("the closure");
            g()
        }) {
            Ok(h) => return h,
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::OutOfMemory, "{e}");
                f = cell.lock().unwrap().take();
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// A coroutine that has been joined holds no stack: on a 1-slot arena,
/// spawn, join, spawn again must always work, as `thread::spawn` after a
/// `join` never fails for want of the joined thread's resources.
///
/// Today `join` returns as soon as the coroutine's body has completed,
/// before its worker releases the slot, so the next spawn may find the
/// arena exhausted: from 1.5% to 99% of 10,000 tries on the 2-vCPU
/// machine, depending on its load.
#[test]
fn spawn_after_join_never_sees_the_joined_coroutine_s_slot() {
    bounded("spawn after join", || {
        let rt = Runtime::builder()
            .workers(1)
            .arena(StackArena::builder().capacity(1))
            .build()
            .expect("a runtime with a 1-slot arena");
        for i in 0..10_000 {
            let h = Builder::new()
                .spawn_on(&rt, move || i)
                .unwrap_or_else(|e| panic!("spawn {i}, right after joining spawn {}: {e}", i - 1));
            assert_eq!(join(h), i);
        }
    });
}

// ---------------------------------------------------------------------------
// Stack sizes per spawn
// ---------------------------------------------------------------------------

/// `Builder::stack_size` at 0, 1 and `usize::MAX`, and just above the
/// largest reserve: `Err(InvalidInput)` from both `spawn` and `spawn_on`,
/// never a panic. Unlike std's `thread::Builder::stack_size`, which rounds
/// 0 and 1 up to its minimum, greenstack refuses a reserve below one page
/// ("below one page"); from one page up it rounds up to the smallest class
/// that holds the guard and the retained commit (64 KiB by default).
#[test]
fn spawn_stack_size_at_zero_one_max_and_above_the_largest_reserve() {
    bounded("per-spawn stack sizes", || {
        let rt = runtime(1);
        let cases = [
            (0, "below one page"),
            (1, "below one page"),
            (page() - 1, "below one page"),
            (
                greenstack::stack::CLASS_ADDRESS_BUDGET + 1,
                "exceeds the largest reserve",
            ),
            (usize::MAX, "exceeds the largest reserve"),
        ];
        for (size, needle) in cases {
            assert_err(
                &format!("spawn_on with stack_size({size})"),
                Builder::new().stack_size(size).spawn_on(&rt, || ()),
                io::ErrorKind::InvalidInput,
                needle,
            );
            let inside = join(rt.spawn(move || {
                Builder::new()
                    .stack_size(size)
                    .spawn(|| ())
                    .map(drop)
                    .map_err(|e| (e.kind(), e.to_string()))
            }));
            let (kind, msg) = inside.expect_err("a spawn of a bad size succeeded");
            assert_eq!(kind, io::ErrorKind::InvalidInput, "{size}: {msg}");
            assert!(msg.contains(needle), "{size}: {msg}");
        }
        // One page is served, rounded up to the smallest class.
        let h = Builder::new()
            .stack_size(page())
            .spawn_on(&rt, || 1)
            .expect("a one-page stack size is rounded up");
        assert_eq!(join(h), 1);
        // The arena itself says the same.
        for size in [0, 1, usize::MAX] {
            assert_eq!(
                rt.arena().allocate_with(size).map(drop).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
        assert_eq!(
            rt.arena().allocate_with(page()).unwrap().reserve(),
            64 * 1024
        );
    });
}

// ---------------------------------------------------------------------------
// RuntimeBuilder
// ---------------------------------------------------------------------------

/// Builds `b`, runs one coroutine on it, and drops it.
fn build_and_run(what: &str, b: greenstack::RuntimeBuilder) {
    let rt = b
        .build()
        .unwrap_or_else(|e| panic!("{what}: build failed: {e}"));
    assert_eq!(join(rt.spawn(|| 6 * 7)), 42, "{what}");
}

/// `workers`, `stack_size` and `watchdog` at 0, 1 and the maximum.
#[test]
fn runtime_builder_at_zero_one_and_max() {
    bounded("runtime builder", || {
        let b = Runtime::builder;
        // workers
        assert_err(
            "workers(0)",
            b().workers(0).build(),
            io::ErrorKind::InvalidInput,
            "at least 1 worker",
        );
        build_and_run("workers(1)", b().workers(1));
        assert_err(
            "workers(usize::MAX)",
            b().workers(usize::MAX).build(),
            io::ErrorKind::InvalidInput,
            "over the limit",
        );
        // stack_size
        for (size, needle) in [
            (0, "below one page"),
            (1, "below one page"),
            (usize::MAX, "exceeds the largest reserve"),
        ] {
            assert_err(
                &format!("stack_size({size})"),
                b().workers(1).stack_size(size).build(),
                io::ErrorKind::InvalidInput,
                needle,
            );
        }
        // watchdog: 0 is refused; 1 ns (warns about every coroutine that
        // runs at all) and the maximum (never warns) work.
        assert_err(
            "watchdog(Some(0))",
            b().workers(1).watchdog(Some(Duration::ZERO)).build(),
            io::ErrorKind::InvalidInput,
            "above zero",
        );
        for d in [Duration::from_nanos(1), Duration::MAX] {
            build_and_run(
                &format!("watchdog(Some({d:?}))"),
                b().workers(1).watchdog(Some(d)),
            );
        }
        build_and_run("watchdog(None)", b().workers(1).watchdog(None));
    });
}

// ---------------------------------------------------------------------------
// ArenaBuilder
// ---------------------------------------------------------------------------

/// Recurses through about `kib` KiB of stack (1 KiB frames).
#[inline(never)]
fn dig(kib: usize) -> usize {
    let frame = std::hint::black_box([kib as u8; 1024]);
    if kib == 0 {
        return frame[0] as usize;
    }
    dig(kib - 1) + frame[1] as usize
}

/// Builds `arena` alone (so a bad setting is reported by the arena) and as
/// a runtime's; `Ok` with a runtime that ran a coroutine growing its stack
/// by about 200 KiB, whose stats are returned.
fn arena_case(arena: ArenaBuilder) -> io::Result<greenstack::RuntimeStats> {
    arena_case_until(arena, |_| true)
}

/// As [`arena_case`], then waits (under the test's `bounded` limit) until
/// `settled` holds for the runtime's statistics.
fn arena_case_until(
    arena: ArenaBuilder,
    settled: impl Fn(&greenstack::RuntimeStats) -> bool,
) -> io::Result<greenstack::RuntimeStats> {
    arena.clone().build()?;
    let rt = Runtime::builder()
        .workers(1)
        .stack_size(1 << 20)
        .arena(arena.stack_size(1 << 20))
        .build()?;
    assert_eq!(
        join(rt.spawn(|| dig(200))),
        (0..=200).map(|k| k as u8 as usize).sum()
    );
    wait_for(|| rt.stats().arena.live_slots == 0 && settled(&rt.stats()));
    Ok(rt.stats())
}

/// Every `ArenaBuilder` knob at 0, 1 and `usize::MAX`: an `InvalidInput`
/// error naming the setting, or an arena that works. Never a panic. (For
/// the knobs that must be page multiples, the largest page multiple is
/// the next test.)
#[test]
fn arena_builder_knobs_at_zero_one_and_max() {
    bounded("arena builder knobs", || {
        let a = StackArena::builder;
        let bad = |what: String, r: io::Result<greenstack::RuntimeStats>, needle: &str| {
            assert_err(&what, r, io::ErrorKind::InvalidInput, needle)
        };
        // capacity: 0 refused, 1 serves one slot at a time, MAX refused.
        bad(
            "capacity(0)".into(),
            arena_case(a().capacity(0)),
            "at least 1 slot",
        );
        let one = a().capacity(1).build().expect("capacity(1)");
        let slot = one.allocate().expect("the one slot");
        assert_eq!(
            one.allocate().map(drop).unwrap_err().kind(),
            io::ErrorKind::OutOfMemory
        );
        drop(slot);
        one.allocate().expect("the one slot, again");
        arena_case(a().capacity(1)).expect("a runtime on a 1-slot arena");
        bad(
            "capacity(usize::MAX)".into(),
            arena_case(a().capacity(usize::MAX)),
            "exceeds",
        );
        // guard_size, initial_commit: non-zero page multiples.
        for v in SIZES {
            bad(
                format!("guard_size({v})"),
                arena_case(a().guard_size(v)),
                "guard",
            );
            bad(
                format!("initial_commit({v})"),
                arena_case(a().initial_commit(v)),
                "initial commit",
            );
        }
        // retained_commit: a page multiple of at least the initial commit.
        for v in [0, 1, usize::MAX] {
            bad(
                format!("retained_commit({v})"),
                arena_case(a().retained_commit(v)),
                "retained commit",
            );
        }
        // max_growth_step: at least a page; the maximum means "no cap".
        for v in [0, 1] {
            bad(
                format!("max_growth_step({v})"),
                arena_case(a().max_growth_step(v)),
                "max growth step",
            );
        }
        let s = arena_case(a().max_growth_step(usize::MAX)).expect("max_growth_step(MAX)");
        assert!(s.arena.growth_faults > 0, "{s:?}");
        // pool_budget: any value; 0 gives back all growth on release (at
        // once, or soon after on the runtime's trimmer), the maximum none.
        for v in SIZES {
            let case = |defer| {
                let arena = a().pool_budget(v).defer_trim(defer);
                if defer && v != usize::MAX {
                    arena_case_until(arena, |s| s.arena.bytes_reclaimed > 0)
                } else {
                    arena_case(arena)
                }
                .unwrap_or_else(|e| panic!("pool_budget({v}), defer_trim({defer}): {e}"))
            };
            for defer in [false, true] {
                let s = case(defer);
                if v == usize::MAX {
                    assert_eq!(s.arena.bytes_reclaimed, 0, "pool_budget(MAX): {s:?}");
                } else {
                    assert!(s.arena.bytes_reclaimed > 0, "pool_budget({v}): {s:?}");
                }
            }
        }
        // stack_size: as the runtime's.
        for (v, needle) in [
            (0, "below one page"),
            (1, "below one page"),
            (usize::MAX, "exceeds the largest reserve"),
        ] {
            assert_err(
                &format!("ArenaBuilder::stack_size({v})"),
                a().stack_size(v).build(),
                io::ErrorKind::InvalidInput,
                needle,
            );
        }
    });
}

/// The knobs that must be page multiples, at the largest page multiple
/// (`usize::MAX` itself is refused as no page multiple): the guard, the
/// initial and the retained commit. Each is far above any reserve, so
/// `build` must refuse it with `InvalidInput`.
///
/// Today `Config::class_for` adds them unchecked (`guard + retained_commit
/// + page`): a debug build panics with "attempt to add with overflow"
/// (stack/mod.rs), and a release build wraps, accepts the settings, and
/// with `initial_commit` the first coroutine dies of SIGSEGV.
#[test]
fn arena_builder_refuses_page_multiples_near_the_maximum() {
    bounded("arena builder, page multiples near the maximum", || {
        let a = StackArena::builder;
        for (what, b) in [
            ("guard_size", a().guard_size(page_max())),
            ("initial_commit", a().initial_commit(page_max())),
            ("retained_commit", a().retained_commit(page_max())),
        ] {
            let r = catch_unwind(AssertUnwindSafe(|| b.build())).unwrap_or_else(|p| {
                panic!(
                    "{what}({}) panicked: {}",
                    page_max(),
                    panic_message(p.as_ref())
                )
            });
            assert_eq!(
                r.map(drop).map_err(|e| e.kind()),
                Err(io::ErrorKind::InvalidInput),
                "{what}({})",
                page_max()
            );
        }
    });
}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// Counts drops of the guard a sleeping coroutine holds.
static SLEEPER_DROPS: AtomicUsize = AtomicUsize::new(0);

/// Held across `sleep(Duration::MAX)`; counts its drop.
struct SleeperGuard;

impl Drop for SleeperGuard {
    fn drop(&mut self) {
        SLEEPER_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// `time::sleep` at 0 and 1 ns returns (at once, in effect) in a coroutine
/// and on a thread; at `Duration::MAX` it sleeps for ever, until the
/// runtime's shutdown cancels the coroutine.
#[test]
fn sleep_at_zero_one_and_max() {
    bounded("sleep", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            for d in [Duration::ZERO, Duration::from_nanos(1)] {
                let t = start(side, Some(&rt), move || {
                    let t = Instant::now();
                    greenstack::time::sleep(d);
                    t.elapsed() >= d
                });
                assert!(t.join(), "{side:?}: sleep({d:?}) returned early");
            }
            let past = Instant::now();
            start(side, Some(&rt), move || greenstack::time::sleep_until(past)).join();
        }
        // The earlier coroutines may have parked already: wait for a park
        // past this baseline, made after the sleeper holds its guard, so the
        // sleeper is parked (not merely queued) when the runtime drops.
        let parks_before = rt.stats().parks;
        let holding = Arc::new(AtomicBool::new(false));
        let h = holding.clone();
        let sleeper = rt.spawn(move || {
            let _g = SleeperGuard;
            h.store(true, Ordering::SeqCst);
            greenstack::time::sleep(Duration::MAX);
            unreachable!("sleep(Duration::MAX) returned");
        });
        wait_for(|| holding.load(Ordering::SeqCst) && rt.stats().parks > parks_before);
        assert!(!sleeper.is_finished());
        drop(rt);
        assert_eq!(SLEEPER_DROPS.load(Ordering::SeqCst), 1);
        let p = sleeper.join().expect_err("the sleeper was cancelled");
        assert!(p.downcast_ref::<Cancelled>().is_some());
    });
}

/// Runs `wait` as the waiter on `side`, and `complete` (which ends the
/// wait) on the other side after [`LATER`]; returns the waiter's result.
fn with_completer<T: Send + 'static>(
    rt: &Runtime,
    side: Side,
    wait: impl FnOnce() -> T + Send + 'static,
    complete: impl FnOnce() + Send + 'static,
) -> T {
    let other = match side {
        Side::Co => Side::Th,
        Side::Th => Side::Co,
    };
    let waiter = start(side, Some(rt), wait);
    let completer = start(other, Some(rt), move || {
        nap(LATER);
        complete();
    });
    completer.join();
    waiter.join()
}

/// Every timed wait of `greenstack::sync` at 0, 1 ns and `Duration::MAX`,
/// in a coroutine and on a thread: at 0 and 1 ns they time out at once
/// (but still take what is ready); at the maximum they wait, and the other
/// side completes the wait.
#[test]
fn timed_waits_at_zero_one_and_max() {
    bounded("timed waits", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            for d in DURATIONS {
                timed_waits(&rt, side, d);
            }
        }
        assert_no_nofault_violations(&rt);
    });
}

/// The cases of [`timed_waits_at_zero_one_and_max`] for one side and `d`.
fn timed_waits(rt: &Runtime, side: Side, d: Duration) {
    let what = format!("{side:?}, {d:?}");
    let forever = d == Duration::MAX;

    // Condvar::wait_timeout and wait_timeout_while.
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let p2 = Arc::clone(&pair);
    let waited = move || {
        let (m, cv) = &*p2;
        let (g, r) = cv.wait_timeout_while(m.lock(), d, |ready| !*ready);
        (*g, r.timed_out())
    };
    let p3 = Arc::clone(&pair);
    let notify = move || {
        *p3.0.lock() = true;
        p3.1.notify_all();
    };
    if forever {
        assert_eq!(
            with_completer(rt, side, waited, notify),
            (true, false),
            "{what}"
        );
        let (m, cv) = &*pair;
        // Already true: wait_timeout_while returns at once.
        let (g, r) = cv.wait_timeout_while(m.lock(), d, |ready| !*ready);
        assert!(*g && !r.timed_out(), "{what}");
    } else {
        assert_eq!(
            start(side, Some(rt), waited).join(),
            (false, true),
            "{what}"
        );
        let p4 = Arc::clone(&pair);
        let plain = start(side, Some(rt), move || {
            let (m, cv) = &*p4;
            cv.wait_timeout(m.lock(), d).1.timed_out()
        });
        assert!(plain.join(), "{what}: wait_timeout did not time out");
    }

    // mpsc::Receiver::recv_timeout, and SyncSender::send_timeout.
    let (tx, rx) = mpsc::channel::<u32>();
    if forever {
        let got = with_completer(
            rt,
            side,
            move || rx.recv_timeout(d),
            move || tx.send(1).unwrap(),
        );
        assert_eq!(got, Ok(1), "{what}");
    } else {
        let got = start(side, Some(rt), move || {
            let empty = rx.recv_timeout(d);
            tx.send(2).unwrap();
            (empty, rx.recv_timeout(d))
        })
        .join();
        assert_eq!(got, (Err(mpsc::RecvTimeoutError::Timeout), Ok(2)), "{what}");
    }
    let (stx, srx) = mpsc::sync_channel::<u32>(1);
    stx.send(0).unwrap();
    if forever {
        // The receiver comes back here, so it outlives the send.
        let (keep_tx, keep) = std::sync::mpsc::channel();
        let got = with_completer(
            rt,
            side,
            move || stx.send_timeout(3, d).map_err(|e| e.to_string()),
            move || {
                assert_eq!(srx.recv(), Ok(0));
                keep_tx.send(srx).unwrap();
            },
        );
        assert_eq!(got, Ok(()), "{what}");
        assert_eq!(keep.recv().unwrap().recv(), Ok(3), "{what}");
    } else {
        let got = start(side, Some(rt), move || {
            let full = matches!(stx.send_timeout(3, d), Err(mpsc::TrySendError::Full(3)));
            srx.recv().unwrap();
            (full, stx.send_timeout(4, d).is_ok(), srx.recv())
        })
        .join();
        assert_eq!(got, (true, true, Ok(4)), "{what}");
    }

    // mpmc and oneshot recv_timeout.
    let (mtx, mrx) = mpmc::channel::<u32>();
    let (otx, orx) = oneshot::channel::<u32>();
    if forever {
        let got = with_completer(
            rt,
            side,
            move || (mrx.recv_timeout(d), orx.recv_timeout(d)),
            move || {
                mtx.send(5).unwrap();
                otx.send(6).unwrap();
            },
        );
        assert_eq!(got, (Ok(5), Ok(6)), "{what}");
    } else {
        let got = start(side, Some(rt), move || {
            let empty = (mrx.recv_timeout(d), orx.recv_timeout(d));
            mtx.send(5).unwrap();
            otx.send(6).unwrap();
            (empty, mrx.recv_timeout(d), orx.recv_timeout(d))
        })
        .join();
        let timeout = Err(mpsc::RecvTimeoutError::Timeout);
        assert_eq!(got, ((timeout, timeout), Ok(5), Ok(6)), "{what}");
    }

    // Mutex::lock_timeout: held by the other side until told, then free.
    let m = Arc::new(Mutex::new(0u32));
    let (held, release) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let (m2, held2, release2) = (Arc::clone(&m), Arc::clone(&held), Arc::clone(&release));
    let holder = start(side_other(side), Some(rt), move || {
        let mut g = m2.lock();
        held2.add_permits(1);
        release2.acquire().forget();
        *g += 1;
    });
    held.acquire().forget();
    let m3 = Arc::clone(&m);
    let waiter = start(side, Some(rt), move || m3.lock_timeout(d).map(|g| *g));
    if forever {
        nap(LATER);
        release.add_permits(1);
        assert_eq!(
            waiter.join(),
            Some(1),
            "{what}: lock_timeout(MAX) gets the lock once free"
        );
    } else {
        assert_eq!(waiter.join(), None, "{what}: lock_timeout on a held mutex");
        release.add_permits(1);
    }
    holder.join();
    let m4 = Arc::clone(&m);
    let got = start(side, Some(rt), move || m4.lock_timeout(d).map(|g| *g)).join();
    assert_eq!(got, Some(1), "{what}: lock_timeout on a free mutex");

    // Semaphore::acquire_timeout.
    let sem = Arc::new(Semaphore::new(0));
    let (s2, s3) = (Arc::clone(&sem), Arc::clone(&sem));
    if forever {
        let got = with_completer(
            rt,
            side,
            move || s2.acquire_timeout(d).map(|g| g.forget()).is_some(),
            move || s3.add_permits(1),
        );
        assert!(got, "{what}");
    } else {
        let got = start(side, Some(rt), move || {
            let none = s2.acquire_timeout(d).is_none();
            s2.add_permits(1);
            (none, s2.acquire_timeout(d).is_some())
        })
        .join();
        assert_eq!(got, (true, true), "{what}");
    }

    // WaitGroup::wait_timeout.
    let wg = Arc::new(WaitGroup::new());
    wg.add(1);
    let (w2, w3) = (Arc::clone(&wg), Arc::clone(&wg));
    if forever {
        assert!(
            with_completer(rt, side, move || w2.wait_timeout(d), move || w3.done()),
            "{what}"
        );
    } else {
        let got = start(side, Some(rt), move || {
            let pending = w2.wait_timeout(d);
            w2.done();
            (pending, w2.wait_timeout(d))
        })
        .join();
        assert_eq!(got, (false, true), "{what}");
    }
}

/// The side that is not `side`.
fn side_other(side: Side) -> Side {
    match side {
        Side::Co => Side::Th,
        Side::Th => Side::Co,
    }
}

/// Counts in `greenstack::sync` at 0, 1 and the maximum: semaphore
/// permits, wait-group counts, barrier parties and channel bounds.
#[test]
fn sync_counts_at_zero_one_and_max() {
    bounded("sync counts", || {
        let rt = runtime(2);
        // Semaphore::new, acquire_many, try_acquire_many, add_permits.
        for n in SIZES {
            let sem = Semaphore::new(n);
            assert_eq!(sem.available_permits(), n);
            assert!(sem.try_acquire_many(0).is_some(), "{n}: 0 permits");
            drop(sem.acquire_many(0));
            match sem.try_acquire_many(n) {
                Some(g) => {
                    assert_eq!(sem.available_permits(), 0);
                    drop(g);
                }
                None => panic!("{n} permits of {n}"),
            }
            assert_eq!(sem.available_permits(), n);
            assert!(n == usize::MAX || sem.try_acquire_many(n + 1).is_none());
            sem.add_permits(usize::MAX);
            assert_eq!(sem.available_permits(), usize::MAX, "saturates");
            drop(sem.acquire_many(usize::MAX));
        }
        // WaitGroup::add.
        for n in SIZES {
            let wg = WaitGroup::new();
            wg.add(n);
            assert_eq!(wg.count(), n);
            assert_eq!(wg.wait_timeout(Duration::ZERO), n == 0);
        }
        // Barrier::new: 0 behaves as 1, as std's does; MAX only builds.
        for n in [0, 1] {
            let b = Barrier::new(n);
            assert!(b.wait().is_leader(), "Barrier::new({n})");
            let b = Arc::new(Barrier::new(n));
            assert!(join(rt.spawn(move || b.wait().is_leader())));
        }
        let _ = format!("{:?}", Barrier::new(usize::MAX));
        // Channel bounds: 0 is a rendezvous, the maximum is unbounded in
        // effect.
        for bound in SIZES {
            let (tx, rx) = mpsc::sync_channel::<usize>(bound);
            let (mtx, mrx) = mpmc::bounded::<usize>(bound);
            let sender = rt.spawn(move || {
                for i in 0..3 {
                    tx.send(i).unwrap();
                    mtx.send(i).unwrap();
                }
            });
            let got: Vec<usize> = (0..3)
                .map(|_| rx.recv().unwrap() + 10 * mrx.recv().unwrap())
                .collect();
            join(sender);
            assert_eq!(got, [0, 11, 22], "bound {bound}");
        }
    });
}

// ---------------------------------------------------------------------------
// Socket timeouts
// ---------------------------------------------------------------------------

/// A read with a 1 ns timeout on a silent socket: std reports `WouldBlock`
/// on Unix (greenstack documents the same); `TimedOut` is accepted too.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// `set_read_timeout`/`set_write_timeout` on TCP, UDP and Unix sockets and
/// `TcpStream::connect_timeout`, at 0 (`InvalidInput`, as std), 1 ns (the
/// read times out) and `Duration::MAX` (the read waits until the peer
/// writes), in a coroutine and on a thread.
#[test]
fn socket_timeouts_at_zero_one_and_max() {
    bounded("socket timeouts", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            let client = Arc::new(client);
            let c = Arc::clone(&client);
            let zero = start(side, Some(&rt), move || {
                let r = (
                    c.set_read_timeout(Some(Duration::ZERO)),
                    c.set_write_timeout(Some(Duration::ZERO)),
                    TcpStream::connect_timeout(&addr, Duration::ZERO).map(drop),
                );
                (r, c.read_timeout().unwrap(), c.write_timeout().unwrap())
            })
            .join();
            let ((r, w, conn), rt_after, wt_after) = zero;
            for (what, e) in [("read", r), ("write", w), ("connect", conn)] {
                assert_err(
                    &format!("{side:?}: {what} timeout 0"),
                    e,
                    io::ErrorKind::InvalidInput,
                    "0 duration",
                );
            }
            assert_eq!(
                (rt_after, wt_after),
                (None, None),
                "a refused timeout is not set"
            );

            // 1 ns: the read times out; connect may or may not make it.
            let c = Arc::clone(&client);
            let one = start(side, Some(&rt), move || {
                let ns = Duration::from_nanos(1);
                c.set_read_timeout(Some(ns)).unwrap();
                c.set_write_timeout(Some(ns)).unwrap();
                let read = (&*c).read(&mut [0u8; 8]).map_err(|e| e.kind());
                let conn = TcpStream::connect_timeout(&addr, ns).map(drop);
                (read, conn, c.read_timeout().unwrap())
            })
            .join();
            assert!(
                matches!(
                    one.0,
                    Err(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
                ),
                "{side:?}: a 1 ns read: {:?}",
                one.0
            );
            assert!(
                one.1.as_ref().map_or_else(is_timeout, |()| true),
                "{side:?}: a 1 ns connect: {:?}",
                one.1
            );
            assert_eq!(one.2, Some(Duration::from_nanos(1)));

            // The maximum: the read waits for the peer.
            let c = Arc::clone(&client);
            let got = with_completer(
                &rt,
                side,
                move || {
                    c.set_read_timeout(Some(Duration::MAX)).unwrap();
                    c.set_write_timeout(Some(Duration::MAX)).unwrap();
                    let conn = TcpStream::connect_timeout(&addr, Duration::MAX).map(drop);
                    let mut buf = [0u8; 8];
                    let n = (&*c).read(&mut buf).unwrap();
                    (conn.is_ok(), buf[..n].to_vec(), c.read_timeout().unwrap())
                },
                move || (&server).write_all(b"late").unwrap(),
            );
            assert!(got.0, "{side:?}: connect_timeout(MAX)");
            assert_eq!(got.1, b"late", "{side:?}");
            assert!(
                got.2
                    .is_some_and(|t| t >= Duration::from_secs(100 * 365 * 86_400)),
                "{side:?}: read_timeout after Some(MAX): {:?}",
                got.2
            );
            client.set_read_timeout(None).unwrap();
            assert_eq!(client.read_timeout().unwrap(), None);
            drop(listener);

            // UDP and Unix streams: the same rules.
            let (ua, ub) = (
                UdpSocket::bind("127.0.0.1:0").unwrap(),
                UdpSocket::bind("127.0.0.1:0").unwrap(),
            );
            let to = ub.local_addr().unwrap();
            let (xa, xb) = UnixStream::pair().unwrap();
            assert_err(
                "udp read timeout 0",
                ub.set_read_timeout(Some(Duration::ZERO)),
                io::ErrorKind::InvalidInput,
                "0 duration",
            );
            assert_err(
                "unix read timeout 0",
                xb.set_read_timeout(Some(Duration::ZERO)),
                io::ErrorKind::InvalidInput,
                "0 duration",
            );
            let (ub, xb) = (Arc::new(ub), Arc::new(xb));
            let (ub2, xb2) = (Arc::clone(&ub), Arc::clone(&xb));
            let one = start(side, Some(&rt), move || {
                let ns = Some(Duration::from_nanos(1));
                ub2.set_read_timeout(ns).unwrap();
                xb2.set_read_timeout(ns).unwrap();
                let mut buf = [0u8; 8];
                (
                    ub2.recv(&mut buf).map_err(|e| e.kind()),
                    (&*xb2).read(&mut buf).map_err(|e| e.kind()),
                )
            })
            .join();
            for r in [one.0, one.1] {
                assert!(
                    matches!(r, Err(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
                    "{side:?}: a 1 ns read: {r:?}"
                );
            }
            let got = with_completer(
                &rt,
                side,
                move || {
                    ub.set_read_timeout(Some(Duration::MAX)).unwrap();
                    xb.set_read_timeout(Some(Duration::MAX)).unwrap();
                    let mut buf = [0u8; 8];
                    let n = ub.recv(&mut buf).unwrap();
                    let m = (&*xb).read(&mut buf[n..]).unwrap();
                    buf[..n + m].to_vec()
                },
                move || {
                    ua.send_to(b"ud", to).unwrap();
                    (&xa).write_all(b"ux").unwrap();
                },
            );
            assert_eq!(got, b"udux", "{side:?}");
        }
    });
}

// ---------------------------------------------------------------------------
// prefault
// ---------------------------------------------------------------------------

/// `stack::prefault` at 0, 1 and `usize::MAX`: on a plain thread a no-op;
/// in a coroutine, the maximum commits what remains down to the guard (the
/// whole reserve less the guard), and nothing faults or panics.
#[test]
fn prefault_at_zero_one_and_max() {
    bounded("prefault", || {
        for size in SIZES {
            greenstack::stack::prefault(size);
        }
        let rt = runtime(1);
        let reserve = rt.arena().default_stack_size();
        let before = rt.stats().arena.committed_bytes;
        let committed = join(rt.spawn(move || {
            for size in SIZES {
                greenstack::stack::prefault(size);
            }
            // Use the prefaulted stack: nothing may fault now.
            dig(reserve / 1024 / 4)
        }));
        assert!(committed > 0);
        let s = rt.stats().arena;
        assert!(
            s.committed_bytes - before >= reserve - 2 * page(),
            "prefault(usize::MAX) committed {} of a {reserve}-byte reserve",
            s.committed_bytes - before
        );
        assert_eq!(s.growth_faults, 1, "one growth, by the prefault: {s:?}");
        assert_no_nofault_violations(&rt);
    });
}

// ---------------------------------------------------------------------------
// Panics
// ---------------------------------------------------------------------------

/// Panics in its destructor, as the second panic of a double panic.
struct PanicsOnDrop(&'static str);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("{}", self.0);
    }
}

/// The body both children of the double-panic test run: a panic whose
/// unwinding drops a value that panics too.
fn double_panic() {
    let _bomb = PanicsOnDrop("second panic, in a destructor while unwinding");
    panic!("first panic");
}

/// A panic while unwinding aborts the process, on a std thread and in a
/// coroutine alike (Rust's "panic in a destructor during cleanup").
#[test]
fn panic_while_unwinding_aborts_as_on_a_thread() {
    match child_scenario().as_deref() {
        Some("double-panic-thread") => {
            let _ = thread::spawn(double_panic).join();
            println!("survived a double panic on a thread");
            return;
        }
        Some("double-panic-coroutine") => {
            let rt = runtime(1);
            let _ = rt.spawn(double_panic).join();
            println!("survived a double panic in a coroutine");
            return;
        }
        _ => {}
    }
    let name = "panic_while_unwinding_aborts_as_on_a_thread";
    for scenario in ["double-panic-thread", "double-panic-coroutine"] {
        let out = run_child(name, scenario);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{scenario}: {}",
            describe(&out)
        );
        assert!(
            stderr.contains("first panic") && stderr.contains("second panic"),
            "{scenario}: both panics are reported: {}",
            describe(&out)
        );
        assert!(
            stderr.contains("panic in a destructor during cleanup"),
            "{scenario}: {}",
            describe(&out)
        );
    }
}

/// Parks the calling coroutine for ever (spurious wake-ups included).
fn park_forever() -> ! {
    loop {
        greenstack::park();
    }
}

/// A parked coroutine holds a value whose destructor panics, and the
/// runtime is dropped: the shutdown's cancellation unwind runs that destructor,
/// so it panics while an unwind is in progress. Rust aborts in that case,
/// for a coroutine exactly as for a std thread whose destructor panics
/// during a panic (the documented behaviour: README, Limitations). What must
/// hold: the process ends with SIGABRT and says why; it never hangs.
#[test]
fn panic_in_drop_during_shutdown_of_a_parked_coroutine_aborts_as_std_does() {
    if child_scenario().is_some() {
        let rt = runtime(1);
        let _h = rt.spawn(|| {
            let _bomb = PanicsOnDrop("destructor panicked during shutdown");
            park_forever()
        });
        wait_for(|| rt.stats().parks >= 1);
        drop(rt);
        unreachable!("a destructor panicking during the cancellation unwind aborts");
    }
    let out = run_child(
        "panic_in_drop_during_shutdown_of_a_parked_coroutine_aborts_as_std_does",
        "drop-panic-parked",
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("panic in a destructor during cleanup"),
        "{}",
        describe(&out)
    );
}

/// Threads of this process named `greenstack-blocking`.
fn blocking_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "greenstack-bloc")
                })
                .count()
        })
        .unwrap_or(0)
}

/// A coroutine that never started holds (in its closure) a value whose
/// destructor panics, and the runtime is dropped: the shutdown drops the
/// closure (no unwind is in progress, so nothing aborts). The process
/// neither aborts nor hangs, and the runtime's drop returns or unwinds.
///
/// What happens today (printed): the panic propagates out of
/// `drop(runtime)` with the destructor's payload, as a panicking element
/// propagates out of a `Vec`'s drop; the never-started coroutine's joiner
/// sees `Cancelled`; and the rest of `Runtime::drop` is skipped, so an
/// idle `spawn_blocking` thread is not told to stop (it leaves after its
/// 10 s keep-alive).
#[test]
fn panic_in_drop_during_shutdown_of_a_never_started_coroutine() {
    if child_scenario().is_some() {
        let rt = runtime(1);
        join(rt.spawn(|| join(greenstack::spawn_blocking(|| ()))));
        let started = Arc::new(Semaphore::new(0));
        let s2 = Arc::clone(&started);
        // Holds the only worker (without parking) until shutdown begins,
        // so the next spawn stays queued: spawns succeed until the drop
        // has set the shutdown flag (a probe, queued, is dropped unrun).
        let blocker = rt.spawn(move || {
            s2.add_permits(1);
            while greenstack::Builder::new().spawn(|| ()).is_ok() {
                // A busy wait: `thread::sleep` would park the coroutine.
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_millis(1) {
                    std::hint::spin_loop();
                }
            }
        });
        started.acquire().forget();
        let bomb = PanicsOnDrop("destructor of a never-started closure panicked");
        let queued = rt.spawn(move || drop(bomb));
        let idle_before = blocking_threads();
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(rt)));
        thread::sleep(Duration::from_millis(100));
        println!(
            "runtime dropped: {:?}; blocker: {:?}; queued: {}; blocking threads {idle_before} before the drop, {} 100 ms after",
            dropped.map_err(|p| panic_message(p.as_ref())),
            blocker.join().map_err(|p| panic_message(p.as_ref())),
            match queued.join() {
                Ok(()) => "ran".to_string(),
                Err(p) if p.downcast_ref::<Cancelled>().is_some() => "Cancelled".to_string(),
                Err(p) => panic_message(p.as_ref()),
            },
            blocking_threads()
        );
        return;
    }
    let out = run_child(
        "panic_in_drop_during_shutdown_of_a_never_started_coroutine",
        "drop-panic-queued",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    let at = stdout
        .find("runtime dropped")
        .unwrap_or_else(|| panic!("{}", describe(&out)));
    println!("{}", stdout[at..].lines().next().unwrap_or(""));
    assert!(
        stdout[at..].contains("queued: Cancelled"),
        "the never-started coroutine's joiner sees Cancelled: {}",
        describe(&out)
    );
}

/// A panic in `block_on`'s root resumes on the caller with the same
/// payload, as `thread::spawn(..).join()` returns it; the runtime keeps
/// serving.
#[test]
fn panic_in_block_on_root_resumes_on_the_caller() {
    bounded("block_on panics", || {
        let rt = runtime(2);
        let p = catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(|| std::panic::panic_any(42u32))
        }))
        .expect_err("block_on's root panicked");
        assert_eq!(p.downcast_ref::<u32>(), Some(&42));
        let t = thread::spawn(|| std::panic::panic_any(42u32))
            .join()
            .expect_err("the thread panicked");
        assert_eq!(t.downcast_ref::<u32>(), p.downcast_ref::<u32>());

        let p = catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(|| {
                // After a switch too: the payload crosses the root's stack.
                greenstack::yield_now();
                let h = greenstack::spawn(|| 1);
                let one = h.join().unwrap();
                panic!("root panicked after {one} join");
            })
        }))
        .expect_err("block_on's root panicked");
        assert_eq!(panic_message(p.as_ref()), "root panicked after 1 join");

        assert_eq!(rt.block_on(|| 7), 7, "the runtime still serves");
        wait_for(|| rt.stats().finished == rt.stats().spawned);
        assert_eq!(rt.stats().arena.live_slots, 0);
    });
}
