//! What the stack handler does with a SIGSEGV that is not a growth fault:
//! one sent with `raise`/`kill`/`sigqueue`, and one the hardware raised
//! that only looks like a lost signal frame. It hands each to the action
//! installed before it, as the kernel would have delivered it there, and
//! never leaves itself uninstalled.
//!
//! - A sent SIGSEGV (no fault) with std's handler, a user's handler or
//!   `SIG_IGN` before ours: the process lives and stacks still grow
//!   (before the fix, the chain left `SIG_DFL` installed and the next
//!   growth fault killed the process, exit 139). With `SIG_DFL` before
//!   ours, the process dies by SIGSEGV right away, as the sender asked.
//! - The previous handler runs with its `sa_mask` blocked, with SIGSEGV
//!   unblocked if it has `SA_NODEFER`, and only once if it has
//!   `SA_RESETHAND` (later ones get the default action).
//! - A general-protection fault (SIGSEGV `SI_KERNEL`, address 0) with the
//!   stack pointer just above a coroutine's floor reaches the previous
//!   handler, or kills the process by SIGSEGV, without being taken for a
//!   lost signal frame.
//! - A signal that carries a fault code but does not come again (sent to
//!   the process itself; a lost frame carrying the stale trap number of a
//!   recovered #GP) leaves the stack handler installed, whatever the
//!   previous action did (before the fix: exit by SIGSEGV at the next
//!   growth fault).
//! - A sent SIGSEGV whose sender ids read as an address in a live slot is
//!   chained, not taken for a growth fault.
//! - A previous handler without `SA_SIGINFO` gets the siginfo and context.
//!
//! Each scenario runs in a child process (this binary re-executed for one
//! test); the parent checks how it ended and what it printed.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corosensei::{Coroutine, CoroutineResult};
use greenstack::stack::{testing, StackArena};

/// Environment variable that turns a re-executed test into its child half;
/// its value names the scenario.
const CHILD_ENV: &str = "GREENSTACK_STACK_CHAIN_CHILD";

/// Stack the growth check recurses through (bytes): many growth faults.
const DEEP: usize = 512 * 1024;

/// Exit code of the child whose handler saw the general-protection fault.
const GP_EXIT: i32 = 42;

/// Runs of the user's SIGSEGV handler.
static USER_RUNS: AtomicUsize = AtomicUsize::new(0);
/// Whether SIGUSR2 was blocked during the last run (-1: no run).
static USER_SAW_USR2_BLOCKED: AtomicIsize = AtomicIsize::new(-1);
/// Whether SIGSEGV was blocked during the last run (-1: no run).
static USER_SAW_SEGV_BLOCKED: AtomicIsize = AtomicIsize::new(-1);
/// `si_code` of the last SIGSEGV the user's handler saw.
static USER_SAW_CODE: AtomicIsize = AtomicIsize::new(0);

/// Re-runs this binary's test `name` as the child `scenario`.
fn run_child(name: &str, scenario: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .output()
        .expect("re-executing the test binary")
}

/// As [`run_child`], but a child still running after 60 s (a hang guard,
/// not a timing assertion) is killed and the test fails.
fn run_child_bounded(name: &str, scenario: &str) -> Output {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-executing the test binary");
    let start = Instant::now();
    while child.try_wait().expect("waiting for the child").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "hang guard: the child did not end within 60 s\nstdout (start):\n{}",
                String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(2000)])
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// The scenario this process plays, if it is a child.
fn child_scenario() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Whether `sig` is blocked on this thread now.
fn blocked(sig: libc::c_int) -> bool {
    // SAFETY: pthread_sigmask with a null new set only reads the mask into
    // the zeroed set; sigismember reads it. Both are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        libc::sigismember(&set, sig) == 1
    }
}

/// The user's SIGSEGV handler: records what it saw. Sent signals need
/// nothing more; for a general-protection fault (which would repeat on
/// return) it ends the process with [`GP_EXIT`].
extern "C" fn user_handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    USER_SAW_USR2_BLOCKED.store(blocked(libc::SIGUSR2) as isize, Ordering::SeqCst);
    USER_SAW_SEGV_BLOCKED.store(blocked(libc::SIGSEGV) as isize, Ordering::SeqCst);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    USER_SAW_CODE.store(code as isize, Ordering::SeqCst);
    USER_RUNS.fetch_add(1, Ordering::SeqCst);
    if code == libc::SI_KERNEL {
        let msg = b"user handler: SI_KERNEL\n";
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            libc::write(1, msg.as_ptr().cast(), msg.len());
            libc::_exit(GP_EXIT);
        }
    }
}

