//! Cancellation: ask a coroutine to stop, and it stops at its next wait,
//! by its own code.
//!
//! [`JoinHandle::cancel`](crate::JoinHandle::cancel) (or a
//! [`CancelToken`] the coroutine was added to) marks the coroutine
//! cancelled, for good, and wakes it if it waits. From then on its waits
//! stop waiting and say so, as Java's interrupt makes `sleep` and `wait`
//! throw, and the coroutine unwinds or returns through its own error
//! handling (`?`). Nothing is unwound by force: a coroutine that ignores
//! every error runs on.
//!
//! | a wait of a cancelled coroutine | ends with |
//! |---|---|
//! | I/O on `greenstack::net` sockets | `Err`, [`is_cancellation`] true (`ECANCELED`) |
//! | a blocking libc call the hooks park (std's sockets, pipes, `waitpid`, `poll`) | `-1`/`ECANCELED`, so std returns the same `Err` |
//! | `recv`, `send` of every channel (mpsc, mpmc, oneshot, watch, broadcast), with or without timeout | the channel's *disconnected* error; a send gets its value back, queued values stay queued |
//! | every wait that takes a timeout (`lock_timeout`, `acquire_timeout`, `Condvar::wait_timeout`, `join_timeout`, `accept_timeout`, …) | its timed-out result, at once |
//! | `time::sleep`, `sleep_until`, `Interval::tick` | returns early |
//!
//! Not cancellation points, as in POSIX threads and Java: the waits that
//! can report nothing — `Mutex::lock`, `RwLock::read`/`write`,
//! `Semaphore::acquire`, `Condvar::wait`, `Barrier::wait`,
//! `Notify::notified`, `WaitGroup::wait`, `OnceLock::get_or_init`,
//! `JoinHandle::join` (its error would lose the handle), a scope's wait for
//! its coroutines (soundness depends on it), and `std::thread::sleep`
//! (std retries `EINTR` for the remaining time). Use their timeout forms
//! in code that must stop when cancelled, and [`is_cancelled`] between
//! waits.
//!
//! A wait whose result is already there returns it: a cancelled receiver
//! still gets a queued value, a cancelled reader the bytes already
//! received. Only waiting ends.
//!
//! Why `ECANCELED` rather than `io::ErrorKind::Interrupted`: std's
//! `read_exact`, `write_all` and `io::copy` retry `Interrupted`, so a
//! cancellation reported that way would spin in them (or, reported once,
//! be swallowed); `ECANCELED` reaches the caller.
//!
//! # Timeouts
//!
//! [`time::timeout`](crate::time::timeout) applies the same stop to the
//! waits of a closure once a deadline passes: I/O fails with
//! `ErrorKind::TimedOut` (`ETIMEDOUT`), the rest as in the table.
//!
//! # Examples
//!
//! ```
//! use greenstack_runtime::{cancel, sync::mpsc};
//! # let rt = greenstack_runtime::Runtime::new()?;
//! rt.block_on(|| {
//!     let (tx, rx) = mpsc::channel::<u32>();
//!     let worker = greenstack_runtime::spawn(move || {
//!         let mut sum = 0;
//!         // Ends when the senders are gone, or when cancelled.
//!         while let Ok(v) = rx.recv() {
//!             sum += v;
//!         }
//!         (sum, cancel::is_cancelled())
//!     });
//!     tx.send(2).unwrap();
//!     tx.send(3).unwrap();
//!     worker.cancel();
//!     assert_eq!(worker.join().unwrap(), (5, true));
//!     drop(tx);
//! });
//! # Ok::<(), std::io::Error>(())
//! ```

#[cfg(not(greenstack_loom))]
pub use real::*;

#[cfg(not(greenstack_loom))]
mod real {
    use std::cell::Cell;
    use std::fmt;
    use std::io;
    use std::sync::Arc;
    use std::time::Instant;

    use crate::loom::sync::Mutex;

    use crate::scheduler::worker::{code_running, current_running};
    use crate::scheduler::{Cancelled, JoinHandle, TaskRef};

