//! A worker's driver: where it sleeps, its timers, and its I/O poller.
//!
//! Each worker owns a mio `Poll` (epoll). mio is the event loop tokio runs
//! on: well kept, edge-triggered, and its `Waker` (an eventfd) gives the
//! token semantics the idle protocol needs: a wake-up sent before the worker
//! sleeps makes the next `poll` return at once.
//!
//! - **Sleeping.** An idle worker polls with a timeout that ends at its
//!   earliest timer. Another thread wakes it through [`DriverHandle::unpark`].
//! - **Timers** live with the worker that armed them, in a heap of
//!   deadlines over a slab of wakers ([`timers`]), at most one per
//!   coroutine: a wait that ends before its deadline leaves its timer for
//!   the coroutine's next wait to move or disarm, and its end disarms it
//!   ([`Driver::arm`]). Futures' sleeps (`crate::hyper_rt::Sleep`) add
//!   one timer each, disarmed when the sleep is dropped
//!   ([`Driver::add_waker_timer`]). Expired timers wake their coroutine (or
//!   future); they never run coroutine code themselves, and no thread but
//!   the worker touches them.
//! - **I/O.** A socket is registered (edge-triggered, both directions) with
//!   the driver of the worker whose coroutine first uses it, and moves to
//!   the driver of whichever worker's coroutine waits on it next, in this
//!   runtime or another (see below). A `block_on` root and a plain thread
//!   never register a socket: they wait in `poll(2)` on it alone. Each
//!   readiness event sets bits in the socket's [`IoState`] and wakes the
//!   coroutines waiting for that direction, wherever they live.
//!
//! # No lost readiness
//!
//! A waiter clears the direction's bit *before* trying the system call.
//! When the call would block it takes the waiter lock, and re-checks the bit:
//! an event that arrived after the clear has set it again, and the waiter
//! retries instead of sleeping. The dispatcher sets the bit before taking the
//! same lock to collect wakers, so an event either is seen by the re-check or
//! finds the waker registered.
//!
//! # Moving a registration
//!
//! A socket is often set up by one coroutine and used by another that lives
//! on another worker (a client connected by a setup coroutine, then handed
//! to a spawned one). Left where it is, every readiness event for it would
//! wait for the first worker's next poll (every 64 runs while busy) and
//! then reach the waiter through the other worker's inbox. So a waiter
//! whose home is not the registration's worker moves it home first, in
//! [`Registration::wait`], under the registration's lock:
//!
//! 1. register the socket with the new driver, under a new token that maps
//!    to the same [`IoState`];
//! 2. deregister it from the old driver and free the old token;
//! 3. set both readiness bits, as a fresh registration does.
//!
//! No readiness is lost: until step 2 the old poller still reports the
//! socket, and from step 1 the new one does (epoll reports a socket that is
//! ready when it is added, edge-triggered or not); both fire the same
//! `IoState`, so an event either poller reports reaches the waiters. An
//! event the old poller collected before step 2 but dispatches after it
//! finds its token gone (dropped: the new poller reports the socket) or
//! reused by another socket (a spurious wake-up: the woken waiter retries
//! and waits again). Step 3 makes the waiter retry its call once after the
//! move, so the argument above does not even need epoll's report at
//! step 1. The move skips a socket with a waiter registered (a reader
//! parked on one worker while a writer on another waits too): moving it
//! back and forth would cost two `epoll_ctl` per wait. The waiter that
//! stays is still woken, through the other worker's poll and its inbox.
//! A wait that ends on its deadline removes its waker
//! ([`Registration::forget`]), so a timed-out reader does not count as a
//! waiter and keep the socket on a worker nobody waits from.
//!
//! # Runtimes
//!
//! A socket outlives the runtime it was registered with (made in one
//! runtime's coroutine, used in another's after the first is dropped), and
//! nobody polls a dropped runtime's drivers. So the registration records
//! its runtime with its worker, and a waiter on another runtime moves it
//! as above. Two more rules keep every waiter woken:
//!
//! 1. A registration with a runtime that is shutting down moves even when
//!    a waiter is registered (that runtime's waiters are being unwound,
//!    and it will poll no more).
//! 2. When a runtime shuts down, it sets both bits of every socket
//!    registered with it and wakes every waiter
//!    ([`DriverHandle::wake_all_io`], after the `shutdown` flag is set;
//!    again once its workers are joined). A waiter of another runtime that
//!    stayed because a waiter of the dying runtime was registered wakes,
//!    retries, and on its next wait moves the socket by rule 1. A waiter
//!    whose re-check comes after the wake-up finds the bits set and
//!    retries instead of parking. Either way its next look at `shutdown`
//!    sees it set: the wake-up's `fetch_or` (Release) comes after the
//!    flag's store, and the waiter's `clear` or re-check (Acquire) read
//!    it.
//!
//! The root of `block_on` and plain threads wait in `poll(2)` and leave the
//! registration as it is (a socket first used there is registered by the
//! first coroutine on a worker that uses it).

