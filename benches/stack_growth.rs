//! Growth cost per 4 KiB page over a 32 MiB recursion, under the default
//! growth policy and at fixed 4, 16 and 64 KiB chunks, in one run against the
//! kernel's own lazy fault (plain read-write anonymous memory).
//!
//! Every measured iteration starts from cold memory: arena slots come from an
//! arena with `pool_budget(0)`, so releasing a grown slot gives everything
//! below its retained top back (the guard markers re-installed discard the
//! pages), and the setup asserts that each slot starts with one committed
//! page. Only the run itself is timed (`iter_custom`), never allocation,
//! coroutine creation or release.
//!
//! Benchmarks, each reported per 4 KiB page (`Throughput::Elements`):
//!
//! - `recursion/arena_*`: a coroutine on an arena slot recurses, with a live
//!   1 KiB local per frame, until its stack pointer is 32 MiB below the top.
//! - `recursion/kernel_default_stack`: the same recursion on corosensei's
//!   `DefaultStack` of 64 MiB, a fully read-write mapping the kernel
//!   populates lazily: the apples-to-apples baseline for the recursion.
//! - `touch/kernel_mmap`: 32 MiB of plain `MAP_PRIVATE | MAP_ANONYMOUS`
//!   read-write memory, one byte written per page from the top down.
//! - `touch/arena_default`: the same top-down touch, run inside a coroutine
//!   on an arena slot (below its stack pointer), under the default policy:
//!   the growth mechanism without the recursion's own cost.
//!
//! Criterion reports time per iteration (32 MiB) and throughput in pages per
//! second; ns per page is `1e9 / thrpt`, or the iteration time / 8192.

use std::hint::black_box;
use std::time::{Duration, Instant};

use corosensei::stack::{DefaultStack, Stack};
use corosensei::{Coroutine, CoroutineResult, Yielder};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use greenstack::stack::{Slot, StackArena};

/// One page.
const PAGE: usize = 4096;

/// Stack used by each measured run: 32 MiB.
const DEPTH: usize = 32 << 20;

/// Pages in [`DEPTH`]: the unit criterion reports throughput in.
const PAGES: usize = DEPTH / PAGE;

/// Reserve of every stack under test: 64 MiB, twice what the run uses.
const STACK_SIZE: usize = 64 << 20;

/// The stack pointer, near enough: the address of a local.
#[inline(always)]
fn sp() -> usize {
    let here = 0u8;
    black_box(&here) as *const u8 as usize
}

/// Recurses with a 1 KiB live local per frame until the stack pointer is
/// `bytes` below `top`; returns the depth reached plus a checksum of every
/// frame's local, so each frame's memory must have held its value.
#[inline(never)]
fn recurse(top: usize, bytes: usize, depth: u64) -> (u64, u64) {
    let mut buf = [0u8; 1024];
    buf[(depth % 1024) as usize] = depth as u8;
    let buf = black_box(buf);
    if top - sp() >= bytes {
        return (depth, buf[(depth % 1024) as usize] as u64);
    }
    let (d, sum) = recurse(top, bytes, depth + 1);
    (d, sum + buf[(depth % 1024) as usize] as u64)
}

/// Writes one byte into each of the [`PAGES`] pages below the page that
/// holds the caller's stack pointer, from the top down. Runs on the stack it
/// touches, so an arena slot's growth handler serves the faults.
#[inline(never)]
fn touch_below_sp() {
    let start = (sp() & !(PAGE - 1)) - PAGE;
    for p in 0..PAGES {
        let addr = start - p * PAGE;
        // SAFETY: `addr` lies below the page holding this frame's stack
        // pointer (so more than the 128-byte red zone below it) and within
        // the stack this code runs on, whose reserve is STACK_SIZE, twice
        // what is touched: no frame lives there and no other code uses that
        // memory while this function runs. Ungrown pages fault and the
        // arena's handler commits them; on a plain mapping the kernel
        // populates them.
        unsafe { std::ptr::write_volatile(addr as *mut u8, 1) };
    }
}

/// Runs `body` as a coroutine on `stack`, timing only the resume. Returns
/// the time and the stack.
fn timed_run<S: Stack + 'static, R: 'static>(
    stack: S,
    body: impl FnOnce(usize) -> R + 'static,
) -> (Duration, S) {
    let top = stack.base().get();
    let mut co = Coroutine::with_stack(stack, move |_y: &Yielder<(), ()>, ()| body(top));
    let start = Instant::now();
    let r = co.resume(());
    let elapsed = start.elapsed();
    match r {
        CoroutineResult::Return(r) => drop(black_box(r)),
        CoroutineResult::Yield(()) => unreachable!("the body never yields"),
    }
    (elapsed, co.into_stack())
}

/// The recursion every `recursion/*` benchmark times, checked.
fn recursion(top: usize) -> u64 {
    let (depth, sum) = recurse(top, DEPTH, 0);
    assert_eq!(
        sum,
        (0..=depth).map(|d| d % 256).sum::<u64>(),
        "a frame's local lost its value"
    );
    depth
}