/// A crash reporter's SIGSEGV handler: restores the default action and
/// raises the signal again, to die by it.
extern "C" fn reraise_handler(sig: libc::c_int) {
    let msg = b"reporter: raising again\n";
    // SAFETY: write, signal and raise are async-signal-safe.
    unsafe {
        libc::write(1, msg.as_ptr().cast(), msg.len());
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Sets the SIGSEGV action before the runtime: the user's handler (with
/// `flags` and `mask`, plus `SA_SIGINFO`), or `raw` (`SIG_DFL`, `SIG_IGN`
/// or another handler) with `flags` and `mask`.
fn set_segv(raw: Option<usize>, flags: libc::c_int, mask: &[libc::c_int]) {
    // SAFETY: a zeroed, then filled, sigaction; the handler has the
    // SA_SIGINFO signature.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        libc::sigemptyset(&mut sa.sa_mask);
        for &s in mask {
            libc::sigaddset(&mut sa.sa_mask, s);
        }
        match raw {
            Some(h) => {
                sa.sa_sigaction = h;
                sa.sa_flags = flags;
            }
            None => {
                sa.sa_sigaction = user_handler as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | flags;
            }
        }
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
    }
}

/// The SIGSEGV handler installed now.
fn segv_handler() -> usize {
    // SAFETY: reading the action into a zeroed struct.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut act),
            0
        );
        act.sa_sigaction
    }
}

/// Sends SIGSEGV to the process with `kill` (SI_USER; any thread may take
/// it) and waits until the user's handler has counted it.
fn kill_and_wait() {
    let runs = USER_RUNS.load(Ordering::SeqCst);
    // SAFETY: kill to our own process.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGSEGV) }, 0);
    let start = Instant::now();
    while USER_RUNS.load(Ordering::SeqCst) == runs {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "hang guard: the sent SIGSEGV never reached the user's handler"
        );
        std::thread::yield_now();
    }
}

/// Sends SIGSEGV to this thread with `sigqueue` semantics (SI_QUEUE).
fn sigqueue_self() {
    // SAFETY: a zeroed siginfo filled as rt_tgsigqueueinfo requires for a
    // queued signal to our own thread.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        info.si_signo = libc::SIGSEGV;
        info.si_code = libc::SI_QUEUE;
        let rc = libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            libc::gettid(),
            libc::SIGSEGV,
            &mut info as *mut libc::siginfo_t,
        );
        assert_eq!(rc, 0, "rt_tgsigqueueinfo failed");
    }
}

/// Uses about `pages` × 4 KiB of stack, touching every page.
#[inline(never)]
fn use_stack(pages: usize) -> usize {
    let mut buf = [pages as u8; 4000];
    black_box(&mut buf);
    if pages == 0 {
        return buf[7] as usize;
    }
    use_stack(pages - 1) + buf[pages % 4000] as usize
}

/// Runs a coroutine that recurses through [`DEEP`] bytes of stack and
/// checks that its stack grew.
fn grow_deep(arena: &StackArena) {
    greenstack::stack::prepare_thread().unwrap();
    let before = arena.stats().growth_faults;
    let mut co = Coroutine::with_stack(
        arena.allocate().unwrap(),
        |_: &corosensei::Yielder<(), ()>, ()| use_stack(DEEP / 4096),
    );
    assert!(matches!(co.resume(()), CoroutineResult::Return(_)));
    let grown = arena.stats().growth_faults - before;
    assert!(grown > 0, "the coroutine did not grow its stack");
    println!("grew: {grown} growth faults");
}

/// A 1 MiB-stack arena: installs the stack handler on top of the action set
/// so far.
fn arena() -> StackArena {
    StackArena::builder().stack_size(1 << 20).build().unwrap()
}

/// Child: a sent SIGSEGV with std's handler before ours (`raise`, then
/// `sigqueue`), then deep growth.
fn std_child() {
    let arena = arena();
    let ours = segv_handler();
    // SAFETY: raise to our own thread; the handler chain treats it.
    assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
    sigqueue_self();
    assert_eq!(
        segv_handler(),
        ours,
        "the stack handler is no longer installed"
    );
    grow_deep(&arena);
}