mod timers;

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::loom::sync::Mutex;
use std::task::Waker;
use std::time::{Duration, Instant};

use super::task::TaskRef;
use crate::time::NEAR;
pub(crate) use timers::TimerKey;
use timers::Timers;

/// The token of the driver's own eventfd.
const WAKE_TOKEN: mio::Token = mio::Token(usize::MAX);

/// Readiness bits of an [`IoState`].
pub(crate) const READABLE: u8 = 1;
/// See [`READABLE`].
pub(crate) const WRITABLE: u8 = 2;

/// What other threads hold of a worker's driver.
pub(crate) struct DriverHandle {
    waker: mio::Waker,
    registry: mio::Registry,
    /// Registered sockets by token.
    io: Mutex<IoSlab>,
    /// How many sockets are registered (the slab's live entries), readable
    /// without the lock: a worker with none has no I/O to collect.
    registered: AtomicUsize,
    /// Armed timers, for the statistics; shared with the [`Driver`], its
    /// only writer.
    timers: Arc<AtomicUsize>,
}

impl DriverHandle {
    /// Whether any socket is registered with this worker.
    pub(crate) fn has_sockets(&self) -> bool {
        self.registered.load(Ordering::Relaxed) > 0
    }

    /// How many timers the worker has armed (not yet fired or cancelled).
    pub(crate) fn timers(&self) -> usize {
        self.timers.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct IoSlab {
    entries: Vec<Option<Arc<IoState>>>,
    free: Vec<usize>,
}

/// Readiness and waiters of one registered socket.
#[derive(Default)]
pub(crate) struct IoState {
    /// `READABLE | WRITABLE` bits set by events, cleared by waiters.
    /// Bits 0-1 `READABLE | WRITABLE`; bits 2 and up count the events
    /// that set them (wrapping), so a future's poll can clear a bit only
    /// if no event came since it looked ([`clear_if_unchanged`]).
    ///
    /// [`clear_if_unchanged`]: Self::clear_if_unchanged
    readiness: AtomicU32,
    /// Coroutines (or threads) waiting, by direction.
    waiters: Mutex<[Vec<Waker>; 2]>,
}

impl IoState {
    /// Clears `dir`'s readiness bit before an attempt (see the module docs).
    pub(crate) fn clear(&self, dir: u8) {
        self.readiness.fetch_and(!u32::from(dir), Ordering::AcqRel);
    }

    /// The readiness word, for [`clear_if_unchanged`](Self::clear_if_unchanged)
    /// and [`is_ready`](Self::is_ready).
    pub(crate) fn snapshot(&self) -> u32 {
        self.readiness.load(Ordering::Acquire)
    }

    /// Whether `dir`'s bit is set in `snapshot`.
    pub(crate) fn is_ready(snapshot: u32, dir: u8) -> bool {
        snapshot & u32::from(dir) != 0
    }

    /// Clears `dir`'s bit after an attempt found the socket not ready (or
    /// drained), unless an event came since `snapshot` was taken before
    /// the attempt: tokio's scheme, for futures, which try a socket only
    /// while its bit is set and so make no system call for a socket known
    /// not to be ready.
    pub(crate) fn clear_if_unchanged(&self, dir: u8, snapshot: u32) {
        let _ = self.readiness.compare_exchange(
            snapshot,
            snapshot & !u32::from(dir),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Sets `bits` as an event does (counted).
    fn set(&self, bits: u8) {
        let _ = self
            .readiness
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.wrapping_add(4) | u32::from(bits))
            });
    }

    /// Registers `waker` for `dir` unless readiness arrived since `clear`.
    /// Returns false if the caller should retry at once instead of parking.
    fn wait(&self, dir: u8, waker: Waker) -> bool {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if self.readiness.load(Ordering::Acquire) & u32::from(dir) != 0 {
            return false;
        }
        let list = &mut w[usize::from(dir == WRITABLE)];
        if !list.iter().any(|x| x.will_wake(&waker)) {
            list.push(waker);
        }
        true
    }

    /// Removes `waker` (or one that wakes the same task) from `dir`'s
    /// waiters.
    fn forget(&self, dir: u8, waker: &Waker) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w[usize::from(dir == WRITABLE)].retain(|x| !x.will_wake(waker));
    }

    /// Whether anyone waits, in either direction.
    fn has_waiters(&self) -> bool {
        let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.iter().any(|l| !l.is_empty())
    }

    /// Sets `bits` and moves their waiters' wakers to `woken`, for the
    /// caller to wake once it holds no lock.
    fn fire(&self, bits: u8, woken: &mut Vec<Waker>) {
        self.set(bits);
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if bits & READABLE != 0 {
            woken.append(&mut w[0]);
        }
        if bits & WRITABLE != 0 {
            woken.append(&mut w[1]);
        }
    }
}

