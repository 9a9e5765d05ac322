//! loom's side of the shim. Only built with `--cfg greenstack_loom`.

#[cfg(not(debug_assertions))]
compile_error!("loom models need debug assertions: add `-C debug-assertions` to RUSTFLAGS");

pub(crate) mod sync {
    pub(crate) use loom::sync::{Arc, Condvar, Mutex};

    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{
            AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
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
}
