//! Futures on greenstack: running one as a coroutine
//! ([`spawn_future`]), and, with the `tokio` feature, the tokio context
//! that `block_on_future` enters so futures that need tokio's reactor or
//! timer work from coroutines.
//!
//! # Two ways to run a future
//!
//! - [`spawn_future`] polls the future on its worker thread's own stack
//!   (corosensei's `on_parent_stack`, what Go calls `systemstack`), as
//!   tokio polls its tasks: every future a worker polls writes the same
//!   warm stack lines, and the coroutine, which holds the future's state
//!   and parks between polls, keeps a stack of its spawn size. A blocking
//!   call inside such a poll blocks the worker, as in any async runtime.
//! - `spawn(|| block_on_future(fut))` polls it on the coroutine's own
//!   stack, where every blocking call inside (a sync client a service
//!   calls, say) parks only that coroutine; each future then writes stack
//!   memory of its own (hyper at 100 connections: 92 first-level data
//!   write misses per request, against 29 polled on the worker's stack,
//!   callgrind's cache simulation).
//!
//! # The `tokio` feature
//!
//! A future of a tokio-based crate (`tokio::time::sleep`, `tokio::net`,
//! reqwest, sqlx, …) needs a tokio runtime's reactor and timer to be
//! driven, and finds it through the calling thread's tokio context. With
//! the feature, greenstack keeps one tokio runtime for the process: one
//! worker thread (`greenstack-tokio`) that runs the reactor and the timer,
//! started with the first greenstack runtime's workers (or at the first
//! `block_on_future` on a plain thread), unless the application hands its
//! own with `use_tokio_runtime` first. Every greenstack worker thread is
//! inside that runtime's context for its whole life, so coroutines may
//! make tokio futures anywhere; a plain thread is inside it during each
//! poll of `block_on_future`. The future registers its sockets and timers
//! there; their readiness wakes the coroutine through its waker, across
//! threads.
//!
//! The context is tokio's handle only (`Handle::enter`), not a running
//! runtime: a coroutine may still drive a runtime of its own with
//! `Runtime::block_on`.
//!
//! The cost is that hop: each wake-up of a tokio-driven future is a
//! cross-thread wake of the coroutine (an eventfd write and a context
//! switch when the worker sleeps), where a greenstack socket's readiness
//! is seen by the worker's own poller.

use std::future::Future;

use crate::scheduler::{JoinHandle, Runtime};

/// Runs `fut` to completion as a coroutine of the current runtime (it
/// polls the future and parks while it is pending), and returns its
/// handle: async application code hosted by greenstack, one coroutine per
/// future.
///
/// # Polled on the worker's stack
///
/// Each poll runs on the stack of the worker thread, as tokio polls its
/// tasks, not on the coroutine's own: the frames of every future a worker
/// polls are written to the same warm memory, and the coroutine's stack
/// stays at its spawn size. (hyper on greenstack at 100 connections,
/// callgrind's cache simulation: 29 first-level data write misses per
/// request, against 92 with each future polled on its coroutine's stack
/// and 18 for hyper on tokio.)
///
/// So, as in any async runtime, the future must not block: inside a poll
/// the coroutine cannot be switched out, so a blocking call (a greenstack
/// wait such as `Mutex::lock` or `JoinHandle::join`, or a blocking libc
/// call, which the hooks then pass straight through) blocks the whole
/// worker thread instead of parking, and
/// [`block_on_future`](crate::block_on_future) panics. Awaiting is fine:
/// greenstack's sockets, timers (`hyper_rt::Timer` with the `hyper`
/// feature), [`JoinHandle`]s and tokio's futures (feature `tokio`) all
/// wake the coroutine, which parks between polls. The poll is still its
/// coroutine's code: coroutine-locals are the coroutine's own, and
/// [`cancel::is_cancelled`](crate::cancel::is_cancelled) sees a
/// [`JoinHandle::cancel`]; [`try_current`](crate::try_current) is `None`.
/// A future that needs to block runs on its coroutine's own stack with
/// `spawn(|| block_on_future(fut))`, where every blocking call parks.
/// The worker thread's stack is std's default for spawned threads (2 MiB,
/// or `RUST_MIN_STACK`); a poll that overflows it is a crash, not a
/// growth of the coroutine's stack.
///
/// # Panics
///
/// As [`spawn`](crate::spawn): outside a runtime, or if no stack can be
/// had.
///
/// # Examples
///
/// ```
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let h = greenstack_runtime::spawn_future(async { 6 * 7 });
///     assert_eq!(h.join().unwrap(), 42);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn spawn_future<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    crate::spawn(move || poll_on_worker_stack(fut))
}

