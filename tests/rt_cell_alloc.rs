//! Where task cells (one allocation per spawn) come from: mimalloc's
//! allocator by default, so the program's global allocator does not see
//! them; the global allocator with `GREENSTACK_SYSTEM_ALLOC=1`, for heap
//! checkers. The variable is read once per process, so each case runs in a
//! child process of its own, counting the global allocator's allocations.
//! The same count checks that a `block_on` root spawns without a global
//! allocation per spawn. A last case checks that the cells' memory goes
//! back to the system when the runtime is dropped.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{describe, output_bounded};

/// The system allocator, counting allocations.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; the count is a
// relaxed atomic increment, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CHILD_ENV: &str = "GREENSTACK_CELL_ALLOC_CHILD";
const SPAWNS: usize = 10_000;

/// Global allocations made while the spawner (a coroutine on a worker,
/// or with `from_root` the `block_on` root itself, on the calling thread)
/// spawns and joins `SPAWNS` coroutines one at a time (after a warm-up
/// pass, so the runtime's own one-off allocations are done).
fn global_allocs_per_spawn(from_root: bool) -> f64 {
    let rt = greenstack::Runtime::builder().workers(1).build().unwrap();
    let measure = || {
        let pass = || {
            for i in 0..SPAWNS {
                let h = greenstack::spawn(move || i);
                assert_eq!(h.join().unwrap(), i);
            }
        };
        pass();
        let before = ALLOCS.load(Ordering::Relaxed);
        pass();
        (ALLOCS.load(Ordering::Relaxed) - before) as f64 / SPAWNS as f64
    };
    rt.block_on(move || {
        if from_root {
            measure()
        } else {
            greenstack::spawn(measure).join().unwrap()
        }
    })
}

/// The child's side: prints its figure for the parent.
#[test]
#[ignore = "run as a child process by the tests below"]
fn child() {
    let Some(case) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    if case == "drop" {
        println!("RSS_BYTES={}", rss_after_drop());
        return;
    }
    let from_root = case == "root";
    println!("ALLOCS_PER_SPAWN={}", global_allocs_per_spawn(from_root));
}

/// Resident bytes of this process (`/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm's resident field");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// Coroutines held unjoined at once by [`rss_after_drop`]: 400,000 cells,
/// about 31 MiB.
const HELD: usize = 400_000;

/// Resident bytes at three points, as `base,peak,dropped`: before a
/// runtime exists, with [`HELD`] coroutines spawned and not yet joined (one
/// worker: none has started, so each holds its cell but no stack), and
/// after they are joined and the runtime dropped.
fn rss_after_drop() -> String {
    let base = rss();
    let rt = greenstack::Runtime::builder().workers(1).build().unwrap();
    let peak = rt.block_on(|| {
        greenstack::spawn(|| {
            let handles: Vec<_> = (0..HELD).map(|i| greenstack::spawn(move || i)).collect();
            let peak = rss();
            for (i, h) in handles.into_iter().enumerate() {
                assert_eq!(h.join().unwrap(), i);
            }
            peak
        })
        .join()
        .unwrap()
    });
    drop(rt);
    format!("{base},{peak},{}", rss())
}

/// Runs `child` in a fresh process as `case`, with the allocator variable
/// as `system_alloc` (unset for `None`) and `env` set, and returns what
/// the child printed after `key=`.
fn child_figure(case: &str, system_alloc: Option<&str>, env: &[(&str, &str)], key: &str) -> String {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args([
        "child",
        "--exact",
        "--nocapture",
        "--include-ignored",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, case)
    .env_remove(greenstack::SYSTEM_ALLOC_ENV);
    if let Some(v) = system_alloc {
        cmd.env(greenstack::SYSTEM_ALLOC_ENV, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output_bounded(cmd, key);
    assert!(out.status.success(), "child failed: {}", describe(&out));
    let marker = format!("{key}=");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.split(marker.as_str()).nth(1))
        .unwrap_or_else(|| panic!("no {key} from the child: {}", describe(&out)))
        .trim()
        .to_string()
}

/// The child's allocations per spawn, with `system_alloc` as the
/// variable's value (unset for `None`), spawning from a worker (`spawner`
/// "worker") or the `block_on` root ("root").
fn allocs_per_spawn_in_child(system_alloc: Option<&str>, spawner: &str) -> f64 {
    child_figure(spawner, system_alloc, &[], "ALLOCS_PER_SPAWN")
        .parse()
        .expect("a number")
}

#[test]
fn with_the_variable_set_every_cell_comes_from_the_global_allocator() {
    for v in ["1", "on", "true"] {
        let per_spawn = allocs_per_spawn_in_child(Some(v), "worker");
        assert!(
            per_spawn >= 1.0,
            "GREENSTACK_SYSTEM_ALLOC={v}: {per_spawn} global allocations per spawn, expected at least the cell's"
        );
    }
}

#[cfg(feature = "mimalloc")]
#[test]
fn by_default_cells_do_not_come_from_the_global_allocator() {
    for v in [None, Some("0"), Some("")] {
        let per_spawn = allocs_per_spawn_in_child(v, "worker");
        assert!(
            per_spawn < 0.5,
            "GREENSTACK_SYSTEM_ALLOC={v:?}: {per_spawn} global allocations per spawn; cells should come from mimalloc"
        );
    }
}

/// Dropping a runtime gives its cells' memory back to the system, even
/// though mimalloc keeps freed pages for reuse: the child runs with
/// mimalloc's purge delay at an hour, so only the runtime's own collection
/// at drop (`cell_alloc::give_back`) can return them. Without it, the
/// child kept all of the held cells' memory resident after the drop.
#[cfg(feature = "mimalloc")]
#[test]
fn dropping_the_runtime_gives_the_cells_memory_back() {
    let figures: Vec<u64> = child_figure(
        "drop",
        None,
        &[("MIMALLOC_PURGE_DELAY", "3600000")],
        "RSS_BYTES",
    )
    .split(',')
    .map(|f| f.parse().expect("a number"))
    .collect();
    let [base, peak, dropped] = figures[..] else {
        panic!("three figures expected: {figures:?}");
    };
    let held = peak.saturating_sub(base);
    // The held cells alone are 80 bytes each (a closure of one word
    // returning one: see `runtime/src/scheduler/task.rs`).
    assert!(
        held >= (HELD as u64) * 80,
        "the held coroutines should take at least their cells: {figures:?}"
    );
    assert!(
        dropped.saturating_sub(base) < held / 4,
        "after the drop {} MiB more than before the runtime, of {} MiB at the peak: the cells' memory was kept (base, peak, dropped: {figures:?})",
        dropped.saturating_sub(base) >> 20,
        held >> 20
    );
}

/// A `block_on` root (what a plain `main` calling `rt.block_on` runs) that
/// spawns and joins makes no global allocation per spawn either: its
/// coroutines share the root's handle on the runtime instead of each
/// allocating one.
#[cfg(feature = "mimalloc")]
#[test]
fn spawning_from_the_block_on_root_allocates_nothing_global_per_spawn() {
    let per_spawn = allocs_per_spawn_in_child(None, "root");
    assert!(
        per_spawn < 0.5,
        "{per_spawn} global allocations per spawn from the block_on root"
    );
}
