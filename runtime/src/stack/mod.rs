//! Coroutine stacks that are reserved large, committed small, and grown on
//! fault.
//!
//! # Design
//!
//! Every coroutine runs on a **slot** of a [`StackArena`]: a power-of-two
//! stretch of reserved address space whose lowest page(s) are a hard guard
//! and whose top page is committed when the slot is handed out. Everything
//! between faults when touched. A process-wide SIGSEGV handler (`fault.rs`)
//! running on the thread's alternate signal stack finds the slot by
//! arithmetic on the fault address, commits from the fault address up to the
//! committed floor, and returns; the coroutine never notices. A touch in the
//! hard guard is an overflow: the handler names the coroutine and aborts.
//!
//! ```text
//!   slot_base                                               top
//!   │ hard guard │ growable zone (faults)      │ committed ▲ │
//!   └────────────┴─────────────────────────────┴───────────┴─┘
//!                                              floor       stack grows ◄──
//! ```
//!
//! **Growth is contiguous and geometric.** A fault commits every page from
//! the fault address up to the floor, so any object a frame can point to is
//! committed, and a system call handed a stack buffer never sees an ungrown
//! page (the kernel would return `EFAULT` there, with no signal). Each growth
//! commits at least about as much as is already committed, capped at
//! [`ArenaBuilder::max_growth_step`], so deep recursion takes a few dozen
//! faults, not one per page. "Committed" means made accessible: the pages are
//! populated lazily by the kernel on first touch, so a coroutine that uses 5
//! KiB is charged 8 KiB of memory, not its whole growth step. The one
//! exception: a growth populates the pages just below the fault in one
//! system call (as much as the stack already held, up to 128 KiB), since
//! those are touched next and one call costs less than their page faults.
//!
//! **Size classes.** Each power-of-two reserve size has its own reservation
//! (a class, `class.rs`), created on first use. The fault handler finds the
//! class in a fixed table read without locks.
//!
//! **Guards.** With guard markers (Linux 6.13+, `MADV_GUARD_INSTALL`) the
//! arena is one read-write mapping and the ungrown zone carries markers: the
//! whole arena shows as one or two lines in `/proc/self/maps`. Without them
//! the reservation is `PROT_NONE` and growth is `mprotect`, which costs two
//! mappings per stack set up (live or pooled). The arena then leaves the
//! larger of 4,096 mappings and a sixteenth of `vm.max_map_count` to the
//! rest of the process (malloc and thread stacks need some too), so stacks
//! get `(vm.max_map_count - reserve) / 2` (30,717 at Linux's default of
//! 65,530), counted over every arena of the process, and allocation past
//! that returns an error naming the sysctl. Pooled slots give their
//! mappings back when another size class needs them. The environment
//! variable [`mmap::MAX_MAP_COUNT_ENV`] lowers the limit planned for. Set
//! `GREENSTACK_GUARD_MODE=mprotect` (or [`ArenaBuilder::guard_mode`]) to
//! force the fallback.
//!
//! **Under valgrind** stacks do not grow by fault: valgrind takes a fault
//! on a guard marker for its own crash ("VALGRIND INTERNAL ERROR ...
//! SIGSEGV"), and with the `mprotect` fallback a coroutine that grew by
//! fault jumped to a wrong address after returning (valgrind 3.19). So an
//! arena built in a process valgrind runs (its preload library in
//! `LD_PRELOAD`) uses the `mprotect` fallback (unless told otherwise)
//! and commits each stack whole when it first hands it out: the kernel
//! still backs only the pages a coroutine touches, and only an overflow
//! faults.
//!
//! **Reclaim.** A released slot keeps [`ArenaBuilder::retained_commit`]
//! bytes committed and goes on a LIFO pool, so the next allocation reuses a
//! warm stack with no system call. Pages below the retained top stay while
//! the pool's excess is under [`ArenaBuilder::pool_budget`]; past it, they
//! are given back: in a runtime by its background thread about 20 ms later,
//! or by the slot's next allocation if that comes first
//! ([`ArenaBuilder::defer_trim`]); otherwise by the release itself.
//! [`StackArena::trim_idle`] gives back those of slots that sat pooled
//! through a whole trim interval.
//!
//! **No-fault sections.** Code that must not take a growth fault (a runtime
//! lock held, a queue being edited, the switch itself) first calls
//! [`prefault`] to touch the stack far enough ahead. Growth faults taken
//! inside such a section anyway are counted in
//! [`ArenaStats::nofault_violations`].
//!
//! # Choosing the defaults
//!
//! Measured on the project's 2-vCPU KVM machine (DESIGN.md, and
//! `tests/stack_memory.rs` re-measures it): a parked coroutine whose stack
//! fits its top page costs that page plus its share of a page-table page,
//! 4 KiB × min(1, reserve / 2 MiB). At the 256 KiB default reserve that is
//! 4.5 KiB per coroutine, which keeps a million parked coroutines under
//! 5 KiB each; deeper stacks ask for a larger reserve per coroutine or per
//! runtime. The initial commit is [`DEFAULT_INITIAL_COMMIT`]. Growth commits three
//! times what is committed (the committed size about quadruples), capped at
//! 1 MiB per fault: committing is not populating, so a larger step costs no
//! memory, and it halves the faults of a recursion from the default commit
//! (`deep_stack` in `benches/compare` ran 5% faster than with doubling). A
//! 32 MiB recursion takes about 40 faults
//! (`tests/stack_growth.rs`), and the signal round trip (~3 µs) is then under
//! 2% of the kernel's own per-page fault cost (`benches/stack_growth.rs`).

mod arena;
mod class;
mod fault;
pub mod mmap;

pub(crate) use fault::in_nofault_section;

#[cfg(test)]
mod tests;

use std::io;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::loom::sync::atomic::AtomicUsize;
use std::sync::Arc;

use once_cell::sync::OnceCell;

pub use self::class::GuardMode;
use self::class::{Class, Geometry};
use self::fault::Registration;

/// Default reserve per coroutine stack, hard guard included: 256 KiB.
///
/// The largest power of two whose page-table share keeps a parked coroutine
/// at 4.5 KiB (see the module docs).
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;

/// Default bytes committed at the top of a fresh slot: 32 KiB.
///
/// "Committed" means accessible, not resident: untouched pages cost no
/// memory, so a larger initial commit is free for a coroutine that never
/// uses it. 32 KiB covers the runtime's own look-ahead ([`NOFAULT_PREFAULT`],
/// 16 KiB, touched at every switch) plus the frames of a typical coroutine,
/// so a coroutine that parks takes no growth fault at all. With one page, every
/// coroutine that parked took one (~3 µs; `examples/showcase.rs` shows the
/// fault count), and resident memory per parked coroutine was the same.
pub const DEFAULT_INITIAL_COMMIT: usize = 32 * 1024;

/// Default number of slots per size class: 1,048,576.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Default cap on one growth step: 1 MiB (about 40 faults for 32 MiB).
pub const DEFAULT_MAX_GROWTH_STEP: usize = 1 << 20;