/// Child: as [`std_child`] with a user's handler before ours, sent with
/// `kill`, `raise` and `sigqueue`.
fn user_child() {
    set_segv(None, 0, &[]);
    let arena = arena();
    kill_and_wait();
    // SAFETY: as in `std_child`.
    assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
    sigqueue_self();
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), 3);
    grow_deep(&arena);
}

/// Child: `SIG_IGN` before ours; a sent SIGSEGV is ignored.
fn ign_child() {
    set_segv(Some(libc::SIG_IGN), 0, &[]);
    let arena = arena();
    // SAFETY: as in `std_child`.
    assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
    sigqueue_self();
    grow_deep(&arena);
}

/// Child: `SIG_DFL` before ours; a sent SIGSEGV must end the process.
fn dfl_child() {
    set_segv(Some(libc::SIG_DFL), 0, &[]);
    let arena = arena();
    // SAFETY: as in `std_child`.
    unsafe { libc::raise(libc::SIGSEGV) };
    println!("survived the sent SIGSEGV");
    grow_deep(&arena);
}

/// Checks that the child lived, grew its stack after the sent signals, and
/// printed `expect`.
fn assert_lived(out: &Output, expect: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child died ({:?}): a sent SIGSEGV broke stack growth\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("grew: "), "stdout:\n{stdout}");
    assert!(stdout.contains(expect), "stdout:\n{stdout}");
}

/// A SIGSEGV sent with `raise` and `sigqueue`, with std's overflow handler
/// before ours: std's handler runs (it resets the action to `SIG_DFL`,
/// expecting a fault to repeat), ours is put back, and a coroutine then
/// grows its stack through 512 KiB.
#[test]
fn sent_segv_with_std_handler_keeps_growth_working() {
    let name = "sent_segv_with_std_handler_keeps_growth_working";
    match child_scenario().as_deref() {
        Some("std") => return std_child(),
        Some(_) => return,
        None => {}
    }
    assert_lived(&run_child(name, "std"), "grew: ");
}

/// As [`sent_segv_with_std_handler_keeps_growth_working`], with a user's
/// handler before ours, and `kill` (SI_USER) too: the handler sees each one.
#[test]
fn sent_segv_with_user_handler_reaches_it_and_keeps_growth_working() {
    let name = "sent_segv_with_user_handler_reaches_it_and_keeps_growth_working";
    match child_scenario().as_deref() {
        Some("user") => return user_child(),
        Some(_) => return,
        None => {}
    }
    assert_lived(&run_child(name, "user"), "grew: ");
}

/// A sent SIGSEGV with `SIG_IGN` before ours is ignored, and stacks still
/// grow.
#[test]
fn sent_segv_with_sig_ign_is_ignored_and_growth_keeps_working() {
    let name = "sent_segv_with_sig_ign_is_ignored_and_growth_keeps_working";
    match child_scenario().as_deref() {
        Some("ign") => return ign_child(),
        Some(_) => return,
        None => {}
    }
    assert_lived(&run_child(name, "ign"), "grew: ");
}

/// A sent SIGSEGV with `SIG_DFL` before ours kills the process by SIGSEGV
/// at once, as it would without greenstack (before the fix the process
/// lived on with `SIG_DFL` installed and died at the next growth fault).
#[test]
fn sent_segv_with_sig_dfl_kills_by_sigsegv_at_once() {
    let name = "sent_segv_with_sig_dfl_kills_by_sigsegv_at_once";
    match child_scenario().as_deref() {
        Some("dfl") => return dfl_child(),
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "dfl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}\nstdout:\n{stdout}",
        out.status
    );
    assert!(
        !stdout.contains("survived"),
        "the sent SIGSEGV did not end the process; it died later:\n{stdout}"
    );
}