/// A socket's registration with one driver; deregisters on drop.
///
/// The registration follows the coroutines that wait on the socket: a wait
/// from a coroutine whose home is another worker moves it to that worker's
/// driver (see "Moving a registration" in the module docs), so readiness
/// wakes the coroutine on its own worker instead of through the other
/// worker's inbox and poll. The other worker may belong to another runtime
/// (see "Runtimes").
pub(crate) struct Registration {
    /// `place.shared`, as a pointer readable without the lock: with
    /// `worker`, the fast check of every wait. `place` keeps that `Shared`
    /// alive, so a pointer equal to the waiter's runtime is that runtime.
    runtime: AtomicPtr<super::Shared>,
    /// `place.worker`, readable without the lock.
    worker: AtomicUsize,
    /// Where the socket is registered. Locked while the registration moves
    /// or is dropped.
    place: Mutex<Place>,
    pub(crate) state: Arc<IoState>,
}

/// The driver a [`Registration`] is with.
struct Place {
    /// Its runtime.
    shared: Arc<super::Shared>,
    /// The worker whose driver holds the socket.
    worker: usize,
    /// The socket's token in that driver.
    token: usize,
}

/// The worker that runs the calling coroutine and its runtime, if the
/// caller is a coroutine on a worker (not a `block_on` root, not a plain
/// thread): where a wait of the caller wants the socket registered.
fn waiter_home<'a>() -> Option<(&'a Arc<super::Shared>, usize)> {
    let r = super::worker::current_running()?;
    let home = r.header.home.load(Ordering::Relaxed);
    if home == super::worker::ROOT_HOME {
        return None;
    }
    let shared: &Arc<super::Shared> = &r.header.shared;
    Some((shared, home as usize))
}

/// Whether the caller is a coroutine on a worker, whose waits park on a
/// [`Registration`] (a `block_on` root and a plain thread wait in
/// `poll(2)`).
pub(crate) fn waits_registered() -> bool {
    waiter_home().is_some()
}

/// Where a future polled by the caller registers its sockets: as
/// [`waiter_home`], or the worker itself when the caller runs on a worker's
/// own stack (a future of `spawn_future`, polled there), whose poller then
/// wakes the future's waker.
fn poller_home<'a>() -> Option<(&'a Arc<super::Shared>, usize)> {
    waiter_home().or_else(super::worker::current_worker_ref)
}

/// Whether a future polled by the caller can wait for a socket's readiness
/// through a [`Registration`]: a coroutine on a worker, or a worker's own
/// stack (see [`poller_home`]).
pub(crate) fn polls_registered() -> bool {
    poller_home().is_some()
}

impl Registration {
    /// Registers `source` with the driver of the calling coroutine's
    /// worker. Call only where [`waits_registered`] holds.
    pub(crate) fn new(source: &mut impl mio::event::Source) -> io::Result<Registration> {
        // A coroutine on a worker runs on its home worker.
        let (shared, worker) =
            super::worker::current_worker().expect("a registration is made on a worker");
        let state = Arc::new(IoState::default());
        let token = shared.workers[worker].driver.add(source, &state)?;
        // Fresh registrations start ready: the first attempt decides.
        state.set(READABLE | WRITABLE);
        Ok(Registration {
            runtime: AtomicPtr::new(Arc::as_ptr(&shared).cast_mut()),
            worker: AtomicUsize::new(worker),
            place: Mutex::new(Place {
                shared,
                worker,
                token,
            }),
            state,
        })
    }

    /// Before parking the calling coroutine (on a worker) for `dir`, after
    /// `clear` and a `WouldBlock`: moves the registration to the
    /// coroutine's worker if it lives elsewhere, then registers its waker.
    /// Returns false if readiness arrived since `clear` and the caller
    /// should retry at once.
    ///
    /// # Errors
    ///
    /// Registering with the coroutine's worker failed while the runtime the
    /// socket was registered with is shutting down (no poller watches it).
    pub(crate) fn wait(&self, dir: u8, source: &mut impl mio::event::Source) -> io::Result<bool> {
        let header = super::worker::current_header()
            .expect("a registered wait is made by a coroutine on a worker");
        self.wait_with(dir, source, header.into_waker())
    }

    /// [`wait`](Self::wait) with a given waker (a future's, polled by a
    /// coroutine on a worker).
    pub(crate) fn wait_with(
        &self,
        dir: u8,
        source: &mut impl mio::event::Source,
        waker: Waker,
    ) -> io::Result<bool> {
        if let Some((shared, home)) = poller_home() {
            if home != self.worker.load(Ordering::Relaxed)
                || !std::ptr::eq(Arc::as_ptr(shared), self.runtime.load(Ordering::Relaxed))
            {
                self.move_to(shared, home, source)?;
            }
        }
        Ok(self.state.wait(dir, waker))
    }