/// Default pooled bytes beyond retained tops before release trims: 64 MiB.
pub const DEFAULT_POOL_BUDGET: usize = 64 << 20;

/// Smallest reserve a slot may have: 16 KiB.
pub const MIN_STACK_SIZE: usize = 16 * 1024;

/// Address space one size class may reserve: 4 TiB, a thirty-second of the
/// 128 TiB user address space of x86-64. A class's capacity is cut to fit.
pub const CLASS_ADDRESS_BUDGET: usize = 4 << 40;

/// Size classes: reserves `2^14 ..= 2^42` ([`MIN_STACK_SIZE`] to
/// [`CLASS_ADDRESS_BUDGET`]).
const CLASSES: usize = 29;

/// Builds a [`StackArena`]; every setting is validated by [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct ArenaBuilder {
    stack_size: usize,
    capacity: usize,
    guard_size: usize,
    initial_commit: usize,
    retained_commit: Option<usize>,
    max_growth_step: usize,
    pool_budget: usize,
    guard_mode: Option<GuardMode>,
    scrub: bool,
    defer_trim: bool,
}

impl Default for ArenaBuilder {
    fn default() -> Self {
        let page = mmap::page_size();
        ArenaBuilder {
            stack_size: DEFAULT_STACK_SIZE,
            capacity: DEFAULT_CAPACITY,
            guard_size: page,
            initial_commit: DEFAULT_INITIAL_COMMIT,
            retained_commit: None,
            max_growth_step: DEFAULT_MAX_GROWTH_STEP,
            pool_budget: DEFAULT_POOL_BUDGET,
            guard_mode: None,
            scrub: false,
            defer_trim: true,
        }
    }
}

impl ArenaBuilder {
    /// Default reserve per stack in bytes, hard guard included; rounded up to
    /// a power of two. Default [`DEFAULT_STACK_SIZE`].
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = bytes;
        self
    }

    /// Slots per size class. Default [`DEFAULT_CAPACITY`]; cut so that a
    /// class reserves at most [`CLASS_ADDRESS_BUDGET`].
    pub fn capacity(mut self, slots: usize) -> Self {
        self.capacity = slots;
        self
    }

    /// Hard guard at the bottom of every slot, in bytes; a page multiple of
    /// at least one page (the default).
    pub fn guard_size(mut self, bytes: usize) -> Self {
        self.guard_size = bytes;
        self
    }

    /// Bytes committed at the top of a fresh slot; a page multiple of at
    /// least one page. Default [`DEFAULT_INITIAL_COMMIT`].
    pub fn initial_commit(mut self, bytes: usize) -> Self {
        self.initial_commit = bytes;
        self
    }

    /// Bytes a released slot keeps committed; at least the initial commit
    /// (the default).
    pub fn retained_commit(mut self, bytes: usize) -> Self {
        self.retained_commit = Some(bytes);
        self
    }

    /// Most bytes one growth fault commits (growth quadruples the
    /// committed size up to this).
    /// Default [`DEFAULT_MAX_GROWTH_STEP`]; at least one page.
    pub fn max_growth_step(mut self, bytes: usize) -> Self {
        self.max_growth_step = bytes;
        self
    }

    /// Committed bytes beyond retained tops that pooled slots may keep
    /// before release gives them back. Default [`DEFAULT_POOL_BUDGET`].
    pub fn pool_budget(mut self, bytes: usize) -> Self {
        self.pool_budget = bytes;
        self
    }

    /// Whether a runtime gives back a release's over-budget pages on its
    /// background thread (the default) instead of on the worker that
    /// finishes the coroutine.
    ///
    /// Giving pages back takes `madvise` and a TLB shootdown across the
    /// runtime's threads; in the background, after a burst of releases, they
    /// cost the finishing coroutines nothing (`deep_stack` in
    /// `benches/compare`: 10–15% of its time). The pool is then over budget
    /// until the background pass, which begins about 20 ms after the release
    /// that went over (later if every CPU is busy), by pages that were
    /// resident while their coroutines ran. Such a slot allocated before the
    /// pass is trimmed by that allocation, so the pages never go live again
    /// and the budget still bounds what pooled slots hand on. With `false`,
    /// on an arena used without a runtime, or once the runtime has shut
    /// down, release gives them back before it returns.
    pub fn defer_trim(mut self, on: bool) -> Self {
        self.defer_trim = on;
        self
    }

    /// Zeroes a reused stack before handing it out, so a coroutine never
    /// sees data a previous one left on the same slot (off by default).
    /// Costs one `madvise` per reuse plus refaulting the pages touched: see
    /// `benches/stack_alloc.rs` (`pooled_scrubbed`) for the figure, and
    /// note that pooled reuse then makes a system call.
    pub fn scrub(mut self, on: bool) -> Self {
        self.scrub = on;
        self
    }

    /// Forces how ungrown stack is guarded. By default: guard markers where
    /// the kernel has them, unless the environment variable
    /// `GREENSTACK_GUARD_MODE` is `mprotect` or the process runs under
    /// valgrind (see "Under valgrind" in the [module docs](self)).
    pub fn guard_mode(mut self, mode: GuardMode) -> Self {
        self.guard_mode = Some(mode);
        self
    }

    /// Validates the settings and creates the arena. Reserves no memory yet:
    /// each size class reserves its address space on first use.
    ///
    /// # Errors
    ///
    /// `InvalidInput` naming the setting at fault; `Unsupported` if guard
    /// markers are forced on a kernel without them.
    pub fn build(self) -> io::Result<StackArena> {
        let page = mmap::page_size();
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.capacity == 0 {
            return bad("stack arena capacity must be at least 1 slot".into());
        }
        if self.capacity >= u32::MAX as usize {
            return bad(format!(
                "stack arena capacity {} exceeds {}",
                self.capacity,
                u32::MAX - 1
            ));
        }
        if self.guard_size == 0 || self.guard_size % page != 0 {
            return bad(format!(
                "guard size {} must be a non-zero multiple of the page size ({page})",
                self.guard_size
            ));
        }
        if self.initial_commit == 0 || self.initial_commit % page != 0 {
            return bad(format!(
                "initial commit {} must be a non-zero multiple of the page size ({page})",
                self.initial_commit
            ));
        }
        let retained = self.retained_commit.unwrap_or(self.initial_commit);
        if retained < self.initial_commit || retained % page != 0 {
            return bad(format!(
                "retained commit {retained} must be a page multiple of at least the initial commit ({})",
                self.initial_commit
            ));
        }
        if self.max_growth_step < page {
            return bad(format!(
                "max growth step {} is below one page ({page})",
                self.max_growth_step
            ));
        }
        let valgrind = under_valgrind();
        let mode = match self.guard_mode {
            Some(GuardMode::Markers) if !mmap::guard_markers_supported() => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "guard markers (MADV_GUARD_INSTALL) need Linux 6.13 or later",
                ))
            }
            Some(m) => m,
            None if valgrind => GuardMode::Mprotect,
            None if std::env::var_os("GREENSTACK_GUARD_MODE").is_some_and(|v| v == "mprotect") => {
                GuardMode::Mprotect
            }
            None if mmap::guard_markers_supported() => GuardMode::Markers,
            None => GuardMode::Mprotect,
        };
        let config = Config {
            guard: self.guard_size,
            initial_commit: self.initial_commit,
            retained_commit: retained,
            max_step: self.max_growth_step,
            pool_budget: self.pool_budget,
            capacity: self.capacity,
            mode,
            commit_all: valgrind,
            scrub: self.scrub,
            defer_trim: self.defer_trim,
        };
        let default_class = config.class_for(self.stack_size, true)?;
        fault::install_handler()?;
        Ok(StackArena {
            inner: Arc::new(Inner {
                config,
                default_class,
                classes: std::array::from_fn(|_| OnceCell::new()),
                trimmer: OnceCell::new(),
            }),
        })
    }
}

