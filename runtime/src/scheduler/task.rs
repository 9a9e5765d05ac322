//! What a coroutine is to the rest of the runtime: its shared header, the
//! never-started task that idle workers may steal, the public `Coroutine`
//! handle and the `JoinHandle`.

use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::num::NonZeroU64;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use super::join::{JoinRef, JoinState, Outcome};
use super::park::ParkState;
use super::refcount::RefCount;
use super::Shared;
use crate::stack::{Reservation, Slot};

/// Shared, thread-safe facts about one coroutine. Holds nothing `!Send`:
/// the coroutine itself lives in its worker's slab and never leaves it.
///
/// A header is the first field of its task's one allocation (a [`Cell`]:
/// header, join state and closure together), reference-counted by
/// [`TaskRef`]s. One allocation per spawn instead of three (header, join
/// state, boxed closure) is what a spawn costs least with; `Arc` cannot
/// hand out a typed handle to the header of a generic allocation, which is
/// why the count is written here by hand.
pub(crate) struct Header {
    /// Unique within the process, from 1.
    pub(crate) id: NonZeroU64,
    /// The park token.
    pub(crate) park: ParkState,
    /// The worker that started it (`usize::MAX` before it starts). Written
    /// once, on that worker, before the coroutine first runs.
    /// (`u32`s, as `key`: 8 bytes less per coroutine.)
    pub(crate) home: AtomicU32,
    /// Its key in the home worker's slab, written with `home`.
    pub(crate) key: AtomicU32,
    /// The cancellation bits (`CANCELLING`, `CANCEL_IN_FLIGHT`,
    /// `CANCEL_REQUESTED`), read and written through the methods below:
    /// one byte, not three `AtomicBool`s, so that `join` fits in the
    /// header's 48 bytes.
    flags: AtomicU8,
    /// The join protocol's state bits (see `join.rs`), for the join state
    /// whose other parts are in the task cell (a root's is unused).
    join: AtomicU8,
    /// The runtime it belongs to, for remote wake-ups, and its name:
    /// through a handle of the spawning worker's own (every header holding
    /// the runtime's one `Arc` would make its count a cache line all
    /// workers write on every spawn and exit: measured ~6% of `fanout_fib`
    /// on 2 workers), or, named, a handle of its own (see [`TaskShared`]).
    pub(crate) shared: SharedHandle,
    /// `TaskRef`s alive (`u32`, as `home` and `key`: a smaller header is a
    /// smaller allocation class for every spawn).
    refs: RefCount,
    /// The operations that know the cell's concrete type.
    vtable: &'static Vtable,
}

/// A header's counted handle on its runtime (see `Header::shared`).
pub(crate) type SharedHandle = Arc<TaskShared>;

/// What a header's handle holds: the runtime and the coroutine's name.
///
/// Unnamed coroutines (nearly all) share their worker's one handle, whose
/// count is per worker (the point of the second allocation); a named one
/// gets a handle of its own, allocated at its spawn as its name is. The
/// name lives here rather than in the header: 8 bytes less in every task
/// cell, which puts a cell of a one-word closure and result in mimalloc's
/// 80-byte class (see `Cell`). A named spawn makes one allocation for it,
/// as it made one for the name before.
pub(crate) struct TaskShared {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: Option<String>,
}

impl TaskShared {
    /// A handle without a name.
    pub(crate) fn unnamed(shared: &Arc<Shared>) -> SharedHandle {
        Arc::new(TaskShared {
            shared: Arc::clone(shared),
            name: None,
        })
    }
}

