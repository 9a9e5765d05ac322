//! Signals delivered while a coroutine sits just above its committed floor.
//!
//! A handler installed without `SA_ONSTACK` makes the kernel push its signal
//! frame (about 3.4 KiB on this AVX-512 machine: the 128-byte red zone, the
//! XSAVE area and `rt_sigframe`) on the interrupted stack, below the stack
//! pointer. On a coroutine stack that memory may be ungrown (guard markers
//! or `PROT_NONE`), and the kernel's write there does not raise a growth
//! fault: `setup_rt_frame` fails, the kernel drops the signal it was
//! delivering and forces a SIGSEGV with `si_code == SI_KERNEL` and
//! `si_addr == 0` instead (`force_sigsegv`). The stack handler's step 3
//! grows the slot from the interrupted stack pointer and the process lives,
//! but the original signal is gone by then, and the SIGSEGV carries no trace
//! of which signal it was. These tests require the user's handler to run
//! anyway, which holds only if such a frame is never pushed on a coroutine
//! stack (the handler runs on the alternate signal stack): the controls,
//! whose handler has `SA_ONSTACK`, show that case.
//!
//! Each check runs in a child process (this binary, re-executed for one
//! test), so a crash is reported as a failed test. The child places the
//! stack pointer a fixed distance above the committed floor with a few
//! instructions of inline assembly (Rust frame sizes differ between debug
//! and release, and a sending call whose own frame crosses the floor takes
//! an ordinary growth fault first, which would make room for the signal
//! frame and hide the case under test), sends itself SIGUSR1 with
//! `pthread_kill` from there, and prints what happened on one `RESULT` line.
//! A pass-through observer in front of the stack handler records each
//! SIGSEGV's `si_code`, `si_addr` and interrupted stack pointer, and then
//! hands the signal on unchanged.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::OnceLock;

use corosensei::{Coroutine, CoroutineResult};
use greenstack::stack::{testing, GuardMode, StackArena};

/// Environment variable that turns a re-executed test into its child half;
/// its value names the scenario.
const CHILD_ENV: &str = "GREENSTACK_STACK_SIGNALS_CHILD";

/// Where the stack pointer is put, in bytes above the committed floor, when
/// the signal is sent (rounded down to 16 bytes for the call).
const GAP: usize = 384;

/// What the coroutine returns once the signal has been sent.
const DONE: u32 = 0x600d;

/// Runs of the user's SIGUSR1 handler.
static USR1_RUNS: AtomicUsize = AtomicUsize::new(0);
/// Stack pointer interrupted by the last SIGUSR1 (0: none).
static USR1_SP: AtomicUsize = AtomicUsize::new(0);
/// Whether the last SIGUSR1 handler ran on the alternate signal stack.
static USR1_ON_ALTSTACK: AtomicIsize = AtomicIsize::new(-1);

/// How many SIGSEGVs the observer records in detail.
const SEGV_RECORDS: usize = 4;
/// SIGSEGVs seen by the observer.
static SEGV_COUNT: AtomicUsize = AtomicUsize::new(0);
/// `si_code` of each recorded SIGSEGV.
static SEGV_CODE: [AtomicIsize; SEGV_RECORDS] = [const { AtomicIsize::new(0) }; SEGV_RECORDS];
/// `si_addr` of each recorded SIGSEGV.
static SEGV_ADDR: [AtomicUsize; SEGV_RECORDS] = [const { AtomicUsize::new(0) }; SEGV_RECORDS];
/// Interrupted stack pointer of each recorded SIGSEGV.
static SEGV_SP: [AtomicUsize; SEGV_RECORDS] = [const { AtomicUsize::new(0) }; SEGV_RECORDS];
/// The SIGSEGV action the observer hands every signal on to (the stack
/// handler's).
static STACK_HANDLER: OnceLock<libc::sigaction> = OnceLock::new();

/// The interrupted stack pointer, from a signal's machine context.
///
/// # Safety
///
/// `ctx` must be the third argument the kernel passed to an `SA_SIGINFO`
/// handler.
unsafe fn interrupted_sp(ctx: *mut libc::c_void) -> usize {
    // SAFETY: per the contract, `ctx` points to the kernel's ucontext_t.
    unsafe {
        (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RSP as usize] as usize
    }
}

