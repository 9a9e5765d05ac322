//! Timeouts on the waits that lacked one (issue 20): `RwLock::read_timeout`
//! and `write_timeout`, `Barrier::wait_timeout`, `mpmc::Sender::send_timeout`
//! and `accept_timeout` on TCP and Unix listeners. Each gives up no earlier
//! than its timeout, succeeds when what it waits for comes, and behaves the
//! same in a coroutine and on a plain thread.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bounded;
use greenstack::sync::{mpmc, Barrier, RwLock};
use greenstack::Runtime;

const T: Duration = Duration::from_millis(20);

/// Runs `check` on a plain thread, then in a coroutine.
fn both(name: &str, check: fn()) {
    bounded(name, check);
    let rt = Runtime::new().unwrap();
    bounded(name, move || rt.block_on_worker(check));
}

/// Asserts `f` took at least `T`, and returns its value.
fn not_early<R>(f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    assert!(
        t.elapsed() >= T,
        "gave up after {:?}, before {T:?}",
        t.elapsed()
    );
    r
}

#[test]
fn rwlock_timeouts() {
    both("rwlock timeouts", || {
        let lock = RwLock::new(1);
        {
            let _w = lock.write();
            assert!(not_early(|| lock.read_timeout(T)).is_none());
            assert!(not_early(|| lock.write_timeout(T)).is_none());
        }
        let r = lock.read_timeout(T).expect("free");
        assert!(
            not_early(|| lock.write_timeout(T)).is_none(),
            "a reader holds it"
        );
        assert_eq!(
            *lock.read_timeout(T).expect("shared with the other reader"),
            1
        );
        drop(r);
        *lock.write_timeout(T).expect("free") = 2;
        assert_eq!(*lock.read(), 2);
    });
}

#[test]
fn barrier_wait_timeout_leaves_the_round() {
    both("barrier timeouts", || {
        let b = Arc::new(Barrier::new(2));
        assert!(not_early(|| b.wait_timeout(T)).is_none());
        // The timed-out waiter left: the round still needs two.
        let b2 = Arc::clone(&b);
        let other = std::thread::spawn(move || b2.wait_timeout(Duration::from_secs(60)));
        let mine = b
            .wait_timeout(Duration::from_secs(60))
            .expect("the round completes");
        let theirs = other.join().unwrap().expect("the round completes");
        assert!(mine.is_leader() != theirs.is_leader(), "exactly one leader");
    });
}

#[test]
fn mpmc_send_timeout() {
    both("send timeouts", || {
        let (tx, rx) = mpmc::bounded(1);
        tx.send(1).unwrap();
        let e = not_early(|| tx.send_timeout(2, T)).expect_err("full");
        assert!(e.is_timeout());
        assert_eq!(e.into_inner(), 2);
        let tx2 = tx.clone();
        let later = std::thread::spawn(move || {
            std::thread::sleep(T);
            (rx.recv().unwrap(), rx)
        });
        tx2.send_timeout(3, Duration::from_secs(60))
            .expect("room was made");
        let (first, rx) = later.join().unwrap();
        assert_eq!(first, 1);
        assert_eq!(rx.recv().unwrap(), 3);
        drop(rx);
        let e = tx.send_timeout(4, T).expect_err("no receiver");
        assert!(!e.is_timeout());
        assert_eq!(e.into_inner(), 4);
    });
}

#[test]
fn accept_timeout() {
    both("accept timeouts", || {
        let l = greenstack::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = not_early(|| l.accept_timeout(T)).expect_err("nobody connects");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        l.accept_timeout(Duration::from_secs(60))
            .expect("a connection");

        let dir = std::env::temp_dir().join(format!(
            "gs-accept-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&dir);
        let u = greenstack::net::UnixListener::bind(&dir).unwrap();
        let e = not_early(|| u.accept_timeout(T)).expect_err("nobody connects");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        let _c = std::os::unix::net::UnixStream::connect(&dir).unwrap();
        u.accept_timeout(Duration::from_secs(60))
            .expect("a connection");
        let _ = std::fs::remove_file(&dir);
    });
}
