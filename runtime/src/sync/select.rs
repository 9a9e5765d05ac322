//! Waiting for the first of several operations: channel receives and
//! sends, a coroutine's end, a file descriptor's readiness, a deadline.
//!
//! [`Select`] has crossbeam-channel's shape (add operations, then
//! [`select`](Select::select) one, or ask which is [`ready`](Select::ready))
//! and Go's semantics: among the operations ready at once, one is picked
//! at random, so none starves; [`try_select`](Select::try_select) is the
//! `default` case, [`select_timeout`](Select::select_timeout) the
//! deadline. It works from coroutines (which park) and plain threads
//! (which block).
//!
//! # How it waits
//!
//! Go's way: a round tries the operations in a random order (a fresh
//! permutation each round, so the first ready one met is a uniform pick
//! among the ready ones) and completes the first that can complete now (a
//! receive takes its value then, so [`SelectedOperation::recv`] never
//! waits). An operation that is not ready stays registered with its
//! object (a channel wakes its watchers at its next change: a value queued
//! or taken, a receiver waiting, an end gone); with none ready, the caller
//! parks. Once woken, each operation in turn unregisters and tries again.
//! A channel receive does each step, the try and the registration or the
//! unregistration and the try, under one lock of its channel, and a select
//! in a coroutine allocates nothing (once each channel's list of watchers
//! has room) unless it has more than four operations or receives a value
//! of more than four words (on a plain thread its waker is one
//! allocation): callgrind counted 18% fewer instructions per round trip of `select_pingpong` (workers=1) than with a separate
//! lock per step and a box per operation and value.
//!
//! A receive's registration is kept by its channel past the select (one
//! per channel, the first a receiving select makes there; later ones, and
//! sends, register by key as above): the next select of the same
//! coroutine finds it in place, and nothing is unregistered. A loop that
//! selects on the same channels again and again (a server's event loop)
//! saves a lock and a waker's clone and drop per channel and round
//! (callgrind, `select_pingpong workers=1`: 2.7% fewer instructions). The
//! cost: a value sent later on a channel such a select did not take from
//! may wake its coroutine once more, spuriously; every wait of the runtime
//! then parks again.
//!
//! Why not crossbeam-channel's own `Select`: greenstack's channels,
//! coroutines and file descriptors are not crossbeam's, and parking must
//! park a coroutine, not its worker.
//!
//! # Limits
//!
//! - A send is ready when it would complete without waiting: a rendezvous
//!   channel (`sync_channel(0)`) is ready for a sender only while a
//!   receiver waits in `recv`. A select sending on one while the only
//!   receiver also selects never matches (Go's select would).
//! - File-descriptor readiness parks a coroutine on its worker's poller;
//!   a plain thread and a `block_on` root re-poll the descriptors every
//!   millisecond while they wait (as does a select on a oneshot receiver
//!   whose waker slot another waiter holds).
//! - A `JoinHandle` has one waker slot: two selects waiting on the same
//!   handle at once take it from each other, and one may not wake.
//! - `select` and `ready` are not cancellation points (see
//!   [`crate::cancel`]); their timeout forms are.

use std::cell::Cell;
use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{RecvError, SendError};
use std::task::Waker;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::chan::Chan;
use super::{mpmc, mpsc, oneshot};
use crate::cancel::Point;
use crate::JoinHandle;

use imp::{Entry, Kind, Op, Sealed, Value};

mod imp {
    use std::task::Waker;

    /// What a completed receive got, an `Option<Result<T, RecvError>>`
    /// (`Some` until taken), its type erased: inline for values of up to
    /// four words (a `Result<u64, RecvError>`, a `String`), so a select on
    /// a channel of small values allocates nothing. The value is taken
    /// out where it was written, not moved with its box (a copy right
    /// after the write stalls on the stores, as `ChanOp::look_into` says).
    ///
    /// Its type is checked against the `TypeId` kept beside it, not
    /// through `Any`'s virtual `type_id`, whose 16-byte result came back
    /// through memory and was read at once (the select's caller's hottest
    /// instruction, `perf annotate` of `select_pingpong workers=1`).
    pub(super) struct Value {
        ty: std::any::TypeId,
        boxed: smallbox::SmallBox<dyn std::any::Any, smallbox::space::S4>,
    }

