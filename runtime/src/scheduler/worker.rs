//! A worker thread: its run loop, its started coroutines, and the
//! thread-locals through which coroutine code reaches it.
//!
//! # The run loop
//!
//! 1. Pick work: a ready (started, runnable) coroutine or a new task from
//!    the local deque, alternating between the two so neither starves the
//!    other; every 32 ticks, the inbox, the incoming queue (tasks a busy
//!    spawner elsewhere placed here), the injector and a rebalancing steal
//!    first, so remote wake-ups and outside spawns wait at most that many
//!    runs.
//! 2. Nothing local: take a batch from the incoming queue or the injector,
//!    then steal from the other workers' deques (never-started tasks only).
//! 3. Still nothing: announce idle, re-check everything, sleep.
//! 4. A new task is started here: its corosensei coroutine is created on
//!    this thread, over the slot the task brought, and it never leaves.
//! 5. After each resume: requeue on yield, `commit_park` on park (requeue if
//!    a token raced in), release everything on return. Then the stack
//!    checker compares the committed stack with the reserve.
//! 6. On shutdown: every queued task is dropped, and every started
//!    coroutine cancelled (next section).
//!
//! # Shutdown
//!
//! A started coroutine is always suspended in [`suspend_running`], the one
//! place it switches out. Cancelling it is resuming it there with
//! `Header::cancelling` set, so it throws a [`CancelUnwind`] instead of
//! returning to its wait: the unwind runs its destructors on its own stack,
//! with every wait on the way taking its waiter out of its queue, and the
//! body's `catch_unwind` turns the payload into `Cancelled` for the
//! joiner. The worker does not drop suspended corosensei coroutines
//! (corosensei's forced unwind would re-throw at every switch, so a
//! destructor that waits could only spin or abort).
//!
//! 1. Drop the never-started tasks (deque, incoming queue, injector), so a
//!    destructor joining one hears `Cancelled` at once.
//! 2. Set `cancelling` on every started coroutine and make each runnable
//!    exactly once: a parked one by `cancel_park` (if an unpark got there
//!    first, it is already queued), a ready one is queued already.
//! 3. Run the ready queue and the inbox as usual. A destructor that waits
//!    while its cancellation unwinds (`cancel_in_flight`) really parks; the
//!    coroutine it waits for is being cancelled too, on this worker or
//!    another, and its wake-up arrives as any other. std's panic count of
//!    the thread stays raised while that coroutine is away (std counts per
//!    OS thread): the others are cancelled before any of their code runs,
//!    but once one has caught its cancellation, its coroutine-locals'
//!    destructors and its result's drop see `std::thread::panicking()`
//!    true too, and a std `MutexGuard` dropped there poisons its mutex.
//!    That is the price of letting destructors wait at shutdown; outside
//!    shutdown a coroutine may not switch while unwinding at all.
//! 4. When none is left, or `shutdown_timeout` passed, the remaining ones
//!    (still waiting, or having caught their cancellation
//!    [`CANCEL_THROWS`] times) are abandoned: reported, their joiners told
//!    `Cancelled`, their `Running` leaked with its stack. The leaked
//!    header holds the runtime's `Shared`, so the arena is never unmapped
//!    under a waiter node on a leaked stack that a queue still links.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corosensei::{CoroutineResult, Yielder};
use crossbeam_deque::{Injector, Steal, Worker};

use super::driver::{Driver, TimerKey};
use super::local::Map as LocalMap;
use super::task::{CancelUnwind, Header, NewTask, SharedHandle, Stack, TaskRef};
use super::Shared;
use crate::stack::{self, NoFaultSection, Slot, StackGauge};

/// What a coroutine asks of its worker when it suspends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// Run me again after the others that are ready.
    Yield,
    /// Run me again after an unpark, or at the deadline if there is one.
    Park(Option<Instant>),
    /// Never run me again: I keep catching my cancellation at shutdown, or
    /// making blocking calls that fail because of it (see "Shutdown" in
    /// the module docs); the reason, for the report.
    Abandon(&'static str),
}

/// Cancellations a coroutine may catch at shutdown, going back to wait each
/// time, before its worker abandons it (see "Shutdown" in the module docs).
/// A few, so code that catches panics around one operation and then ends
/// still gets to end.
const CANCEL_THROWS: u8 = 3;

/// Yields a coroutine may skip while unwinding from a panic before its
/// worker takes it for a destructor spinning on `yield_now` (which, with
/// the yield skipped, would spin for ever) and aborts. Far more than any
/// destructor yields as a courtesy; reached in well under a second by a
/// spin.
const UNWINDING_YIELDS: u32 = 1 << 16;

/// Children a coroutine spawns before its spawns may be placed elsewhere
/// (see `Local::placement`).
const SPAWNER_CHILDREN: u32 = 16;

/// How much more load (started coroutines and queued tasks) than another
/// worker a worker may hold before a busy one takes some of its queued
/// tasks (see `Local::rebalance`).
const REBALANCE_MARGIN: usize = 8;

/// Queued tasks a worker's deque must hold before a busy worker takes some
/// to even out the load (see `Local::rebalance`): a burst, not fan-out.
const REBALANCE_QUEUE: usize = 64;

/// Most tasks one steal takes (crossbeam's own batch limit).
const STEAL_MAX: usize = 32;

/// Most spare `Running` allocations a worker keeps (see `Local::spare`):
/// about 11 KiB.
const SPARE_RUNNING: usize = 64;

/// Most tasks a worker hands from a burst in its deque to another worker
/// at one look (see `Local::hand_out_burst`).
const HAND_OUT_MAX: usize = 64;

/// Longest sleep of an idle worker that left queued work (a burst in a
/// deque, tasks in an incoming queue) to another worker, and how long that
/// worker must look stuck before the idle one takes the work (see
/// `Local::stuck`).
const BURST_RECHECK: Duration = Duration::from_millis(4);

/// Spin rounds (about 0.2 µs each) during which a searching worker leaves
/// another worker's only queued task alone (see `steal_others`).
const SINGLE_GRACE: u32 = 8;

/// Most rounds of 32 spin hints an idle worker checks its sources for before
/// it sleeps: about 10–20 µs on the machine the benches run on. How many it
/// spins adapts between [`MIN_SPIN_ROUNDS`] and this (see `Local::sleep`).
const SPIN_ROUNDS: u32 = 64;

/// Fewest spin rounds of an idle worker (see `Local::sleep`): never fewer
/// than the grace during which it leaves another worker's only task alone.
const MIN_SPIN_ROUNDS: u32 = SINGLE_GRACE;

/// Ready coroutines from which a worker prefetches the next one's state
/// (see `Local::prefetch_next`): below that, as in a ping-pong, it is
/// still in cache.
const PREFETCH_READY: usize = 8;

/// `Header::home` of a `block_on` root coroutine: it lives on the thread
/// that called `block_on`, not on a worker.
pub(crate) const ROOT_HOME: u32 = u32::MAX - 1;

/// A corosensei coroutine as we run it: it returns whether its task cell
/// holds an outcome to announce (never for a `block_on` root), which the
/// worker announces once the stack is free.
type Co = corosensei::Coroutine<(), Request, bool, Slot>;

/// A started coroutine, owned by its home worker's slab.
pub(crate) struct Running {
    /// The corosensei coroutine. Only the worker loop touches it, and never
    /// while the coroutine code (which reads the other fields through
    /// `CURRENT`) holds a reference into it.
    co: UnsafeCell<Option<Co>>,
    pub(crate) header: TaskRef,
    /// The coroutine's yielder, on its own stack; set when its body starts.
    yielder: Cell<*const Yielder<(), Request>>,
    /// `coroutine_local!` values.
    pub(crate) locals: RefCell<LocalMap>,
    /// Entered while the coroutine runs; boxed, and only if a subscriber
    /// wants it (a disabled `Span` would still take 40 bytes per coroutine).
    span: Option<Box<tracing::Span>>,
    /// Reads the committed stack, for the stack checker.
    gauge: StackGauge,
    /// Highest stack-checker threshold already reported (0, 1 or 2).
    reported: Cell<u8>,
    /// Committed bytes at the last check: the check is skipped while the
    /// stack has not grown (which is nearly every switch).
    checked: Cell<usize>,
    /// Stack pointer just before its last suspend (0 before): the switch
    /// saves registers just below it, and the resume returns into frames
    /// above it (see `Local::prefetch_next`).
    parked_sp: Cell<usize>,
    /// Coroutines this one has spawned (see `Local::placement`).
    children: Cell<u32>,
    /// Times this coroutine was resumed, and that count at its last spawn
    /// (see `Local::placement`).
    resumes: Cell<u32>,
    resumes_at_spawn: Cell<u32>,
    /// The timer of its last park with a deadline, if armed: moved to the
    /// next park's deadline, or disarmed by the next park without one or
    /// by `finish` (see `Driver::arm`). A `Cell` (taken and set whole),
    /// not a `RefCell`: 8 bytes less per coroutine, which puts `Running`
    /// in a smaller malloc size class.
    timer: Cell<Option<TimerKey>>,
    /// Cancellations thrown into it at shutdown (see [`CANCEL_THROWS`]).
    cancel_throws: Cell<u8>,
    /// Yields skipped while it unwound from a panic (see
    /// [`UNWINDING_YIELDS`]).
    unwinding_yields: Cell<u32>,
    /// Set while a blocking-call hook parks it (`crate::hook`): a
    /// cancellation must not unwind through the hook's C frame, so the
    /// park returns instead, and the hook finishes its call without
    /// parking again.
    no_throw: Cell<bool>,
    /// Its `time::timeout` deadlines (see `crate::cancel`).
    pub(crate) limits: crate::cancel::Limits,
}

