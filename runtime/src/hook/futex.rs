//! std's `Mutex` (and, with `RuntimeBuilder::hook_std_locks`, every std
//! lock) parks the coroutine: the interposed `syscall` function and the
//! futex waits it takes over.
//!
//! std makes its futex calls through libc's `syscall` function
//! (`syscall(SYS_futex, ...)`), which the binary's own definition here
//! replaces, as the other hooks replace `read` or `poll`. Every system
//! call other than `futex` goes straight to the kernel (one comparison,
//! then the `syscall` instruction): async-signal-safe, no allocation, no
//! lock, `errno` set as glibc's wrapper sets it.
//!
//! # Which waits park the coroutine
//!
//! A futex wait is taken over (the coroutine parks, the worker runs
//! others) only when all of these hold, and is the plain system call
//! otherwise:
//!
//! - it is a std `Mutex`'s contended wait, or the worker's runtime opted
//!   in to every std-form wait (`RuntimeBuilder::hook_std_locks`, an
//!   `unsafe` switch, off by default). Crates build per-thread latches and
//!   parkers on condition variables, and every coroutine of a worker
//!   shares its thread: two coroutines inside one at once break it.
//!   tokio's parker for its `blocking_*` calls (on the heap, reached
//!   through a thread-local) panicked ("inconsistent park state") when a
//!   second coroutine parked while the first waited, and nothing here can
//!   tell such a condvar from any other: the opt-in's contract rules that
//!   code out. A `Mutex`'s wait keeps its meaning when coroutines share a
//!   thread (the waiter waits for the holder, whichever coroutine that
//!   is), and a per-thread parker's mutex is contended only by the thread
//!   that wakes it, while its owner waits on the condvar, which blocks the
//!   worker. The hook tells a `Mutex`'s wait by its call site: the stub
//!   `syscall` passes the return address on, and the site is learnt as
//!   the worker starts ([`learn_lock_site`]). std's contended path is
//!   `#[cold]`, never inlined, so it is one site, also with
//!   `lto = "fat"`; a `Condvar`'s wait is not (under fat LTO it was
//!   inlined into tokio's parker, at a site of its own), so telling
//!   condvars apart instead would not be safe;
//! - the word is not in the worker thread's own block (its stack, static
//!   thread-local storage and control block, learnt from
//!   `pthread_getattr_np` as the worker starts): a lock inside a
//!   `thread_local!` belongs to the thread. rayon keeps the latch that
//!   `install` from outside its pool waits on there, with the job on the
//!   caller's stack: with two coroutines in it, the first job to finish
//!   released the other caller before its own job had run, and the pool
//!   then wrote into the returned frame (a SIGSEGV in
//!   `tests/hook_futex.rs`);
//! - it is std's form of the wait: `FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG`
//!   with the match-any bitset, which std's `Mutex`, `RwLock`, `Condvar`,
//!   `Once`, `OnceLock` and `LazyLock` use, and whose waiting state lives
//!   in the object waited on;
//! - it is not on the worker thread's own `thread::park` word. That word
//!   belongs to the thread, which every coroutine of the worker shares:
//!   two coroutines parked on it at once would corrupt std's parker (its
//!   state goes below `PARKED`, and a later `unpark` wakes nobody). So
//!   `thread::park` and what waits through it (std's `mpsc` and `mpmc`
//!   channels, `once_cell`'s waits) still block the worker, as do other
//!   crates' waits (`FUTEX_WAIT`: `parking_lot` keeps a per-thread record
//!   that two coroutines of one thread must not share);
//! - the call is in a coroutine that may park ([`super::parkable`]), and
//!   not inside the runtime's own code that must not switch coroutines
//!   midway: a wait for one of its std locks (`loom::std::sync::Mutex`),
//!   its no-fault sections, a push onto a worker's deque
//!   (`super::internal`; crossbeam-epoch's first-use `OnceLock` waits
//!   there, and a coroutine parked mid-push left the deque to the next
//!   one, which corrupted it: a crash in 3 of 5 `tcp_echo` runs).
//!
//! The worker's parker word is learnt as the worker thread starts, before
//! it runs any coroutine: a `thread::park_timeout(0)` with a probe flag
//! set, whose futex call this hook records instead of making.
//!
//! # The wait queue
//!
//! A taken-over wait queues in `sync::futex_queue` (checking there, under
//! the queue's lock, that the word still holds the expected value, as the
//! kernel does) and parks. Every `FUTEX_WAKE` and `FUTEX_WAKE_BITSET`, from
//! any thread, first wakes queued coroutines of that word, then asks the
//! kernel for what is left of its count (a plain thread may wait there on
//! the same word). A wake that finds no coroutine waiting anywhere costs
//! one fence and one load. Other operations on a word with queued
//! coroutines (requeue, wake-op) first wake all of them there: a futex
//! waiter must recheck its condition on every return, so an early wake-up
//! is allowed.
//!
//! A wait that times out returns `ETIMEDOUT`; a coroutine cancelled at
//! shutdown gets `EINTR` (std then tries again, and a coroutine that keeps
//! trying is abandoned as by the other hooks).

