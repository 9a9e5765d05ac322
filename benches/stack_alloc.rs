//! Allocate + release of a pooled slot, in ns per operation.
//!
//! - `stack_alloc/pooled`: one allocate and one release on the same thread,
//!   from a pool warmed with one slot (the steady-state spawn path: no
//!   system call).
//! - `stack_alloc/batch64_same_thread`: 64 allocations, then 64 releases,
//!   on one thread; reported per slot (allocate + release).
//! - `stack_alloc/batch64_cross_thread`: 64 allocations on this thread, then
//!   64 releases on another thread, so the allocator's shared state bounces
//!   between cores; reported per slot. Only the allocations and the
//!   releases are timed, not the hand-over between the threads.

use std::hint::black_box;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use greenstack::stack::{Slot, StackArena};

/// Slots per batch in the batch benchmarks.
const BATCH: usize = 64;

/// Allocates [`BATCH`] slots; returns them and the time taken.
fn allocate_batch(arena: &StackArena) -> (Vec<Slot>, Duration) {
    let mut slots = Vec::with_capacity(BATCH);
    let start = Instant::now();
    for _ in 0..BATCH {
        slots.push(black_box(arena.allocate().expect("allocate a slot")));
    }
    (slots, start.elapsed())
}

/// Releases every slot in `slots`; returns the time taken. The emptied
/// vector is dropped after the clock stops, so only releases are timed.
fn release_batch(mut slots: Vec<Slot>) -> Duration {
    let start = Instant::now();
    for slot in slots.drain(..) {
        drop(black_box(slot));
    }
    start.elapsed()
}

/// Registers every allocation benchmark.
fn stack_alloc(c: &mut Criterion) {
    let arena = StackArena::new().expect("build the arena");
    // Warm the pool: every slot the benchmarks take is pooled, its top page
    // committed, so no allocation below makes a system call.
    drop(allocate_batch(&arena).0);
    assert_eq!(arena.stats().pooled_slots, BATCH);

    let mut g = c.benchmark_group("stack_alloc");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    g.throughput(Throughput::Elements(1));
    g.bench_function("pooled", |b| {
        b.iter(|| drop(black_box(arena.allocate().expect("allocate a slot"))))
    });

    // The same with scrubbing on, plus the cost the scrub moves to the next
    // coroutine: touching its top page again (a fresh zero-filled page).
    let scrubbed = StackArena::builder()
        .scrub(true)
        .build()
        .expect("build the arena");
    g.bench_function("pooled_scrubbed", |b| {
        b.iter(|| {
            let slot = scrubbed.allocate().expect("allocate a slot");
            // SAFETY: the top page of a live slot is committed and ours.
            unsafe { ((slot.top() - 64) as *mut u8).write_volatile(1) };
            drop(black_box(slot))
        })
    });

    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("batch64_same_thread", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (slots, t) = allocate_batch(&arena);
                    t + release_batch(slots)
                })
                .sum()
        })
    });

    // The freeing thread lives across the benchmark; it releases each batch
    // it receives and sends back the time the releases took.
    let (to_freer, batches) = mpsc::channel::<Vec<Slot>>();
    let (times, from_freer) = mpsc::channel::<Duration>();
    let freer = thread::spawn(move || {
        for slots in batches {
            if times.send(release_batch(slots)).is_err() {
                break;
            }
        }
    });
    g.bench_function("batch64_cross_thread", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (slots, t) = allocate_batch(&arena);
                    to_freer.send(slots).expect("freeing thread is alive");
                    t + from_freer.recv().expect("freeing thread is alive")
                })
                .sum()
        })
    });
    g.finish();
    drop(to_freer);
    freer.join().expect("freeing thread panicked");
    assert_eq!(arena.stats().live_slots, 0);
}

criterion_group!(benches, stack_alloc);
criterion_main!(benches);