impl Running {
    /// A `Running` for `co`, written into `place` (a fresh allocation, or
    /// one a finished coroutine left, see `Local::spare`).
    ///
    /// Nothing in here runs user code or can panic: were it to unwind, its
    /// parameters would drop in reverse order, `header` (perhaps the task's
    /// last reference) before `co`, whose unstarted closure's `RunOnce`
    /// reads the task. The span, which calls the tracing subscriber, is
    /// made before (see [`coroutine_span`]).
    fn new(
        co: Co,
        header: TaskRef,
        span: Option<Box<tracing::Span>>,
        gauge: StackGauge,
        place: Box<MaybeUninit<Running>>,
    ) -> Box<Running> {
        // A pooled slot may come back grown by an earlier tenant: only
        // crossings this coroutine makes are its own.
        let committed = gauge.committed();
        let inherited = stack_level(committed, gauge.reserve());
        let running = Running {
            co: UnsafeCell::new(Some(co)),
            header,
            yielder: Cell::new(ptr::null()),
            locals: RefCell::new(LocalMap::default()),
            span,
            gauge,
            reported: Cell::new(inherited),
            checked: Cell::new(committed),
            parked_sp: Cell::new(0),
            children: Cell::new(0),
            resumes: Cell::new(0),
            resumes_at_spawn: Cell::new(0),
            timer: Cell::new(None),
            cancel_throws: Cell::new(0),
            unwinding_yields: Cell::new(0),
            no_throw: Cell::new(false),
            limits: crate::cancel::Limits::new(),
        };
        let p = Box::into_raw(place).cast::<Running>();
        // SAFETY: `p` is a `Box` allocation with `Running`'s layout
        // (`MaybeUninit<Running>` has it) holding no value; writing one in
        // makes it a valid `Box<Running>`.
        unsafe {
            p.write(running);
            Box::from_raw(p)
        }
    }

    /// Moves a finished coroutine's `Running` out of its box and keeps the
    /// box's memory for the next one (`Local::spare`).
    fn unbox(b: Box<Running>) -> (Running, Box<MaybeUninit<Running>>) {
        let p = Box::into_raw(b);
        // SAFETY: `p` is a live `Running` from a `Box`; `read` moves it out
        // once, and the allocation is then taken back as uninitialized
        // memory of the same layout (`MaybeUninit<Running>` has `Running`'s),
        // so the value is neither dropped twice nor the memory leaked.
        unsafe { (p.read(), Box::from_raw(p.cast::<MaybeUninit<Running>>())) }
    }

    /// Resumes the coroutine on this thread until it suspends or returns.
    /// `p` must point to `self`, boxed and kept alive by the caller.
    fn resume(&self, p: *const Running) -> CoroutineResult<Request, bool> {
        self.resumes.set(self.resumes.get().wrapping_add(1));
        set_current(p);
        StackGauge::set_running(Some(&self.gauge));
        let result = {
            // The subscriber's `enter` and `exit` are user code: contained.
            let entered = self
                .span
                .as_deref()
                .and_then(|s| contain("entering a coroutine's span", || s.enter()));
            // SAFETY: only the thread driving this coroutine touches `co`,
            // and never re-entrantly: coroutine code cannot reach here for
            // its own `Running`.
            let co = unsafe { (*self.co.get()).as_mut() }
                .expect("a running coroutine has its corosensei state");
            // Our bodies catch every panic; one escaping `resume` means the
            // runtime's own code failed mid-switch, and unwinding past a
            // half-switched coroutine is not recoverable.
            // Blocking libc calls park this coroutine while it runs (not
            // a `block_on` root, whose thread is its own).
            let hooked =
                self.header.shared.hooks && self.header.home.load(Ordering::Relaxed) != ROOT_HOME;
            crate::hook::set_active(hooked);
            let result = catch_unwind(AssertUnwindSafe(|| co.resume(())));
            crate::hook::set_active(false);
            let result = result.unwrap_or_else(|_| abort("a coroutine's resume panicked"));
            if let Some(e) = entered {
                contain("leaving a coroutine's span", move || drop(e));
            }
            result
        };
        StackGauge::set_running(None);
        set_current(ptr::null());
        // Its reports go through the tracing subscriber: contained.
        contain("the stack checker's report", || check_stack(self));
        result
    }
}

/// One worker's own state, reachable from its thread only.
struct Local {
    index: usize,
    shared: Arc<Shared>,
    /// `&shared.workers[index]`, looked up once (the run loop reads it on
    /// every tick).
    ws: *const super::WorkerShared,
    /// The handle headers spawned here hold (see `Header::shared`).
    handle: SharedHandle,
    deque: Worker<NewTask>,
    ready: RefCell<VecDeque<usize>>,
    slab: RefCell<Vec<Option<Box<Running>>>>,
    /// Allocations of finished coroutines' `Running`s, reused by the next
    /// ones started here (at most [`SPARE_RUNNING`]). At 184 bytes a
    /// `Running` is past glibc's fast bins: once a burst of finishes fills
    /// the thread cache's bin (7 entries), each further free takes the
    /// slow path of `free` (callgrind of `fanout_fib workers=1`:
    /// `_int_free` alone was 128 instructions per task).
    /// (Boxes in a `Vec` on purpose: the allocations are what is kept.)
    #[allow(clippy::vec_box)]
    spare: RefCell<Vec<Box<MaybeUninit<Running>>>>,
    free_keys: RefCell<Vec<usize>>,
    tick: Cell<u32>,
    /// Whether `steal_others` may take another worker's only task.
    steal_singles: Cell<bool>,
    /// Woken to look for work and not found any yet (see `idle.rs`).
    searching: Cell<bool>,
    /// How many rounds the next idle spin lasts (see `sleep`).
    spin_rounds: Cell<u32>,
    /// Per worker, what this one last saw of it while leaving it queued
    /// work (switch count, deque and incoming lengths) and since when that
    /// has not changed (see `stuck`).
    seen: RefCell<Vec<Option<(WorkerState, Instant)>>>,
    /// Queued work was left to another worker at the last look: sleep at
    /// most [`BURST_RECHECK`] (see `stuck`).
    left_work: Cell<bool>,
    /// Timers and I/O readiness; where the worker sleeps.
    driver: Driver,
    /// Whether this worker has cancelled its coroutines for a graceful
    /// shutdown past its deadline (`Shared::cancel_all`).
    cancelled_all: Cell<bool>,
}

thread_local! {
    /// The worker this thread is, if it is one.
    static WORKER: Cell<*const Local> = const { Cell::new(ptr::null()) };
    /// The coroutine running on this thread right now, if any.
    static CURRENT: Cell<*const Running> = const { Cell::new(ptr::null()) };
    /// The coroutine whose future [`on_worker_stack`] polls on the
    /// worker's stack, while `CURRENT` is null (see [`code_running`]).
    static POLLED: Cell<*const Running> = const { Cell::new(ptr::null()) };
}

// Accessors are `#[inline(never)]`: code around a stack switch must not
// reuse a thread-local address computed before the switch (STYLE.md §2).
#[inline(never)]
fn worker_ptr() -> *const Local {
    WORKER.with(Cell::get)
}

/// A timer of [`add_waker_timer`]: which worker's, and its key there.
#[cfg_attr(not(feature = "hyper"), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct WakerTimer {
    key: super::driver::TimerKey,
    /// The arming worker's `Local`, as an address (only compared).
    worker: usize,
    /// The timer's owner tag in that worker's timers.
    owner: usize,
}

/// Arms a timer on the calling worker that wakes `waker` at `deadline`;
/// `None` off a worker thread. Disarm it with [`cancel_waker_timer`] when
/// its future goes.
#[cfg_attr(not(feature = "hyper"), allow(dead_code))]
pub(crate) fn add_waker_timer(deadline: Instant, waker: std::task::Waker) -> Option<WakerTimer> {
    /// Owner tags of waker timers: odd (a task's address, the other
    /// owners, is even) and never reused in the process, so a stale key
    /// cannot disarm another timer, even one of a later worker whose
    /// `Local` sits at the same address (a thread stack glibc reused).
    static NEXT_OWNER: AtomicUsize = AtomicUsize::new(1);
    let ptr = worker_ptr();
    // SAFETY: `WORKER` points to the `Local` on the worker's own stack
    // frame in `run`, set for exactly the time that frame lives; the
    // driver's timers are borrowed only for the insertion, and the worker
    // loop does not hold them while a coroutine runs.
    let w = unsafe { ptr.as_ref() }?;
    let owner = NEXT_OWNER.fetch_add(2, Ordering::Relaxed);
    let key = w.driver.add_waker_timer(deadline, owner, waker);
    Some(WakerTimer {
        key,
        worker: ptr as usize,
        owner,
    })
}

/// Disarms `t` if the caller is on the worker that armed it (and it has
/// not fired); elsewhere it is left to fire as a spurious wake-up.
#[cfg_attr(not(feature = "hyper"), allow(dead_code))]
pub(crate) fn cancel_waker_timer(t: WakerTimer) {
    let ptr = worker_ptr();
    if ptr.is_null() || ptr as usize != t.worker {
        return;
    }
    // SAFETY: as in `add_waker_timer`: the caller's own worker's `Local`,
    // live while `WORKER` points to it (cleared before it is dropped);
    // `cancel_waker_timer` tolerates a borrow of the timers that is
    // already held. A worker that is not the arming one but sits at the
    // same address has no timer with `t`'s owner tag (unique in the
    // process), so the key matches none of its timers.
    let w = unsafe { &*ptr };
    w.driver.cancel_waker_timer(t.key, t.owner);
}

/// Whether the calling thread is a worker (its coroutines included).
pub(crate) fn on_worker_thread() -> bool {
    !worker_ptr().is_null()
}

#[inline(never)]
fn current_ptr() -> *const Running {
    CURRENT.with(Cell::get)
}

#[inline(never)]
fn set_current(p: *const Running) {
    CURRENT.with(|c| c.set(p));
}

#[inline(never)]
fn polled_ptr() -> *const Running {
    POLLED.with(Cell::get)
}

/// The coroutine whose code the caller is: the running one, or the one
/// whose future [`on_worker_stack`] polls. For what a coroutine *is* (its
/// coroutine-locals, whether it was cancelled, its spawns), never for a
/// wait: nothing can switch the coroutine out from the worker's stack, so
/// waits see [`current_running`], which is `None` there.
pub(crate) fn code_running<'a>() -> Option<&'a Running> {
    let p = current_ptr();
    let p = if p.is_null() { polled_ptr() } else { p };
    // SAFETY: as in `current_running`; `POLLED` is non-null only while
    // `on_worker_stack` runs its closure for that coroutine, which is
    // suspended in the middle of `on_parent_stack` meanwhile (its `Running`
    // stays in the slab).
    unsafe { p.as_ref() }
}