    impl Value {
        pub(super) fn new<T: 'static>(v: T) -> Value {
            Value {
                ty: std::any::TypeId::of::<T>(),
                boxed: smallbox::smallbox!(v),
            }
        }

        /// The value, if it is a `T`.
        pub(super) fn get_mut<T: 'static>(&mut self) -> Option<&mut T> {
            if self.ty != std::any::TypeId::of::<T>() {
                return None;
            }
            let p: *mut dyn std::any::Any = &mut *self.boxed;
            // SAFETY: `ty` is the `TypeId` of the value `new` boxed, and
            // neither field changes after: the box holds a `T`, and the
            // pointer is borrowed from `self` for the reference's life.
            Some(unsafe { &mut *p.cast::<T>() })
        }
    }

    /// One operation of a select.
    pub(super) trait Op {
        /// Whether it would complete now (or fail for good).
        fn ready(&self) -> bool;
        /// Completes it if it can now: `Some` with what a receive got,
        /// `Some(None)` for the others; `None` if not ready.
        fn attempt(&self) -> Option<Option<Value>>;
        /// Wakes `waker` at the next change that may make it ready.
        fn watch(&self, waker: &Waker);
        /// Undoes [`watch`](Self::watch) (nothing if not watching).
        fn unwatch(&self);
        /// The object it was made from, to check a completion against.
        fn object(&self) -> *const ();
        /// Whether readiness must be polled on a plain thread.
        fn polled(&self) -> bool {
            false
        }
        /// One look: [`attempt`](Self::attempt) with `complete`, else
        /// [`ready`](Self::ready). With `watch`, a miss leaves the waker
        /// watching, registered before the look that missed (so a change
        /// after it wakes the waker); a hit leaves nothing watching.
        fn look(&self, complete: bool, watch: Option<&Waker>) -> Option<Option<Value>> {
            look_apart(self, complete, watch)
        }
        /// After a park: stops watching, then one look without watching.
        fn relook(&self, complete: bool) -> Option<Option<Value>> {
            self.unwatch();
            look_apart(self, complete, None)
        }
    }

    /// [`Op::look`] from the operation's separate steps.
    pub(super) fn look_apart<O: Op + ?Sized>(
        op: &O,
        complete: bool,
        watch: Option<&Waker>,
    ) -> Option<Option<Value>> {
        if let Some(w) = watch {
            op.watch(w);
        }
        let got = if complete {
            op.attempt()
        } else {
            op.ready().then_some(None)
        };
        if got.is_some() && watch.is_some() {
            op.unwatch();
        }
        got
    }

    /// An operation as a [`Select`](super::Select) holds it: a channel's
    /// inline, any other boxed.
    pub struct Entry<'a>(pub(super) Kind<'a>);

    pub(super) enum Kind<'a> {
        Chan(super::ChanOp<'a>),
        Other(Box<dyn Op + 'a>),
    }

    impl<'a> Entry<'a> {
        pub(super) fn op(&self) -> &(dyn Op + 'a) {
            match &self.0 {
                Kind::Chan(c) => c,
                Kind::Other(o) => &**o,
            }
        }

        // The loop's calls, direct for a channel's (the one indirect call
        // left is into its channel).

        // A completed receive's value is written to `got`, where the
        // select's caller takes it from (see `ChanOp::look_into`).

        pub(super) fn look(
            &self,
            complete: bool,
            watch: Option<&Waker>,
            got: &mut Option<Value>,
        ) -> bool {
            match &self.0 {
                Kind::Chan(c) => c.look_into(complete, watch, got),
                Kind::Other(o) => put(o.look(complete, watch), got),
            }
        }

        pub(super) fn relook(&self, complete: bool, got: &mut Option<Value>) -> bool {
            match &self.0 {
                Kind::Chan(c) => c.relook_into(complete, got),
                Kind::Other(o) => put(o.relook(complete), got),
            }
        }

        pub(super) fn unwatch(&self) {
            match &self.0 {
                Kind::Chan(c) => c.unwatch(),
                Kind::Other(o) => o.unwatch(),
            }
        }

        pub(super) fn polled(&self) -> bool {
            match &self.0 {
                Kind::Chan(_) => false,
                Kind::Other(o) => o.polled(),
            }
        }
    }

    /// An [`Op`]'s look, as [`Entry::look`] reports it: whether it
    /// completed, what a receive got in `got`.
    pub(super) fn put(looked: Option<Option<Value>>, got: &mut Option<Value>) -> bool {
        match looked {
            Some(v) => {
                *got = v;
                true
            }
            None => false,
        }
    }

    /// Sealed: only greenstack's receivers and senders are selectable.
    pub trait Sealed {}
}