/// The previous handler runs with its `sa_mask` (SIGUSR2) blocked and, as
/// it lacks `SA_NODEFER`, SIGSEGV blocked; neither stays blocked after.
#[test]
fn chained_handler_runs_with_its_sa_mask_blocked() {
    let name = "chained_handler_runs_with_its_sa_mask_blocked";
    match child_scenario().as_deref() {
        Some("mask") => {
            set_segv(None, 0, &[libc::SIGUSR2]);
            let _arena = arena();
            // SAFETY: as in `std_child`.
            assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
            println!(
                "RESULT runs={} usr2_blocked={} segv_blocked={} usr2_blocked_after={}",
                USER_RUNS.load(Ordering::SeqCst),
                USER_SAW_USR2_BLOCKED.load(Ordering::SeqCst),
                USER_SAW_SEGV_BLOCKED.load(Ordering::SeqCst),
                blocked(libc::SIGUSR2) as u8,
            );
            return;
        }
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "mask");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}", out.status);
    assert!(
        stdout.contains("RESULT runs=1 usr2_blocked=1 segv_blocked=1 usr2_blocked_after=0"),
        "the handler did not run with its sa_mask:\n{stdout}"
    );
}

/// A previous handler with `SA_NODEFER` runs with SIGSEGV unblocked.
#[test]
fn chained_handler_with_sa_nodefer_runs_with_signal_unblocked() {
    let name = "chained_handler_with_sa_nodefer_runs_with_signal_unblocked";
    match child_scenario().as_deref() {
        Some("nodefer") => {
            set_segv(None, libc::SA_NODEFER, &[]);
            let _arena = arena();
            // SAFETY: as in `std_child`.
            assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
            println!(
                "RESULT runs={} usr2_blocked={} segv_blocked={}",
                USER_RUNS.load(Ordering::SeqCst),
                USER_SAW_USR2_BLOCKED.load(Ordering::SeqCst),
                USER_SAW_SEGV_BLOCKED.load(Ordering::SeqCst),
            );
            return;
        }
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "nodefer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}", out.status);
    assert!(
        stdout.contains("RESULT runs=1 usr2_blocked=0 segv_blocked=0"),
        "the SA_NODEFER handler ran with SIGSEGV blocked:\n{stdout}"
    );
}

/// A previous handler with `SA_RESETHAND` is called for the first chained
/// SIGSEGV only; stacks still grow after it; the second gets the default
/// action and kills the process by SIGSEGV.
#[test]
fn chained_handler_with_sa_resethand_runs_once_then_default() {
    let name = "chained_handler_with_sa_resethand_runs_once_then_default";
    match child_scenario().as_deref() {
        Some("resethand") => {
            set_segv(None, libc::SA_RESETHAND, &[]);
            let arena = arena();
            // SAFETY: as in `std_child`.
            assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
            println!("first survived runs={}", USER_RUNS.load(Ordering::SeqCst));
            grow_deep(&arena);
            // SAFETY: as above.
            unsafe { libc::raise(libc::SIGSEGV) };
            println!("second survived runs={}", USER_RUNS.load(Ordering::SeqCst));
            return;
        }
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "resethand");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("first survived runs=1"), "{stdout}");
    assert!(stdout.contains("grew: "), "{stdout}");
    assert!(
        !stdout.contains("second survived"),
        "the SA_RESETHAND handler ran twice:\n{stdout}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}\n{stdout}",
        out.status
    );
}

/// Loads from a non-canonical address with the stack pointer at `sp`: a
/// general-protection fault (SIGSEGV, `SI_KERNEL`, address 0). Never
/// returns: the test's handlers end the process.
///
/// # Safety
///
/// `sp` must be 16-byte aligned and at least 128 bytes below the caller's
/// stack pointer; the fault must end the process.
#[inline(never)]
unsafe fn gp_fault_at(sp: usize) -> ! {
    // SAFETY: per the contract; the load faults before anything uses the
    // moved stack pointer, and nothing returns here.
    unsafe {
        std::arch::asm!(
            "mov rsp, {sp}",
            "mov rax, 0x8000000000000000",
            "mov rax, qword ptr [rax]",
            "ud2",
            sp = in(reg) sp,
            options(noreturn),
        )
    }
}

/// Child: a general-protection fault from a coroutine whose stack pointer
/// is 384 bytes above its committed floor, with `prev` set before ours.
fn gp_child(user: bool) {
    if user {
        set_segv(None, libc::SA_ONSTACK, &[]);
    } else {
        set_segv(Some(libc::SIG_DFL), 0, &[]);
    }
    let arena = arena();
    greenstack::stack::prepare_thread().unwrap();
    let mut co = Coroutine::with_stack(
        arena.allocate().unwrap(),
        |_: &corosensei::Yielder<(), ()>, ()| {
            let here = black_box(0u8);
            let here = &here as *const u8 as usize;
            let floor = testing::floor_of(here).expect("on an arena slot");
            assert!(here > floor + 4096, "no room to place the stack pointer");
            // SAFETY: aligned, far below our frame, in our slot; the fault
            // ends the process.
            unsafe { gp_fault_at((floor + 384) & !15) }
        },
    );
    let _: () = match co.resume(()) {
        CoroutineResult::Return(r) => r,
        CoroutineResult::Yield(()) => unreachable!(),
    };
}