impl std::ops::Deref for TaskShared {
    type Target = Arc<Shared>;
    fn deref(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// What a header needs at creation; the rest is set by [`TaskRef::new`].
pub(crate) struct HeaderInit {
    pub(crate) id: NonZeroU64,
    pub(crate) home: u32,
    pub(crate) shared: SharedHandle,
    pub(crate) root_thread: Option<std::thread::Thread>,
}

/// `Header::flags`: set at shutdown, before the worker resumes the
/// coroutine to cancel it: its next switch back in throws a
/// [`CancelUnwind`] (see `worker/shutdown.rs`).
const CANCELLING: u8 = 1;
/// `Header::flags`: a [`CancelUnwind`] of this coroutine is alive (thrown
/// and not yet dropped): its cancellation is unwinding, and a wait met
/// meanwhile (a destructor's) really parks instead of throwing again.
/// Cleared by the payload's drop, which may happen on another thread if
/// user code catches the payload and sends it away.
const CANCEL_IN_FLIGHT: u8 = 2;
/// `Header::flags`: set by `JoinHandle::cancel` (or a `CancelToken`), for
/// good: the coroutine's cancellable waits end (see `crate::cancel`).
const CANCEL_REQUESTED: u8 = 4;

impl Header {
    /// Whether shutdown is cancelling it (see [`CANCELLING`]).
    #[inline]
    pub(crate) fn cancelling(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & CANCELLING != 0
    }

    /// Marks it as being cancelled by shutdown, for good.
    pub(crate) fn set_cancelling(&self) {
        self.flags.fetch_or(CANCELLING, Ordering::Relaxed);
    }

    /// Whether a [`CancelUnwind`] of it is alive (see
    /// [`CANCEL_IN_FLIGHT`]); Acquire, pairing with the payload's drop.
    pub(crate) fn cancel_in_flight(&self) -> bool {
        self.flags.load(Ordering::Acquire) & CANCEL_IN_FLIGHT != 0
    }

    /// A [`CancelUnwind`] of it was thrown (on its own thread).
    pub(crate) fn set_cancel_in_flight(&self) {
        self.flags.fetch_or(CANCEL_IN_FLIGHT, Ordering::Relaxed);
    }

    /// The [`CancelUnwind`] is gone; Release, so what its unwinding did
    /// happens before the coroutine's next look.
    fn clear_cancel_in_flight(&self) {
        self.flags.fetch_and(!CANCEL_IN_FLIGHT, Ordering::Release);
    }

    /// Whether its cancellation was requested (see [`CANCEL_REQUESTED`]);
    /// Acquire, pairing with [`request_cancel`](Self::request_cancel).
    pub(crate) fn cancel_requested(&self) -> bool {
        self.flags.load(Ordering::Acquire) & CANCEL_REQUESTED != 0
    }

    /// Requests its cancellation, for good; true if it was not requested
    /// before.
    pub(crate) fn request_cancel(&self) -> bool {
        self.flags.fetch_or(CANCEL_REQUESTED, Ordering::Release) & CANCEL_REQUESTED == 0
    }

    /// The name it was spawned with, if any.
    pub(crate) fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// Makes the coroutine runnable if it is parked, else leaves a token.
    pub(crate) fn unpark(&self) {
        if self.park.unpark() {
            // `schedule` counts the wake-up.
            super::worker::schedule(self);
        }
    }
}

impl Header {
    /// A fresh header with one reference, for a cell with `vtable`.
    fn new(init: HeaderInit, vtable: &'static Vtable) -> Header {
        Header {
            id: init.id,
            park: ParkState::new(),
            home: AtomicU32::new(init.home),
            key: AtomicU32::new(u32::MAX),
            flags: AtomicU8::new(0),
            join: AtomicU8::new(0),
            shared: init.shared,
            refs: RefCount::new(1),
            vtable,
        }
    }

    /// For a `block_on` root: the thread it runs on.
    pub(crate) fn root_thread(&self) -> Option<&std::thread::Thread> {
        if !std::ptr::eq(self.vtable, &ROOT_VTABLE) {
            return None;
        }
        // SAFETY: only `TaskRef::new_root` gives a header this vtable, and
        // that header is the first field of a `RootCell`.
        Some(unsafe { &(*(self as *const Header).cast::<RootCell>()).thread })
    }
}

/// A `block_on` root's allocation: its header and its thread.
#[repr(C)]
struct RootCell {
    header: Header,
    thread: std::thread::Thread,
}

/// A root has no closure to run or cancel and no join state: its body and
/// result live in `run_root`.
static ROOT_VTABLE: Vtable = Vtable {
    outcome_offset: 0,
    run: |_| false,
    cancel: |_| {},
    abandon: |_| {},
    fail: |_, _| {},
    publish: |_| {},
    dealloc: root_dealloc,
};

/// # Safety
/// `h` heads a `RootCell` whose last reference is gone.
unsafe fn root_dealloc(h: NonNull<Header>) {
    // SAFETY: made by `Box::leak` in `TaskRef::new_root`; no reference left.
    drop(unsafe { Box::from_raw(h.cast::<RootCell>().as_ptr()) });
}

/// The type-erased operations of a task cell.
struct Vtable {
    /// Where in the cell the outcome lives (it shares its memory with the
    /// closure, whose alignment decides the offset).
    outcome_offset: usize,
    /// Runs the closure and stores its outcome (see [`TaskRef::run`]).
    run: unsafe fn(NonNull<Header>) -> bool,
    /// Drops a never-run closure and completes with `Cancelled`.
    cancel: unsafe fn(NonNull<Header>),
    /// Completes a started body that will never run again with
    /// `Cancelled` (see [`TaskRef::abandon`]).
    abandon: unsafe fn(NonNull<Header>),
    /// Drops a never-run closure and completes with a panic payload.
    fail: unsafe fn(NonNull<Header>, Box<dyn Any + Send + 'static>),
    /// Announces a stored outcome.
    publish: unsafe fn(NonNull<Header>),
    /// Frees the cell.
    dealloc: unsafe fn(NonNull<Header>),
}

/// One spawned coroutine's allocation. `repr(C)` with the header first, so
/// a pointer to the cell is a pointer to its header and back.
///
/// The join state is spread over it (see `JoinRef`): its bits in the
/// header, the joiner's waker here, the outcome in `slot`, where the
/// closure was. 80 bytes for a closure of one word returning one, in
/// mimalloc's 80-byte class: a cold burst of spawns pays for every byte in
/// first touches of fresh pages (`compare-greenstack spawn_join_main
/// workers=2 cold=1`, 10 alternating runs: 138 ns per task in 128-byte
/// cells, 159 with 32 bytes more, 126 with 16 bytes less; 123 in 96-byte
/// ones).
#[repr(C)]
struct Cell<F, T> {
    header: Header,
    /// The stack to start on, until it starts (or is cancelled): reached
    /// only by the holder of the cell's [`NewTask`], like the closure. It
    /// lives here, not in the `NewTask`, so a queued task is one pointer
    /// (see `NewTask`). Second, so its offset depends on neither `F` nor
    /// `T`.
    stack: UnsafeCell<StackWord>,
    /// The join state's waker (see `join.rs`); its offset, too, depends on
    /// neither `F` nor `T`.
    waker: crate::loom::cell::UnsafeCell<Option<Waker>>,
    /// The closure until the body takes it (or it is cancelled), then the
    /// outcome's cell: see [`FuncOrOutcome`].
    slot: UnsafeCell<FuncOrOutcome<F, T>>,
}

/// What a cell holds in one place: its closure until the holder of the
/// right to run takes it (once, see [`Cell::take_func`]), then at once an
/// outcome cell (`None` until the body's outcome is stored). The two never
/// live together, so they share their memory, as tokio's task stages do.
/// Which one it holds: the closure until the `NewTask`/`RunOnce` is used
/// (run, cancelled or failed), which every cell is before its last
/// reference goes, else the outcome cell; `dealloc` drops the outcome cell
/// only if the join state is complete (a closure never taken, which only a
/// leaked `RunOnce` could leave, is leaked too).
#[repr(C)]
union FuncOrOutcome<F, T> {
    func: ManuallyDrop<F>,
    outcome: ManuallyDrop<crate::loom::cell::UnsafeCell<Option<Outcome<T>>>>,
}

impl<F, T> Cell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    const VTABLE: Vtable = Vtable {
        outcome_offset: std::mem::offset_of!(Cell<F, T>, slot),
        run: Self::run,
        cancel: Self::cancel,
        abandon: Self::abandon,
        fail: Self::fail,
        publish: Self::publish,
        dealloc: Self::dealloc,
    };

    /// # Safety
    /// `h` heads a live `Cell<F, T>`.
    unsafe fn get<'a>(h: NonNull<Header>) -> &'a Cell<F, T> {
        // SAFETY: by the caller; the header is the cell's first field.
        unsafe { h.cast::<Cell<F, T>>().as_ref() }
    }

    /// The join protocol over this cell's parts.
    fn join(&self) -> JoinRef<'_, T> {
        // SAFETY: the state bits, the waker and the slot are this cell's,
        // alive while it is borrowed; the bits start at 0 and the waker at
        // `None` (`TaskRef::new`), and the slot holds an outcome cell from
        // the moment the closure is taken (`take_func`), which every path
        // to a completion does first.
        unsafe {
            JoinRef::new(
                &self.header.join,
                &self.waker,
                NonNull::new_unchecked(self.slot.get().cast()),
            )
        }
    }

    /// Moves the closure out of the slot and puts an empty outcome cell in
    /// its place.
    ///
    /// # Safety
    /// Called once per cell, by the holder of the right to run (its
    /// `NewTask` or `RunOnce`), which makes it the only one touching the
    /// slot until it completes the join state.
    unsafe fn take_func(&self) -> F {
        let slot = self.slot.get();
        // SAFETY: the slot holds the closure until this one call (the
        // caller's contract); nobody else reads it meanwhile (the joiner
        // reaches the outcome only after COMPLETE, set after the outcome
        // cell written here).
        unsafe {
            let f = ManuallyDrop::into_inner(std::ptr::read(std::ptr::addr_of!((*slot).func)));
            std::ptr::addr_of_mut!((*slot).outcome)
                .write(ManuallyDrop::new(crate::loom::cell::UnsafeCell::new(None)));
            f
        }
    }

    /// # Safety
    /// Called at most once per cell, and never together with `cancel`:
    /// only by the holder of the cell's [`NewTask`].
    unsafe fn run(h: NonNull<Header>) -> bool {
        // SAFETY: by the caller.
        let cell = unsafe { Self::get(h) };
        // SAFETY: the unique right to run (the caller's contract), used
        // once.
        let f = unsafe { cell.take_func() };
        /// Completes with `Cancelled` if the body is unwound past us
        /// (nothing throws past the `catch_unwind` below today; kept so a
        /// joiner is released whatever unwinds).
        struct Guard<'a, T>(Option<JoinRef<'a, T>>);
        impl<T> Drop for Guard<'_, T> {
            fn drop(&mut self) {
                if let Some(j) = self.0.take() {
                    // Nothing to report in a `Cancelled`.
                    // SAFETY: the guard exists only after the closure was taken.
                    drop(unsafe { j.complete(Outcome::Cancelled) });
                }
            }
        }
        let mut guard = Guard(Some(cell.join()));
        let mut cancelled = None;
        let outcome = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => Outcome::Value(v),
            // The runtime's cancellation at shutdown reached the body's
            // top. The payload is kept until the coroutine-locals are
            // dropped: while it lives the cancellation counts as under
            // way, so a local's destructor that waits really waits
            // (`worker::suspend_unusual`) instead of being thrown at again.
            Err(p) if p.is::<CancelUnwind>() => {
                cancelled = Some(p);
                Outcome::Cancelled
            }
            Err(p) => Outcome::Panic(Box::new(p)),
        };
        if let Some(p) = super::worker::drop_current_locals() {
            // Cancelled while a local's destructor waited.
            cancelled.get_or_insert(p);
        }
        drop(cancelled);
        guard.0 = None;
        // SAFETY: the closure was taken at the top.
        unsafe { cell.join().store(outcome) };
        true
    }

    /// # Safety
    /// As for `run`.
    unsafe fn cancel(h: NonNull<Header>) {
        // SAFETY: by the caller.
        let cell = unsafe { Self::get(h) };
        // SAFETY: as in `run`.
        let f = unsafe { cell.take_func() };
        // Release the joiner first: a capture that panics on drop must not
        // leave it waiting.
        // SAFETY: the closure was taken just above.
        drop(unsafe { cell.join().complete(Outcome::Cancelled) });
        drop(f);
    }

    /// # Safety
    /// `run` started on this cell and its coroutine will never be resumed
    /// again (it is leaked), so `run` will never store an outcome.
    unsafe fn abandon(h: NonNull<Header>) {
        // SAFETY: by the caller.
        let cell = unsafe { Self::get(h) };
        let join = cell.join();
        if !join.is_complete() {
            // SAFETY: `run` started, so the closure was taken.
            drop(unsafe { join.complete(Outcome::Cancelled) });
        }
    }

    /// # Safety
    /// As for `run`.
    unsafe fn fail(h: NonNull<Header>, payload: Box<dyn Any + Send + 'static>) {
        // SAFETY: by the caller.
        let cell = unsafe { Self::get(h) };
        // SAFETY: as in `run`.
        let f = unsafe { cell.take_func() };
        // SAFETY: the closure was taken just above.
        unsafe { cell.join().complete(Outcome::Panic(Box::new(payload))) }
            .report(cell.header.id.get(), cell.header.name());
        drop(f);
    }

    /// # Safety
    /// Once, after `run` returned true.
    unsafe fn publish(h: NonNull<Header>) {
        // SAFETY: by the caller.
        let cell = unsafe { Self::get(h) };
        let header = &cell.header;
        // SAFETY: `run` stored the outcome (the caller's contract).
        unsafe { cell.join().publish() }.report(header.id.get(), header.name());
    }

    /// # Safety
    /// The last reference is gone.
    unsafe fn dealloc(h: NonNull<Header>) {
        let cell = h.cast::<Cell<F, T>>();
        // SAFETY: no reference to the cell is left (the caller's contract),
        // so we are its only user. The outcome cell is there once the join
        // state is complete (see `FuncOrOutcome`); the last reference's release
        // ordered every other party's work before this.
        unsafe {
            if super::join::is_complete((*cell.as_ptr()).header.join.load(Ordering::Acquire)) {
                let slot = (*cell.as_ptr()).slot.get();
                ManuallyDrop::drop(&mut *std::ptr::addr_of_mut!((*slot).outcome));
            }
        }
        // SAFETY: the cell came from `cell_alloc::boxed` in `TaskRef::new`,
        // and no reference to it is left; the slot has no drop glue (its
        // outcome was dropped above).
        unsafe { cell_alloc::free(cell) };
    }
}