/// A receiver a [`Select`] can wait on: [`mpsc::Receiver`],
/// [`mpmc::Receiver`], [`oneshot::Receiver`].
pub trait SelectRecv<T>: Sealed {
    #[doc(hidden)]
    fn recv_op(&self) -> Entry<'_>;
}

/// A sender a [`Select`] can wait on: [`mpsc::Sender`],
/// [`mpsc::SyncSender`], [`mpmc::Sender`].
pub trait SelectSend<T>: Sealed {
    #[doc(hidden)]
    fn send_op(&self) -> Entry<'_>;
    #[doc(hidden)]
    fn send_now(&self, v: T) -> Result<(), SendError<T>>;
}

/// A channel as a select sees it, its value type erased, so that a
/// [`Select`] holds its channel operations inline (no box per operation).
trait ChanSel {
    fn recv_ready(&self) -> bool;
    fn send_ready(&self) -> bool;
    fn watch(&self, waker: &Waker) -> u64;
    fn unwatch(&self, key: u64);
    /// [`Chan::select_recv`] ([`NO_KEY`]: no watcher), what it got
    /// written to `got`: `Ok` then, else the key.
    fn select_recv(
        &self,
        unwatch: u64,
        watch: Option<&Waker>,
        got: &mut Option<Value>,
    ) -> Result<(), u64>;
}

/// A [`ChanOp`]'s key when it is not watching (a plain word, not an
/// `Option<u64>`: see [`Chan::select_recv`]).
const NO_KEY: u64 = super::chan::NO_WATCH;

impl<T: 'static> ChanSel for Chan<T> {
    fn recv_ready(&self) -> bool {
        Chan::recv_ready(self)
    }

    fn send_ready(&self) -> bool {
        Chan::send_ready(self)
    }

    fn watch(&self, waker: &Waker) -> u64 {
        Chan::watch(self, waker)
    }

    fn unwatch(&self, key: u64) {
        Chan::unwatch(self, key)
    }

    fn select_recv(
        &self,
        unwatch: u64,
        watch: Option<&Waker>,
        got: &mut Option<Value>,
    ) -> Result<(), u64> {
        let v = Chan::select_recv(self, unwatch, watch)?;
        *got = Some(Value::new(Some(v)));
        Ok(())
    }
}

/// Which end of its channel a [`ChanOp`] works. A word, not a `bool`: an
/// entry is made on the stack and then copied into the select's list,
/// and that copy read the byte store of a `bool` (and the enum tags kept
/// in its spare values) as part of an 8-byte load, which the CPU cannot
/// forward from the store (`perf annotate` of `select_pingpong
/// workers=1`: an eighth of the samples of the caller's `select!`).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Side {
    Recv,
    Send,
}