/// The running coroutine, if the caller is one.
pub(crate) fn current_running<'a>() -> Option<&'a Running> {
    let p = current_ptr();
    // SAFETY: `CURRENT` is non-null only while the worker resumes (or drops)
    // that coroutine, whose boxed `Running` stays in the slab meanwhile; the
    // reference does not outlive the coroutine's run, since the coroutine
    // code holding it runs only then.
    unsafe { p.as_ref() }
}

/// Runs `f` (a hook's park) with the running coroutine's cancellation
/// held back: a park inside it returns when the coroutine is resumed to be
/// cancelled, instead of unwinding (see `Running::no_throw`).
pub(crate) fn without_cancel_unwind<R>(f: impl FnOnce() -> R) -> R {
    let Some(r) = current_running() else {
        return f();
    };
    let was = r.no_throw.replace(true);
    let out = f();
    // `current_running` again: the same coroutine, on the same thread.
    if let Some(r) = current_running() {
        r.no_throw.set(was);
    }
    out
}

/// A blocking-call hook of the running coroutine, being cancelled, is
/// about to fail its call with `ECANCELED` (see `crate::hook`). Code that
/// retries whatever the error (an accept loop that `continue`s) would
/// spin on the worker for ever: after [`CANCEL_THROWS`] such failures the
/// coroutine is abandoned, as one that keeps catching its cancellation.
/// Not while it unwinds (a destructor's call just fails).
pub(crate) fn hook_call_cancelled() {
    let Some(r) = current_running() else {
        return;
    };
    if std::thread::panicking() {
        return;
    }
    let n = r.cancel_throws.get().saturating_add(1);
    r.cancel_throws.set(n);
    if n > CANCEL_THROWS {
        switch_out(
            r,
            Request::Abandon(
                "its blocking calls kept failing with ECANCELED (the runtime shuts down) \
                 and it kept making them",
            ),
        );
        abort("an abandoned coroutine was resumed");
    }
}

/// Whether the running coroutine is being cancelled (the runtime shuts
/// down).
pub(crate) fn current_cancelling() -> bool {
    current_running().is_some_and(|r| r.header.cancelling.load(Ordering::Relaxed))
}

/// Runs `f` on the stack of the worker that resumed the calling coroutine
/// (corosensei's `on_parent_stack`, what Go calls `systemstack`), with no
/// coroutine current meanwhile; on a plain thread it just calls `f`.
///
/// What it is for: polling a future. Futures polled on their coroutines'
/// own stacks each write their frames into memory of their own, which no
/// other connection has warmed (callgrind's cache simulation of hyper at
/// 100 connections: 92 first-level write misses per request, against
/// tokio's 18, whose tasks are all polled on one stack). Polled here, every
/// future of the worker writes the same, warm, stack.
///
/// The price: nothing inside `f` can park the coroutine, since its frames
/// are not on the coroutine's stack. With no coroutine current, a
/// greenstack wait inside `f` blocks the worker thread, and a blocking
/// libc call passes straight through, as in any async runtime. What the
/// coroutine *is* stays visible through [`code_running`]: its
/// coroutine-locals, its cancellation, its spawns' placement.
pub(crate) fn on_worker_stack<R>(f: impl FnOnce() -> R) -> R {
    /// Carries `f` across corosensei's `Send` bound (see the SAFETY below).
    struct SameThread<F>(F);
    // SAFETY: the bound keeps references to the yielder off another
    // thread's stack; the parent stack here is this same thread's (a
    // started coroutine never leaves its worker, and a `block_on` root
    // runs on the thread that resumes it), and `f` sees no yielder: no
    // coroutine is current while it runs.
    unsafe impl<F> Send for SameThread<F> {}
    impl<F> SameThread<F> {
        fn into_inner(self) -> F {
            self.0
        }
    }
    /// Makes the coroutine current again, and its hooks as they were,
    /// also when `f` unwinds.
    struct Restore(*const Running, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            POLLED.with(|c| c.set(ptr::null()));
            set_current(self.0);
            crate::hook::set_active(self.1);
        }
    }
    let p = current_ptr();
    // SAFETY: as in `current_running`.
    let Some(r) = (unsafe { p.as_ref() }) else {
        return f();
    };
    let y = r.yielder.get();
    if y.is_null() {
        // Not started through the worker's body (cannot happen for a
        // coroutine that runs code): just call it.
        return f();
    }
    let f = SameThread(f);
    let p = SameThread(p);
    // The switch must not take a growth fault (as `switch_out`).
    stack::prefault_for_runtime();
    // SAFETY: the yielder lives in the coroutine's body frame for as long as
    // the coroutine runs, and we are that coroutine; the closure returns
    // (or unwinds, which corosensei carries back here) before it goes on.
    unsafe {
        (*y).on_parent_stack(move || {
            let (f, p) = (f.into_inner(), p.into_inner());
            // Nothing in `f` may park: no coroutine is current, and the
            // blocking-call hooks pass straight through.
            let _restore = Restore(p, crate::hook::active());
            crate::hook::set_active(false);
            set_current(ptr::null());
            POLLED.with(|c| c.set(p));
            f()
        })
    }
}

/// Whether the caller runs inside a coroutine.
pub(crate) fn in_coroutine() -> bool {
    !current_ptr().is_null()
}

/// The calling coroutine's header.
pub(crate) fn current_header() -> Option<TaskRef> {
    current_running().map(|r| r.header.clone())
}

/// The runtime and index of the worker thread calling, if it is one.
pub(crate) fn current_worker() -> Option<(Arc<Shared>, usize)> {
    // SAFETY: as in `current_shared`.
    unsafe { worker_ptr().as_ref() }.map(|w| (Arc::clone(&w.shared), w.index))
}

/// The runtime and index of the worker thread calling, if it is one,
/// borrowed: valid while the caller runs on that worker (the worker's
/// `Local` outlives everything it runs).
pub(crate) fn current_worker_ref<'a>() -> Option<(&'a Arc<Shared>, usize)> {
    // SAFETY: as in `current_shared`.
    unsafe { worker_ptr().as_ref() }.map(|w| (&w.shared, w.index))
}

/// Calls `f` with the runtime of the calling worker thread or coroutine
/// (a `block_on` root included), borrowed.
pub(crate) fn with_current_shared<R>(f: impl FnOnce(Option<&Arc<Shared>>) -> R) -> R {
    // SAFETY: as in `current_shared`; the borrow ends with `f`.
    match unsafe { worker_ptr().as_ref() } {
        Some(w) => f(Some(&w.shared)),
        None => f(current_running().map(|r| &*r.header.shared)),
    }
}

/// The runtime of the calling worker thread or coroutine (a `block_on`
/// root included), if any.
pub(crate) fn current_shared() -> Option<Arc<Shared>> {
    // SAFETY: `WORKER` points to the `Local` on the worker's own stack frame
    // in `run`, set for exactly the time that frame lives.
    match unsafe { worker_ptr().as_ref() } {
        Some(w) => Some(Arc::clone(&w.shared)),
        None => current_running().map(|r| Arc::clone(&*r.header.shared)),
    }
}

/// Runs `root` as a coroutine on the calling thread, `block_on`'s root:
/// it never leaves this thread, so neither it nor its value need be `Send`.
/// Coroutines it spawns go to the workers through the injector. Parks block
/// this thread until the root is unparked (or its deadline passes).
pub(crate) fn run_root<T: 'static>(
    shared: &Arc<Shared>,
    header: TaskRef,
    slot: Slot,
    root: impl FnOnce() -> T + 'static,
) -> std::thread::Result<T> {
    // With the `tokio` feature, the root's thread is inside the tokio
    // context while the root runs, as a worker is (`crate::future`).
    let _tokio = crate::future::enter_for_thread();
    let out: std::rc::Rc<Cell<Option<std::thread::Result<T>>>> = std::rc::Rc::new(Cell::new(None));
    let out2 = std::rc::Rc::clone(&out);
    // SAFETY: the gauge goes into the same `Running` as the coroutine that
    // owns the slot, and is read only while that coroutine exists.
    let gauge = unsafe { slot.gauge() };
    let co = Co::with_stack(slot, move |y: &Yielder<(), Request>, ()| {
        if let Some(r) = current_running() {
            r.yielder.set(y);
        }
        out2.set(Some(catch_unwind(AssertUnwindSafe(root))));
        false
    });
    let span = coroutine_span(&header);
    let running = Running::new(co, header, span, gauge, Box::new(MaybeUninit::uninit()));
    let p: *const Running = &*running;
    loop {
        match running.resume(p) {
            CoroutineResult::Return(_) => break,
            CoroutineResult::Yield(Request::Yield) => std::thread::yield_now(),
            // A root is never cancelled.
            CoroutineResult::Yield(Request::Abandon(_)) => {
                abort("a block_on root asked to be abandoned")
            }
            CoroutineResult::Yield(Request::Park(deadline)) => {
                if !running.header.park.commit_park() {
                    continue;
                }
                shared.counters.parks.add(1);
                while running.header.park.is_parked() {
                    match deadline {
                        None => std::thread::park(),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                // Wake ourselves; if an unpark raced in, it
                                // already did.
                                running.header.park.cancel_park();
                                break;
                            }
                            std::thread::park_timeout(d - now);
                        }
                    }
                }
            }
        }
    }
    running.header.park.finish();
    drop(running);
    shared.counters.finished.add(1);
    shared.live.add(-1);
    out.take().expect("the root ran to completion")
}

/// Suspends the calling coroutine with `req`. False on a plain thread.
fn suspend(req: Request) -> bool {
    match current_running() {
        Some(r) => suspend_running(r, req),
        None => false,
    }
}

/// Suspends `r`, the calling coroutine's own `Running`, with `req`.
///
/// Two things take the cold path: a coroutine being cancelled at shutdown
/// (see "Shutdown" in the module docs), and one unwinding from a panic.
/// std counts panics per OS thread, so a coroutine that switched out while
/// unwinding would leave `std::thread::panicking()` true for every other
/// coroutine of its worker (and poison the std mutexes whose guards they
/// drop): [`suspend_unusual`] refuses that switch.
#[inline]
fn suspend_running(r: &Running, req: Request) -> bool {
    if r.no_throw.get() && !std::thread::panicking() {
        // Parked by a hook, inside an `extern "C"` frame: never throw here.
        switch_out(r, req);
        return true;
    }
    if r.header.cancelling.load(Ordering::Relaxed) || std::thread::panicking() {
        return suspend_unusual(r, req);
    }
    switch_out(r, req);
    if r.header.cancelling.load(Ordering::Relaxed) {
        // Resumed by the shutdown, to be cancelled.
        throw_cancel(r);
    }
    true
}

