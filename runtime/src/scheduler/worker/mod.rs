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
//! # Files
//!
//! - this file: the worker's state (`Local`, `Running`), the thread-locals
//!   through which coroutine code reaches it, and the run loop (steps 1-2);
//! - `switch.rs`: the coroutine's side, switching out and back;
//! - `submit.rs`: how new tasks and wake-ups reach a worker;
//! - `balance.rs`: placement, stealing, rebalancing and hand-outs;
//! - `sleep.rs`: step 3, idling and sleeping without lost wake-ups;
//! - `lifecycle.rs`: steps 4-5, starting, resuming and finishing coroutines;
//! - `shutdown.rs`: step 6, and why cancelling at shutdown is sound.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corosensei::{CoroutineResult, Yielder};
use crossbeam_deque::{Steal, Worker};

use super::driver::{Driver, TimerKey};
use super::local::Map as LocalMap;
use super::task::{CancelUnwind, Header, NewTask, SharedHandle, TaskRef, TaskShared};
use super::Shared;
use crate::stack::{self, Slot, StackGauge};

mod balance;
mod lifecycle;
mod shutdown;
mod sleep;
mod submit;
mod switch;

use balance::WorkerState;
use lifecycle::{check_stack, stack_level};
use sleep::SPIN_ROUNDS;
use submit::{bump, push_shared};

pub(crate) use submit::{discard, discard_all, schedule, shared_handle, submit};
pub(crate) use switch::{
    current_cancelling, hook_call_cancelled, on_worker_stack, park_current_coroutine,
    without_cancel_unwind, yield_current,
};

/// What a coroutine asks of its worker when it suspends, in one word.
///
/// A word because it is written just before the switch and copied right
/// after it, and a load cannot take its value from narrower stores still
/// in flight: as an enum of `Yield`, `Park(Option<Instant>)` and
/// `Abandon(&'static str)`, a park without a deadline wrote only the
/// 4-byte niche of `Instant`'s nanoseconds, and the copy's 16-byte load
/// stalled on it (the hottest instruction of a channel receive, `perf
/// annotate` of `channel_pingpong workers=1`). [`Request::asked`] decodes
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Request(u64);

/// A [`Request`], decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// Run me again after the others that are ready.
    Yield,
    /// Run me again after an unpark, or at the deadline if there is one.
    Park(Option<Instant>),
    /// Never run me again: I keep catching my cancellation at shutdown, or
    /// making blocking calls that fail because of it (see "Shutdown" in
    /// the module docs); the reason, for the report.
    Abandon(&'static str),
}

thread_local! {
    /// The reason of the last [`Request::abandon`] on this thread: the
    /// coroutine and its worker share the thread, and the request itself
    /// is one word.
    static ABANDON_WHY: Cell<&'static str> = const { Cell::new("") };
}

impl Request {
    /// [`Asked::Yield`].
    pub(crate) const YIELD: Request = Request(u64::MAX);
    const ABANDON: Request = Request(u64::MAX - 1);
    /// A park without a deadline.
    const PARK_FOREVER: Request = Request(u64::MAX - 2);

    /// [`Asked::Park`]: the deadline as nanoseconds since a base taken once
    /// per process. One before the base counts as the base (both have
    /// passed); one 584 years away, as no deadline.
    #[inline]
    pub(crate) fn park(deadline: Option<Instant>) -> Request {
        match deadline {
            None => Request::PARK_FOREVER,
            Some(d) => Request(
                u64::try_from(d.saturating_duration_since(park_base()).as_nanos())
                    .unwrap_or(u64::MAX)
                    .min(Request::PARK_FOREVER.0),
            ),
        }
    }

    /// [`Asked::Abandon`] for `why`.
    pub(crate) fn abandon(why: &'static str) -> Request {
        ABANDON_WHY.with(|w| w.set(why));
        Request::ABANDON
    }

    /// What was asked (on the thread that asked).
    #[inline]
    pub(crate) fn asked(self) -> Asked {
        match self {
            Request::YIELD => Asked::Yield,
            Request::ABANDON => Asked::Abandon(ABANDON_WHY.with(Cell::get)),
            Request::PARK_FOREVER => Asked::Park(None),
            Request(n) => Asked::Park(park_base().checked_add(std::time::Duration::from_nanos(n))),
        }
    }
}

