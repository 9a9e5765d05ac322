//! The watchdog: a thread that notices a worker stuck in one coroutine.
//!
//! Every quarter threshold it samples each worker's switch counter and the
//! header pointer of the coroutine it runs. A worker whose counter has not
//! moved for a whole threshold while a coroutine runs gets one warn event
//! naming the coroutine. It runs only when a threshold is set.
//!
//! The report names the likely causes. Besides a blocking call or long CPU
//! work in the coroutine itself, there is one that is not its fault: a std
//! lock (`std::sync::Mutex`, `RwLock`) that another coroutine of the same
//! worker holds across a yield. The named coroutine then blocks the worker
//! thread in the lock, and the holder, which only that thread may run,
//! never resumes to release it: the worker hangs for good. The watchdog
//! cannot tell these apart from outside the thread, so it lists both.
//!
//! # Reading a header another thread may free
//!
//! The worker frees a header only after `finish`: it stores null in
//! `current` (SeqCst), then waits while `watch_reading` is set. The
//! watchdog sets `watch_reading` (SeqCst) before loading `current` (SeqCst)
//! and clears it after copying the id and name. If the watchdog loaded a
//! non-null pointer, its load precedes the worker's null store in the single
//! SeqCst order, so the worker's later load of `watch_reading` sees it set
//! (or already cleared, when the watchdog is done): the header outlives the
//! read.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;

/// Longest sleep between samples.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Starts the watchdog thread; it ends at shutdown.
pub(crate) fn start(shared: Arc<Shared>) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("greenstack-watchdog".into())
        .spawn(move || run(&shared))
}

struct Seen {
    switches: u64,
    since: Instant,
    reported: bool,
}

fn run(shared: &Shared) {
    let Some(threshold) = shared.watchdog else {
        return;
    };
    let tick = (threshold / 4).clamp(Duration::from_millis(1), MAX_TICK);
    let now = Instant::now();
    let mut seen: Vec<Seen> = shared
        .workers
        .iter()
        .map(|_| Seen {
            switches: 0,
            since: now,
            reported: false,
        })
        .collect();
    while !shared.shutdown.load(Ordering::Acquire) {
        shared.watchdog_parker.park_timeout(tick);
        let now = Instant::now();
        for (w, s) in shared.workers.iter().zip(seen.iter_mut()) {
            let switches = w.switches.load(Ordering::Relaxed);
            let running = !w.current.load(Ordering::Relaxed).is_null();
            if switches != s.switches || !running {
                *s = Seen {
                    switches,
                    since: now,
                    reported: false,
                };
                continue;
            }
            let stuck = now.duration_since(s.since);
            if s.reported || stuck < threshold {
                continue;
            }
            s.reported = true;
            w.watch_reading.store(true, Ordering::SeqCst);
            let p = w.current.load(Ordering::SeqCst);
            // SAFETY: see the module docs: a non-null header read here
            // stays alive until `watch_reading` is cleared below.
            let who = unsafe { p.as_ref() }.map(|h| (h.id.get(), h.name.clone()));
            w.watch_reading.store(false, Ordering::SeqCst);
            if let Some((id, name)) = who {
                tracing::warn!(
                    coroutine.id = id,
                    coroutine.name = name.as_deref().unwrap_or("<unnamed>"),
                    stuck_ms = stuck.as_millis() as u64,
                    "a coroutine has held its worker without switching; \
                     the worker is blocked: likely a blocking call or long CPU work \
                     (use spawn_blocking), or a std lock (Mutex, RwLock) held across \
                     a yield by another coroutine on this worker, which cannot run to \
                     release it while this one waits (use greenstack::sync's locks)"
                );
            }
        }
    }
}