/// The switch to the worker itself.
#[inline]
fn switch_out(r: &Running, req: Request) {
    let y = r.yielder.get();
    // The switch itself must not take a growth fault.
    stack::prefault_for_runtime();
    let sp = stack::stack_pointer();
    // A switch from anywhere but the coroutine's own stack (the worker's,
    // during `on_worker_stack`) would resume the worker over live frames.
    debug_assert!(
        r.gauge.contains(sp),
        "a coroutine switched out from outside its own stack"
    );
    r.parked_sp.set(sp);
    // SAFETY: the yielder lives in the coroutine's body frame for as long as
    // the coroutine runs, and we are that coroutine.
    unsafe { (*y).suspend(req) };
}

/// `suspend_running` for a coroutine being cancelled or unwinding.
#[cold]
#[inline(never)]
fn suspend_unusual(r: &Running, req: Request) -> bool {
    let header = &r.header;
    if header.cancelling.load(Ordering::Relaxed) {
        // Acquire: pairs with the Release in `CancelUnwind::drop`.
        if header.cancel_in_flight.load(Ordering::Acquire) || std::thread::panicking() {
            // A destructor waits while the coroutine unwinds at shutdown:
            // really wait. Every coroutine this worker runs meanwhile is
            // being cancelled and throws before any of its code runs (what
            // runs after its cancellation is caught does see the raised
            // panic count: "Shutdown" in the module docs).
            switch_out(r, req);
            return true;
        }
        if r.cancel_throws.get() >= CANCEL_THROWS {
            // It keeps catching its cancellation and waiting again.
            switch_out(
                r,
                Request::Abandon("it caught its cancellation and waited again"),
            );
            abort("an abandoned coroutine was resumed");
        }
        throw_cancel(r);
    }
    if header.home.load(Ordering::Relaxed) == ROOT_HOME {
        // A `block_on` root has its thread to itself: nothing else runs on
        // it to see the panic count.
        switch_out(r, req);
        return true;
    }
    let name = header.name.as_deref().unwrap_or("<unnamed>");
    match req {
        // A yield is a hint: skipping it changes nothing a caller relies on,
        // unless it is spun on.
        Request::Yield => {
            let n = r.unwinding_yields.get() + 1;
            r.unwinding_yields.set(n);
            if n >= UNWINDING_YIELDS {
                abort(&format!(
                    "coroutine {} ({name:?}) yielded {n} times while unwinding from a \
                     panic: yields are skipped then (std counts panics per OS thread, \
                     and switching away would show it to other coroutines), so a \
                     destructor spinning on yield_now never lets anything else run. \
                     Catch the panic first (std::panic::catch_unwind), then wait",
                    header.id
                ))
            }
            true
        }
        Request::Park(_) | Request::Abandon(_) => abort(&format!(
            "coroutine {} ({name:?}) tried to wait while unwinding from a panic \
                 (a destructor that waits). std counts panics per OS thread, so \
                 switching away now would make every other coroutine on this worker \
                 see std::thread::panicking() == true and poison the std mutexes \
                 they unlock. Catch the panic first (std::panic::catch_unwind), \
                 then wait",
            header.id
        )),
    }
}

/// Throws the shutdown's cancellation from the calling coroutine's suspend
/// point (see "Shutdown" in the module docs).
#[cold]
#[inline(never)]
fn throw_cancel(r: &Running) -> ! {
    r.cancel_throws.set(r.cancel_throws.get() + 1);
    r.header.cancel_in_flight.store(true, Ordering::Relaxed);
    // `resume_unwind`: no panic hook, so nothing is printed for it.
    std::panic::resume_unwind(Box::new(CancelUnwind(r.header.clone())))
}

/// `yield_now` for a coroutine; false on a plain thread.
pub(crate) fn yield_current() -> bool {
    suspend(Request::Yield)
}

/// `park` for a coroutine, until an unpark or `deadline`; false on a plain
/// thread.
pub(crate) fn park_current_coroutine(deadline: Option<Instant>) -> bool {
    let Some(r) = current_running() else {
        return false;
    };
    if r.header.park.take_token() {
        return true;
    }
    suspend_running(r, Request::Park(deadline))
}

/// Queues a new task: on the caller's deque if it is a worker of `shared`
/// (or, for a busy spawner, on the least loaded worker: see
/// `Local::placement`), else on the injector. Wakes a sleeping worker if
/// there is one.
///
/// The push is outside the no-fault section: the deque and injector are
/// lock-free, so a growth fault in them holds nothing the handler needs;
/// and a push that grows the deque flushes crossbeam-epoch garbage, whose
/// stack use (26 KiB in a debug build, found by a violation in
/// `tests/rt_stress.rs`) is beyond the look-ahead we can afford on every
/// spawn. The section covers the wake-up, which takes the sleepers' lock.
///
/// A task pushed onto an empty local deque wakes nobody: the spawner's
/// worker runs it as soon as the spawner suspends, and a worker that is
/// awake may still steal it. Waking a sleeper for it would mostly have that
/// worker steal it, and a started coroutine never moves back, so a
/// coroutine and the child it talks to would end up on two workers (as
/// tokio's LIFO slot, whose task wakes nobody either; measured: a channel
/// ping-pong on 2 workers ran at 65–75 ns per hand-off on one worker,
/// 100–300 ns across two). The next spawn onto a non-empty deque wakes a
/// sleeper as before.
pub(crate) fn submit(shared: &Arc<Shared>, task: NewTask) {
    // SAFETY: as in `current_shared`.
    match unsafe { worker_ptr().as_ref() } {
        Some(w) if Arc::ptr_eq(&w.shared, shared) => match w.placement() {
            Some(target) if target == w.index => {
                // This worker is awake (it runs the spawner): no wake-up.
                w.ws().incoming.push(task);
                return;
            }
            Some(target) => {
                if !push_shared(shared, &shared.workers[target].incoming, task) {
                    return;
                }
                let _section = NoFaultSection::enter();
                shared.notify_worker(target);
                return;
            }
            None => {
                let first = w.deque.is_empty();
                w.deque.push(task);
                if first {
                    return;
                }
            }
        },
        _ => {
            if !push_shared(shared, &shared.injector, task) {
                return;
            }
        }
    }
    // No fence of our own: `notify_one` issues the SeqCst fence between
    // the push above and its reads of the sleepers (`Idle::pop_sleeper`),
    // and a second one here cost a locked instruction per spawn of a burst.
    let _section = NoFaultSection::enter();
    shared.notify_one();
}

/// Pushes `task` onto a queue other threads drain, then issues the SeqCst
/// fence a wake-up needs. False if shutdown has begun: a spawn that raced
/// with it may have pushed after the worker or runtime that would have
/// drained the queue, so the spawner drains it itself (the push comes
/// before `shutdown` is set, and that drain finds it, or this load sees
/// `shutdown`: SeqCst on both sides).
fn push_shared(shared: &Shared, queue: &Injector<NewTask>, task: NewTask) -> bool {
    queue.push(task);
    fence(Ordering::SeqCst);
    if shared.shutdown.load(Ordering::SeqCst) {
        discard_all(shared, queue);
        return false;
    }
    true
}

/// Drops every task in `queue` (its joiners see `Cancelled`).
pub(crate) fn discard_all(shared: &Shared, queue: &Injector<NewTask>) {
    loop {
        match queue.steal() {
            Steal::Success(t) => discard(shared, t),
            Steal::Empty => return,
            Steal::Retry => {}
        }
    }
}

/// A handle on `shared` for a new header: the calling worker's own if it
/// is one of `shared`'s, else a new one (see `Header::shared`).
pub(crate) fn shared_handle(shared: &Arc<Shared>) -> SharedHandle {
    // SAFETY: as in `current_shared`.
    match unsafe { worker_ptr().as_ref() } {
        Some(w) if Arc::ptr_eq(&w.shared, shared) => Arc::clone(&w.handle),
        _ => Arc::new(Arc::clone(shared)),
    }
}

/// Makes a coroutine that an unpark took out of `PARKED` runnable: straight
/// onto the ready queue if the caller is its worker, else through its home
/// worker's inbox (or, for a `block_on` root, by unparking its thread).
///
/// On the home worker itself this is a push onto a `RefCell`'d queue of its
/// own, which holds no lock: no no-fault section (it would cost a prefault
/// on every local wake-up). The remote path edits the home worker's inbox
/// and the sleepers' list under their lock, inside one.
pub(crate) fn schedule(header: &Header) {
    let home = header.home.load(Ordering::Acquire);
    // SAFETY: as in `current_shared`.
    if let Some(w) = unsafe { worker_ptr().as_ref() } {
        // A root's home (`ROOT_HOME`) is no worker's index.
        if w.index == home as usize && Arc::ptr_eq(&w.shared, &header.shared) {
            let key = header.key.load(Ordering::Acquire) as usize;
            bump(&w.ws().wakeups);
            w.ready.borrow_mut().push_back(key);
            return;
        }
    }
    schedule_elsewhere(header, home);
}

/// `schedule` for a coroutine of another worker (or runtime), or a root.
/// Out of line and cold: the local wake-up above is the hot path, and with
/// this inlined into it every local wake-up paid for saving the registers
/// this path needs.
#[cold]
#[inline(never)]
fn schedule_elsewhere(header: &Header, home: u32) {
    let shared: &Arc<Shared> = &header.shared;
    shared.counters.wakeups.add(1);
    if home == ROOT_HOME {
        if let Some(t) = header.root_thread() {
            t.unpark();
        }
        return;
    }
    let key = header.key.load(Ordering::Acquire) as usize;
    let _section = NoFaultSection::enter();
    shared.workers[home as usize].inbox.push(key);
    fence(Ordering::SeqCst);
    shared.notify_worker(home as usize);
}

