//! Time that parks the coroutine, not the thread.
//!
//! Timers live with the worker that armed them (a heap per worker, see
//! `scheduler/driver/timers.rs`); an idle worker sleeps in `epoll_wait`
//! until its earliest deadline. A timer only wakes its coroutine: no
//! coroutine code ever runs on a timer thread. On a plain thread these
//! functions block the thread, as std's do.

// # The worker's clock (implementation notes)
//
// A clock read costs about as much as a channel hand-off (`clock_gettime`
// through the vDSO: 24 ns on the development VM, where a 1-worker channel
// round trip is about 130 ns), and a wait with a timeout used to read it
// three times before it parked: once for its deadline, then twice to check
// that the deadline had not passed. Those checks ask only "has `d`
// passed?", and a clock reading taken earlier answers "yes" soundly: the
// clock is monotonic, so a reading at or after `d` means now is too. So
// each worker thread keeps its latest reading (`now` stores it; the
// driver takes one whenever it fires timers or sleeps), and `expired`
// answers from it when it can:
//
// 1. the reading is at or after `d`: passed;
// 2. the reading is more than `NEAR` before `d`: not passed, *unless*
//    the reading is stale. Saying "not passed" for a deadline that has
//    passed is safe: the caller parks with a timer at `d`, which the
//    worker fires at its next check of the clock (refreshing the reading
//    to a time at or after `d`), and the woken caller sees case 1. To
//    bound that staleness for a caller that spins without a real park (a
//    coroutine being force-unwound at shutdown returns from every park at
//    once), every `REREAD_AFTER`th answer in a row from case 2 reads
//    the clock instead;
// 3. otherwise (near `d`, or not a worker thread): read the clock.
//
// A wait with a long timeout then reads the clock once, for its deadline.
// On threads that are not workers (plain threads, `block_on`'s root) no
// reading is kept and `expired` always reads the clock: nothing there
// fires timers to refresh a reading.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, Instant};

use crate::cancel::{End, Point};

/// How close to a deadline, as the latest reading sees it, [`expired`]
/// reads the clock rather than answer "not passed" from the reading: a
/// short timeout (`recv_timeout(Duration::ZERO)` to poll, a few hundred
/// microseconds) then ends without a park. 1 ms: the resolution of
/// `epoll_wait`'s timeout, below which a park would be woken late anyway.
pub(crate) const NEAR: Duration = Duration::from_millis(1);

/// Answers "not passed" from a reading in a row before [`expired`] reads
/// the clock anyway ("The worker's clock" at the top of this file, case
/// 2).
const REREAD_AFTER: u32 = 16;

thread_local! {
    /// A worker thread's latest clock reading; `None` on other threads.
    static READING: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The deadline [`deadline_after`] last computed from `READING`, if its
    /// timeout was over `NEAR`: more than `NEAR` after the reading by
    /// construction, so [`expired`] need not add `NEAR` to tell (the waits
    /// that check a deadline again and again check the one they just
    /// took).
    static FAR: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Answers [`expired`] has given from `READING` since it was taken.
    static ANSWERS: Cell<u32> = const { Cell::new(0) };
}

// Plain `thread_local!` accesses (through `with`: `LocalKey::get`/`set`
// did not inline into the criterion bench's non-LTO build, 4.5% of a timed
// ping-pong in `initialize_with`), inlined, unlike the scheduler's own
// thread-locals (STYLE.md: code around a switch must not reuse a cached TLS
// address): these are read and written only by coroutine code between its
// switches, or by its worker, and a started coroutine never leaves its
// thread, so an address cached across a switch is still this thread's.

/// Makes the calling thread keep clock readings for [`expired`]: call on a
/// worker thread, whose driver fires its timers ("The worker's clock").
pub(crate) fn keep_readings() {
    store(Instant::now());
}

/// Keeps `t` as the thread's latest reading.
#[inline]
fn store(t: Instant) {
    READING.with(|c| c.set(Some(t)));
    FAR.with(|c| c.set(None));
    ANSWERS.with(|c| c.set(0));
}

/// The worker thread's latest reading (`None` on other threads).
#[inline]
pub(crate) fn reading() -> Option<Instant> {
    READING.with(Cell::get)
}

/// `Instant::now()`, kept as the worker thread's latest reading.
#[inline]
pub(crate) fn now() -> Instant {
    let t = Instant::now();
    if reading().is_some() {
        store(t);
    }
    t
}

