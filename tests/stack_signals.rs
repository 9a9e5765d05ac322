//! Signals delivered while a coroutine sits just above its committed floor.
//!
//! A handler installed without `SA_ONSTACK` makes the kernel push its signal
//! frame (about 3.4 KiB on this AVX-512 machine: the 128-byte red zone, the
//! XSAVE area and `rt_sigframe`) on the interrupted stack, below the stack
//! pointer. On a coroutine stack that memory may be ungrown (guard markers
//! or `PROT_NONE`), and the kernel's write there does not raise a growth
//! fault: `setup_rt_frame` fails, the kernel drops the signal it was
//! delivering and forces a SIGSEGV with `si_code == SI_KERNEL` and
//! `si_addr == 0` instead (`force_sigsegv`). greenstack does not rewrite
//! other code's handlers to avoid that (see the `fault` module's "Other
//! signals"), so these tests pin down what a program can rely on:
//!
//! - with `SA_ONSTACK` (the controls), the handler runs on the alternate
//!   signal stack however close the coroutine is to its floor;
//! - without it, installed after the runtime started, the handler runs on
//!   the coroutine stack when its frame fits above the floor (and its own
//!   frames grow the stack as usual); when the frame does not fit, the
//!   signal is lost, and the stack handler grows the slot, says so on
//!   stderr, leaves the handler's action as it was, and the coroutine and
//!   later growth carry on;
//! - the smallest gap at which the frame fits is measured, and must lie
//!   within the bound the stack handler uses to recognise a lost frame.
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
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::OnceLock;

use corosensei::{Coroutine, CoroutineResult};
use greenstack::stack::{testing, GuardMode, StackArena};

/// Environment variable that turns a re-executed test into its child half;
/// its value names the scenario.
const CHILD_ENV: &str = "GREENSTACK_STACK_SIGNALS_CHILD";

/// Where the stack pointer is put, in bytes above the committed floor, when
/// the signal is sent (rounded down to 16 bytes for the call): well inside
/// the frame's size, so a frame pushed there cannot fit.
const GAP: usize = 384;

/// A gap at which the frame fits, with room to spare (bytes).
const ROOMY_GAP: usize = 8 * 1024;

/// Bytes of stack the user's handler uses when told to go deep: more than
/// the gap, so its frames take growth faults below the floor.
const HANDLER_STACK: usize = 48 * 1024;

/// Whether the user's SIGUSR1 handler uses [`HANDLER_STACK`] bytes.
static HANDLER_DEEP: AtomicBool = AtomicBool::new(false);

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
    if HANDLER_DEEP.load(Ordering::SeqCst) {
        std::hint::black_box(use_stack(HANDLER_STACK / 4096));
    }
    USR1_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// Uses about `pages` × 4 KiB of stack, touching every page.
#[inline(never)]
fn use_stack(pages: usize) -> usize {
    let mut buf = [pages as u8; 4000];
    std::hint::black_box(&mut buf);
    if pages == 0 {
        return buf[7] as usize;
    }
    use_stack(pages - 1) + buf[pages % 4000] as usize
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

/// Runs in the coroutine: puts the stack pointer `gap` bytes above the
/// committed floor, sends this thread SIGUSR1 from there, and returns the
/// floor it started from and whether SIGUSR1 was left pending.
#[inline(never)]
fn send_near_floor(gap: usize) -> (usize, bool) {
    let here = sp();
    let mut floor = testing::floor_of(here).expect("the coroutine runs on an arena slot");
    while here < floor + gap + 4096 {
        // Too close to place the stack pointer `gap` above the floor: grow
        // first (the floor moves down), then measure again.
        std::hint::black_box(use_stack(4));
        floor = testing::floor_of(here).expect("still on the slot");
    }
    let target = (floor + gap) & !15;
    // SAFETY: `target` is 16-byte aligned, at least 4 KiB below our own
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

/// Builds the arena for `mode`, or prints a skipped `RESULT` line and
/// returns `None` where the kernel lacks the mode.
fn arena_for(mode: GuardMode) -> Option<StackArena> {
    match StackArena::builder()
        .stack_size(256 * 1024)
        .guard_mode(mode)
        .build()
    {
        Ok(a) => Some(a),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            println!(
                "RESULT skipped=1 reason={}",
                e.to_string().replace(' ', "_")
            );
            None
        }
        Err(e) => panic!("building the arena: {e}"),
    }
}

/// The SIGUSR1 action installed now.
fn usr1_action() -> libc::sigaction {
    // SAFETY: reading an action into a zeroed struct.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut act),
            0
        );
        act
    }
}