    /// Moves the registration to worker `to` of `shared`, unless it is
    /// there already or, while the runtime it is with runs, a waiter is
    /// registered (the socket is in use from where it is: moving it back
    /// and forth would cost two `epoll_ctl` per wait) or registering there
    /// fails (the socket then stays where it is, still watched).
    fn move_to(
        &self,
        shared: &Arc<super::Shared>,
        to: usize,
        source: &mut impl mio::event::Source,
    ) -> io::Result<()> {
        let mut place = self.place.lock().unwrap_or_else(|p| p.into_inner());
        if place.worker == to && Arc::ptr_eq(&place.shared, shared) {
            return Ok(());
        }
        // Nobody polls the driver of a runtime that shuts down: move even
        // if waiters are registered (its shutdown woke those that waited
        // then; see "Runtimes").
        let old_runs = !place.shared.shutdown.load(Ordering::Acquire);
        if old_runs && self.state.has_waiters() {
            return Ok(());
        }
        let token = match shared.workers[to].driver.add(source, &self.state) {
            Ok(t) => t,
            Err(_) if old_runs => return Ok(()),
            Err(e) => return Err(e),
        };
        // Registered with both pollers now; from here on `to`'s reports
        // the socket, so the old registration can go.
        let d = &place.shared.workers[place.worker].driver;
        let _ = d.registry.deregister(source);
        d.remove(place.token);
        *place = Place {
            shared: Arc::clone(shared),
            worker: to,
            token,
        };
        self.runtime
            .store(Arc::as_ptr(shared).cast_mut(), Ordering::Relaxed);
        self.worker.store(to, Ordering::Relaxed);
        // As a fresh registration: the next attempt decides.
        self.state.set(READABLE | WRITABLE);
        Ok(())
    }

    /// Removes the calling coroutine's waker for `dir`, registered by a
    /// wait that ended on its deadline instead.
    pub(crate) fn forget(&self, dir: u8) {
        if let Some(header) = super::worker::current_header() {
            self.state.forget(dir, &header.into_waker());
        }
    }

    /// Deregisters `source`; call before dropping the registration.
    pub(crate) fn deregister(&self, source: &mut impl mio::event::Source) {
        let place = self.place.lock().unwrap_or_else(|p| p.into_inner());
        let d = &place.shared.workers[place.worker].driver;
        let _ = d.registry.deregister(source);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let place = self.place.get_mut().unwrap_or_else(|p| p.into_inner());
        place.shared.workers[place.worker]
            .driver
            .remove(place.token);
    }
}

impl DriverHandle {
    /// Wakes the worker if it sleeps in `poll` (or makes its next poll
    /// return at once).
    pub(crate) fn unpark(&self) {
        // An eventfd write fails only if the counter would overflow, which
        // means a wake-up is pending anyway.
        // The runtime's own eventfd write: never a parking hook.
        let _ = crate::hook::bypass(|| self.waker.wake());
    }

    /// Registers `source` (edge-triggered, both directions) under a new
    /// token that maps to `state`; returns the token.
    fn add(&self, source: &mut impl mio::event::Source, state: &Arc<IoState>) -> io::Result<usize> {
        let token = {
            let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
            let t = io.free.pop().unwrap_or_else(|| {
                io.entries.push(None);
                io.entries.len() - 1
            });
            io.entries[t] = Some(Arc::clone(state));
            self.registered.fetch_add(1, Ordering::Relaxed);
            t
        };
        let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
        if let Err(e) = self.registry.register(source, mio::Token(token), interest) {
            self.remove(token);
            return Err(e);
        }
        Ok(token)
    }

    /// Sets both readiness bits of every socket registered here and wakes
    /// all their waiters: called when the runtime shuts down, so that
    /// waiters of other runtimes retry and move their socket to a poller
    /// that still runs (see "Runtimes" in the module docs).
    pub(crate) fn wake_all_io(&self) {
        let mut woken = Vec::new();
        {
            // Lock order as in `Driver::poll_for`: the slab, then an
            // `IoState`'s waiters.
            let io = self.io.lock().unwrap_or_else(|p| p.into_inner());
            for state in io.entries.iter().flatten() {
                state.fire(READABLE | WRITABLE, &mut woken);
            }
        }
        for waker in woken {
            wake_contained(waker);
        }
    }

    fn remove(&self, token: usize) {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = io.entries.get_mut(token) {
            if e.take().is_some() {
                self.registered.fetch_sub(1, Ordering::Relaxed);
                io.free.push(token);
            }
        }
    }
}

