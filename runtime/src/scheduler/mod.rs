//! The M:N work-stealing scheduler.
//!
//! N worker threads run M coroutines. Each worker owns:
//!
//! - a crossbeam-deque `Worker` of coroutines that have **never run**
//!   ([`task::NewTask`]: one pointer to a task cell holding a `Send`
//!   closure and the stack to start on). Idle workers
//!   steal from it, and from the runtime's injector, where spawns from
//!   outside the runtime land;
//! - a slab of **started** coroutines, and a FIFO ready queue of their keys.
//!   A started coroutine never leaves its worker (see "Soundness");
//! - an inbox, where other threads send keys of its coroutines they woke.
//!
//! # Soundness
//!
//! A started coroutine may hold `!Send` state across a yield: an `Rc`, a
//! `thread_local!` value, a std `MutexGuard`. And LLVM may cache the address
//! of a thread-local across a call. Moving a started coroutine to another OS
//! thread would therefore be undefined behaviour that safe code cannot rule
//! out. So only never-started tasks are stolen (all they hold is their
//! `Send` closure), the corosensei coroutine is created on the worker that
//! first runs it, and a wake-up from elsewhere sends the coroutine's key
//! home. This is why [`spawn`] is safe while taking only `F: Send`.
//!
//! Safe, not deadlock-free: a coroutine that locks a std lock another
//! coroutine of its worker holds across a yield blocks the worker thread,
//! and so the holder, for good. The watchdog names that cause.
//!
//! # Waking and sleeping
//!
//! A worker with nothing to do announces itself idle ([`idle::Idle`]),
//! re-checks every source of work, and only then sleeps in its driver's
//! `epoll_wait` (`driver.rs`). A wake-up is an eventfd write, whose edge
//! stays pending until the next poll, so one sent in between is kept. A
//! spawn wakes at most one sleeping worker; a remote wake-up wakes the
//! coroutine's home worker if it sleeps. The park token protocol of
//! coroutines is in `park.rs`.
//!
//! # What loom checks (`scheduler/tests/`)
//!
//! - `loom_park.rs`: the coroutine park token ([`park::ParkState`]) and the
//!   watchdog's and trimmer's sleep token ([`park::Parker`]).
//! - `loom_idle.rs`: the workers' sleep/wake decision: the sleeper
//!   bookkeeping of `idle.rs` (production code), driven by the steps of the
//!   worker loop (announce, re-check, sleep, search; `Local::sleep` and
//!   `Local::stop_searching`) and of spawns and remote wake-ups
//!   (`Shared::notify_one`, `Shared::notify_worker`). Those steps are
//!   copied into the model, so a change to them must be copied there; the
//!   queues (crossbeam's) and the epoll sleep are mocks.
//! - `loom_join.rs`: the join state; `loom_refcount.rs`: the task
//!   reference count.
//!
//! Not modeled: the rest of the worker loop, crossbeam's queues, the
//! driver (epoll, eventfd, timers).

mod blocking;
pub(crate) mod driver;
mod idle;
pub(crate) mod join;
mod join_set;
mod local;
pub(crate) mod park;
mod refcount;
mod scope;
mod task;
mod trimmer;
mod watchdog;
pub(crate) mod worker;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::panic::resume_unwind;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use crossbeam_deque::{Injector, Stealer};

use crate::counter::Sharded;

pub(crate) use self::task::Header;
pub(crate) use self::task::TaskRef;
use self::task::{HeaderInit, NewTask, Stack, TaskShared};
use crate::stack::{ArenaBuilder, ArenaStats, GuardMode, StackArena};

pub use self::join_set::JoinSet;
pub use self::local::{AccessError, LocalKey};
pub use self::scope::{scope, Scope, ScopedJoinHandle};
pub use self::task::{Cancelled, Coroutine, CoroutineId, JoinHandle};
pub use blocking::spawn_blocking;

/// Ids are unique in the process, across runtimes. Threads take them in
/// blocks of [`ID_BLOCK`], so spawning on two workers does not bounce this
/// cache line on every spawn.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Ids a thread reserves at a time.
const ID_BLOCK: u64 = 1024;

thread_local! {
    /// The calling thread's reserved ids: next, and one past the last.
    static IDS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// A fresh coroutine id.
fn next_id() -> std::num::NonZeroU64 {
    let id = IDS.with(|c| {
        let (next, end) = c.get();
        let (next, end) = if next < end {
            (next, end)
        } else {
            let start = NEXT_ID.fetch_add(ID_BLOCK, Ordering::Relaxed);
            (start, start + ID_BLOCK)
        };
        c.set((next + 1, end));
        next
    });
    std::num::NonZeroU64::new(id).expect("ids start at 1")
}

/// Runtime-wide counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) spawned: Sharded,
    pub(crate) finished: Sharded,
    /// Tasks dropped unrun at shutdown (`worker::discard`).
    pub(crate) discarded: Sharded,
    pub(crate) steals: Sharded,
    pub(crate) parks: Sharded,
    pub(crate) wakeups: Sharded,
}