/// The base of [`Request::park`]'s deadlines.
fn park_base() -> Instant {
    // once_cell's, not std's `OnceLock`: a racing first use waits on the
    // thread's parker, which the futex hook never takes over (see
    // `loom::std::sync::Mutex` for why the runtime's waits must not park).
    static BASE: once_cell::sync::OnceCell<Instant> = once_cell::sync::OnceCell::new();
    *BASE.get_or_init(Instant::now)
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

/// Longest sleep of an idle worker that left queued work (a burst in a
/// deque, tasks in an incoming queue) to another worker, and how long that
/// worker must look stuck before the idle one takes the work (see
/// `Local::stuck`).
const BURST_RECHECK: Duration = Duration::from_millis(4);

/// Spin rounds (about 0.8 µs each here) during which a searching worker leaves
/// another worker's only queued task alone (see `steal_others`).
const SINGLE_GRACE: u32 = 8;

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
    /// Whether it accepted a connection since its last spawn (see
    /// `Local::placement` and [`note_accept`]).
    accepted: Cell<bool>,
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
        co: impl FnOnce() -> Co,
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
            co: UnsafeCell::new(None),
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
            accepted: Cell::new(false),
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
        let running = unsafe {
            p.write(running);
            Box::from_raw(p)
        };
        // The coroutine last, made in its place: made first and moved in
        // with the rest, its fields, just written, were read back at once
        // by wider loads the CPU cannot forward from them (`perf annotate`
        // of `spawn_join workers=2`: a fifth of the run loop's samples).
        // SAFETY: nothing borrows `co` yet; it is `None`, so the write
        // drops nothing.
        unsafe { *running.co.get() = Some(co()) };
        running
    }

    /// Takes a finished coroutine's `Running` apart where it is: its task
    /// reference and armed timer come out, the rest is dropped in place
    /// (each part contained: `locals` runs user destructors, the coroutine
    /// gives its stack back), and the box's memory is kept for the next
    /// one (`Local::spare`). In place, not moved out whole and then
    /// destructured: those copies read 16 bytes at a time what the one
    /// before had just written in other widths, loads that wait for the
    /// stores (`perf annotate` of `spawn_join workers=2`: the hottest
    /// instructions of `finish`).
    fn dismantle(b: Box<Running>) -> (TaskRef, Option<TimerKey>, Box<MaybeUninit<Running>>) {
        // Every field by name: a new one must be placed below, taken out
        // and dropped, or among those without drop glue.
        let Running {
            co: _,
            header: _,
            yielder: _,
            locals: _,
            span: _,
            gauge: _,
            reported: _,
            checked: _,
            parked_sp: _,
            children: _,
            resumes: _,
            resumes_at_spawn: _,
            accepted: _,
            timer: _,
            cancel_throws: _,
            unwinding_yields: _,
            no_throw: _,
            limits: _,
        } = &*b;
        const _: () = {
            use std::mem::needs_drop;
            assert!(
                !needs_drop::<Cell<*const Yielder<(), Request>>>()
                    && !needs_drop::<Cell<u8>>()
                    && !needs_drop::<Cell<usize>>()
                    && !needs_drop::<Cell<u32>>()
                    && !needs_drop::<Cell<bool>>()
                    && !needs_drop::<crate::cancel::Limits>()
            );
        };
        let timer = b.timer.take();
        let p = Box::into_raw(b);
        // SAFETY: `p` is a live `Running` from a `Box`, no longer
        // borrowed. Each field with drop glue is read out or dropped in
        // place exactly once here (the fields listed above without glue
        // need nothing), and the allocation is then taken back as
        // uninitialized memory of the same layout (`MaybeUninit<Running>`
        // has `Running`'s): nothing is dropped twice or leaked. A part
        // whose drop panics is contained and the next still dropped.
        unsafe {
            let header = ptr::addr_of!((*p).header).read();
            drop_part(ptr::addr_of_mut!((*p).co));
            drop_part(ptr::addr_of_mut!((*p).locals));
            drop_part(ptr::addr_of_mut!((*p).gauge));
            drop_part(ptr::addr_of_mut!((*p).span));
            (
                header,
                timer,
                Box::from_raw(p.cast::<MaybeUninit<Running>>()),
            )
        }
    }

    /// Resumes the coroutine on this thread until it suspends or returns.
    /// `p` must point to `self`, boxed and kept alive by the caller.
    #[inline(always)]
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
    /// ones started here (at most [`lifecycle::SPARE_RUNNING`]). At 184 bytes a
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

/// Notes that the running code (a coroutine, or a future polled on its
/// worker's stack) accepted a connection: its next spawn, the
/// connection's coroutine, is placed by load (see `Local::placement`).
pub(crate) fn note_accept() {
    if let Some(r) = code_running() {
        r.accepted.set(true);
    }
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
        None => f(current_running().map(|r| &r.header.shared.shared)),
    }
}