/// Adds one to a counter whose only writer is the calling worker: a plain
/// load and store, no locked instruction.
fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Drops a task that will never run (shutdown); its joiner sees
/// `Cancelled`.
pub(crate) fn discard(shared: &Shared, task: NewTask) {
    // A closure whose captures panic on drop must not cut shutdown short.
    drop_quietly(task);
    shared.live.add(-1);
}

/// The worker thread's body.
pub(crate) fn run(shared: Arc<Shared>, index: usize, deque: Worker<NewTask>, poll: mio::Poll) {
    if let Err(e) = stack::prepare_thread() {
        // Without an alternate signal stack a growth fault would kill the
        // process; refuse to run coroutines instead.
        tracing::error!(worker = index, error = %e, "cannot set up the signal stack; worker exits");
        return;
    }
    let driver = Driver::new(poll, &shared.workers[index].driver);
    let local = Local {
        index,
        ws: &*shared.workers[index],
        handle: Arc::new(Arc::clone(&shared)),
        shared,
        deque,
        ready: RefCell::new(VecDeque::new()),
        slab: RefCell::new(Vec::new()),
        spare: RefCell::new(Vec::new()),
        free_keys: RefCell::new(Vec::new()),
        tick: Cell::new(0),
        steal_singles: Cell::new(true),
        searching: Cell::new(false),
        spin_rounds: Cell::new(SPIN_ROUNDS),
        seen: RefCell::new(Vec::new()),
        left_work: Cell::new(false),
        cancelled_all: Cell::new(false),
        driver,
    };
    WORKER.with(|w| w.set(&local));
    // With the `tokio` feature, the worker lives inside the tokio
    // runtime's context, so coroutines may make tokio futures anywhere.
    let _tokio = crate::future::enter_for_thread();
    crate::hook::record_base_mask();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    local.ws().tid.store(tid, Ordering::Relaxed);
    local.ws().running.store(true, Ordering::Release);
    // User code the worker runs (results' destructors, wakers, tracing
    // subscribers) is contained where it runs. Anything else unwinding out
    // of here is a runtime bug; unwinding would drop `local` field by field
    // while coroutines pinned here still point into it: abort instead.
    let body = catch_unwind(AssertUnwindSafe(|| {
        while !local.shared.shutdown.load(Ordering::Acquire) {
            // Acquire: pairs with the SeqCst store after `cancel_spared`.
            if local.shared.cancel_all.load(Ordering::Acquire) && !local.cancelled_all.get() {
                local.cancel_all();
            }
            let work = local.next_work();
            local.stop_searching(work.is_some());
            match work {
                Some(Work::Resume(key)) => local.resume(key),
                Some(Work::Start(task)) => local.start(task),
                None => local.sleep(),
            }
        }
        local.shut_down();
    }));
    if let Err(p) = body {
        abort(&format!(
            "worker {index}: a panic escaped into the run loop ({}); unwinding it would strand the coroutines pinned to this worker",
            super::join::panic_message(p.as_ref())
        ));
    }
    WORKER.with(|w| w.set(ptr::null()));
}

/// Hints the CPU to bring the cache line at `addr` in. Never faults, on
/// any address.
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch hint reads nothing Rust can see and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// A worker's load as stealing and hand-outs weigh it: started coroutines
/// (which stay there) plus tasks queued for it.
fn load(w: &super::WorkerShared) -> usize {
    w.started.load(Ordering::Relaxed) + w.stealer.len() + w.incoming.len()
}

/// What `Local::stuck` compares of a worker: its switch count and the
/// lengths of its deque and incoming queue.
#[derive(Clone, Copy, PartialEq, Eq)]
struct WorkerState(u64, usize, usize);

impl WorkerState {
    fn of(w: &super::WorkerShared) -> WorkerState {
        WorkerState(
            w.switches.load(Ordering::Relaxed),
            w.stealer.len(),
            w.incoming.len(),
        )
    }
}

enum Work {
    Resume(usize),
    Start(NewTask),
}

impl Local {
    fn ws(&self) -> &super::WorkerShared {
        // SAFETY: `ws` points into `self.shared.workers`, which `self.shared`
        // keeps alive and never reallocates.
        unsafe { &*self.ws }
    }

    /// Where the calling coroutine's new child goes: `None` for this
    /// worker's deque, or the worker whose incoming queue takes it (this
    /// one included). Started coroutines never move, so a coroutine that
    /// spawns many long-lived ones (an accept loop) would keep them all
    /// here while other workers idle; and sending them to the injector, or
    /// to a deque an idle worker steals from, left the split to timing
    /// (measured: `tcp_echo n=1000` ended with 207/794 and 253/748
    /// connections on 2 workers). So such a spawner places each child on
    /// the least loaded worker itself, load being started coroutines plus
    /// tasks in its incoming queue, which only its worker takes from.
    ///
    /// "Such a spawner": past [`SPAWNER_CHILDREN`] children (fib's fan-out
    /// keeps its locality), and suspended since its previous spawn: an
    /// accept loop waits between connections. A burst of spawns without a
    /// suspension (a million short tasks, or a thousand clients started in
    /// a loop) goes to the local deque, where idle workers steal and busy
    /// ones rebalance (`rebalance`): placing each of `spawn_join`'s million
    /// children through the incoming queues cost 180 -> 320 ns per task.
    fn placement(&self) -> Option<usize> {
        let r = code_running()?;
        let n = r.children.get().wrapping_add(1);
        r.children.set(n);
        let resumes = r.resumes.get();
        let waited = r.resumes_at_spawn.replace(resumes) != resumes;
        if n <= SPAWNER_CHILDREN {
            return None;
        }
        if !waited {
            self.ws().burst.store(true, Ordering::Relaxed);
            return None;
        }
        // Not `load`: counting deque lengths here sent half of a million
        // short children of a burst through the incoming queues.
        let placed = |w: &super::WorkerShared| w.started.load(Ordering::Relaxed) + w.incoming.len();
        let mine = placed(self.ws());
        Some(match self.least_loaded_other(placed) {
            Some((at, least)) if least < mine => at,
            _ => self.index,
        })
    }

    /// The other running worker with the least `load`, and that load (the
    /// first in index order on a tie).
    fn least_loaded_other(
        &self,
        load: impl Fn(&super::WorkerShared) -> usize,
    ) -> Option<(usize, usize)> {
        self.shared
            .workers
            .iter()
            .enumerate()
            .filter(|&(i, w)| i != self.index && w.running.load(Ordering::Acquire))
            .map(|(i, w)| (i, load(w)))
            .min_by_key(|&(_, l)| l)
    }

    /// Adds `delta` to this worker's count of started coroutines.
    fn count_started(&self, delta: isize) {
        let c = &self.ws().started;
        // This worker is its only writer.
        c.store(
            c.load(Ordering::Relaxed).wrapping_add_signed(delta),
            Ordering::Relaxed,
        );
    }

    /// Whether this worker has run dry with sockets registered: nothing in
    /// its queues, the inbox or the injector. It then polls epoll before
    /// it spins:
    ///
    /// - Without the poll, a worker that runs dry spins for up to
    ///   `SPIN_ROUNDS` (10–20 µs) looking at its queues while readiness for
    ///   its sockets waits in epoll (`perf record` of `compare-greenstack
    ///   tcp_echo workers=2 n=100 trips=2000`: 29% of all samples in that
    ///   spin). With it, that run went from 253k to 272k req/s (medians of
    ///   7, alternated with tokio's 305k).
    /// - A worker starting new coroutines from its deque also has an empty
    ///   ready queue: an `epoll_wait` per start took `spawn_join workers=2
    ///   n=1000000` from ~180 to ~235 ns/task (medians of 3), hence the
    ///   deque check.
    /// - A worker without sockets gains nothing from the call, and a
    ///   cross-worker ping-pong (`channel_pingpong workers=2`) would wait
    ///   out its latency.
    /// - Polling a busy worker too (every 8th tick) cost more `epoll_wait`s
    ///   than it saved: `tcp_echo n=1000 trips=200`, 186k req/s against
    ///   212k without (medians of 5). A busy worker polls every 64 ticks.
    fn is_dry(&self) -> bool {
        let ws = self.ws();
        ws.driver.has_sockets()
            && self.deque.is_empty()
            && ws.inbox.is_empty()
            && ws.incoming.is_empty()
            && self.shared.injector.is_empty()
    }

    /// Step 1 and 2 of the run loop.
    fn next_work(&self) -> Option<Work> {
        let tick = self.tick.get().wrapping_add(1);
        self.tick.set(tick);
        if tick % 64 == 0 && self.ws().driver.has_sockets() {
            // Busy workers still notice I/O readiness. Without sockets there
            // is nothing for epoll to report but a wake-up, which matters
            // only to a sleeping worker: `yield_pingpong workers=1` spent 20%
            // of its time in that `epoll_wait` (one call per 64 ticks).
            self.driver.poll(&self.ws().driver, false);
        } else if tick % 64 == 0 {
            self.driver.fire_timers();
        } else if self.ready.borrow().is_empty() {
            if self.is_dry() {
                // Collects ready I/O (and fires timers) without blocking.
                self.driver.poll(&self.ws().driver, false);
            } else {
                self.driver.fire_timers();
            }
        } else if tick % 8 == 0 {
            self.driver.fire_timers();
        }
        if tick % 32 == 0 {
            self.hand_out_burst();
            self.drain_inbox();
            if let Some(t) = self
                .take_incoming()
                .or_else(|| self.steal_injector())
                .or_else(|| self.rebalance())
            {
                return Some(Work::Start(t));
            }
        }
        if self.ready.borrow().is_empty() {
            self.drain_inbox();
        }
        if tick % 2 == 1 {
            if let Some(t) = self.pop_deque() {
                return Some(Work::Start(t));
            }
        }
        if let Some(k) = self.ready.borrow_mut().pop_front() {
            return Some(Work::Resume(k));
        }
        if let Some(t) = self.pop_deque() {
            return Some(Work::Start(t));
        }
        self.take_incoming()
            .or_else(|| self.steal_injector())
            .or_else(|| self.steal_others())
            .map(Work::Start)
    }

