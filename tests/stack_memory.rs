//! What live stacks cost: mappings, resident memory and page tables, and the
//! mapping limit of the `mprotect` fallback.
//!
//! Each measurement runs in a child process of its own (this binary re-run
//! with an environment variable), so no other test's allocations disturb
//! VmRSS, and exhausting the mapping limit harms nobody.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use greenstack::stack::{GuardMode, StackArena};

mod common;

const CHILD_ENV: &str = "GREENSTACK_MEMORY_CHILD";

/// Re-runs test `name` in a child with `scenario`; returns its stdout.
fn run_child(name: &str, scenario: &str) -> String {
    run_child_env(name, scenario, &[])
}

/// [`run_child`] with extra environment variables.
fn run_child_env(name: &str, scenario: &str, env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawning the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {scenario} failed: {:?} (signal {:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// VmRSS + VmPTE of this process, in bytes.
fn rss_plus_pte() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |key: &str| -> usize {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (kib("VmRSS:") + kib("VmPTE:")) * 1024
}

fn maps_lines() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Child: 100,000 live slots of `reserve` bytes, tops touched. Prints the
/// per-slot cost and the maps growth.
fn measure(reserve: usize) {
    const N: usize = 100_000;
    let arena = StackArena::builder().stack_size(reserve).build().unwrap();
    assert_eq!(arena.guard_mode(), GuardMode::Markers);
    // Warm up the class (reservation, first chunk) and the slot vector.
    let mut slots = Vec::with_capacity(N);
    drop(arena.allocate().unwrap());
    let (mem0, maps0) = (rss_plus_pte(), maps_lines());
    for _ in 0..N {
        let slot = arena.allocate().unwrap();
        // SAFETY: the top page of a live slot is committed and ours.
        unsafe { ((slot.top() - 64) as *mut u8).write_volatile(1) };
        slots.push(slot);
    }
    let (mem1, maps1) = (rss_plus_pte(), maps_lines());
    println!(
        "per_slot={} maps_added={}",
        (mem1 - mem0) / N,
        maps1 as i64 - maps0 as i64
    );
}

/// Parses `per_slot=X maps_added=Y` from a child's output.
fn parse(stdout: &str) -> (usize, i64) {
    // libtest may print the test's name on the same line first.
    let at = stdout
        .find("per_slot=")
        .unwrap_or_else(|| panic!("child printed no figures:\n{stdout}"));
    let line = stdout[at..].lines().next().unwrap();
    let mut it = line
        .split_whitespace()
        .map(|kv| kv.split('=').nth(1).unwrap());
    (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    )
}

/// The floor DESIGN.md measured: one stack page plus its share of a
/// page-table page, 4 KiB × min(1, reserve / 2 MiB).
fn floor_per_slot(reserve: usize) -> usize {
    4096 + 4096 * reserve.min(2 << 20) / (2 << 20)
}

fn check_cost(test: &str, reserve: usize) {
    let (per_slot, maps_added) = parse(&run_child(test, &reserve.to_string()));
    let floor = floor_per_slot(reserve);
    println!("reserve {reserve}: {per_slot} bytes per live slot (floor {floor}), {maps_added} maps lines added");
    assert!(
        maps_added < 100,
        "100,000 slots added {maps_added} lines to /proc/self/maps"
    );
    assert!(
        per_slot * 10 <= floor * 11,
        "{per_slot} bytes per slot is over 1.1x the floor of {floor}"
    );
}

fn child() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

#[test]
fn live_slots_cost_the_floor_at_default_reserve() {
    if let Some(r) = child() {
        return measure(r.parse().unwrap());
    }
    check_cost(
        "live_slots_cost_the_floor_at_default_reserve",
        greenstack::stack::DEFAULT_STACK_SIZE,
    );
}

#[test]
fn live_slots_cost_the_floor_at_8_mib_reserve() {
    if let Some(r) = child() {
        return measure(r.parse().unwrap());
    }
    check_cost("live_slots_cost_the_floor_at_8_mib_reserve", 8 << 20);
}

#[test]
fn fallback_names_the_mapping_limit() {
    if child().is_some() {
        let arena = StackArena::builder()
            .guard_mode(GuardMode::Mprotect)
            .build()
            .unwrap();
        let mut slots = Vec::new();
        let err = loop {
            match arena.allocate() {
                Ok(s) => slots.push(s),
                Err(e) => break e,
            }
            assert!(slots.len() < 1_000_000, "no mapping limit hit");
        };
        println!("live={} error={err}", slots.len());
        // The arena keeps serving once stacks are released.
        slots.truncate(slots.len() / 2);
        arena.allocate().expect("allocation after releasing half");
        return;
    }
    let out = run_child("fallback_names_the_mapping_limit", "maplimit");
    let at = out
        .find("live=")
        .unwrap_or_else(|| panic!("child printed no result:\n{out}"));
    let line = out[at..].lines().next().unwrap();
    assert!(
        line.contains("vm.max_map_count"),
        "error does not name the sysctl: {line}"
    );
    let live: usize = line["live=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Two mappings per live stack: the limit is reached near half the sysctl.
    assert!(
        live > limit / 4 && live < limit,
        "{live} live stacks at max_map_count {limit}"
    );
}

/// The kernel's `vm.max_map_count`.
fn kernel_map_limit() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Runs scenario `what` of [`spawn_to_the_limit`] in a child with the
/// `mprotect` fallback forced and the mapping limit planned for at most
/// Linux's default 65,530 (lowered through `GREENSTACK_MAX_MAP_COUNT` on a
/// machine whose sysctl is higher, so the child stays small).
fn run_limit_child(name: &str, what: &str) -> String {
    let limit = kernel_map_limit().min(65_530);
    run_child_env(
        name,
        what,
        &[
            ("GREENSTACK_GUARD_MODE", "mprotect".into()),
            ("GREENSTACK_MAX_MAP_COUNT", limit.to_string()),
        ],
    )
}

/// The program of issue 17, item 13, in a child: on 2 workers, spawn
/// coroutines that report in and park until `Builder::spawn` fails, then
/// (`wait`) wait for every coroutine it accepted, or (`alloc`) allocate
/// a few MiB with malloc, or (`error`) print the spawn's error. Bounded
/// by a hang guard: a hang fails the child.
///
/// In `wait`, both workers are held busy while the root spawns, so the
/// spawner runs far ahead of its workers (as a loop spawning before it
/// joins does on a loaded machine): that is the backlog past which stacks
/// were once taken lazily, at start, where the mapping limit then failed
/// coroutines `spawn` had accepted.
fn spawn_to_the_limit(what: String) {
    common::bounded_for(
        "spawning to the mapping limit",
        Duration::from_secs(90),
        move || {
            let rt = common::runtime(2);
            let what2 = what.clone();
            rt.block_on(move || {
                use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
                let busy = std::sync::Arc::new((AtomicUsize::new(0), AtomicBool::new(false)));
                let mut spinners = Vec::new();
                if what2 == "wait" {
                    for _ in 0..2 {
                        let busy = busy.clone();
                        spinners.push(greenstack::spawn(move || {
                            busy.0.fetch_add(1, SeqCst);
                            while !busy.1.load(SeqCst) {
                                std::hint::spin_loop();
                            }
                        }));
                    }
                    while busy.0.load(SeqCst) < 2 {
                        std::thread::yield_now();
                    }
                }
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let mut got = 0usize;
                let mut err = None;
                // The 100,000 is past the budget at any limit up to
                // 65,530, which `run_limit_child` plans for.
                let cap = if what2 == "wait" { 100_000 } else { 1_000_000 };
                for _ in 0..cap {
                    let tx = tx.clone();
                    match greenstack::Builder::new().spawn(move || {
                        tx.send(()).unwrap();
                        greenstack::park();
                    }) {
                        Ok(h) => {
                            std::mem::forget(h);
                            got += 1;
                        }
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                busy.1.store(true, SeqCst);
                for s in spinners {
                    s.join().unwrap();
                }
                if what2 == "wait" {
                    // Every accepted coroutine reports in; one that never
                    // ran leaves this waiting until the hang guard fires.
                    for _ in 0..got {
                        rx.recv().unwrap();
                    }
                    println!("waited for all {got}");
                }
                let err = err.unwrap_or_else(|| panic!("no spawn failed in {cap} coroutines"));
                match what2.as_str() {
                    "wait" => println!("the spawn after {got} failed: {err}"),
                    "error" => println!("got={got} kind={:?} error={err}", err.kind()),
                    "alloc" => {
                        println!("limit reached at {got}: {err}");
                        allocate_a_few_mib("the root coroutine");
                    }
                    other => panic!("unknown scenario {other}"),
                }
            });
            if what == "alloc" {
                allocate_a_few_mib("the main thread");
                std::thread::spawn(|| allocate_a_few_mib("a new thread"))
                    .join()
                    .unwrap();
            }
            drop(rt);
            println!("runtime dropped");
        },
    );
}

/// Allocates and touches 16 vectors and 4 boxes of 1 MiB to 4 MiB, each
/// its own `mmap` (past malloc's threshold), all alive at once.
fn allocate_a_few_mib(on: &str) {
    let vecs: Vec<Vec<u8>> = (1..=16).map(|i| vec![i as u8; 4 << 20]).collect();
    let boxes: Vec<Box<[u64]>> = (1..=4)
        .map(|i| vec![i as u64; i << 17].into_boxed_slice())
        .collect();
    let sum: usize = vecs.iter().map(|v| v[v.len() - 1] as usize).sum::<usize>()
        + boxes.iter().map(|b| b[b.len() - 1] as usize).sum::<usize>();
    assert_eq!(sum, (1..=16).sum::<usize>() + (1..=4).sum::<usize>());
    println!("allocated {} MiB on {on}", (16 * 4) + (1 + 2 + 3 + 4));
}

/// Issue 17, item 13 (a): with the `mprotect` fallback, a program that
/// spawns until `spawn` fails and then waits for every coroutine it got
/// completes: every spawn that returned `Ok` runs (it hung in 7 of 11
/// runs when spawns past a backlog took their stack only at start, and
/// failed there).
#[test]
fn mapping_limit_spawn_then_wait_for_all_completes() {
    if let Some(w) = child() {
        return spawn_to_the_limit(w);
    }
    let out = run_limit_child("mapping_limit_spawn_then_wait_for_all_completes", "wait");
    assert!(out.contains("waited for all"), "{out}");
    assert!(out.contains("vm.max_map_count"), "{out}");
    assert!(out.contains("runtime dropped"), "{out}");
}

/// Issue 17, item 13: a spawn past the mapping limit returns an
/// `OutOfMemory` error naming `vm.max_map_count`, after about
/// `(limit - reserve) / 2` coroutines.
#[test]
fn mapping_limit_spawn_error_names_the_sysctl() {
    if let Some(w) = child() {
        return spawn_to_the_limit(w);
    }
    let out = run_limit_child("mapping_limit_spawn_error_names_the_sysctl", "error");
    let at = out
        .find("got=")
        .unwrap_or_else(|| panic!("child printed no result:\n{out}"));
    let line = out[at..].lines().next().unwrap();
    assert!(line.contains("kind=OutOfMemory"), "{line}");
    assert!(line.contains("vm.max_map_count"), "{line}");
    let got: usize = line["got=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let limit = kernel_map_limit().min(65_530);
    assert!(
        got > limit / 4 && got < limit / 2,
        "{got} coroutines at a mapping limit of {limit}"
    );
}

/// Issue 17, item 13: once spawn has hit the mapping limit, malloc still
/// gets the mappings it needs (the arena leaves a reserve to the rest of
/// the process): vectors and boxes of a few MiB on a coroutine, the main
/// thread and a new thread (whose stack takes mappings too). Before the
/// reserve, the arena took every mapping and such an allocation aborted
/// the process.
#[test]
fn mapping_limit_leaves_room_for_malloc() {
    if let Some(w) = child() {
        return spawn_to_the_limit(w);
    }
    let out = run_limit_child("mapping_limit_leaves_room_for_malloc", "alloc");
    for on in ["the root coroutine", "the main thread", "a new thread"] {
        assert!(out.contains(&format!("allocated 74 MiB on {on}")), "{out}");
    }
    assert!(out.contains("runtime dropped"), "{out}");
}

/// With the `mprotect` fallback at the mapping budget, the slots one size
/// class has pooled give their mappings back when another class needs a
/// stack (before, the 256 MiB parser of the showcase could not start after
/// its 100,000 parked coroutines had finished). The budget is lowered to
/// 100 stacks through `GREENSTACK_MAX_MAP_COUNT` (4,096 left to the rest of
/// the process, plus 200).
#[test]
fn mapping_budget_moves_between_size_classes() {
    if child().is_some() {
        let arena = StackArena::builder()
            .guard_mode(GuardMode::Mprotect)
            .build()
            .unwrap();
        let mut slots = Vec::new();
        let err = loop {
            match arena.allocate() {
                Ok(s) => slots.push(s),
                Err(e) => break e,
            }
            assert!(slots.len() <= 100, "the budget of 100 stacks was passed");
        };
        assert_eq!(slots.len(), 100, "{err}");
        assert!(err.to_string().contains("vm.max_map_count"), "{err}");
        let big = arena.allocate_with(1 << 20);
        assert!(big.is_err(), "a second class set up past the budget");
        drop(slots);
        let big = arena
            .allocate_with(1 << 20)
            .expect("pooled slots of the first class gave their mappings back");
        assert_eq!(big.reserve(), 1 << 20);
        let again: Vec<_> = (0..99).map(|_| arena.allocate().unwrap()).collect();
        assert!(arena.allocate().is_err(), "the budget still holds");
        drop((big, again));
        println!("budget moved");
        return;
    }
    let out = run_child_env(
        "mapping_budget_moves_between_size_classes",
        "classes",
        &[("GREENSTACK_MAX_MAP_COUNT", "4296".into())],
    );
    assert!(out.contains("budget moved"), "{out}");
}

/// A process whose address space is limited (`ulimit -v`, `RLIMIT_AS`, or
/// valgrind's address space manager) cannot reserve a size class's default
/// 256 GiB: the class takes the capacity that fits, and coroutines run.
/// Before, every spawn failed with `ENOMEM` (`EINVAL` under valgrind).
#[test]
fn a_limited_address_space_still_runs_coroutines() {
    if child().is_some() {
        let limit: libc::rlim_t = 16 << 30;
        let rl = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit only reads the struct we own.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
        let rt = greenstack::Runtime::builder().workers(2).build().unwrap();
        let handles: Vec<_> = (0..100u64).map(|i| rt.spawn(move || i * 2)).collect();
        let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        println!("sum={sum}");
        return;
    }
    let out = run_child("a_limited_address_space_still_runs_coroutines", "rlimit-as");
    assert!(
        out.contains("sum=9900"),
        "the coroutines did not all run:\n{out}"
    );
}