/// The user's SIGUSR1 handler: counts its runs and records where it
/// interrupted the thread and whether it runs on the alternate stack.
extern "C" fn on_usr1(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: `ctx` is the kernel's, this being an SA_SIGINFO handler.
    USR1_SP.store(unsafe { interrupted_sp(ctx) }, Ordering::SeqCst);
    // SAFETY: querying the alternate stack into a zeroed struct;
    // sigaltstack is async-signal-safe.
    let on_alt = unsafe {
        let mut st: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut st) == 0 && st.ss_flags & libc::SS_ONSTACK != 0
    };
    USR1_ON_ALTSTACK.store(on_alt as isize, Ordering::SeqCst);
    USR1_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// Records a SIGSEGV, then hands it, unchanged, to the stack handler.
extern "C" fn observe_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let n = SEGV_COUNT.fetch_add(1, Ordering::SeqCst);
    if n < SEGV_RECORDS {
        // SAFETY: the kernel passes a valid siginfo and ucontext to an
        // SA_SIGINFO handler.
        let (code, addr, sp) = unsafe {
            (
                (*info).si_code,
                (*info).si_addr() as usize,
                interrupted_sp(ctx),
            )
        };
        SEGV_CODE[n].store(code as isize, Ordering::SeqCst);
        SEGV_ADDR[n].store(addr, Ordering::SeqCst);
        SEGV_SP[n].store(sp, Ordering::SeqCst);
    }
    let Some(next) = STACK_HANDLER.get() else {
        // SAFETY: abort is async-signal-safe.
        unsafe { libc::abort() }
    };
    // SAFETY: the stack handler is installed with SA_SIGINFO, so it has this
    // signature; it gets the kernel's arguments unchanged.
    unsafe {
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            std::mem::transmute(next.sa_sigaction);
        f(sig, info, ctx);
    }
}

/// Installs `handler` for `sig` with `flags` (plus `SA_SIGINFO`) and returns
/// the action it replaced.
fn install(
    sig: libc::c_int,
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
    flags: libc::c_int,
) -> libc::sigaction {
    // SAFETY: plain sigaction calls with valid, zero-initialized structs; the
    // handler has the SA_SIGINFO signature.
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = handler as *const () as usize;
        new.sa_flags = libc::SA_SIGINFO | flags;
        libc::sigemptyset(&mut new.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, &new, &mut old), 0, "sigaction failed");
        old
    }
}

/// Calls `pthread_kill(thread, sig)` with the stack pointer set to `sp`,
/// restoring it afterwards; returns `pthread_kill`'s result.
///
/// # Safety
///
/// `sp` must be 16-byte aligned, lie at least 128 bytes (the red zone)
/// below the caller's stack pointer, and have enough stack below it for
/// `pthread_kill` (committed, or growable by the stack handler).
#[inline(never)]
unsafe fn pthread_kill_at(sp: usize, thread: libc::pthread_t, sig: libc::c_int) -> libc::c_int {
    let rc: libc::c_int;
    // SAFETY: per the contract the new stack pointer is aligned for a call
    // and clobbers nothing live. r12 is callee-saved, so it carries the old
    // stack pointer across the call; every caller-saved register is declared
    // clobbered by `clobber_abi("C")`.
    unsafe {
        std::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {sp}",
            "call {f}",
            "mov rsp, r12",
            sp = in(reg) sp,
            f = in(reg) libc::pthread_kill as *const () as usize,
            in("rdi") thread,
            in("esi") sig,
            out("r12") _,
            lateout("eax") rc,
            clobber_abi("C"),
        );
    }
    rc
}

/// The stack pointer, near enough: the address of a local.
#[inline(always)]
fn sp() -> usize {
    let here = 0u8;
    std::hint::black_box(&here) as *const u8 as usize
}

/// Whether SIGUSR1 is pending on this thread or the process.
fn usr1_pending() -> bool {
    // SAFETY: sigpending fills the zero-initialized set we pass it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set) == 0 && libc::sigismember(&set, libc::SIGUSR1) == 1
    }
}