/// A channel receive or send.
struct ChanOp<'a> {
    chan: &'a dyn ChanSel,
    object: *const (),
    side: Side,
    /// Its watcher's key while it watches, else [`NO_KEY`].
    key: Cell<u64>,
}

impl Op for ChanOp<'_> {
    fn ready(&self) -> bool {
        if self.side == Side::Send {
            self.chan.send_ready()
        } else {
            self.chan.recv_ready()
        }
    }

    fn attempt(&self) -> Option<Option<Value>> {
        if self.side == Side::Send {
            return self.ready().then_some(None);
        }
        let mut got = None;
        self.chan.select_recv(NO_KEY, None, &mut got).ok()?;
        Some(got)
    }

    fn watch(&self, waker: &Waker) {
        self.key.set(self.chan.watch(waker));
    }

    fn unwatch(&self) {
        let k = self.key.replace(NO_KEY);
        if k != NO_KEY {
            self.chan.unwatch(k);
        }
    }

    fn object(&self) -> *const () {
        self.object
    }
}

impl ChanOp<'_> {
    // A receive looks, and registers on a miss, under one lock of its
    // channel, and leaves and looks again under one more. What it gets is
    // written once, by the channel, into the caller's `got`, and stays
    // there until the user takes it: returned through each layer, the
    // six-word value was copied three times, each copy's 16-byte loads
    // reading stores of 8 bytes just made, which the CPU cannot forward
    // (`perf annotate` of `select_pingpong workers=1`: the select loop's
    // two hottest instructions).

    /// [`Op::look`], the value written to `got`; true if it completed.
    fn look_into(&self, complete: bool, watch: Option<&Waker>, got: &mut Option<Value>) -> bool {
        if self.side == Side::Send || !complete {
            return imp::put(imp::look_apart(self, complete, watch), got);
        }
        match self.chan.select_recv(NO_KEY, watch, got) {
            Ok(()) => true,
            Err(key) => {
                self.key.set(key);
                false
            }
        }
    }

    /// [`Op::relook`], the value written to `got`; true if it completed.
    fn relook_into(&self, complete: bool, got: &mut Option<Value>) -> bool {
        if self.side == Side::Send || !complete {
            self.unwatch();
            return imp::put(imp::look_apart(self, complete, None), got);
        }
        self.chan
            .select_recv(self.key.replace(NO_KEY), None, got)
            .is_ok()
    }
}

/// A channel end's entry.
fn chan_entry<'a, T: 'static, E>(chan: &'a Chan<T>, end: &'a E, side: Side) -> Entry<'a> {
    Entry(Kind::Chan(ChanOp {
        chan,
        object: end as *const E as *const (),
        side,
        key: Cell::new(NO_KEY),
    }))
}

/// `SelectRecv` for a channel receiver type.
macro_rules! chan_recv {
    ($($recv:ident)::+) => {
        impl<T> Sealed for $($recv)::+<T> {}
        impl<T: 'static> SelectRecv<T> for $($recv)::+<T> {
            fn recv_op(&self) -> Entry<'_> {
                chan_entry(self.chan(), self, Side::Recv)
            }
        }
    };
}

/// `SelectSend` for a channel sender type.
macro_rules! chan_send {
    ($($send:ident)::+) => {
        impl<T> Sealed for $($send)::+<T> {}
        impl<T: 'static> SelectSend<T> for $($send)::+<T> {
            fn send_op(&self) -> Entry<'_> {
                chan_entry(self.chan(), self, Side::Send)
            }
            fn send_now(&self, v: T) -> Result<(), SendError<T>> {
                self.send(v)
            }
        }
    };
}

chan_recv!(mpsc::Receiver);
chan_recv!(mpmc::Receiver);
chan_send!(mpsc::Sender);
chan_send!(mpsc::SyncSender);
chan_send!(mpmc::Sender);