/// Validated arena-wide settings.
#[derive(Debug, Clone, Copy)]
struct Config {
    guard: usize,
    initial_commit: usize,
    retained_commit: usize,
    max_step: usize,
    pool_budget: usize,
    capacity: usize,
    mode: GuardMode,
    /// Every slot committed whole at its first use, whatever the commit
    /// settings (under valgrind: see the module docs).
    commit_all: bool,
    scrub: bool,
    defer_trim: bool,
}

/// Whether valgrind runs this process: its core preload library is in
/// `LD_PRELOAD` (valgrind puts it there for every program it runs).
fn under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload"))
}

impl Config {
    /// The class index (log2 of the stride) for a requested reserve.
    ///
    /// A reserve too small to hold the guard, the retained commit and one
    /// page to grow into is an error when `strict` (the arena's default
    /// size, where it means the settings contradict each other), and is
    /// rounded up to the smallest class that does otherwise (a per-spawn
    /// size).
    fn class_for(&self, stack_size: usize, strict: bool) -> io::Result<usize> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if stack_size < mmap::page_size() {
            return bad(format!("stack size {stack_size} is below one page"));
        }
        let max = CLASS_ADDRESS_BUDGET;
        if stack_size > max {
            return bad(format!(
                "stack size {stack_size} exceeds the largest reserve ({max} bytes)"
            ));
        }
        let needed = self
            .guard
            .checked_add(self.retained_commit)
            .and_then(|n| n.checked_add(mmap::page_size()))
            .filter(|&n| n <= max)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "guard ({}) and retained commit ({}) exceed the largest reserve ({max} bytes)",
                        self.guard, self.retained_commit
                    ),
                )
            })?;
        let stride = stack_size.next_power_of_two().max(MIN_STACK_SIZE);
        if needed > stride && strict {
            return bad(format!(
                "stack size {stride} cannot hold the guard ({}) and retained commit ({}) plus a page",
                self.guard, self.retained_commit
            ));
        }
        let stride = stride.max(needed.next_power_of_two());
        if stride > max {
            return bad(format!(
                "guard and commit settings need a reserve over the largest ({max} bytes)"
            ));
        }
        Ok(stride.trailing_zeros() as usize - 14)
    }

    fn geometry(&self, class: usize) -> Geometry {
        let stride = 1usize << (class + 14);
        // `class_for` made every stride hold the guard and a page more.
        let (initial_commit, retained_commit) = if self.commit_all {
            (stride - self.guard, stride - self.guard)
        } else {
            (self.initial_commit, self.retained_commit)
        };
        Geometry {
            stride,
            guard: self.guard,
            initial_commit,
            retained_commit,
            max_step: self.max_step,
            pool_budget: self.pool_budget,
            capacity: self.capacity.min(CLASS_ADDRESS_BUDGET / stride).max(1),
            mode: self.mode,
            scrub: self.scrub,
            defer_trim: self.defer_trim,
        }
    }
}

/// A size class as the arena holds it: the registration is dropped (and the
/// handler forgets the class) before the class itself.
struct ClassHandle {
    /// Held only for its `Drop`, which must run before `class` is freed.
    _registration: Registration,
    class: Box<Class>,
}

impl Drop for Inner {
    /// The arena is gone: threads stop caching its slots, and this thread's
    /// cached ones go back now, so its classes (their reservations and
    /// their entries in the fault handler's table) are freed as soon as the
    /// last slot is. Worker threads flush theirs when they exit.
    fn drop(&mut self) {
        for h in self.classes.iter().filter_map(OnceCell::get) {
            h.class.closed.store(true, Ordering::Relaxed);
            flush_magazine(h);
        }
    }
}

struct Inner {
    config: Config,
    default_class: usize,
    classes: [OnceCell<Arc<ClassHandle>>; CLASSES],
    /// The runtime's background trimmer, given to each class it creates.
    trimmer: OnceCell<Arc<class::Trimmer>>,
}

/// Distinct stack colours (see `Slot::set_colour`); the largest offset,
/// 448 bytes, is far inside the top a slot has committed when handed out.
pub(crate) const STACK_COLOURS: usize = 8;

/// Bytes between two colours: one cache line.
const COLOUR_STEP: usize = 64;

// A colour keeps the base aligned for corosensei, inside the page that is
// always committed at hand-out, and far inside the smallest slot (which
// `Slot::index` relies on).
const _: () = assert!(COLOUR_STEP % corosensei::stack::STACK_ALIGNMENT == 0);
const _: () = assert!((STACK_COLOURS - 1) * COLOUR_STEP < 4096);
const _: () = assert!((STACK_COLOURS - 1) * COLOUR_STEP < MIN_STACK_SIZE);