/// The parent half of the general-protection tests: no lost-signal report,
/// no growth claimed.
fn assert_not_taken_for_lost_signal(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("a signal was lost"),
        "a general-protection fault was taken for a lost signal frame:\n{stderr}"
    );
}

/// A general-protection fault near a coroutine's floor reaches the user's
/// handler installed before the runtime, on its first occurrence.
#[test]
fn gp_fault_near_floor_reaches_previous_handler() {
    let name = "gp_fault_near_floor_reaches_previous_handler";
    match child_scenario().as_deref() {
        Some("gp-user") => return gp_child(true),
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "gp-user");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(GP_EXIT),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("user handler: SI_KERNEL"), "{stdout}");
    assert_not_taken_for_lost_signal(&out);
}

/// With `SIG_DFL` before ours, the same fault kills the process by SIGSEGV.
#[test]
fn gp_fault_near_floor_kills_by_sigsegv() {
    let name = "gp_fault_near_floor_kills_by_sigsegv";
    match child_scenario().as_deref() {
        Some("gp-dfl") => return gp_child(false),
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "gp-dfl");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_not_taken_for_lost_signal(&out);
}

/// A crash reporter before ours that, for a sent SIGSEGV, restores the
/// default action and raises the signal again: the process dies by SIGSEGV
/// (the stack handler must not put itself back and hand the re-raised
/// signal to the reporter again, for ever).
#[test]
fn sent_segv_reraised_by_previous_handler_kills_by_sigsegv() {
    let name = "sent_segv_reraised_by_previous_handler_kills_by_sigsegv";
    match child_scenario().as_deref() {
        Some("reraise") => {
            set_segv(Some(reraise_handler as *const () as usize), 0, &[]);
            let _arena = arena();
            // SAFETY: as in `std_child`.
            unsafe { libc::raise(libc::SIGSEGV) };
            println!("survived the re-raised SIGSEGV");
            return;
        }
        Some(_) => return,
        None => {}
    }
    let out = run_child_bounded(name, "reraise");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}\nstdout:\n{stdout}",
        out.status
    );
    assert_eq!(
        stdout.matches("reporter: raising again").count(),
        1,
        "{stdout}"
    );
    assert!(!stdout.contains("survived"), "{stdout}");
}

/// The SIGSEGV or SIGBUS handler installed now.
fn handler_of(sig: libc::c_int) -> usize {
    // SAFETY: reading the action into a zeroed struct.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut act), 0);
        act.sa_sigaction
    }
}

/// Sends `sig` to this thread with `rt_tgsigqueueinfo` (allowed for our
/// own process with any code), carrying `code` and `word` as the first
/// word of the union: `si_addr` for a fault code, `si_pid | si_uid << 32`
/// for a sent one.
fn queue_self(sig: libc::c_int, code: libc::c_int, word: usize) {
    // SAFETY: a zeroed siginfo, its union's first word (offset 16 on
    // x86-64) written through a pointer into it; rt_tgsigqueueinfo to our
    // own thread.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        info.si_signo = sig;
        info.si_code = code;
        let p = (&mut info as *mut libc::siginfo_t).cast::<u8>().add(16);
        p.cast::<usize>().write_unaligned(word);
        let rc = libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            libc::gettid(),
            sig,
            &mut info as *mut libc::siginfo_t,
        );
        assert_eq!(rc, 0, "rt_tgsigqueueinfo failed");
    }
}

/// `SEGV_MAPERR`, the code of a fault on an unmapped address.
const SEGV_MAPERR: libc::c_int = 1;
/// `BUS_MCEERR_AO`: an asynchronous machine-check report (the memory is
/// not being accessed; nothing repeats).
const BUS_MCEERR_AO: libc::c_int = 5;

