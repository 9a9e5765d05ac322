//! Cancellation (`JoinHandle::cancel`, `CancelToken`) and
//! `time::timeout`: every kind of wait, cancelled while it waits and
//! before it starts; what each returns; that nothing is lost and nothing
//! ends early.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use greenstack::cancel::{self, CancelToken};
use greenstack::sync::{
    broadcast, mpmc, mpsc, oneshot, watch, Barrier, Condvar, Mutex, Notify, RwLock, Semaphore,
    WaitGroup,
};
use greenstack::{time, Cancelled, Runtime};

/// Far longer than any test runs: a wait that ends did not time out.
const FOREVER: Duration = Duration::from_secs(3600);

fn wait_for(mut cond: impl FnMut() -> bool) {
    while !cond() {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `wait` in a coroutine on `rt`, cancels the coroutine once it is
/// parked inside `wait`, and returns what `wait` returned (and whether the
/// coroutine then saw itself cancelled).
fn cancelled_while<T: Send + 'static>(
    rt: &Runtime,
    wait: impl FnOnce() -> T + Send + 'static,
) -> (T, bool) {
    let entered = Arc::new(AtomicBool::new(false));
    let e = Arc::clone(&entered);
    let before = rt.stats().parks;
    let h = rt.spawn(move || {
        e.store(true, Ordering::SeqCst);
        let v = wait();
        (v, cancel::is_cancelled())
    });
    // Parked after it entered: it waits in `wait` (none of the waits
    // below can end without the cancellation).
    wait_for(|| entered.load(Ordering::SeqCst) && rt.stats().parks > before);
    assert!(!h.is_finished(), "the wait ended by itself");
    h.cancel();
    h.join().expect("the cancelled coroutine returned")
}

/// Cancels the coroutine before it runs at all: its first wait ends at
/// once.
fn cancelled_before<T: Send + 'static>(
    rt: &Runtime,
    wait: impl FnOnce() -> T + Send + 'static,
) -> T {
    let gate = Arc::new(std::sync::Barrier::new(2));
    let g = Arc::clone(&gate);
    let h = rt.spawn(move || {
        g.wait();
        wait()
    });
    h.cancel();
    gate.wait();
    h.join().expect("the cancelled coroutine returned")
}

#[test]
fn channel_waits_of_a_cancelled_coroutine_find_the_channel_disconnected() {
    bounded("channels", || {
        let rt = runtime(2);
        for early in [false, true] {
            let run = |f: Box<dyn FnOnce() -> bool + Send>| {
                if early {
                    cancelled_before(&rt, f)
                } else {
                    cancelled_while(&rt, f).0
                }
            };
            let (tx, rx) = mpsc::channel::<u32>();
            assert!(run(Box::new(
                move || rx.recv() == Err(std::sync::mpsc::RecvError)
            )));
            drop(tx);
            let (tx, rx) = mpsc::channel::<u32>();
            assert!(run(Box::new(move || {
                rx.recv_timeout(FOREVER) == Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
            })));
            drop(tx);
            let (tx, rx) = mpmc::channel::<u32>();
            assert!(run(Box::new(move || rx.recv().is_err())));
            drop(tx);
            let (tx, rx) = oneshot::channel::<u32>();
            assert!(run(Box::new(move || rx.recv().is_err())));
            // The receiver is gone: the sender gets its value back.
            assert_eq!(tx.send(5).unwrap_err(), 5);
            let (tx, mut rx) = watch::channel(0u32);
            let _ = rx.borrow_and_update();
            assert!(run(Box::new(move || rx.changed().is_err())));
            drop(tx);
            let (tx, mut rx) = broadcast::channel::<u32>(4);
            assert!(run(Box::new(move || {
                rx.recv() == Err(broadcast::RecvError::Closed)
            })));
            drop(tx);
            // A rendezvous send and a full bounded send get their value
            // back; nothing is delivered.
            let (tx, rx) = mpsc::sync_channel::<u32>(0);
            assert!(run(Box::new(move || tx.send(11).unwrap_err().0 == 11)));
            assert!(rx.try_recv().is_err());
            let (tx, rx) = mpsc::sync_channel::<u32>(1);
            tx.send(1).unwrap();
            assert!(run(Box::new(move || tx.send(12).unwrap_err().0 == 12)));
            assert_eq!(rx.recv().unwrap(), 1);
            assert!(rx.recv().is_err());
        }
    });
}

