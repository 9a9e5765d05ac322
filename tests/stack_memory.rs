//! What live stacks cost: mappings, resident memory and page tables, and the
//! mapping limit of the `mprotect` fallback.
//!
//! Each measurement runs in a child process of its own (this binary re-run
//! with an environment variable), so no other test's allocations disturb
//! VmRSS, and exhausting the mapping limit harms nobody.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use greenstack::stack::{GuardMode, StackArena};

const CHILD_ENV: &str = "GREENSTACK_MEMORY_CHILD";

/// Re-runs test `name` in a child with `scenario`; returns its stdout.
fn run_child(name: &str, scenario: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .output()
        .expect("spawning the child test process");
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