    /// Pops the local deque. Checks for emptiness first with loads only:
    /// crossbeam's LIFO `pop` issues a SeqCst fence even on an empty deque,
    /// which cost every other pick of a coroutine ping-pong.
    fn pop_deque(&self) -> Option<NewTask> {
        if self.deque.is_empty() {
            return None;
        }
        self.deque.pop()
    }

    fn drain_inbox(&self) {
        let inbox = &self.ws().inbox;
        if inbox.is_empty() {
            return;
        }
        let mut ready = self.ready.borrow_mut();
        loop {
            match inbox.steal() {
                Steal::Success(k) => ready.push_back(k),
                Steal::Empty => break,
                Steal::Retry => {}
            }
        }
    }

    /// Takes tasks placed on this worker (see `placement`): a batch into
    /// the deque, where idle workers may steal them, and one to start.
    fn take_incoming(&self) -> Option<NewTask> {
        let incoming = &self.ws().incoming;
        if incoming.is_empty() {
            return None;
        }
        self.batch_from(incoming)
    }

    fn steal_injector(&self) -> Option<NewTask> {
        let t = self.batch_from(&self.shared.injector)?;
        self.shared.counters.steals.add(1);
        Some(t)
    }

    /// Takes a batch from `queue`: one task to start, the rest into this
    /// worker's deque.
    fn batch_from(&self, queue: &Injector<NewTask>) -> Option<NewTask> {
        loop {
            match queue.steal_batch_and_pop(&self.deque) {
                Steal::Success(t) => return Some(t),
                Steal::Empty => return None,
                Steal::Retry => {}
            }
        }
    }

    /// Steals from another worker. A worker's only queued task is left to
    /// it during a searcher's first [`SINGLE_GRACE`] spin rounds: it is
    /// most often the child its running coroutine is about to wait for or
    /// talk to, best run there (see `submit`).
    ///
    /// From a worker whose deque holds a burst (see `hand_out_burst`) it
    /// takes only while the victim's load exceeds its own, at most half the
    /// difference: started coroutines stay where they start, and a thief
    /// taking whole batches of long-lived children while their spawner was
    /// still spawning (each child parks at once, so the thief is idle
    /// again) ended up with nearly all of them: 183 of 200 in
    /// `a_burst_of_long_lived_children_spreads_over_the_workers`.
    fn steal_others(&self) -> Option<NewTask> {
        self.steal_batch_from(|i, victim| self.steal_limit(i, victim))
            .or_else(|| self.steal_stuck_incoming())
    }

    /// Takes a batch from the incoming queue of a worker that is stuck
    /// (see `stuck`): tasks handed out or placed there wait for that
    /// worker alone otherwise, behind a coroutine that may never yield.
    fn steal_stuck_incoming(&self) -> Option<NewTask> {
        let n = self.shared.workers.len();
        for off in 1..n {
            let i = (self.index + off) % n;
            let victim = &self.shared.workers[i];
            if self.may_take_incoming(i, victim) {
                if let Some(t) = self.batch_from(&victim.incoming) {
                    self.shared.counters.steals.add(1);
                    return Some(t);
                }
            }
        }
        None
    }

    /// Whether this idle worker may take from worker `i`'s incoming queue:
    /// only from a stuck worker (see `stuck`).
    fn may_take_incoming(&self, i: usize, victim: &super::WorkerShared) -> bool {
        if victim.incoming.is_empty() {
            return false;
        }
        if self.stuck(i, victim) {
            return true;
        }
        self.left_work.set(true);
        false
    }

    /// Whether worker `i`, whose queued work this idle worker would
    /// otherwise leave alone, is stuck: its switch count and queue lengths
    /// have not changed for [`BURST_RECHECK`] (one coroutine holds it; a
    /// spawner still spawning changes its deque's length). Called while
    /// this worker spins and after each of its capped sleeps.
    fn stuck(&self, i: usize, victim: &super::WorkerShared) -> bool {
        let now = WorkerState::of(victim);
        let mut seen = self.seen.borrow_mut();
        if seen.len() != self.shared.workers.len() {
            seen.resize(self.shared.workers.len(), None);
        }
        match seen[i] {
            Some((was, since)) if was == now => since.elapsed() >= BURST_RECHECK,
            _ => {
                seen[i] = Some((now, Instant::now()));
                false
            }
        }
    }

    /// How many tasks this idle worker may take from worker `i`'s deque
    /// (`None`: leave them).
    ///
    /// A burst is left to its worker once the loads are even, unless that
    /// worker is stuck (see `stuck`). A worker that leaves a burst sleeps
    /// at most [`BURST_RECHECK`], so a burst behind a coroutine that keeps
    /// its worker busy is still taken within about twice that time.
    fn steal_limit(&self, i: usize, victim: &super::WorkerShared) -> Option<usize> {
        let min_len = if self.steal_singles.get() { 1 } else { 2 };
        if victim.stealer.len() < min_len {
            return None;
        }
        if !victim.burst.load(Ordering::Relaxed) {
            return Some(STEAL_MAX);
        }
        let excess = load(victim).saturating_sub(load(self.ws()));
        if excess > 1 {
            return Some((excess / 2).min(STEAL_MAX));
        }
        if self.stuck(i, victim) {
            return Some(STEAL_MAX);
        }
        self.left_work.set(true);
        None
    }

    /// Takes a batch from the first other worker (in ring order) for which
    /// `limit` (given its index) gives the most tasks to take: one task to
    /// start, the rest into this worker's deque.
    fn steal_batch_from(
        &self,
        limit: impl Fn(usize, &super::WorkerShared) -> Option<usize>,
    ) -> Option<NewTask> {
        let n = self.shared.workers.len();
        for off in 1..n {
            let i = (self.index + off) % n;
            let victim = &self.shared.workers[i];
            let Some(limit) = limit(i, victim) else {
                continue;
            };
            loop {
                match victim
                    .stealer
                    .steal_batch_with_limit_and_pop(&self.deque, limit)
                {
                    Steal::Success(t) => {
                        self.shared.counters.steals.add(1);
                        return Some(t);
                    }
                    Steal::Empty => break,
                    Steal::Retry => {}
                }
            }
        }
        None
    }

    /// A busy worker's steal: takes a batch of never-started tasks from a
    /// worker whose load (started coroutines plus queued tasks) exceeds
    /// this one's by more than [`REBALANCE_MARGIN`]. Idle workers steal
    /// anyway; this is for a burst of long-lived spawns (1,000 client
    /// connections spawned in a loop) that lands on one worker's deque
    /// while the others are busy: without it the others took one batch
    /// when the burst began and never came back (`tcp_echo n=1000` ran
    /// 975 of 1,000 clients on one worker). Looked at every 32 ticks, and
    /// only at deques of [`REBALANCE_QUEUE`] or more tasks: fan-out such as
    /// fib keeps a few children queued whose parents wait for them, and
    /// taking those from a busy worker split parents from children (fib(25)
    /// on 2 workers went from 175 to 320 ns per task).
    fn rebalance(&self) -> Option<NewTask> {
        let mine = load(self.ws());
        self.steal_batch_from(|_, victim| {
            (victim.stealer.len() >= REBALANCE_QUEUE && load(victim) > mine + REBALANCE_MARGIN)
                .then_some(STEAL_MAX)
        })
    }

    /// The pushing half of `rebalance`, for a burst of spawns (one
    /// coroutine spawning past [`SPAWNER_CHILDREN`] children without
    /// suspending) that is still queued here: when this worker's load
    /// exceeds the least loaded other worker's by more than
    /// [`REBALANCE_MARGIN`], hands it half the difference (at most half the
    /// deque, and at most [`HAND_OUT_MAX`] tasks) through its incoming
    /// queue, and wakes it. Should that worker be stuck in one coroutine,
    /// idle workers take them from there (`steal_stuck_incoming`).
    ///
    /// Pulling alone left the split to timing: an idle worker woken by the
    /// burst's second spawn took one batch of 32 if it woke in time, and
    /// none if it did not (a wake-up here can take longer than starting a
    /// hundred clients). `tcp_echo workers=2 n=100` began its clients
    /// 33/67 or 0/100 over the two workers in most runs; pinned for life,
    /// the pairs on the busier worker finished last (client finish times
    /// 1.2–2.5 s in one run) and the other worker idled meanwhile. With
    /// this hand-out every run printed began 50/50. Only bursts: handing
    /// out from fib's fan-out deque as well split parents from their
    /// children (fib(25) on 2 workers, 191 -> 262 ns per task).
    fn hand_out_burst(&self) {
        let burst = &self.ws().burst;
        if !burst.load(Ordering::Relaxed) {
            return;
        }
        let len = self.deque.len();
        if len < 2 {
            burst.store(false, Ordering::Relaxed);
            return;
        }
        let mine = load(self.ws());
        let Some((to, least)) = self.least_loaded_other(load) else {
            return;
        };
        if mine <= least + REBALANCE_MARGIN {
            return;
        }
        let target = &self.shared.workers[to];
        let own = &self.ws().stealer;
        let mut moved = 0;
        // Oldest first, through this worker's own stealer: the owner's
        // `pop` takes the newest.
        while moved < ((mine - least) / 2).min(len / 2).min(HAND_OUT_MAX) {
            match own.steal() {
                Steal::Success(t) => {
                    if !push_shared(&self.shared, &target.incoming, t) {
                        return;
                    }
                    moved += 1;
                }
                Steal::Empty => break,
                Steal::Retry => {}
            }
        }
        if moved > 0 {
            self.shared.notify_worker(to);
        }
    }

    /// Whether other workers' deques hold tasks this worker may steal now
    /// (see `steal_others`).
    fn others_have_tasks(&self) -> bool {
        let min_len = if self.steal_singles.get() { 1 } else { 2 };
        self.shared.workers.iter().enumerate().any(|(i, w)| {
            i != self.index
                && ((w.stealer.len() >= min_len && self.steal_limit(i, w).is_some())
                    || self.may_take_incoming(i, w))
        })
    }

    /// Whether any source of work is non-empty (step 3's re-check).
    fn has_work(&self) -> bool {
        !self.ready.borrow().is_empty()
            || !self.deque.is_empty()
            || !self.ws().inbox.is_empty()
            || !self.ws().incoming.is_empty()
            || !self.shared.injector.is_empty()
            || self.others_have_tasks()
            || self.shared.shutdown.load(Ordering::Acquire)
    }