/// Where task cells live: one allocation per spawn, freed by whichever
/// thread drops the last reference (the joiner's, often another worker's).
///
/// With the `mimalloc` feature (on by default) they come from mimalloc's
/// allocator (its 2.x series), called directly: it is not made the
/// process's global allocator, and the rest of the program keeps its own.
/// glibc's malloc serves a burst of cells badly: its per-thread cache holds
/// 7 blocks per size, so a million spawns then a million joins take its
/// slow paths (carving the top chunk, then coalescing on free). Measured
/// with callgrind on `compare-greenstack spawn_join_main workers=1 cold=1`
/// (n=100,000 minus n=50,000, ÷ 50,000): 2,197 instructions per spawn and
/// join with glibc's malloc, 1,882 with mimalloc's. On 2 workers, cold, 1M
/// tasks, 10 alternating runs: medians of 296 and 256 ns per task.
///
/// mimalloc is built without transparent huge pages (its `no_thp`
/// feature): with them, 4 of 10 runs of the same workload took 366-401 ns,
/// 40% of their time in the kernel zeroing 2 MiB pages at first touch; the
/// 4 KiB pages' runs stayed within 250-270 ns. Its 3.x series reads an
/// uninitialised byte at start-up (valgrind's memcheck reports it in every
/// program), the 2.x series does not.
///
/// [`SYSTEM_ALLOC_ENV`](crate::SYSTEM_ALLOC_ENV) set to `1` (read once, at
/// the first spawn), or the feature off, puts cells on the global allocator
/// for the process's life, so a heap checker (valgrind's memcheck,
/// heaptrack) sees every cell.
pub(crate) mod cell_alloc {
    #[cfg(feature = "mimalloc")]
    use std::alloc::GlobalAlloc;
    use std::alloc::Layout;
    use std::ptr::NonNull;