/// `now + timeout` for a wait, or `None` (no deadline) if that overflows;
/// the reading is kept for the wait's own checks ([`expired`]).
#[inline]
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    let d = now().checked_add(timeout)?;
    if timeout > NEAR && reading().is_some() {
        FAR.with(|c| c.set(Some(d)));
    }
    Some(d)
}

/// Whether `deadline` (if any) has passed. May answer `false` for a
/// deadline that passed a moment ago ("The worker's clock"), never `true`
/// before it: callers park until the deadline and ask again.
#[inline]
pub(crate) fn expired(deadline: Option<Instant>) -> bool {
    let Some(d) = deadline else {
        return false;
    };
    match reading() {
        Some(at) if at >= d => true,
        Some(at)
            if (FAR.with(Cell::get) == Some(d) || at.checked_add(NEAR).is_some_and(|h| h < d))
                && ANSWERS.with(|c| c.replace(c.get() + 1)) < REREAD_AFTER =>
        {
            false
        }
        _ => now() >= d,
    }
}

/// Puts the calling coroutine (or thread) to sleep for at least `dur`.
///
/// Never returns early, unless the coroutine is cancelled or an enclosing
/// [`timeout`] expires (see [`crate::cancel`]). `Duration::MAX` sleeps
/// forever.
///
/// # Examples
///
/// ```
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let t = std::time::Instant::now();
///     greenstack_runtime::time::sleep(std::time::Duration::from_millis(5));
///     assert!(t.elapsed() >= std::time::Duration::from_millis(5));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn sleep(dur: Duration) {
    sleep_point(Point::new(now().checked_add(dur)));
}

/// Puts the calling coroutine (or thread) to sleep until `deadline`.
///
/// Never returns before `deadline`, unless the coroutine is cancelled or an
/// enclosing [`timeout`] expires.
pub fn sleep_until(deadline: Instant) {
    sleep_point(Point::new(Some(deadline)));
}

/// Sleeps for `dur`, not cut short by a cancellation or a timeout (the
/// runtime's own waits, such as `shutdown_timeout`'s).
pub(crate) fn sleep_uncut(dur: Duration) {
    sleep_point(Point::plain(now().checked_add(dur)));
}

/// Sleeps until `point` ends the wait; true if its own deadline did (not a
/// cancellation or a timeout).
fn sleep_point(point: Point) -> bool {
    loop {
        match point.ended() {
            Some(End::Deadline) => return true,
            Some(End::Cancelled | End::Elapsed) => return false,
            None => park_until(point.deadline()),
        }
    }
}

/// The error of [`timeout`]: the deadline cut at least one of the
/// closure's waits short. It holds what the closure returned (which may
/// hold data it got before the deadline: nothing is dropped).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Elapsed<T>(T);

impl<T> Elapsed<T> {
    /// What the closure returned.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Elapsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Elapsed(..)")
    }
}

impl<T> fmt::Display for Elapsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl<T> std::error::Error for Elapsed<T> {}

/// Runs `f` on the calling coroutine (or thread) with a deadline `dur`
/// from now: once it passes, `f`'s waits stop waiting as a cancelled
/// coroutine's do (see [`crate::cancel`]; I/O fails with
/// `ErrorKind::TimedOut`), and `f` returns by its own code. On a plain
/// thread it cuts greenstack's own waits only: the blocking-call hooks
/// do not run there, so std's blocking calls are not cut.
///
/// `Ok` with `f`'s value if no wait of `f` was cut short; `Err` holding it
/// if one was (a wait cut by an enclosing, earlier timeout counts too).
/// Timeouts nest: the earliest deadline applies.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use greenstack_runtime::{sync::mpsc, time};
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let (tx, rx) = mpsc::channel::<u32>();
///     // Nothing comes within 20 ms: the receive is cut short.
///     let r = time::timeout(Duration::from_millis(20), || rx.recv());
///     assert!(r.is_err());
///     tx.send(1).unwrap();
///     assert_eq!(time::timeout(Duration::from_millis(20), || rx.recv()), Ok(Ok(1)));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn timeout<T>(dur: Duration, f: impl FnOnce() -> T) -> Result<T, Elapsed<T>> {
    timeout_inner(now().checked_add(dur), f)
}

/// [`timeout`] with a deadline.
pub fn timeout_at<T>(deadline: Instant, f: impl FnOnce() -> T) -> Result<T, Elapsed<T>> {
    timeout_inner(Some(deadline), f)
}

