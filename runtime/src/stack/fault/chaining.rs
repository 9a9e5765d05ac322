//! Step 7 of the fault path (module docs of `fault`): hands a signal that
//! is not a growth fault to the action installed before ours, and decides
//! when a fault may be left to kill the process. Runs inside the signal
//! handler: everything here must be async-signal-safe (no allocation, no
//! locks, no formatting through std, no tracing, no `std::io`).

use std::cell::Cell;
use std::sync::atomic::Ordering;

use super::{
    hardware_exception, PREV_BUS, PREV_BUS_READ, PREV_BUS_SPENT, PREV_SEGV, PREV_SEGV_READ,
    PREV_SEGV_SPENT,
};

/// What chaining does with a signal, from the previous action.
enum Prev<'a> {
    /// Call this handler.
    Handler(&'a libc::sigaction),
    /// `SIG_DFL`, or a `SA_RESETHAND` handler already used.
    Default,
    /// `SIG_IGN`.
    Ignore,
}

/// Step 7: hands the signal to whatever was installed before us (module
/// docs, step 7, for each case).
///
/// # Safety
///
/// - `info` and `ctx` must be the kernel's arguments to this handler.
pub(super) unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let (prev, spent) = if sig == libc::SIGBUS {
        (PREV_BUS.get().or(PREV_BUS_READ.get()), &PREV_BUS_SPENT)
    } else {
        (PREV_SEGV.get().or(PREV_SEGV_READ.get()), &PREV_SEGV_SPENT)
    };
    let what = match prev {
        None => Prev::Default,
        Some(p) if p.sa_sigaction == libc::SIG_DFL => Prev::Default,
        Some(p) if p.sa_sigaction == libc::SIG_IGN => Prev::Ignore,
        // The kernel resets an SA_RESETHAND action as it delivers the
        // signal; the first signal to get here has the one call.
        Some(p) if p.sa_flags & libc::SA_RESETHAND != 0 && spent.swap(true, Ordering::AcqRel) => {
            Prev::Default
        }
        Some(p) => Prev::Handler(p),
    };
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // Sent with kill, raise, sigqueue, tgkill... (SI_FROMUSER), or forced
    // by the kernel without a faulting instruction (a signal frame it
    // could not write): nothing comes again once this returns.
    let once = code <= 0 || (code == libc::SI_KERNEL && !hardware_exception(ctx));
    match what {
        Prev::Handler(p) => {
            let before = current_action(sig);
            // SAFETY: `p` is the action the kernel gave us as the previous
            // one; `info` and `ctx` are the kernel's.
            unsafe { call_previous(sig, p, info, ctx) };
            // A handler that reset the action to SIG_DFL expects the fault
            // to come again and kill. Put ours back the first time: a
            // guess that it will come again can be wrong (module docs,
            // step 7). The second time the same fault comes back, leave
            // SIG_DFL: the retry kills, with the fault's own context.
            if once || !repeated(sig, info, ctx) {
                put_back_if_reset(sig, &before);
            }
        }
        Prev::Ignore if code <= 0 => {}
        Prev::Ignore | Prev::Default => {
            if once {
                terminate_now(sig);
            } else if repeated(sig, info, ctx) {
                // The instruction faults again and the kernel applies the
                // default action (for SIGSEGV, SIG_IGN on a fault also
                // kills), with the fault's own context in the core.
                set_default(sig);
            }
            // Else return with ours installed: a fault comes back as the
            // same fault (then the branch above), anything else is done.
        }
    }
}

/// A fault as seen by the handler: signal, code, address and the
/// interrupted registers. An instruction that faults again after the
/// handler returned gives the same one; the pieces are kept apart, but the
/// registers only as a digest.
type FaultId = [usize; 4];

thread_local! {
    /// The last fault on this thread that chaining let run again with ours
    /// installed, though the action before ours would have ended the
    /// process ([`repeated`]). Const-initialized, no destructor: the
    /// handler may use it. Per thread, so the thread id is implied.
    static LAST_CHAINED: Cell<FaultId> = const { Cell::new([0; 4]) };
}

/// Whether this fault is the one chaining let run again last on this
/// thread (it came back: the retry faulted the same way). If not, it is
/// remembered, and the caller lets it run again with ours installed.
fn repeated(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) -> bool {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let id = [
        (sig as u32 as usize) << 32 | code as u32 as usize,
        addr,
        program_counter(ctx),
        register_digest(ctx),
    ];
    LAST_CHAINED.with(|c| c.replace(id)) == id
}

/// A digest of the interrupted general registers (all of them, stack
/// pointer and flags included), so that a fault taken again at the same
/// instruction in a loop, with other values, is not taken for a retry.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn register_digest(ctx: *mut libc::c_void) -> usize {
    // SAFETY: for an SA_SIGINFO handler the third argument is a ucontext_t.
    let gregs = unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs };
    // REG_R8..=REG_EFL: the sixteen integer registers, the program counter
    // and the flags (the rest is segment and trap state).
    digest(gregs[..=libc::REG_EFL as usize].iter().map(|&r| r as usize))
}

/// As on x86-64: x0..x30, sp, pc, pstate.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn register_digest(ctx: *mut libc::c_void) -> usize {
    // SAFETY: for an SA_SIGINFO handler the third argument is a ucontext_t.
    let m = unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext };
    digest(m.regs.iter().map(|&r| r as usize).chain([
        m.sp as usize,
        m.pc as usize,
        m.pstate as usize,
    ]))
}