/// What other threads may touch of one worker.
pub(crate) struct WorkerShared {
    /// Steals never-started tasks from the worker's deque.
    pub(crate) stealer: Stealer<NewTask>,
    /// Keys of this worker's coroutines woken by other threads.
    pub(crate) inbox: Injector<usize>,
    /// New tasks that an accept-loop-like spawner placed here (see
    /// `Local::placement`); only this worker takes from it.
    pub(crate) incoming: Injector<NewTask>,
    /// Where the worker sleeps, and its I/O registrations.
    pub(crate) driver: driver::DriverHandle,
    /// Header of the coroutine running now, or null (for the watchdog).
    pub(crate) current: AtomicPtr<Header>,
    /// Set by the watchdog while it reads `current`'s header.
    pub(crate) watch_reading: AtomicBool,
    /// Bumped on every switch into a coroutine: the worker's run count in
    /// the statistics, and the watchdog's sign of progress.
    pub(crate) switches: AtomicU64,
    /// Parks committed on this worker, and unparks this worker made of its
    /// own coroutines (the worker is the only writer: plain load and store,
    /// where the shared counters take a thread-local lookup).
    pub(crate) parks: AtomicU64,
    pub(crate) wakeups: AtomicU64,
    /// Started coroutines living on this worker, for spawn placement (the
    /// worker is its only writer).
    pub(crate) started: std::sync::atomic::AtomicUsize,
    /// Set once the worker's run loop has begun: placement never picks a
    /// worker that failed to start (its incoming queue would never drain).
    pub(crate) running: AtomicBool,
    /// The worker thread's kernel thread id (0 until it starts), where the
    /// watchdog reads what a stuck worker is doing.
    pub(crate) tid: std::sync::atomic::AtomicI32,
    /// A coroutine here spawned a burst into the deque that has not run out
    /// yet: thieves then take only what evens out the load (see
    /// `Local::steal_others`). Only the worker writes it.
    pub(crate) burst: AtomicBool,
}

/// State shared by the workers, the handles and the runtime.
pub(crate) struct Shared {
    pub(crate) arena: StackArena,
    /// Padded so one worker's counters do not share a cache line with the
    /// next worker's.
    pub(crate) workers: Box<[crossbeam_utils::CachePadded<WorkerShared>]>,
    pub(crate) injector: Injector<NewTask>,
    pub(crate) idle: idle::Idle,
    pub(crate) shutdown: AtomicBool,
    /// A graceful shutdown has begun (`Runtime::shutdown_timeout`): spawns
    /// fail, what runs goes on.
    pub(crate) closing: AtomicBool,
    /// A graceful shutdown's deadline passed: every coroutine is cancelled
    /// (`JoinHandle::cancel`), by its worker, except the one with the id
    /// in `cancel_spared` (the coroutine that shuts the runtime down).
    pub(crate) cancel_all: AtomicBool,
    pub(crate) cancel_spared: std::sync::atomic::AtomicU64,
    pub(crate) counters: Counters,
    pub(crate) blocking: blocking::Pool,
    /// Spin budget of the watchdog, if on.
    pub(crate) watchdog: Option<Duration>,
    /// Where the watchdog sleeps between samples.
    pub(crate) watchdog_parker: park::Parker,
    /// Where the trimmer sleeps; the arena wakes it to trim the stack pool
    /// back under budget.
    pub(crate) trimmer_parker: Arc<park::Parker>,
    /// How long a worker at shutdown waits for its cancelled coroutines
    /// that park while unwinding (see `RuntimeBuilder::shutdown_timeout`).
    pub(crate) shutdown_timeout: Duration,
    /// Whether blocking libc calls in this runtime's coroutines park the
    /// coroutine (`crate::hook`).
    pub(crate) hooks: bool,
    /// Whether waits for std's locks in this runtime's coroutines park the
    /// coroutine too (`RuntimeBuilder::hook_std_locks`; never without
    /// `hooks`).
    pub(crate) std_locks: bool,
    /// Worker threads whose run loop has returned, and where
    /// `Runtime::drop` waits for that count with a time limit.
    pub(crate) exited: (crate::loom::sync::Mutex<usize>, std::sync::Condvar),
}

impl Shared {
    /// Coroutines spawned and not yet dropped: spawned, less finished and
    /// discarded. Derived, not counted, so that a spawn and a finish each
    /// bump one counter, not two.
    ///
    /// Never below the true count at the time `spawned` is read (what
    /// `Runtime::shutdown_timeout` needs: it must not stop waiting early).
    /// The ends are read first, Acquire: a coroutine whose finish (or
    /// discard) they see was spawned before it, and that spawn's bump is
    /// then visible to the read of `spawned` (see `crate::counter`).
    pub(crate) fn live(&self) -> u64 {
        let c = &self.counters;
        let ended = c.finished.get() + c.discarded.get();
        c.spawned.get().saturating_sub(ended)
    }

    /// Called by each worker thread as its run loop returns.
    fn worker_exited(&self) {
        let (count, cvar) = &self.exited;
        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        cvar.notify_all();
    }

    /// Waits until every worker thread's run loop has returned, or
    /// `deadline`; true if they all have.
    fn wait_workers_exited(&self, deadline: std::time::Instant) -> bool {
        let (count, cvar) = &self.exited;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n < self.workers.len() {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            n = cvar
                .wait_timeout(n, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

impl Shared {
    /// Wakes one sleeping worker, if any sleeps.
    pub(crate) fn notify_one(&self) {
        if let Some(w) = self.idle.pop_sleeper() {
            self.workers[w].driver.unpark();
        }
    }

    /// Wakes worker `w` if it sleeps.
    pub(crate) fn notify_worker(&self, w: usize) {
        if self.idle.remove_sleeper(w) {
            self.workers[w].driver.unpark();
        }
    }
}

/// Builds a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    workers: Option<usize>,
    arena: ArenaBuilder,
    watchdog: Option<Duration>,
    shutdown_timeout: Duration,
    hooks: bool,
    std_locks: bool,
}

/// Default of [`RuntimeBuilder::shutdown_timeout`]: long enough for a
/// destructor's short wait (a lock another cancelled coroutine holds, a
/// message), short enough that a drop stuck on a wait that never ends is
/// noticed.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// How much longer than the shutdown timeout `Runtime::drop` waits for the
/// workers before it abandons those still busy (a worker needs the timeout
/// plus the time its current coroutine runs before it next suspends).
const WORKER_EXIT_MARGIN: Duration = Duration::from_secs(1);

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            workers: None,
            arena: StackArena::builder(),
            watchdog: Some(Duration::from_millis(100)),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            hooks: true,
            std_locks: false,
        }
    }
}