/// Child: SIGSEGV `SEGV_MAPERR` and SIGBUS `BUS_MCEERR_AO` sent to this
/// thread (no fault behind them, nothing repeats), with std's handler
/// (`dfl == false`) or `SIG_DFL` before ours; both actions must stay ours
/// and stacks must still grow.
fn fault_code_child(dfl: bool) {
    if dfl {
        set_segv(Some(libc::SIG_DFL), 0, &[]);
    }
    let arena = arena();
    let (segv, bus) = (handler_of(libc::SIGSEGV), handler_of(libc::SIGBUS));
    queue_self(libc::SIGSEGV, SEGV_MAPERR, 0x10);
    queue_self(libc::SIGBUS, BUS_MCEERR_AO, 0x10);
    println!(
        "RESULT segv_ours={} bus_ours={}",
        (handler_of(libc::SIGSEGV) == segv) as u8,
        (handler_of(libc::SIGBUS) == bus) as u8
    );
    grow_deep(&arena);
}

/// A SIGSEGV or SIGBUS carrying a fault code that does not come again (here
/// sent to the process itself, which the kernel allows with any code; an
/// asynchronous `BUS_MCEERR_AO` or a page another thread fixed before the
/// retry are the same case) leaves the stack handler installed, with std's
/// handler before ours. Before the fix, std's handler reset the action to
/// `SIG_DFL`, the chain took the fault code to mean "repeats" and left it
/// so, and the next growth fault killed the process (exit 139).
#[test]
fn non_repeating_fault_code_with_std_handler_keeps_growth_working() {
    let name = "non_repeating_fault_code_with_std_handler_keeps_growth_working";
    match child_scenario().as_deref() {
        Some("code-std") => return fault_code_child(false),
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "code-std");
    assert_lived(&out, "RESULT segv_ours=1 bus_ours=1");
}

/// As [`non_repeating_fault_code_with_std_handler_keeps_growth_working`],
/// with `SIG_DFL` before ours (before the fix the chain installed
/// `SIG_DFL` itself, expecting a repeat).
#[test]
fn non_repeating_fault_code_with_sig_dfl_keeps_growth_working() {
    let name = "non_repeating_fault_code_with_sig_dfl_keeps_growth_working";
    match child_scenario().as_deref() {
        Some("code-dfl") => return fault_code_child(true),
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "code-dfl");
    assert_lived(&out, "RESULT segv_ours=1 bus_ours=1");
}

/// General-protection faults the std-like handler below recovered from.
static GP_RECOVERED: AtomicUsize = AtomicUsize::new(0);
/// SIGSEGVs it passed on by resetting the action to `SIG_DFL`, as std's
/// handler does.
static RESETS: AtomicUsize = AtomicUsize::new(0);

/// A handler before ours that recovers from its own general-protection
/// fault (the load [`recoverable_gp`] makes: skips the 3-byte instruction)
/// and treats every other SIGSEGV as std's does: resets the action to
/// `SIG_DFL` and returns.
extern "C" fn gp_recovering_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel's siginfo and ucontext for an SA_SIGINFO handler;
    // the program counter of a #GP points at the faulting instruction,
    // readable code; signal is async-signal-safe.
    unsafe {
        let gregs = &mut (*(ctx as *mut libc::ucontext_t)).uc_mcontext.gregs;
        let pc = gregs[libc::REG_RIP as usize] as usize;
        let at_gp_load = std::slice::from_raw_parts(pc as *const u8, 3) == [0x48, 0x8b, 0x00];
        if (*info).si_code == libc::SI_KERNEL && at_gp_load && GP_ARMED.load(Ordering::SeqCst) {
            GP_ARMED.store(false, Ordering::SeqCst);
            gregs[libc::REG_RIP as usize] += 3;
            GP_RECOVERED.fetch_add(1, Ordering::SeqCst);
            return;
        }
        RESETS.fetch_add(1, Ordering::SeqCst);
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
    }
}

/// Set just before [`recoverable_gp`]: the handler recovers once.
static GP_ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Loads from a non-canonical address: a general-protection fault, which
/// [`gp_recovering_handler`] skips.
#[inline(never)]
fn recoverable_gp() {
    GP_ARMED.store(true, Ordering::SeqCst);
    // SAFETY: the load faults and the handler skips it; rax is clobbered.
    unsafe {
        std::arch::asm!(
            "mov rax, 0x8000000000000000",
            "mov rax, qword ptr [rax]",
            out("rax") _,
        )
    }
}

