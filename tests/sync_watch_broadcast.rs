//! `sync::watch` and `sync::broadcast`: tokio's semantics for blocking
//! code, from coroutines and plain threads.

mod common;

use std::time::{Duration, Instant};

use common::bounded;
use greenstack::sync::{broadcast, watch};
use greenstack::Runtime;

const T: Duration = Duration::from_millis(20);

#[test]
fn watch_keeps_the_latest_value_and_wakes_receivers() {
    bounded("watch", || {
        let rt = Runtime::new().unwrap();
        let (tx, mut rx) = watch::channel(0u32);
        let late = tx.subscribe();
        // A coroutine waits for the first change.
        let waiter = {
            let mut rx = rx.clone();
            rt.spawn(move || {
                rx.changed().unwrap();
                *rx.borrow_and_update()
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        tx.send(1).unwrap();
        assert_eq!(waiter.join().unwrap(), 1);
        // Sends coalesce: one change, the latest value.
        tx.send(2).unwrap();
        tx.send(3).unwrap();
        rx.changed().unwrap();
        assert_eq!(*rx.borrow_and_update(), 3);
        assert_eq!(rx.has_changed(), Ok(false));
        let t = Instant::now();
        assert_eq!(rx.changed_timeout(T), Ok(false));
        assert!(t.elapsed() >= T, "changed_timeout gave up early");
        // A subscriber has seen the value current when it subscribed.
        let mut fresh = tx.subscribe();
        assert_eq!(fresh.has_changed(), Ok(false));
        assert_eq!(late.has_changed(), Ok(true));
        assert_eq!(*late.borrow(), 3);
        assert_eq!(tx.send_replace(4), 3);
        drop(tx);
        // A change made before the sender went still counts, then Err.
        fresh.changed().unwrap();
        assert_eq!(*fresh.borrow(), 4);
        assert_eq!(fresh.changed(), Err(watch::RecvError));
        let (tx, rx) = watch::channel(1);
        drop(rx);
        assert_eq!(tx.send(2), Err(watch::SendError(2)));
        assert_eq!(
            tx.send_replace(3),
            1,
            "send_replace works without receivers"
        );
    });
}

#[test]
fn broadcast_gives_every_value_to_every_receiver() {
    bounded("broadcast", || {
        let rt = Runtime::new().unwrap();
        let (tx, mut rx1) = broadcast::channel(16);
        let mut rx2 = tx.subscribe();
        let in_coroutine =
            rt.spawn(move || (0..5).map(|_| rx2.recv().unwrap()).collect::<Vec<u32>>());
        let on_thread =
            std::thread::spawn(move || (0..5).map(|_| rx1.recv().unwrap()).collect::<Vec<u32>>());
        std::thread::sleep(Duration::from_millis(20));
        for i in 0..5 {
            assert_eq!(tx.send(i), Ok(2));
        }
        assert_eq!(in_coroutine.join().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(on_thread.join().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(tx.send(9), Err(broadcast::SendError(9)), "no receiver left");
    });
}

#[test]
fn a_lagging_receiver_is_told_what_it_lost() {
    bounded("broadcast lag", || {
        let (tx, mut rx) = broadcast::channel(2);
        for i in 0..5u32 {
            tx.send(i).unwrap();
        }
        assert_eq!(rx.recv(), Err(broadcast::RecvError::Lagged(3)));
        assert_eq!(rx.recv(), Ok(3));
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Err(broadcast::TryRecvError::Empty));
        let t = Instant::now();
        assert_eq!(rx.recv_timeout(T), Err(broadcast::TryRecvError::Empty));
        assert!(t.elapsed() >= T, "recv_timeout gave up early");
        tx.send(5).unwrap();
        drop(tx);
        assert_eq!(rx.recv(), Ok(5), "values sent before the close are kept");
        assert_eq!(rx.recv(), Err(broadcast::RecvError::Closed));
    });
}