/// FNV-1a over whole words: arithmetic only.
fn digest(words: impl Iterator<Item = usize>) -> usize {
    words.fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Calls the previous handler `p` as the kernel would have delivered the
/// signal to it: the interrupted thread's mask plus `p.sa_mask`, plus the
/// signal itself unless `SA_NODEFER`, blocked during the call; our mask
/// back afterwards.
///
/// # Safety
///
/// - `p` must be an action the kernel returned, whose handler is neither
///   `SIG_DFL` nor `SIG_IGN`.
/// - `info` and `ctx` must be the kernel's arguments to this handler.
unsafe fn call_previous(
    sig: libc::c_int,
    p: &libc::sigaction,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it. The
    // interrupted mask is the ucontext's `uc_sigmask`, whose first 64 bits
    // (all that sigismember reads for signals 1..=64) the kernel wrote.
    // sigemptyset, sigismember, sigaddset and pthread_sigmask are
    // async-signal-safe.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        let interrupted = &(*(ctx as *const libc::ucontext_t)).uc_sigmask;
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in 1..=64 {
            if libc::sigismember(interrupted, s) == 1 || libc::sigismember(&p.sa_mask, s) == 1 {
                libc::sigaddset(&mut set, s);
            }
        }
        if p.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, &mut old);
    }
    let h = p.sa_sigaction;
    if p.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it
        // has this signature; we pass the kernel's arguments unchanged.
        unsafe {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(h);
            f(sig, info, ctx);
        }
    } else {
        // SAFETY: a handler installed without SA_SIGINFO is declared with
        // one argument, but the kernel passes it (sig, info, ctx) on x86-64
        // (and some old handlers read the context); under the C calling
        // convention of x86-64 and aarch64 extra arguments in registers are
        // harmless to a callee that takes fewer.
        unsafe {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(h);
            f(sig, info, ctx);
        }
    }
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
}

/// Whether `sig` is pending for this thread or the process.
fn pending(sig: libc::c_int) -> bool {
    // SAFETY: sigpending fills the zeroed set; sigpending and sigismember
    // are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set) == 0 && libc::sigismember(&set, sig) == 1
    }
}

/// The action installed for `sig` now.
fn current_action(sig: libc::c_int) -> libc::sigaction {
    // SAFETY: reading an action into a zeroed struct; sigaction is
    // async-signal-safe.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut cur);
        cur
    }
}

/// After a handler we called: if it reset the action to `SIG_DFL` (std's
/// does, expecting a fault to repeat and kill), put back `before`, the
/// action installed before the call (ours, or a later handler that
/// chained to us). The swap returns what
/// it replaced; if that is not `SIG_DFL`, another thread installed a
/// handler in between, and it is put back in turn, so a concurrent
/// `sigaction` is never left undone.
///
/// Not if the signal is now pending: the handler reset the action and
/// raised the signal again (a crash reporter's "restore the default and
/// re-raise"), which the kernel delivers with `SIG_DFL` as soon as this
/// handler returns and unblocks it. Putting ours back would hand it to the
/// same handler again, for ever.
fn put_back_if_reset(sig: libc::c_int, before: &libc::sigaction) {
    if before.sa_sigaction == libc::SIG_DFL
        || current_action(sig).sa_sigaction != libc::SIG_DFL
        || pending(sig)
    {
        return;
    }
    // SAFETY: installing actions the kernel returned to us.
    unsafe {
        let mut replaced: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, before, &mut replaced);
        if replaced.sa_sigaction != libc::SIG_DFL {
            libc::sigaction(sig, &replaced, std::ptr::null_mut());
        }
    }
}

/// Applies the default action of `sig` now, for a signal that will not
/// repeat: installs `SIG_DFL`, sends `sig` to this thread and unblocks it,
/// so the kernel terminates the process with `sig` before `pthread_sigmask`
/// returns. If the process survives (a tracer suppressed the signal, or
/// another thread installed a handler in between), the action that was
/// installed is put back.
///
fn terminate_now(sig: libc::c_int) {
    // SAFETY: sigaction, tgkill and pthread_sigmask are async-signal-safe;
    // every struct is zero-initialized and filled.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        let mut was: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, &dfl, &mut was);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), sig);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        // Still here: put back what was installed, unless someone else
        // changed it since.
        let mut replaced: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, &was, &mut replaced);
        if replaced.sa_sigaction != libc::SIG_DFL {
            libc::sigaction(sig, &replaced, std::ptr::null_mut());
        }
    }
}

fn set_default(sig: libc::c_int) {
    // SAFETY: installing SIG_DFL with an empty mask is always valid.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
    }
}

/// The interrupted program counter, from the signal's machine context.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn program_counter(ctx: *mut libc::c_void) -> usize {
    // SAFETY: for an SA_SIGINFO handler the third argument is a ucontext_t.
    unsafe {
        (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] as usize
    }
}

/// The interrupted program counter, from the signal's machine context.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn program_counter(ctx: *mut libc::c_void) -> usize {
    // SAFETY: for an SA_SIGINFO handler the third argument is a ucontext_t.
    unsafe { (*(ctx as *const libc::ucontext_t)).uc_mcontext.pc as usize }
}
