//! std's side of the shim: the real atomics and a spin hint.

pub(crate) mod sync {
    pub(crate) use std::sync::{Arc, Condvar, MutexGuard};

    /// std's `Mutex` for the runtime's own state: a contended `lock` waits
    /// in the kernel even in a coroutine, never parks it through the futex
    /// hook (`hook/futex.rs`), as the runtime's code around such a lock
    /// assumes its thread does not switch to another coroutine there (a
    /// worker's `RefCell`s may be borrowed, a registration half made).
    /// Every std lock of the runtime is this one.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T: ?Sized>(std::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Mutex<T> {
            Mutex(std::sync::Mutex::new(value))
        }

        #[allow(dead_code)]
        pub(crate) fn into_inner(self) -> std::sync::LockResult<T> {
            self.0.into_inner()
        }
    }

    impl<T: ?Sized> Mutex<T> {
        /// std's `lock`; a wait, if any, is the kernel's (see the type).
        #[inline]
        pub(crate) fn lock(&self) -> std::sync::LockResult<MutexGuard<'_, T>> {
            match self.0.try_lock() {
                Ok(g) => Ok(g),
                Err(std::sync::TryLockError::Poisoned(p)) => Err(p),
                Err(std::sync::TryLockError::WouldBlock) => crate::hook::internal(|| self.0.lock()),
            }
        }

        #[allow(dead_code)]
        pub(crate) fn try_lock(&self) -> std::sync::TryLockResult<MutexGuard<'_, T>> {
            self.0.try_lock()
        }

        #[allow(dead_code)]
        pub(crate) fn get_mut(&mut self) -> std::sync::LockResult<&mut T> {
            self.0.get_mut()
        }
    }

    pub(crate) mod atomic {
        pub(crate) use std::sync::atomic::{
            fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
        };
    }
}

pub(crate) mod cell {
    /// std's `UnsafeCell` with loom's closure API, so modeled code reads the
    /// same under both.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(data: T) -> UnsafeCell<T> {
            UnsafeCell(std::cell::UnsafeCell::new(data))
        }

        /// Calls `f` with a shared raw pointer to the contents.
        #[allow(dead_code)]
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Calls `f` with a mutable raw pointer to the contents.
        #[allow(dead_code)]
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

pub(crate) mod hint {
    pub(crate) use crossbeam_utils::Backoff;

    /// One round of waiting for another thread: a spin hint for the first
    /// rounds, then `sched_yield`, in case that thread was preempted (a
    /// pure spin could then burn the waiter's whole time slice).
    #[inline]
    pub(crate) fn backoff(round: u32) {
        if round < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}
