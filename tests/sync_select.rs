//! `sync::select::Select`: the first ready of several operations, from
//! coroutines and plain threads; Go's fairness among ready cases, the
//! default case, deadlines never early, disconnects, sends, joins, file
//! descriptors, and no value lost or received twice under contention.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use greenstack::sync::select::{Select, SelectTimeoutError, TrySelectError};
use greenstack::sync::{mpmc, mpsc, oneshot};
use greenstack::time;

const FOREVER: Duration = Duration::from_secs(3600);

#[test]
fn the_ready_operation_is_selected_and_completed() {
    bounded("ready one", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            let rt2 = runtime(1);
            start(side, Some(&rt), move || {
                let (tx1, rx1) = mpsc::channel::<u32>();
                let (_tx2, rx2) = mpsc::channel::<u32>();
                // Sent while the select waits (parked or blocked).
                rt2.spawn(move || {
                    time::sleep(Duration::from_millis(20));
                    tx1.send(5).unwrap();
                });
                let mut sel = Select::new();
                let a = sel.recv(&rx1);
                let _b = sel.recv(&rx2);
                let op = sel.select();
                assert_eq!(op.index(), a, "{side:?}");
                assert_eq!(op.recv(&rx1), Ok(5));
            })
            .join();
        }
    });
}

#[test]
fn ready_cases_are_picked_fairly() {
    bounded("fairness", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            let counts = start(side, Some(&rt), || {
                let (tx1, rx1) = mpsc::channel::<u32>();
                let (tx2, rx2) = mpsc::channel::<u32>();
                let (tx3, rx3) = mpsc::channel::<u32>();
                for i in 0..3000 {
                    tx1.send(i).unwrap();
                    tx2.send(i).unwrap();
                    tx3.send(i).unwrap();
                }
                let mut counts = [0u32; 3];
                let mut sel = Select::new();
                let idx = [sel.recv(&rx1), sel.recv(&rx2), sel.recv(&rx3)];
                for _ in 0..3000 {
                    let op = sel.select();
                    let i = op.index();
                    let r = [&rx1, &rx2, &rx3][idx.iter().position(|&x| x == i).unwrap()];
                    op.recv(r).unwrap();
                    counts[i] += 1;
                }
                counts
            })
            .join();
            // Each would get 1,000 on average; below 800 has a probability
            // far under 1e-9.
            assert!(counts.iter().all(|&c| c > 800), "{side:?}: {counts:?}");
        }
    });
}

#[test]
fn default_and_deadline_cases() {
    bounded("default and deadline", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            start(side, Some(&rt), move || {
                let (tx, rx) = mpsc::channel::<u32>();
                let mut sel = Select::new();
                sel.recv(&rx);
                assert_eq!(sel.try_select().err(), Some(TrySelectError));
                assert_eq!(sel.try_ready(), Err(TrySelectError));
                let d = Duration::from_millis(30);
                let t = Instant::now();
                assert_eq!(sel.select_timeout(d).err(), Some(SelectTimeoutError));
                assert!(t.elapsed() >= d, "{side:?}: returned early");
                tx.send(1).unwrap();
                // `ready` does not take the value.
                assert_eq!(sel.try_ready(), Ok(0));
                assert_eq!(sel.ready_timeout(FOREVER), Ok(0));
                let op = sel.try_select().unwrap();
                assert_eq!(op.recv(&rx), Ok(1));
            })
            .join();
        }
    });
}

#[test]
fn a_disconnected_channel_is_ready_with_its_error() {
    bounded("disconnect", || {
        let (tx, rx) = mpsc::channel::<u32>();
        let (_keep, idle) = mpmc::channel::<u32>();
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(tx);
        });
        let mut sel = Select::new();
        let a = sel.recv(&rx);
        sel.recv(&idle);
        let op = sel.select();
        assert_eq!(op.index(), a);
        assert!(op.recv(&rx).is_err());
        dropper.join().unwrap();
    });
}