#[test]
fn a_cancelled_coroutine_still_receives_what_is_already_there() {
    bounded("ready values", || {
        let rt = runtime(2);
        let (tx, rx) = mpsc::channel::<u32>();
        tx.send(7).unwrap();
        tx.send(8).unwrap();
        let got = cancelled_before(&rt, move || {
            let v: Vec<u32> = rx.iter().collect();
            (v, cancel::is_cancelled())
        });
        assert_eq!(got, (vec![7, 8], true));
        // The sender still works: the channel was never disconnected.
        drop(tx);
    });
}

#[test]
fn sleep_and_interval_return_early_when_cancelled() {
    bounded("sleep", || {
        let rt = runtime(1);
        let t = Instant::now();
        let ((), seen) = cancelled_while(&rt, || time::sleep(FOREVER));
        assert!(seen);
        let ((), _) = cancelled_while(&rt, || time::sleep(Duration::MAX));
        let (due, _) = cancelled_while(&rt, || {
            let mut iv = time::interval_at(Instant::now() + FOREVER, Duration::from_secs(1));
            let due = iv.tick();
            // The schedule did not move on.
            assert_eq!(iv.deadline(), due);
            due
        });
        assert!(due > Instant::now());
        assert!(t.elapsed() < FOREVER);
    });
}

#[test]
fn timed_waits_report_their_timeout_when_cancelled() {
    bounded("timed waits", || {
        let rt = runtime(2);
        let m = Arc::new(Mutex::new(()));
        let held = m.lock();
        let m2 = Arc::clone(&m);
        assert!(cancelled_while(&rt, move || m2.lock_timeout(FOREVER).is_none()).0);
        drop(held);

        let l = Arc::new(RwLock::new(()));
        let r = l.read();
        let l2 = Arc::clone(&l);
        assert!(cancelled_while(&rt, move || l2.write_timeout(FOREVER).is_none()).0);
        drop(r);

        let s = Arc::new(Semaphore::new(0));
        let s2 = Arc::clone(&s);
        assert!(cancelled_while(&rt, move || s2.acquire_timeout(FOREVER).is_none()).0);

        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let p2 = Arc::clone(&pair);
        assert!(
            cancelled_while(&rt, move || {
                let g = p2.0.lock();
                let (g, r) = p2.1.wait_timeout_while(g, FOREVER, |ready| !*ready);
                r.timed_out() && !*g
            })
            .0
        );

        let n = Arc::new(Notify::new());
        let n2 = Arc::clone(&n);
        assert!(!cancelled_while(&rt, move || n2.notified_timeout(FOREVER)).0);

        let wg = Arc::new(WaitGroup::new());
        wg.add(1);
        let wg2 = Arc::clone(&wg);
        assert!(!cancelled_while(&rt, move || wg2.wait_timeout(FOREVER)).0);

        let b = Arc::new(Barrier::new(2));
        let b2 = Arc::clone(&b);
        assert!(cancelled_while(&rt, move || b2.wait_timeout(FOREVER).is_none()).0);

        // join_timeout gives the handle back: the target can be joined
        // later, its value is not lost.
        let (tx, rx) = mpsc::channel::<u32>();
        let target = rt.spawn(move || rx.recv().unwrap());
        let (target, _) = cancelled_while(&rt, move || {
            target
                .join_timeout(FOREVER)
                .expect_err("cut short: the handle comes back")
        });
        tx.send(9).unwrap();
        assert_eq!(target.join().unwrap(), 9);
    });
}

#[test]
fn locks_and_plain_joins_are_not_cancellation_points() {
    bounded("not cancellation points", || {
        let rt = runtime(2);
        let m = Arc::new(Mutex::new(0));
        let held = m.lock();
        let m2 = Arc::clone(&m);
        let before = rt.stats().parks;
        let h = rt.spawn(move || {
            *m2.lock() += 1;
            cancel::is_cancelled()
        });
        wait_for(|| rt.stats().parks > before);
        h.cancel();
        // Still waiting for the lock.
        thread::sleep(Duration::from_millis(20));
        assert!(!h.is_finished());
        drop(held);
        assert!(
            h.join().unwrap(),
            "it got the lock, then saw it was cancelled"
        );
        assert_eq!(*m.lock(), 1);
    });
}