/// Reserved address space for coroutine stacks, handed out as [`Slot`]s
/// from any thread and taken back on any thread.
///
/// Cloning is cheap and shares the arena.
///
/// # Examples
///
/// ```
/// use greenstack_runtime::stack::StackArena;
///
/// let arena = StackArena::builder().stack_size(64 * 1024).build()?;
/// let slot = arena.allocate()?;
/// assert_eq!(slot.reserve(), 64 * 1024);
/// assert_eq!(arena.stats().live_slots, 1);
/// drop(slot);
/// assert_eq!(arena.stats().pooled_slots, 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct StackArena {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StackArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackArena")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl StackArena {
    /// A builder with the default settings.
    pub fn builder() -> ArenaBuilder {
        ArenaBuilder::default()
    }

    /// An arena with the default settings.
    pub fn new() -> io::Result<StackArena> {
        ArenaBuilder::default().build()
    }

    /// How this arena guards ungrown stack.
    pub fn guard_mode(&self) -> GuardMode {
        self.inner.config.mode
    }

    /// The default reserve per stack, in bytes.
    pub fn default_stack_size(&self) -> usize {
        1 << (self.inner.default_class + 14)
    }

    /// Hands out a slot of the default reserve.
    ///
    /// # Errors
    ///
    /// When every slot is live, or a system call fails (its error, or one
    /// naming `vm.max_map_count` when the fallback hits the mapping limit).
    pub fn allocate(&self) -> io::Result<Slot> {
        self.allocate_class(self.inner.default_class)
    }

    /// Hands out a slot whose reserve is at least `stack_size` bytes (rounded
    /// up to a power of two, hard guard included, and at least the smallest
    /// reserve that holds the guard and the commit settings).
    ///
    /// # Errors
    ///
    /// As [`allocate`](Self::allocate), plus `InvalidInput` for a size the
    /// arena cannot serve.
    pub fn allocate_with(&self, stack_size: usize) -> io::Result<Slot> {
        let class = self.inner.config.class_for(stack_size, false)?;
        self.allocate_class(class)
    }

    /// Promises the caller a slot of the default size (`None`) or of at
    /// least `stack_size` bytes, to be taken later, on any thread, with
    /// [`Reservation::into_slot`]: what a coroutine gets at spawn, so that
    /// its stack is bound only when it first runs, from the running
    /// worker's warm slots, while a spawn past the arena's capacity still
    /// fails at once.
    ///
    /// # Errors
    ///
    /// As [`allocate_with`](Self::allocate_with): every slot of the class
    /// is live or promised (`OutOfMemory`), or the size cannot be served.
    pub(crate) fn reserve(&self, stack_size: Option<usize>) -> io::Result<Reservation> {
        let class = match stack_size {
            Some(s) => self.inner.config.class_for(s, false)?,
            None => self.inner.default_class,
        };
        let handle = self.class_handle(class)?;
        take_credit(handle)?;
        // No count on the class: a shared atomic increment per spawn and a
        // decrement per start, from different workers, bounce its cache
        // line. The arena keeps the class (see `Reservation`).
        Ok(Reservation {
            class: std::ptr::NonNull::from(&**handle),
        })
    }

    /// The class's handle, made on first use.
    fn class_handle(&self, class: usize) -> io::Result<&Arc<ClassHandle>> {
        self.inner.classes[class].get_or_try_init(|| {
            let class = Box::new(Class::new(self.inner.config.geometry(class))?);
            if let Some(t) = self.inner.trimmer.get() {
                let _ = class.trimmer.set(Arc::clone(t));
            }
            let registration = fault::register(&class)?;
            Ok::<_, io::Error>(Arc::new(ClassHandle {
                _registration: registration,
                class,
            }))
        })
    }

    fn allocate_class(&self, class: usize) -> io::Result<Slot> {
        let handle = self.class_handle(class)?;
        take_credit(handle)?;
        self.slot_of(handle).inspect_err(|_| give_credit(handle))
    }

    /// A slot of `handle`'s class, for a caller holding one of its credits
    /// (which goes into the slot): this thread's warm one if it has one.
    fn slot_of(&self, handle: &Arc<ClassHandle>) -> io::Result<Slot> {
        fault::ensure_thread_altstack()?;
        let (class, index) = match magazine_take(handle) {
            Some((class, i)) => {
                class.class.reuse_retired(i)?;
                (class, i)
            }
            None => match handle.class.allocate() {
                Ok(i) => (Arc::clone(handle), i),
                // With the `mprotect` fallback at the mapping budget, slots
                // pooled in any class give their mappings back, once.
                Err(e) if mmap::is_budget_spent(&e) => {
                    let freed: usize = self.handles().map(|h| h.class.reclaim_mappings()).sum();
                    if freed == 0 {
                        return Err(e);
                    }
                    (Arc::clone(handle), handle.class.allocate()?)
                }
                Err(e) => return Err(e),
            },
        };
        let base = class.class.slot_top(index as usize);
        Ok(Slot {
            class: ManuallyDrop::new(class),
            base,
        })
    }

    /// Gives back the pages of pooled slots that have not been reused since
    /// the previous call, and finishes any over-budget trim left for the
    /// background. Call it periodically; returns the bytes given back.
    pub fn trim_idle(&self) -> u64 {
        self.handles()
            .map(|h| {
                // Slots this thread holds back become trimmable too.
                flush_magazine(h);
                h.class.trim_over_budget(&|| false) + h.class.trim_idle()
            })
            .sum()
    }

    /// Sets the runtime's background trimmer: `wake` is called (from a
    /// thread releasing a slot, never from the fault handler) when a release
    /// left its over-budget pages for [`trim_over_budget`](Self::trim_over_budget).
    /// Set it before the arena's first allocation, as a class created
    /// concurrently may miss it (it then trims at once). A second call is
    /// ignored.
    pub(crate) fn set_trimmer(&self, wake: Box<dyn Fn() + Send + Sync>) {
        if self
            .inner
            .trimmer
            .set(Arc::new(class::Trimmer::new(wake)))
            .is_err()
        {
            return;
        }
        let t = self.inner.trimmer.get().expect("just set");
        for h in self.handles() {
            let _ = h.class.trimmer.set(Arc::clone(t));
        }
    }

    /// The background trimmer is ending: from now on releases trim at once.
    pub(crate) fn stop_trimmer(&self) {
        if let Some(t) = self.inner.trimmer.get() {
            t.stop();
        }
    }

    /// Whether a release asked the background trimmer for a pass.
    pub(crate) fn trim_pending(&self) -> bool {
        self.handles().any(|h| h.class.trim_pending())
    }

    /// The background trimmer's pass: trims the slots whose releases left
    /// their over-budget pages to it, where a release asked for a pass.
    /// Stops early once `stop` returns true. Returns the bytes given back.
    pub(crate) fn trim_over_budget(&self, stop: &dyn Fn() -> bool) -> u64 {
        self.handles().map(|h| h.class.trim_over_budget(stop)).sum()
    }

    fn handles(&self) -> impl Iterator<Item = &Arc<ClassHandle>> {
        self.inner.classes.iter().filter_map(OnceCell::get)
    }

    /// A snapshot of the arena's counters.
    pub fn stats(&self) -> ArenaStats {
        let mut s = ArenaStats::default();
        for h in self.handles() {
            let c = &h.class;
            let n = &c.counters;
            s.reserved_bytes += c.geo.capacity * c.geo.stride;
            s.capacity_slots += c.geo.capacity;
            s.committed_bytes += n.committed.load(Ordering::Relaxed);
            s.live_slots += n.live.get() as usize;
            s.pooled_slots += c.pooled() as usize;
            s.growth_faults += n.growth_faults.load(Ordering::Relaxed);
            s.bytes_grown += n.bytes_grown.load(Ordering::Relaxed);
            s.bytes_reclaimed += n.bytes_reclaimed.load(Ordering::Relaxed);
            s.nofault_violations += n.violations.load(Ordering::Relaxed);
        }
        s
    }
}