#[test]
fn sends_are_ready_when_they_would_not_wait() {
    bounded("sends", || {
        let rt = runtime(2);
        rt.block_on(|| {
            let (tx, rx) = mpsc::sync_channel::<u32>(1);
            tx.send(1).unwrap();
            let mut sel = Select::new();
            let s = sel.send(&tx);
            assert!(sel.try_select().is_err(), "full");
            let taker = greenstack::spawn(move || {
                time::sleep(Duration::from_millis(20));
                let first = rx.recv().unwrap();
                let second = rx.recv().unwrap();
                (first, second)
            });
            let op = sel.select();
            assert_eq!(op.index(), s);
            op.send(&tx, 2).unwrap();
            assert_eq!(taker.join().unwrap(), (1, 2));

            // A rendezvous channel is ready while a receiver waits.
            let (tx, rx) = mpsc::sync_channel::<u32>(0);
            let taker = greenstack::spawn(move || rx.recv().unwrap());
            let mut sel = Select::new();
            sel.send(&tx);
            let op = sel.select();
            op.send(&tx, 9).unwrap();
            assert_eq!(taker.join().unwrap(), 9);
        });
    });
}

#[test]
fn a_join_a_oneshot_and_a_file_descriptor_can_be_selected() {
    bounded("join, oneshot, fd", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            let rt2 = runtime(1);
            start(side, Some(&rt), move || {
                let (_tx, rx) = mpsc::channel::<u32>();
                let h = rt2.spawn(|| {
                    time::sleep(Duration::from_millis(20));
                    3
                });
                let mut sel = Select::new();
                sel.recv(&rx);
                let j = sel.join(&h);
                assert_eq!(sel.select().index(), j, "{side:?}");
                drop(sel);
                assert_eq!(h.join().unwrap(), 3);

                let (otx, orx) = oneshot::channel::<&str>();
                rt2.spawn(move || {
                    time::sleep(Duration::from_millis(20));
                    otx.send("done").unwrap();
                });
                let mut sel = Select::new();
                sel.recv(&rx);
                let o = sel.recv(&orx);
                let op = sel.select();
                assert_eq!(op.index(), o);
                assert_eq!(op.recv(&orx), Ok("done"));
                drop(sel);

                let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                rt2.spawn(move || {
                    time::sleep(Duration::from_millis(20));
                    (&b).write_all(b"x").unwrap();
                    b
                });
                let mut sel = Select::new();
                sel.recv(&rx);
                let r = sel.readable(&a);
                let w = sel.writable(&a);
                // Writable at once.
                assert_eq!(sel.select().index(), w);
                sel.remove(w);
                assert_eq!(sel.select().index(), r, "{side:?}");
            })
            .join();
        }
    });
}

#[test]
fn contended_selects_receive_every_value_exactly_once() {
    bounded("contention", || {
        let rt = runtime(2);
        let (tx1, rx1) = mpmc::channel::<u32>();
        let (tx2, rx2) = mpmc::bounded::<u32>(4);
        let (out_tx, out_rx) = mpsc::channel::<u32>();
        let mut consumers = Vec::new();
        for _ in 0..4 {
            let (rx1, rx2, out) = (rx1.clone(), rx2.clone(), out_tx.clone());
            consumers.push(rt.spawn(move || {
                let mut open = [true, true];
                while open.iter().any(|&o| o) {
                    let mut sel = Select::new();
                    let mut which = Vec::new();
                    if open[0] {
                        which.push((sel.recv(&rx1), 0));
                    }
                    if open[1] {
                        which.push((sel.recv(&rx2), 1));
                    }
                    let op = sel.select();
                    let k = which.iter().find(|(i, _)| *i == op.index()).unwrap().1;
                    let r = if k == 0 { op.recv(&rx1) } else { op.recv(&rx2) };
                    match r {
                        Ok(v) => out.send(v).unwrap(),
                        Err(_) => open[k] = false,
                    }
                }
            }));
        }
        drop((rx1, rx2, out_tx));
        let p1 = rt.spawn(move || (0..2000).for_each(|i| tx1.send(i).unwrap()));
        let p2 = rt.spawn(move || (2000..4000).for_each(|i| tx2.send(i).unwrap()));
        p1.join().unwrap();
        p2.join().unwrap();
        for c in consumers {
            c.join().unwrap();
        }
        let got: Vec<u32> = out_rx.iter().collect();
        assert_eq!(got.len(), 4000, "lost or duplicated values");
        let set: HashSet<u32> = got.into_iter().collect();
        assert_eq!(set.len(), 4000);
    });
}

