//! The system calls behind the arena, each returning `io::Result`.
//!
//! Every call made from normal context goes through here and bumps
//! [`syscalls`], so a test can assert that a code path made none. The signal
//! handler uses the `raw_*` variants, which neither count nor allocate.

use std::cell::Cell;
use std::io;
// once_cell's `OnceCell`, not std's `OnceLock`: see `worker::park_base`.
use once_cell::sync::OnceCell as OnceLock;

/// `madvise` advice: install guard markers (Linux 6.13, `mm/madvise.c`). Not
/// yet in the `libc` crate.
const MADV_GUARD_INSTALL: libc::c_int = 102;
/// `madvise` advice: remove guard markers (Linux 6.13).
const MADV_GUARD_REMOVE: libc::c_int = 103;

thread_local! {
    /// System calls made by the arena from normal context on this thread.
    static SYSCALLS: Cell<u64> = const { Cell::new(0) };
}

/// How many memory-management system calls (`mmap`, `munmap`, `mprotect`,
/// `madvise`) the arena has made on the calling thread, from normal context
/// (the fault handler's are not counted). Per thread, so a test can count
/// exactly what its own calls cost while other threads work.
pub fn syscalls() -> u64 {
    SYSCALLS.with(Cell::get)
}

fn counted() {
    SYSCALLS.with(|c| c.set(c.get() + 1));
}

/// Points where a test can make the arena's memory operations fail (or the
/// fault handler itself fault), to check that failures come back as errors
/// and that the process never hangs. Test-only; see `stack::testing`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Fault {
    /// Making a chunk of a class reservation read-write.
    ChunkMap = 0,
    /// Installing guard markers (or `mprotect`ing the top) on a fresh slot.
    GuardInstall = 1,
    /// Committing stack in the fault handler (growth).
    Grow = 2,
    /// The fault handler dereferences a bad pointer on entry.
    InHandler = 3,
    /// The fault handler recurses until it overflows the signal stack.
    HandlerOverflow = 4,
}

/// Remaining injected failures per [`Fault`]. Plain atomics: the handler
/// reads them too.
static INJECTED: [std::sync::atomic::AtomicU32; 5] =
    [const { std::sync::atomic::AtomicU32::new(0) }; 5];

/// Makes the next `count` operations at `point` fail.
pub(crate) fn inject(point: Fault, count: u32) {
    INJECTED[point as usize].store(count, std::sync::atomic::Ordering::SeqCst);
}

/// True (and one failure used up) if a failure is injected at `point`.
/// Async-signal-safe.
pub(crate) fn injected(point: Fault) -> bool {
    let c = &INJECTED[point as usize];
    let mut n = c.load(std::sync::atomic::Ordering::Relaxed);
    while n > 0 {
        match c.compare_exchange_weak(
            n,
            n - 1,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => return true,
            Err(v) => n = v,
        }
    }
    false
}

/// `Err(ENOMEM)` if a failure is injected at `point`.
pub(crate) fn check_injected(point: Fault) -> io::Result<()> {
    if injected(point) {
        Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("injected failure at {point:?}"),
        ))
    } else {
        Ok(())
    }
}

/// The page size, read once.
pub(crate) fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            p as usize
        } else {
            4096
        }
    })
}

/// Reserves `len` bytes of address space with no access and no commit charge.
pub(crate) fn reserve(len: usize) -> io::Result<usize> {
    map_anonymous(len, libc::PROT_NONE)
}

/// Maps `len` bytes of zero-filled, read-write memory (no commit charge
/// unless `vm.overcommit_memory` is 2, where the kernel ignores
/// `MAP_NORESERVE`; pages become resident when first touched).
pub(crate) fn map_zeroed(len: usize) -> io::Result<usize> {
    map_anonymous(len, libc::PROT_READ | libc::PROT_WRITE)
}

/// A fresh private anonymous `MAP_NORESERVE` mapping of `len` bytes.
fn map_anonymous(len: usize, prot: libc::c_int) -> io::Result<usize> {
    counted();
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choice
    // touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p as usize)
    }
}

/// Unmaps `[addr, addr + len)`.
///
/// # Safety
///
/// - The range must be one the caller reserved and nothing may use it again.
pub(crate) unsafe fn unmap(addr: usize, len: usize) -> io::Result<()> {
    counted();
    // SAFETY: the caller owns the range and promises it is dead.
    check(unsafe { libc::munmap(addr as *mut libc::c_void, len) })
}

