//! The watchdog's report says what holds a stuck worker when it can tell
//! (issue 18): its own code running (CPU work), or a blocking system call
//! the hooks do not park, named by number, or a write to standard output
//! that waits for its reader. (A futex wait, a std channel's, is
//! `rt_watchdog_std_channel.rs`.)

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const ENV: &str = "GREENSTACK_WATCHDOG_CAUSE_CHILD";

/// In a child: a 1-worker runtime with a 100 ms watchdog whose only
/// coroutine holds the worker for 600 ms the way `how` says.
fn stuck_child(how: &str) {
    let rt = common::watchdog_child_runtime();
    let how = how.to_string();
    rt.spawn(move || match how.as_str() {
        "cpu" => {
            let t = Instant::now();
            let mut x = 0u64;
            while t.elapsed() < Duration::from_millis(600) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        "sigtimedwait" => {
            // SAFETY: a set of one signal that nobody sends: a 600 ms
            // sleep in rt_sigtimedwait(2), which the hooks do not cover.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                let t = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 600_000_000,
                };
                let r = libc::sigtimedwait(&set, std::ptr::null_mut(), &t);
                assert_eq!(r, -1, "no SIGUSR2 came");
            }
        }
        "stdout" => {
            // Standard output is a pipe already full, read only 600 ms
            // from now: the print blocks the worker (never parks).
            let (mut r, w) = common::pipe();
            // SAFETY: dup and dup2 of fds this process owns; `saved`
            // restores standard output afterwards.
            let saved = unsafe { libc::dup(1) };
            assert!(saved >= 0);
            // SAFETY: as above.
            assert_eq!(unsafe { libc::dup2(w.as_raw_fd(), 1) }, 1);
            drop(w);
            let fill = [b'.'; 64 * 1024];
            // SAFETY: a write of a live buffer.
            let n = unsafe { libc::write(1, fill.as_ptr().cast(), fill.len()) };
            assert_eq!(n, fill.len() as isize, "filling the pipe");
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(600));
                let mut all = Vec::new();
                r.read_to_end(&mut all).unwrap();
                all.len()
            });
            print!("{}", "x".repeat(4096));
            std::io::stdout().flush().unwrap();
            // SAFETY: as above; closes the pipe's last write end.
            assert_eq!(unsafe { libc::dup2(saved, 1) }, 1);
            // SAFETY: `saved` is ours and no longer needed.
            unsafe { libc::close(saved) };
            assert_eq!(reader.join().unwrap(), 64 * 1024 + 4096);
        }
        other => panic!("unknown scenario {other}"),
    })
    .join()
    .unwrap();
}

fn report_of(test: &str, how: &str) -> String {
    let out = common::run_child(ENV, test, how);
    assert!(out.status.success(), "{}", common::describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("without switching"))
        .unwrap_or_else(|| panic!("no watchdog report: {}", common::describe(&out)))
        .to_string()
}

#[test]
fn watchdog_says_a_worker_runs_cpu_work() {
    if let Some(how) = common::child_scenario(ENV) {
        return stuck_child(&how);
    }
    let r = report_of("watchdog_says_a_worker_runs_cpu_work", "cpu");
    assert!(r.contains("cause=\"cpu\""), "{r}");
    assert!(r.contains("long CPU work without a yield"), "{r}");
}

#[test]
fn watchdog_names_a_system_call_the_hooks_do_not_park() {
    if let Some(how) = common::child_scenario(ENV) {
        return stuck_child(&how);
    }
    let r = report_of(
        "watchdog_names_a_system_call_the_hooks_do_not_park",
        "sigtimedwait",
    );
    assert!(r.contains("cause=\"syscall\""), "{r}");
    assert!(
        r.contains(&format!(
            "system call {} (rt_sigtimedwait)",
            libc::SYS_rt_sigtimedwait
        )),
        "{r}"
    );
}

/// A print to a standard output whose reader lags blocks the worker (the
/// hooks never park writes to fds 1 and 2), and the report says so.
#[test]
fn watchdog_says_a_worker_waits_for_a_slow_reader_of_stdout() {
    if let Some(how) = common::child_scenario(ENV) {
        return stuck_child(&how);
    }
    let r = report_of(
        "watchdog_says_a_worker_waits_for_a_slow_reader_of_stdout",
        "stdout",
    );
    assert!(r.contains("cause=\"std_stream\""), "{r}");
    assert!(r.contains("writing to standard output (fd 1)"), "{r}");
}