impl RuntimeBuilder {
    /// Number of worker threads. Default: the available parallelism.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Default stack reserve per coroutine, in bytes (rounded up to a power
    /// of two). Default 256 KiB.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.arena = self.arena.stack_size(bytes);
        self
    }

    /// Replaces the stack arena's settings wholesale.
    pub fn arena(mut self, arena: ArenaBuilder) -> Self {
        self.arena = arena;
        self
    }

    /// Warn (through `tracing`) when a worker has run the same coroutine
    /// without a switch for longer than this; `None` turns the watchdog off.
    /// Default 100 ms.
    pub fn watchdog(mut self, threshold: Option<Duration>) -> Self {
        self.watchdog = threshold;
        self
    }

    /// How long dropping the runtime waits for coroutines that park while
    /// being cancelled. Default 1 s.
    ///
    /// At shutdown every started coroutine is resumed once more and
    /// unwound from the point where it waits, so its destructors run. A
    /// destructor may itself wait (lock a [`Mutex`](crate::sync::Mutex)
    /// another coroutine holds, receive a reply): the workers keep running
    /// the cancelled coroutines until every one has finished, or until this
    /// much time has passed. A coroutine still waiting then, or one that
    /// catches its cancellation and waits again (three times), is
    /// *abandoned*: its joiner sees [`Cancelled`], an error is logged, and
    /// its stack and everything it holds are leaked, never freed while
    /// something may still point into them. A worker still busy a second
    /// after this timeout (its coroutine never waits or returns) is
    /// abandoned too: its thread keeps running, the runtime's memory is
    /// leaked for it, and the drop returns.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Whether blocking calls of std and other crates (socket and pipe
    /// I/O, `poll`, sleeps) made inside this runtime's coroutines park the
    /// coroutine instead of blocking its worker. Default: on, unless the
    /// environment variable [`GREENSTACK_HOOKS`](crate::hook::HOOKS_ENV)
    /// is `0` or `off`, which turns them off for every runtime.
    ///
    /// See [`crate::hook`] for how, and for what is covered.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = greenstack_runtime::Runtime::builder()
    ///     .workers(1)
    ///     .hook_blocking_calls(true)
    ///     .build()?;
    /// rt.block_on(|| {
    ///     let a = greenstack_runtime::spawn(|| std::thread::sleep(std::time::Duration::from_millis(50)));
    ///     // Runs while `a` sleeps, on the same single worker.
    ///     let b = greenstack_runtime::spawn(|| 7);
    ///     assert_eq!(b.join().unwrap(), 7);
    ///     a.join().unwrap();
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn hook_blocking_calls(mut self, on: bool) -> Self {
        self.hooks = on;
        self
    }

    /// Whether every wait for std's locks in this runtime's coroutines (a
    /// contended `RwLock`, a `Condvar`, a `Once`, `OnceLock` or `LazyLock`
    /// another caller is initialising) parks the coroutine instead of
    /// blocking its worker, as a contended std `Mutex`'s wait does with
    /// the hooks on anyway. Default: off. Needs the hooks
    /// ([`hook_blocking_calls`](Self::hook_blocking_calls)).
    ///
    /// With it, such a lock held across a park (a sleep, a socket read) no
    /// longer blocks every other coroutine of the holder's worker that
    /// waits for it, and a `Condvar` notified by another coroutine of the
    /// waiter's worker cannot deadlock that worker. See [`crate::hook`]'s
    /// futex module for how.
    ///
    /// # Safety
    ///
    /// Every coroutine of a worker shares the worker's OS thread, so with
    /// this on, two of them can be inside one wait on a condition variable
    /// (or another std lock) that belongs to that thread, which two
    /// threads never can be. Code that keeps such a thread-owned latch or parker
    /// on the heap and waits on it is then wrong: tokio's `blocking_*`
    /// calls (`blocking_recv`, `blocking_lock`) panic or lose a wake-up,
    /// as do `event-listener`'s and the `parking` crate's blocking waits,
    /// and a crate that keeps a job on the waiter's stack until such a
    /// latch fires could let the pool write into a frame that has
    /// returned. So the caller promises that no code running in this
    /// runtime's coroutines waits on a std `Mutex`, `RwLock`, `Condvar`
    /// or `Once` owned by the current thread through a pointer kept per
    /// thread. Such objects stored inside a `thread_local!` itself (as
    /// rayon's latch for `install` from outside its pool is) are
    /// recognised and never taken over; `thread::park` (std's channels,
    /// `crossbeam`) and `parking_lot` never are either.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    ///
    /// // SAFETY: the coroutines below wait on no thread-owned lock.
    /// let rt = unsafe { greenstack_runtime::Runtime::builder().hook_std_locks(true) }
    ///     .workers(1)
    ///     .build()?;
    /// let m = Arc::new(Mutex::new(0));
    /// rt.block_on(move || {
    ///     let held = Arc::clone(&m);
    ///     let a = greenstack_runtime::spawn(move || {
    ///         let mut g = held.lock().unwrap();
    ///         // Parks while holding the lock.
    ///         greenstack_runtime::time::sleep(Duration::from_millis(20));
    ///         *g += 1;
    ///     });
    ///     greenstack_runtime::yield_now();
    ///     // Parks until `a` lets go, instead of blocking the one worker.
    ///     *m.lock().unwrap() += 1;
    ///     a.join().unwrap();
    ///     assert_eq!(*m.lock().unwrap(), 2);
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub unsafe fn hook_std_locks(mut self, on: bool) -> Self {
        self.std_locks = on;
        self
    }

    /// Starts the worker threads.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for 0 workers or a bad arena setting; the OS error if
    /// a thread cannot be started.
    pub fn build(self) -> io::Result<Runtime> {
        let n = match self.workers {
            Some(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a runtime needs at least 1 worker",
                ))
            }
            Some(n) if n > 1024 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{n} workers is over the limit of 1024"),
                ))
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if self.watchdog == Some(Duration::ZERO) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the watchdog threshold must be above zero",
            ));
        }
        let arena = self.arena.build()?;
        let deques: Vec<crossbeam_deque::Worker<NewTask>> = (0..n)
            .map(|_| crossbeam_deque::Worker::new_lifo())
            .collect();
        let mut drivers = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            let (d, h) = driver::Driver::pair()?;
            drivers.push(d);
            handles.push(h);
        }
        let workers = deques
            .iter()
            .zip(handles)
            .map(|(d, driver)| {
                crossbeam_utils::CachePadded::new(WorkerShared {
                    stealer: d.stealer(),
                    inbox: Injector::new(),
                    incoming: Injector::new(),
                    driver,
                    current: AtomicPtr::new(std::ptr::null_mut()),
                    watch_reading: AtomicBool::new(false),
                    switches: AtomicU64::new(0),
                    parks: AtomicU64::new(0),
                    wakeups: AtomicU64::new(0),
                    started: std::sync::atomic::AtomicUsize::new(0),
                    running: AtomicBool::new(false),
                    tid: std::sync::atomic::AtomicI32::new(0),
                    burst: AtomicBool::new(false),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            arena,
            workers,
            injector: Injector::new(),
            idle: idle::Idle::new(n),
            shutdown: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            cancel_all: AtomicBool::new(false),
            cancel_spared: std::sync::atomic::AtomicU64::new(0),
            counters: Counters::default(),
            blocking: blocking::Pool::new(),
            watchdog: self.watchdog,
            watchdog_parker: park::Parker::new(),
            trimmer_parker: Arc::new(park::Parker::new()),
            shutdown_timeout: self.shutdown_timeout,
            hooks: self.hooks && crate::hook::env_enabled(),
            std_locks: self.std_locks && self.hooks && crate::hook::env_enabled(),
            exited: Default::default(),
        });
        let parker = Arc::clone(&shared.trimmer_parker);
        shared.arena.set_trimmer(Box::new(move || parker.unpark()));
        let mut rt = Runtime {
            shared: Arc::clone(&shared),
            threads: Vec::with_capacity(n),
            watchdog: None,
            trimmer: None,
        };
        for (index, (deque, driver)) in deques.into_iter().zip(drivers).enumerate() {
            let shared = Arc::clone(&shared);
            let t = std::thread::Builder::new()
                .name(format!("greenstack-worker-{index}"))
                .spawn(move || {
                    worker::run(Arc::clone(&shared), index, deque, driver);
                    shared.worker_exited();
                })?;
            rt.threads.push(t);
        }
        if shared.watchdog.is_some() {
            rt.watchdog = Some(watchdog::start(Arc::clone(&shared))?);
        }
        rt.trimmer = Some(trimmer::start(Arc::clone(&shared))?);
        Ok(rt)
    }
}

