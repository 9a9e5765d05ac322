//! Where a socket's readiness is watched follows the coroutine that waits
//! on it:
//!
//! - a socket first used in `block_on`'s root (which waits in `poll(2)`)
//!   and then handed to a spawned coroutine is registered by that
//!   coroutine's first wait, so it parks instead of blocking its worker:
//!   on one worker, its peer coroutine still runs;
//! - a socket registered by a coroutine of runtime A moves to runtime B's
//!   poller when a coroutine of B waits on it after A is dropped;
//! - a coroutine of B already waiting on a socket still registered with a
//!   live runtime A is woken when A is dropped, and then moves it;
//! - a read that timed out on one worker leaves no waker behind that would
//!   keep the socket registered there: the next reader, on another worker,
//!   gets the readiness while the first worker is blocked.
//!
//! Before the fix each of these hung for good, so each scenario runs in a
//! child process (this binary re-run with an environment variable) that the
//! parent kills after the hang guard.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::HANG_GUARD;
use greenstack::net::{TcpListener, TcpStream};
use greenstack::sync::mpsc;
use greenstack::Runtime;

/// Names the scenario a child process plays.
const CHILD_ENV: &str = "GREENSTACK_NET_REGISTRATION_CHILD";

/// What a child prints once its scenario completed.
const DONE: &str = "scenario completed";

/// A runtime with `workers` workers and no watchdog (a hung child stays
/// quiet).
fn runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .watchdog(None)
        .build()
        .expect("building a runtime")
}

/// Runs test `name` again as a child playing it, killed after the hang
/// guard; asserts it completed.
fn run_child(name: &str) {
    let child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child test process");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(HANG_GUARD) {
        Ok(out) => out.expect("waiting for the child test process"),
        Err(_) => {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid
            // is our child's, not yet reaped (its waiter has not returned).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("hang guard: child {name} did not finish within {HANG_GUARD:?}; killed");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "child {name}: status {:?} (signal {:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In a child, runs `scenario` and reports it done; in the parent, runs
/// the child. Returns whether this process is the child.
fn child_or_parent(name: &str, scenario: impl FnOnce()) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        scenario();
        println!("{DONE}");
    } else {
        run_child(name);
    }
}

/// A connected pair over loopback, made on a plain thread (never
/// registered anywhere): (client, server).
fn pair_on_a_thread() -> (TcpStream, TcpStream) {
    thread::spawn(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    })
    .join()
    .unwrap()
}

/// One worker. The root binds a listener, connects a client, accepts it
/// and writes on it (every one of these waits, or could, in the root),
/// then hands the listener and both streams to a coroutine `x`. `x` spawns
/// its peer `y` and waits first in `accept` (the root's listener), then in
/// `read` (the root's client stream), each before `y` has done what
/// completes the wait: `y` runs only if those waits park `x` instead of
/// blocking the one worker.
#[test]
fn root_sockets_handed_to_a_coroutine_park_it() {
    child_or_parent("root_sockets_handed_to_a_coroutine_park_it", || {
        let rt = runtime(1);
        rt.block_on(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = TcpStream::connect(addr).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            client.write_all(b"from the root").unwrap();
            let mut got = [0u8; 13];
            server.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"from the root");

            let x = greenstack::spawn(move || {
                let (reading, read_now) = mpsc::channel::<()>();
                let y = greenstack::spawn(move || {
                    // Runs once `x` parks in `accept`.
                    let mut second = TcpStream::connect(addr).unwrap();
                    second.write_all(b"2").unwrap();
                    // `x` says it is about to read, then reads (and must
                    // park) before this runs again.
                    read_now.recv().unwrap();
                    server.write_all(b"ping").unwrap();
                    server
                });
                let (mut accepted, _) = listener.accept().unwrap();
                let mut one = [0u8; 1];
                accepted.read_exact(&mut one).unwrap();
                assert_eq!(&one, b"2");
                reading.send(()).unwrap();
                let mut buf = [0u8; 4];
                client.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"ping");
                y.join().unwrap();
            });
            x.join().unwrap();
        });
    });
}