/// Counters of a [`StackArena`], summed over its size classes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArenaStats {
    /// Address space reserved, in bytes.
    pub reserved_bytes: usize,
    /// Slots the arena can hand out at once, over all classes in use.
    pub capacity_slots: usize,
    /// Bytes committed (made accessible) in live and pooled slots.
    pub committed_bytes: usize,
    /// Slots handed out now.
    pub live_slots: usize,
    /// Slots released and kept for reuse.
    pub pooled_slots: usize,
    /// Growth faults served.
    pub growth_faults: u64,
    /// Bytes committed by growth faults.
    pub bytes_grown: u64,
    /// Bytes given back by reclaim.
    pub bytes_reclaimed: u64,
    /// Growth faults taken inside no-fault sections (should stay 0).
    pub nofault_violations: u64,
}

/// One coroutine stack from a [`StackArena`]. Returned to the arena's pool
/// on drop.
///
/// It implements corosensei's `Stack`, so it can be handed to
/// `Coroutine::with_stack`. The thread that resumes the coroutine must have
/// called [`prepare_thread`] (allocation does it for the allocating thread).
///
/// A slot is two words on purpose: a result of this size comes back from a
/// call in registers. With the name's `Box<str>` as a field (32 bytes), the
/// result went through memory and the caller's 16-byte copy of it could not
/// be forwarded from the callee's narrower stores: `perf annotate` of
/// `spawn_join workers=2` put those copies among the hottest instructions of
/// starting a coroutine, and dropping the field took spawn_join from 139 to
/// 126 ns per task (medians of 6 alternating runs). The name is owned through the slot's metadata instead
/// (see [`set_identity`](Slot::set_identity)).
pub struct Slot {
    /// Taken in `drop` (moved into the thread's magazine, or dropped).
    class: ManuallyDrop<Arc<ClassHandle>>,
    /// Where a coroutine's frames start: the slot's top, less its colour
    /// (see [`set_colour`](Slot::set_colour)). Kept whole, not as an index,
    /// because corosensei reads it on every resume; the index is derived
    /// from it (see [`index`](Slot::index)).
    base: usize,
}

// Two words, so results carrying a slot come back in registers (above).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<io::Result<Slot>>() == 2 * std::mem::size_of::<usize>());

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("index", &self.index())
            .field("reserve", &self.reserve())
            .field("committed", &self.committed())
            .finish()
    }
}

impl Slot {
    fn class(&self) -> &Class {
        &self.class.class
    }

    /// The slot's index in its class: `base` lies in `(slot_base, slot_top]`
    /// of that index, since a colour is far smaller than a stride (a power
    /// of two).
    fn index(&self) -> u32 {
        let class = self.class();
        ((self.base - 1 - class.base) >> class.geo.stride.trailing_zeros()) as u32
    }

    /// Starts a coroutine's frames `(colour % STACK_COLOURS)` cache lines
    /// below the top instead of at it. Call before handing the slot to a
    /// coroutine; the offset then holds for the coroutine's life.
    ///
    /// Why: slot tops are a power-of-two stride apart, so two coroutines
    /// at the same depth on two workers would touch lines that map to the
    /// same L1 cache set. On this project's 2-vCPU machine, whose two vCPUs
    /// at times share one core's L1, that costs up to a quarter of the
    /// two-thread throughput: two threads running one store-heavy loop on
    /// identically aligned stacks reached 1.47× the speed of one, and
    /// 1.92–2.01× 64 bytes apart. `fanout_fib workers=2` went from 131 to
    /// 127 ns per task with the vCPUs apart, and from 170 to 155 with them
    /// together (medians of 6–8 alternating runs). The scheduler colours by
    /// worker (a started coroutine stays on its worker), so coroutines on
    /// different workers never share a colour, up to [`STACK_COLOURS`]
    /// workers.
    pub(crate) fn set_colour(&mut self, colour: usize) {
        self.base = self.top() - (colour % STACK_COLOURS) * COLOUR_STEP;
    }

    /// Names the coroutine on this stack for the overflow report. The name is
    /// copied and kept with the slot until it is released or renamed.
    pub fn set_identity(&mut self, id: u64, name: Option<&str>) {
        let index = self.index();
        self.drop_name(index);
        let (p, n) = name.map_or((0, 0), |s| {
            let n = s.len();
            (Box::into_raw(Box::<str>::from(s)).cast::<u8>() as usize, n)
        });
        let meta = &self.class().metas[index as usize];
        meta.id.store(id, Ordering::Relaxed);
        meta.name_len.store(n, Ordering::Relaxed);
        // Release: the handler's Acquire load of `name_ptr` sees the length.
        meta.name_ptr.store(p, Ordering::Release);
    }

    /// Unpublishes and frees the name this slot (of index `index`) owns,
    /// if any.
    ///
    /// The bytes at a non-zero `name_ptr` are a `Box<str>` of `name_len`
    /// bytes leaked by [`set_identity`](Slot::set_identity) and owned by
    /// the live slot of that index: only its holder writes the two fields
    /// (metadata starts zeroed, and `Class::retire` zeroes them again once
    /// this has run), and the fault handler only reads them, on the thread
    /// running the coroutine.
    fn drop_name(&mut self, index: u32) {
        let meta = &self.class().metas[index as usize];
        let p = meta.name_ptr.load(Ordering::Relaxed);
        if p == 0 {
            return;
        }
        // Release: a report made after this sees no name, not freed bytes.
        meta.name_ptr.store(0, Ordering::Release);
        let n = meta.name_len.load(Ordering::Relaxed);
        // SAFETY: per the invariant above, `(p, n)` is a leaked `Box<str>`
        // this slot owns; with `name_ptr` cleared nothing can reach it any
        // more, so it is freed exactly once.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(p as *mut u8, n) as *mut str)
        });
    }

    /// The reserve in bytes, hard guard included.
    pub fn reserve(&self) -> usize {
        self.class().geo.stride
    }

    /// Bytes usable for frames: the reserve less the hard guard.
    pub fn usable(&self) -> usize {
        self.class().geo.stride - self.class().geo.guard
    }

    /// Bytes committed now.
    pub fn committed(&self) -> usize {
        let floor = self.class().metas[self.index() as usize]
            .floor
            .load(Ordering::Acquire);
        self.class().slot_top(self.index() as usize) - floor
    }

    /// The most bytes this slot has had committed, across reuse.
    pub fn high_water(&self) -> usize {
        self.class().metas[self.index() as usize]
            .high_water
            .load(Ordering::Relaxed)
    }

    /// Highest address of the stack (one past its top byte).
    pub fn top(&self) -> usize {
        self.class().slot_top(self.index() as usize)
    }

    /// Lowest address that may ever be committed (just above the hard guard).
    pub fn bottom(&self) -> usize {
        self.class().zone_bottom(self.index() as usize)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let index = self.index();
        self.drop_name(index);
        // SAFETY: `class` is taken exactly once, here, and not used after
        // (`index` was read before).
        let class = unsafe { ManuallyDrop::take(&mut self.class) };
        if class.class.retire(index) {
            give_credit(&class);
            class.class.release_deferred(index);
        } else if let Err((class, index)) = magazine_put(class, index) {
            give_credit(&class);
            class.class.alloc.release(index);
        }
    }
}

