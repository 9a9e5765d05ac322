//! A std channel's `recv` in a coroutine, waiting for a send that only
//! another coroutine of the same worker would make, blocks that worker for
//! good: the wait is on the worker thread's own `thread::park` word, which
//! the hooks leave alone (std's locks park the coroutine instead, see
//! `hook_futex.rs`), and the sender can only run on the blocked thread.
//! The watchdog's report names the coroutine stuck in the wait and says
//! that this is a likely cause.
//!
//! The scenario hangs by design, so it runs in a child process (this
//! binary re-run with an environment variable) that prints tracing events
//! to stderr; the parent reads them until the watchdog's report appears,
//! then kills the child.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use greenstack::Builder;

/// Set in the child process that plays the hanging scenario.
const CHILD_ENV: &str = "GREENSTACK_WATCHDOG_STD_CHANNEL_CHILD";

/// How long the parent waits for the report before it fails: a hang guard,
/// far above the watchdog's 100 ms threshold.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The name of the coroutine that blocks its worker in the std channel.
const WAITER: &str = "std-channel-receiver";

/// The child's scenario: one worker, watchdog at 100 ms. `sender` spawns
/// `WAITER`, which receives from a std channel, and sleeps before sending;
/// `WAITER` runs and blocks the worker in `recv`, so `sender` never wakes.
/// Never returns.
fn hang_on_a_std_channel() -> ! {
    let rt = common::watchdog_child_runtime();
    let _sender = Builder::new()
        .name("std-channel-sender")
        .spawn_on(&rt, move || {
            let (tx, rx) = mpsc::channel::<u32>();
            let _receiver = Builder::new()
                .name(WAITER)
                .spawn(move || rx.recv())
                .unwrap();
            // A park before the send: the receiver runs meanwhile.
            greenstack::time::sleep(Duration::from_millis(10));
            tx.send(1).unwrap();
        })
        .unwrap();
    eprintln!("child: scenario started");
    loop {
        thread::park();
    }
}

/// The watchdog reports the coroutine blocked in a std channel's wait for
/// a send that another coroutine of its worker would make, naming that as
/// a likely cause (and a blocking call as the other).
#[test]
fn watchdog_names_a_std_channel_wait_on_the_worker() {
    if std::env::var_os(CHILD_ENV).is_some() {
        hang_on_a_std_channel();
    }
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "watchdog_names_a_std_channel_wait_on_the_worker",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child test process");
    let stderr = child.stderr.take().expect("the child's stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + HANG_GUARD;
    let mut seen = Vec::new();
    let report = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("WARN") && line.contains(WAITER) => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    // The child hangs by design (or is stuck): end it either way.
    let _ = child.kill();
    let status = child.wait().expect("reaping the child");
    let Some(report) = report else {
        panic!(
            "hang guard: no watchdog report naming {WAITER} within {HANG_GUARD:?} \
             (child ended: {status:?}); its stderr:\n{}",
            seen.join("\n")
        );
    };
    for needle in [
        "without switching",
        "the hooks do not park",
        "a wait for what only another coroutine on this worker would do",
        "a std channel's recv",
        "greenstack::sync",
        "cause=\"futex\"",
        "blocked on a futex",
    ] {
        assert!(
            report.contains(needle),
            "the watchdog's report does not say {needle:?}: {report}"
        );
    }
}