/// The worker's own half of the driver.
pub(crate) struct Driver {
    poll: RefCell<mio::Poll>,
    events: RefCell<mio::Events>,
    timers: RefCell<Timers>,
    /// `timers`' length, published for [`DriverHandle::timers`].
    armed: Arc<AtomicUsize>,
    /// The thread's clock reading as `fire_timers` last saw it (see there).
    seen: Cell<Option<Instant>>,
    /// Wakers an I/O poll collected, reused from poll to poll (so a poll
    /// allocates nothing).
    woken: RefCell<Vec<Waker>>,
}

impl Driver {
    /// A poller and the handle other threads use to reach it. The poller
    /// moves to the worker thread, which builds its [`Driver`] from it.
    pub(crate) fn pair() -> io::Result<(mio::Poll, DriverHandle)> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE_TOKEN)?;
        let registry = poll.registry().try_clone()?;
        Ok((
            poll,
            DriverHandle {
                waker,
                registry,
                io: Mutex::new(IoSlab::default()),
                registered: AtomicUsize::new(0),
                timers: Arc::new(AtomicUsize::new(0)),
            },
        ))
    }

    /// The worker's driver over the poller from [`pair`](Self::pair), and
    /// that call's `handle`.
    pub(crate) fn new(poll: mio::Poll, handle: &DriverHandle) -> Driver {
        // This thread fires the timers (and so refreshes the reading) from
        // here on.
        crate::time::keep_readings();
        Driver {
            poll: RefCell::new(poll),
            // As tokio's. With 256, `tcp_echo workers=2 n=1000` made 11,291
            // `epoll_wait` calls per 50,000 round trips (strace -c), with
            // 1024 8,078 (tokio: 7,492); median of 5 alternating runs 9.14
            // -> 8.16 µs per round trip.
            events: RefCell::new(mio::Events::with_capacity(1024)),
            timers: RefCell::new(Timers::new()),
            armed: Arc::clone(&handle.timers),
            seen: Cell::new(None),
            woken: RefCell::new(Vec::new()),
        }
    }

    /// Publishes the number of armed timers. Only this worker writes it:
    /// a plain store, no read-modify-write.
    fn publish(&self, timers: &Timers) {
        self.armed.store(timers.len(), Ordering::Relaxed);
    }

    /// Sets the timer of coroutine `task`, which has just parked until
    /// `deadline` (`None`: no deadline); `old` is the timer its previous
    /// timed wait left armed, if any. Returns the timer to keep with the
    /// coroutine (`Running::timer`) for its next park, or for
    /// [`disarm`](Self::disarm) when it finishes.
    ///
    /// A wait that ends before its deadline leaves its timer armed while
    /// its coroutine runs on: the coroutine's next timed wait moves it to
    /// the new deadline in place, its next wait without one disarms it,
    /// and so does its end. Disarming at every resume and arming again at
    /// the next park cost a heap removal and insertion, a slot and two
    /// locked instructions on the task's count per timed wait; a waiter in
    /// a `recv_timeout` loop parks again within a few hundred nanoseconds.
    /// So each coroutine holds at most one timer, whose waker references
    /// only that coroutine's own (live) task: memory stays flat however
    /// many waits end early, and a finished coroutine holds none. A timer
    /// left armed can still fire while its coroutine runs; that is a
    /// spurious wake-up (the next park returns at once), which every wait
    /// loop allows.
    #[inline]
    pub(crate) fn arm(
        &self,
        old: Option<TimerKey>,
        deadline: Option<Instant>,
        task: &TaskRef,
    ) -> Option<TimerKey> {
        if old.is_none() && deadline.is_none() {
            return None;
        }
        let owner = task.as_ptr() as usize;
        let Some(d) = deadline else {
            self.disarm(old, task);
            return None;
        };
        let mut timers = self.timers.borrow_mut();
        if let Some(key) = old.and_then(|k| timers.rearm(k, owner, d)) {
            return Some(key);
        }
        let key = timers.insert(d, owner, task.waker());
        self.publish(&timers);
        Some(key)
    }

    /// Arms a one-off timer for `owner` (an odd tag, so never a task's
    /// address) that wakes `waker` at `deadline` (a future's sleep,
    /// `crate::hyper_rt`), until [`cancel_waker_timer`](Self::cancel_waker_timer).
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))]
    pub(crate) fn add_waker_timer(
        &self,
        deadline: Instant,
        owner: usize,
        waker: Waker,
    ) -> TimerKey {
        let mut timers = self.timers.borrow_mut();
        let key = timers.insert(deadline, owner, waker);
        self.publish(&timers);
        key
    }

    /// Disarms a timer of [`add_waker_timer`](Self::add_waker_timer), if
    /// it has not fired. The timers are never borrowed while user code
    /// runs (every method here drops its borrow before it wakes or drops a
    /// waker), so the `try_borrow_mut` is a defence only: were they
    /// borrowed, the timer would fire later as a spurious wake-up.
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))]
    pub(crate) fn cancel_waker_timer(&self, key: TimerKey, owner: usize) {
        let waker = match self.timers.try_borrow_mut() {
            Ok(mut timers) => {
                let w = timers.cancel(key, owner);
                self.publish(&timers);
                w
            }
            Err(_) => None,
        };
        // Outside the borrow: it may be the last reference to a task.
        drop(waker);
    }

    /// Disarms `key`'s timer (of coroutine `task`), if any and not fired.
    /// Only the check is inlined: most coroutines end with no timer armed
    /// (6 fewer instructions per cold spawn and join, of about 1,740).
    #[inline(always)]
    pub(crate) fn disarm(&self, key: Option<TimerKey>, task: &TaskRef) {
        if let Some(key) = key {
            self.disarm_key(key, task);
        }
    }

    /// [`disarm`](Self::disarm)'s work.
    #[inline(never)]
    fn disarm_key(&self, key: TimerKey, task: &TaskRef) {
        let waker = {
            let mut timers = self.timers.borrow_mut();
            let w = timers.cancel(key, task.as_ptr() as usize);
            self.publish(&timers);
            w
        };
        // Outside the borrow (not that it can be the task's last
        // reference: the caller holds one).
        drop(waker);
    }

    /// Wakes every timer whose deadline has passed, in deadline order.
    ///
    /// A busy worker calls this every few runs (every 8th, `next_work`).
    /// When a coroutine has read the clock since the last call (a timed
    /// wait taking its deadline does), that reading is at most those few
    /// runs old; if it puts the earliest deadline more than `NEAR` (1 ms)
    /// ahead, nothing is due unless those runs took longer than that, and
    /// the call skips its own clock read. (A timer due then fires one call
    /// later; with no fresh reading every call reads the clock.) In a
    /// 1-worker `recv_timeout` ping-pong this was a clock read every 4
    /// round trips.
    pub(crate) fn fire_timers(&self) {
        let Some(next) = self.timers.borrow().next_deadline() else {
            return;
        };
        let reading = crate::time::reading();
        if reading != self.seen.get() {
            self.seen.set(reading);
            if reading.is_some_and(|at| at + NEAR < next) {
                return;
            }
        }
        // Kept as the worker's reading: a coroutine this wakes sees its
        // deadline passed without reading the clock again.
        let now = crate::time::now();
        self.seen.set(Some(now));
        loop {
            let waker = {
                let mut timers = self.timers.borrow_mut();
                let w = timers.pop_expired(now);
                self.publish(&timers);
                w
            };
            let Some(waker) = waker else { break };
            wake_contained(waker);
        }
    }

    /// How long the worker may sleep: until the earliest timer.
    fn timeout(&self) -> Option<Duration> {
        let next = self.timers.borrow().next_deadline()?;
        let now = crate::time::now();
        // Not a fresh reading for the `fire_timers` after the sleep.
        self.seen.set(Some(now));
        Some(next.saturating_duration_since(now))
    }

    /// Polls for I/O events, sleeping up to the next timer (or not at all
    /// with `block == false`), then dispatches events and fires timers.
    pub(crate) fn poll(&self, handle: &DriverHandle, block: bool) -> Polled {
        let timeout = if block {
            self.timeout()
        } else {
            Some(Duration::ZERO)
        };
        self.poll_for(handle, timeout)
    }

    /// As `poll` with `block == true`, but sleeps at most `max`.
    pub(crate) fn poll_at_most(&self, handle: &DriverHandle, max: Duration) -> Polled {
        let timeout = self.timeout().map_or(max, |t| t.min(max));
        self.poll_for(handle, Some(timeout))
    }

    /// Polls with `timeout` (`None`: no limit), then dispatches events and
    /// fires timers.
    fn poll_for(&self, handle: &DriverHandle, timeout: Option<Duration>) -> Polled {
        let mut events = self.events.borrow_mut();
        if let Err(e) = self.poll.borrow_mut().poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "epoll_wait failed");
            }
        }
        let mut polled = Polled::default();
        let mut woken = self.woken.borrow_mut();
        {
            // Lock order: a slab, then an `IoState`'s waiters (as in
            // `Registration::move_to`: its place, then either).
            let io = handle.io.lock().unwrap_or_else(|p| p.into_inner());
            for ev in events.iter() {
                if ev.token() == WAKE_TOKEN {
                    polled.wake_up = true;
                    continue;
                }
                polled.io = true;
                let mut bits = 0;
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    bits |= READABLE;
                }
                if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                    bits |= WRITABLE;
                }
                if let Some(Some(state)) = io.entries.get(ev.token().0) {
                    state.fire(bits, &mut woken);
                }
            }
        }
        drop(events);
        for waker in woken.drain(..) {
            wake_contained(waker);
        }
        drop(woken);
        self.fire_timers();
        polled
    }
}

