//! Faults the arena must not swallow, and the one it must report: overflow,
//! foreign segfaults, and a user's handler installed before ours.
//!
//! Each crash runs in a child process (this test binary, re-run with an
//! environment variable naming the scenario); the parent checks how the child
//! died and what it printed.

use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use corosensei::{Coroutine, CoroutineResult};
use greenstack::stack::{Slot, StackArena};

const CHILD_ENV: &str = "GREENSTACK_FAULT_CHILD";

/// Re-runs this binary's test `name` with the child scenario `scenario`.
fn run_child(name: &str, scenario: &str, extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .env_remove("GREENSTACK_GUARD_MODE");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawning the child test process")
}

/// The scenario this process should play, if it is a child.
fn child_scenario() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Runs `f` as a coroutine on `slot` to completion.
fn run_on<R: 'static>(slot: Slot, f: impl FnOnce() -> R + 'static) -> R {
    greenstack::stack::prepare_thread().unwrap();
    let mut co = Coroutine::with_stack(slot, move |_: &corosensei::Yielder<(), ()>, ()| f());
    match co.resume(()) {
        CoroutineResult::Return(r) => r,
        CoroutineResult::Yield(()) => unreachable!(),
    }
}

/// Recurses forever (until the stack runs out).
#[inline(never)]
#[allow(unconditional_recursion)]
fn bottomless(n: u64) -> u64 {
    let buf = black_box([n as u8; 512]);
    bottomless(n + 1) + buf[(n % 512) as usize] as u64
}

fn assert_overflow_report(out: &Output, mode: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("guard mode: {mode}")),
        "child ran in the wrong mode:\n{stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "child status {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("deep-diver"),
        "report does not name the coroutine:\n{stderr}"
    );
    assert!(
        stderr.contains("overflowed its stack"),
        "no overflow report:\n{stderr}"
    );
    assert!(
        stderr.contains("(id 42)"),
        "report does not give the coroutine id:\n{stderr}"
    );
    assert!(
        stderr.contains("reserve 262144 bytes"),
        "report does not give the reserve:\n{stderr}"
    );
}

fn overflow_child() {
    let arena = StackArena::new().unwrap();
    eprintln!("guard mode: {:?}", arena.guard_mode());
    let mut slot = arena.allocate().unwrap();
    slot.set_identity(42, Some("deep-diver"));
    run_on(slot, || bottomless(0));
    unreachable!("unbounded recursion returned");
}

#[test]
fn overflow_is_reported_and_aborts() {
    if child_scenario().is_some() {
        return overflow_child();
    }
    let out = run_child("overflow_is_reported_and_aborts", "overflow", &[]);
    assert_overflow_report(&out, "Markers");
}

#[test]
fn overflow_is_reported_with_mprotect_fallback() {
    if child_scenario().is_some() {
        return overflow_child();
    }
    let out = run_child(
        "overflow_is_reported_with_mprotect_fallback",
        "overflow",
        &[("GREENSTACK_GUARD_MODE", "mprotect")],
    );
    assert_overflow_report(&out, "Mprotect");
}

#[test]
fn null_write_in_coroutine_still_segfaults() {
    if child_scenario().is_some() {
        let arena = StackArena::new().unwrap();
        let slot = arena.allocate().unwrap();
        run_on(slot, || {
            let p: *mut u64 = black_box(std::ptr::null_mut());
            // SAFETY: none; this write is the fault under test, in a child.
            unsafe { p.write_volatile(7) };
        });
        unreachable!("a null write returned");
    }
    let out = run_child("null_write_in_coroutine_still_segfaults", "null", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("overflowed"),
        "a null write was reported as an overflow:\n{stderr}"
    );
}

/// Faults the user's handler has seen.
static USER_FAULTS: AtomicUsize = AtomicUsize::new(0);
/// The page the user's handler is willing to fix.
static USER_PAGE: AtomicUsize = AtomicUsize::new(0);

