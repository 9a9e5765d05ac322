//! The trimmer: a low-priority thread that gives stack memory back.
//!
//! A release that takes the stack pool over its budget leaves the pages to
//! this thread and wakes it (`StackArena::set_trimmer`), so the `madvise`
//! and the TLB shootdown it sends to every CPU running the runtime stay off
//! the path that finishes a coroutine. It waits [`TRIM_GRACE`] before its
//! pass, so a burst of releases is trimmed once, after the burst. Once a
//! second it also trims pooled stacks that sat idle.
//!
//! The thread runs at the lowest priority (`nice` 19): the pages it gives
//! back were already resident while their coroutines ran, so it has no
//! reason to take a CPU from a worker. A CPU-bound runtime still leaves it a
//! small share of CPU time (a nice-19 thread weighs about 1/70 of a normal
//! one under the Linux scheduler), so the pool does not stay over budget.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;

/// How often idle pooled stacks are trimmed.
const TRIM_EVERY: Duration = Duration::from_millis(1000);

/// How long the trimmer waits, once woken, before its pass: the rest of a
/// burst of releases then joins the same pass instead of trimming while the
/// workers are still busy with the burst (each trim sends a TLB shootdown
/// to every CPU running a worker). `deep_stack` in `benches/compare`
/// measured 133 ms trimming at once (in this thread) and 126 ms with a
/// 20 ms or a 100 ms wait, the same as with no trimming at all.
const TRIM_GRACE: Duration = Duration::from_millis(20);

/// Starts the trimmer thread; it ends at shutdown.
pub(crate) fn start(shared: Arc<Shared>) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("greenstack-trimmer".into())
        .spawn(move || run(&shared))
}

fn run(shared: &Shared) {
    lower_priority();
    let mut last_idle_trim = Instant::now();
    while !shared.shutdown.load(Ordering::Acquire) {
        shared.trimmer_parker.park_timeout(TRIM_EVERY);
        if shared.arena.trim_pending() {
            // Releases that come meanwhile ask for no new wake-up (the
            // request stays pending); only shutdown cuts this short.
            shared.trimmer_parker.park_timeout(TRIM_GRACE);
        }
        shared.arena.trim_over_budget();
        let now = Instant::now();
        if now.duration_since(last_idle_trim) >= TRIM_EVERY {
            shared.arena.trim_idle();
            last_idle_trim = now;
        }
    }
}

/// Sets this thread's nice value to 19. Raising one's own nice value needs
/// no privilege; on failure the thread just runs at normal priority.
fn lower_priority() {
    // SAFETY: `gettid` has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    // SAFETY: `setpriority` on this thread's own id; it only changes its
    // scheduling weight.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
    if rc != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "the stack trimmer runs at normal priority"
        );
    }
}