/// Makes `[addr, addr + len)` readable and writable (`rw`) or inaccessible.
///
/// # Safety
///
/// - The range must lie inside a reservation of the arena's, and making it
///   inaccessible must not strand data anyone still uses.
pub(crate) unsafe fn protect(addr: usize, len: usize, rw: bool) -> io::Result<()> {
    counted();
    // SAFETY: forwarded to the caller.
    check(unsafe { raw_protect(addr, len, rw) })
}

/// Installs guard markers on `[addr, addr + len)`, discarding its pages.
///
/// # Safety
///
/// - The range must lie inside a read-write reservation of the arena's and
///   hold no data anyone still uses.
pub(crate) unsafe fn guard_install(addr: usize, len: usize) -> io::Result<()> {
    counted();
    // SAFETY: forwarded to the caller.
    check(unsafe { raw_madvise(addr, len, MADV_GUARD_INSTALL) })
}

/// Gives the pages of `[addr, addr + len)` back; they read as zero after.
///
/// # Safety
///
/// - The range must hold no data anyone still uses.
pub(crate) unsafe fn discard(addr: usize, len: usize) -> io::Result<()> {
    counted();
    // SAFETY: forwarded to the caller.
    check(unsafe { raw_madvise(addr, len, libc::MADV_DONTNEED) })
}

/// `mprotect`, for the signal handler: no counter, no allocation. Returns
/// the raw result (0 or -1 with errno set).
///
/// # Safety
///
/// As [`protect`].
pub(crate) unsafe fn raw_protect(addr: usize, len: usize, rw: bool) -> libc::c_int {
    let prot = if rw {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_NONE
    };
    // SAFETY: forwarded to the caller.
    unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) }
}

/// `madvise`, for the signal handler: no counter, no allocation.
///
/// # Safety
///
/// As the counted wrapper for the same advice.
pub(crate) unsafe fn raw_madvise(addr: usize, len: usize, advice: libc::c_int) -> libc::c_int {
    // SAFETY: forwarded to the caller.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) }
}

/// Removes guard markers, for the signal handler.
///
/// # Safety
///
/// - The range must lie inside a reservation of the arena's.
pub(crate) unsafe fn raw_guard_remove(addr: usize, len: usize) -> libc::c_int {
    // SAFETY: forwarded to the caller.
    unsafe { raw_madvise(addr, len, MADV_GUARD_REMOVE) }
}

/// Installs guard markers, for the signal handler.
///
/// # Safety
///
/// As [`guard_install`].
pub(crate) unsafe fn raw_guard_install(addr: usize, len: usize) -> libc::c_int {
    // SAFETY: forwarded to the caller.
    unsafe { raw_madvise(addr, len, MADV_GUARD_INSTALL) }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this kernel supports guard markers (`MADV_GUARD_INSTALL`, Linux
/// 6.13 and later). Probed once on a scratch page.
pub(crate) fn guard_markers_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let page = page_size();
        let Ok(addr) = reserve(page) else {
            return false;
        };
        // SAFETY: `addr` is our own fresh one-page reservation; we make it
        // writable, try the advice on it and unmap it. Nothing else uses it.
        unsafe {
            let ok = protect(addr, page, true).is_ok() && guard_install(addr, page).is_ok();
            let _ = unmap(addr, page);
            ok
        }
    })
}

/// The kernel's `vm.max_map_count`, if readable.
pub(crate) fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Environment variable that lowers the mapping limit the arena plans for
/// below the kernel's `vm.max_map_count` (never above it): for a process
/// that needs more of its mappings elsewhere, and for tests that reach the
/// limit quickly.
pub const MAX_MAP_COUNT_ENV: &str = "GREENSTACK_MAX_MAP_COUNT";

/// Fewest mappings the `mprotect` fallback leaves to the rest of the
/// process: 4,096. A Rust process starts with a few hundred (binary,
/// libraries, heap, one stack and guard per thread); each of malloc's
/// thread arenas and each allocation past its mmap threshold (128 KiB to
/// 32 MiB) adds one. 4,096 is ten times a busy runtime's count measured
/// with `wc -l /proc/self/maps` (a few hundred), and 6% of the default
/// limit of 65,530.
pub(crate) const MAP_RESERVE_MIN: usize = 4096;