/// A oneshot receive: through the receiver's own waker slot.
struct OneshotOp<'a, T> {
    rx: &'a oneshot::Receiver<T>,
    registered: Cell<bool>,
}

impl<T: 'static> Op for OneshotOp<'_, T> {
    fn ready(&self) -> bool {
        self.rx.is_complete()
    }

    fn attempt(&self) -> Option<Option<Value>> {
        match self.rx.try_recv() {
            Ok(v) => Some(Some(Value::new(Some(Ok::<T, RecvError>(v))))),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Some(Some(Value::new(Some(Err::<T, RecvError>(RecvError)))))
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
        }
    }

    fn watch(&self, waker: &Waker) {
        self.registered.set(self.rx.watch(waker));
    }

    fn unwatch(&self) {
        if self.registered.take() {
            self.rx.unwatch();
        }
    }

    fn object(&self) -> *const () {
        self.rx as *const oneshot::Receiver<T> as *const ()
    }

    fn polled(&self) -> bool {
        // Another receiver (through `&Receiver`) may hold the slot: then
        // the select polls.
        !self.registered.get()
    }
}

impl<T> Sealed for oneshot::Receiver<T> {}
impl<T: 'static> SelectRecv<T> for oneshot::Receiver<T> {
    fn recv_op(&self) -> Entry<'_> {
        Entry(Kind::Other(Box::new(OneshotOp {
            rx: self,
            registered: Cell::new(false),
        })))
    }
}

/// A coroutine's end.
struct JoinOp<'a, T> {
    handle: &'a JoinHandle<T>,
}

impl<T> Op for JoinOp<'_, T> {
    fn ready(&self) -> bool {
        self.handle.is_finished()
    }

    fn attempt(&self) -> Option<Option<Value>> {
        self.ready().then_some(None)
    }

    fn watch(&self, waker: &Waker) {
        self.handle.watch(waker);
    }

    fn unwatch(&self) {
        self.handle.unwatch();
    }

    fn object(&self) -> *const () {
        self.handle as *const JoinHandle<T> as *const ()
    }
}

/// A file descriptor's readiness.
struct FdOp {
    fd: RawFd,
    write: bool,
    watched: Cell<Option<crate::scheduler::driver::FdWatch>>,
}

impl Op for FdOp {
    fn ready(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: if self.write {
                libc::POLLOUT
            } else {
                libc::POLLIN
            },
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let r = crate::hook::bypass(|| unsafe { libc::poll(&mut pfd, 1, 0) });
        // An error (a closed fd) is "ready": the operation would fail now.
        r != 0
    }

    fn attempt(&self) -> Option<Option<Value>> {
        self.ready().then_some(None)
    }

    fn watch(&self, _waker: &Waker) {
        self.watched
            .set(crate::scheduler::driver::FdWatch::new(self.fd, self.write));
    }

    fn unwatch(&self) {
        drop(self.watched.take());
    }

    fn object(&self) -> *const () {
        std::ptr::null()
    }

    fn polled(&self) -> bool {
        // Off a worker (or if registering failed), no poller wakes us.
        // SAFETY: not moved out; read and put back.
        let w = self.watched.take();
        let polled = w.is_none();
        self.watched.set(w);
        polled
    }
}

/// Waits for the first of several operations. See the [module
/// docs](self).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use greenstack_runtime::sync::{mpsc, select::Select};
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let (tx1, rx1) = mpsc::channel::<u32>();
///     let (_tx2, rx2) = mpsc::channel::<&str>();
///     greenstack_runtime::spawn(move || tx1.send(7).unwrap());
///
///     let mut sel = Select::new();
///     let a = sel.recv(&rx1);
///     let b = sel.recv(&rx2);
///     let op = sel.select_timeout(Duration::from_secs(10)).expect("one is ready");
///     match op.index() {
///         i if i == a => assert_eq!(op.recv(&rx1), Ok(7)),
///         i if i == b => unreachable!("nothing is sent on rx2"),
///         _ => unreachable!(),
///     }
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default)]
pub struct Select<'a> {
    /// Inline up to four (a `select!` rarely has more).
    ops: SmallVec<[Option<Entry<'a>>; 4]>,
}