/// A user's SIGSEGV handler: a toy pager that makes its own page writable.
extern "C" fn user_handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = USER_PAGE.load(Ordering::Relaxed);
    if addr >= page && addr < page + 4096 {
        USER_FAULTS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the page is the test's own mapping; mprotect is a plain
        // system call.
        unsafe {
            libc::mprotect(
                page as *mut libc::c_void,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
    } else {
        // Not ours either: die as the default action would.
        // SAFETY: abort is async-signal-safe.
        unsafe { libc::abort() };
    }
}

#[test]
fn user_handler_installed_first_still_gets_foreign_faults() {
    if child_scenario().is_none() {
        let out = run_child(
            "user_handler_installed_first_still_gets_foreign_faults",
            "user",
            &[],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("user handler saw 2 faults; arena grew"),
            "stdout:\n{stdout}"
        );
        return;
    }
    // SAFETY: installing a handler with a zeroed, then filled, sigaction;
    // mapping a private page of our own.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = user_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        USER_PAGE.store(page as usize, Ordering::Relaxed);
    }
    // The arena installs its handler now, on top of the user's.
    let arena = StackArena::builder().stack_size(1 << 20).build().unwrap();
    let page = USER_PAGE.load(Ordering::Relaxed) as *mut u8;
    // A fault outside the arena, from normal code: chained to the user.
    // SAFETY: the page is ours; the user's handler makes it writable.
    unsafe { page.write_volatile(1) };
    // The arena still grows stacks, and a foreign fault from inside a
    // coroutine reaches the user's handler too.
    let slot = arena.allocate().unwrap();
    let page_addr = page as usize;
    let grown = run_on(slot, move || {
        // SAFETY: as above; protect it again so the write faults once more.
        unsafe {
            libc::mprotect(page_addr as *mut libc::c_void, 4096, libc::PROT_NONE);
            (page_addr as *mut u8).write_volatile(2);
        }
        black_box([0u8; 64 * 1024])[100] as usize + 1
    });
    assert_eq!(grown, 1);
    assert!(arena.stats().growth_faults > 0);
    println!(
        "user handler saw {} faults; arena grew",
        USER_FAULTS.load(Ordering::Relaxed)
    );
}

/// The action that was installed before the late user handler (ours).
static PREVIOUS: std::sync::OnceLock<libc::sigaction> = std::sync::OnceLock::new();
/// Faults the late handler saw.
static LATE_SEEN: AtomicUsize = AtomicUsize::new(0);

/// A user's handler installed after the runtime, chaining as documented:
/// it handles nothing itself here and passes every fault to the previous
/// action with the kernel's arguments.
extern "C" fn late_handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    LATE_SEEN.fetch_add(1, Ordering::Relaxed);
    let prev = PREVIOUS.get().expect("saved before installing");
    // SAFETY: the previous action is greenstack's SA_SIGINFO handler; we pass
    // the kernel's arguments unchanged.
    unsafe {
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            std::mem::transmute(prev.sa_sigaction);
        f(sig, info, ctx);
    }
}

#[test]
fn user_handler_installed_later_keeps_growth_working_when_it_chains() {
    if child_scenario().is_none() {
        let out = run_child(
            "user_handler_installed_later_keeps_growth_working_when_it_chains",
            "late",
            &[],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("late handler chained"), "{stdout}");
        return;
    }
    let arena = StackArena::builder().stack_size(4 << 20).build().unwrap();
    // SAFETY: reading the current action, then installing ours with
    // SA_ONSTACK (growth faults must run on the alternate stack).
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut old),
            0
        );
        PREVIOUS.set(old).unwrap();
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = late_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
    }
    let slot = arena.allocate().unwrap();
    let n = run_on(slot, || black_box([3u8; 512 * 1024])[9] as usize);
    assert_eq!(n, 3);
    assert!(arena.stats().growth_faults > 0);
    assert!(LATE_SEEN.load(Ordering::Relaxed) > 0);
    println!(
        "late handler chained {} faults",
        LATE_SEEN.load(Ordering::Relaxed)
    );
}