/// The child half: the runtime's arena and thread set-up come first, then
/// the user's SIGUSR1 handler (with `SA_ONSTACK` or not), then the signal
/// from a coroutine `gap` bytes above its floor; prints one `RESULT` line.
fn child(mode: GuardMode, onstack: bool, gap_bytes: usize, deep: bool) {
    let Some(arena) = arena_for(mode) else {
        return;
    };
    let slot = arena.allocate().unwrap();
    greenstack::stack::prepare_thread().unwrap();
    // The arena installed the stack handler; put the observer in front.
    let prev = install(libc::SIGSEGV, observe_segv, libc::SA_ONSTACK);
    assert!(STACK_HANDLER.set(prev).is_ok());
    // The user's handler, installed after the runtime started.
    let flags = if onstack { libc::SA_ONSTACK } else { 0 };
    install(libc::SIGUSR1, on_usr1, flags);
    HANDLER_DEEP.store(deep, Ordering::SeqCst);

    let before = arena.stats();
    let mut co = Coroutine::with_stack(slot, move |_: &corosensei::Yielder<(), ()>, ()| {
        let (floor, pending) = send_near_floor(gap_bytes);
        (floor, pending, DONE)
    });
    let (floor, pending, done) = match co.resume(()) {
        CoroutineResult::Return(r) => r,
        CoroutineResult::Yield(()) => unreachable!("the body never yields"),
    };
    assert_eq!(done, DONE);
    let slot = co.into_stack();
    let after = arena.stats();
    let act = usr1_action();
    let action_kept = act.sa_sigaction == on_usr1 as *const () as usize
        && act.sa_flags & libc::SA_ONSTACK == flags;
    // Growth still works on the same stack, deeper than anything so far.
    let mut co = Coroutine::with_stack(slot, |_: &corosensei::Yielder<(), ()>, ()| {
        use_stack(24) as u32 + DONE
    });
    let deep_after = matches!(co.resume(()), CoroutineResult::Return(v) if v >= DONE);

    let usr1_sp = USR1_SP.load(Ordering::SeqCst);
    let mut line = format!(
        "RESULT mode={mode:?} onstack={} gap={gap_bytes} completed=1 usr1_runs={} usr1_sp_gap={} \
         usr1_on_altstack={} usr1_pending={} growth_faults={} bytes_grown={} committed={} \
         action_kept={} deep_after={} segv_count={}",
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
        co.into_stack().committed(),
        action_kept as u8,
        deep_after as u8,
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

/// What a child printed: its `RESULT` fields (empty if the scenario was
/// skipped) and its stderr.
struct ChildRun {
    fields: HashMap<String, String>,
    stderr: String,
}

/// Re-executes this binary for `test` with the child half selected by
/// `scenario`, checks that it lived, and returns its `RESULT` fields. libtest
/// prints the line after the test's name, so it is found anywhere in a line.
fn run_child(test: &str, scenario: &str) -> ChildRun {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .output()
        .expect("re-executing the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
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
        return ChildRun {
            fields: HashMap::new(),
            stderr,
        };
    }
    ChildRun { fields, stderr }
}

/// All fields, sorted, for failure messages.
fn summary(f: &HashMap<String, String>) -> String {
    let mut kv: Vec<_> = f.iter().map(|(k, v)| format!("{k}={v}")).collect();
    kv.sort();
    kv.join(" ")
}

/// Checks what every scenario must show: the coroutine finished, growth
/// works afterwards, the handler's action is as the user installed it, and
/// the signal (or the kernel's SIGSEGV in its place) interrupted the thread
/// within `gap` bytes above the floor, as meant.
fn check_common(f: &HashMap<String, String>, gap_bytes: usize) {
    let summary = summary(f);
    assert_eq!(
        f["completed"], "1",
        "the coroutine did not finish: {summary}"
    );
    assert_eq!(
        f["deep_after"], "1",
        "stack growth failed after the signal: {summary}"
    );
    assert_eq!(
        f["action_kept"], "1",
        "the SIGUSR1 action was changed by greenstack (handler or SA_ONSTACK flag): {summary}"
    );
    let hit = match (f["usr1_sp_gap"].as_str(), f.get("segv0_sp_gap")) {
        ("none", Some(g)) => g.parse::<isize>().ok(),
        (g, _) => g.parse::<isize>().ok(),
    };
    let hit = hit.unwrap_or_else(|| panic!("neither SIGUSR1 nor SIGSEGV arrived: {summary}"));
    assert!(
        (1..=gap_bytes as isize).contains(&hit),
        "set-up error: the signal did not arrive with the stack pointer just above the floor \
         (gap {hit}); {summary}"
    );
}

/// The parent half for a signal that must be handled.
fn check_handled(test: &str, scenario: &str, gap_bytes: usize, on_altstack: bool) {
    let run = run_child(test, scenario);
    let f = &run.fields;
    if f.is_empty() {
        return;
    }
    check_common(f, gap_bytes);
    let summary = summary(f);
    assert_eq!(
        f["usr1_runs"], "1",
        "SIGUSR1 was not handled: {summary}\nstderr:\n{}",
        run.stderr
    );
    assert_eq!(f["usr1_pending"], "0", "{summary}");
    assert_eq!(
        f["usr1_on_altstack"],
        if on_altstack { "1" } else { "0" },
        "{summary}"
    );
    assert!(
        !run.stderr.contains("a signal was lost"),
        "a handled signal was reported lost:\n{}",
        run.stderr
    );
}

/// The parent half for a frame that cannot fit: the signal is lost, said
/// so, and nothing else changes.
fn check_lost(test: &str, scenario: &str) {
    let run = run_child(test, scenario);
    let f = &run.fields;
    if f.is_empty() {
        return;
    }
    check_common(f, GAP);
    let summary = summary(f);
    assert_eq!(f["usr1_runs"], "0", "{summary}");
    assert_eq!(
        f.get("segv0_code").map(String::as_str),
        Some("128"),
        "expected the kernel's SIGSEGV (SI_KERNEL) for the frame it could not push: {summary}"
    );
    assert_eq!(f["segv0_addr"], "0x0", "{summary}");
    assert!(
        run.stderr.contains("greenstack: a signal was lost"),
        "the lost signal was not reported:\n{}",
        run.stderr
    );
}

/// Dispatches to the child half when this process is a re-executed child,
/// and returns whether it was.
fn as_child(scenario: &str, f: impl FnOnce()) -> bool {
    match std::env::var(CHILD_ENV) {
        Ok(s) if s == scenario => {
            f();
            true
        }
        _ => false,
    }
}

/// A handler installed after the runtime started, without `SA_ONSTACK`,
/// for a signal that arrives with the coroutine's stack pointer just above
/// its floor: the frame cannot fit, so the kernel drops the signal; the
/// stack handler grows the slot and reports it, the coroutine finishes,
/// later growth works, and the user's action is left exactly as installed
/// (before the fix the stack handler added `SA_ONSTACK` to it from inside
/// the signal handler): guard markers.
#[test]
fn late_handler_signal_near_floor_is_lost_reported_and_survived_markers() {
    let name = "late_handler_signal_near_floor_is_lost_reported_and_survived_markers";
    if !as_child("lost-markers", || {
        child(GuardMode::Markers, false, GAP, false)
    }) {
        check_lost(name, "lost-markers");
    }
}

/// As [`late_handler_signal_near_floor_is_lost_reported_and_survived_markers`],
/// with the `mprotect` fallback (ungrown stack is `PROT_NONE`).
#[test]
fn late_handler_signal_near_floor_is_lost_reported_and_survived_mprotect() {
    let name = "late_handler_signal_near_floor_is_lost_reported_and_survived_mprotect";
    if !as_child("lost-mprotect", || {
        child(GuardMode::Mprotect, false, GAP, false)
    }) {
        check_lost(name, "lost-mprotect");
    }
}

/// A handler installed after the runtime started, without `SA_ONSTACK`,
/// interrupting a coroutine whose committed stack holds the frame: it runs
/// on the coroutine stack, and its own 48 KiB of frames grow that stack
/// (growth faults inside a signal handler): guard markers.
#[test]
fn late_handler_runs_on_coroutine_stack_and_grows_it_markers() {
    let name = "late_handler_runs_on_coroutine_stack_and_grows_it_markers";
    if !as_child("roomy-markers", || {
        child(GuardMode::Markers, false, ROOMY_GAP, true)
    }) {
        check_handled(name, "roomy-markers", ROOMY_GAP, false);
    }
}

/// As [`late_handler_runs_on_coroutine_stack_and_grows_it_markers`], with
/// the `mprotect` fallback.
#[test]
fn late_handler_runs_on_coroutine_stack_and_grows_it_mprotect() {
    let name = "late_handler_runs_on_coroutine_stack_and_grows_it_mprotect";
    if !as_child("roomy-mprotect", || {
        child(GuardMode::Mprotect, false, ROOMY_GAP, true)
    }) {
        check_handled(name, "roomy-mprotect", ROOMY_GAP, false);
    }
}

/// Control: the same placement with a handler installed with `SA_ONSTACK`,
/// whose frame goes on the alternate signal stack: handled, no growth.
#[test]
fn onstack_signal_near_floor_is_handled_markers() {
    let name = "onstack_signal_near_floor_is_handled_markers";
    if !as_child("onstack-markers", || {
        child(GuardMode::Markers, true, GAP, false)
    }) {
        check_handled(name, "onstack-markers", GAP, true);
    }
}

/// As [`onstack_signal_near_floor_is_handled_markers`], with the `mprotect`
/// fallback.
#[test]
fn onstack_signal_near_floor_is_handled_mprotect() {
    let name = "onstack_signal_near_floor_is_handled_mprotect";
    if !as_child("onstack-mprotect", || {
        child(GuardMode::Mprotect, true, GAP, false)
    }) {
        check_handled(name, "onstack-mprotect", GAP, true);
    }
}

/// The child half of the measurement: for gaps from [`GAP`] up in 64-byte
/// steps, each on a fresh slot (below [`GAP`], `pthread_kill`'s own frames
/// cross the floor and grow the stack before the signal is sent), sends SIGUSR1 (no `SA_ONSTACK`) from that
/// far above the floor and records whether it was delivered. Prints the
/// smallest delivered gap and whether every larger gap was delivered too.
fn measure_child(mode: GuardMode) {
    let Some(arena) = arena_for(mode) else {
        return;
    };
    greenstack::stack::prepare_thread().unwrap();
    install(libc::SIGUSR1, on_usr1, 0);
    let mut first = None;
    let mut monotone = true;
    let mut slots = Vec::new();
    for gap_bytes in (GAP / 64..=128).map(|k| k * 64) {
        let runs = USR1_RUNS.load(Ordering::SeqCst);
        let mut co = Coroutine::with_stack(
            arena.allocate().unwrap(),
            move |_: &corosensei::Yielder<(), ()>, ()| send_near_floor(gap_bytes).0,
        );
        assert!(matches!(co.resume(()), CoroutineResult::Return(_)));
        // Keep the slot: a pooled slot would come back grown.
        slots.push(co.into_stack());
        let delivered = USR1_RUNS.load(Ordering::SeqCst) > runs;
        match (delivered, first) {
            (true, None) => first = Some(gap_bytes),
            (false, Some(_)) => monotone = false,
            _ => {}
        }
    }
    // SAFETY: getauxval only reads the auxiliary vector.
    let minsigstksz = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    println!(
        "RESULT mode={mode:?} first_delivered_gap={} monotone={} at_minsigstksz={minsigstksz}",
        first.map_or("none".to_string(), |g| g.to_string()),
        monotone as u8,
    );
}

/// Measures the smallest gap above the committed floor at which a signal
/// whose handler lacks `SA_ONSTACK` is still delivered on a coroutine stack
/// (both guard modes), prints it, and checks that the stack handler's bound
/// for recognising a lost frame covers it: a frame lost at a gap the bound
/// excluded would be chained as a foreign fault and kill the process. The
/// bound must match `FRAME_NEED` in `runtime/src/stack/fault.rs`: red zone
/// (128) + `AT_MINSIGSTKSZ` + 64.
#[test]
fn frame_fits_above_the_floor_from_a_measured_gap() {
    let name = "frame_fits_above_the_floor_from_a_measured_gap";
    if as_child("measure-markers", || measure_child(GuardMode::Markers))
        || as_child("measure-mprotect", || measure_child(GuardMode::Mprotect))
    {
        return;
    }
    for scenario in ["measure-markers", "measure-mprotect"] {
        let run = run_child(name, scenario);
        let f = &run.fields;
        if f.is_empty() {
            continue;
        }
        let summary = summary(f);
        eprintln!("{scenario}: {summary}");
        assert_eq!(f["monotone"], "1", "{summary}");
        let first: usize = f["first_delivered_gap"]
            .parse()
            .unwrap_or_else(|_| panic!("no gap up to 8 KiB delivered the signal: {summary}"));
        let minsig: usize = f["at_minsigstksz"].parse().unwrap();
        let bound = 128 + if minsig == 0 { 8192 } else { minsig } + 64;
        assert!(
            first <= bound,
            "a frame is lost up to {first} bytes above the floor, beyond the handler's bound of \
             {bound}: {summary}"
        );
    }
}
