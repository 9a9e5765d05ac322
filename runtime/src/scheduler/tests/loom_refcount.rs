//! loom models of the task reference count (`scheduler/refcount.rs`, as
//! `TaskRef` in `task.rs` uses it).
//!
//! `Handle` below is `TaskRef` with the task cell swapped for a small one:
//! `clone` is `RefCount::increment`, `drop` is `RefCount::decrement` and,
//! on the last reference, the free (`Vtable::dealloc`). The cell's payload
//! is a loom cell, read through every handle and written by the free, so a
//! free not ordered after every use is a causality violation; the free
//! counts itself, so a double free or a leak shows in the count.

use std::ptr::NonNull;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use crate::scheduler::refcount::RefCount;

/// The task cell: the count, a payload, and who counts the frees.
struct Cell {
    refs: RefCount,
    payload: UnsafeCell<u32>,
    frees: Arc<AtomicUsize>,
}

/// A counted reference, as `TaskRef`.
struct Handle {
    ptr: NonNull<Cell>,
}

// SAFETY: as `TaskRef`'s: a handle only gives out shared access to the
// cell, whose payload is read (never written) while handles live.
unsafe impl Send for Handle {}

impl Handle {
    /// A cell with `n` references, as `TaskRef::new` makes two at once.
    fn new(n: u32, frees: &Arc<AtomicUsize>) -> Vec<Handle> {
        let cell = Box::new(Cell {
            refs: RefCount::new(n),
            payload: UnsafeCell::new(7),
            frees: Arc::clone(frees),
        });
        let ptr = NonNull::from(Box::leak(cell));
        (0..n).map(|_| Handle { ptr }).collect()
    }

    /// A use of the task through this reference (a header read).
    fn read(&self) -> u32 {
        // SAFETY: our reference keeps the cell alive.
        let cell = unsafe { self.ptr.as_ref() };
        // SAFETY: the payload is only written by the free, after the last
        // reference is gone.
        cell.payload.with(|p| unsafe { *p })
    }
}

impl Clone for Handle {
    fn clone(&self) -> Handle {
        // SAFETY: our reference keeps the cell alive.
        unsafe { self.ptr.as_ref() }.refs.increment();
        Handle { ptr: self.ptr }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: our reference keeps the cell alive until `decrement`.
        if !unsafe { self.ptr.as_ref() }.refs.decrement() {
            return;
        }
        // SAFETY: that was the last reference: the cell is ours (the free
        // of `Vtable::dealloc`).
        let cell = unsafe { Box::from_raw(self.ptr.as_ptr()) };
        // The free writes the memory every reference read.
        // SAFETY: the cell is ours alone now.
        cell.payload.with_mut(|p| unsafe { *p = 0 });
        cell.frees.fetch_add(1, Ordering::SeqCst);
    }
}

/// The two references a spawn makes (the task's and the join handle's),
/// each used and dropped on its own thread, one cloned first (a waker):
/// the cell is freed exactly once, after every use.
#[test]
fn loom_task_refs_free_once() {
    loom::model(|| {
        let frees = Arc::new(AtomicUsize::new(0));
        let mut refs = Handle::new(2, &frees);
        let task = refs.pop().unwrap();
        let join = refs.pop().unwrap();
        let t = thread::spawn(move || {
            let waker = task.clone();
            assert_eq!(task.read(), 7);
            drop(task);
            assert_eq!(waker.read(), 7);
            drop(waker);
        });
        assert_eq!(join.read(), 7);
        drop(join);
        t.join().unwrap();
        assert_eq!(frees.load(Ordering::SeqCst), 1, "not freed exactly once");
    });
}

/// Three threads each drop a reference they used, racing for the last.
#[test]
fn loom_task_refs_three_droppers() {
    loom::model(|| {
        let frees = Arc::new(AtomicUsize::new(0));
        let mut refs = Handle::new(1, &frees);
        let first = refs.pop().unwrap();
        let others: Vec<_> = (0..2)
            .map(|_| {
                let h = first.clone();
                thread::spawn(move || {
                    assert_eq!(h.read(), 7);
                    drop(h);
                })
            })
            .collect();
        assert_eq!(first.read(), 7);
        drop(first);
        for t in others {
            t.join().unwrap();
        }
        assert_eq!(frees.load(Ordering::SeqCst), 1, "not freed exactly once");
    });
}
