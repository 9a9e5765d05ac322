//! A worker's driver: where it sleeps, its timers, and its I/O poller.
//!
//! Each worker owns a mio `Poll` (epoll). mio is the event loop tokio runs
//! on: well kept, edge-triggered, and its `Waker` (an eventfd) gives the
//! token semantics the idle protocol needs: a wake-up sent before the worker
//! sleeps makes the next `poll` return at once.
//!
//! - **Sleeping.** An idle worker polls with a timeout that ends at its
//!   earliest timer. Another thread wakes it through [`DriverHandle::unpark`].
//! - **Timers** live with the worker that armed them, in a binary heap of
//!   deadlines and wakers. Expired timers wake their coroutine; they never
//!   run coroutine code themselves, and no thread but the worker touches
//!   them.
//! - **I/O.** A socket is registered (edge-triggered, both directions) with
//!   the driver of the worker whose coroutine first waits on it. Each
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

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

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
    readiness: AtomicU8,
    /// Coroutines (or threads) waiting, by direction.
    waiters: Mutex<[Vec<Waker>; 2]>,
}

impl IoState {
    /// Clears `dir`'s readiness bit before an attempt (see the module docs).
    pub(crate) fn clear(&self, dir: u8) {
        self.readiness.fetch_and(!dir, Ordering::AcqRel);
    }

    /// Registers `waker` for `dir` unless readiness arrived since `clear`.
    /// Returns false if the caller should retry at once instead of parking.
    pub(crate) fn wait(&self, dir: u8, waker: &Waker) -> bool {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if self.readiness.load(Ordering::Acquire) & dir != 0 {
            return false;
        }
        let list = &mut w[usize::from(dir == WRITABLE)];
        if !list.iter().any(|x| x.will_wake(waker)) {
            list.push(waker.clone());
        }
        true
    }

    fn fire(&self, bits: u8) {
        self.readiness.fetch_or(bits, Ordering::AcqRel);
        let woken: Vec<Waker> = {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            if bits & READABLE != 0 {
                out.append(&mut w[0]);
            }
            if bits & WRITABLE != 0 {
                out.append(&mut w[1]);
            }
            out
        };
        for waker in woken {
            waker.wake();
        }
    }
}

/// A socket's registration with one driver; deregisters on drop.
pub(crate) struct Registration {
    handle: Arc<super::Shared>,
    worker: usize,
    token: usize,
    pub(crate) state: Arc<IoState>,
}

impl Registration {
    /// Registers `source` with the calling worker's driver.
    pub(crate) fn new(source: &mut impl mio::event::Source) -> io::Result<Option<Registration>> {
        let Some((shared, worker)) = super::worker::current_worker() else {
            return Ok(None);
        };
        let d = &shared.workers[worker].driver;
        let state = Arc::new(IoState::default());
        let token = {
            let mut io = d.io.lock().unwrap_or_else(|p| p.into_inner());
            let t = io.free.pop().unwrap_or_else(|| {
                io.entries.push(None);
                io.entries.len() - 1
            });
            io.entries[t] = Some(Arc::clone(&state));
            t
        };
        let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
        if let Err(e) = d.registry.register(source, mio::Token(token), interest) {
            d.remove(token);
            return Err(e);
        }
        // Fresh registrations start ready: the first attempt decides.
        state
            .readiness
            .store(READABLE | WRITABLE, Ordering::Release);
        Ok(Some(Registration {
            handle: shared,
            worker,
            token,
            state,
        }))
    }

    /// Deregisters `source`; call before dropping the registration.
    pub(crate) fn deregister(&self, source: &mut impl mio::event::Source) {
        let d = &self.handle.workers[self.worker].driver;
        let _ = d.registry.deregister(source);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.handle.workers[self.worker].driver.remove(self.token);
    }
}

impl DriverHandle {
    /// Wakes the worker if it sleeps in `poll` (or makes its next poll
    /// return at once).
    pub(crate) fn unpark(&self) {
        // An eventfd write fails only if the counter would overflow, which
        // means a wake-up is pending anyway.
        let _ = self.waker.wake();
    }