/// Runs in the coroutine: puts the stack pointer [`GAP`] bytes above the
/// committed floor, sends this thread SIGUSR1 from there, and returns the
/// floor it started from and whether SIGUSR1 was left pending.
#[inline(never)]
fn send_near_floor() -> (usize, bool) {
    let here = sp();
    let floor = testing::floor_of(here).expect("the coroutine runs on an arena slot");
    let target = (floor + GAP) & !15;
    assert!(
        here > target + 1024,
        "only {} bytes between the stack pointer and the floor: no room to place it {GAP} above",
        here - floor
    );
    // SAFETY: `target` is 16-byte aligned, more than 1 KiB below our own
    // frame, and inside this coroutine's slot: committed down to the floor,
    // growable below it.
    let rc = unsafe { pthread_kill_at(target, libc::pthread_self(), libc::SIGUSR1) };
    assert_eq!(rc, 0, "pthread_kill failed");
    (floor, usr1_pending())
}

/// `a - b` as a signed distance.
fn gap(a: usize, b: usize) -> isize {
    a.wrapping_sub(b) as isize
}

/// The child half: runs the scenario and prints one `RESULT` line.
fn child(mode: GuardMode, onstack: bool) {
    let arena = match StackArena::builder()
        .stack_size(256 * 1024)
        .guard_mode(mode)
        .build()
    {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            println!(
                "RESULT skipped=1 reason={}",
                e.to_string().replace(' ', "_")
            );
            return;
        }
        Err(e) => panic!("building the arena: {e}"),
    };
    // The arena installed the stack handler; put the observer in front.
    let prev = install(libc::SIGSEGV, observe_segv, libc::SA_ONSTACK);
    assert!(STACK_HANDLER.set(prev).is_ok());
    let flags = if onstack { libc::SA_ONSTACK } else { 0 };
    install(libc::SIGUSR1, on_usr1, flags);

    let slot = arena.allocate().unwrap();
    greenstack::stack::prepare_thread().unwrap();
    let before = arena.stats();
    let mut co = Coroutine::with_stack(slot, |_: &corosensei::Yielder<(), ()>, ()| {
        let (floor, pending) = send_near_floor();
        (floor, pending, DONE)
    });
    let (floor, pending, done) = match co.resume(()) {
        CoroutineResult::Return(r) => r,
        CoroutineResult::Yield(()) => unreachable!("the body never yields"),
    };
    assert_eq!(done, DONE);
    let slot = co.into_stack();
    let after = arena.stats();

    let usr1_sp = USR1_SP.load(Ordering::SeqCst);
    let mut line = format!(
        "RESULT mode={mode:?} onstack={} gap={GAP} completed=1 usr1_runs={} usr1_sp_gap={} \
         usr1_on_altstack={} usr1_pending={} growth_faults={} bytes_grown={} committed={} \
         segv_count={}",
        onstack as u8,
        USR1_RUNS.load(Ordering::SeqCst),
        if usr1_sp == 0 {
            "none".to_string()
        } else {
            gap(usr1_sp, floor).to_string()
        },
        USR1_ON_ALTSTACK.load(Ordering::SeqCst),
        pending as u8 | usr1_pending() as u8,
        after.growth_faults - before.growth_faults,
        after.bytes_grown - before.bytes_grown,
        slot.committed(),
        SEGV_COUNT.load(Ordering::SeqCst),
    );
    for k in 0..SEGV_COUNT.load(Ordering::SeqCst).min(SEGV_RECORDS) {
        line.push_str(&format!(
            " segv{k}_code={} segv{k}_addr={:#x} segv{k}_sp_gap={}",
            SEGV_CODE[k].load(Ordering::SeqCst),
            SEGV_ADDR[k].load(Ordering::SeqCst),
            gap(SEGV_SP[k].load(Ordering::SeqCst), floor),
        ));
    }
    println!("{line}");
}

