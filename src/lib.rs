//! greenstack: green threads (stackful coroutines) for Rust whose stacks grow
//! on demand.
//!
//! Every coroutine gets a large reserved stack of which only the top page is
//! backed by memory at first; a fault handler backs more as the stack grows,
//! and a guard below it turns an overflow into a report naming the coroutine
//! instead of a silent write into a neighbour.
//!
//! This crate is the facade users depend on:
//!
//! - [`macro@main`], [`macro@test`] and [`spawn!`] for applications and tests;
//! - [`Runtime`], [`spawn()`], [`Builder`], [`JoinHandle`], [`yield_now`],
//!   [`park`], [`current`], [`spawn_blocking`] and [`coroutine_local!`], in
//!   the shape of `std::thread`;
//! - [`sync`], [`time`] and [`net`], which park the coroutine, not the
//!   worker, and [`block_on_future`] to call async code;
//! - [`stack`], the arena the stacks live in.
//!
//! A started coroutine never changes threads, so `Rc`, `thread_local!` and
//! std guards are memory-safe to hold across a yield; that is what makes
//! `spawn` safe. But a std lock blocks the thread, not the coroutine: a std
//! guard held across a yield while another coroutine on the same worker
//! locks the same lock blocks that worker for good (on one worker, the
//! whole runtime). Use [`sync::Mutex`] and [`sync::RwLock`] across a
//! yield.
//!
//! # Examples
//!
//! ```
//! #[greenstack::main(workers = 2)]
//! fn main() {
//!     let (tx, rx) = greenstack::sync::mpsc::channel();
//!     for i in 0..10u64 {
//!         let tx = tx.clone();
//!         greenstack::spawn!(move || tx.send(i * i).unwrap());
//!     }
//!     drop(tx);
//!     assert_eq!(rx.iter().sum::<u64>(), 285);
//! }
//! ```
#![warn(missing_docs)]

pub use greenstack_macros::{main, select, spawn, test};
pub use greenstack_runtime::{
    block_on_future, coroutine_local, current, park, scope, spawn, spawn_blocking, spawn_future,
    try_current, yield_now, AccessError, Builder, Cancelled, Coroutine, CoroutineId, JoinHandle,
    JoinSet, LocalKey, Runtime, RuntimeBuilder, RuntimeStats, Scope, ScopedJoinHandle,
    SYSTEM_ALLOC_ENV,
};
pub use greenstack_runtime::{cancel, future, net, signal, stack, sync, time};

#[cfg(feature = "hyper")]
pub use greenstack_runtime::hyper_rt;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