fn timeout_inner<T>(deadline: Option<Instant>, f: impl FnOnce() -> T) -> Result<T, Elapsed<T>> {
    match crate::cancel::with_deadline(deadline, f) {
        (v, false) => Ok(v),
        (v, true) => Err(Elapsed(v)),
    }
}

/// Parks the caller once, until an unpark or `deadline` (if any), whichever
/// comes first; may return spuriously. The building block of every wait
/// with a timeout: callers loop and re-check their condition.
///
/// Inlined, down to the switch, into every wait: each function return
/// between a wait and the switch is one the CPU mispredicts once the
/// coroutine is switched back to (its return-address predictor then holds
/// the worker's calls): `channel_pingpong workers=1` took 25% less time per
/// hand-off with this and the run loop's side inlined.
#[inline(always)]
pub(crate) fn park_until(deadline: Option<Instant>) {
    if crate::scheduler::park_current_until(deadline) {
        return;
    }
    park_thread_until(deadline);
}

/// [`park_until`] on a plain thread.
#[cold]
#[inline(never)]
fn park_thread_until(deadline: Option<Instant>) {
    match deadline {
        None => std::thread::park(),
        Some(d) => {
            let now = now();
            if now < d {
                std::thread::park_timeout(d - now);
            }
        }
    }
}

/// What an [`Interval`] does with ticks it missed (the caller was busy past
/// one or more of them), as tokio's `MissedTickBehavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissedTickBehavior {
    /// Fire the missed ticks at once, one per call, until caught up: the
    /// count of ticks over a long run is exact. The default.
    #[default]
    Burst,
    /// Fire once now and go on at `period` from now: the schedule shifts.
    Delay,
    /// Fire once now and go on with the original schedule, skipping the
    /// missed ticks.
    Skip,
}

/// Ticks at a fixed period without drift: the `n`-th tick is due at
/// `start + n * period`, however long the caller took between ticks. Made
/// by [`interval`] or [`interval_at`].
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let start = Instant::now();
///     let mut every = greenstack_runtime::time::interval(Duration::from_millis(10));
///     for _ in 0..4 {
///         every.tick(); // the first tick is at once
///     }
///     assert!(start.elapsed() >= Duration::from_millis(30));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Interval {
    next: Instant,
    period: Duration,
    missed: MissedTickBehavior,
}

/// An [`Interval`] whose first tick is at once.
///
/// # Panics
///
/// If `period` is zero.
pub fn interval(period: Duration) -> Interval {
    interval_at(Instant::now(), period)
}

/// An [`Interval`] whose first tick is at `start`.
///
/// # Panics
///
/// If `period` is zero.
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    assert!(!period.is_zero(), "an interval's period must be non-zero");
    Interval {
        next: start,
        period,
        missed: MissedTickBehavior::default(),
    }
}

impl Interval {
    /// Waits until the next tick is due (at once if it already is) and
    /// returns the instant it was due at. Parks the calling coroutine, or
    /// blocks a plain thread.
    ///
    /// A cancelled coroutine (or one whose enclosing [`timeout`] expired)
    /// returns at once, without advancing the schedule.
    pub fn tick(&mut self) -> Instant {
        let due = self.next;
        if !sleep_point(Point::new(Some(due))) {
            return due;
        }
        let now = Instant::now();
        self.next = match self.missed {
            MissedTickBehavior::Burst => due + self.period,
            // Only if a tick was missed: on schedule, the next is one
            // period on.
            _ if now < due + self.period => due + self.period,
            MissedTickBehavior::Delay => now + self.period,
            MissedTickBehavior::Skip => {
                // The first tick of the original schedule after now.
                let behind = (now - due).as_nanos() / self.period.as_nanos();
                let steps = u32::try_from(behind + 1).unwrap_or(u32::MAX);
                due + self.period * steps
            }
        };
        due
    }

    /// When the next tick is due.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// What happens to missed ticks (default [`MissedTickBehavior::Burst`]).
    pub fn missed_tick_behavior(&self) -> MissedTickBehavior {
        self.missed
    }

    /// Sets what happens to missed ticks.
    pub fn set_missed_tick_behavior(&mut self, behavior: MissedTickBehavior) {
        self.missed = behavior;
    }

    /// Restarts the schedule: the next tick is one period from now.
    pub fn reset(&mut self) {
        self.next = Instant::now() + self.period;
    }
}
