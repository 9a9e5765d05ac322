//! The reference count of a task cell (`task.rs`'s `TaskRef`), apart so
//! loom can drive it (`scheduler/tests/loom_refcount.rs`): the orderings
//! are `Arc`'s.

use crate::loom::sync::atomic::{fence, AtomicU32, Ordering};

/// A count of references to one allocation. `u32`: it sits in every task
/// header, and a smaller header is a smaller allocation class.
#[derive(Debug)]
pub(crate) struct RefCount(AtomicU32);

impl RefCount {
    /// A count of `n` references.
    pub(crate) fn new(n: u32) -> RefCount {
        RefCount(AtomicU32::new(n))
    }

    /// Counts one more reference, made from an existing one.
    pub(crate) fn increment(&self) {
        // Relaxed, as `Arc::clone`: a new reference is made from an existing
        // one, which already orders everything before it.
        let old = self.0.fetch_add(1, Ordering::Relaxed);
        if old > i32::MAX as u32 {
            // Two billion handles to one coroutine: leaked in a loop.
            std::process::abort();
        }
    }

    /// Drops one reference. True if it was the last: the caller frees the
    /// allocation, and every use through the other references happened
    /// before this returned.
    #[must_use]
    pub(crate) fn decrement(&self) -> bool {
        // Release/Acquire, as `Arc`'s drop: every use through other
        // references happens before the free.
        if self.0.fetch_sub(1, Ordering::Release) != 1 {
            return false;
        }
        fence(Ordering::Acquire);
        true
    }
}