/// Re-executes this binary for `test` with the child half selected by
/// `scenario`, checks that it lived, and returns its `RESULT` fields (empty
/// if the scenario was skipped). libtest prints the line after the test's
/// name, so it is found anywhere in a line.
fn run_child(test: &str, scenario: &str) -> HashMap<String, String> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .output()
        .expect("re-executing the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child process did not live: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, fields)| fields))
        .unwrap_or_else(|| panic!("no RESULT line\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    let fields: HashMap<String, String> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if fields.contains_key("skipped") {
        eprintln!("{test}: skipped ({line})");
        return HashMap::new();
    }
    fields
}

/// The parent half: runs the child and checks that SIGUSR1 was handled with
/// the stack pointer just above the floor, and that the coroutine finished.
fn check(test: &str, scenario: &str) {
    let f = run_child(test, scenario);
    if f.is_empty() {
        return;
    }
    let summary = {
        let mut kv: Vec<_> = f.iter().map(|(k, v)| format!("{k}={v}")).collect();
        kv.sort();
        kv.join(" ")
    };
    assert_eq!(
        f["completed"], "1",
        "the coroutine did not finish: {summary}"
    );
    // The case under test must be the one we meant: the signal (or the
    // kernel's SIGSEGV in its place) interrupted the thread above the floor
    // and within a few hundred bytes of it, with no growth before.
    let hit = match (f["usr1_sp_gap"].as_str(), f.get("segv0_sp_gap")) {
        ("none", Some(g)) => g.parse::<isize>().ok(),
        (g, _) => g.parse::<isize>().ok(),
    };
    if let Some(hit) = hit {
        assert!(
            (1..=GAP as isize).contains(&hit),
            "set-up error: the signal did not arrive with the stack pointer just above the \
             floor (gap {hit}); {summary}"
        );
    }
    let hit = hit.map_or("an unknown number of".to_string(), |h| h.to_string());
    if f["usr1_runs"] != "1" {
        let why = match f.get("segv0_code").map(String::as_str) {
            Some("128") => format!(
                "the kernel could not push the signal frame below the stack pointer and raised \
                 SIGSEGV with si_code SI_KERNEL (128) and si_addr {} instead; the stack handler \
                 grew the slot ({} growth faults, {} bytes) and the process lived, but the kernel \
                 had already dropped SIGUSR1 (pending: {})",
                f["segv0_addr"], f["growth_faults"], f["bytes_grown"], f["usr1_pending"]
            ),
            Some(code) => format!("a SIGSEGV with si_code {code} came instead"),
            None => "no SIGSEGV came either".to_string(),
        };
        panic!(
            "SIGUSR1 was not handled ({} runs) with the stack pointer {hit} bytes above the \
             committed floor: {why}.\n{summary}",
            f["usr1_runs"]
        );
    }
    assert_eq!(f["usr1_pending"], "0", "{summary}");
}

/// Dispatches to the child half when this process is a re-executed child,
/// and returns whether it was.
fn as_child(scenario: &str, mode: GuardMode, onstack: bool) -> bool {
    match std::env::var(CHILD_ENV) {
        Ok(s) if s == scenario => {
            child(mode, onstack);
            true
        }
        _ => false,
    }
}

/// A signal (handler without `SA_ONSTACK`) sent to a worker whose coroutine
/// sits just above its floor is handled, and the process lives: guard
/// markers.
#[test]
fn signal_near_floor_is_handled_markers() {
    if !as_child("markers", GuardMode::Markers, false) {
        check("signal_near_floor_is_handled_markers", "markers");
    }
}

/// As [`signal_near_floor_is_handled_markers`], with the `mprotect`
/// fallback (ungrown stack is `PROT_NONE`).
#[test]
fn signal_near_floor_is_handled_mprotect() {
    if !as_child("mprotect", GuardMode::Mprotect, false) {
        check("signal_near_floor_is_handled_mprotect", "mprotect");
    }
}

/// Control: the same placement with a handler installed with `SA_ONSTACK`,
/// whose frame goes on the alternate signal stack: handled, no growth.
#[test]
fn onstack_signal_near_floor_is_handled_markers() {
    if !as_child("onstack-markers", GuardMode::Markers, true) {
        check(
            "onstack_signal_near_floor_is_handled_markers",
            "onstack-markers",
        );
    }
}

/// As [`onstack_signal_near_floor_is_handled_markers`], with the `mprotect`
/// fallback.
#[test]
fn onstack_signal_near_floor_is_handled_mprotect() {
    if !as_child("onstack-mprotect", GuardMode::Mprotect, true) {
        check(
            "onstack_signal_near_floor_is_handled_mprotect",
            "onstack-mprotect",
        );
    }
}