/// An operation [`Select`] picked: complete it with the method for its
/// kind ([`recv`](Self::recv), [`send`](Self::send)); a join or
/// readiness operation needs nothing more.
#[must_use = "a selected receive holds its value: take it with `recv`"]
pub struct SelectedOperation<'a> {
    index: usize,
    object: *const (),
    got: Option<Value>,
    _select: std::marker::PhantomData<&'a ()>,
}

/// [`Select::try_select`] and [`Select::try_ready`] found nothing ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrySelectError;

impl fmt::Display for TrySelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no operation was ready")
    }
}

impl std::error::Error for TrySelectError {}

/// [`Select::select_timeout`] and [`Select::ready_timeout`] found nothing
/// ready by the deadline (or the coroutine was cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectTimeoutError;

impl fmt::Display for SelectTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no operation was ready before the deadline")
    }
}

impl std::error::Error for SelectTimeoutError {}

impl<'a> Select<'a> {
    /// A select with no operations.
    pub fn new() -> Select<'a> {
        Select {
            ops: SmallVec::new(),
        }
    }

    fn add(&mut self, op: Entry<'a>) -> usize {
        self.ops.push(Some(op));
        self.ops.len() - 1
    }

    /// Adds a receive from `r`; returns its index.
    pub fn recv<T>(&mut self, r: &'a impl SelectRecv<T>) -> usize {
        self.add(r.recv_op())
    }

    /// Adds a send on `s` (ready when a send would complete without
    /// waiting); returns its index.
    pub fn send<T>(&mut self, s: &'a impl SelectSend<T>) -> usize {
        self.add(s.send_op())
    }

    /// Adds the end of the coroutine of `h`; returns its index.
    pub fn join<T>(&mut self, h: &'a JoinHandle<T>) -> usize {
        self.add(Entry(Kind::Other(Box::new(JoinOp { handle: h }))))
    }

    /// Adds `fd` becoming readable (or hung up, or in error); returns
    /// its index.
    pub fn readable(&mut self, fd: &'a impl AsRawFd) -> usize {
        self.add(Entry(Kind::Other(Box::new(FdOp {
            fd: fd.as_raw_fd(),
            write: false,
            watched: Cell::new(None),
        }))))
    }

    /// Adds `fd` becoming writable; returns its index.
    pub fn writable(&mut self, fd: &'a impl AsRawFd) -> usize {
        self.add(Entry(Kind::Other(Box::new(FdOp {
            fd: fd.as_raw_fd(),
            write: true,
            watched: Cell::new(None),
        }))))
    }

    /// Removes the operation `index` (the indices of the others stay).
    ///
    /// # Panics
    ///
    /// If there is no such operation.
    pub fn remove(&mut self, index: usize) {
        let op = self.ops.get_mut(index).and_then(Option::take);
        assert!(op.is_some(), "no operation with index {index}");
    }

    /// Waits until an operation is ready and completes it.
    ///
    /// # Panics
    ///
    /// With no operation to wait for (it would wait for ever).
    pub fn select(&mut self) -> SelectedOperation<'a> {
        assert!(self.has_ops(), "a select with no operations");
        self.run(Point::plain(None), true, true)
            .expect("waits for ever")
    }

    /// [`select`](Self::select) if an operation is ready now (Go's
    /// `default` case).
    pub fn try_select(&mut self) -> Result<SelectedOperation<'a>, TrySelectError> {
        self.run(Point::plain(None), false, true)
            .map_err(|_| TrySelectError)
    }

    /// [`select`](Self::select), waiting at most `timeout`. A
    /// cancellation point (see [`crate::cancel`]).
    pub fn select_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<SelectedOperation<'a>, SelectTimeoutError> {
        self.run(Point::new(crate::time::deadline_after(timeout)), true, true)
    }

    /// [`select_timeout`](Self::select_timeout) with a deadline.
    pub fn select_deadline(
        &mut self,
        deadline: Instant,
    ) -> Result<SelectedOperation<'a>, SelectTimeoutError> {
        self.run(Point::new(Some(deadline)), true, true)
    }

    /// Waits until an operation is ready and returns its index, without
    /// completing it: a receive may still find nothing if another
    /// receiver is quicker.
    ///
    /// # Panics
    ///
    /// With no operation to wait for.
    pub fn ready(&mut self) -> usize {
        assert!(self.has_ops(), "a select with no operations");
        self.run(Point::plain(None), true, false)
            .expect("waits for ever")
            .index
    }

    /// [`ready`](Self::ready) if an operation is ready now.
    pub fn try_ready(&mut self) -> Result<usize, TrySelectError> {
        self.run(Point::plain(None), false, false)
            .map(|o| o.index)
            .map_err(|_| TrySelectError)
    }

    /// [`ready`](Self::ready), waiting at most `timeout`. A cancellation
    /// point.
    pub fn ready_timeout(&mut self, timeout: Duration) -> Result<usize, SelectTimeoutError> {
        self.run(
            Point::new(crate::time::deadline_after(timeout)),
            true,
            false,
        )
        .map(|o| o.index)
    }

    fn has_ops(&self) -> bool {
        self.ops.iter().any(Option::is_some)
    }

    /// The select loop (module docs): `block` waits, `complete` completes
    /// the picked operation. Inlined into each caller, so that the
    /// operation is built where the caller returns it (a copy of it right
    /// after its last field was written stalled, see `ChanOp::look_into`).
    #[inline(always)]
    fn run(
        &mut self,
        point: Point,
        block: bool,
        complete: bool,
    ) -> Result<SelectedOperation<'a>, SelectTimeoutError> {
        let mut got = None;
        let index = if block {
            crate::scheduler::with_current_waker(|w| {
                self.run_with(point, Some(w), complete, &mut got)
            })
        } else {
            self.run_with(point, None, complete, &mut got)
        }?;
        let object = self.ops[index]
            .as_ref()
            .expect("a picked operation is there")
            .op()
            .object();
        Ok(SelectedOperation {
            index,
            object,
            got,
            _select: std::marker::PhantomData,
        })
    }

    /// [`run`](Self::run), waiting (registered with `waker`) if given
    /// one: the index of the operation picked, a receive's value in `got`.
    fn run_with(
        &mut self,
        point: Point,
        waker: Option<&Waker>,
        complete: bool,
        got: &mut Option<Value>,
    ) -> Result<usize, SelectTimeoutError> {
        let block = waker.is_some();
        let n = self.ops.len();
        // The order of this round's attempts: a random permutation, so the
        // first ready operation met is a uniform pick among the ready ones
        // (Go's `pollorder`). On the stack for up to 32 operations.
        let mut small = [0u32; 32];
        let mut large = Vec::new();
        let order: &mut [u32] = if n <= small.len() {
            &mut small[..n]
        } else {
            large.resize(n, 0);
            &mut large
        };
        // Whether the operations are watching (after a park).
        let mut watching = false;
        loop {
            for (i, o) in order.iter_mut().enumerate() {
                *o = i as u32;
            }
            for i in (1..n).rev() {
                order.swap(i, random_below(i + 1));
            }
            if watching {
                // Woken: each operation in turn stops watching and looks
                // once more; the first that completes is picked, and those
                // after it in this round's order stop watching.
                watching = false;
                for (at, &i) in order.iter().enumerate() {
                    let Some(e) = self.ops[i as usize].as_ref() else {
                        continue;
                    };
                    if e.relook(complete, got) {
                        self.unwatch(&order[at + 1..]);
                        return Ok(i as usize);
                    }
                }
                // Nothing (a change another select took, a value another
                // receiver was quicker to): watch again.
                continue;
            }
            // Each operation in turn looks, and if it misses (and the
            // select waits) stays watching; the first that completes is
            // picked, and those before it in this round's order stop
            // watching. Registered before its look, each misses only if a
            // change after the look will wake us.
            for (at, &i) in order.iter().enumerate() {
                let Some(e) = self.ops[i as usize].as_ref() else {
                    continue;
                };
                if e.look(complete, waker, got) {
                    if block {
                        self.unwatch(&order[..at]);
                    }
                    return Ok(i as usize);
                }
            }
            if !block {
                return Err(SelectTimeoutError);
            }
            if point.ended().is_some() {
                self.unwatch(order);
                return Err(SelectTimeoutError);
            }
            let mut until = point.deadline();
            // An operation no poller or waker slot watches (off a worker, a
            // `block_on` root, a busy oneshot slot, a failed registration)
            // is polled every millisecond.
            if self.ops.iter().flatten().any(|e| e.polled()) {
                let poll = Instant::now() + Duration::from_millis(1);
                until = Some(until.map_or(poll, |d| d.min(poll)));
            }
            crate::time::park_until(until);
            watching = true;
        }
    }

    /// The operations `at` (their indices) stop watching.
    fn unwatch(&self, at: &[u32]) {
        for &i in at {
            if let Some(e) = self.ops[i as usize].as_ref() {
                e.unwatch();
            }
        }
    }
}

