//! The greenstack runtime: green threads (stackful coroutines) whose stacks
//! are reserved large, committed small and grown on demand.
//!
//! Most users depend on the `greenstack` facade crate, which re-exports this
//! one and adds the macros. The pieces:
//!
//! - [`Runtime`], [`spawn`], [`Builder`], [`JoinHandle`], [`yield_now`],
//!   [`park`], [`current`], [`spawn_blocking`], [`coroutine_local!`]: the
//!   M:N work-stealing scheduler, with `std::thread`'s shape.
//! - [`sync`], [`time`], [`net`], [`block_on_future`]: blocking-style
//!   primitives that park the coroutine, not the worker.
//! - [`stack`]: the stack arena. Reserved slots, a SIGSEGV handler that grows
//!   them on fault and reports overflows, look-ahead prefault, reclaim.
//!
//! # Why `spawn` is safe
//!
//! A coroutine that has started never moves to another OS thread; idle
//! workers steal only coroutines that have never run, which hold nothing but
//! their `Send` closure. So a coroutine may keep an `Rc`, a `thread_local!`
//! reference or a std `MutexGuard` across a yield, park, channel receive or
//! socket read, and thread-local addresses the compiler cached stay valid.
//!
//! Memory-safe is not deadlock-free. With the hooks on (the default), a
//! std `Mutex`'s wait parks the coroutine, but std's other locks and its
//! `Condvar` block the thread (unless [`RuntimeBuilder::hook_std_locks`]),
//! as a `Mutex` does with the hooks off: if a coroutine waits that way
//! for what another coroutine on the same worker would do (a notify, an
//! unlock), that worker blocks for good (the other runs only on it), and
//! with it every coroutine living there: on one worker, the whole
//! runtime. Use [`sync::Mutex`], [`sync::RwLock`] and [`sync::Condvar`],
//! which park the coroutine. The watchdog's warning names this as a likely
//! cause.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, unreachable_pub, clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "linux")]
mod loom;

#[cfg(not(target_os = "linux"))]
compile_error!("greenstack needs Linux: its stacks grow through Linux's fault handling");

#[cfg_attr(greenstack_loom, allow(dead_code))]
mod counter;

#[cfg(not(greenstack_loom))]
pub mod stack;

#[cfg(not(greenstack_loom))]
mod scheduler;

#[cfg(not(greenstack_loom))]
pub mod time;

pub mod cancel;

#[cfg(not(greenstack_loom))]
pub mod sync;

#[cfg(not(greenstack_loom))]
pub mod net;

#[cfg(not(greenstack_loom))]
pub mod hook;

#[cfg(not(greenstack_loom))]
pub mod signal;

#[cfg(not(greenstack_loom))]
pub mod future;

#[cfg(not(greenstack_loom))]
pub use future::spawn_future;

#[cfg(all(feature = "hyper", not(greenstack_loom)))]
pub mod hyper_rt;

/// Environment variable that, set to `1`, `on` or `true` when the process
/// spawns its first coroutine, makes task cells (the one allocation each
/// spawn makes: header, join state and closure) come from the global
/// allocator instead of mimalloc's, for the life of the process: for heap
/// checkers such as valgrind's memcheck, which see only the global
/// allocator's blocks. Without the `mimalloc` feature (on by default) cells
/// always come from the global allocator.
///
/// mimalloc serves a burst of spawns then joins in fewer instructions than
/// glibc's malloc (1,874 against 2,197 per spawn and join, callgrind):
/// `scheduler/task.rs` has the measurements.
#[cfg(not(greenstack_loom))]
pub const SYSTEM_ALLOC_ENV: &str = "GREENSTACK_SYSTEM_ALLOC";

#[cfg(not(greenstack_loom))]
pub use scheduler::{
    block_on_future, current, park, scope, spawn, spawn_blocking, try_current, yield_now,
    AccessError, Builder, Cancelled, Coroutine, CoroutineId, JoinHandle, JoinSet, LocalKey,
    Runtime, RuntimeBuilder, RuntimeStats, Scope, ScopedJoinHandle,
};

/// Under loom only the modeled components are built: the rest of the crate
/// uses std atomics in statics, which loom cannot track.
#[cfg(greenstack_loom)]
mod stack {
    #[allow(dead_code)]
    mod arena;
    #[allow(dead_code, unreachable_pub)]
    mod class;
    #[allow(dead_code, unreachable_pub)]
    mod mmap;
    #[cfg(test)]
    mod tests;
    pub(crate) use crate::loom::rt::NoFaultSection;
}

/// Under loom only the modeled components are built.
#[cfg(greenstack_loom)]
mod scheduler {
    #[allow(dead_code)]
    pub(crate) mod idle;
    #[allow(dead_code)]
    pub(crate) mod join;
    #[allow(dead_code)]
    pub(crate) mod park;
    #[allow(dead_code)]
    pub(crate) mod refcount;
    #[cfg(test)]
    mod tests;
    pub(crate) use crate::loom::rt::{current_header_ptr, current_waker, Header};
}

/// Under loom: the waits park the loom thread (`loom::rt`).
#[cfg(greenstack_loom)]
mod time {
    use std::time::{Duration, Instant};

    pub(crate) use crate::loom::rt::park_until;

    /// `now + timeout`, or `None` if that overflows (the real module also
    /// caches the reading; the models have no worker clock).
    pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
        Instant::now().checked_add(timeout)
    }

    /// Whether `deadline` (if any) has passed.
    pub(crate) fn expired(deadline: Option<Instant>) -> bool {
        deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Under loom only the modeled components are built: the wait queues, the
/// spin lock and oneshot (and the channel core they share code with), and
/// the futex hook's queues.
#[cfg(greenstack_loom)]
#[allow(dead_code, unreachable_pub)]
mod sync {
    mod chan;
    pub(crate) mod futex_queue;
    pub(crate) mod oneshot;
    #[cfg(test)]
    mod tests;
    pub(crate) mod wait;
}