#![allow(clippy::missing_safety_doc, unreachable_pub)]

use std::cell::Cell;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use libc::c_long;

use crate::sync::futex_queue::{FutexQueues, NotWoken};

/// The queues of taken-over waits, made by the first one.
static QUEUES: once_cell::sync::OnceCell<FutexQueues> = once_cell::sync::OnceCell::new();

thread_local! {
    /// Runtime-internal sections in progress on this thread
    /// ([`internal`]): no wait is taken over in them.
    static INTERNAL: Cell<u32> = const { Cell::new(0) };
    /// This thread's `thread::park` word, once probed (0: not yet).
    static PARKER: Cell<usize> = const { Cell::new(0) };
    /// Set while this thread probes for [`PARKER`]; the address seen.
    static PROBE: Cell<Option<usize>> = const { Cell::new(None) };
    /// Whether `Mutex` waits are taken over on this thread: a worker of a
    /// runtime with the hooks on.
    static MUTEXES: Cell<bool> = const { Cell::new(false) };
    /// Whether every std-form wait is: a worker of a runtime built with
    /// `RuntimeBuilder::hook_std_locks`.
    static ALL: Cell<bool> = const { Cell::new(false) };
    /// Where std's `Mutex` makes its contended wait (a return address into
    /// std), as [`learn_lock_site`] found it; 0: not found.
    static LOCK_SITE: Cell<usize> = const { Cell::new(0) };
    /// Set while [`learn_lock_site`] probes.
    static PROBE_LOCK: Cell<bool> = const { Cell::new(false) };
    /// This thread's own block, `[start, end)`: its stack and, for a
    /// thread glibc created, its static thread-local storage and control
    /// block (see [`learn_own_block`]).
    static OWN_BLOCK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// The marker of "probing, nothing seen yet" in [`PROBE`].
const PROBING: usize = 0;

/// A raw system call (`syscall` instruction): the kernel's result, a
/// negative errno on failure.
///
/// # Safety
///
/// The arguments are the caller's, for the kernel to check; the call must
/// be one that returns to this point (not `vfork`-like).
#[inline(always)]
unsafe fn raw(n: c_long, a: [c_long; 6]) -> c_long {
    let ret: c_long;
    // SAFETY: the `syscall` instruction with the x86-64 Linux convention:
    // the number in rax, arguments in rdi, rsi, rdx, r10, r8, r9; the
    // kernel clobbers rcx and r11 and touches no user stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// A kernel result (negative errno on failure) as libc's wrapper returns
/// it: -1 with `errno` set, or the value.
#[inline(always)]
fn libc_result(r: c_long) -> c_long {
    if (-4095..0).contains(&r) {
        super::set_errno(-r as i32);
        -1
    } else {
        r
    }
}

/// `syscall(3)`: a stub that sends every call but `futex` on to
/// [`syscall_other`] unchanged (a jump: the same registers and stack), and
/// a `futex` call to [`syscall_futex`] with one more argument, its return
/// address: the call site in std tells a `Mutex`'s contended wait from
/// the rest (see [`learn_lock_site`]). Written by hand (a naked function)
/// because Rust has no stable way to read a function's return address.
///
/// The x86-64 convention: the number in rdi, the six arguments in rsi,
/// rdx, rcx, r8, r9 and the stack slot above the return address. For
/// `futex`, the stub makes a frame of 24 bytes (keeping the stack 16-byte
/// aligned at the inner call) holding the sixth argument and the return
/// address as the inner function's seventh and eighth.
// SAFETY: the stub keeps `syscall(3)`'s C calling convention: the
// non-futex path is a jump with registers and stack untouched; the futex
// path reads the return address and the sixth argument from the caller's
// stack, passes them in a frame that keeps the stack 16-byte aligned at
// the inner call and that it removes before `ret`, and changes only rax
// (scratch) beyond what the inner C-ABI function may.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    std::arch::naked_asm!(
        "cmp rdi, {futex}",
        "jne {other}",
        "sub rsp, 24",
        "mov rax, [rsp + 24]",
        "mov [rsp + 8], rax",
        "mov rax, [rsp + 32]",
        "mov [rsp], rax",
        "call {imp}",
        "add rsp, 24",
        "ret",
        futex = const libc::SYS_futex,
        other = sym syscall_other,
        imp = sym syscall_futex,
    )
}