    /// Whether cells come from mimalloc: fixed at the first use, as a cell
    /// must be freed by the allocator that made it.
    #[cfg(feature = "mimalloc")]
    #[inline]
    fn mimalloc() -> bool {
        static ON: once_cell::sync::Lazy<bool> = once_cell::sync::Lazy::new(|| {
            !matches!(
                std::env::var(crate::SYSTEM_ALLOC_ENV)
                    .as_deref()
                    .map(str::trim),
                Ok("1" | "on" | "true" | "ON" | "TRUE")
            )
        });
        *ON
    }

    #[cfg(not(feature = "mimalloc"))]
    #[inline]
    fn mimalloc() -> bool {
        false
    }

    /// `value` moved into a fresh allocation, as `Box::leak(Box::new(..))`.
    pub(super) fn boxed<C>(value: C) -> NonNull<C> {
        let layout = Layout::new::<C>();
        if layout.size() == 0 {
            return NonNull::dangling();
        }
        // SAFETY: `layout` has a non-zero size (checked above).
        let raw = unsafe {
            if mimalloc() {
                alloc_mi(layout)
            } else {
                std::alloc::alloc(layout)
            }
        };
        let Some(ptr) = NonNull::new(raw.cast::<C>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: `ptr` is fresh, non-null and laid out for a `C`.
        unsafe { ptr.as_ptr().write(value) };
        ptr
    }

    /// Drops and frees a value made by [`boxed`].
    ///
    /// # Safety
    /// `ptr` came from [`boxed`] with the same `C`, and nothing uses it
    /// after this call.
    pub(super) unsafe fn free<C>(ptr: NonNull<C>) {
        /// Frees the memory when dropped, after the value's drop, even if
        /// that unwinds (as a `Box` does).
        struct Memory<C>(NonNull<C>);

        impl<C> Drop for Memory<C> {
            fn drop(&mut self) {
                let layout = Layout::new::<C>();
                if layout.size() == 0 {
                    return;
                }
                // SAFETY: the pointer came from `boxed` (the caller's
                // contract), so from the allocator `mimalloc()` chose, which
                // cannot change once chosen, with this layout; its value is
                // dropped or being unwound out of, and never used again.
                unsafe {
                    if mimalloc() {
                        dealloc_mi(self.0.as_ptr().cast(), layout)
                    } else {
                        std::alloc::dealloc(self.0.as_ptr().cast(), layout)
                    }
                }
            }
        }

        let memory = Memory(ptr);
        // SAFETY: by the caller, `ptr` holds a live `C` nobody else uses.
        unsafe { std::ptr::drop_in_place(memory.0.as_ptr()) };
    }

    /// Gives the memory of freed cells back to the system, as far as the
    /// calling thread can: its own mimalloc heap's empty pages, and the
    /// empty segments that exited threads (stopped workers) left behind.
    ///
    /// Why: mimalloc keeps freed pages for reuse and purges them only
    /// after a delay, on later allocator activity. A runtime's workers
    /// exit, and the thread that dropped the runtime may allocate no more
    /// cells, so a burst's cells (128 MiB for a million) would stay
    /// resident after the runtime is gone (`tests/rt_scale.rs` saw 134 MiB
    /// left after dropping a runtime that had run a million coroutines).
    /// Called by each worker as it exits and by `Runtime::drop` after the
    /// workers have; a no-op when cells come from the global allocator.
    pub(crate) fn give_back() {
        #[cfg(feature = "mimalloc")]
        if mimalloc() {
            // SAFETY: `mi_collect` has no preconditions; it is thread-safe
            // and touches only mimalloc's own state.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    }

    #[cfg(feature = "mimalloc")]
    unsafe fn alloc_mi(layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout has a non-zero size.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    #[cfg(feature = "mimalloc")]
    unsafe fn dealloc_mi(ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's `ptr` came from `alloc_mi` with `layout`.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    #[cfg(not(feature = "mimalloc"))]
    unsafe fn alloc_mi(_: Layout) -> *mut u8 {
        unreachable!("mimalloc() is false without the feature")
    }

    #[cfg(not(feature = "mimalloc"))]
    unsafe fn dealloc_mi(_: *mut u8, _: Layout) {
        unreachable!("mimalloc() is false without the feature")
    }
}

/// A counted reference to a task's header (and its cell), as an
/// `Arc<Header>` would be.
#[repr(transparent)]
pub(crate) struct TaskRef {
    ptr: NonNull<Header>,
}

// SAFETY: a `TaskRef` only gives out `&Header` (`Send + Sync`); the cell's
// closure, stack (a `Send` slot) and outcome are reached only through
// `NewTask` (which requires `F: Send`) and `JoinHandle` (`T: Send`), whose
// own impls carry those bounds.
unsafe impl Send for TaskRef {}
// SAFETY: as above.
unsafe impl Sync for TaskRef {}

impl TaskRef {
    /// Allocates a task cell for `f` and returns two references to it (the
    /// task's and its join handle's), counted at creation: a `clone` would
    /// be one more locked instruction per spawn.
    pub(crate) fn new<F, T>(init: HeaderInit, f: F, stack: Stack) -> (TaskRef, TaskRef)
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        debug_assert!(init.root_thread.is_none(), "a root takes `new_root`");
        let mut header = Header::new(init, &Cell::<F, T>::VTABLE);
        header.refs = RefCount::new(2);
        let cell = Cell::<F, T> {
            header,
            stack: UnsafeCell::new(StackWord::new(stack)),
            waker: crate::loom::cell::UnsafeCell::new(None),
            slot: UnsafeCell::new(FuncOrOutcome {
                func: ManuallyDrop::new(f),
            }),
        };
        let ptr = cell_alloc::boxed(cell).cast();
        (TaskRef { ptr }, TaskRef { ptr })
    }

    /// Allocates the header of a `block_on` root, which runs on the thread
    /// in `init` (its body runs in `run_root`; it has no closure or join
    /// state here).
    pub(crate) fn new_root(mut init: HeaderInit) -> TaskRef {
        let thread = init.root_thread.take().expect("a root has its thread");
        let cell = Box::new(RootCell {
            header: Header::new(init, &ROOT_VTABLE),
            thread,
        });
        TaskRef {
            ptr: NonNull::from(Box::leak(cell)).cast(),
        }
    }

    /// The join state in this task's cell.
    ///
    /// # Safety
    /// The cell was made by `TaskRef::new::<_, T>`.
    pub(crate) unsafe fn join_state<T>(&self) -> JoinRef<'_, T> {
        // SAFETY: `repr(C)` puts `waker` after the header and the stack, at
        // an offset that depends on neither `F` nor `T`, so a `Cell<(), ()>`
        // view finds it; the outcome is where the cell's vtable says; the
        // parts are those `Cell::join` passes, alive while our reference
        // keeps the cell.
        unsafe {
            let waker = &*std::ptr::addr_of!((*self.ptr.cast::<Cell<(), ()>>().as_ptr()).waker);
            let outcome = self.ptr.cast::<u8>().add(self.vtable.outcome_offset).cast();
            JoinRef::new(&self.join, waker, outcome)
        }
    }

    /// Moves the stack out of this task's cell (leaving a default
    /// `AtStart`, which owns nothing).
    ///
    /// # Safety
    /// The cell was made by `TaskRef::new`, and the caller is the holder of
    /// its [`NewTask`], which calls this once.
    unsafe fn take_stack(&self) -> Stack {
        // SAFETY: `repr(C)` puts `stack` right after the header, at an
        // offset that depends on neither `F` nor `T`, so a `Cell<(), ()>`
        // view finds it; the `NewTask` holder is the only one to touch it
        // (the caller's contract), and our reference keeps the cell alive.
        unsafe {
            let stack = &*std::ptr::addr_of!((*self.ptr.cast::<Cell<(), ()>>().as_ptr()).stack);
            (*stack.get()).take()
        }
    }

    /// The header's address, for identity and the watchdog.
    pub(crate) fn as_ptr(&self) -> *const Header {
        self.ptr.as_ptr()
    }

    /// Announces the outcome that [`NewTask`]'s run stored.
    ///
    /// # Safety
    /// Once, after that run returned true.
    pub(crate) unsafe fn publish(&self) {
        // SAFETY: by the caller.
        unsafe { (self.vtable.publish)(self.ptr) }
    }

    /// Completes the task with `Cancelled` for its joiner: its coroutine
    /// started, did not finish at shutdown and is abandoned (leaked).
    ///
    /// # Safety
    /// The coroutine's body started and will never run again (its
    /// corosensei coroutine is leaked, suspended), and this is called once.
    pub(crate) unsafe fn abandon(&self) {
        // SAFETY: by the caller.
        unsafe { (self.vtable.abandon)(self.ptr) }
    }

    /// A waker that unparks this coroutine.
    pub(crate) fn waker(&self) -> Waker {
        Self::into_waker(self.clone())
    }

    /// Turns this reference into a waker (no count change).
    pub(crate) fn into_waker(self) -> Waker {
        let raw = RawWaker::new(ManuallyDrop::new(self).ptr.as_ptr().cast(), &WAKER_VTABLE);
        // SAFETY: the vtable's functions treat the data pointer as the one
        // reference it carries, as `RawWaker`'s contract requires.
        unsafe { Waker::from_raw(raw) }
    }

    /// A waker for this task that holds no reference of its own (its
    /// clones hold theirs), so it is never dropped: dropping it, or waking
    /// it by value, would need `ManuallyDrop::take`.
    ///
    /// # Safety
    ///
    /// The task's header outlives every use of the returned waker (its
    /// clones aside).
    pub(crate) unsafe fn borrowed_waker(&self) -> ManuallyDrop<Waker> {
        let raw = RawWaker::new(self.ptr.as_ptr().cast(), &WAKER_VTABLE);
        // SAFETY: the vtable's functions treat the data pointer as a
        // reference to a live header; by the contract it stays live while
        // this waker is used, and `ManuallyDrop` keeps it from giving back
        // a reference it does not hold.
        ManuallyDrop::new(unsafe { Waker::from_raw(raw) })
    }

    /// # Safety
    /// `p` carries one reference (from `into_waker`).
    unsafe fn from_raw(p: *const ()) -> TaskRef {
        TaskRef {
            // SAFETY: it came from a non-null `TaskRef` pointer.
            ptr: unsafe { NonNull::new_unchecked(p as *mut Header) },
        }
    }
}

static WAKER_VTABLE: RawWakerVTable =
    RawWakerVTable::new(waker_clone, waker_wake, waker_wake_by_ref, waker_drop);

unsafe fn waker_clone(p: *const ()) -> RawWaker {
    // SAFETY: the waker holds a reference, so the header is alive.
    let t = ManuallyDrop::new(unsafe { TaskRef::from_raw(p) });
    std::mem::forget(TaskRef::clone(&t));
    RawWaker::new(p, &WAKER_VTABLE)
}

unsafe fn waker_wake(p: *const ()) {
    // SAFETY: the waker's reference becomes this `TaskRef`, dropped after.
    let t = unsafe { TaskRef::from_raw(p) };
    t.unpark();
}

unsafe fn waker_wake_by_ref(p: *const ()) {
    // SAFETY: as in `waker_clone`.
    let t = ManuallyDrop::new(unsafe { TaskRef::from_raw(p) });
    t.unpark();
}

unsafe fn waker_drop(p: *const ()) {
    // SAFETY: the waker's reference, released.
    drop(unsafe { TaskRef::from_raw(p) });
}

impl std::ops::Deref for TaskRef {
    type Target = Header;
    fn deref(&self) -> &Header {
        // SAFETY: our reference keeps the cell alive.
        unsafe { self.ptr.as_ref() }
    }
}

impl Clone for TaskRef {
    fn clone(&self) -> TaskRef {
        self.refs.increment();
        TaskRef { ptr: self.ptr }
    }
}

impl Drop for TaskRef {
    fn drop(&mut self) {
        if !self.refs.decrement() {
            return;
        }
        // SAFETY: that was the last reference.
        unsafe { (self.vtable.dealloc)(self.ptr) }
    }
}

/// Where a never-started coroutine's stack comes from.
pub(crate) enum Stack {
    /// Taken at spawn (a `block_on` root, or any coroutine with the
    /// `mprotect` fallback, where stacks are few).
    Ready(Slot),
    /// Promised at spawn, taken from the starting worker's warm slots when
    /// the coroutine first runs (`None` once taken out of the cell).
    AtStart(Option<Reservation>),
}

/// A [`Stack`] in one word, as a task cell keeps it: null for
/// `AtStart(None)`, a reservation's (even) pointer for
/// `AtStart(Some(_))`, a boxed slot's pointer plus one for `Ready(_)`.
/// Only the `mprotect` fallback's coroutines, which are few, pay for the
/// box; every cell is 8 bytes smaller than with the two-word enum, which
/// puts a cell of a one-word closure and result in mimalloc's 80-byte
/// class (see `Cell`). Written by hand: no crate packs a two-pointer enum
/// into one word, and the language leaves such an enum two words.
struct StackWord(*mut u8);

// `Ready`'s boxes are even, so the tag bit is free.
const _: () = assert!(std::mem::align_of::<Slot>() >= 2);

impl StackWord {
    fn new(stack: Stack) -> StackWord {
        StackWord(match stack {
            Stack::AtStart(None) => std::ptr::null_mut(),
            Stack::AtStart(Some(r)) => r.into_raw().as_ptr(),
            // Pointer arithmetic, not integer casts, so the pointer keeps
            // its provenance.
            Stack::Ready(slot) => Box::into_raw(Box::new(slot)).cast::<u8>().wrapping_add(1),
        })
    }

    /// The stack, leaving `AtStart(None)`, which owns nothing.
    fn take(&mut self) -> Stack {
        let p = std::mem::replace(&mut self.0, std::ptr::null_mut());
        match NonNull::new(p) {
            None => Stack::AtStart(None),
            Some(p) if p.as_ptr() as usize & 1 == 1 => {
                // SAFETY: an odd word is a boxed slot plus one (`new`),
                // taken out of the word once (it is null now).
                Stack::Ready(*unsafe { Box::from_raw(p.as_ptr().wrapping_sub(1).cast::<Slot>()) })
            }
            // SAFETY: an even non-null word came from `Reservation::into_raw`
            // (`new`), and is taken out of the word once (it is null now).
            Some(p) => Stack::AtStart(Some(unsafe { Reservation::from_raw(p) })),
        }
    }
}

impl Drop for StackWord {
    fn drop(&mut self) {
        drop(self.take());
    }
}

/// A coroutine that has not run yet: its cell, with the `Send` closure and
/// the stack to start on. This is all an idle worker ever steals. Dropping
/// it unrun completes its join state with `Cancelled`.
///
/// One pointer: every deque slot, steal batch and injector block holds
/// these, and a spawner far ahead of the workers queues a million of them.
/// With the stack beside the pointer (32 bytes) the spawning worker wrote,
/// and the thief copied, four times the bytes, and the copies out of a
/// `pop` stalled on store forwarding (`perf annotate` of `spawn_join
/// workers=2`).
pub(crate) struct NewTask {
    task: ManuallyDrop<TaskRef>,
}

const _: () = assert!(std::mem::size_of::<NewTask>() == std::mem::size_of::<usize>());

impl NewTask {
    /// # Safety
    /// `task` was made by `TaskRef::new` and has never been part of another
    /// `NewTask`: this one holds the only right to run it and to take its
    /// stack.
    pub(crate) unsafe fn new(task: TaskRef) -> NewTask {
        NewTask {
            task: ManuallyDrop::new(task),
        }
    }

    /// The task and stack, and the right to run the closure, for starting.
    pub(crate) fn into_parts(self) -> (TaskRef, Stack, RunOnce) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the task is taken once; as
        // its `NewTask`, we take its stack, once.
        let (task, slot) = unsafe {
            let task = ManuallyDrop::take(&mut this.task);
            let slot = task.take_stack();
            (task, slot)
        };
        let run = RunOnce {
            ptr: task.ptr,
            _not_clone: PhantomData,
        };
        (task, slot, run)
    }
}

impl Drop for NewTask {
    fn drop(&mut self) {
        // SAFETY: the task is taken here once, and its stack once (we are
        // its `NewTask`); the right to run is ours and is used for
        // cancelling instead.
        unsafe {
            // The stack goes back before the joiner hears of it.
            drop(self.task.take_stack());
            // Owned from here, so it is released even if a capture of the
            // closure panics as `cancel` drops it.
            let task = ManuallyDrop::take(&mut self.task);
            (task.vtable.cancel)(task.ptr);
        }
    }
}

/// The right to run a started task's closure, once; used inside the
/// coroutine while its `Running` holds the task's reference. It holds no
/// reference itself (one count per spawn less), so it must not outlive the
/// `TaskRef` it came with: `run` and `fail` are `unsafe` for that, and its
/// drop relies on the worker dropping a coroutine before its `Running`'s
/// `TaskRef`.
pub(crate) struct RunOnce {
    ptr: NonNull<Header>,
    _not_clone: PhantomData<*const ()>,
}

// SAFETY: it moves into the coroutine's closure on the worker that created
// it; the closure it runs is `Send`.
unsafe impl Send for RunOnce {}

impl RunOnce {
    /// Runs the closure and stores its outcome; true if there is one to
    /// publish (with [`TaskRef::publish`]) once the stack is released.
    ///
    /// # Safety
    /// The task's cell is alive for the whole call (its `Running` holds a
    /// reference).
    pub(crate) unsafe fn run(self) -> bool {
        let this = ManuallyDrop::new(self);
        // SAFETY: alive by the caller; `RunOnce` is the unique right to run.
        unsafe { (this.ptr.as_ref().vtable.run)(this.ptr) }
    }
}

impl RunOnce {
    /// Gives up the run: the closure is dropped and the joiner gets `Err`
    /// with `payload`, as if the body had panicked with it.
    ///
    /// # Safety
    /// The task's cell is alive for the whole call (the caller holds the
    /// `TaskRef` that came with this `RunOnce`).
    pub(crate) unsafe fn fail(self, payload: Box<dyn Any + Send + 'static>) {
        let this = ManuallyDrop::new(self);
        // SAFETY: the cell is alive (the caller's contract) and `RunOnce` is
        // the unique right to run.
        unsafe { (this.ptr.as_ref().vtable.fail)(this.ptr, payload) }
    }
}

/// A coroutine dropped before its body started still releases its joiner.
/// (The worker drops a coroutine before the `TaskRef` in its `Running`, so
/// the cell is alive here.)
impl Drop for RunOnce {
    fn drop(&mut self) {
        // SAFETY: alive as said above; the right to run is used for
        // cancelling instead.
        unsafe { (self.ptr.as_ref().vtable.cancel)(self.ptr) }
    }
}

/// A coroutine's unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoroutineId(pub(crate) NonZeroU64);

impl CoroutineId {
    /// The id as a number (unique in the process, never 0).
    pub fn as_u64(self) -> NonZeroU64 {
        self.0
    }
}

impl fmt::Display for CoroutineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A handle to a coroutine, as [`std::thread::Thread`] is to a thread:
/// its id, its name, and a way to unpark it. Cheap to clone; `Send` and
/// `Sync`.
#[derive(Clone)]
#[repr(transparent)]
pub struct Coroutine {
    pub(crate) header: TaskRef,
}

impl Coroutine {
    /// The coroutine's unique id.
    pub fn id(&self) -> CoroutineId {
        CoroutineId(self.header.id)
    }

    /// The name given at spawn, if any.
    pub fn name(&self) -> Option<&str> {
        self.header.name()
    }

    /// Makes the coroutine runnable if it is parked in
    /// [`park`](crate::park); otherwise its next `park` returns at once.
    /// Callable from any thread.
    pub fn unpark(&self) {
        self.header.unpark();
    }

    /// A [`Waker`] that unparks this coroutine.
    pub fn waker(&self) -> Waker {
        self.header.waker()
    }
}

impl fmt::Debug for Coroutine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coroutine")
            .field("id", &self.id())
            .field("name", &self.name())
            .finish()
    }
}

