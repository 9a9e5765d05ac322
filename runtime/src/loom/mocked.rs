//! loom's side of the shim. Only built with `--cfg greenstack_loom`.

#[cfg(not(debug_assertions))]
compile_error!("loom models need debug assertions: add `-C debug-assertions` to RUSTFLAGS");

pub(crate) mod sync {
    pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{
            fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
        };
    }
}

pub(crate) mod cell {
    pub(crate) use loom::cell::UnsafeCell;
}

pub(crate) mod hint {
    /// Under loom every round of waiting must yield, or the model never
    /// lets the other thread make progress.
    #[inline]
    pub(crate) fn backoff(_round: u32) {
        loom::thread::yield_now();
    }

    /// crossbeam's `Backoff` under loom: every snooze yields (see
    /// `backoff`).
    #[derive(Debug, Default)]
    pub(crate) struct Backoff;

    impl Backoff {
        pub(crate) fn new() -> Backoff {
            Backoff
        }

        pub(crate) fn snooze(&self) {
            loom::thread::yield_now();
        }
    }
}

/// Stand-ins, under loom, for the parts of the runtime the modeled code
/// calls but loom cannot run (the scheduler, timers, stack faults). A
/// waiter is a loom thread, or a "coroutine" on one ([`rt::as_coroutine`]);
/// either way `park_until` parks the thread and its waker unparks it.
/// Deadlines are ignored: models that time out use a deadline already
/// past, so they never park.
pub(crate) mod rt {
    use std::cell::Cell;
    use std::ptr::NonNull;
    use std::task::{Wake, Waker};
    use std::time::Instant;

    /// Stands for the scheduler's coroutine header, which a wait-queue node
    /// names uncounted (`sync/wait.rs`): valid only while its coroutine
    /// lives. `alive` is read by every `unpark` and written when the
    /// coroutine ends ([`as_coroutine`]), so loom reports an `unpark` not
    /// ordered before the end, as a use after free would be.
    pub(crate) struct Header {
        thread: loom::thread::Thread,
        alive: loom::cell::UnsafeCell<()>,
        /// Stands for the park token, the first thing a real `unpark`
        /// touches and the last a finishing coroutine does: an atomic both
        /// sides write, so loom explores both orders of the two.
        park: loom::sync::atomic::AtomicUsize,
    }

    impl Header {
        pub(crate) fn unpark(&self) {
            self.park
                .fetch_add(1, loom::sync::atomic::Ordering::Relaxed);
            self.alive.with(|_| ());
            self.thread.unpark();
        }
    }

    loom::thread_local! {
        static CURRENT: Cell<Option<NonNull<Header>>> = Cell::new(None);
    }

    /// The header of the coroutine `as_coroutine` runs on this thread.
    pub(crate) fn current_header_ptr() -> Option<NonNull<Header>> {
        CURRENT.with(Cell::get)
    }

    /// Runs `f` as a coroutine body: waits inside it are woken through
    /// its uncounted header, which ends with `f`.
    #[cfg(test)]
    pub(crate) fn as_coroutine<R>(f: impl FnOnce() -> R) -> R {
        let header = Box::new(Header {
            thread: loom::thread::current(),
            alive: loom::cell::UnsafeCell::new(()),
            park: loom::sync::atomic::AtomicUsize::new(0),
        });
        CURRENT.with(|c| c.set(Some(NonNull::from(&*header))));
        let r = f();
        CURRENT.with(|c| c.set(None));
        // `ParkState::finish`, then the header may be freed.
        header
            .park
            .store(usize::MAX, loom::sync::atomic::Ordering::Relaxed);
        header.alive.with_mut(|_| ());
        r
    }

    /// Unparks the loom thread it was made on.
    struct ThreadWaker(loom::thread::Thread);

    impl Wake for ThreadWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }

    /// A waker for the calling loom thread.
    pub(crate) fn current_waker() -> Waker {
        Waker::from(std::sync::Arc::new(ThreadWaker(loom::thread::current())))
    }

    /// Parks the calling loom thread until unparked (its token kept, as
    /// std's). A wake-up that never comes is a loom deadlock report.
    pub(crate) fn park_until(deadline: Option<Instant>) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        loom::thread::park();
    }

    /// Nothing faults under loom.
    #[must_use]
    pub(crate) struct NoFaultSection;

    impl NoFaultSection {
        pub(crate) fn enter() -> NoFaultSection {
            NoFaultSection
        }
    }
}