/// `block_on_future` with each poll on the worker's own stack (see
/// `on_worker_stack`).
fn poll_on_worker_stack<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = crate::scheduler::current_waker();
    loop {
        let fut = fut.as_mut();
        let waker = &waker;
        let poll = crate::scheduler::worker::on_worker_stack(move || {
            let mut cx = std::task::Context::from_waker(waker);
            in_context(|| fut.poll(&mut cx))
        });
        if let std::task::Poll::Ready(v) = poll {
            return v;
        }
        crate::scheduler::park_current();
    }
}

impl Runtime {
    /// [`spawn_future`] on this runtime, from any thread.
    ///
    /// # Panics
    ///
    /// If no stack can be had.
    pub fn spawn_future<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(move || poll_on_worker_stack(fut))
    }
}

/// Calls `poll` inside the tokio context (with the `tokio` feature), else
/// just calls it. A worker thread is in the context for its whole life
/// ([`enter_for_thread`]): entering around a poll there could unbalance
/// tokio's per-thread context stack, since a poll that parks the coroutine
/// lets other coroutines run on the thread before the guard drops.
#[inline]
pub(crate) fn in_context<R>(poll: impl FnOnce() -> R) -> R {
    #[cfg(feature = "tokio")]
    {
        if crate::scheduler::worker::on_worker_thread() {
            return poll();
        }
        let _enter = tokio_support::handle().enter();
        poll()
    }
    #[cfg(not(feature = "tokio"))]
    poll()
}

/// With the `tokio` feature, a guard that keeps the calling thread (a
/// worker, for its whole life) inside the tokio runtime's context, so
/// `tokio::time::sleep(..)` and the like can be made anywhere in a
/// coroutine, not only inside `block_on_future`.
pub(crate) fn enter_for_thread() -> Option<ThreadContext> {
    #[cfg(feature = "tokio")]
    {
        Some(ThreadContext {
            _guard: tokio_support::handle().enter(),
        })
    }
    #[cfg(not(feature = "tokio"))]
    None
}

/// The id of the tokio runtime whose context every worker thread is in
/// ([`enter_for_thread`], feature `tokio`), if one was started: waits in
/// it may park (`hook::inside_foreign_tokio`).
pub(crate) fn worker_tokio_id() -> Option<tokio::runtime::Id> {
    #[cfg(feature = "tokio")]
    {
        tokio_support::started().map(tokio::runtime::Handle::id)
    }
    #[cfg(not(feature = "tokio"))]
    None
}

/// See [`enter_for_thread`].
pub(crate) struct ThreadContext {
    #[cfg(feature = "tokio")]
    _guard: tokio::runtime::EnterGuard<'static>,
}

#[cfg(feature = "tokio")]
pub use tokio_support::{tokio_handle, use_tokio_runtime};

#[cfg(feature = "tokio")]
mod tokio_support {
    use once_cell::sync::OnceCell;

    static HANDLE: OnceCell<tokio::runtime::Handle> = OnceCell::new();

    /// The tokio runtime `block_on_future` enters: the one given to
    /// [`use_tokio_runtime`], or greenstack's own, started now if it is not
    /// yet (one worker thread, reactor and timer enabled).
    ///
    /// # Panics
    ///
    /// If the runtime cannot be started (no thread can be spawned).
    pub fn tokio_handle() -> tokio::runtime::Handle {
        handle().clone()
    }

    /// The runtime, if started (or given) already.
    pub(super) fn started() -> Option<&'static tokio::runtime::Handle> {
        HANDLE.get()
    }

    pub(super) fn handle() -> &'static tokio::runtime::Handle {
        HANDLE.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("greenstack-tokio")
                .enable_all()
                .build()
                .expect("greenstack: starting its tokio runtime");
            let handle = rt.handle().clone();
            // Kept for the process's life: dropping a tokio runtime from
            // a static at exit would block on its threads.
            std::mem::forget(rt);
            handle
        })
    }

    /// Makes `block_on_future` enter the application's own tokio runtime
    /// instead of starting greenstack's. Call before the first
    /// `block_on_future`; `Err` with the handle back if a runtime is in
    /// use already. The runtime must outlive every coroutine that awaits
    /// a tokio future.
    ///
    /// # Examples
    ///
    /// ```
    /// let tokio_rt = tokio::runtime::Runtime::new()?;
    /// let _ = greenstack_runtime::future::use_tokio_runtime(tokio_rt.handle().clone());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn use_tokio_runtime(handle: tokio::runtime::Handle) -> Result<(), tokio::runtime::Handle> {
        HANDLE.set(handle)
    }
}