/// [`syscall`] for a `futex` call from `site` (the caller's return
/// address).
///
/// # Safety
///
/// As `syscall(SYS_futex, ...)`'s.
unsafe extern "C" fn syscall_futex(
    _n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
    site: usize,
) -> c_long {
    // SAFETY: `futex` reads the caller's pointers, which its contract
    // makes valid.
    libc_result(unsafe { futex([a1, a2, a3, a4, a5, a6], site) })
}

/// [`syscall`] for every call but `futex`. Declared with six arguments
/// after the number, as glibc's own (assembly) definition reads them: a
/// variadic call passes integer arguments as a fixed one does on x86-64,
/// and a caller that passed fewer leaves values there that the kernel
/// ignores for its call.
///
/// # Safety
///
/// As `syscall(3)`'s.
unsafe extern "C" fn syscall_other(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    let args = [a1, a2, a3, a4, a5, a6];
    if n == libc::SYS_clone || n == libc::SYS_clone3 {
        // A child on a stack of the caller's returns with libc's `ret`
        // from that stack: libc's own function keeps that exact.
        if let Some(libc_syscall) = next_fn!("syscall", SyscallFn) {
            // SAFETY: the caller's call, to the function it meant.
            return unsafe { libc_syscall(n, a1, a2, a3, a4, a5, a6) };
        }
    }
    // SAFETY: the caller's system call, forwarded unchanged (`futex` goes
    // to `syscall_futex`).
    libc_result(unsafe { raw(n, args) })
}

/// The signature of libc's `syscall` as [`syscall`] calls it.
type SyscallFn =
    unsafe extern "C" fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long;

/// `FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG`, the wait std makes.
const STD_WAIT: c_long = (libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG) as c_long;