#[test]
fn io_waits_fail_with_a_cancellation_error() {
    bounded("io", || {
        let rt = runtime(2);
        // greenstack's own sockets: accept, read, and std's read_exact over
        // them (which retries `Interrupted`, not this).
        let listener = greenstack::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (e, _) = cancelled_while(&rt, move || listener.accept().map(|_| ()).unwrap_err());
        assert!(cancel::is_cancellation(&e), "{e:?}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr2 = listener.local_addr().unwrap();
        // Connected here: the read is the coroutine's only wait (a park in
        // the connect would be cancelled instead).
        let mut s = greenstack::net::TcpStream::connect(addr2).unwrap();
        let (e, _) = cancelled_while(&rt, move || {
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap_err()
        });
        assert!(cancel::is_cancellation(&e), "{e:?}");

        // std's blocking sockets, through the hooks.
        let mut s = std::net::TcpStream::connect(addr2).unwrap();
        let (e, _) = cancelled_while(&rt, move || {
            let mut buf = [0u8; 4];
            s.read(&mut buf).unwrap_err()
        });
        assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e:?}");
        drop(listener);

        // A pipe (std's UnixStream pair here), and poll(2).
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a2 = a.try_clone().unwrap();
        let (e, _) = cancelled_while(&rt, move || {
            let mut a = a2;
            let mut buf = [0u8; 1];
            a.read(&mut buf).unwrap_err()
        });
        assert!(cancel::is_cancellation(&e), "{e:?}");
        let (r, _) = cancelled_while(&rt, move || {
            use std::os::fd::AsRawFd;
            let mut pfd = libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, -1) };
            (r, std::io::Error::last_os_error().raw_os_error())
        });
        assert_eq!(r, (-1, Some(libc::ECANCELED)));
        drop(a);

        // Waiting for a child process.
        let child = std::process::Command::new("sleep")
            .arg("3600")
            .spawn()
            .unwrap();
        let ((mut child, e), _) = cancelled_while(&rt, move || {
            let mut child = child;
            let e = child.wait().unwrap_err();
            (child, e)
        });
        assert!(cancel::is_cancellation(&e), "{e:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    });
}

#[test]
fn a_coroutine_decides_what_its_join_returns() {
    bounded("join value", || {
        let rt = runtime(2);
        // It catches the cancellation, finishes its work and returns.
        let (tx, rx) = mpsc::channel::<u32>();
        let (v, seen) = cancelled_while(&rt, move || {
            let mut got = Vec::new();
            while let Ok(v) = rx.recv() {
                got.push(v);
            }
            // Cleanup that waits on a lock still works.
            let m = Mutex::new(got);
            let got = m.lock().clone();
            (got, cancel::check())
        });
        assert_eq!(v, (vec![], Err(Cancelled)));
        assert!(seen);
        drop(tx);
        // Cancelling a finished coroutine changes nothing.
        let h = rt.spawn(|| 3);
        wait_for(|| h.is_finished());
        h.cancel();
        h.cancel();
        assert_eq!(h.join().unwrap(), 3);
        // A plain thread is never cancelled.
        assert!(!cancel::is_cancelled());
        assert_eq!(cancel::check(), Ok(()));
    });
}

#[test]
fn a_token_cancels_its_members_and_those_added_later() {
    bounded("token", || {
        let rt = runtime(2);
        let token = CancelToken::new();
        assert!(!token.is_cancelled());
        let members: Vec<_> = (0..3)
            .map(|_| {
                let h = rt.spawn(move || {
                    time::sleep(FOREVER);
                    cancel::is_cancelled()
                });
                token.add(&h);
                h
            })
            .collect();
        let outsider = rt.spawn(|| {
            time::sleep(Duration::from_millis(50));
            cancel::is_cancelled()
        });
        token.clone().cancel();
        assert!(token.is_cancelled());
        for h in members {
            assert!(h.join().unwrap());
        }
        assert!(!outsider.join().unwrap(), "not a member");
        // Added after the cancel: cancelled at once.
        let late = rt.spawn(|| {
            time::sleep(FOREVER);
            cancel::is_cancelled()
        });
        token.add(&late);
        assert!(late.join().unwrap());
        // A coroutine adds itself.
        let token2 = CancelToken::new();
        let t2 = token2.clone();
        let (tx, rx) = mpsc::channel::<()>();
        let own = rt.spawn(move || {
            t2.add_current();
            tx.send(()).unwrap();
            time::sleep(FOREVER);
            cancel::is_cancelled()
        });
        rx.recv().unwrap();
        token2.cancel();
        assert!(own.join().unwrap());
    });
}

/// A value that never comes, for `timeout`'s waits.
fn silent() -> (mpsc::Sender<u32>, mpsc::Receiver<u32>) {
    mpsc::channel()
}

#[test]
fn timeout_cuts_waits_at_its_deadline_never_before() {
    bounded("timeout", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            start(side, Some(&rt), move || {
                let d = Duration::from_millis(30);
                let (tx, rx) = silent();
                let t = Instant::now();
                let r = time::timeout(d, || rx.recv());
                assert!(t.elapsed() >= d, "{side:?}: cut early");
                let e = r.expect_err("cut");
                assert!(e.into_inner().is_err());
                // Later waits are not cut: the deadline is gone.
                tx.send(4).unwrap();
                assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Ok(4));
                // A wait that is not cut: Ok with the value.
                tx.send(5).unwrap();
                assert_eq!(time::timeout(d, || rx.recv()), Ok(Ok(5)));
                // sleep is cut too.
                let t = Instant::now();
                assert!(time::timeout(d, || time::sleep(FOREVER)).is_err());
                assert!(t.elapsed() >= d && t.elapsed() < FOREVER);
                // Nested: the earlier deadline applies, and the inner
                // one's end does not lift the outer one.
                let t = Instant::now();
                let r = time::timeout(d, || {
                    let inner = time::timeout(FOREVER, || rx.recv());
                    (inner.is_err(), rx.recv().is_err())
                });
                assert!(t.elapsed() >= d);
                assert_eq!(r.expect_err("outer cut").into_inner(), (true, true));
                // What the closure got before the deadline is kept.
                tx.send(6).unwrap();
                let r = time::timeout(d, || {
                    let first = rx.recv();
                    let second = rx.recv();
                    (first, second)
                });
                let (first, second) = r.expect_err("second cut").into_inner();
                assert_eq!(first, Ok(6));
                assert!(second.is_err());
                // The deadline is restored after a panic out of the closure.
                let p = std::panic::catch_unwind(|| time::timeout(d, || panic!("boom")));
                assert!(p.is_err());
                tx.send(7).unwrap();
                assert_eq!(rx.recv(), Ok(7));
            })
            .join();
        }
    });
}