/// A pool of worker threads running coroutines.
///
/// Dropping it stops the workers: every unfinished coroutine is cancelled,
/// unwound from the point where it waits so its destructors run (see
/// [`RuntimeBuilder::shutdown_timeout`] for destructors that wait), and
/// every stack goes back to the arena (but those of coroutines abandoned
/// at the timeout, which are leaked).
///
/// # Examples
///
/// ```
/// let rt = greenstack_runtime::Runtime::builder().workers(2).build()?;
/// let sum = rt.block_on(|| {
///     let hs: Vec<_> = (0..10u64).map(|i| greenstack_runtime::spawn(move || i * i)).collect();
///     hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
/// });
/// assert_eq!(sum, 285);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Runtime {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    watchdog: Option<std::thread::JoinHandle<()>>,
    trimmer: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.shared.workers.len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A builder with the defaults.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// A runtime with the defaults.
    pub fn new() -> io::Result<Runtime> {
        RuntimeBuilder::default().build()
    }

    /// Runs `f` as a coroutine on the calling thread and blocks it until `f`
    /// returns its value. The root coroutine never leaves this thread, so
    /// neither `f` nor its value need be `Send`; the coroutines it spawns
    /// run on the workers.
    ///
    /// # Panics
    ///
    /// If `f` panics, the panic resumes here. Panics if called from inside a
    /// coroutine or a future [`spawn_future`](crate::spawn_future) polls
    /// (that would block a worker: spawn and join instead), or if no stack
    /// can be had for `f`.
    pub fn block_on<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        // A future `spawn_future` polls runs on a worker's stack with no
        // coroutine current: a worker thread either way.
        assert!(
            !worker::in_coroutine() && !worker::on_worker_thread(),
            "Runtime::block_on called from inside a coroutine (or a future polled on a worker), which would block its worker; spawn and join instead"
        );
        let (init, stack) = new_coroutine(
            &self.shared,
            None,
            None,
            Some(std::thread::current()),
            false,
        )
        .unwrap_or_else(|e| panic!("greenstack: cannot start the block_on coroutine: {e}"));
        let Stack::Ready(slot) = stack else {
            unreachable!("block_on's stack is taken at once")
        };
        // The root's body runs in `run_root`; its cell holds no closure.
        let header = TaskRef::new_root(init);
        if let Err(e) = crate::stack::prepare_thread() {
            panic!("greenstack: cannot prepare this thread to run a coroutine: {e}");
        }
        match worker::run_root(&self.shared, header, slot, f) {
            Ok(v) => v,
            Err(p) => resume_unwind(p),
        }
    }

    /// Runs `f` as a coroutine on one of the workers and blocks the calling
    /// thread until it returns, resuming its panic here.
    ///
    /// Unlike [`block_on`](Self::block_on), `f` and its value cross to the
    /// worker and back, so both must be `Send`; in exchange `f` is an
    /// ordinary coroutine: the coroutines it spawns go to its worker's own
    /// queue, its joins park only it, and blocking calls in it park it (see
    /// [`RuntimeBuilder::hook_blocking_calls`]), as from any coroutine.
    /// Spawning a million coroutines and joining them costs here what it
    /// costs in any coroutine, where from `block_on`'s root every spawn
    /// goes through the runtime's shared queue and every join blocks the
    /// calling thread. `#[greenstack::main]` runs `main`'s body this way.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = greenstack_runtime::Runtime::new()?;
    /// let sum = rt.block_on_worker(|| {
    ///     let hs: Vec<_> = (0..100u64).map(|i| greenstack_runtime::spawn(move || i)).collect();
    ///     hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    /// });
    /// assert_eq!(sum, 4950);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Panics
    ///
    /// If `f` panics, the panic resumes here; with the `io::Error`'s
    /// message if no stack can be had. Called from inside a coroutine, it
    /// blocks that coroutine's worker until `f` returns (join instead).
    pub fn block_on_worker<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(p) => resume_unwind(p),
        }
    }

    /// Spawns a coroutine on this runtime, from any thread.
    ///
    /// # Panics
    ///
    /// With the `io::Error`'s message if no stack can be had.
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn_on(&self.shared, None, None, f)
            .unwrap_or_else(|e| panic!("greenstack: cannot spawn: {e}"))
    }

    /// Shuts the runtime down gracefully: from now on spawns fail (with
    /// "the runtime is shutting down"), the coroutines already spawned go
    /// on, and this waits at most `timeout` for all of them to finish.
    /// Then it cancels those left, as [`JoinHandle::cancel`] does (their
    /// waits end with errors their own code handles, see
    /// [`crate::cancel`]), and waits at most `timeout` again, but no more
    /// than a second, for them to return. Last it drops the runtime,
    /// which unwinds by force whatever still runs (see
    /// [`RuntimeBuilder::shutdown_timeout`]). Returns whether every
    /// coroutine finished within the first `timeout`, uncancelled.
    ///
    /// Called from one of its own coroutines, it waits for the others.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let rt = greenstack_runtime::Runtime::new()?;
    /// let h = rt.spawn(|| greenstack_runtime::time::sleep(Duration::from_millis(10)));
    /// assert!(rt.shutdown_timeout(Duration::from_secs(5)));
    /// assert!(h.join().is_ok(), "it finished, not cancelled");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown_timeout(self, timeout: Duration) -> bool {
        self.shared.closing.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now().checked_add(timeout);
        let own =
            u64::from(worker::current_shared().is_some_and(|s| Arc::ptr_eq(&s, &self.shared)));
        let finished = self.wait_live(own, deadline);
        if !finished {
            // Cancel what is left (each worker cancels its own started
            // coroutines, and the ones it starts from now on), sparing the
            // caller, and give them a grace period to return.
            let me = worker::current_header().map_or(0, |h| h.id.get());
            self.shared.cancel_spared.store(me, Ordering::SeqCst);
            self.shared.cancel_all.store(true, Ordering::SeqCst);
            for w in self.shared.workers.iter() {
                w.driver.unpark();
            }
            let grace = timeout.min(Duration::from_secs(1));
            self.wait_live(own, std::time::Instant::now().checked_add(grace));
        }
        drop(self);
        finished
    }

    /// Waits until at most `own` coroutines are alive, or `deadline`;
    /// true in the first case.
    fn wait_live(&self, own: u64, deadline: Option<std::time::Instant>) -> bool {
        loop {
            if self.shared.live() <= own {
                return true;
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return false;
            }
            // Parks a coroutine, sleeps a plain thread; not cut short if
            // the caller is cancelled (it would spin on its worker).
            crate::time::sleep_uncut(Duration::from_millis(1));
        }
    }

    /// A snapshot of the runtime's counters.
    pub fn stats(&self) -> RuntimeStats {
        let c = &self.shared.counters;
        let spawned = c.spawned.get();
        let finished = c.finished.get();
        RuntimeStats {
            spawned,
            finished,
            live: self.shared.live(),
            steals: c.steals.get(),
            parks: c.parks.get() + self.per_worker(|w| &w.parks).sum::<u64>(),
            wakeups: c.wakeups.get() + self.per_worker(|w| &w.wakeups).sum::<u64>(),
            worker_runs: self.per_worker(|w| &w.switches).collect(),
            worker_started: self
                .shared
                .workers
                .iter()
                .map(|w| w.started.load(Ordering::Relaxed) as u64)
                .collect(),
            arena: self.shared.arena.stats(),
            timers: self
                .shared
                .workers
                .iter()
                .map(|w| w.driver.timers() as u64)
                .sum(),
        }
    }

    /// One per-worker counter's values, in worker order.
    fn per_worker<'a>(
        &'a self,
        counter: impl Fn(&WorkerShared) -> &AtomicU64 + 'a,
    ) -> impl Iterator<Item = u64> + 'a {
        self.shared
            .workers
            .iter()
            .map(move |w| counter(w).load(Ordering::Relaxed))
    }

    /// The stack arena this runtime's coroutines run on.
    pub fn arena(&self) -> &StackArena {
        &self.shared.arena
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Nobody will poll this runtime's drivers: waiters of other
        // runtimes on sockets registered here must move them (see
        // "Runtimes" in `driver.rs`).
        self.wake_all_io();
        if worker::current_shared().is_some_and(|s| Arc::ptr_eq(&s, &self.shared)) {
            // Dropped by one of its own coroutines: this thread cannot join
            // itself. Stop the workers and let them finish shutting down on
            // their own once this coroutine returns or parks.
            tracing::warn!("a greenstack runtime was dropped from one of its own coroutines; its workers stop without being joined");
            for w in self.shared.workers.iter() {
                w.driver.unpark();
            }
            self.shared.watchdog_parker.unpark();
            self.shared.trimmer_parker.unpark();
            // No join, so no later point at which every worker is gone:
            // drain the shared queues now (the workers may take from them
            // meanwhile, and drain their own queues when they stop), and
            // let spawns that race with this drain their queue themselves
            // (`worker::submit`).
            self.discard_queued();
            // The blocking pool is not joined in either path: its idle
            // threads leave now, busy ones once their job returns.
            self.shared.blocking.shutdown();
            return;
        }
        for w in self.shared.workers.iter() {
            w.driver.unpark();
        }
        self.shared.watchdog_parker.unpark();
        self.shared.trimmer_parker.unpark();
        // A worker finishes its shutdown within `shutdown_timeout` once it
        // sees the flag, unless a coroutine it runs never suspends (a loop
        // without a wait, a blocking call that never returns). Such a
        // worker is abandoned, not waited for: dropping a runtime returns.
        let deadline =
            std::time::Instant::now() + self.shared.shutdown_timeout + WORKER_EXIT_MARGIN;
        if self.shared.wait_workers_exited(deadline) {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        } else {
            let stuck: Vec<usize> = self
                .shared
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| !w.current.load(Ordering::Acquire).is_null())
                .map(|(i, _)| i)
                .collect();
            tracing::error!(
                workers = ?stuck,
                "greenstack runtime dropped while a coroutine kept its worker busy past the shutdown timeout (it never waits or returns); that worker thread is abandoned, still running, and the runtime's memory is leaked so that it stays valid"
            );
            // The abandoned threads keep using `Shared` (and the arena
            // under their stacks): one reference never released.
            std::mem::forget(Arc::clone(&self.shared));
            self.threads.clear();
        }
        for t in [self.watchdog.take(), self.trimmer.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
        // Spawns that raced with shutdown: drop them here (their joiners see
        // `Cancelled`).
        self.discard_queued();
        self.shared.blocking.shutdown();
        // Again, now that none of this runtime's coroutines can clear a
        // socket's readiness before another runtime's waiter sees it.
        self.wake_all_io();
        // With the workers gone, the memory of the cells this thread and
        // they freed goes back to the system (see `give_back`).
        task::cell_alloc::give_back();
    }
}