/// Sends SIGUSR1 to this thread with the `tgkill` system call (no stack
/// used) while the stack pointer is `sp`.
///
/// # Safety
///
/// `sp` must be 16-byte aligned, at least 128 bytes (the red zone) below
/// the caller's stack pointer, and in the caller's stack.
#[inline(never)]
unsafe fn tgkill_usr1_at(sp: usize) {
    // SAFETY: per the contract; `syscall` touches no stack, r12 keeps the
    // old stack pointer, rcx and r11 are clobbered by the instruction.
    unsafe {
        std::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {sp}",
            "syscall",
            "mov rsp, r12",
            sp = in(reg) sp,
            inlateout("rax") libc::SYS_tgkill => _,
            in("rdi") libc::getpid(),
            in("rsi") libc::gettid(),
            in("rdx") libc::SIGUSR1,
            out("r12") _,
            out("rcx") _,
            out("r11") _,
        )
    }
}

/// A SIGUSR1 handler without `SA_ONSTACK`: its frame cannot be written
/// just above a coroutine's floor.
extern "C" fn plain_usr1(_sig: libc::c_int) {}

/// Child: on a coroutine, a general-protection fault the previous handler
/// recovers from, then (no page fault in between, so the thread's trap
/// number stays 13) SIGUSR1 sent with the stack pointer 1 KiB above the
/// floor: its frame is lost and the kernel's SIGSEGV carries the stale
/// trap number of the #GP. Then deep growth.
fn stale_trapno_child() {
    set_segv(
        Some(gp_recovering_handler as *const () as usize),
        libc::SA_SIGINFO | libc::SA_ONSTACK,
        &[],
    );
    // SAFETY: signal() with a plain handler of the right signature.
    unsafe { libc::signal(libc::SIGUSR1, plain_usr1 as *const () as usize) };
    let arena = arena();
    let ours = handler_of(libc::SIGSEGV);
    greenstack::stack::prepare_thread().unwrap();
    let mut co = Coroutine::with_stack(
        arena.allocate().unwrap(),
        |_: &corosensei::Yielder<(), ()>, ()| {
            let here = {
                let local = black_box(0u8);
                &local as *const u8 as usize
            };
            // Make room below the frame first: growth faults set the trap
            // number to 14, so none may come after the #GP.
            let mut floor = testing::floor_of(here).expect("on an arena slot");
            while here < floor + 16 * 1024 {
                black_box(use_stack(4));
                floor = testing::floor_of(here).expect("on an arena slot");
            }
            recoverable_gp();
            // SAFETY: aligned, 1 KiB above the committed floor, far below
            // our frame, in our slot.
            unsafe { tgkill_usr1_at((floor + 1024) & !15) };
        },
    );
    assert!(matches!(co.resume(()), CoroutineResult::Return(())));
    println!(
        "RESULT gp_recovered={} resets={} ours={}",
        GP_RECOVERED.load(Ordering::SeqCst),
        RESETS.load(Ordering::SeqCst),
        (handler_of(libc::SIGSEGV) == ours) as u8
    );
    grow_deep(&arena);
}

/// A signal frame lost after a recovered general-protection fault carries
/// the #GP's stale trap number, so it is chained (not taken for a lost
/// frame): the previous handler resets the action as std's does, and the
/// stack handler must still be installed afterwards (before the fix, the
/// stale 13 meant "repeats", `SIG_DFL` stayed, and the next growth fault
/// killed the process, exit 139).
#[test]
fn lost_frame_with_stale_gp_trapno_keeps_growth_working() {
    let name = "lost_frame_with_stale_gp_trapno_keeps_growth_working";
    match child_scenario().as_deref() {
        Some("stale-trapno") => return stale_trapno_child(),
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "stale-trapno");
    assert_lived(&out, "RESULT gp_recovered=1 resets=1 ours=1");
}