#[test]
fn a_cancelled_coroutine_s_timed_select_ends() {
    bounded("cancel", || {
        let rt = runtime(2);
        let (_tx, rx) = mpsc::channel::<u32>();
        let rx = Arc::new(rx);
        let before = rt.stats().parks;
        let h = rt.spawn(move || {
            let mut sel = Select::new();
            sel.recv(&*rx);
            sel.select_timeout(FOREVER).map(|op| op.index())
        });
        while rt.stats().parks == before {
            std::thread::sleep(Duration::from_millis(1));
        }
        h.cancel();
        assert_eq!(h.join().unwrap(), Err(SelectTimeoutError));
    });
}

#[test]
fn the_select_macro_in_crossbeam_s_shape() {
    bounded("select!", || {
        let rt = runtime(2);
        for side in [Side::Co, Side::Th] {
            start(side, Some(&rt), move || {
                let (tx1, rx1) = mpsc::channel::<u32>();
                let (tx2, rx2) = mpsc::sync_channel::<u32>(1);
                // Nothing ready: the default case.
                let got = greenstack::select! {
                    recv(rx1) -> v => v.ok(),
                    default => Some(0),
                };
                assert_eq!(got, Some(0), "{side:?}");
                // A deadline, never early.
                let t = Instant::now();
                let d = Duration::from_millis(20);
                let timed_out = greenstack::select! {
                    recv(rx1) -> _v => false,
                    default(d) => true,
                };
                assert!(timed_out && t.elapsed() >= d);
                // A send with room; its value is evaluated only if picked.
                let mut evaluated = 0;
                let sent = greenstack::select! {
                    send(tx2, { evaluated += 1; 7 }) -> res => res.is_ok(),
                    recv(rx1) -> _v => false,
                };
                assert!(sent);
                assert_eq!(evaluated, 1);
                assert_eq!(rx2.recv(), Ok(7));
                // A receive, blocking, bodies as blocks without commas.
                tx1.send(3).unwrap();
                let v = greenstack::select! {
                    recv(rx1) -> v => { v.unwrap() }
                    recv(rx2) -> v => { v.unwrap() + 100 }
                };
                assert_eq!(v, 3);
                drop(tx2);
            })
            .join();
        }
    });
}