#[test]
fn timeout_fails_io_with_timed_out() {
    bounded("timeout io", || {
        let rt = runtime(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let h = rt.spawn(move || {
            let d = Duration::from_millis(30);
            let mut ours = greenstack::net::TcpStream::connect(addr).unwrap();
            let mut std_s = std::net::TcpStream::connect(addr).unwrap();
            let mut buf = [0u8; 1];
            let a = time::timeout(d, || ours.read(&mut buf)).expect_err("cut");
            let b = time::timeout(d, || std_s.read(&mut buf)).expect_err("cut");
            // Still usable afterwards.
            ours.write_all(b"x").unwrap();
            (a.into_inner().unwrap_err(), b.into_inner().unwrap_err())
        });
        let (a, b) = h.join().unwrap();
        assert_eq!(a.kind(), std::io::ErrorKind::TimedOut, "{a:?}");
        assert_eq!(b.kind(), std::io::ErrorKind::TimedOut, "{b:?}");
        drop(listener);
    });
}

#[test]
fn a_cancelled_scoped_coroutine_stops_and_the_scope_returns() {
    bounded("scope", || {
        let rt = runtime(2);
        rt.block_on(|| {
            let (tx, rx) = mpsc::channel::<u32>();
            let mut seen = None;
            greenstack::scope(|s| {
                let h = s.spawn(|| {
                    let r = rx.recv();
                    seen = Some(cancel::is_cancelled());
                    r
                });
                h.cancel();
                assert!(h.join().unwrap().is_err());
            });
            assert_eq!(seen, Some(true));
            drop(tx);
        });
    });
}
