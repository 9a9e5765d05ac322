//! The SIGSEGV/SIGBUS handler that grows stacks, reports overflows, and
//! passes every other fault on.
//!
//! # The fault path
//!
//! 1. A coroutine touches a page below its committed floor. The page carries
//!    a guard marker (or is `PROT_NONE` on the fallback), so the kernel raises
//!    SIGSEGV. Because the handler is installed with `SA_ONSTACK`, it runs on
//!    the thread's alternate signal stack ([`ensure_thread_altstack`]), not on
//!    the stack that just faulted.
//! 2. [`handle`] reads the fault address and looks it up in [`TABLE`], a
//!    fixed array of class address ranges published with Release stores. No
//!    "current coroutine" is consulted: the slot is `(addr - base) / stride`.
//!    A signal someone sent (`si_code <= 0`) skips to step 7.
//! 3. Not in any class: if the kernel raised the signal itself because it
//!    could not push another signal's frame, grow the slot under the
//!    interrupted stack pointer by [`SIGFRAME_ROOM`], report the lost signal
//!    and return. The rule, since a #GP also arrives as `SI_KERNEL` with
//!    address 0: `si_code == SI_KERNEL`, address 0, the thread's last trap
//!    was not a hardware exception that reports `SI_KERNEL` (x86-64 `trapno`
//!    10–13: #TS, #NP, #SS, #GP; the kernel sets it just before raising
//!    those), and the interrupted stack pointer lies in a live slot less
//!    than a signal frame ([`frame_need`]: red zone + `AT_MINSIGSTKSZ` +
//!    alignment) above the committed floor, so the kernel could have been
//!    pushing a frame there and failed. Anything else goes to step 7.
//! 4. The slot is not live: go to step 7 (a stale pointer into a pooled
//!    stack is the program's bug, not growth).
//! 5. The address is in the slot's hard guard: the coroutine overflowed.
//!    Write one line naming it (id, name, reserve, address) with `write(2)`
//!    and `abort`. Counters: none (the process ends).
//! 6. The address is between the hard guard and the committed floor, and the
//!    interrupted stack pointer is inside the same slot: grow
//!    ([`Class::grow`]) and return, so the faulting instruction runs again.
//!    Counters: `growth_faults`, `bytes_grown`, `committed`, and
//!    `violations` if the thread is inside a no-fault section. If the kernel
//!    refuses the growth, report that the stack cannot grow and `abort`.
//! 7. Chain to the action that was installed before ours ([`chain`]). A
//!    signal sent with `kill`, `raise`, `sigqueue`... (`si_code <= 0`)
//!    comes here straight from step 2, whatever its address: for those,
//!    `si_addr` is really the sender's pid and uid, which may fall in a
//!    slot. Whether a fault comes again when the instruction runs again is
//!    not guessed from `si_code` or `trapno` (a self-sent signal may carry
//!    any positive code, some codes are asynchronous, another thread may
//!    fix the page before the retry, a lost frame may carry a stale
//!    `trapno`): the handler waits to see the same fault come back. "The
//!    same" is signal, code, address, program counter and a digest of all
//!    integer registers, remembered per thread (`chaining.rs`, `repeated`).
//!    - a handler: call it as the kernel would have, with its `sa_mask`
//!      (and the signal itself unless `SA_NODEFER`) blocked for the call,
//!      with `(sig, info, ctx)` even if it lacks `SA_SIGINFO`.
//!      `SA_RESETHAND` cannot reset the process's action (that would
//!      uninstall ours), so it is kept per signal here: the first chained
//!      signal calls the handler, later ones get the default action. If
//!      the handler reset the action to `SIG_DFL` (std's overflow reporter
//!      does, for any fault that is not a guard-page hit, expecting the
//!      fault to come again and kill), the action that was installed
//!      before the call is put back, unless the same fault had come back
//!      from the last one it was put back for: then `SIG_DFL` stays and
//!      the retry kills the process with the original signal and context.
//!      So std's reporter runs twice for a real fault. Never left for a
//!      sent signal, nor if the handler raised the signal again to die by
//!      it (it is pending: `SIG_DFL` stays, the kernel delivers it).
//!    - `SIG_DFL` (or a spent `SA_RESETHAND` handler), for a fault: the
//!      first time, return with ours installed; if it comes back the same,
//!      install `SIG_DFL` and return, so the retry kills the process with
//!      the original signal and context, as before. A fault that does not
//!      come back (a self-sent one with a positive code, an asynchronous
//!      machine-check report, a page another thread fixed in between) is
//!      thus dropped: the process lives on with stack growth working.
//!    - `SIG_DFL` for a signal that does not repeat (sent: `si_code <= 0`;
//!      or forced by the kernel: `SI_KERNEL` without a hardware exception):
//!      the default action, termination, is what was asked for. Done at
//!      once: install `SIG_DFL`, re-send the signal to this thread,
//!      unblock it. If the process survives that (a tracer suppressed it),
//!      the action that was installed is put back, so `SIG_DFL` never
//!      stays.
//!    - `SIG_IGN`: a sent signal is ignored; anything else is treated as
//!      under `SIG_DFL` (the kernel kills for an ignored fault too).
//!
//!    A signal that does not come again therefore never uninstalls ours,
//!    whatever the guess about it. One window remains, inherent to
//!    chaining a handler that resets the action (std's does): between its
//!    reset to `SIG_DFL` and the put-back a few instructions later, a
//!    growth fault on *another* thread meets `SIG_DFL` and kills the
//!    process. It takes a SIGSEGV or SIGBUS that is not ours (a sent one,
//!    or a real fault of the program) while another thread grows a stack.
//!
//! Every step uses only atomics, const-initialized thread-locals without
//! destructors, arithmetic, `madvise`, `mprotect`, `write`, `sigaction`,
//! `sigpending`, `pthread_sigmask`, `tgkill` and `abort`, and errno is
//! saved and restored around the handler.
//!
//! A handler a user installs *after* ours replaces it. It must then chain:
//! install with `SA_ONSTACK | SA_SIGINFO`, keep the action `sigaction`
//! returned as the old one, and call it with the kernel's arguments for
//! every fault it does not handle. Otherwise the first growth fault reaches
//! a handler that does not know our stacks and the process dies.
//! (`tests/stack_faults.rs` shows both orders.)
//!
//! # Other signals
//!
//! greenstack sets the action of SIGSEGV and SIGBUS once per process (the
//! first arena) and never changes another signal's action: no
//! read-modify-write of other code's handlers, so no race with a
//! `sigaction` on another thread and no change to how their handlers run
//! on threads that are not ours. (It used to add `SA_ONSTACK` to every
//! handler on each runtime start; that could revert a handler installed at
//! the same time, and moved handlers on every thread onto that thread's
//! alternate stack, std's being 8 KiB.) What that means for a handler:
//!
//! - With `SA_ONSTACK`, installed before or after the runtime: its frame
//!   goes on the thread's alternate stack (64 KiB on every thread that runs
//!   coroutines), never on a coroutine stack. Always delivered.
//! - Without `SA_ONSTACK` (signal-hook-registry installs with
//!   `SA_RESTART | SA_SIGINFO`), installed before or after: on an ordinary
//!   thread, it runs exactly as it would without greenstack. On a coroutine
//!   its frame goes below the coroutine's stack pointer. If the committed
//!   stack holds it, the handler runs there, and its own deeper frames take
//!   growth faults like any code. If not, the kernel cannot write the frame
//!   (an ungrown page faults for the kernel as for the program, and a page
//!   table cannot tell the two apart), drops the signal and raises SIGSEGV
//!   `SI_KERNEL`; step 3 grows the stack, writes `greenstack: a signal was
//!   lost: ...` to stderr, and the coroutine runs on. No committed margin
//!   can prevent it: the stack pointer can sit anywhere above the floor
//!   without touching memory below it, so a margin only moves the floor.
//!   Measured on Linux 6.18 (AVX-512, `AT_MINSIGSTKSZ` 3,376 bytes) by
//!   `frame_fits_above_the_floor_from_a_measured_gap` in
//!   `tests/stack_signals.rs`: sent from 3,136 bytes above the floor or
//!   less the signal is lost, from 3,200 bytes up it is delivered, in both
//!   guard modes; step 3's bound, [`frame_need`], is 3,568 bytes.
//! - Blocking signals on workers while coroutines run would avoid the loss
//!   but change what a program sees (thread-directed signals and profiling
//!   timers delayed for as long as a coroutine runs, a mask change per
//!   switch), so it is not done.
//!
//! So install handlers that may interrupt coroutines with `SA_ONSTACK`.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::class::{errno, Class};