    fn remove(&self, token: usize) {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = io.entries.get_mut(token) {
            if e.take().is_some() {
                io.free.push(token);
            }
        }
    }
}

/// A timer: wakes `waker` at `deadline` unless cancelled.
struct Timer {
    deadline: Instant,
    seq: u64,
    waker: Waker,
    cancelled: Rc<Cell<bool>>,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.seq) == (o.deadline, o.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(o.deadline, o.seq))
    }
}

/// Cancels its timer when dropped (the wait ended some other way).
pub(crate) struct TimerGuard(Rc<Cell<bool>>);

impl Drop for TimerGuard {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// The worker's own half of the driver.
pub(crate) struct Driver {
    poll: RefCell<mio::Poll>,
    events: RefCell<mio::Events>,
    timers: RefCell<BinaryHeap<Reverse<Timer>>>,
    seq: Cell<u64>,
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
            },
        ))
    }

    /// The worker's driver over the poller from [`pair`](Self::pair).
    pub(crate) fn new(poll: mio::Poll) -> Driver {
        Driver {
            poll: RefCell::new(poll),
            events: RefCell::new(mio::Events::with_capacity(256)),
            timers: RefCell::new(BinaryHeap::new()),
            seq: Cell::new(0),
        }
    }

    /// Arms a timer that wakes `waker` at `deadline`.
    pub(crate) fn add_timer(&self, deadline: Instant, waker: Waker) -> TimerGuard {
        let cancelled = Rc::new(Cell::new(false));
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        self.timers.borrow_mut().push(Reverse(Timer {
            deadline,
            seq,
            waker,
            cancelled: Rc::clone(&cancelled),
        }));
        TimerGuard(cancelled)
    }

    /// Wakes every timer whose deadline has passed, in deadline order.
    pub(crate) fn fire_timers(&self) {
        if self.timers.borrow().is_empty() {
            return;
        }
        let now = Instant::now();
        loop {
            let t = {
                let mut heap = self.timers.borrow_mut();
                match heap.peek() {
                    Some(Reverse(t)) if t.deadline <= now => heap.pop().map(|Reverse(t)| t),
                    _ => None,
                }
            };
            let Some(t) = t else { break };
            if !t.cancelled.get() {
                t.waker.wake();
            }
        }
    }

    /// How long the worker may sleep: until the earliest live timer.
    fn timeout(&self) -> Option<Duration> {
        let mut heap = self.timers.borrow_mut();
        while heap.peek().is_some_and(|Reverse(t)| t.cancelled.get()) {
            heap.pop();
        }
        heap.peek()
            .map(|Reverse(t)| t.deadline.saturating_duration_since(Instant::now()))
    }

    /// Polls for I/O events, sleeping up to the next timer (or not at all
    /// with `block == false`), then dispatches events and fires timers.
    pub(crate) fn poll(&self, handle: &DriverHandle, block: bool) {
        let timeout = if block {
            self.timeout()
        } else {
            Some(Duration::ZERO)
        };
        let mut events = self.events.borrow_mut();
        if let Err(e) = self.poll.borrow_mut().poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "epoll_wait failed");
            }
        }
        let mut ready: Vec<(Arc<IoState>, u8)> = Vec::new();
        {
            let io = handle.io.lock().unwrap_or_else(|p| p.into_inner());
            for ev in events.iter() {
                if ev.token() == WAKE_TOKEN {
                    continue;
                }
                let mut bits = 0;
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    bits |= READABLE;
                }
                if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                    bits |= WRITABLE;
                }
                if let Some(Some(state)) = io.entries.get(ev.token().0) {
                    ready.push((Arc::clone(state), bits));
                }
            }
        }
        drop(events);
        for (state, bits) in ready {
            state.fire(bits);
        }
        self.fire_timers();
    }
}