/// A coroutine was cancelled. The payload of the `Err` that
/// [`JoinHandle::join`] returns for a coroutine that never finished (its
/// runtime was dropped first), and the error of
/// [`cancel::check`](crate::cancel::check) in a coroutine that
/// [`JoinHandle::cancel`] asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the coroutine was cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// The payload of the unwind with which shutdown cancels a started
/// coroutine: thrown from the coroutine's suspend point when its worker
/// resumes it one last time (see `worker/shutdown.rs`), caught at the
/// top of its body, where it becomes [`Outcome::Cancelled`]. It holds a
/// reference to the coroutine's header so that its drop, wherever user
/// code lets it happen, marks the unwind over.
pub(crate) struct CancelUnwind(pub(crate) TaskRef);

impl Drop for CancelUnwind {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `worker::suspend_running`, which
        // reads it on the coroutine's thread (usually this one).
        self.0.clear_cancel_in_flight();
    }
}

/// An owned permission to join a coroutine, as [`std::thread::JoinHandle`]
/// is for a thread. Dropping it detaches the coroutine.
///
/// It is also a [`Future`] of the same result, so async code can await a
/// coroutine.
pub struct JoinHandle<T> {
    /// What holds the join state, in one word (a `Vec` of a million
    /// handles is 8 MB, not the 16 of a two-word enum): a coroutine's
    /// [`TaskRef`] (its header's address), a `spawn_blocking` job's
    /// `Arc<JoinState<T>>` (its `into_raw` address with [`BLOCKING`] set;
    /// both addresses are at least 8-aligned, so the low bit is free), or
    /// null once the outcome is taken. A non-null word owns the one
    /// reference it was made from; see [`owner`](Self::owner).
    raw: *const (),
    /// Owns what an `Arc<JoinState<T>>` owns, for variance and drop check.
    _owns: PhantomData<crate::loom::sync::Arc<JoinState<T>>>,
}