impl Runtime {
    /// Wakes every waiter on a socket registered with this runtime's
    /// drivers.
    fn wake_all_io(&self) {
        for w in self.shared.workers.iter() {
            w.driver.wake_all_io();
        }
    }

    /// Drops every never-started task in the injector and the workers'
    /// incoming queues (their joiners see `Cancelled`).
    fn discard_queued(&self) {
        let queues = std::iter::once(&self.shared.injector)
            .chain(self.shared.workers.iter().map(|w| &w.incoming));
        for q in queues {
            worker::discard_all(&self.shared, q);
        }
    }
}

/// Counters of a [`Runtime`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeStats {
    /// Coroutines spawned.
    pub spawned: u64,
    /// Coroutines that ran to completion (returned or panicked).
    pub finished: u64,
    /// Coroutines spawned and not yet dropped.
    pub live: u64,
    /// Never-started coroutines taken from another worker or the injector.
    pub steals: u64,
    /// Times a coroutine parked (suspended until unparked).
    pub parks: u64,
    /// Unparks that made a parked coroutine runnable.
    pub wakeups: u64,
    /// Resumes per worker.
    pub worker_runs: Vec<u64>,
    /// Started, unfinished coroutines per worker (a started coroutine
    /// stays on its worker).
    pub worker_started: Vec<u64>,
    /// The stack arena's counters.
    pub arena: ArenaStats,
    /// Timers armed over all workers, at most one per coroutine: that of
    /// its last wait with a deadline (a `sleep`, a `recv_timeout`, a socket
    /// read with a timeout). A wait that ends before its deadline leaves
    /// its timer armed for the coroutine's next wait to move or disarm; a
    /// coroutine that finishes disarms it.
    pub timers: u64,
}