/// The runtime of the calling worker thread or coroutine (a `block_on`
/// root included), if any.
pub(crate) fn current_shared() -> Option<Arc<Shared>> {
    // SAFETY: `WORKER` points to the `Local` on the worker's own stack frame
    // in `run`, set for exactly the time that frame lives.
    match unsafe { worker_ptr().as_ref() } {
        Some(w) => Some(Arc::clone(&w.shared)),
        None => current_running().map(|r| Arc::clone(&r.header.shared.shared)),
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
    let co = move || {
        Co::with_stack(slot, move |y: &Yielder<(), Request>, ()| {
            if let Some(r) = current_running() {
                r.yielder.set(y);
            }
            out2.set(Some(catch_unwind(AssertUnwindSafe(root))));
            false
        })
    };
    let span = coroutine_span(&header);
    let running = Running::new(co, header, span, gauge, Box::new(MaybeUninit::uninit()));
    let p: *const Running = &*running;
    loop {
        match running.resume(p) {
            CoroutineResult::Return(_) => break,
            CoroutineResult::Yield(req) => match req.asked() {
                Asked::Yield => std::thread::yield_now(),
                // A root is never cancelled.
                Asked::Abandon(_) => abort("a block_on root asked to be abandoned"),
                Asked::Park(deadline) => {
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
            },
        }
    }
    running.header.park.finish();
    drop(running);
    shared.counters.finished.add(1);
    out.take().expect("the root ran to completion")
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
        handle: TaskShared::unnamed(&shared),
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
    crate::hook::record_base_mask(local.shared.hooks, local.shared.std_locks);
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
                Some(Work::Resume(key)) => local.resume_inline(key),
                Some(Work::Start(task)) => local.start(task),
                None => local.sleep(),
            }
        }
        local.shut_down();
        // The cells this thread allocated and freed go back to the system
        // (the thread is about to exit; see `give_back`).
        super::task::cell_alloc::give_back();
    }));
    if let Err(p) = body {
        abort(&format!(
            "worker {index}: a panic escaped into the run loop ({}); unwinding it would strand the coroutines pinned to this worker",
            super::join::panic_message(p.as_ref())
        ));
    }
    WORKER.with(|w| w.set(ptr::null()));
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

    /// Whether this worker has run dry with sockets registered: nothing in
    /// its queues, the inbox or the injector. It then polls epoll before
    /// it spins:
    ///
    /// - Without the poll, a worker that runs dry spins for up to
    ///   `SPIN_ROUNDS` (~50 µs here) looking at its queues while readiness for
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
}

/// Drops a finished coroutine's remains on the worker. Its locals were
/// dropped in the coroutine already; whatever else panics here (a value the
/// coroutine left behind) is reported instead of unwinding the worker,
/// which would strand every coroutine pinned to it.
fn drop_quietly<T>(value: T) {
    contain("dropping a coroutine's remains", move || drop(value));
}

/// [`drop_quietly`] of the value at `p`, in place.
///
/// # Safety
///
/// `p` points to a valid value that nothing uses after this (as for
/// [`ptr::drop_in_place`]).
unsafe fn drop_part<T>(p: *mut T) {
    // SAFETY: the caller's contract, passed on; the value is dropped once,
    // whether its drop returns or unwinds (then it counts as dropped).
    contain("dropping a coroutine's remains", || unsafe {
        ptr::drop_in_place(p)
    });
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
            name = header.name().unwrap_or("")
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

#[cfg(all(test, not(greenstack_loom)))]
mod tests {
    use super::{Asked, Request};
    use std::time::{Duration, Instant};

    /// A request survives its one-word encoding: the kinds, a deadline to
    /// the nanosecond, one already passed, one too far to count, and an
    /// abandon's reason.
    #[test]
    fn a_request_is_decoded_as_it_was_made() {
        assert_eq!(Request::YIELD.asked(), Asked::Yield);
        assert_eq!(Request::park(None).asked(), Asked::Park(None));
        let soon = Instant::now() + Duration::from_nanos(1_234_567_891);
        assert_eq!(Request::park(Some(soon)).asked(), Asked::Park(Some(soon)));
        // Before the encoding's base: still a deadline, and passed.
        let past = Instant::now()
            .checked_sub(Duration::from_secs(3600))
            .expect("an hour ago");
        match Request::park(Some(past)).asked() {
            Asked::Park(Some(d)) => assert!(d <= Instant::now()),
            other => panic!("{other:?}"),
        }
        let far = Instant::now().checked_add(Duration::from_secs(600 * 365 * 86_400));
        if let Some(far) = far {
            assert_eq!(Request::park(Some(far)).asked(), Asked::Park(None));
        }
        assert_eq!(
            Request::abandon("a reason").asked(),
            Asked::Abandon("a reason")
        );
    }
}