/// Child: inside a coroutine, a SIGSEGV sent with `sigqueue` semantics
/// whose sender pid and uid, read as an address, fall 64 bytes below the
/// committed floor; a user's handler is installed before ours.
fn ids_in_slot_child() {
    set_segv(None, 0, &[]);
    let arena = arena();
    greenstack::stack::prepare_thread().unwrap();
    let mut co = Coroutine::with_stack(
        arena.allocate().unwrap(),
        |_: &corosensei::Yielder<(), ()>, ()| {
            let here = {
                let local = black_box(0u8);
                &local as *const u8 as usize
            };
            let floor = testing::floor_of(here).expect("on an arena slot");
            queue_self(libc::SIGSEGV, libc::SI_QUEUE, floor - 64);
            (floor, testing::floor_of(here).unwrap())
        },
    );
    let CoroutineResult::Return((before, after)) = co.resume(()) else {
        unreachable!()
    };
    println!(
        "RESULT runs={} code={} grown={}",
        USER_RUNS.load(Ordering::SeqCst),
        USER_SAW_CODE.load(Ordering::SeqCst),
        (after != before) as u8
    );
}

/// A sent SIGSEGV (`SI_QUEUE`; `SI_USER` and `SI_TKILL` alike) whose
/// `si_pid | si_uid << 32`, read as `si_addr`, lies below a live slot's
/// floor reaches the previous handler and grows nothing (before the fix
/// it was taken for a growth fault: the stack grew and the signal was
/// swallowed; in the hard guard it was reported as an overflow).
#[test]
fn sent_segv_whose_sender_ids_fall_in_a_slot_reaches_previous_handler() {
    let name = "sent_segv_whose_sender_ids_fall_in_a_slot_reaches_previous_handler";
    match child_scenario().as_deref() {
        Some("ids") => return ids_in_slot_child(),
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "ids");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}", out.status);
    assert!(
        stdout.contains(&format!("RESULT runs=1 code={} grown=0", libc::SI_QUEUE)),
        "the sent SIGSEGV was taken for a growth fault:\n{stdout}"
    );
}

/// Where the legacy handler below found its arguments: 1 if `info` was the
/// SIGSEGV's siginfo, 0 if not, -1 before it ran.
static LEGACY_INFO_OK: AtomicIsize = AtomicIsize::new(-1);
/// 1 if its `ctx` held the interrupted stack pointer (near [`LEGACY_NEAR`]).
static LEGACY_CTX_OK: AtomicIsize = AtomicIsize::new(-1);
/// An address on the stack that raised the signal.
static LEGACY_NEAR: AtomicUsize = AtomicUsize::new(0);

/// A handler installed without `SA_SIGINFO` that reads the three arguments
/// the kernel passes on x86-64 anyway, as some old handlers do.
extern "C" fn legacy_handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let near = LEGACY_NEAR.load(Ordering::SeqCst);
    // SAFETY: the kernel passes the siginfo and ucontext to every x86-64
    // handler (the stack handler must too); a wrong pointer crashes the
    // child, which the parent reports.
    unsafe {
        let info_ok =
            !info.is_null() && (*info).si_signo == sig && (*info).si_code == libc::SI_TKILL;
        LEGACY_INFO_OK.store(info_ok as isize, Ordering::SeqCst);
        let ctx_ok = !ctx.is_null() && {
            let sp = (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RSP as usize]
                as usize;
            sp < near && near - sp < 64 * 1024
        };
        LEGACY_CTX_OK.store(ctx_ok as isize, Ordering::SeqCst);
    }
}

/// A previous handler installed without `SA_SIGINFO` is called with the
/// signal, the siginfo and the context, as the kernel calls it on x86-64
/// (before the fix it got the signal number only, and whatever the
/// registers held as the other two).
#[test]
fn chained_handler_without_sa_siginfo_gets_info_and_context() {
    let name = "chained_handler_without_sa_siginfo_gets_info_and_context";
    match child_scenario().as_deref() {
        Some("legacy") => {
            set_segv(Some(legacy_handler as *const () as usize), 0, &[]);
            let _arena = arena();
            let local = black_box(0u8);
            LEGACY_NEAR.store(&local as *const u8 as usize, Ordering::SeqCst);
            // SAFETY: as in `std_child`.
            assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
            println!(
                "RESULT info_ok={} ctx_ok={}",
                LEGACY_INFO_OK.load(Ordering::SeqCst),
                LEGACY_CTX_OK.load(Ordering::SeqCst)
            );
            return;
        }
        Some(_) => return,
        None => {}
    }
    let out = run_child(name, "legacy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("RESULT info_ok=1 ctx_ok=1"),
        "the handler without SA_SIGINFO did not get the siginfo and context:\n{stdout}"
    );
}