/// A slot promised by [`StackArena::reserve`], not yet taken: one credit of
/// its class, given back if the reservation is dropped unused.
///
/// It holds its class uncounted: it must be used or dropped while the
/// arena that made it lives (the arena holds every class). The scheduler
/// keeps a reservation in a coroutine's task, whose header holds the
/// runtime, and so its arena, until the task is freed; and the reservation
/// is taken out of the task (to start the coroutine or to drop it unrun)
/// while the task is referenced.
pub(crate) struct Reservation {
    class: std::ptr::NonNull<ClassHandle>,
}

// SAFETY: the class it points to is `Sync` (shared by every thread of the
// arena), and a reservation is used by one thread at a time.
unsafe impl Send for Reservation {}

// `Reservation::into_raw`'s pointers are even (a task cell tags its other
// kind of stack with the low bit).
const _: () = assert!(std::mem::align_of::<ClassHandle>() >= 2);

impl Reservation {
    /// The reservation as a pointer (even: its class's), for a task cell to
    /// keep in one word; [`from_raw`](Self::from_raw) makes it again.
    pub(crate) fn into_raw(self) -> std::ptr::NonNull<u8> {
        ManuallyDrop::new(self).class.cast()
    }

    /// A reservation [`into_raw`](Self::into_raw) made into a pointer.
    ///
    /// # Safety
    /// `p` came from `into_raw`, and is made into a reservation once.
    pub(crate) unsafe fn from_raw(p: std::ptr::NonNull<u8>) -> Reservation {
        Reservation { class: p.cast() }
    }

    /// Takes the promised slot, on the calling thread: its warm one if it
    /// has one. The reservation's credit goes into the slot.
    ///
    /// # Errors
    ///
    /// Rarely: the class's free slots all sit in other threads' magazines
    /// (at most 32 per thread), or the system refused memory for a slot's
    /// first use. The credit is given back.
    ///
    /// # Panics
    ///
    /// If `arena` is not the arena that made the reservation.
    pub(crate) fn into_slot(self, arena: &StackArena) -> io::Result<Slot> {
        let this = ManuallyDrop::new(self);
        let handle = arena
            .handles()
            .find(|h| std::ptr::eq(Arc::as_ptr(h), this.class.as_ptr()))
            .expect("a reservation used with another arena");
        let r = arena.slot_of(handle);
        if r.is_err() {
            give_credit(handle);
        }
        r
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the arena that made the reservation lives (the type's
        // contract), and holds the class in an `Arc`: the pointer is valid,
        // and a count taken on it is a count of that `Arc`.
        let handle = unsafe {
            Arc::increment_strong_count(self.class.as_ptr());
            Arc::from_raw(self.class.as_ptr())
        };
        give_credit(&handle);
    }
}

/// Slots a thread released, kept for its next allocations of the same
/// class: the stack pages they touched are still in this core's caches, and
/// taking them back touches no shared cache line (the slot's reference to
/// its class moves in and out without a count change). Measured on
/// `fanout_fib` with 2 workers: without them, the shared free list and cold
/// stacks made two workers slower than one.
struct Magazine {
    /// Identifies the class (compared, never dereferenced).
    key: *const ClassHandle,
    slots: Vec<(Arc<ClassHandle>, u32)>,
    /// Credits of the class this thread took in a batch and has not used
    /// (see [`take_credit`]); the class, for giving them back.
    credits: usize,
    class: Option<Arc<ClassHandle>>,
}

/// Credits a thread takes from its class's shared count at once, and gives
/// back at once when it holds twice as many: one shared atomic operation
/// per this many spawns, not per spawn (the count's cache line would bounce
/// between the spawning and the finishing workers).
const CREDIT_BATCH: usize = 16;

/// Takes one credit of `handle`'s class for a slot or a reservation: from
/// this thread's batch, else a new batch from the class's count. Exact for
/// classes whose threads cache nothing (small arenas); in the others, up to
/// `2 * CREDIT_BATCH` credits per thread sit in batches, as up to 32 slots
/// sit in magazines: under 2% of a big arena's capacity.
fn take_credit(handle: &Arc<ClassHandle>) -> io::Result<()> {
    let class = &handle.class;
    if class.magazine_size() > 0 {
        let took = MAGAZINES.try_with(|m| {
            let mut mags = m.borrow_mut();
            let mag = magazine_for(&mut mags, handle);
            if mag.credits > 0 {
                mag.credits -= 1;
                return true;
            }
            match class.credits.take(CREDIT_BATCH) {
                0 => false,
                n => {
                    mag.credits = n - 1;
                    true
                }
            }
        });
        match took {
            Ok(true) => return Ok(()),
            Ok(false) => return Err(exhausted(class)),
            // The thread is exiting: straight from the count.
            Err(_) => {}
        }
    }
    if class.credits.take(1) == 1 {
        Ok(())
    } else {
        Err(exhausted(class))
    }
}

/// Gives back one credit of `handle`'s class (a slot was released or a
/// reservation dropped): into this thread's batch, and half the batch to
/// the class when it holds two.
fn give_credit(handle: &Arc<ClassHandle>) {
    let class = &handle.class;
    if class.magazine_size() > 0 {
        let kept = MAGAZINES.try_with(|m| {
            let mut mags = m.borrow_mut();
            magazine_for(&mut mags, handle).keep_credit(class);
        });
        if kept.is_ok() {
            return;
        }
    }
    class.credits.give(1);
}

/// The error of a class whose every slot is live or promised.
fn exhausted(class: &Class) -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!(
            "stack arena exhausted: all {} slots of {} KiB are live, promised to coroutines that have not started, or cached by other threads (raise the arena's capacity)",
            class.geo.capacity,
            class.geo.stride / 1024
        ),
    )
}

/// This thread's magazine for `handle`'s class, made if missing.
///
/// Inlined, with the making out of line: called three times per coroutine
/// (credit at spawn, slot at start, both back at exit), and as a call its
/// register saves cost more than its search of one or two magazines
/// (callgrind: 32 instructions per call out of line).
#[inline(always)]
fn magazine_for<'a>(mags: &'a mut Vec<Magazine>, handle: &Arc<ClassHandle>) -> &'a mut Magazine {
    let key = Arc::as_ptr(handle);
    match mags.iter().position(|g| g.key == key) {
        Some(i) => &mut mags[i],
        None => new_magazine(mags, handle),
    }
}

/// [`magazine_for`]'s first call for a class on this thread.
#[cold]
#[inline(never)]
fn new_magazine<'a>(mags: &'a mut Vec<Magazine>, handle: &Arc<ClassHandle>) -> &'a mut Magazine {
    mags.retain(|g| !g.slots.is_empty() || g.credits > 0);
    mags.push(Magazine {
        key: Arc::as_ptr(handle),
        slots: Vec::new(),
        credits: 0,
        class: Some(Arc::clone(handle)),
    });
    mags.last_mut().expect("just pushed")
}

impl Magazine {
    /// Keeps one given-back credit of `class` (this magazine's class), and
    /// gives half the batch to the class when it holds two.
    fn keep_credit(&mut self, class: &Class) {
        self.credits += 1;
        if self.credits >= 2 * CREDIT_BATCH {
            self.credits -= CREDIT_BATCH;
            class.credits.give(CREDIT_BATCH);
        }
    }
}