/// Spawns `f` on `shared`: the local deque on one of its workers, else the
/// injector.
pub(crate) fn spawn_on<F, T>(
    shared: &Arc<Shared>,
    name: Option<String>,
    stack_size: Option<usize>,
    f: F,
) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // The stack is bound when the coroutine first runs, from the running
    // worker's warm slots: queued coroutines hold none (a spawner far ahead
    // of the workers would otherwise hold a million stacks, each grown
    // afresh through page faults), and one that ends before the next
    // starts hands its grown stack on. The spawn reserves a slot, so past
    // the arena's capacity it still fails at once. Not with the `mprotect`
    // fallback, where stacks are few (the mapping limit): there a spawn
    // that returns `Ok` holds its stack, so it runs.
    let lazy = shared.arena.guard_mode() == GuardMode::Markers;
    let (init, slot) = new_coroutine(shared, name, stack_size, None, lazy)?;
    let id = init.id;
    let (task, handle) = TaskRef::new(init, f, slot);
    let coroutine = Coroutine { header: handle };
    tracing::trace!(coroutine.id = id.get(), "spawn");
    // SAFETY: `task` was just made with a closure and goes into this one
    // `NewTask` only.
    worker::submit(shared, unsafe { NewTask::new(task) });
    // SAFETY: `task`'s cell was made for `T`; this is its only handle.
    Ok(unsafe { JoinHandle::task(coroutine) })
}

