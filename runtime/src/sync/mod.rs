//! Blocking-style synchronization that parks the coroutine, not the worker.
//!
//! Every type here works from coroutines, from plain threads (where waiting
//! blocks the thread), and across the two. Waiters queue in arrival order,
//! so none starves under contention. Timeouts use the worker's timers.
//!
//! - [`Mutex`], [`RwLock`], [`Condvar`], [`Semaphore`], [`Barrier`],
//!   [`WaitGroup`]: not poisoned by panics (their guards just unlock).
//! - [`mpsc`]: std's channel API and semantics; [`mpmc`]: both ends clone;
//!   [`oneshot`]: one value.
//!
//! Internally each primitive guards its queue with a std mutex held for a
//! few instructions, inside a no-fault section: the stack is prefaulted
//! before the lock is taken, so no growth fault happens while it is held.

mod chan;
mod condvar;
pub mod mpmc;
pub mod mpsc;
mod mutex;
pub mod oneshot;
mod semaphore;
mod wait;

pub use condvar::{Barrier, BarrierWaitResult, Condvar, WaitGroup, WaitTimeoutResult};
pub use mutex::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use semaphore::{Semaphore, SemaphoreGuard};