/// The low bit of a [`JoinHandle`]'s word that marks a `spawn_blocking`
/// job's state.
const BLOCKING: usize = 1;

/// What a [`JoinHandle`] holds, borrowed.
enum Owner<'a, T> {
    /// A coroutine: the state lives in its task cell, made for `T`.
    Task(&'a Coroutine),
    /// A `spawn_blocking` job: the state is allocated on its own.
    Blocking(&'a JoinState<T>),
    /// The outcome has been taken.
    Taken,
}

// SAFETY: the handle owns a reference to the join state and moves only the
// outcome (`T: Send`) between threads; `JoinState<T>` is `Send + Sync` for
// `T: Send`.
unsafe impl<T: Send> Send for JoinHandle<T> {}
// SAFETY: `&JoinHandle` only reads the state's flags.
unsafe impl<T: Send> Sync for JoinHandle<T> {}

impl<T> JoinHandle<T> {
    /// A handle to a `spawn_blocking` job's state.
    pub(crate) fn blocking(state: crate::loom::sync::Arc<JoinState<T>>) -> Self {
        // The low bit is free: the state holds a waker (pointer-aligned).
        const { assert!(std::mem::align_of::<JoinState<T>>() > BLOCKING) };
        let p = crate::loom::sync::Arc::into_raw(state);
        JoinHandle {
            // Pointer arithmetic, not an integer round trip: the word keeps
            // the pointer's provenance.
            raw: p.cast::<u8>().wrapping_add(BLOCKING).cast(),
            _owns: PhantomData,
        }
    }

    /// A handle to a coroutine.
    ///
    /// # Safety
    /// `coroutine`'s cell was made for this `T` (`TaskRef::new::<_, T>`),
    /// and no other handle to it exists.
    pub(crate) unsafe fn task(coroutine: Coroutine) -> Self {
        let header = ManuallyDrop::new(coroutine).header.ptr;
        JoinHandle {
            raw: header.as_ptr().cast_const().cast(),
            _owns: PhantomData,
        }
    }

    /// What the word holds.
    fn owner(&self) -> Owner<'_, T> {
        if self.raw.is_null() {
            Owner::Taken
        } else if self.raw as usize & BLOCKING == 0 {
            // SAFETY: `Coroutine` and `TaskRef` are `repr(transparent)` over
            // a `NonNull<Header>`, which has a pointer's layout, so a
            // non-null header address made by `task` is a valid
            // `Coroutine`; the handle owns its reference (released only in
            // `release`, through `&mut self`), so the header outlives the
            // borrow.
            Owner::Task(unsafe { &*std::ptr::addr_of!(self.raw).cast::<Coroutine>() })
        } else {
            let p = self
                .raw
                .cast::<u8>()
                .wrapping_sub(BLOCKING)
                .cast::<JoinState<T>>();
            // SAFETY: `blocking` made the word from `Arc::into_raw`, whose
            // reference the handle owns until `release`.
            Owner::Blocking(unsafe { &*p })
        }
    }

    /// Gives back the reference the word owns, and leaves it null.
    fn release(&mut self) {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null());
        if raw.is_null() {
            return;
        }
        if raw as usize & BLOCKING == 0 {
            // SAFETY: made by `task` from a `TaskRef`'s pointer, whose one
            // reference the word owned; it is null now, so it is given back
            // once.
            drop(unsafe { TaskRef::from_raw(raw) });
        } else {
            let p = raw
                .cast::<u8>()
                .wrapping_sub(BLOCKING)
                .cast::<JoinState<T>>();
            // SAFETY: made by `blocking` from `Arc::into_raw`; given back once
            // (the word is null now).
            drop(unsafe { crate::loom::sync::Arc::from_raw(p) });
        }
    }

    fn state(&self) -> Option<JoinRef<'_, T>> {
        match self.owner() {
            // SAFETY: the cell was made for `T` (see `task`), and the
            // coroutine handle keeps it alive as long as `self`.
            Owner::Task(c) => Some(unsafe { c.header.join_state::<T>() }),
            Owner::Blocking(s) => Some(s.get()),
            Owner::Taken => None,
        }
    }

    /// Takes the outcome (once, after completion was seen).
    fn take_outcome(&mut self) -> Outcome<T> {
        let s = self.state().expect("join handle already used").take();
        self.release();
        s
    }

    /// Waits for the coroutine to finish and returns its value, or the
    /// payload of its panic as `Err`.
    ///
    /// Inside a coroutine this parks the calling coroutine; on a plain
    /// thread it blocks the thread.
    pub fn join(mut self) -> std::thread::Result<T> {
        let state = self.state().expect("join handle already used");
        if !state.is_complete() {
            let waker = super::current_waker();
            while !state.register(&waker) {
                super::park_current();
            }
        }
        into_result(self.take_outcome())
    }

    /// Waits at most `timeout` for the coroutine to finish: `Ok` with what
    /// [`join`](Self::join) would return, or `Err` with the handle back if
    /// it has not finished by then (join it later, or drop it to detach).
    ///
    /// Never returns `Err` early: the wait lasts at least `timeout`, unless
    /// the caller is cancelled (see [`crate::cancel`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let rt = greenstack_runtime::Runtime::new()?;
    /// rt.block_on(|| {
    ///     let slow = greenstack_runtime::spawn(|| {
    ///         greenstack_runtime::time::sleep(Duration::from_millis(200));
    ///         7
    ///     });
    ///     let slow = slow.join_timeout(Duration::from_millis(10)).expect_err("still running");
    ///     assert_eq!(slow.join().unwrap(), 7);
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn join_timeout(self, timeout: Duration) -> Result<std::thread::Result<T>, JoinHandle<T>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.join_deadline(deadline),
            None => Ok(self.join()),
        }
    }

    /// [`join_timeout`](Self::join_timeout) with a deadline.
    ///
    /// A cancellation point (see [`crate::cancel`]): a cancelled caller
    /// gets `Err` with the handle back at once.
    pub fn join_deadline(self, deadline: Instant) -> Result<std::thread::Result<T>, JoinHandle<T>> {
        let finished = {
            let state = self.state().expect("join handle already used");
            if state.is_complete() {
                true
            } else {
                let waker = super::current_waker();
                let point = crate::cancel::Point::new(Some(deadline));
                loop {
                    if state.register(&waker) {
                        break true;
                    }
                    if point.ended().is_some() {
                        // Leave no waker of ours behind: a later completion
                        // must not unpark us while we wait for something
                        // else. (`true`: it completed meanwhile.)
                        break state.register(&noop_waker());
                    }
                    crate::time::park_until(point.deadline());
                }
            }
        };
        if finished {
            let mut this = self;
            Ok(into_result(this.take_outcome()))
        } else {
            Err(self)
        }
    }

    /// Asks the coroutine to stop: it is marked cancelled for good, and its
    /// current or next cancellable wait ends with an error its own code
    /// handles (see [`crate::cancel`] for which waits, and what each
    /// returns). Nothing is unwound by force; [`join`](Self::join) returns
    /// whatever the coroutine returned (or its panic). A no-op for a
    /// finished coroutine and for a [`spawn_blocking`](crate::spawn_blocking)
    /// job. Callable from any thread, any number of times.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let rt = greenstack_runtime::Runtime::new()?;
    /// rt.block_on(|| {
    ///     let listener = greenstack_runtime::net::TcpListener::bind("127.0.0.1:0").unwrap();
    ///     let server = greenstack_runtime::spawn(move || listener.accept().map(|_| ()));
    ///     server.cancel();
    ///     let err = server.join().unwrap().unwrap_err();
    ///     assert!(greenstack_runtime::cancel::is_cancellation(&err));
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn cancel(&self) {
        if let Owner::Task(c) = self.owner() {
            crate::cancel::request(&c.header);
        }
    }

    /// For `select`: wakes `waker` when the coroutine finishes.
    pub(crate) fn watch(&self, waker: &std::task::Waker) {
        if let Some(s) = self.state() {
            s.register(waker);
        }
    }

    /// Undoes [`watch`](Self::watch): leaves no waker of the select behind.
    pub(crate) fn unwatch(&self) {
        if let Some(s) = self.state() {
            s.register(&noop_waker());
        }
    }

    /// Whether the coroutine has finished (its value is ready).
    pub fn is_finished(&self) -> bool {
        self.state().is_some_and(|s| s.is_complete())
    }

    /// The coroutine, if it runs on a greenstack worker (`None` for
    /// [`spawn_blocking`](crate::spawn_blocking) jobs).
    pub fn coroutine(&self) -> Option<&Coroutine> {
        match self.owner() {
            Owner::Task(c) => Some(c),
            Owner::Blocking(_) | Owner::Taken => None,
        }
    }
}