impl fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Select")
            .field("operations", &self.ops.iter().flatten().count())
            .finish()
    }
}

impl SelectedOperation<'_> {
    /// The index [`Select`] gave the operation when it was added.
    pub fn index(&self) -> usize {
        self.index
    }

    /// What the selected receive got: the value, or `Err` if the channel
    /// is disconnected (empty, with no sender left).
    ///
    /// # Panics
    ///
    /// If the selected operation is not a receive from `r`.
    pub fn recv<T: 'static>(mut self, r: &impl SelectRecv<T>) -> Result<T, RecvError> {
        assert!(
            std::ptr::eq(self.object, r as *const _ as *const ()),
            "the selected operation is not a receive from this receiver"
        );
        let got = self
            .got
            .as_mut()
            .expect("the selected operation is not a receive");
        got.get_mut::<Option<Result<T, RecvError>>>()
            .unwrap_or_else(|| panic!("the selected operation is not a receive of this type"))
            .take()
            .expect("a selected receive's value is taken once")
    }

    /// Sends `v` on `s`, the selected send's sender. The channel had room
    /// (or a waiting receiver) when it was selected; if another sender
    /// took it meanwhile, this waits for room as `send` does.
    ///
    /// # Panics
    ///
    /// If the selected operation is not a send on `s`.
    pub fn send<T>(self, s: &impl SelectSend<T>, v: T) -> Result<(), SendError<T>> {
        assert!(
            std::ptr::eq(self.object, s as *const _ as *const ()),
            "the selected operation is not a send on this sender"
        );
        s.send_now(v)
    }
}

impl fmt::Debug for SelectedOperation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectedOperation")
            .field("index", &self.index)
            .finish()
    }
}

/// A random number below `n` (> 0): xorshift on a per-thread seed.
fn random_below(n: usize) -> usize {
    thread_local! {
        static SEED: Cell<u64> = const { Cell::new(0) };
    }
    SEED.with(|s| {
        let mut x = s.get();
        if x == 0 {
            // Seeded from the thread-local's address and the clock.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            x = (s as *const Cell<u64> as u64) ^ t ^ 0x9E37_79B9_7F4A_7C15;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        // The high half of `x * n`: below `n`, without a division (which
        // cost a select more than the rest of its shuffle).
        ((u128::from(x) * n as u128) >> 64) as usize
    })
}
