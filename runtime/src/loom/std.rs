//! std's side of the shim: the real atomics and a spin hint.

pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
    }
}

pub(crate) mod hint {
    /// Tells the CPU we are spinning; under loom this yields to the model.
    #[inline]
    pub(crate) fn spin_loop() {
        std::hint::spin_loop();
    }
}