/// A `futex` call: the kernel's result convention (negative errno).
///
/// # Safety
///
/// The arguments are `futex(2)`'s, valid as its contract says.
unsafe fn futex(a: [c_long; 6], site: usize) -> c_long {
    let (uaddr, op) = (a[0] as usize, a[1] as libc::c_int);
    let cmd = op & !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME);
    if cmd == libc::FUTEX_WAIT_BITSET {
        if let Some(seen) = PROBE.with(Cell::get) {
            // The parker probe's own wait (see `learn_parker`): note the
            // address, and let the zero timeout pass at once.
            if seen == PROBING {
                PROBE.with(|p| p.set(Some(uaddr)));
            }
            return -c_long::from(libc::ETIMEDOUT);
        }
        if PROBE_LOCK.with(Cell::get) {
            // The lock probe's wait (see `learn_lock_site`), the only one
            // it makes: note the call site if it is std's contended form
            // (value 2), and in any case let go of the probe's own lock so
            // that its second `lock` takes it, instead of waiting for good
            // on a lock this thread holds.
            if a[2] as u32 == 2 {
                LOCK_SITE.with(|l| l.set(site));
            }
            // SAFETY: the probe's own mutex word, live and aligned.
            unsafe { &*(uaddr as *const AtomicU32) }.store(0, std::sync::atomic::Ordering::Release);
            return 0;
        }
        if op as c_long & !(libc::FUTEX_CLOCK_REALTIME as c_long) == STD_WAIT
            && a[5] as u32 == libc::FUTEX_BITSET_MATCH_ANY as u32
            && ours(uaddr, site)
        {
            if super::cancelling() {
                // Being cancelled (shutdown): the wait fails, as a hooked
                // read does, rather than block the worker; std tries again,
                // and a coroutine that keeps trying is abandoned
                // (`super::cancelled`), so the shutdown completes.
                let _ = super::cancelled();
                return -c_long::from(libc::EINTR);
            }
            if super::parkable() {
                let realtime = op & libc::FUTEX_CLOCK_REALTIME != 0;
                // SAFETY: the caller's pointers, valid by `futex`'s contract.
                return unsafe {
                    wait(uaddr, a[2] as u32, a[3] as *const libc::timespec, realtime)
                };
            }
        }
    } else if cmd == libc::FUTEX_WAKE || cmd == libc::FUTEX_WAKE_BITSET {
        // The kernel wakes at least one whatever the count; a bitset of 0
        // is its error to report. Queued waits match any bitset.
        let max = (a[2] as libc::c_int).max(1) as usize;
        let bitset = if cmd == libc::FUTEX_WAKE {
            u32::MAX
        } else {
            a[5] as u32
        };
        let woken = if bitset == 0 { 0 } else { wake(uaddr, max) };
        if woken == 0 {
            // SAFETY: the caller's call.
            return unsafe { raw(libc::SYS_futex, a) };
        }
        if woken == max {
            return woken as c_long;
        }
        let mut rest = a;
        rest[2] = (max - woken) as c_long;
        // SAFETY: the caller's call, for fewer waiters.
        let r = unsafe { raw(libc::SYS_futex, rest) };
        return woken as c_long + r.max(0);
    } else if matches!(
        cmd,
        libc::FUTEX_REQUEUE
            | libc::FUTEX_CMP_REQUEUE
            | libc::FUTEX_CMP_REQUEUE_PI
            | libc::FUTEX_WAKE_OP
    ) && may_have_waiters()
    {
        // These move or wake kernel waiters only: wake ours on the words
        // first (they recheck and wait again).
        wake(uaddr, usize::MAX);
        wake(a[4] as usize, usize::MAX);
    }
    // SAFETY: the caller's call, unchanged.
    unsafe { raw(libc::SYS_futex, a) }
}

/// Whether a std-form wait on `uaddr` here is one to take over: in a
/// coroutine, outside the runtime's own no-fault sections, and not on the
/// worker thread's parker word (module docs). (Whether it may park is
/// asked after.)
fn ours(uaddr: usize, site: usize) -> bool {
    MUTEXES.with(Cell::get)
        && (ALL.with(Cell::get) || (site != 0 && site == LOCK_SITE.with(Cell::get)))
        && super::active()
        && INTERNAL.with(Cell::get) == 0
        && !crate::stack::in_nofault_section()
        && own_parker().is_some_and(|p| p != uaddr)
        && !OWN_BLOCK.with(|b| (b.get().0..b.get().1).contains(&uaddr))
}

/// Sets what the calling worker thread takes over: `Mutex` waits if
/// `hooks` (its runtime's hooks), every std-form wait if `all` too (its
/// `hook_std_locks`). With `hooks`, first learns what must be left alone
/// or recognised: the thread's parker word, its own block, and where
/// std's `Mutex` waits.
pub(crate) fn enable_for_thread(hooks: bool, all: bool) {
    if hooks {
        learn_parker();
        learn_own_block();
        learn_lock_site();
    }
    MUTEXES.with(|e| e.set(hooks));
    ALL.with(|e| e.set(hooks && all));
}