thread_local! {
    static MAGAZINES: std::cell::RefCell<Vec<Magazine>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for Magazine {
    /// On thread exit (or flush), the slots go back to their classes' pools
    /// and the credits to their counts.
    fn drop(&mut self) {
        for (class, i) in self.slots.drain(..) {
            class.class.alloc.release(i);
        }
        if let Some(class) = self.class.take() {
            class.class.credits.give(self.credits);
            self.credits = 0;
        }
    }
}

/// Empties all of this thread's magazines into their classes' shared pools:
/// a worker does it before it sleeps, so slots it holds back become
/// reusable by others and trimmable by `trim_idle`.
pub(crate) fn flush_thread_magazines() {
    let _ = MAGAZINES.try_with(|m| {
        let mut mags = m.borrow_mut();
        if mags.iter().any(|g| !g.slots.is_empty() || g.credits > 0) {
            mags.clear();
        }
    });
}

/// Empties this thread's magazine for `class` into its shared pool.
fn flush_magazine(class: &ClassHandle) {
    let _ = MAGAZINES.try_with(|m| {
        m.borrow_mut().retain(|g| !std::ptr::eq(g.key, class));
    });
}

/// Keeps a retired slot in this thread's magazine, and its credit as
/// [`give_credit`] would, in one visit of the thread's magazines (a slot's
/// release is on every coroutine's exit); gives the slot back, its credit
/// not given, if the magazine is full (or the class keeps none).
fn magazine_put(class: Arc<ClassHandle>, index: u32) -> Result<(), (Arc<ClassHandle>, u32)> {
    let cap = class.class.magazine_size();
    if cap == 0 {
        return Err((class, index));
    }
    let mut item = Some((class, index));
    let _ = MAGAZINES.try_with(|m| {
        let mut mags = m.borrow_mut();
        let handle = &item.as_ref().expect("not yet placed").0;
        let mag = magazine_for(&mut mags, handle);
        if mag.slots.len() < cap {
            mag.keep_credit(&handle.class);
            mag.slots.push(item.take().expect("not yet placed"));
        }
    });
    match item {
        None => Ok(()),
        Some(it) => Err(it),
    }
}

/// Takes a slot of `class` from this thread's magazine.
fn magazine_take(class: &Arc<ClassHandle>) -> Option<(Arc<ClassHandle>, u32)> {
    MAGAZINES
        .try_with(|m| {
            let mut mags = m.borrow_mut();
            let mag = mags
                .iter_mut()
                .find(|g| std::ptr::eq(g.key, Arc::as_ptr(class)))?;
            mag.slots.pop()
        })
        .ok()
        .flatten()
}

impl Slot {
    /// A second view of this slot's committed size, for the stack checker.
    ///
    /// # Safety
    ///
    /// - The gauge must not be used after this slot is dropped (it points
    ///   into the slot's class, which the slot keeps alive). The scheduler
    ///   keeps both in one `Running` and reads the gauge only while the
    ///   coroutine, which owns the slot, exists.
    pub(crate) unsafe fn gauge(&self) -> StackGauge {
        let class = &self.class.class;
        let i = self.index() as usize;
        StackGauge {
            bottom: class.zone_bottom(i),
            top: class.slot_top(i),
            floor: &class.metas[i].floor as *const AtomicUsize,
            reserve: class.geo.stride,
        }
    }
}

/// Reads a live slot's committed floor without owning the slot (and
/// without touching the class's reference count, which every worker would
/// otherwise bounce). Valid while the slot lives; see [`Slot::gauge`].
pub(crate) struct StackGauge {
    bottom: usize,
    top: usize,
    /// Points into the class's metadata, alive while the slot is.
    floor: *const AtomicUsize,
    reserve: usize,
}

impl StackGauge {
    /// Bytes committed now.
    pub(crate) fn committed(&self) -> usize {
        // SAFETY: per `Slot::gauge`'s contract the slot, and so its class's
        // metadata, is alive while the gauge is used.
        self.top - unsafe { &*self.floor }.load(Ordering::Acquire)
    }

    /// The slot's reserve, guard included.
    pub(crate) fn reserve(&self) -> usize {
        self.reserve
    }

    /// Whether `sp` lies inside this slot's stack.
    pub(crate) fn contains(&self, sp: usize) -> bool {
        sp >= self.bottom && sp < self.top
    }

    /// Tells `prefault` on this thread that this stack is the running one,
    /// so it need not search the class table. `None` when switching away.
    pub(crate) fn set_running(gauge: Option<&StackGauge>) {
        let r = gauge.map_or(RunningStack::NONE, |g| RunningStack {
            bottom: g.bottom,
            top: g.top,
            floor: g.floor,
        });
        RUNNING_STACK.with(|c| c.set(r));
    }
}

/// The stack the thread is running a coroutine on, as far as the scheduler
/// told us.
#[derive(Clone, Copy)]
struct RunningStack {
    bottom: usize,
    top: usize,
    floor: *const AtomicUsize,
}

impl RunningStack {
    const NONE: RunningStack = RunningStack {
        bottom: 0,
        top: 0,
        floor: std::ptr::null(),
    };
}

thread_local! {
    static RUNNING_STACK: std::cell::Cell<RunningStack> = const { std::cell::Cell::new(RunningStack::NONE) };
}

// SAFETY: `base` is the slot's top less its colour (a multiple of 64 bytes,
// at most 448: asserted at `COLOUR_STEP` to keep STACK_ALIGNMENT and to stay
// inside the top page), and `limit` its lowest address, hard guard included,
// page-aligned. The guard faults on any access and the handler reports it as
// an overflow; the top is committed before the slot is handed out, and the
// rest grows on fault, so the usable part (at least MIN_STACK_SIZE - guard -
// page - colour > 3 KiB) is reachable. The slot is not reused while this
// value lives.
unsafe impl corosensei::stack::Stack for Slot {
    fn base(&self) -> corosensei::stack::StackPointer {
        corosensei::stack::StackPointer::new(self.base).expect("slot base is non-zero")
    }

    fn limit(&self) -> corosensei::stack::StackPointer {
        let base = self.class().slot_base(self.index() as usize);
        corosensei::stack::StackPointer::new(base).expect("slot base is non-zero")
    }
}

/// Gives the calling thread an alternate signal stack big enough for the
/// growth handler (64 KiB with a guard page, unless it has one that size).
/// Threads that resume coroutines on arena stacks call it before the first
/// resume (the runtime's workers do).
///
/// It changes no signal's action. A signal handler installed without
/// `SA_ONSTACK` has its frame (about 3.3 KiB with AVX-512 state) pushed
/// below a coroutine's stack pointer; if that lands on ungrown stack the
/// kernel drops the signal and raises SIGSEGV instead, which the growth
/// handler reports. Install handlers of signals that may interrupt
/// coroutines with `SA_ONSTACK` (see the `fault` module's "Other signals").
pub fn prepare_thread() -> io::Result<()> {
    fault::ensure_thread_altstack()?;
    Ok(())
}

/// Makes sure the next `bytes` of stack below the caller are committed, so
/// code that follows can use that much stack without a growth fault.
///
/// Costs one touch of a page (~9 ns) when the memory is already committed;
/// otherwise one growth fault per 256 KiB still to commit at most (one in
/// all for most requests, since growth is geometric). A no-op outside an
/// arena stack. If fewer than `bytes` remain before the hard guard, commits
/// what remains.
///
/// # Examples
///
/// ```
/// // Before calling into C code that must not take a growth fault:
/// greenstack_runtime::stack::prefault(16 * 1024);
/// ```
///
/// The running stack, published by the scheduler, is checked first; other
/// stacks (a thread that resumes coroutines by hand) take a search of the
/// class table. The runtime calls this about three times per channel
/// hand-off, so the fast path is a thread-local read, two compares and the
/// floor's load: the first version (a `black_box`ed local for the stack
/// pointer, an out-of-line lookup returning an `Option`) was 15% of
/// `channel_pingpong workers=1` by `perf record`.
#[inline(never)]
pub fn prefault(bytes: usize) {
    prefault_here(bytes);
}

/// The body of [`prefault`], for callers that are themselves out of line
/// (so a no-fault section is entered with one call, not two).
#[inline(always)]
fn prefault_here(bytes: usize) {
    let sp = stack_pointer();
    // No switch happens in this function, so reading the thread-local here
    // directly is safe (STYLE.md on TLS around switches).
    let r = RUNNING_STACK.with(std::cell::Cell::get);
    let (bottom, floor) = if sp >= r.bottom && sp < r.top {
        // SAFETY: the scheduler publishes a gauge only while it keeps the
        // slot (and its class) alive, and clears it before letting go.
        (r.bottom, unsafe { &*r.floor }.load(Ordering::Acquire))
    } else {
        match fault::locate(sp) {
            Some(l) => (l.zone_bottom, l.floor),
            None => return,
        }
    };
    let target = sp.saturating_sub(bytes).max(bottom);
    if target < floor {
        grow_to(target, floor);
    }
}

/// Grows the running stack until its committed floor is at or below
/// `target`, from `floor`: the slow path of [`prefault`].
///
/// In marker mode only the [`BAND`](class::BAND) below the floor faults;
/// under it, the ungrown zone is read-write memory without markers, where a
/// touch takes no fault and grows nothing (so a prefault of more than
/// 256 KiB below the floor once did nothing at all). So each touch lands in
/// the band, at most 256 KiB below the floor, and the growth it causes (at
/// least down to the touch, geometric past it) moves the band down for the
/// next. With the `mprotect` fallback the whole zone faults, and the first
/// touch usually suffices.
#[cold]
#[inline(never)]
fn grow_to(target: usize, mut floor: usize) {
    loop {
        touch(target.max(floor.saturating_sub(class::BAND)));
        // The handler moved the floor on this thread, before the touch
        // returned.
        let Some(now) = fault::locate(target).map(|l| l.floor) else {
            return;
        };
        if now <= target || now >= floor {
            // Done, or the touch grew nothing (not our stack any more): stop
            // rather than spin.
            return;
        }
        floor = now;
    }
}

/// The caller's stack pointer (near enough: within its frame).
#[inline(always)]
pub(crate) fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads a register; no memory is touched.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let here = 0u8;
        sp = std::hint::black_box(&here) as *const u8 as usize;
    }
    sp
}

