//! Time that parks the coroutine, not the thread.
//!
//! Timers live with the worker that armed them (a heap per worker, see
//! `scheduler/driver.rs`); an idle worker sleeps in `epoll_wait` until its
//! earliest deadline. A timer only wakes its coroutine: no coroutine code
//! ever runs on a timer thread. On a plain thread these functions block the
//! thread, as std's do.

use std::time::{Duration, Instant};

/// Puts the calling coroutine (or thread) to sleep for at least `dur`.
///
/// Never returns early. `Duration::MAX` sleeps forever.
///
/// # Examples
///
/// ```
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let t = std::time::Instant::now();
///     greenstack_runtime::time::sleep(std::time::Duration::from_millis(5));
///     assert!(t.elapsed() >= std::time::Duration::from_millis(5));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn sleep(dur: Duration) {
    match Instant::now().checked_add(dur) {
        Some(deadline) => sleep_until(deadline),
        None => loop {
            park_until(None);
        },
    }
}

/// Puts the calling coroutine (or thread) to sleep until `deadline`.
///
/// Never returns before `deadline`.
pub fn sleep_until(deadline: Instant) {
    while Instant::now() < deadline {
        park_until(Some(deadline));
    }
}

/// Parks the caller once, until an unpark or `deadline` (if any), whichever
/// comes first; may return spuriously. The building block of every wait
/// with a timeout: callers loop and re-check their condition.
pub(crate) fn park_until(deadline: Option<Instant>) {
    if crate::scheduler::park_current_until(deadline) {
        return;
    }
    match deadline {
        None => std::thread::park(),
        Some(d) => {
            let now = Instant::now();
            if now < d {
                std::thread::park_timeout(d - now);
            }
        }
    }
}