/// Learns where std's `Mutex` makes its contended wait: the probe locks
/// a mutex of its own twice; the second `lock` finds it held, spins, marks
/// it contended and waits on it (value 2) from its `#[cold]` contended
/// path, and the hook, seeing the probe flag, records that call's return
/// address and unlocks the word, so the `lock` takes the mutex and
/// returns. The contended path is one function std never inlines (cold),
/// so every `Mutex` wait comes from this one site, with `lto = "fat"` too;
/// a `Condvar`'s wait does not (its site was inlined into tokio's parker
/// under fat LTO), which is why only this site is taken over by default.
/// If std's mutex ever stopped waiting there, no site is learnt and
/// nothing is taken over.
fn learn_lock_site() {
    let m = std::sync::Mutex::new(());
    let first = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    PROBE_LOCK.with(|p| p.set(true));
    let second = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    PROBE_LOCK.with(|p| p.set(false));
    drop(second);
    // The word is free already (the second guard let it go): the first
    // guard must not unlock it again.
    std::mem::forget(first);
}

/// Learns the calling thread's own block (`pthread_getattr_np`): for a
/// thread glibc created, the one mapping that holds its stack, its static
/// thread-local storage and its control block. A `thread_local!` lives
/// there, so a lock or latch kept in one belongs to the thread, which
/// every coroutine of the worker shares: rayon keeps the latch that
/// `install` from outside its pool waits on in one, with the job on the
/// caller's stack, and two coroutines in it at once let the first job to
/// finish release the other caller before its own job ran (rayon panics,
/// and its pool then writes into a frame that has returned: a crash in a
/// test). Waits there are never taken over. If the block cannot be
/// learnt, nothing is taken over on the thread.
fn learn_own_block() {
    // SAFETY: a zeroed attribute object is filled by pthread_getattr_np
    // and destroyed after; pthread_attr_getstack writes the two outputs.
    let block = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            None
        } else {
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let r = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
            libc::pthread_attr_destroy(&mut attr);
            (r == 0 && !addr.is_null()).then(|| (addr as usize, addr as usize + size))
        }
    };
    // Nothing learnt: a range that holds every address.
    OWN_BLOCK.with(|b| b.set(block.unwrap_or((0, usize::MAX))));
}

/// Runs `f` (runtime-internal code, `super::internal`) with take-over off
/// on this thread, also if `f` unwinds.
pub(crate) fn internal<R>(f: impl FnOnce() -> R) -> R {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            INTERNAL.with(|c| c.set(c.get() - 1));
        }
    }
    INTERNAL.with(|c| c.set(c.get() + 1));
    let _leave = Leave;
    f()
}

/// This thread's `thread::park` word, if learnt ([`learn_parker`]).
fn own_parker() -> Option<usize> {
    Some(PARKER.with(Cell::get)).filter(|&p| p != 0)
}

/// Learns the calling thread's `thread::park` word (see the module docs):
/// called by each worker thread as it starts, before it runs a coroutine
/// (a probe from inside a wait could be a wait on that very word). A
/// thread that has not learnt it takes over no wait.
fn learn_parker() {
    if PARKER.with(Cell::get) != 0 {
        return;
    }
    PROBE.with(|p| p.set(Some(PROBING)));
    std::thread::park_timeout(Duration::ZERO);
    let seen = PROBE.with(|p| p.replace(None)).unwrap_or(PROBING);
    if seen == PROBING {
        // A token was pending, and the probe consumed it instead of
        // waiting: give it back (and take over no wait on this thread).
        std::thread::current().unpark();
        return;
    }
    PARKER.with(|p| p.set(seen));
}

/// Takes over a wait on the word at `uaddr` while it holds `val`, until a
/// wake, the timeout (absolute, on `CLOCK_REALTIME` if `realtime`, else
/// `CLOCK_MONOTONIC`; none if null) or the coroutine's cancellation. The
/// kernel's result convention.
///
/// # Safety
///
/// `uaddr` points to a live, aligned 32-bit futex word; `timeout` is null
/// or points to a readable timespec (the caller's `futex` contract).
unsafe fn wait(uaddr: usize, val: u32, timeout: *const libc::timespec, realtime: bool) -> c_long {
    let deadline = if timeout.is_null() {
        None
    } else {
        // SAFETY: readable by the contract.
        let ts = unsafe { *timeout };
        if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
            return -c_long::from(libc::EINVAL);
        }
        Some(deadline_of(ts, realtime))
    };
    // SAFETY: a live, aligned futex word by the contract, which its users
    // (and the kernel) access atomically.
    let word = unsafe { &*(uaddr as *const AtomicU32) };
    let queues = QUEUES.get_or_init(FutexQueues::new);
    let park = |d| super::park(|| crate::time::park_until(d));
    match queues.wait(word, val, deadline, park, super::cancelling) {
        Ok(()) => 0,
        Err(NotWoken::Changed) => -c_long::from(libc::EAGAIN),
        Err(NotWoken::TimedOut) => -c_long::from(libc::ETIMEDOUT),
        Err(NotWoken::Stopped) => {
            // Counted: a coroutine that keeps waiting while it is
            // cancelled is abandoned (`super::cancelled`).
            let _ = super::cancelled();
            -c_long::from(libc::EINTR)
        }
    }
}