/// A fresh slot: asserts it has never grown (only its initial commit), so the
/// bench cannot silently measure warm memory.
fn cold_slot(arena: &StackArena) -> Slot {
    let slot = arena.allocate().expect("allocate a slot");
    assert_eq!(slot.reserve(), STACK_SIZE);
    assert_eq!(
        slot.committed(),
        greenstack::stack::DEFAULT_INITIAL_COMMIT,
        "slot starts warm: release did not trim it"
    );
    slot
}

/// An arena of 64 MiB stacks whose release trims every grown page, with
/// the growth step capped at `max_step` (`None`: the default policy).
fn arena(max_step: Option<usize>) -> StackArena {
    let b = StackArena::builder().stack_size(STACK_SIZE).pool_budget(0);
    let b = match max_step {
        Some(step) => b.max_growth_step(step),
        None => b,
    };
    b.build().expect("build the arena")
}

/// Runs `body` once on a cold slot of `arena` and prints the growth faults
/// it took, so the report shows how each policy chunks 32 MiB.
fn report_faults(name: &str, arena: &StackArena, body: fn(usize) -> u64) {
    let before = arena.stats();
    let (t, slot) = timed_run(cold_slot(arena), body);
    let after = arena.stats();
    eprintln!(
        "{name}: {} growth faults, {} KiB committed, {:.0} ns/page (one cold run)",
        after.growth_faults - before.growth_faults,
        slot.committed() >> 10,
        t.as_nanos() as f64 / PAGES as f64,
    );
}

/// Times `iters` runs of `body`, each on a cold slot of `arena`.
fn time_arena(arena: &StackArena, iters: u64, body: fn(usize) -> u64) -> Duration {
    (0..iters)
        .map(|_| timed_run(cold_slot(arena), body).0)
        .sum()
}

/// A 64 MiB `DefaultStack` with transparent huge pages off, so the kernel
/// faults it 4 KiB at a time whatever the system's THP setting.
fn default_stack() -> DefaultStack {
    let stack = DefaultStack::new(STACK_SIZE).expect("map a DefaultStack");
    let (lo, hi) = (stack.limit().get(), stack.base().get());
    // SAFETY: `[lo, hi)` is the stack's own mapping, owned here; the advice
    // only changes how future faults are served.
    let _ = unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_NOHUGEPAGE) };
    stack
}

/// Maps [`DEPTH`] bytes of plain read-write anonymous memory (huge pages
/// off), writes one byte per page from the top down, and unmaps it;
/// returns the time of the writes alone.
fn kernel_touch() -> Duration {
    // SAFETY: a fresh private anonymous mapping; no existing memory is
    // affected.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            DEPTH,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap failed");
    // SAFETY: `base` is the mapping just made, of length DEPTH.
    let _ = unsafe { libc::madvise(base, DEPTH, libc::MADV_NOHUGEPAGE) };
    let top = base as usize + DEPTH;
    let start = Instant::now();
    for p in 1..=PAGES {
        // SAFETY: `top - p * PAGE` lies in the read-write mapping made above.
        unsafe { std::ptr::write_volatile((top - p * PAGE) as *mut u8, 1) };
    }
    let elapsed = start.elapsed();
    // SAFETY: unmaps exactly the mapping made above, no longer referenced.
    let rc = unsafe { libc::munmap(base, DEPTH) };
    assert_eq!(rc, 0, "munmap failed");
    elapsed
}

/// `touch_below_sp` as a coroutine body.
fn touch_body(_top: usize) -> u64 {
    touch_below_sp();
    0
}

/// The growth policies compared: growth doubles the committed size per
/// fault, from one page up to the cap. With a small cap it reaches the cap
/// after a few faults (4 KiB at once; 16 KiB after 3; 64 KiB after 5), so
/// the capped arenas grow in fixed chunks for all but the first few hundred
/// KiB of the 32 MiB. The default cap is 1 MiB.
const POLICIES: [(&str, Option<usize>); 4] = [
    ("arena_default", None),
    ("arena_step_4k", Some(4 << 10)),
    ("arena_step_16k", Some(16 << 10)),
    ("arena_step_64k", Some(64 << 10)),
];

/// Registers every growth benchmark.
fn stack_growth(c: &mut Criterion) {
    greenstack::stack::prepare_thread().expect("prepare the thread");
    for (name, step) in POLICIES {
        report_faults(name, &arena(step), recursion);
    }
    report_faults("touch/arena_default", &arena(None), touch_body);

    let mut g = c.benchmark_group("recursion");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(PAGES as u64));
    for (name, step) in POLICIES {
        let arena = arena(step);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| time_arena(&arena, iters, recursion))
        });
    }
    g.bench_function("kernel_default_stack", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| timed_run(default_stack(), recursion).0)
                .sum()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("touch");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(PAGES as u64));
    g.bench_function("kernel_mmap", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| kernel_touch()).sum())
    });
    let arena = arena(None);
    g.bench_function("arena_default", |b| {
        b.iter_custom(|iters| time_arena(&arena, iters, touch_body))
    });
    g.finish();
}

criterion_group!(benches, stack_growth);
criterion_main!(benches);
