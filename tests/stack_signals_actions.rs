//! greenstack leaves other code's signal actions alone: starting a runtime
//! changes no action but SIGSEGV's and SIGBUS's (installed once), so
//!
//! - a handler installed concurrently with runtime starts is never reverted
//!   or rewritten (it used to be read and written back with `SA_ONSTACK`
//!   added on every start, racing the installer's `sigaction`);
//! - a handler installed without `SA_ONSTACK` before the runtime still runs
//!   on the interrupted stack of an ordinary thread, not on that thread's
//!   alternate stack (std gives every thread an 8 KiB one).
//!
//! What such a handler does on a coroutine stack is tested in
//! `tests/stack_signals.rs`. Each scenario runs in a child process (this
//! binary re-executed for one test), since actions are process-wide.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variable that turns a re-executed test into its child half.
const CHILD_ENV: &str = "GREENSTACK_STACK_ACTIONS_CHILD";

/// Installs of the concurrent test: each is checked after two runtime
/// starts have completed since.
const INSTALLS: usize = 100;

/// Flags compared on read-back (glibc adds `SA_RESTORER`, which is not
/// ours to compare).
const FLAG_BITS: libc::c_int =
    libc::SA_ONSTACK | libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_NODEFER | libc::SA_RESETHAND;

/// Runs of the SIGUSR1 handler.
static RUNS: AtomicUsize = AtomicUsize::new(0);
/// Whether its last run was on the alternate signal stack (-1: none).
static ON_ALTSTACK: AtomicIsize = AtomicIsize::new(-1);

/// Re-runs this binary's test `name` as the child `scenario`.
fn run_child(name: &str, scenario: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .output()
        .expect("re-executing the test binary")
}

/// The scenario this process plays, if it is a child.
fn child_scenario() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// This thread's alternate signal stack: (enabled, currently on it).
fn altstack() -> (bool, bool) {
    // SAFETY: querying into a zeroed struct; sigaltstack is
    // async-signal-safe.
    unsafe {
        let mut st: libc::stack_t = std::mem::zeroed();
        assert_eq!(libc::sigaltstack(std::ptr::null(), &mut st), 0);
        (
            st.ss_flags & libc::SS_DISABLE == 0,
            st.ss_flags & libc::SS_ONSTACK != 0,
        )
    }
}

/// A user's handler: records whether it runs on the alternate stack.
extern "C" fn on_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    ON_ALTSTACK.store(altstack().1 as isize, Ordering::SeqCst);
    RUNS.fetch_add(1, Ordering::SeqCst);
}

/// A second handler, so consecutive installs differ.
extern "C" fn on_signal_too(
    _sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    RUNS.fetch_add(1, Ordering::SeqCst);
}

/// Installs `handler` for `sig` as signal-hook-registry does
/// (`SA_RESTART | SA_SIGINFO`, no `SA_ONSTACK`).
fn install(
    sig: libc::c_int,
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) {
    // SAFETY: a zeroed, then filled, sigaction; the handler has the
    // SA_SIGINFO signature.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

/// The action installed for `sig`: (handler, compared flags).
fn action(sig: libc::c_int) -> (usize, libc::c_int) {
    // SAFETY: reading an action into a zeroed struct.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut act), 0);
        (act.sa_sigaction, act.sa_flags & FLAG_BITS)
    }
}

/// Starts a one-worker runtime, runs a coroutine on it, and drops it.
fn start_runtime() {
    let rt = greenstack::Runtime::builder().workers(1).build().unwrap();
    let v = rt.block_on(|| greenstack::spawn(|| 7).join().unwrap());
    assert_eq!(v, 7);
}

/// A handler installed before the runtime, without `SA_ONSTACK`, runs on
/// an ordinary thread's own stack after runtimes have started, not on the
/// alternate stack std gave that thread; its action is unchanged.
#[test]
fn ordinary_thread_handler_is_not_moved_to_the_alternate_stack() {
    let name = "ordinary_thread_handler_is_not_moved_to_the_alternate_stack";
    if child_scenario().as_deref() == Some("ordinary") {
        install(libc::SIGUSR1, on_signal);
        let installed = action(libc::SIGUSR1);
        start_runtime();
        greenstack::stack::prepare_thread().unwrap();
        let (has_altstack, on_altstack) = std::thread::spawn(|| {
            let has = altstack().0;
            // SAFETY: signalling our own thread; the handler is installed.
            assert_eq!(
                unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) },
                0
            );
            (has, ON_ALTSTACK.load(Ordering::SeqCst))
        })
        .join()
        .unwrap();
        println!(
            "RESULT runs={} has_altstack={} on_altstack={on_altstack} action_kept={}",
            RUNS.load(Ordering::SeqCst),
            has_altstack as u8,
            (action(libc::SIGUSR1) == installed) as u8,
        );
        return;
    }
    let out = run_child(name, "ordinary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("has_altstack=1"),
        "set-up error: the ordinary thread has no alternate stack to be moved onto:\n{stdout}"
    );
    assert!(
        stdout.contains("RESULT runs=1 has_altstack=1 on_altstack=0 action_kept=1"),
        "the handler was moved onto the thread's alternate stack or its action changed:\n{stdout}"
    );
}