/// How the `mprotect` fallback shares the process's mappings: stacks may
/// hold `limit - reserve`, where `reserve` is the larger of
/// [`MAP_RESERVE_MIN`] and a sixteenth of `limit` (65,536 of a limit of
/// 1,048,576). Each set-up slot holds two (its committed top splits the
/// class's `PROT_NONE` reservation in three), whether live or pooled, so
/// at most `(limit - reserve) / 2` slots are set up at once, over all
/// arenas of the process: 30,717 at the default 65,530, 491,520 at
/// 1,048,576.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapBudget {
    /// The limit planned for: `vm.max_map_count`, or the lower
    /// [`MAX_MAP_COUNT_ENV`].
    pub(crate) limit: usize,
    /// Mappings left to the rest of the process.
    pub(crate) reserve: usize,
    /// Slots that may be set up at once.
    pub(crate) slots: usize,
}

impl MapBudget {
    /// The budget for a limit of `limit` mappings.
    pub(crate) fn for_limit(limit: usize) -> MapBudget {
        let reserve = MAP_RESERVE_MIN.max(limit / 16);
        MapBudget {
            limit,
            reserve,
            slots: limit.saturating_sub(reserve) / 2,
        }
    }

    /// The process's budget, read once: `None` if `vm.max_map_count` is
    /// unreadable (then only the kernel's own `ENOMEM` limits the fallback).
    pub(crate) fn get() -> Option<MapBudget> {
        static BUDGET: OnceLock<Option<MapBudget>> = OnceLock::new();
        *BUDGET.get_or_init(|| {
            let kernel = max_map_count().map(|n| n as usize);
            let asked = std::env::var(MAX_MAP_COUNT_ENV)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            let limit = match (kernel, asked) {
                (Some(k), Some(a)) => k.min(a),
                (k, a) => k.or(a)?,
            };
            Some(MapBudget::for_limit(limit))
        })
    }
}

/// Slots set up in `mprotect` mode now, over every arena of the process
/// (see [`MapBudget`]).
static MAPPED_SLOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Claims the two mappings a slot about to be set up in `mprotect` mode
/// will hold. Fails, with an error naming `vm.max_map_count`, once the
/// process's [`MapBudget`] is spent; a success must be matched by one
/// [`unclaim_slot_mappings`] when the slot's mappings are gone (its set-up
/// failed, or its class was unmapped).
pub(crate) fn claim_slot_mappings() -> io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(budget) = MapBudget::get() else {
        MAPPED_SLOTS.fetch_add(1, Relaxed);
        return Ok(());
    };
    // Relaxed: a counter of a budget, guarding no other data.
    let mut n = MAPPED_SLOTS.load(Relaxed);
    loop {
        if n >= budget.slots {
            return Err(budget_spent(budget, n));
        }
        match MAPPED_SLOTS.compare_exchange_weak(n, n + 1, Relaxed, Relaxed) {
            Ok(_) => return Ok(()),
            Err(v) => n = v,
        }
    }
}

/// Gives back the mappings of `n` slots claimed by
/// [`claim_slot_mappings`].
pub(crate) fn unclaim_slot_mappings(n: usize) {
    MAPPED_SLOTS.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
}

/// The error for a spent mapping budget.
fn budget_spent(b: MapBudget, slots: usize) -> io::Error {
    io::Error::new(io::ErrorKind::OutOfMemory, BudgetSpent { budget: b, slots })
}

/// Whether `e` says the process's mapping budget is spent (as opposed to
/// any other failure to set up a stack).
pub(crate) fn is_budget_spent(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<BudgetSpent>())
}

/// The payload of the error for a spent [`MapBudget`].
#[derive(Debug)]
struct BudgetSpent {
    budget: MapBudget,
    /// Slots set up when the claim failed.
    slots: usize,
}

impl std::fmt::Display for BudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot set up a coroutine stack: the stacks' share of the kernel's mapping limit \
             vm.max_map_count ({}) is used up: {} stacks hold two mappings each without \
             guard markers, and {} mappings are left to the rest of the process; raise it with \
             `sysctl -w vm.max_map_count=N` or use Linux 6.13+",
            self.budget.limit, self.slots, self.budget.reserve
        )
    }
}

impl std::error::Error for BudgetSpent {}
