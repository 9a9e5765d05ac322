//! Blocking-style synchronization that parks the coroutine, not the worker.
//!
//! Every type here works from coroutines, from plain threads (where waiting
//! blocks the thread), and across the two. Waiters queue in arrival order,
//! so none starves under contention. Timeouts use the worker's timers.
//!
//! - [`Mutex`], [`RwLock`], [`Condvar`], [`Semaphore`], [`Barrier`],
//!   [`WaitGroup`], [`Notify`]: not poisoned by panics (their guards just
//!   unlock). [`OnceLock`]: std's, with initializers that park.
//! - [`mpsc`]: std's channel API and semantics; [`mpmc`]: both ends clone;
//!   [`oneshot`]: one value; [`watch`]: the latest value, tokio's
//!   semantics; [`broadcast`]: every value to every receiver, tokio's. As std's, dropping the last receiver drops
//!   the values still queued, there and then.
//!
//! A wait cut short by an unwind (dropping a runtime cancels its parked
//! coroutines by unwinding them from their park) leaves its queue on the
//! way out, and passes on what reached it meanwhile: permits (so a
//! [`Mutex`] shared with threads or other runtimes is not left locked), a
//! [`Condvar::notify_one`], a channel value. Each wait arms a drop guard
//! for it, and these guards never park.
//!
//! Internally each primitive guards its queue with a lock held for a few
//! instructions (a std mutex; a spinlock for the channels), inside a
//! no-fault section: the stack is prefaulted before the lock is taken, so
//! no growth fault happens while it is held. Channel waiters wait in nodes
//! on their own stacks, so waiting allocates nothing; [`oneshot`] takes no
//! lock at all (one atomic state word).

pub mod broadcast;
mod chan;
mod condvar;
// The futex hook's queues (x86-64 only), and their loom model.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) mod futex_queue;
pub mod mpmc;
pub mod mpsc;
mod mutex;
mod notify;
mod once;
pub mod oneshot;
pub mod select;
mod semaphore;
pub(crate) mod wait;
pub mod watch;

pub use condvar::{Barrier, BarrierWaitResult, Condvar, WaitGroup, WaitTimeoutResult};
pub use mutex::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use notify::Notify;
pub use once::OnceLock;
pub use semaphore::{Semaphore, SemaphoreGuard};