/// What a [`Driver::poll`] saw: how an idle worker tells what woke it
/// (see `Local::sleep`'s adaptive spin).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Polled {
    /// Some registered fd had an event.
    pub(crate) io: bool,
    /// Another thread wrote the wake-up eventfd (`DriverHandle::unpark`).
    pub(crate) wake_up: bool,
}

/// Wakes `waker` from the worker loop. It may be a future's own waker
/// (a socket polled by `Io::poll_op`, a `hyper_rt::Sleep`), which is user
/// code: a panic in it is contained and reported, never unwound into the
/// loop.
fn wake_contained(waker: Waker) {
    super::worker::contain("a waker woken by the poller or a timer", || waker.wake());
}

/// For `select`: the calling coroutine's waker, registered for `fd`'s
/// readiness (a duplicate registered with its worker's poller) until
/// dropped.
pub(crate) struct FdWatch {
    dup: std::os::fd::OwnedFd,
    reg: Registration,
    bit: u8,
}

impl FdWatch {
    /// `None` off a worker's coroutine, or if the fd cannot be duplicated
    /// or registered (the select then polls).
    pub(crate) fn new(fd: RawFd, write: bool) -> Option<FdWatch> {
        use std::os::fd::AsRawFd;
        if !waits_registered() {
            return None;
        }
        let dup = crate::net::dup(fd).ok()?;
        let raw = dup.as_raw_fd();
        let reg = Registration::new(&mut mio::unix::SourceFd(&raw)).ok()?;
        let bit = if write { WRITABLE } else { READABLE };
        // The poller reports the fd's state at registration too: only its
        // event sets the bit from here on.
        reg.state.clear(READABLE | WRITABLE);
        reg.wait(bit, &mut mio::unix::SourceFd(&raw)).ok()?;
        Some(FdWatch { dup, reg, bit })
    }
}