/// While one thread starts runtimes (and calls `prepare_thread`) in a loop,
/// another installs handlers for SIGUSR2 and SIGHUP, alternating two
/// functions; after each install it waits for two more runtime starts to
/// complete and reads the actions back: each must be exactly what it
/// installed (not reverted, no flag added).
#[test]
fn handler_installed_during_runtime_starts_is_not_reverted() {
    let name = "handler_installed_during_runtime_starts_is_not_reverted";
    if child_scenario().as_deref() == Some("concurrent") {
        let stop = Arc::new(AtomicBool::new(false));
        let starts = Arc::new(AtomicUsize::new(0));
        let starter = {
            let (stop, starts) = (Arc::clone(&stop), Arc::clone(&starts));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    start_runtime();
                    greenstack::stack::prepare_thread().unwrap();
                    starts.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let mut mismatches = Vec::new();
        for i in 0..INSTALLS {
            let f = if i % 2 == 0 { on_signal } else { on_signal_too };
            for sig in [libc::SIGUSR2, libc::SIGHUP] {
                install(sig, f);
            }
            let seen = starts.load(Ordering::SeqCst);
            let t = Instant::now();
            while starts.load(Ordering::SeqCst) < seen + 2 {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "hang guard: runtime starts stalled"
                );
                std::thread::yield_now();
            }
            for sig in [libc::SIGUSR2, libc::SIGHUP] {
                let want = (f as *const () as usize, libc::SA_SIGINFO | libc::SA_RESTART);
                let got = action(sig);
                if got != want {
                    mismatches.push(format!(
                        "install {i} sig {sig}: handler {:#x} flags {:#x}, installed {:#x} {:#x}",
                        got.0, got.1, want.0, want.1
                    ));
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        starter.join().unwrap();
        println!(
            "RESULT installs={INSTALLS} starts={} mismatches={}",
            starts.load(Ordering::SeqCst),
            mismatches.len()
        );
        for m in mismatches.iter().take(5) {
            println!("{m}");
        }
        return;
    }
    let out = run_child(name, "concurrent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mismatches=0"),
        "handlers installed during runtime starts were rewritten:\n{stdout}"
    );
}

/// SIGSEGVs the handler installed in the install window saw.
static SEGV_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The handler another thread installs while ours is being installed.
extern "C" fn on_segv(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    SEGV_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// Installs [`on_segv`] for SIGSEGV: run by the stack handler's install
/// between reading the previous action and installing its own, where
/// another thread's `sigaction` could land.
fn install_segv_in_window() {
    // SAFETY: a zeroed, then filled, sigaction; the handler has the
    // SA_SIGINFO signature.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
    }
}

/// A SIGSEGV handler installed (by another thread) while the stack handler
/// is being installed is the action ours replaced, and is chained to: a
/// sent SIGSEGV reaches it. Before the fix the install read the action,
/// then wrote ours in a second call, so a handler installed in between was
/// overwritten and never chained (the signal went to the action read
/// first, std's).
#[test]
fn handler_installed_while_ours_installs_is_chained() {
    let name = "handler_installed_while_ours_installs_is_chained";
    if child_scenario().as_deref() == Some("window") {
        greenstack::stack::testing::set_install_hook(install_segv_in_window);
        let _arena = greenstack::stack::StackArena::builder()
            .stack_size(1 << 20)
            .build()
            .unwrap();
        let ours = action(libc::SIGSEGV).0 != on_segv as *const () as usize;
        // SAFETY: raise to our own thread; the chain hands it on.
        assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
        println!(
            "RESULT ours_installed={} runs={}",
            ours as u8,
            SEGV_RUNS.load(Ordering::SeqCst)
        );
        return;
    }
    let out = run_child(name, "window");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("RESULT ours_installed=1 runs=1"),
        "the handler installed during ours was lost:\n{stdout}"
    );
}
