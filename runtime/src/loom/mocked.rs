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
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::time::Instant;

    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::{Condvar, Mutex};

    /// A thread's park token, as std's: an unpark before the park is kept,
    /// and what the unparker did before unparking is visible once the park
    /// returns. A mutex and a condvar rather than `loom::thread::park`,
    /// whose unpark orders the unparker before everything the unparked
    /// thread does next, even if it never parks: that would hide a missing
    /// Release/Acquire between a notifier and a waiter that sees its
    /// notification without parking.
    struct Token {
        set: Mutex<bool>,
        cvar: Condvar,
    }

    impl Token {
        fn park(&self) {
            let mut set = self.set.lock().unwrap();
            while !*set {
                set = self.cvar.wait(set).unwrap();
            }
            *set = false;
        }

        fn unpark(&self) {
            *self.set.lock().unwrap() = true;
            self.cvar.notify_one();
        }
    }

    impl Wake for Token {
        fn wake(self: Arc<Self>) {
            self.unpark();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.unpark();
        }
    }

    loom::thread_local! {
        static TOKEN: Arc<Token> = Arc::new(Token {
            set: Mutex::new(false),
            cvar: Condvar::new(),
        });
        static CURRENT: Cell<Option<NonNull<Header>>> = Cell::new(None);
    }

    /// Stands for the scheduler's coroutine header, which a wait-queue node
    /// names uncounted (`sync/wait.rs`): valid only while its coroutine
    /// lives. `alive` is read by every `unpark` and written when the
    /// coroutine ends ([`as_coroutine`]), so loom reports an `unpark` not
    /// ordered before the end, as a use after free would be.
    pub(crate) struct Header {
        token: Arc<Token>,
        alive: loom::cell::UnsafeCell<()>,
        /// Stands for the park state, the first thing a real `unpark`
        /// touches and the last a finishing coroutine does: an atomic both
        /// sides write, so loom explores both orders of the two.
        park: AtomicUsize,
    }

    impl Header {
        pub(crate) fn unpark(&self) {
            self.park.fetch_add(1, Ordering::Relaxed);
            self.alive.with(|_| ());
            self.token.unpark();
        }
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
            token: TOKEN.with(Arc::clone),
            alive: loom::cell::UnsafeCell::new(()),
            park: AtomicUsize::new(0),
        });
        CURRENT.with(|c| c.set(Some(NonNull::from(&*header))));
        let r = f();
        CURRENT.with(|c| c.set(None));
        // `ParkState::finish`, then the header may be freed.
        header.park.store(usize::MAX, Ordering::Relaxed);
        header.alive.with_mut(|_| ());
        r
    }

    /// A waker for the calling loom thread.
    pub(crate) fn current_waker() -> Waker {
        Waker::from(TOKEN.with(Arc::clone))
    }

    /// Parks the calling loom thread until unparked (its token kept, as
    /// std's). A wake-up that never comes is a loom deadlock report.
    pub(crate) fn park_until(deadline: Option<Instant>) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        TOKEN.with(|t| t.park());
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