/// Reads one byte at `addr` without Rust ever seeing the value.
#[inline(always)]
fn touch(addr: usize) {
    // SAFETY: `addr` lies in the growable zone of the caller's own live slot,
    // which is mapped (read-write, or guarded so that the read faults and the
    // handler commits it). The read is done in asm so no uninitialized value
    // enters Rust's memory model.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {t}, byte ptr [{a}]", a = in(reg) addr, t = out(reg_byte) _,
            options(nostack, readonly, preserves_flags));
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("ldrb {t:w}, [{a}]", a = in(reg) addr, t = out(reg) _,
            options(nostack, readonly, preserves_flags));
    }
}

/// Bytes the runtime prefaults before a no-fault section: 16 KiB, several
/// times what any of the runtime's own critical sections use.
pub const NOFAULT_PREFAULT: usize = 16 * 1024;

/// Test-only switch: when set, the runtime's own prefaults are skipped.
static PREFAULT_DISABLED: AtomicBool = AtomicBool::new(false);

/// Prefaults the runtime's look-ahead and counts a no-fault section as
/// entered, in one out-of-line call (a channel hand-off enters two).
#[inline(never)]
fn enter_section() {
    if !PREFAULT_DISABLED.load(Ordering::Relaxed) {
        prefault_here(NOFAULT_PREFAULT);
    }
    fault::nofault_enter();
}

/// A section of code that must not take a stack growth fault.
///
/// Entering prefaults [`NOFAULT_PREFAULT`] bytes (unless disabled for
/// testing); a growth fault on this thread while the guard lives counts as a
/// violation. Internal to the runtime; public only for tests.
#[doc(hidden)]
#[must_use]
pub struct NoFaultSection {
    _not_send: std::marker::PhantomData<*const ()>,
}

/// The runtime's own look-ahead: [`prefault`] of [`NOFAULT_PREFAULT`]
/// bytes, unless disabled for a test. Used before a switch.
#[inline]
pub(crate) fn prefault_for_runtime() {
    if !PREFAULT_DISABLED.load(Ordering::Relaxed) {
        prefault(NOFAULT_PREFAULT);
    }
}

impl NoFaultSection {
    /// Prefaults and enters the section.
    #[inline]
    pub fn enter() -> NoFaultSection {
        enter_section();
        NoFaultSection {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for NoFaultSection {
    fn drop(&mut self) {
        fault::nofault_adjust(-1);
    }
}

/// Hooks for tests. Not part of the stable API.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// Disables (`false`) or re-enables the runtime's own prefaults, so a
    /// test can show that the violation counter catches a missing prefault.
    pub fn set_runtime_prefault(enabled: bool) {
        PREFAULT_DISABLED.store(!enabled, Ordering::Relaxed);
    }

    /// The committed floor of the arena slot holding `addr`, if any.
    pub fn floor_of(addr: usize) -> Option<usize> {
        fault::locate(addr).map(|l| l.floor)
    }

    pub use super::mmap::Fault;

    /// Calls `hook` once, the first time the stack handler is installed,
    /// between reading the previous SIGSEGV action and installing ours: a
    /// test installs a handler there, as another thread could.
    pub fn set_install_hook(hook: fn()) {
        fault::set_install_hook(hook);
    }

    /// Makes the next `count` operations at `point` fail (process-wide).
    /// `count == 0` clears it.
    pub fn inject_failure(point: Fault, count: u32) {
        super::mmap::inject(point, count);
    }
}
