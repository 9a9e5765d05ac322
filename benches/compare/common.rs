//! Helpers shared by the three Rust peers of the comparison harness
//! (included by each with `#[path = "../../common.rs"] mod common;`).
//!
//! Every peer program is called as
//! `PROGRAM WORKLOAD key=value ...` and prints exactly one line that starts
//! with `RESULT `, followed by `key=value` pairs (see `run.py`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

/// The command line: a workload name and `key=value` parameters.
pub struct Args {
    pub workload: String,
    kv: BTreeMap<String, String>,
}

impl Args {
    /// Parses `std::env::args()`; exits with a usage line when malformed.
    pub fn parse() -> Args {
        let mut it = std::env::args().skip(1);
        let Some(workload) = it.next() else {
            eprintln!("usage: PROGRAM WORKLOAD [key=value ...]");
            std::process::exit(2);
        };
        let mut kv = BTreeMap::new();
        for a in it {
            let Some((k, v)) = a.split_once('=') else {
                eprintln!("bad argument {a:?}: expected key=value");
                std::process::exit(2);
            };
            kv.insert(k.to_string(), v.to_string());
        }
        Args { workload, kv }
    }

    /// The integer parameter `key`, or `default`.
    pub fn get(&self, key: &str, default: u64) -> u64 {
        self.kv.get(key).map_or(default, |v| {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("parameter {key}={v} is not an integer"))
        })
    }

    /// Whether the parameter `key` is given and not 0 (`cold=1`).
    pub fn flag(&self, key: &str) -> bool {
        self.get(key, 0) != 0
    }

    /// The parameters as `key=value` pairs, for echoing them back.
    pub fn echo(&self) -> String {
        self.kv
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A field of `/proc/self/status`, in KiB (0 when absent).
pub fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// VmRSS + VmPTE: resident memory plus page tables, in KiB.
pub fn rss_pte_kib() -> u64 {
    status_kib("VmRSS:") + status_kib("VmPTE:")
}

/// VmHWM: the peak resident set, in KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Lines in `/proc/self/maps` (one per mapping).
pub fn maps_lines() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Raises the soft open-file limit to the hard one (1,000 connections need
/// 2,000 descriptors).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Runs `once` (which returns the time of one timed iteration and the
/// operations it did) once as a warm-up, then until `budget_ms` of timed
/// iterations have passed (at least one, at most 1,000). Returns
/// (ns per operation over the timed iterations, timed iterations).
pub fn measure(budget_ms: u64, mut once: impl FnMut() -> (Duration, u64)) -> (f64, u64) {
    once();
    let budget = Duration::from_millis(budget_ms);
    let (mut total, mut ops, mut iters) = (Duration::ZERO, 0u64, 0u64);
    while iters == 0 || (total < budget && iters < 1000) {
        let (t, n) = once();
        total += t;
        ops += n;
        iters += 1;
    }
    (total.as_nanos() as f64 / ops as f64, iters)
}

/// `measure`, or with `cold` the first pass alone, timed, with no warm-up
/// before it (what a fresh process sees: stacks, queues and allocator
/// caches not yet grown). Returns (ns per operation, timed iterations).
pub fn measure_or_cold(
    cold: bool,
    budget_ms: u64,
    mut once: impl FnMut() -> (Duration, u64),
) -> (f64, u64) {
    if cold {
        let (t, n) = once();
        return (t.as_nanos() as f64 / n as f64, 1);
    }
    measure(budget_ms, once)
}

/// Prints the one result line (with the peak RSS added unless given).
pub fn report(peer: &str, args: &Args, fields: &[(&str, String)]) {
    let mut line = format!(
        "RESULT peer={peer} workload={} {}",
        args.workload,
        args.echo()
    );
    if !fields.iter().any(|(k, _)| *k == "peak_rss_kib") {
        line.push_str(&format!(" peak_rss_kib={}", peak_rss_kib()));
    }
    // `error`, when present, comes last: the rest of the line is its text.
    for (k, v) in fields.iter().filter(|(k, _)| *k != "error") {
        line.push_str(&format!(" {k}={v}"));
    }
    for (k, v) in fields.iter().filter(|(k, _)| *k == "error") {
        line.push_str(&format!(" {k}={v}"));
    }
    println!("{line}");
}

/// `fib(n)` computed in a loop, to check the fan-out's answer.
pub fn fib_plain(n: u64) -> u64 {
    (0..n).fold((0u64, 1u64), |(a, b), _| (b, a + b)).0
}

/// Tasks a fan-out `fib(n)` spawns (one per node with `n >= 2`):
/// `s(n) = s(n-1) + s(n-2) + 1`, `s(0) = s(1) = 0`, i.e. `fib(n+1) - 1`.
pub fn fib_spawns(n: u64) -> u64 {
    fib_plain(n + 1) - 1
}

/// One frame of the deep-stack recursion's work before the recursive call:
/// writes into the frame's 1 KiB local so it must exist.
#[inline(never)]
pub fn touch(local: &mut [u8; 1024], depth: u64) {
    local[(depth as usize * 7) % 1024] = depth as u8;
    std::hint::black_box(local);
}

/// The machine's own scaling from one busy thread to two, with no runtime:
/// each thread runs the same loop of `iters` rounds, each a load and a
/// store of a local on its own stack (as a coroutine's code is, mostly),
/// first on one thread, then on two at once. With `apart`, the second
/// thread's local sits one cache line lower in its stack than the first's;
/// without, both sit at the same offset of identically mapped stacks.
/// Returns (one thread, two threads) in seconds; the speed-up is
/// `2 * one / two`.
///
/// The two figures are what `fanout_fib`'s 1 -> 2 worker speed-up is read
/// against. On the project's 2-vCPU virtual machine the aligned one moves
/// between runs (about 1.5× at times, 2× at others: equally aligned stacks
/// then compete for the same L1 sets), the other stays near 2×.
pub fn two_thread_seconds(iters: u64, apart: bool) -> (f64, f64) {
    #[inline(never)]
    fn spin(iters: u64) {
        let mut x = 0u64;
        let p: *mut u64 = &mut x;
        for i in 0..iters {
            // SAFETY: `p` points to `x`, alive and only used here; volatile
            // so every round loads and stores the stack slot.
            unsafe { p.write_volatile(p.read_volatile().wrapping_add(i.wrapping_mul(i))) };
        }
    }
    #[inline(never)]
    fn spin_a_line_lower(iters: u64) {
        let pad = std::hint::black_box([0u8; 64]);
        spin(iters);
        std::hint::black_box(&pad);
    }
    let t = std::time::Instant::now();
    spin(iters);
    let one = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| spin(iters));
        s.spawn(move || {
            if apart {
                spin_a_line_lower(iters)
            } else {
                spin(iters)
            }
        });
    });
    (one, t.elapsed().as_secs_f64())
}