/// A waker that does nothing (`Waker::noop` is newer than our MSRV).
fn noop_waker() -> std::task::Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    std::task::Waker::from(Arc::new(Noop))
}

fn into_result<T>(o: Outcome<T>) -> std::thread::Result<T> {
    match o {
        Outcome::Value(v) => Ok(v),
        Outcome::Panic(p) => Err(*p),
        Outcome::Cancelled => Err(Box::new(Cancelled) as Box<dyn Any + Send>),
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        /// Gives the handle's reference back also when dropping the unread
        /// outcome (the user's value, whose destructor may panic) unwinds.
        struct Release<'a, T>(&'a mut JoinHandle<T>);
        impl<T> Drop for Release<'_, T> {
            fn drop(&mut self) {
                self.0.release();
            }
        }
        let this = Release(self);
        if let Some(s) = this.0.state() {
            let unread = s.detach();
            match this.0.owner() {
                Owner::Task(c) => unread.report(c.header.id.get(), c.header.name()),
                Owner::Blocking(_) | Owner::Taken => unread.report(0, Some("<blocking job>")),
            }
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = std::thread::Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = self.state().expect("JoinHandle polled after completion");
        if state.register(cx.waker()) {
            Poll::Ready(into_result(self.take_outcome()))
        } else {
            Poll::Pending
        }
    }
}

