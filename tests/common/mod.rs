//! Helpers shared by the integration tests: a hang guard, runtimes, the
//! no-fault check, and running a task as a coroutine or a plain thread.
//!
//! Each test file uses a subset, so unused items are expected here.
#![allow(dead_code)]

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::thread;
use std::time::Duration;

use greenstack::{JoinHandle, Runtime};

/// How long a test may run before it counts as hung. A hang guard, not a
/// timing assertion: far above what any test needs.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// Runs `body` on a fresh thread and waits at most [`HANG_GUARD`] for it.
/// A panic in `body` is re-raised here; a hang fails the test (the stuck
/// thread is leaked).
pub fn bounded<T: Send + 'static>(what: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    bounded_for(what, HANG_GUARD, body)
}

/// [`bounded`] with a hang guard of `limit`.
pub fn bounded_for<T: Send + 'static>(
    what: &str,
    limit: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = thread::Builder::new()
        .name(format!("bounded: {what}"))
        .spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(body)));
        })
        .expect("spawning the test thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => {
            h.join().expect("the test thread ends after sending");
            v
        }
        Ok(Err(p)) => resume_unwind(p),
        Err(_) => panic!("hang guard: {what} did not finish within {limit:?}"),
    }
}

/// A runtime with `workers` workers and the other defaults.
pub fn runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .build()
        .expect("building a runtime")
}

/// Asserts the runtime's no-fault-section violation counter is still 0.
pub fn assert_no_nofault_violations(rt: &Runtime) {
    let stats = rt.stats();
    assert_eq!(
        stats.arena.nofault_violations, 0,
        "growth faults inside no-fault sections: {stats:?}"
    );
}

/// Where one end of a channel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A coroutine on the runtime.
    Co,
    /// A plain thread.
    Th,
}

/// A coroutine or a thread started by [`start`].
pub enum Task<T> {
    Co(JoinHandle<T>),
    Th(thread::JoinHandle<T>),
}

impl<T> Task<T> {
    /// Waits for the task; its panic is re-raised in the caller.
    pub fn join(self) -> T {
        match self {
            Task::Co(h) => h.join().unwrap_or_else(|p| resume_unwind(p)),
            Task::Th(h) => h.join().unwrap_or_else(|p| resume_unwind(p)),
        }
    }
}

/// Runs `f` as a coroutine on `rt` (side `Co`) or on a new plain thread
/// (side `Th`).
pub fn start<T: Send + 'static>(
    side: Side,
    rt: Option<&Runtime>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Task<T> {
    match side {
        Side::Co => Task::Co(rt.expect("a coroutine needs a runtime").spawn(f)),
        Side::Th => Task::Th(thread::spawn(f)),
    }
}

/// Sleeps without involving any runtime on a plain thread: greenstack's
/// sleep in a coroutine (parks it), std's on a thread.
pub fn nap(d: Duration) {
    if greenstack::try_current().is_some() {
        greenstack::time::sleep(d);
    } else {
        thread::sleep(d);
    }
}

/// The scenario this process plays if it is a child started by
/// [`run_child`] with environment variable `env`.
pub fn child_scenario(env: &str) -> Option<String> {
    std::env::var(env).ok()
}

/// Re-runs this binary's test `name` (ignored or not) as a child process
/// with `env` set to `scenario`, its output captured; a child that outlives
/// the hang guard is killed and fails the test.
pub fn run_child(env: &str, name: &str, scenario: &str) -> std::process::Output {
    use std::process::Command;
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args([name, "--exact", "--nocapture", "--include-ignored"])
        .args(["--test-threads=1"])
        .env(env, scenario);
    output_bounded(cmd, scenario)
}

/// Runs `cmd` to completion with its output captured, killing it if it
/// outlives the hang guard (so a hung child fails the test instead of
/// outliving it).
pub fn output_bounded(mut cmd: std::process::Command, what: &str) -> std::process::Output {
    use std::process::Stdio;
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child test process");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG_GUARD) {
        Ok(out) => out.expect("waiting for the child test process"),
        Err(_) => {
            // SAFETY: kill(2) has no memory-safety preconditions. The pid
            // is our child's: its waiter has not returned, so it is not
            // reaped (unless it exited in the instant since the timeout).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("hang guard: child {what} did not finish within {HANG_GUARD:?}; killed");
        }
    }
}

/// How a child ended, for assertion messages.
pub fn describe(out: &std::process::Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    format!(
        "status {:?} (signal {:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.status.signal(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The message of a panic payload (`&str` or `String`).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&'static str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string panic payload>".into())
}

/// In a child process that plays a stuck-worker scenario: tracing events
/// go to stderr (where the parent looks for the watchdog's report), and
/// the runtime has one worker and a 100 ms watchdog.
pub fn watchdog_child_runtime() -> Runtime {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber in the child");
    Runtime::builder()
        .workers(1)
        .watchdog(Some(Duration::from_millis(100)))
        .build()
        .unwrap()
}

/// A pipe (close-on-exec): its read end and write end.
pub fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds, owned by nobody else.
    unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(fds[0])),
            std::fs::File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}