/// What a coroutine's header starts with, and its stack: the part of
/// spawning shared by `spawn` and `block_on`.
fn new_coroutine(
    shared: &Arc<Shared>,
    name: Option<String>,
    stack_size: Option<usize>,
    root_thread: Option<std::thread::Thread>,
    lazy: bool,
) -> io::Result<(HeaderInit, Stack)> {
    if shared.shutdown.load(Ordering::Acquire) || shared.closing.load(Ordering::Acquire) {
        return Err(io::Error::other("the runtime is shutting down"));
    }
    let id;
    let stack = if lazy {
        let reservation = shared.arena.reserve(stack_size)?;
        id = next_id();
        Stack::AtStart(Some(reservation))
    } else {
        let mut slot = allocate_stack(shared, stack_size)?;
        id = next_id();
        slot.set_identity(id.get(), name.as_deref());
        Stack::Ready(slot)
    };
    let home = if root_thread.is_some() {
        worker::ROOT_HOME
    } else {
        u32::MAX
    };
    shared.counters.spawned.add(1);
    let handle = match name {
        None => worker::shared_handle(shared),
        Some(name) => Arc::new(TaskShared {
            shared: Arc::clone(shared),
            name: Some(name),
        }),
    };
    Ok((
        HeaderInit {
            id,
            home,
            shared: handle,
            root_thread,
        },
        stack,
    ))
}

/// A stack of the default size or of `stack_size` bytes.
pub(crate) fn allocate_stack(
    shared: &Shared,
    stack_size: Option<usize>,
) -> io::Result<crate::stack::Slot> {
    match stack_size {
        Some(s) => shared.arena.allocate_with(s),
        None => shared.arena.allocate(),
    }
}

/// The runtime of the calling coroutine or runtime thread, if any.
fn current_shared() -> Option<Arc<Shared>> {
    worker::current_shared().or_else(blocking::current_shared)
}

/// Spawns a coroutine on the current runtime, as [`std::thread::spawn`]
/// spawns a thread.
///
/// # Panics
///
/// Outside a greenstack runtime (a coroutine, or a thread of
/// [`spawn_blocking`]), and with the `io::Error`'s message if no stack can
/// be had (use [`Builder::spawn`] to get the error instead).
///
/// # Examples
///
/// ```
/// # let rt = greenstack_runtime::Runtime::new()?;
/// # rt.block_on(|| {
/// let h = greenstack_runtime::spawn(|| 6 * 7);
/// assert_eq!(h.join().unwrap(), 42);
/// # });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Builder::new()
        .spawn(f)
        .unwrap_or_else(|e| panic!("greenstack: cannot spawn: {e}"))
}

/// Configures a coroutine before spawning it, as [`std::thread::Builder`]
/// does a thread.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    name: Option<String>,
    stack_size: Option<usize>,
}