/// A stream registered by a coroutine of runtime A (one worker); A is
/// dropped; a coroutine of runtime B (one worker) then reads it, parking
/// before its peer coroutine writes the other end: the read completes.
#[test]
fn a_socket_outlives_its_runtime() {
    child_or_parent("a_socket_outlives_its_runtime", || {
        let (client, server) = pair_on_a_thread();
        let a = runtime(1);
        let (client, server) = a
            .spawn(move || {
                // A wait on each end registers it with A's worker.
                let (mut c, mut s) = (client, server);
                let y = greenstack::spawn(move || {
                    s.write_all(b"a").unwrap();
                    s
                });
                let mut one = [0u8; 1];
                c.read_exact(&mut one).unwrap();
                (c, y.join().unwrap())
            })
            .join()
            .unwrap();
        drop(a);

        let b = runtime(1);
        b.spawn(move || {
            let (mut c, mut s) = (client, server);
            let (reading, read_now) = mpsc::channel::<()>();
            let y = greenstack::spawn(move || {
                read_now.recv().unwrap();
                s.write_all(b"b").unwrap();
                s
            });
            reading.send(()).unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).unwrap();
            assert_eq!(&one, b"b");
            y.join().unwrap();
        })
        .join()
        .unwrap();
    });
}

/// A coroutine of runtime A and one of runtime B read the same stream; A's
/// parks first (the stream is registered with A), then B's, which leaves
/// the registration with A (a reader waits there). A is dropped, then the
/// other end is written: B's reader gets the bytes.
#[test]
fn a_waiter_survives_the_drop_of_the_runtime_its_socket_is_registered_with() {
    child_or_parent(
        "a_waiter_survives_the_drop_of_the_runtime_its_socket_is_registered_with",
        || {
            let (client, mut server) = pair_on_a_thread();
            let client = Arc::new(client);
            let a = runtime(1);
            let b = runtime(1);
            let c = Arc::clone(&client);
            let _in_a = a.spawn(move || {
                let mut one = [0u8; 1];
                // Parks until A's shutdown unwinds it.
                let _ = (&*c).read(&mut one);
            });
            wait_for(|| a.stats().parks >= 1);
            let c = Arc::clone(&client);
            let in_b = b.spawn(move || {
                let mut one = [0u8; 1];
                (&*c).read_exact(&mut one).unwrap();
                one
            });
            wait_for(|| b.stats().parks >= 1);
            drop(a);
            server.write_all(b"!").unwrap();
            assert_eq!(&in_b.join().unwrap(), b"!");
        },
    );
}

/// Two workers. A coroutine reads a stream with a read timeout (it times
/// out, on the worker the stream is now registered with), then blocks that
/// worker in a std channel receive until the test ends. A coroutine on the
/// other worker reads the stream next, and the other end is written: the
/// readiness must reach the reader's worker, not wait for the blocked one.
#[test]
fn readiness_reaches_the_waiter_while_the_first_worker_is_blocked() {
    child_or_parent(
        "readiness_reaches_the_waiter_while_the_first_worker_is_blocked",
        || {
            let (client, mut server) = pair_on_a_thread();
            let client = Arc::new(client);
            let rt = runtime(2);
            let (blocking, blocked) = std::sync::mpsc::channel::<()>();
            let (release, wait_for_release) = std::sync::mpsc::channel::<()>();
            let c = Arc::clone(&client);
            let first = rt.spawn(move || {
                c.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
                let mut one = [0u8; 1];
                let e = (&*c).read(&mut one).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                c.set_read_timeout(None).unwrap();
                // Holds this worker (a std receive blocks the thread).
                blocking.send(()).unwrap();
                wait_for_release.recv().unwrap();
            });
            blocked.recv().unwrap();
            let parks = rt.stats().parks;
            // Only the other worker can start this one.
            let c = Arc::clone(&client);
            let second = rt.spawn(move || {
                let mut one = [0u8; 1];
                (&*c).read_exact(&mut one).unwrap();
                one
            });
            // It parked in `read` (the first one parks no more).
            wait_for(|| rt.stats().parks > parks);
            server.write_all(b"!").unwrap();
            assert_eq!(&second.join().unwrap(), b"!");
            release.send(()).unwrap();
            first.join().unwrap();
        },
    );
}

/// Polls `cond` every millisecond; the child runs under the parent's hang
/// guard.
fn wait_for(mut cond: impl FnMut() -> bool) {
    while !cond() {
        thread::sleep(Duration::from_millis(1));
    }
}
