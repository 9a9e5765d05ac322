//! loom models of the oneshot channel (`sync/oneshot.rs`): its one state
//! word, value cell and waker slot, with each end on its own thread.
//!
//! A waiting receiver parks its loom thread (`loom::rt`), so a lost wake-up
//! is a loom deadlock; the value and waker cells are loom cells, so a
//! missing Release/Acquire is a causality violation; a value moved out
//! twice or never dropped shows in the drop count.

use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use crate::sync::oneshot::{channel, RecvTimeoutError, TryRecvError};

/// Counts drops of the value, so "dropped exactly once" can be checked.
#[derive(Debug)]
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A blocking `recv` racing `send`: the value arrives, once, whether the
/// receiver finds it at once, while registering its waker, or after it
/// parked (then the sender's wake-up must reach it).
#[test]
fn loom_oneshot_send_wakes_receiver() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel();
        let value = Tracked(Arc::clone(&drops));
        let sender = thread::spawn(move || tx.send(value).map_err(drop).is_ok());
        let got = rx.recv().expect("the sender sent");
        assert!(sender.join().unwrap(), "the receiver was alive");
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(got);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped more than once");
    });
}

/// A sender dropped without sending releases a waiting receiver with an
/// error.
#[test]
fn loom_oneshot_sender_drop_wakes_receiver() {
    loom::model(|| {
        let (tx, rx) = channel::<u32>();
        let dropper = thread::spawn(move || drop(tx));
        assert!(rx.recv().is_err(), "nothing was sent");
        dropper.join().unwrap();
    });
}

/// `send` racing the receiver's drop: the value is dropped exactly once,
/// by whichever side ends up with it, and `send` gives it back only if the
/// receiver was gone first.
#[test]
fn loom_oneshot_send_races_receiver_drop() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel();
        let value = Tracked(Arc::clone(&drops));
        let sender = thread::spawn(move || match tx.send(value) {
            Ok(()) => false,
            Err(back) => {
                drop(back);
                true
            }
        });
        drop(rx);
        let returned = sender.join().unwrap();
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "the value was not dropped exactly once (returned = {returned})"
        );
    });
}

/// A receiver that registers its waker and gives up at once (a timeout;
/// the same steps as an unwound wait) racing `send`: it gets the value or
/// a timeout, and after a timeout the value is still there for the next
/// look. The waker slot is never raced and no value is taken twice.
#[test]
fn loom_oneshot_timeout_races_send() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel();
        let value = Tracked(Arc::clone(&drops));
        let sender = thread::spawn(move || tx.send(value).map_err(drop).is_ok());
        // A deadline already past: register, then unregister at once.
        let first = rx.recv_timeout(Duration::ZERO);
        assert!(sender.join().unwrap(), "the receiver was alive");
        let got = match first {
            Ok(v) => {
                assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
                v
            }
            Err(RecvTimeoutError::Timeout) => rx.try_recv().expect("sent, not yet taken"),
            Err(e) => panic!("unexpected {e:?}"),
        };
        drop(got);
        drop(rx);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

/// Two threads looking through one `&Receiver` (it is `Sync`) at a sent
/// value: exactly one of them gets it, the other sees it gone.
#[test]
fn loom_oneshot_shared_receiver_takes_once() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel();
        assert!(tx.send(Tracked(Arc::clone(&drops))).is_ok());
        let rx = Arc::new(rx);
        let rx2 = Arc::clone(&rx);
        let other = thread::spawn(move || rx2.try_recv().map(drop).is_ok());
        let mine = rx.try_recv().map(drop).is_ok();
        let theirs = other.join().unwrap();
        assert!(mine != theirs, "taken by both or by neither");
        drop(rx);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "not dropped exactly once");
    });
}
