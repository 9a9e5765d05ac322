//! The trimmer: a thread that gives stack memory back.
//!
//! A release that takes the stack pool over its budget leaves the pages to
//! this thread and wakes it (`StackArena::set_trimmer`), so the `madvise`
//! and the TLB shootdown it sends to every CPU running the runtime stay off
//! the path that finishes a coroutine. It waits [`TRIM_GRACE`] before its
//! pass, so a burst of releases is trimmed once, after the burst. A slot
//! allocated again before the pass reaches it is trimmed by that
//! allocation, so deferred pages never go live with a new coroutine. Once a
//! second it also trims pooled stacks that sat idle.
//!
//! It runs at normal priority: at nice 19 it measured no faster on
//! `deep_stack`, and a CPU-bound runtime then starved it for a second or
//! more, with workers spinning on slots it held claimed.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;

/// How often idle pooled stacks are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// How long the trimmer waits, once woken, before its pass: the rest of a
/// burst of releases then joins the same pass instead of trimming while the
/// workers are still busy with the burst. `deep_stack` in `benches/compare`
/// (1,000 coroutines of 256 KiB finishing together) measured 133 ms
/// trimming at once on this thread and 126 ms with a 20 ms or a 100 ms
/// wait, the same as with no trimming at all.
const TRIM_GRACE: Duration = Duration::from_millis(20);

/// Starts the trimmer thread; it ends at shutdown.
pub(crate) fn start(shared: Arc<Shared>) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("greenstack-trimmer".into())
        .spawn(move || run(&shared))
}

fn run(shared: &Shared) {
    let stopping = || shared.shutdown.load(Ordering::Acquire);
    let mut last_idle_trim = Instant::now();
    loop {
        shared.trimmer_parker.park_timeout(TRIM_EVERY);
        if shared.arena.trim_pending() && !stopping() {
            // Releases meanwhile need no new wake-up: the request stays
            // pending until the pass.
            shared.trimmer_parker.park_timeout(TRIM_GRACE);
        }
        if stopping() {
            break;
        }
        shared.arena.trim_over_budget(&stopping);
        if last_idle_trim.elapsed() >= TRIM_EVERY {
            shared.arena.trim_idle();
            last_idle_trim = Instant::now();
        }
    }
    // Releases from here on trim at once; what is still deferred goes with
    // the arena, or with the slot's next allocation.
    shared.arena.stop_trimmer();
}
