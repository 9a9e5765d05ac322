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
/// waiter here is always a plain (loom) thread: its waker unparks it and
/// `park_until` parks it, ignoring the deadline (models that time out use a
/// deadline already past, so they never park).
pub(crate) mod rt {
    use std::ptr::NonNull;
    use std::task::{Wake, Waker};
    use std::time::Instant;

    /// Stands for the scheduler's coroutine header: under loom no caller
    /// is a coroutine, so none is ever made.
    pub(crate) enum Header {}

    impl Header {
        pub(crate) fn unpark(&self) {
            match *self {}
        }
    }

    /// No caller is a coroutine under loom.
    pub(crate) fn current_header_ptr() -> Option<NonNull<Header>> {
        None
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