    /// Step 3: announce, re-check, sleep.
    fn sleep(&self) {
        // Spin a little first: work that arrives within microseconds (a
        // producer spawning in a loop, a coroutine on another worker waking
        // one here) is then taken without the eventfd write and context
        // switch a sleep and wake-up cost (~5 µs).
        //
        // Only work handed over by other threads shows in the spin: I/O
        // readiness waits in epoll until the spin ends, and the spin takes
        // a core from whatever else runs on the machine (a load generator
        // on the same 2 cores: `perf record` of `examples/hyper_server`
        // under `wrk -c100` had 15% of its samples in this loop). So its
        // length adapts, between `MIN_SPIN_ROUNDS` and `SPIN_ROUNDS`: it
        // halves when a sleep ends with I/O alone, and doubles when the spin
        // finds work or a sleep ends with another thread's wake-up alone.
        // Under `wrk -t1 -c100` (8 alternating runs of 4 s, with a floor of
        // 2 rounds, since raised to the single-task grace) the server's CPU
        // per request went from 16.7 to 13.0 µs (hyper on tokio: 11.4) and
        // its median from 67k to 75k req/s (tokio: 73k); tcp_echo,
        // channel_pingpong and spawn_join with 2 workers did not move
        // beyond the machine's noise.
        self.left_work.set(false);
        let burst = &self.ws().burst;
        if self.deque.is_empty() && burst.load(Ordering::Relaxed) {
            // Idle with nothing queued: no burst is left here.
            burst.store(false, Ordering::Relaxed);
        }
        let rounds = self.spin_rounds.get();
        for round in 0..rounds {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
            self.steal_singles.set(round >= SINGLE_GRACE);
            if self.has_work() {
                self.spin_rounds.set((rounds * 2).min(SPIN_ROUNDS));
                return;
            }
        }
        self.steal_singles.set(true);
        // Announce, then the SeqCst fence (inside `announce`), then the
        // re-check: the sleeper's half of the Dekker pair in `idle.rs`.
        self.shared.idle.announce(self.index);
        self.left_work.set(false);
        let block = !self.has_work();
        if block {
            // Going to sleep: the stacks this worker holds back become
            // available to the others (and to idle trimming).
            stack::flush_thread_magazines();
        }
        // Sleeps in epoll until a wake-up, I/O or the next timer (or, having
        // left queued work to another worker, a recheck); without blocking,
        // still collects I/O that is ready.
        let polled = if block && self.left_work.get() {
            self.driver.poll_at_most(&self.ws().driver, BURST_RECHECK)
        } else {
            self.driver.poll(&self.ws().driver, block)
        };
        if block && polled.io != polled.wake_up {
            self.spin_rounds.set(if polled.io {
                (rounds / 2).max(MIN_SPIN_ROUNDS)
            } else {
                (rounds * 2).min(SPIN_ROUNDS)
            });
        }
        self.shared.idle.remove_sleeper(self.index);
        // Awake again: searching until the next pick finds work, so spawns
        // meanwhile need not wake anyone else.
        self.searching.set(true);
        self.shared.idle.start_searching();
    }

    /// Ends this worker's search. Having found work, the last searcher
    /// wakes another sleeper if work is still waiting, so a burst of spawns
    /// still reaches every worker, one wake-up at a time.
    fn stop_searching(&self, found: bool) {
        if !self.searching.replace(false) {
            return;
        }
        let last = self.shared.idle.stop_searching();
        if found && last && (!self.deque.is_empty() || !self.shared.injector.is_empty()) {
            self.shared.notify_one();
        }
    }

    /// A graceful shutdown's deadline passed: cancels every coroutine
    /// started here but the spared one (`Shared::cancel_all`); the ones
    /// started from now on are cancelled in `start`.
    #[cold]
    fn cancel_all(&self) {
        self.cancelled_all.set(true);
        let spared = self.shared.cancel_spared.load(Ordering::SeqCst);
        let headers: Vec<TaskRef> = self
            .slab
            .borrow()
            .iter()
            .flatten()
            .map(|r| r.header.clone())
            .filter(|h| h.id.get() != spared)
            .collect();
        for h in headers {
            crate::cancel::request(&h);
        }
    }

    /// Step 4: creates the coroutine here and runs it.
    fn start(&self, task: NewTask) {
        let (header, stack, run) = task.into_parts();
        if self.cancelled_all.get() {
            header.cancel_requested.store(true, Ordering::Relaxed);
        }
        let slot = match stack {
            Stack::Ready(slot) => slot,
            Stack::AtStart(reservation) => {
                let slot = match reservation {
                    Some(r) => r.into_slot(&self.shared.arena),
                    None => Err(std::io::Error::other(
                        "the coroutine's stack was already taken",
                    )),
                };
                match slot {
                    Ok(mut slot) => {
                        slot.set_identity(header.id.get(), header.name.as_deref());
                        slot
                    }
                    Err(e) => {
                        let msg = format!(
                            "greenstack: no stack for coroutine {} when it started: {e}",
                            header.id
                        );
                        contain(
                            "reporting a coroutine without a stack",
                            || tracing::error!(coroutine.id = header.id.get(), error = %e, "no stack for a coroutine that was to start"),
                        );
                        header.park.finish();
                        // Dropping the closure may panic; the worker must not.
                        // SAFETY: `header`, the task's reference, lives to the
                        // end of this function.
                        let failed =
                            catch_unwind(AssertUnwindSafe(|| unsafe { run.fail(Box::new(msg)) }));
                        drop_quietly(failed);
                        self.shared.counters.finished.add(1);
                        self.shared.live.add(-1);
                        return;
                    }
                }
            }
        };
        let key = self.free_keys.borrow_mut().pop().unwrap_or_else(|| {
            let mut slab = self.slab.borrow_mut();
            slab.push(None);
            slab.len() - 1
        });
        // Worker counts and slab keys stay far below `u32::MAX - 1`: the
        // builder caps workers, and a key per live coroutine on one worker.
        header.home.store(self.index as u32, Ordering::Release);
        header.key.store(key as u32, Ordering::Release);
        // Coroutines of different workers never share a stack colour.
        let mut slot = slot;
        slot.set_colour(self.index);
        // SAFETY: the gauge goes into the same `Running` as the coroutine that
        // owns the slot, and is read only while that coroutine exists.
        let gauge = unsafe { slot.gauge() };
        let co = Co::with_stack(slot, move |y: &Yielder<(), Request>, ()| {
            if let Some(r) = current_running() {
                r.yielder.set(y);
            }
            // SAFETY: the task's `Running` (below) holds a reference to its
            // cell for as long as this coroutine exists.
            unsafe { run.run() }
        });
        let place = self
            .spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Box::new(MaybeUninit::uninit()));
        let span = coroutine_span(&header);
        let running = Running::new(co, header, span, gauge, place);
        self.slab.borrow_mut()[key] = Some(running);
        self.count_started(1);
        self.resume(key);
    }

    /// Step 5: runs coroutine `key` until it suspends or returns.
    fn resume(&self, key: usize) {
        let p: *const Running = match self.slab.borrow().get(key) {
            Some(Some(r)) => &**r,
            _ => return, // a stale key (cannot happen; harmless if it did)
        };
        // SAFETY: the box stays in the slab until `finish` below removes it;
        // only this thread touches the slab.
        let r = unsafe { &*p };
        let ws = self.ws();
        // This worker is their only writer: plain load and store, no
        // locked read-modify-write on every resume.
        bump(&ws.switches);
        ws.current
            .store(r.header.as_ptr().cast_mut(), Ordering::Release);
        if self.ready.borrow().len() >= PREFETCH_READY {
            self.prefetch_next();
        }
        let result = r.resume(p);
        ws.current.store(ptr::null_mut(), Ordering::Release);
        match result {
            CoroutineResult::Yield(Request::Yield) => self.ready.borrow_mut().push_back(key),
            CoroutineResult::Yield(Request::Park(deadline)) => {
                if r.header.park.commit_park() {
                    bump(&ws.parks);
                    // The timer an earlier wait left armed moves to this
                    // wait's deadline, or goes (see `Driver::arm`).
                    r.timer
                        .set(self.driver.arm(r.timer.take(), deadline, &r.header));
                } else {
                    self.ready.borrow_mut().push_back(key);
                }
            }
            CoroutineResult::Yield(Request::Abandon(why)) => self.abandon(key, why),
            CoroutineResult::Return(stored) => self.finish(key, stored),
        }
    }

    /// With many coroutines ready, the next one's `Running`, header and
    /// the top of its parked stack are likely cold: asks the CPU to fetch
    /// them while the current one runs. `perf record` of `tcp_echo
    /// workers=2 n=1000` put 3.4% of all samples on the first store after
    /// the switch into a coroutine (its cold stack); with this, 11.55 ->
    /// 11.15 µs per request (medians of 8, alternating; n=100: 9.84 ->
    /// 9.68).
    #[inline(never)]
    fn prefetch_next(&self) {
        let ready = self.ready.borrow();
        let slab = self.slab.borrow();
        let running = |i: usize| match ready.get(i).map(|&k| slab.get(k)) {
            Some(Some(Some(r))) => Some(&**r),
            _ => None,
        };
        // Two steps, so no demand load waits on a miss: the one after next
        // only has its `Running` fetched; the next one's (fetched at the
        // previous resume) is read for its header and parked stack.
        if let Some(r) = running(1) {
            let at = r as *const Running as usize;
            for off in (0..std::mem::size_of::<Running>()).step_by(64) {
                prefetch(at + off);
            }
        }
        if let Some(r) = running(0) {
            prefetch(r.header.as_ptr() as usize);
            let sp = r.parked_sp.get();
            if sp != 0 {
                for off in (0..512).step_by(64) {
                    prefetch(sp.wrapping_sub(128).wrapping_add(off));
                }
            }
        }
    }

    /// Releases a finished coroutine: its slab entry, stack and header.
    /// `stored`: its cell holds an outcome to announce.
    fn finish(&self, key: usize, stored: bool) {
        let running = self.slab.borrow_mut()[key].take();
        let Some(running) = running else { return };
        self.count_started(-1);
        running.header.park.finish();
        self.wait_for_watchdog();
        // Stack back to the arena first, then tell the joiner (the task
        // reference, taken out, keeps the cell alive for that).
        let (running, place) = Running::unbox(running);
        {
            let mut spare = self.spare.borrow_mut();
            if spare.len() < SPARE_RUNNING {
                spare.push(place);
            }
        }
        let Running {
            co,
            header,
            locals,
            span,
            gauge,
            timer,
            ..
        } = running;
        self.driver.disarm(timer.into_inner(), &header);
        drop_quietly((co, locals, gauge, span));
        self.free_keys.borrow_mut().push(key);
        self.shared.counters.finished.add(1);
        self.shared.live.add(-1);
        if stored {
            // Publishing drops the value of a detached coroutine and wakes a
            // joiner's waker: user code, which must not unwind the worker.
            // A panic there is reported and the worker goes on (std aborts
            // on "thread result panicked on drop"; a runtime of a million
            // coroutines should not die of one value's destructor).
            // SAFETY: the run stored an outcome and returned true, once.
            contain(
                "announcing a finished coroutine's result (its drop or the joiner's waker)",
                || unsafe { header.publish() },
            );
        }
        drop_quietly(header);
    }

    /// Gives up on started coroutine `key` at shutdown (see "Shutdown" in
    /// the module docs): reported, its joiner told `Cancelled`, its
    /// `Running` and stack leaked.
    #[cold]
    fn abandon(&self, key: usize, why: &str) {
        let Some(running) = self.slab.borrow_mut()[key].take() else {
            return;
        };
        self.count_started(-1);
        // Later unparks (a waiter node on its stack may still be linked in
        // some queue) find it finished and do nothing.
        running.header.park.finish();
        self.driver.disarm(running.timer.take(), &running.header);
        let (id, name) = (running.header.id, running.header.name.clone());
        let name = name.as_deref().unwrap_or("<unnamed>");
        contain("reporting an abandoned coroutine", || {
            tracing::error!(
                coroutine.id = id.get(),
                coroutine.name = name,
                "coroutine abandoned at shutdown: {why}; its stack and what it holds are leaked"
            )
        });
        // SAFETY: its body started (it is in the slab) and it is never
        // resumed again: its `Running` is leaked just below, once.
        contain("releasing an abandoned coroutine's joiner", || unsafe {
            running.header.abandon()
        });
        // Leaked whole: its stack (inside the corosensei coroutine) may
        // hold waiter nodes that queues still link, and its header keeps
        // the runtime's `Shared`, and so the arena mapping those stacks,
        // alive for good.
        std::mem::forget(running);
        self.shared.counters.finished.add(1);
        self.shared.live.add(-1);
    }

    /// Makes sure the watchdog is not reading a header we are about to free
    /// (see `watchdog.rs`).
    fn wait_for_watchdog(&self) {
        let ws = self.ws();
        ws.current.store(ptr::null_mut(), Ordering::SeqCst);
        // The watchdog's read is a few instructions, but its thread may be
        // preempted inside it: spin, then yield (crossbeam's snooze).
        let backoff = crossbeam_utils::Backoff::new();
        while ws.watch_reading.load(Ordering::SeqCst) {
            backoff.snooze();
        }
    }

    /// Step 6: see "Shutdown" in the module docs.
    fn shut_down(&self) {
        // 1. Tasks that never ran.
        self.discard_queued();
        // 2. Every started coroutine, runnable once more, cancelling.
        let keys: Vec<usize> = self
            .slab
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(k, r)| r.as_ref().map(|_| k))
            .collect();
        for key in keys {
            let slab = self.slab.borrow();
            let Some(Some(r)) = slab.get(key) else {
                continue;
            };
            r.header.cancelling.store(true, Ordering::Relaxed);
            if r.header.park.cancel_park() {
                drop(slab);
                self.ready.borrow_mut().push_back(key);
            }
        }
        // 3. Run them until none is left or the time is up: in rounds of
        // what is ready at the start of each, so a coroutine that keeps
        // yielding (a destructor spinning on `yield_now`) cannot keep the
        // deadline, timers and I/O from being looked at.
        let deadline = Instant::now() + self.shared.shutdown_timeout;
        loop {
            // Spawns made meanwhile (by a destructor) never run.
            self.discard_queued();
            self.drain_inbox();
            let round = self.ready.borrow().len();
            for _ in 0..round {
                let next = self.ready.borrow_mut().pop_front();
                let Some(key) = next else { break };
                self.resume(key);
            }
            if self.slab.borrow().iter().all(Option::is_none) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if !self.ready.borrow().is_empty() {
                // Still busy: fire due timers and collect I/O, no sleep.
                self.driver.poll(&self.ws().driver, false);
                continue;
            }
            // Some wait in a destructor: sleep until a wake-up (announced as
            // a sleeper, so remote unparks wake us), I/O, a timer, or the
            // deadline.
            self.shared.idle.announce(self.index);
            fence(Ordering::SeqCst);
            if self.ws().inbox.is_empty() {
                self.driver.poll_at_most(&self.ws().driver, deadline - now);
            }
            self.shared.idle.remove_sleeper(self.index);
        }
        // 4. Whatever is left is abandoned.
        let left: Vec<usize> = self
            .slab
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(k, r)| r.as_ref().map(|_| k))
            .collect();
        for key in left {
            self.abandon(key, "it was still waiting when the shutdown timeout passed");
        }
        self.discard_queued();
        self.ready.borrow_mut().clear();
        while !self.ws().inbox.is_empty() {
            let _ = self.ws().inbox.steal();
        }
        self.wait_for_watchdog();
    }

    /// Drops every never-started task this worker could take: its deque,
    /// its incoming queue and the injector (their joiners see
    /// `Cancelled`).
    fn discard_queued(&self) {
        while let Some(t) = self.deque.pop() {
            discard(&self.shared, t);
        }
        discard_all(&self.shared, &self.ws().incoming);
        discard_all(&self.shared, &self.shared.injector);
    }
}

