//! greenstack: green threads (stackful coroutines) for Rust whose stacks grow
//! on demand.
//!
//! Every coroutine gets a large reserved stack of which only the top page is
//! backed by memory at first; a fault handler backs more as the stack grows,
//! and a guard below it turns an overflow into a report naming the coroutine
//! instead of a silent write into a neighbour.
//!
//! This crate is the facade users depend on. Today it exposes the stack
//! arena ([`stack`]); the scheduler, sync primitives, timers, networking and
//! macros build on it.
#![warn(missing_docs)]

pub use greenstack_macros::{main, spawn, test};
pub use greenstack_runtime::{
    block_on_future, coroutine_local, current, park, spawn, spawn_blocking, try_current, yield_now,
    AccessError, Builder, Cancelled, Coroutine, CoroutineId, JoinHandle, LocalKey, Runtime,
    RuntimeBuilder, RuntimeStats,
};
pub use greenstack_runtime::{net, stack, sync, time};

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