impl Drop for FdWatch {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        self.reg.forget(self.bit);
        self.reg
            .deregister(&mut mio::unix::SourceFd(&self.dup.as_raw_fd()));
    }
}

/// Parks the calling coroutine (on a worker) until one of `fds` is ready
/// for what its `events` ask (`POLLIN`/`POLLPRI` as readable, `POLLOUT` as
/// writable; errors and hang-ups count as both), or until `deadline`; may
/// return early. For the blocking-call hooks (`crate::hook`): each fd is
/// duplicated and the duplicate registered for this wait only, so nothing
/// stays behind once the call returns (see the hook module's docs).
///
/// # Errors
///
/// The caller is not a coroutine on a worker, or an fd could not be
/// duplicated or registered: the caller then blocks instead.
pub(crate) fn park_on_fds(
    fds: &[(RawFd, libc::c_short)],
    deadline: Option<Instant>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if !waits_registered() {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    let mut regs = Vec::with_capacity(fds.len());
    for &(fd, events) in fds {
        let mut dir = 0;
        if events & (libc::POLLIN | libc::POLLPRI) != 0 {
            dir |= READABLE;
        }
        if events & libc::POLLOUT != 0 {
            dir |= WRITABLE;
        }
        if fd < 0 || dir == 0 {
            continue;
        }
        let dup = crate::net::dup(fd)?;
        let raw = dup.as_raw_fd();
        let reg = Registration::new(&mut mio::unix::SourceFd(&raw))?;
        // The caller found the fd not ready: only an event from the poller
        // (which reports an fd ready at registration too) wakes us.
        reg.state.clear(READABLE | WRITABLE);
        regs.push((dup, reg, dir));
    }
    let mut park = true;
    for (dup, reg, dir) in &regs {
        for bit in [READABLE, WRITABLE] {
            if dir & bit != 0 && !reg.wait(bit, &mut mio::unix::SourceFd(&dup.as_raw_fd()))? {
                park = false;
            }
        }
    }
    if park {
        crate::time::park_until(deadline);
    }
    for (dup, reg, dir) in regs {
        for bit in [READABLE, WRITABLE] {
            if dir & bit != 0 {
                reg.forget(bit);
            }
        }
        reg.deregister(&mut mio::unix::SourceFd(&dup.as_raw_fd()));
        drop(reg);
        drop(dup);
    }
    Ok(())
}

/// [`park_on_fds`] for one fd and one direction.
pub(crate) fn park_on_fd(fd: RawFd, write: bool, deadline: Option<Instant>) -> io::Result<()> {
    let events = if write { libc::POLLOUT } else { libc::POLLIN };
    park_on_fds(&[(fd, events)], deadline)
}

/// A hooked fd's registration with this worker's poller, kept across waits
/// (see [`hook_registration`]).
struct HookReg {
    /// The fd's generation (`crate::hook`) when registered: a different
    /// one now means the fd was closed or replaced since.
    gen: u32,
    token: usize,
    state: Arc<IoState>,
}

thread_local! {
    /// This worker's registrations of fds the blocking-call hooks waited
    /// on, indexed by fd (fd numbers are dense and small, as the kernel's
    /// own fd table is indexed): a wait finds its fd's without hashing.
    /// Bounded: the hooks keep registrations only for fds below their
    /// generation table's size (`crate::hook`, 65,536 fds: at most 1.5 MiB
    /// here); a wait on a higher fd registers a duplicate for that wait.
    static HOOK_REGS: RefCell<Vec<Option<HookReg>>> = const { RefCell::new(Vec::new()) };
}

/// The calling worker's registration of `fd` (generation `gen`) for the
/// blocking-call hooks, made on first use and kept while the fd lives:
/// its state, and whether it was made just now (then the poller reports
/// the fd's present readiness at its next poll, so a waiter may park at
/// once; a kept one must be cleared and the call retried first, as its
/// readiness bits say only what happened since they were last cleared).
///
/// The registration is of the fd itself, edge-triggered. A `close` of the
/// fd removes it from the poller (the kernel does, once no other fd refers
/// to the same open file); a later fd with the same number has another
/// generation, so its first wait drops the old entry and registers anew.
///
/// # Errors
///
/// Not a coroutine on a worker, or the poller refused the fd (already
/// registered there some other way): the caller waits on a duplicate.
pub(crate) fn hook_registration(fd: RawFd, gen: u32) -> io::Result<(Arc<IoState>, bool)> {
    if waiter_home().is_none() {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    let slot = usize::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // The fast path, a kept registration: no `Shared` touched (its count
    // is shared by every worker).
    let kept = HOOK_REGS.with(|t| match t.borrow().get(slot) {
        Some(Some(r)) if r.gen == gen => Some(Arc::clone(&r.state)),
        _ => None,
    });
    if let Some(state) = kept {
        return Ok((state, false));
    }
    let Some((shared, worker)) = waiter_home().map(|(s, w)| (Arc::clone(s), w)) else {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    };
    let driver = &shared.workers[worker].driver;
    HOOK_REGS.with(|t| {
        let mut t = t.borrow_mut();
        if let Some(old) = t.get_mut(slot).and_then(Option::take) {
            // Gone already if the fd was closed; if its number now names
            // another file, that one was never registered here.
            let _ = driver.registry.deregister(&mut mio::unix::SourceFd(&fd));
            driver.remove(old.token);
        }
        let state = Arc::new(IoState::default());
        let token = driver.add(&mut mio::unix::SourceFd(&fd), &state)?;
        if t.len() <= slot {
            t.resize_with(slot + 1, || None);
        }
        t[slot] = Some(HookReg {
            gen,
            token,
            state: Arc::clone(&state),
        });
        Ok((state, true))
    })
}

/// Parks the calling coroutine until `state` (a [`hook_registration`])
/// reports `dir` (`READABLE` or `WRITABLE`), unless it did since it was
/// last cleared, or until `deadline`.
pub(crate) fn park_on_state(state: &IoState, dir: u8, deadline: Option<Instant>) {
    let Some(header) = super::worker::current_header() else {
        return;
    };
    let waker = header.into_waker();
    if !state.wait(dir, waker.clone()) {
        // Ready already: nothing was registered.
        return;
    }
    crate::time::park_until(deadline);
    // Woken by the deadline (or spuriously): leave no waker behind. Woken
    // by readiness, there is none to look for: `dir`'s bit was clear when
    // the waker was registered (`wait` checks it under the lock), and the
    // only one to set it since is this worker's poller, whose `fire` took
    // the waker in the same step, before this coroutine could run again.
    // (`wake_all_io`, on shutdown, sets and takes from another thread: a
    // waker this misses stays with the shutting-down runtime's state.)
    // Skipping the lock and the scan saved 82 instructions per wait
    // (callgrind, `tcp_echo_std`).
    if !IoState::is_ready(state.snapshot(), dir) {
        state.forget(dir, &waker);
    }
}

/// Drops this worker's kept hook registration of `fd`, if any: called
/// before `net` registers the fd itself (a socket used through the hooks,
/// then wrapped with `from_std`), as one poller takes an fd only once.
pub(crate) fn drop_hook_registration(fd: RawFd) {
    // `poller_home`: `net` registers the fd there for a future polled on
    // the worker's stack too.
    let Some((shared, worker)) = poller_home().map(|(s, w)| (Arc::clone(s), w)) else {
        return;
    };
    let driver = &shared.workers[worker].driver;
    let Ok(slot) = usize::try_from(fd) else {
        return;
    };
    // `try_with`: not during the thread's exit.
    let _ = HOOK_REGS.try_with(|t| {
        if let Some(old) = t.borrow_mut().get_mut(slot).and_then(Option::take) {
            let _ = driver.registry.deregister(&mut mio::unix::SourceFd(&fd));
            driver.remove(old.token);
        }
    });
}