/// In a `block_on` root (no worker poller) and with a oneshot whose waker
/// slot another waiter holds, readiness is polled: the select still ends.
#[test]
fn a_select_no_poller_watches_still_ends() {
    bounded("polled select", || {
        let rt = runtime(1);
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            (&b).write_all(b"x").unwrap();
            b
        });
        let idx = rt.block_on(move || {
            let (_tx, rx) = mpsc::channel::<u32>();
            let mut sel = Select::new();
            sel.recv(&rx);
            let r = sel.readable(&a);
            (sel.select().index(), r)
        });
        assert_eq!(idx.0, idx.1);
        drop(writer.join().unwrap());

        // A coroutine waits on the oneshot (holding its waker slot) while
        // another selects on the same receiver.
        let (tx, orx) = oneshot::channel::<u32>();
        let orx = Arc::new(orx);
        let holder = {
            let orx = Arc::clone(&orx);
            rt.spawn(move || orx.recv_timeout(FOREVER).is_ok())
        };
        let selector = {
            let orx = Arc::clone(&orx);
            rt.spawn(move || {
                let mut sel = Select::new();
                sel.recv(&*orx);
                sel.select().index()
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        tx.send(1).unwrap();
        assert_eq!(selector.join().unwrap(), 0);
        let _ = holder.join().unwrap();
    });
}

/// A selected receive's value comes out whole whatever its size (kept
/// inline up to four words, on the heap beyond), and one selected but
/// never received is dropped with the `SelectedOperation`, once.
#[test]
fn selected_values_of_any_size_arrive_whole_and_drop_once() {
    bounded("value sizes", || {
        let rt = runtime(1);
        rt.block_on(|| {
            let (tx_small, rx_small) = mpsc::channel::<(u64, Arc<()>)>();
            let (tx_large, rx_large) = mpsc::channel::<([u64; 16], Arc<()>)>();
            let token = Arc::new(());
            let large: [u64; 16] = std::array::from_fn(|i| i as u64 * 7 + 1);
            tx_small.send((42, Arc::clone(&token))).unwrap();
            tx_large.send((large, Arc::clone(&token))).unwrap();
            for _ in 0..2 {
                let mut sel = Select::new();
                let s = sel.recv(&rx_small);
                let l = sel.recv(&rx_large);
                let op = sel.select();
                match op.index() {
                    i if i == s => assert_eq!(op.recv(&rx_small).unwrap().0, 42),
                    i if i == l => assert_eq!(op.recv(&rx_large).unwrap().0, large),
                    _ => unreachable!(),
                }
            }
            assert_eq!(Arc::strong_count(&token), 1, "both values dropped");
            // Selected, then dropped without `recv`: its value goes with it.
            tx_large.send((large, Arc::clone(&token))).unwrap();
            tx_small.send((1, Arc::clone(&token))).unwrap();
            for _ in 0..2 {
                let mut sel = Select::new();
                sel.recv(&rx_small);
                sel.recv(&rx_large);
                drop(sel.select());
            }
            assert_eq!(Arc::strong_count(&token), 1, "unreceived values dropped");
            assert!(rx_small.try_recv().is_err() && rx_large.try_recv().is_err());
        });
    });
}

/// A select that returns leaves its receive watches behind (kept, so the
/// next select on the same channels registers nothing): a value sent on
/// such a channel later may wake the coroutine once, spuriously. Every
/// later wait must take that in its stride: a sleep still lasts its
/// time, a join still waits for the coroutine's end, and the values are
/// still there for the next receives.
#[test]
fn a_watch_left_by_a_select_cuts_no_later_wait_short() {
    bounded("a watch left behind", || {
        // One worker runs both coroutines: each runs only while the other
        // is parked, which orders the sends after the waits they target.
        let rt = runtime(1);
        rt.spawn(|| {
            let (tx_a, rx_a) = mpsc::channel::<u32>();
            let (tx_b, rx_b) = mpsc::channel::<u32>();
            let (tx_d, rx_d) = mpsc::channel::<u32>();
            let (tx_sig, rx_sig) = mpsc::channel::<()>();
            let selector = greenstack::spawn(move || {
                // Parks (nothing is ready), watching all three; woken by a.
                let got = greenstack::select! {
                    recv(rx_a) -> v => v.unwrap(),
                    recv(rx_b) -> v => v.unwrap() + 100,
                    recv(rx_d) -> v => v.unwrap() + 100,
                };
                let late = greenstack::spawn(|| {
                    time::sleep(Duration::from_millis(100));
                    7
                });
                tx_sig.send(()).unwrap();
                // b comes during the sleep.
                let start = Instant::now();
                time::sleep(Duration::from_millis(100));
                let slept = start.elapsed();
                tx_sig.send(()).unwrap();
                // d comes during the join.
                let joined = late.join().unwrap();
                (
                    got,
                    slept,
                    joined,
                    rx_b.recv().unwrap(),
                    rx_d.recv().unwrap(),
                )
            });
            // The selector runs up to its park in the select.
            greenstack::yield_now();
            tx_a.send(1).unwrap();
            rx_sig.recv().unwrap();
            tx_b.send(2).unwrap();
            rx_sig.recv().unwrap();
            tx_d.send(4).unwrap();
            let (got, slept, joined, b, d) = selector.join().unwrap();
            assert_eq!(got, 1, "a was sent first");
            assert!(slept >= Duration::from_millis(100), "slept {slept:?}");
            assert_eq!((joined, b, d), (7, 2, 4));
        })
        .join()
        .unwrap();
    });
}

/// Completing a selected operation with the wrong end panics, as
/// crossbeam-channel's `SelectedOperation` does: a receive from another
/// receiver than the selected one, and a receive in place of a selected
/// send.
#[test]
fn completing_with_the_wrong_end_panics() {
    let message = |f: &mut dyn FnMut()| {
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .expect_err("completing with the wrong end panics");
        panic_message(p.as_ref())
    };
    let (tx1, rx1) = mpsc::channel::<u64>();
    let (_tx2, rx2) = mpsc::channel::<u64>();
    tx1.send(1).unwrap();
    let mut sel = Select::new();
    sel.recv(&rx1);
    sel.recv(&rx2);
    let mut op = Some(sel.select());
    let m = message(&mut || {
        let _ = op.take().unwrap().recv(&rx2);
    });
    assert!(m.contains("not a receive from this receiver"), "{m}");

    let (tx3, _rx3) = mpsc::channel::<u64>();
    let mut sel = Select::new();
    sel.send(&tx3);
    let mut op = Some(sel.select());
    let m = message(&mut || {
        let _ = op.take().unwrap().recv(&rx1);
    });
    assert!(m.contains("not a receive"), "{m}");
}