/// The stack checker: reports use past 1/2 (info) and 7/8 (warn) of the
/// reserve, once each per coroutine.
fn check_stack(r: &Running) {
    let committed = r.gauge.committed();
    if committed == r.checked.get() {
        return;
    }
    r.checked.set(committed);
    let level = stack_level(committed, r.gauge.reserve());
    let reported = r.reported.get();
    if level <= reported {
        return;
    }
    r.reported.set(level);
    let (id, name) = (
        r.header.id.get(),
        r.header.name.as_deref().unwrap_or("<unnamed>"),
    );
    let reserve = r.gauge.reserve();
    if reported < 1 {
        tracing::info!(
            coroutine.id = id,
            coroutine.name = name,
            committed,
            reserve,
            "coroutine stack reached 1/2 of its reserve"
        );
    }
    if level == 2 {
        tracing::warn!(
            coroutine.id = id,
            coroutine.name = name,
            committed,
            reserve,
            "coroutine stack past 7/8 of its reserve"
        );
    }
}

/// 0 below half the reserve, 1 from half, 2 past 7/8. Growth doubles the
/// committed size, so "from half" (not "past half") is what a power-of-two
/// reserve reaches on its way up.
fn stack_level(committed: usize, reserve: usize) -> u8 {
    if committed * 8 > reserve * 7 {
        2
    } else if committed * 2 >= reserve {
        1
    } else {
        0
    }
}

/// Drops a finished coroutine's remains on the worker. Its locals were
/// dropped in the coroutine already; whatever else panics here (a value the
/// coroutine left behind) is reported instead of unwinding the worker,
/// which would strand every coroutine pinned to it.
fn drop_quietly<T>(value: T) {
    contain("dropping a coroutine's remains", move || drop(value));
}

/// Runs `f`, user code on the worker (a destructor, a waker, a tracing
/// subscriber), so that a panic in it never unwinds the worker: it is
/// reported (`what` says where) and `None` returned. Reporting goes
/// through tracing, itself contained; a panic payload whose own drop
/// panics is leaked.
pub(crate) fn contain<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                tracing::error!(
                    panic = super::join::panic_message(p.as_ref()),
                    "a panic on a greenstack worker, contained: {what}"
                )
            }));
            if let Err(inner) = catch_unwind(AssertUnwindSafe(move || drop(p))) {
                std::mem::forget(inner);
            }
            None
        }
    }
}

/// The tracing span a coroutine runs in, if a subscriber wants one. Made
/// before its `Running` (see `Running::new`), and contained: a subscriber
/// whose `new_span` panics costs the coroutine its span, nothing more.
/// Boxed: a disabled `Span` would still take 40 bytes per coroutine.
fn coroutine_span(header: &Header) -> Option<Box<tracing::Span>> {
    contain("creating a coroutine's span", || {
        let span = tracing::debug_span!(
            "coroutine",
            id = header.id.get(),
            name = header.name.as_deref().unwrap_or("")
        );
        (!span.is_disabled()).then(|| Box::new(span))
    })
    .flatten()
}

/// Drops the calling coroutine's `coroutine_local!` values, in the
/// coroutine (so they may still use `current()` and each other), before it
/// reports completion, so `join` returns after they are gone, as std's does
/// for thread-locals. A panicking destructor is reported, not propagated.
///
/// A destructor waiting here when the shutdown cancels the coroutine is
/// unwound by the cancellation, like any wait; the payload is returned,
/// not reported, and kept alive meanwhile, so the remaining destructors
/// may still wait (see `suspend_unusual`).
pub(crate) fn drop_current_locals() -> Option<Box<dyn std::any::Any + Send>> {
    let r = current_running()?;
    let mut cancelled = None;
    loop {
        let next = r.locals.borrow_mut().take_one();
        let Some(v) = next else { break };
        match catch_unwind(AssertUnwindSafe(move || drop(v))) {
            Ok(()) => {}
            Err(p) if p.is::<CancelUnwind>() => cancelled = Some(p),
            Err(p) => contain("dropping a coroutine-local value", move || {
                std::panic::resume_unwind(p)
            })
            .unwrap_or(()),
        }
    }
    cancelled
}

/// Writes `msg` and aborts: for failures across a stack switch, where
/// unwinding is not an option.
fn abort(msg: &str) -> ! {
    eprintln!("greenstack: fatal: {msg}");
    std::process::abort()
}
