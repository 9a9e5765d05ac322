//! Injected failures: mapping a chunk, guarding a fresh slot, growing a
//! running stack, and faults inside the fault handler itself; plus a
//! foreign SIGBUS. Every scenario runs in a child process of its own (the
//! injection is process-wide), and the parent checks how it ended.

use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use greenstack::stack::testing::{inject_failure, Fault};
use greenstack::{Builder, Runtime};

const CHILD_ENV: &str = "GREENSTACK_INJECT_CHILD";

/// Re-runs test `name` as a child playing `scenario`, killing it if it runs
/// past a generous hang guard (a hang is the failure these tests rule out).
fn run_child(name: &str, scenario: &str) -> Output {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child test process");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("polling the child").is_some() {
            return child
                .wait_with_output()
                .expect("collecting the child's output");
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child
                .wait_with_output()
                .expect("collecting the child's output");
            panic!(
                "child {scenario} hung; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scenario() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Recurses through about `bytes` of 1 KiB frames.
#[inline(never)]
fn dig(bytes: usize) -> usize {
    let frame = black_box([1u8; 1024]);
    if bytes <= 1024 {
        return frame[0] as usize;
    }
    dig(bytes - 1024) + frame[1] as usize
}

/// Child: with one failure injected at `point`, the first coroutine of a
/// new size class gets no stack and says so (with guard markers its stack
/// is taken when it starts, so its `join` returns the error; with the
/// `mprotect` fallback, at spawn, so `spawn` does), the runtime keeps
/// serving, and the next spawn works.
fn spawn_survives(point: Fault) {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let keeper = rt.spawn(|| 1);
    assert_eq!(keeper.join().unwrap(), 1);
    if point == Fault::ChunkMap && rt.arena().guard_mode() == greenstack::stack::GuardMode::Mprotect
    {
        // The fallback never maps chunks: its reservation stays PROT_NONE.
        println!("survived {point:?}");
        return;
    }
    // A new size class, so its first slot maps a chunk and guards a slot.
    inject_failure(point, 1);
    let spawned = Builder::new().stack_size(4 << 20).spawn_on(&rt, || 2);
    if rt.arena().guard_mode() == greenstack::stack::GuardMode::Markers {
        let payload = spawned
            .expect("the stack is taken at start")
            .join()
            .expect_err("injected failure");
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            msg.contains("no stack for coroutine") && msg.contains("injected"),
            "{msg}"
        );
    } else {
        let err = spawned.expect_err("injected failure");
        assert_eq!(err.kind(), std::io::ErrorKind::OutOfMemory, "{err}");
        assert!(err.to_string().contains("injected"), "{err}");
    }
    let again = Builder::new()
        .stack_size(4 << 20)
        .spawn_on(&rt, || dig(512 * 1024))
        .unwrap();
    assert!(again.join().unwrap() > 0);
    let others: Vec<_> = (0..100).map(|i| rt.spawn(move || i)).collect();
    assert_eq!(
        others.into_iter().map(|h| h.join().unwrap()).sum::<i32>(),
        4950
    );
    println!("survived {point:?}");
}

#[test]
fn chunk_mapping_failure_is_an_error_and_the_runtime_serves_on() {
    if scenario().is_some() {
        return spawn_survives(Fault::ChunkMap);
    }
    let out = run_child(
        "chunk_mapping_failure_is_an_error_and_the_runtime_serves_on",
        "chunk",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("survived ChunkMap"));
}

#[test]
fn guard_installation_failure_is_an_error_and_the_runtime_serves_on() {
    if scenario().is_some() {
        return spawn_survives(Fault::GuardInstall);
    }
    let out = run_child(
        "guard_installation_failure_is_an_error_and_the_runtime_serves_on",
        "guard",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("survived GuardInstall"));
}

#[test]
fn growth_failure_aborts_with_a_report_naming_the_coroutine() {
    if scenario().is_some() {
        let rt = Runtime::builder().workers(1).build().unwrap();
        inject_failure(Fault::Grow, 1);
        let h = Builder::new()
            .name("needs-room")
            .spawn_on(&rt, || dig(200 * 1024))
            .unwrap();
        let _ = h.join();
        unreachable!("growth cannot fail quietly");
    }
    let out = run_child(
        "growth_failure_aborts_with_a_report_naming_the_coroutine",
        "grow",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "status {:?}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("'needs-room'") && stderr.contains("cannot grow its stack"),
        "{stderr}"
    );
}

/// Child: take a growth fault with `point` injected into the handler.
fn fault_in_handler(point: Fault) {
    let rt = Runtime::builder().workers(1).build().unwrap();
    inject_failure(point, 1);
    let h = rt.spawn(|| dig(200 * 1024));
    let _ = h.join();
    unreachable!("the handler's own fault must end the process");
}

#[test]
fn a_fault_inside_the_handler_ends_the_process() {
    if scenario().is_some() {
        return fault_in_handler(Fault::InHandler);
    }
    let out = run_child("a_fault_inside_the_handler_ends_the_process", "in-handler");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}",
        out.status
    );
}

#[test]
fn a_signal_stack_overflow_ends_the_process() {
    if scenario().is_some() {
        return fault_in_handler(Fault::HandlerOverflow);
    }
    let out = run_child("a_signal_stack_overflow_ends_the_process", "altstack");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}",
        out.status
    );
}

#[test]
fn a_foreign_sigbus_in_a_coroutine_is_passed_on() {
    if scenario().is_some() {
        let rt = Runtime::builder().workers(1).build().unwrap();
        let h = rt.spawn(|| {
            // A page of a file mapped past the file's end: touching it is
            // SIGBUS, which is not ours and must reach the default action.
            let f = tempfile_fd();
            // SAFETY: a shared read mapping of our own (empty) file.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    f,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            // SAFETY: none; this read is the fault under test, in a child.
            unsafe { std::ptr::read_volatile(p as *const u8) }
        });
        let _ = h.join();
        unreachable!("a read past the end of a mapped file returned");
    }
    let out = run_child("a_foreign_sigbus_in_a_coroutine_is_passed_on", "sigbus");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGBUS),
        "status {:?}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("overflowed"), "{stderr}");
}

/// An empty, unlinked temporary file.
fn tempfile_fd() -> libc::c_int {
    let path = std::env::temp_dir().join(format!("greenstack-sigbus-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create a temp file");
    let _ = std::fs::remove_file(&path);
    use std::os::fd::IntoRawFd;
    f.into_raw_fd()
}