mod chaining;
use chaining::chain;

/// How many classes can be registered at once across all arenas.
const TABLE_LEN: usize = 64;

/// Bytes made available below the stack pointer when the kernel could not
/// push a signal frame: an x86-64 frame with AVX-512 state is about 3.5 KiB;
/// the rest is room for the signal handler's own frames.
const SIGFRAME_ROOM: usize = 32 * 1024;

/// The x86-64 System V red zone below the stack pointer, which the kernel
/// skips before it pushes a signal frame (bytes; none on aarch64, where the
/// extra room only makes the step 3 test a little wider).
const RED_ZONE: usize = 128;

/// Frame size assumed when the kernel does not report `AT_MINSIGSTKSZ`
/// (bytes): glibc's `SIGSTKSZ`, which covers the AVX-512 frame.
const FALLBACK_FRAME: usize = 8 * 1024;

/// Bytes a signal frame may take below the interrupted stack pointer, set
/// once at install from `AT_MINSIGSTKSZ` (the kernel's largest frame for
/// this CPU; 3,376 bytes on this AVX-512 machine) plus the red zone and
/// the 64-byte alignment of the frame: 3,568 bytes here, against a
/// measured 3,200 (module docs, "Other signals"). Read by the handler.
static FRAME_NEED: AtomicUsize = AtomicUsize::new(RED_ZONE + FALLBACK_FRAME + 64);

