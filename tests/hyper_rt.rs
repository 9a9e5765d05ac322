//! hyper's runtime adaptors (the `hyper` feature): `hyper_rt::Sleep`, the
//! timer hyper arms for every request's header-read timeout.
#![cfg(feature = "hyper")]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::*;
use greenstack::hyper_rt::Sleep;

/// A server arms a 30 s header-read timeout per request and drops it as
/// soon as the request head has arrived. Each dropped `Sleep` must take its
/// timer with it: left armed, a server at 100k req/s would hold 3 million
/// timers (and the tasks their wakers keep alive) at any time.
#[test]
fn a_dropped_sleep_leaves_no_timer_armed() {
    let rt = runtime(1);
    let (armed_tx, armed_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let h = rt.spawn(move || {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..1000 {
            let mut s = Sleep::until(Instant::now() + Duration::from_secs(30));
            assert!(Pin::new(&mut s).poll(&mut cx).is_pending());
        }
        // One kept armed, to show the count sees this worker's timers.
        let mut kept = Sleep::until(Instant::now() + Duration::from_secs(30));
        assert!(Pin::new(&mut kept).poll(&mut cx).is_pending());
        armed_tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    armed_rx.recv().unwrap();
    assert_eq!(rt.stats().timers, 1, "the 1000 dropped sleeps left timers");
    done_tx.send(()).unwrap();
    h.join().unwrap();
    assert_eq!(rt.stats().timers, 0);
}

/// A `Sleep` polled again with another task's waker moves its one timer
/// to that waker, and still fires at its deadline.
#[test]
fn a_sleep_rearmed_for_another_waker_still_fires_once_due() {
    let rt = runtime(1);
    rt.spawn(|| {
        let deadline = Instant::now() + Duration::from_millis(30);
        let mut s = Sleep::until(deadline);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut s).poll(&mut cx).is_pending());
        // Now polled by this coroutine (a waker that wakes another task).
        greenstack::block_on_future(&mut s);
        assert!(Instant::now() >= deadline, "a sleep never ends early");
        assert!(matches!(Pin::new(&mut s).poll(&mut cx), Poll::Ready(())));
    })
    .join()
    .unwrap();
    assert_eq!(rt.stats().timers, 0);
}