/// Wakes up to `max` coroutines queued on `addr`; returns how many.
fn wake(addr: usize, max: usize) -> usize {
    QUEUES.get().map_or(0, |q| q.wake(addr, max))
}

/// Whether a coroutine may be queued (after the caller changed a word).
fn may_have_waiters() -> bool {
    QUEUES.get().is_some_and(FutexQueues::may_have_waiters)
}

/// The instant of an absolute futex timeout.
fn deadline_of(ts: libc::timespec, realtime: bool) -> Instant {
    let clock = if realtime {
        libc::CLOCK_REALTIME
    } else {
        libc::CLOCK_MONOTONIC
    };
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the struct we own.
    unsafe { libc::clock_gettime(clock, &mut now) };
    let at = |t: libc::timespec| t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128;
    let left = (at(ts) - at(now)).max(0);
    let left = Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX));
    Instant::now().checked_add(left).unwrap_or_else(far_future)
}

/// An instant no wait reaches (about 30 years on).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(30 * 365 * 86_400)
}

/// In a child forked from a process whose coroutines waited here: none of
/// them exists in the child (only the forking thread does).
///
/// # Safety
///
/// Only in a `pthread_atfork` child handler.
pub(crate) unsafe fn forget_after_fork() {
    if let Some(q) = QUEUES.get() {
        // SAFETY: the caller's contract.
        unsafe { q.forget_all_after_fork() };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A coroutine that beats every 5 ms, 40 times, counting in `beats`
    /// the beats while `waiting` holds.
    fn heartbeat(beats: &Arc<AtomicUsize>, waiting: &Arc<AtomicBool>) -> crate::JoinHandle<()> {
        let (b, w) = (Arc::clone(beats), Arc::clone(waiting));
        crate::spawn(move || {
            for _ in 0..40 {
                crate::time::sleep(Duration::from_millis(5));
                if w.load(SeqCst) {
                    b.fetch_add(1, SeqCst);
                }
            }
        })
    }

    /// Beats counted by a heartbeat coroutine while `wait` runs in another
    /// coroutine of a one-worker runtime, for a std lock a plain thread
    /// holds until the heartbeat has beaten during the wait (a parked wait
    /// lets it; a hang guard of 10 s) or, if `blocks`, for 100 ms (a
    /// blocked worker never lets it beat; nothing is asserted about the
    /// time).
    fn beats_while(wait: fn(&Mutex<()>), blocks: bool) -> usize {
        let rt = crate::Runtime::builder().workers(1).build().unwrap();
        let lock = Arc::new(Mutex::new(()));
        let beats = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::new(AtomicBool::new(false));
        let (l, b, w) = (Arc::clone(&lock), Arc::clone(&beats), Arc::clone(&waiting));
        rt.block_on(move || {
            let guard = l.lock().unwrap();
            let hb = heartbeat(&b, &w);
            let waiter = {
                let (l, w) = (Arc::clone(&l), Arc::clone(&w));
                crate::spawn(move || {
                    w.store(true, SeqCst);
                    wait(&l);
                    w.store(false, SeqCst);
                })
            };
            // The holder is this thread (the `block_on` root, not the
            // worker).
            if blocks {
                std::thread::sleep(Duration::from_millis(100));
            } else {
                // A hang guard, not a threshold: a wait that blocks lets
                // no beat come, and the assertion then fails.
                let guard_until = std::time::Instant::now() + Duration::from_secs(10);
                while b.load(SeqCst) == 0 && std::time::Instant::now() < guard_until {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            drop(guard);
            waiter.join().unwrap();
            hb.join().unwrap();
        });
        beats.load(SeqCst)
    }

    /// A std lock wait in user code parks (the heartbeat beats during it);
    /// the same wait inside the runtime's own code (`hook::internal`, as a
    /// deque push or a runtime lock is) blocks the worker instead.
    #[test]
    fn waits_inside_the_runtimes_own_code_are_not_taken_over() {
        assert!(beats_while(|l| drop(l.lock().unwrap()), false) > 0);
        assert_eq!(
            beats_while(|l| super::super::internal(|| drop(l.lock().unwrap())), true),
            0
        );
    }

    /// Beats counted by a heartbeat coroutine while another coroutine of a
    /// one-worker runtime (with `hook_std_locks` if `all`) waits on a std
    /// `Condvar` until the `block_on` root notifies it: once the heartbeat
    /// beat during the wait (a hang guard of 10 s), or after 100 ms if the
    /// wait is expected to block.
    fn beats_in_condvar_wait(all: bool) -> usize {
        // SAFETY: the coroutines below wait on no thread-owned condvar.
        let rt = unsafe { crate::Runtime::builder().hook_std_locks(all) }
            .workers(1)
            .build()
            .unwrap();
        let pair = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let beats = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::new(AtomicBool::new(false));
        let (p, b, w) = (Arc::clone(&pair), Arc::clone(&beats), Arc::clone(&waiting));
        rt.block_on(move || {
            let hb = heartbeat(&b, &w);
            let waiter = {
                let (p, w) = (Arc::clone(&p), Arc::clone(&w));
                crate::spawn(move || {
                    let (m, cv) = &*p;
                    w.store(true, SeqCst);
                    drop(cv.wait_while(m.lock().unwrap(), |ready| !*ready).unwrap());
                    w.store(false, SeqCst);
                })
            };
            while !w.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if all {
                let guard_until = std::time::Instant::now() + Duration::from_secs(10);
                while b.load(SeqCst) == 0 && std::time::Instant::now() < guard_until {
                    std::thread::sleep(Duration::from_millis(1));
                }
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
            *p.0.lock().unwrap() = true;
            p.1.notify_all();
            waiter.join().unwrap();
            hb.join().unwrap();
        });
        beats.load(SeqCst)
    }

    /// By default only a `Mutex`'s wait (from the site the probe learnt)
    /// is taken over: a `Condvar` wait blocks the worker, and parks with
    /// `hook_std_locks`.
    #[test]
    fn by_default_only_mutex_waits_park() {
        let site = std::thread::spawn(|| {
            super::learn_lock_site();
            super::LOCK_SITE.with(std::cell::Cell::get)
        })
        .join()
        .unwrap();
        assert_ne!(site, 0, "the probe found no Mutex wait site");
        assert_eq!(beats_in_condvar_wait(false), 0);
        assert!(beats_in_condvar_wait(true) > 0);
    }

    thread_local! {
        static MINE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// A worker's own block holds its thread-locals (so a lock kept in
    /// one is never taken over) and its stack, and not a heap object.
    #[test]
    fn a_threads_own_block_holds_its_thread_locals() {
        let (tls, local, heap, block) = std::thread::spawn(|| {
            super::learn_own_block();
            let local = 0u32;
            let heap = Box::new(0u32);
            (
                MINE.with(|m| m as *const _ as usize),
                &local as *const u32 as usize,
                &*heap as *const u32 as usize,
                super::OWN_BLOCK.with(std::cell::Cell::get),
            )
        })
        .join()
        .unwrap();
        let inside = |a: usize| (block.0..block.1).contains(&a);
        assert!(inside(tls), "thread-local {tls:#x} outside {block:x?}");
        assert!(inside(local), "stack {local:#x} outside {block:x?}");
        assert!(!inside(heap), "heap {heap:#x} inside {block:x?}");
        assert!(
            block.1 - block.0 < 1 << 30,
            "no real block learnt: {block:x?}"
        );
    }
}