/// See [`FRAME_NEED`].
pub(crate) fn frame_need() -> usize {
    FRAME_NEED.load(Ordering::Relaxed)
}

/// Size of the alternate signal stack we install: at least 64 KiB
/// (DESIGN.md; `_SC_SIGSTKSZ` is 13.5 KiB on this machine).
const ALTSTACK_SIZE: usize = 64 * 1024;

/// One registered class: its address range and a pointer to it.
struct Entry {
    start: AtomicUsize,
    end: AtomicUsize,
    class: AtomicPtr<Class>,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Entry = Entry {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    class: AtomicPtr::new(std::ptr::null_mut()),
};

/// The classes the handler knows, read without locks.
static TABLE: [Entry; TABLE_LEN] = [EMPTY; TABLE_LEN];

/// One past the highest `TABLE` index ever used: lookups scan only that far
/// (every prefault outside a coroutine's own slot does one; scanning all 64
/// entries was ~4% of `fanout_fib`). It only grows, so an entry below it is
/// never missed; a class is registered before any of its slots exists.
static TABLE_HIGH: AtomicUsize = AtomicUsize::new(0);

/// A class's place in [`TABLE`]; unregisters on drop.
pub(crate) struct Registration(usize);

/// Publishes `class` to the handler. The class must stay alive until the
/// returned registration is dropped.
pub(crate) fn register(class: &Class) -> io::Result<Registration> {
    install_handler()?;
    let (start, end) = class.span();
    for (i, e) in TABLE.iter().enumerate() {
        let ptr = class as *const Class as *mut Class;
        if e.class
            .compare_exchange(
                std::ptr::null_mut(),
                ptr,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            TABLE_HIGH.fetch_max(i + 1, Ordering::AcqRel);
            e.end.store(end, Ordering::Release);
            // Release: the handler's Acquire load of `start` sees `end` and
            // `class` too.
            e.start.store(start, Ordering::Release);
            return Ok(Registration(i));
        }
    }
    Err(io::Error::other(format!(
        "too many stack size classes live at once (at most {TABLE_LEN} across all arenas)"
    )))
}

impl Drop for Registration {
    fn drop(&mut self) {
        let e = &TABLE[self.0];
        e.start.store(0, Ordering::Release);
        e.end.store(0, Ordering::Release);
        e.class.store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// Finds the registered class whose range holds `addr`.
fn lookup(addr: usize) -> Option<&'static Class> {
    let high = TABLE_HIGH.load(Ordering::Acquire).min(TABLE_LEN);
    for e in &TABLE[..high] {
        let start = e.start.load(Ordering::Acquire);
        if start == 0 || addr < start || addr >= e.end.load(Ordering::Acquire) {
            continue;
        }
        let p = e.class.load(Ordering::Acquire);
        // SAFETY: a non-null pointer in the table refers to a class that
        // stays alive until its `Registration` is dropped, which clears the
        // entry first. A class is dropped only when no slot of it is live, so
        // no fault of ours can be in flight for it.
        return unsafe { p.as_ref() };
    }
    None
}

/// The slot of `class` holding `addr`.
fn slot_of(class: &Class, addr: usize) -> usize {
    (addr - class.base) / class.geo.stride
}

/// Where a stack address lies, for `prefault` and tests.
pub(crate) struct Located {
    /// Lowest address that may ever be committed in the slot.
    pub(crate) zone_bottom: usize,
    /// Current committed floor.
    pub(crate) floor: usize,
}

/// Finds the live slot holding `addr`, if any.
pub(crate) fn locate(addr: usize) -> Option<Located> {
    let class = lookup(addr)?;
    let i = slot_of(class, addr);
    if !class.alloc.is_live(i as u32) {
        return None;
    }
    Some(Located {
        zone_bottom: class.zone_bottom(i),
        floor: class.metas[i].floor.load(Ordering::Acquire),
    })
}

thread_local! {
    /// Depth of no-fault sections on this thread. Const-initialized with no
    /// destructor, so the handler may read it.
    static NOFAULT_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Enters (`+1`) or leaves (`-1`) a no-fault section on this thread.
#[inline(never)]
pub(crate) fn nofault_adjust(delta: i32) {
    nofault_enter_by(delta);
}

/// Enters a no-fault section: for a caller that is itself out of line (no
/// switch happens in between, so the thread-local may be reached inline).
#[inline(always)]
pub(crate) fn nofault_enter() {
    nofault_enter_by(1);
}

#[inline(always)]
fn nofault_enter_by(delta: i32) {
    NOFAULT_DEPTH.with(|d| d.set(d.get().wrapping_add_signed(delta)));
}

#[inline(never)]
pub(crate) fn in_nofault_section() -> bool {
    NOFAULT_DEPTH.with(|d| d.get() > 0)
}

/// The SIGSEGV action `install_handler` read just before installing ours:
/// what the handler chains to until [`PREV_SEGV`] is published (the few
/// instructions between our `sigaction` and that publication).
static PREV_SEGV_READ: OnceLock<libc::sigaction> = OnceLock::new();
/// The SIGSEGV action ours replaced, as the installing `sigaction` returned
/// it: if another thread installed a handler between our read and our
/// install, it is this one, and it is chained to, not lost.
static PREV_SEGV: OnceLock<libc::sigaction> = OnceLock::new();
/// As [`PREV_SEGV_READ`], for SIGBUS.
static PREV_BUS_READ: OnceLock<libc::sigaction> = OnceLock::new();
/// As [`PREV_SEGV`], for SIGBUS.
static PREV_BUS: OnceLock<libc::sigaction> = OnceLock::new();
/// Set when a chained SIGSEGV has used up a previous `SA_RESETHAND`
/// handler: from then on chaining applies the default action, as the
/// kernel would after resetting it.
static PREV_SEGV_SPENT: AtomicBool = AtomicBool::new(false);
/// As [`PREV_SEGV_SPENT`], for SIGBUS.
static PREV_BUS_SPENT: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// Test-only: called once by [`install_handler`] between reading the
/// previous SIGSEGV action and installing ours (0: none), so a test can
/// install a handler in exactly that window, as another thread could.
static INSTALL_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Sets the function [`install_handler`] calls between reading the previous
/// action and installing ours (tests only).
pub(crate) fn set_install_hook(hook: fn()) {
    INSTALL_HOOK.store(hook as usize, Ordering::Release);
}

/// Installs the handler for SIGSEGV and SIGBUS, once per process. No other
/// signal's action is read or changed (module docs, "Other signals").
///
/// One `sigaction` call installs ours and returns the action it replaced,
/// so a handler another thread installs at the same moment is either
/// replaced and chained to, or installed after ours (and must chain to us):
/// never overwritten and forgotten. The action read just before is
/// published first, so a signal taken between the install and the
/// publication of the replaced action still has something to chain to.
pub(crate) fn install_handler() -> io::Result<()> {
    let r = INSTALLED.get_or_init(|| {
        // SAFETY: getauxval only reads the auxiliary vector.
        let frame = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
        let frame = if frame == 0 { FALLBACK_FRAME } else { frame };
        FRAME_NEED.store(RED_ZONE + frame + 64, Ordering::Relaxed);
        for (sig, read, prev) in [
            (libc::SIGSEGV, &PREV_SEGV_READ, &PREV_SEGV),
            (libc::SIGBUS, &PREV_BUS_READ, &PREV_BUS),
        ] {
            // SAFETY: plain sigaction calls with valid, zero-initialized
            // structs.
            unsafe {
                let mut seen: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut seen) != 0 {
                    return Err(errno());
                }
                let _ = read.set(seen);
                let hook = INSTALL_HOOK.swap(0, Ordering::AcqRel);
                if hook != 0 {
                    // SAFETY: only `set_install_hook` stores here, from a
                    // `fn()`.
                    let hook: fn() = std::mem::transmute(hook);
                    hook();
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = handle as *const () as usize;
                new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut new.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &new, &mut old) != 0 {
                    return Err(errno());
                }
                let _ = prev.set(old);
            }
        }
        Ok(())
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// The signal handler.
///
/// Everything in here must be async-signal-safe: no allocation, no locks, no
/// formatting through std, no tracing, no `std::io`. See the module docs for
/// the numbered path.
extern "C" fn handle(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let saved_errno = errno();
    injected_handler_faults();
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    let sp = stack_pointer(ctx);
    // A signal sent with kill, raise, sigqueue, tgkill... (si_code <= 0)
    // is never a fault of ours: its "address" is the sender's pid and uid.
    if code > 0 && handle_ours(sig, addr, code, sp, ctx) {
        // SAFETY: restoring this thread's errno slot.
        unsafe { *libc::__errno_location() = saved_errno };
        return;
    }
    // SAFETY: `info` and `ctx` are the kernel's, passed on unchanged.
    unsafe { chain(sig, info, ctx) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// Test-only: faults inside the handler on request, to show that a fault
/// here ends the process (SIGSEGV is blocked while the handler runs, so the
/// kernel kills the process) rather than hanging.
fn injected_handler_faults() {
    use super::mmap::{injected, Fault};
    if injected(Fault::InHandler) {
        // SAFETY: none; this read of an unmapped address is the injected
        // fault, reachable only from tests.
        unsafe { std::ptr::read_volatile(std::hint::black_box(16usize) as *const u8) };
    }
    if injected(Fault::HandlerOverflow) {
        overflow_altstack(0);
    }
}

/// Recurses with 4 KiB frames until the alternate signal stack's guard
/// page is hit.
#[inline(never)]
#[allow(unconditional_recursion)]
fn overflow_altstack(depth: usize) -> usize {
    let frame = std::hint::black_box([depth as u8; 4096]);
    overflow_altstack(depth + 1) + frame[depth % 4096] as usize
}

/// Steps 2–6 of the fault path. Returns true if the fault was ours and is
/// resolved (the handler should return).
fn handle_ours(
    sig: libc::c_int,
    addr: usize,
    code: libc::c_int,
    sp: usize,
    ctx: *mut libc::c_void,
) -> bool {
    let Some(class) = lookup(addr) else {
        // The kernel reports a frame it could not push as SIGSEGV only.
        if sig == libc::SIGSEGV && code == libc::SI_KERNEL && addr == 0 && !hardware_exception(ctx)
        {
            return grow_for_signal_frame(sp);
        }
        return false;
    };
    let i = slot_of(class, addr);
    if !class.alloc.is_live(i as u32) {
        return false;
    }
    if addr < class.zone_bottom(i) {
        // The name is the slot's owner's to rename or free: read it only if
        // the fault comes from code on that stack (a stray access from
        // another thread could race with the owner).
        let own = sp >= class.slot_base(i) && sp < class.slot_top(i);
        report_and_abort(class, i, addr, b"overflowed its stack", own);
    }
    let floor = class.metas[i].floor.load(Ordering::Acquire);
    if addr >= floor || sp < class.slot_base(i) || sp >= class.slot_top(i) {
        return false;
    }
    grow_or_abort(class, i, addr)
}

/// Step 3: the kernel could not push a signal frame below `sp`, if `sp` is
/// in a live slot less than [`frame_need`] bytes above its committed floor
/// (the frame did not fit). Otherwise the SIGSEGV is not a lost signal of
/// ours and is chained.
fn grow_for_signal_frame(sp: usize) -> bool {
    let Some(class) = lookup(sp) else {
        return false;
    };
    let i = slot_of(class, sp);
    if !class.alloc.is_live(i as u32) {
        return false;
    }
    let zb = class.zone_bottom(i);
    let floor = class.metas[i].floor.load(Ordering::Acquire);
    if sp.saturating_sub(frame_need()) >= floor {
        // A frame would have fit above the floor: the kernel was not
        // failing to push one here.
        return false;
    }
    let want = sp.saturating_sub(SIGFRAME_ROOM).max(zb);
    if want >= floor {
        return false;
    }
    grow_or_abort(class, i, want);
    // The kernel has already dropped the signal whose frame did not fit.
    // Say so once per occurrence; the coroutine runs on.
    let msg =
        b"greenstack: a signal was lost: its handler lacks SA_ONSTACK and its frame did not fit \
below a coroutine's stack pointer (the stack was grown and the coroutine runs on); install \
handlers of signals that may interrupt coroutines with SA_ONSTACK\n";
    // SAFETY: write(2) of a static buffer is async-signal-safe.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    true
}

/// Whether the thread's last trap was a hardware exception the kernel
/// reports as SIGSEGV `SI_KERNEL` with address 0 (x86-64: #TS, #NP, #SS,
/// #GP). The kernel stores the trap number in the thread just before it
/// raises the signal, and the signal frame carries it as `trapno`; a
/// SIGSEGV forced because a signal frame could not be written carries the
/// thread's previous trap instead (typically 14, the page fault of an
/// earlier growth, or 0). Such a fault repeats when the instruction runs
/// again, so it must be chained, never taken for a lost signal. (If a
/// handler recovered from a #GP earlier on the same thread, a frame lost
/// later carries that stale 13 and is chained too: the previous handler
/// gets it, or under `SIG_DFL` it is dropped, since it does not come back;
/// the lost signal is then not reported and the stack not grown, and the
/// process runs on with ours installed.)
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn hardware_exception(ctx: *mut libc::c_void) -> bool {
    // SAFETY: for an SA_SIGINFO handler the third argument is a ucontext_t.
    let trapno =
        unsafe { (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_TRAPNO as usize] };
    matches!(trapno, 10..=13)
}

/// As on x86-64: aarch64 reports no hardware exception as `SI_KERNEL`.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn hardware_exception(_ctx: *mut libc::c_void) -> bool {
    false
}

fn grow_or_abort(class: &Class, i: usize, addr: usize) -> bool {
    if in_nofault_section() {
        class.counters.violations.fetch_add(1, Ordering::Relaxed);
    }
    if class.grow(i, addr).is_err() {
        report_and_abort(
            class,
            i,
            addr,
            b"cannot grow its stack (the kernel refused the memory)",
            true,
        );
    }
    true
}

/// Writes `greenstack: coroutine 'NAME' (id N) WHAT (reserve R bytes, fault
/// at 0xA)` to stderr and aborts. The name is read only if `read_name`: the
/// fault came from code on the slot's own stack.
fn report_and_abort(class: &Class, i: usize, addr: usize, what: &[u8], read_name: bool) -> ! {
    let meta = &class.metas[i];
    let mut buf = Buf::new();
    buf.put(b"greenstack: coroutine ");
    let (p, n) = if read_name {
        (
            meta.name_ptr.load(Ordering::Acquire),
            meta.name_len.load(Ordering::Acquire),
        )
    } else {
        (0, 0)
    };
    if !read_name {
        buf.put(b"<name not read: the fault came from outside its stack>");
    } else if p != 0 {
        buf.put(b"'");
        // SAFETY: `name_ptr`/`name_len` are published by the live slot that
        // owns the name bytes. `read_name` says the fault came from the
        // slot's own coroutine: it runs (so the slot is live), and it is the
        // one interrupted here, so its owner is not renaming or freeing the
        // name meanwhile.
        buf.put(unsafe { std::slice::from_raw_parts(p as *const u8, n) });
        buf.put(b"'");
    } else {
        buf.put(b"<unnamed>");
    }
    buf.put(b" (id ");
    buf.num(meta.id.load(Ordering::Relaxed) as usize, 10);
    buf.put(b") ");
    buf.put(what);
    buf.put(b" (reserve ");
    buf.num(class.geo.stride, 10);
    buf.put(b" bytes, fault at 0x");
    buf.num(addr, 16);
    buf.put(b")\n");
    // SAFETY: write(2) and abort(3) are async-signal-safe; the buffer is a
    // local array.
    unsafe {
        libc::write(2, buf.bytes.as_ptr().cast(), buf.len);
        libc::abort();
    }
}

/// A fixed buffer for the report: no allocation.
struct Buf {
    bytes: [u8; 512],
    len: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            bytes: [0; 512],
            len: 0,
        }
    }

    fn put(&mut self, s: &[u8]) {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn num(&mut self, mut v: usize, radix: usize) {
        let mut digits = [0u8; 24];
        let mut k = digits.len();
        loop {
            k -= 1;
            digits[k] = b"0123456789abcdef"[v % radix];
            v /= radix;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[k..]);
    }
}

/// The interrupted stack pointer, from the signal's machine context.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn stack_pointer(ctx: *mut libc::c_void) -> usize {
    // SAFETY: for an SA_SIGINFO handler the third argument is a ucontext_t.
    unsafe {
        (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RSP as usize] as usize
    }
}

/// The interrupted stack pointer, from the signal's machine context.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn stack_pointer(ctx: *mut libc::c_void) -> usize {
    // SAFETY: for an SA_SIGINFO handler the third argument is a ucontext_t.
    unsafe { (*(ctx as *const libc::ucontext_t)).uc_mcontext.sp as usize }
}

/// This thread's alternate signal stack, if we installed it.
struct AltStack {
    /// Start of the mapping (the guard page).
    map: usize,
    /// Length of the mapping, guard included.
    len: usize,
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: disable the alternate stack only if it is still ours, then
        // unmap it (std's `drop_handler` order: SS_DISABLE before munmap).
        unsafe {
            let mut cur: libc::stack_t = std::mem::zeroed();
            if libc::sigaltstack(std::ptr::null(), &mut cur) == 0
                && cur.ss_sp as usize == self.map + super::mmap::page_size()
            {
                let off = libc::stack_t {
                    ss_sp: std::ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: ALTSTACK_SIZE,
                };
                libc::sigaltstack(&off, std::ptr::null_mut());
            }
            libc::munmap(self.map as *mut libc::c_void, self.len);
        }
    }
}

thread_local! {
    static ALTSTACK: Cell<bool> = const { Cell::new(false) };
    static ALTSTACK_OWNED: std::cell::RefCell<Option<AltStack>> = const { std::cell::RefCell::new(None) };
}

/// Makes sure the calling thread has an alternate signal stack of at least
/// 64 KiB, installing a guarded one if not. Every thread that runs
/// coroutines must call this before the first resume.
pub(crate) fn ensure_thread_altstack() -> io::Result<()> {
    if ALTSTACK.with(Cell::get) {
        return Ok(());
    }
    // SAFETY: querying the current alternate stack into a zeroed struct.
    let mut cur: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut cur) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if cur.ss_flags & libc::SS_DISABLE == 0 && cur.ss_size >= ALTSTACK_SIZE {
        ALTSTACK.with(|c| c.set(true));
        return Ok(());
    }
    let page = super::mmap::page_size();
    let len = ALTSTACK_SIZE + page;
    let map = super::mmap::reserve(len)?;
    // SAFETY: `map` is our fresh reservation; we make all but its lowest page
    // (the guard) read-write and hand that to the kernel as the alternate
    // stack. On failure we unmap it again.
    unsafe {
        if let Err(e) = super::mmap::protect(map + page, ALTSTACK_SIZE, true) {
            let _ = super::mmap::unmap(map, len);
            return Err(e);
        }
        let st = libc::stack_t {
            ss_sp: (map + page) as *mut libc::c_void,
            ss_flags: 0,
            ss_size: ALTSTACK_SIZE,
        };
        if libc::sigaltstack(&st, std::ptr::null_mut()) != 0 {
            let e = io::Error::last_os_error();
            let _ = super::mmap::unmap(map, len);
            return Err(e);
        }
    }
    ALTSTACK_OWNED.with(|o| *o.borrow_mut() = Some(AltStack { map, len }));
    ALTSTACK.with(|c| c.set(true));
    Ok(())
}