    /// Why a cancellable wait must end now.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) enum End {
        /// The wait's own deadline passed.
        Deadline,
        /// The coroutine was cancelled.
        Cancelled,
        /// An enclosing [`time::timeout`](crate::time::timeout)'s deadline
        /// passed.
        Elapsed,
    }

    /// The timeout state of a coroutine (in its `Running`) or a thread.
    #[derive(Debug, Default)]
    pub(crate) struct Limits {
        /// The earliest deadline of the enclosing `time::timeout`s.
        deadline: Cell<Option<Instant>>,
        /// Waits cut short by such a deadline, ever.
        cuts: Cell<u64>,
    }

    impl Limits {
        /// No timeout.
        pub(crate) const fn new() -> Limits {
            Limits {
                deadline: Cell::new(None),
                cuts: Cell::new(0),
            }
        }
    }

    thread_local! {
        /// A plain thread's [`Limits`].
        static THREAD: Limits = const { Limits::new() };
    }

    /// Calls `f` with the caller's limits: its coroutine's, or its thread's.
    fn with_limits<R>(f: impl FnOnce(&Limits) -> R) -> R {
        match current_running() {
            Some(r) => f(&r.limits),
            None => THREAD.with(f),
        }
    }

    /// Whether the running coroutine has been cancelled.
    #[inline]
    fn requested() -> bool {
        // Acquire: pairs with the Release in `request`.
        // `code_running`: a future polled on the worker's stack sees its
        // coroutine's cancellation too.
        code_running().is_some_and(|r| r.header.cancel_requested())
    }

    /// Marks the coroutine of `header` cancelled and wakes it if it waits.
    pub(crate) fn request(header: &crate::scheduler::Header) {
        // Release: what the canceller did before is visible to the
        // coroutine once it sees the flag.
        if header.request_cancel() {
            header.unpark();
        }
    }

    /// One wait's stop conditions: its own deadline, the enclosing
    /// timeout's, and (if `cancellable`) the coroutine's cancellation.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Point {
        own: Option<Instant>,
        limit: Option<Instant>,
        cancellable: bool,
    }

    impl Point {
        /// A cancellation point with the caller's own `deadline`.
        #[inline]
        pub(crate) fn new(deadline: Option<Instant>) -> Point {
            Point {
                own: deadline,
                limit: with_limits(|l| l.deadline.get()),
                cancellable: true,
            }
        }

        /// A wait that is not a cancellation point (a lock's): only its
        /// own deadline ends it.
        #[inline]
        pub(crate) fn plain(deadline: Option<Instant>) -> Point {
            Point {
                own: deadline,
                limit: None,
                cancellable: false,
            }
        }

        /// Until when to park: the earlier of the two deadlines.
        #[inline]
        pub(crate) fn deadline(&self) -> Option<Instant> {
            match (self.own, self.limit) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) => a,
                (None, b) => b,
            }
        }

        /// Why the wait must end now, if it must. An [`End::Elapsed`] is
        /// counted for the enclosing timeout: call once per wait that ends.
        #[inline]
        pub(crate) fn ended(&self) -> Option<End> {
            if self.cancellable && requested() {
                return Some(End::Cancelled);
            }
            if let Some(limit) = self.limit {
                if self.own.map_or(true, |o| limit <= o) && crate::time::expired(Some(limit)) {
                    with_limits(|l| l.cuts.set(l.cuts.get() + 1));
                    return Some(End::Elapsed);
                }
            }
            if crate::time::expired(self.own) {
                return Some(End::Deadline);
            }
            None
        }
    }

    /// The I/O error for a wait that `end` cut short (its own deadline
    /// is the caller's business).
    pub(crate) fn io_error(end: End) -> io::Error {
        match end {
            End::Cancelled => io::Error::from_raw_os_error(libc::ECANCELED),
            End::Elapsed => io::Error::from_raw_os_error(libc::ETIMEDOUT),
            End::Deadline => io::Error::new(io::ErrorKind::WouldBlock, "the operation timed out"),
        }
    }

    /// The errno for a hooked call that `end` cut short.
    pub(crate) fn errno(end: End) -> i32 {
        match end {
            End::Elapsed => libc::ETIMEDOUT,
            End::Cancelled | End::Deadline => libc::ECANCELED,
        }
    }

    /// Runs `f` with its waits cut at `deadline` (or the enclosing one, if
    /// earlier). Returns `f`'s value and whether any of its waits was cut
    /// by a timeout's deadline.
    pub(crate) fn with_deadline<T>(deadline: Option<Instant>, f: impl FnOnce() -> T) -> (T, bool) {
        /// Puts the enclosing deadline back, also when `f` unwinds.
        struct Restore(Option<Instant>);
        impl Drop for Restore {
            fn drop(&mut self) {
                with_limits(|l| l.deadline.set(self.0));
            }
        }
        let (outer, cuts) = with_limits(|l| {
            let outer = l.deadline.get();
            let inner = match (outer, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) => a,
                (None, b) => b,
            };
            l.deadline.set(inner);
            (outer, l.cuts.get())
        });
        let restore = Restore(outer);
        let v = f();
        drop(restore);
        (v, with_limits(|l| l.cuts.get()) != cuts)
    }

    /// Whether the calling coroutine has been cancelled (by
    /// [`JoinHandle::cancel`] or a [`CancelToken`]). Always false on a plain
    /// thread. Once true, it stays true.
    pub fn is_cancelled() -> bool {
        requested()
    }

    /// `Err(Cancelled)` if the calling coroutine has been cancelled: a
    /// check for `?` between waits, in code that computes for long.
    pub fn check() -> Result<(), Cancelled> {
        if requested() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Whether `e` is the error a wait of a cancelled coroutine returns
    /// (`ECANCELED`; see the [module docs](crate::cancel)).
    pub fn is_cancellation(e: &io::Error) -> bool {
        e.raw_os_error() == Some(libc::ECANCELED)
    }

    /// Cancels a group of coroutines at once, as Go's `context` and
    /// tokio's `CancellationToken` do: [`add`](Self::add) coroutines, then
    /// [`cancel`](Self::cancel) cancels every one of them (and any added
    /// later) as [`JoinHandle::cancel`] does. Clones share the token.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenstack_runtime::cancel::CancelToken;
    /// # let rt = greenstack_runtime::Runtime::new()?;
    /// rt.block_on(|| {
    ///     let token = CancelToken::new();
    ///     let handles: Vec<_> = (0..3)
    ///         .map(|_| {
    ///             let h = greenstack_runtime::spawn(|| {
    ///                 greenstack_runtime::time::sleep(Duration::from_secs(3600));
    ///                 greenstack_runtime::cancel::is_cancelled()
    ///             });
    ///             token.add(&h);
    ///             h
    ///         })
    ///         .collect();
    ///     token.cancel();
    ///     for h in handles {
    ///         assert!(h.join().unwrap());
    ///     }
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[derive(Clone, Default)]
    pub struct CancelToken {
        inner: Arc<TokenInner>,
    }

    #[derive(Default)]
    struct TokenInner {
        /// Whether `cancel` was called, and the members to cancel then.
        state: Mutex<TokenState>,
    }

    #[derive(Default)]
    struct TokenState {
        cancelled: bool,
        members: Vec<TaskRef>,
    }

    impl CancelToken {
        /// A token that has not been cancelled, with no members.
        pub fn new() -> CancelToken {
            CancelToken::default()
        }

        /// Adds the coroutine of `handle` (a no-op for a `spawn_blocking`
        /// job, which cannot be cancelled): cancelled at once if the token
        /// already is.
        pub fn add<T>(&self, handle: &JoinHandle<T>) {
            if let Some(c) = handle.coroutine() {
                self.add_header(c.header.clone());
            }
        }

        /// Adds the calling coroutine (a no-op on a plain thread).
        pub fn add_current(&self) {
            if let Some(r) = code_running() {
                self.add_header(r.header.clone());
            }
        }

        fn add_header(&self, t: TaskRef) {
            let mut st = self.lock();
            if st.cancelled {
                drop(st);
                request(&t);
                return;
            }
            // Finished members are pruned as the list grows: it holds
            // the live ones, and at most twice as many entries.
            if st.members.len() >= 16 && st.members.len().is_power_of_two() {
                st.members.retain(|m| !m.park.is_done());
            }
            st.members.push(t);
        }

        /// Cancels every member, now and added later. Idempotent.
        pub fn cancel(&self) {
            let members = {
                let mut st = self.lock();
                st.cancelled = true;
                std::mem::take(&mut st.members)
            };
            for m in &members {
                request(m);
            }
        }

        /// Whether [`cancel`](Self::cancel) has been called.
        pub fn is_cancelled(&self) -> bool {
            self.lock().cancelled
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, TokenState> {
            // Nothing panics under this lock: a poisoned one is whole.
            self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    impl fmt::Debug for CancelToken {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let st = self.lock();
            f.debug_struct("CancelToken")
                .field("cancelled", &st.cancelled)
                .field("members", &st.members.len())
                .finish()
        }
    }
}

/// Under loom: waits end only at their own deadline.
#[cfg(greenstack_loom)]
#[allow(dead_code)]
mod loom_only {
    use std::time::Instant;

    /// Why a wait must end now.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) enum End {
        Deadline,
        Cancelled,
        Elapsed,
    }

    /// A wait's own deadline.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Point(Option<Instant>);

    impl Point {
        pub(crate) fn new(deadline: Option<Instant>) -> Point {
            Point(deadline)
        }
        pub(crate) fn plain(deadline: Option<Instant>) -> Point {
            Point(deadline)
        }
        pub(crate) fn deadline(&self) -> Option<Instant> {
            self.0
        }
        pub(crate) fn ended(&self) -> Option<End> {
            crate::time::expired(self.0).then_some(End::Deadline)
        }
    }
}

#[cfg(greenstack_loom)]
pub(crate) use loom_only::*;