impl<T> Unpin for JoinHandle<T> {}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("coroutine", &self.coroutine())
            .field("finished", &self.is_finished())
            .finish()
    }
}
#[cfg(test)]
mod tests {
    /// The size of the cell a spawn of `f` allocates.
    fn cell_size<F: FnOnce() -> T + Send + 'static, T: Send + 'static>(_: &F) -> usize {
        std::mem::size_of::<super::Cell<F, T>>()
    }

    /// A coroutine whose closure holds a word and returns one costs a cell
    /// of 80 bytes, mimalloc's 80-byte class (the outcome takes the
    /// closure's place, the name and the stack take a word between them);
    /// one holding a few words (a channel end each and a number) at most
    /// 96. The `parked` row of the compare harness counts them per task,
    /// `spawn_join_main` pays for them in fresh pages.
    #[test]
    fn a_cell_of_a_small_closure_fits_80_bytes() {
        let (tx, _rx) = crate::sync::mpsc::channel::<()>();
        let (_otx, orx) = crate::sync::oneshot::channel::<u64>();
        let i = 5u64;
        let parked = move || {
            tx.send(()).unwrap();
            orx.recv().unwrap() + i
        };
        assert!(cell_size(&parked) <= 96, "{} bytes", cell_size(&parked));
        assert!(
            cell_size(&move || i) <= 80,
            "{} bytes",
            cell_size(&move || i)
        );
    }

    /// A handle is one word, as tokio's is: a `Vec` of a million handles
    /// (what `spawn_join` keeps) is 8 MB of fresh pages, not 16.
    #[test]
    fn a_join_handle_is_one_word() {
        use std::mem::size_of;
        assert_eq!(size_of::<super::JoinHandle<u64>>(), size_of::<usize>());
        assert_eq!(size_of::<super::JoinHandle<[u8; 64]>>(), size_of::<usize>());
    }
}