impl Builder {
    /// A builder with no name and the runtime's default stack size.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Names the coroutine (shown in overflow reports, tracing and the
    /// watchdog).
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// The coroutine's stack reserve in bytes, rounded up to a power of two.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// Spawns the coroutine on the current runtime.
    ///
    /// # Errors
    ///
    /// Outside a runtime; when no stack can be had (capacity exhausted, an
    /// invalid size, a failed system call); while the runtime shuts down.
    ///
    /// The stack itself is bound when the coroutine first runs, from the
    /// warm slots of the worker that runs it (so queued coroutines hold no
    /// stack, and one that ends hands its grown stack to the next): this
    /// call reserves one, and fails at once when every slot of the size is
    /// live or reserved. Rarely, the slot cannot be had at the start anyway
    /// (the free ones all cached by other threads, at most 32 each, or a
    /// mapping the system refused): then its [`JoinHandle::join`] returns
    /// `Err` with the error's message as the payload, as for a panic, and
    /// the error is logged. Not with the `mprotect` fallback
    /// ([`GuardMode::Mprotect`]), whose stacks the kernel's mapping limit
    /// makes few: there every coroutine takes its stack here, so one this
    /// returns `Ok` for runs,
    /// and the `vm.max_map_count` error comes back from this call.
    ///
    /// [`GuardMode::Mprotect`]: crate::stack::GuardMode::Mprotect
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // Borrowed, not cloned: an `Arc` clone per spawn bounces the
        // runtime's reference count between the workers' caches.
        worker::with_current_shared(move |s| match s {
            Some(s) => spawn_on(s, self.name, self.stack_size, f),
            None => match blocking::current_shared() {
                Some(s) => spawn_on(&s, self.name, self.stack_size, f),
                None => Err(io::Error::other(
                    "greenstack::spawn called outside a greenstack runtime (use Runtime::spawn)",
                )),
            },
        })
    }

    /// Spawns the coroutine on `rt`, from any thread.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn), except that it works outside a runtime.
    pub fn spawn_on<F, T>(self, rt: &Runtime, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn_on(&rt.shared, self.name, self.stack_size, f)
    }
}

/// Lets the other coroutines on this worker run, then continues. On a plain
/// thread, yields the thread.
pub fn yield_now() {
    if !worker::yield_current() {
        std::thread::yield_now();
    }
}

/// Parks the calling coroutine until [`Coroutine::unpark`] is called (or
/// returns at once if a token is pending), as [`std::thread::park`] does for
/// threads. May also return spuriously. On a plain thread, parks the thread.
pub fn park() {
    park_current();
}

/// Inlined into its callers (a join, a future's wait) down to the switch:
/// see `time::park_until`.
#[inline(always)]
pub(crate) fn park_current() {
    if !worker::park_current_coroutine(None) {
        std::thread::park();
    }
}

/// Parks the calling coroutine until an unpark or `deadline`. False (and
/// nothing done) on a plain thread.
#[inline(always)]
pub(crate) fn park_current_until(deadline: Option<std::time::Instant>) -> bool {
    worker::park_current_coroutine(deadline)
}

/// The calling coroutine.
///
/// # Panics
///
/// When called outside a coroutine; see [`try_current`].
pub fn current() -> Coroutine {
    try_current().expect("greenstack::current() called outside a coroutine")
}

/// The calling coroutine, or `None` on a plain thread.
pub fn try_current() -> Option<Coroutine> {
    worker::current_header().map(|header| Coroutine { header })
}

/// Runs a future to completion from coroutine code (or a plain thread),
/// parking the coroutine (or blocking the thread) while it is pending. Its
/// waker unparks the caller, so coroutine code can call async libraries.
///
/// With the `tokio` feature each poll runs inside a tokio runtime's
/// context, so futures that need tokio's reactor or timer (tokio's own,
/// reqwest's, …) work: see [`crate::future`].
///
/// # Panics
///
/// Inside a future that [`spawn_future`](crate::spawn_future) polls on a
/// worker's stack, where it could only block the worker (and for good if
/// the future it waits for needs that worker): `.await` it there instead.
///
/// # Examples
///
/// ```
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let h = greenstack_runtime::spawn(|| 2 + 2);
///     // A JoinHandle is a future too.
///     assert_eq!(greenstack_runtime::block_on_future(h).unwrap(), 4);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn block_on_future<F: std::future::Future>(fut: F) -> F::Output {
    // A worker thread with no coroutine current is a future's poll on the
    // worker's stack (`spawn_future`): nothing would poll the worker's
    // sockets or timers while the thread waits here.
    assert!(
        worker::in_coroutine() || !worker::on_worker_thread(),
        "greenstack::block_on_future called inside a future polled on a worker (spawn_future), which would block its worker; .await the future instead"
    );
    let mut fut = std::pin::pin!(fut);
    let waker = current_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = crate::future::in_context(|| fut.as_mut().poll(&mut cx))
        {
            return v;
        }
        park_current();
    }
}

/// The calling coroutine's header, uncounted: valid while the coroutine
/// lives (see `sync::wait`'s node protocol for how that is kept).
pub(crate) fn current_header_ptr() -> Option<std::ptr::NonNull<Header>> {
    worker::current_running().map(|r| std::ptr::NonNull::from(&*r.header))
}

/// A waker for the caller: its coroutine's, or its thread's.
pub(crate) fn current_waker() -> Waker {
    match worker::current_header() {
        Some(h) => h.into_waker(),
        None => Waker::from(Arc::new(ThreadWaker(std::thread::current()))),
    }
}

/// Calls `f` with the caller's waker ([`current_waker`]), borrowed: a
/// coroutine's holds no count of its own, which saves a select taking and
/// dropping one (two atomic operations). What `f` keeps is a clone, which
/// holds its own.
pub(crate) fn with_current_waker<R>(f: impl FnOnce(&Waker) -> R) -> R {
    match worker::current_running() {
        Some(r) => {
            // SAFETY: the coroutine running this call outlives it (its
            // `Running`, and the header it holds, are freed only after its
            // code has returned), and `f` gets only a reference.
            let w = unsafe { r.header.borrowed_waker() };
            f(&w)
        }
        None => f(&current_waker()),
    }
}

/// Wakes a plain thread blocked in `park`.
struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
