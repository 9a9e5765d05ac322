//! Waits cut short by an unwind. Dropping a runtime cancels the coroutines
//! parked in it by unwinding them from their park; every wait in
//! `greenstack::sync` must then leave its queue, and pass on what reached it
//! meanwhile (permits, a `notify_one`, a value), because the primitive may
//! be shared with threads and other runtimes that go on using it.
//!
//! Two shapes of test:
//!
//! - *Cancelled while queued*: a coroutine parks in a wait, the runtime is
//!   dropped, and a plain thread then uses the primitive. A dead waiter left
//!   in the queue would take the next permit, notification or value.
//! - *Cancelled after the hand-over*: the permit (notification, value) is
//!   handed to the parked coroutine while its only worker is kept busy by a
//!   second coroutine, which then drops the runtime itself, so the worker
//!   stops before it resumes the first: the first is unwound holding
//!   something it never returned to its caller, and must pass it on. (Were
//!   the scheduler to resume it first instead, it would finish normally and
//!   these tests would still pass.)
//!
//! Parked means counted in `RuntimeStats::parks` (the coroutines here park
//! nowhere else). Every test runs under a hang guard.

mod common;
#[allow(unused_imports)]
use common::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use greenstack::sync::{mpmc, mpsc, Condvar, Mutex, RwLock, Semaphore};
use greenstack::Runtime;

/// A long wait that must not time out: a hang guard inside the test.
const LONG: Duration = Duration::from_secs(60);

/// Waits until `rt`'s coroutines have parked `n` times in all.
fn wait_parks(rt: &Runtime, n: u64) {
    while rt.stats().parks < n {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sets its flag when dropped: whether a coroutine's closure has ended,
/// returned or unwound.
struct Gone(Arc<AtomicBool>);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls `flag` until it is set.
fn wait_flag(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The "cancelled after the hand-over" shape (module docs): on a 1-worker
/// runtime, `wait` runs in a coroutine until it parks; a second coroutine
/// then keeps the worker busy while `hand_over` runs on this thread; then
/// that coroutine drops the runtime, and this returns once `wait`'s
/// coroutine has ended (unwound, or, with another scheduler, finished).
fn cancel_after_hand_over(wait: impl FnOnce() + Send + 'static, hand_over: impl FnOnce()) {
    let rt = runtime(1);
    let gone = Arc::new(AtomicBool::new(false));
    {
        let gone = Gone(Arc::clone(&gone));
        rt.spawn(move || {
            let _gone = gone;
            wait();
        });
    }
    wait_parks(&rt, 1);
    let busy = Arc::new(AtomicBool::new(false));
    let slot: Arc<std::sync::Mutex<Option<Runtime>>> = Arc::new(std::sync::Mutex::new(None));
    {
        let (busy, slot) = (Arc::clone(&busy), Arc::clone(&slot));
        rt.spawn(move || {
            busy.store(true, Ordering::SeqCst);
            // Spin without yielding: the worker runs nothing else meanwhile.
            let rt = loop {
                if let Some(rt) = slot.lock().unwrap().take() {
                    break rt;
                }
                std::hint::spin_loop();
            };
            // Shutdown begins here; the worker stops once we return.
            drop(rt);
        });
    }
    wait_flag(&busy);
    hand_over();
    *slot.lock().unwrap() = Some(rt);
    wait_flag(&gone);
}

// --------------------------------------------------------------- locks ---

/// A greenstack `Mutex` shared with a plain thread: a coroutine blocked in
/// `lock()` when its runtime is dropped must not keep the lock for ever.
/// Before the fix the thread's unlock handed the lock to the dead waiter:
/// `try_lock` gave `None` and `lock` hung.
#[test]
fn mutex_waiter_cancelled_at_shutdown_does_not_keep_the_lock() {
    bounded("mutex waiter cancelled", || {
        let m = Arc::new(Mutex::new(0u32));
        let held = m.lock();
        let rt = runtime(1);
        let m2 = Arc::clone(&m);
        rt.spawn(move || *m2.lock() += 1);
        wait_parks(&rt, 1);
        drop(rt);
        drop(held);
        let g = m.try_lock();
        assert!(g.is_some(), "the lock went to the cancelled waiter");
        drop(g);
        *m.lock() += 10;
        assert_eq!(*m.lock(), 10, "the cancelled waiter never held the lock");
    });
}

/// As above, with the lock handed to the waiter just before it is unwound:
/// it must pass the lock on.
#[test]
fn mutex_granted_to_a_cancelled_waiter_is_passed_on() {
    bounded("mutex grant passed on", || {
        let m = Arc::new(Mutex::new(0u32));
        let held = m.lock();
        let m2 = Arc::clone(&m);
        cancel_after_hand_over(move || *m2.lock() += 1, move || drop(held));
        assert!(m.try_lock().is_some(), "the lock died with its waiter");
        drop(m.lock());
    });
}

/// RwLock (the same semaphore inside): a writer and a reader cancelled
/// while queued behind a thread's read lock must not keep it.
#[test]
fn rwlock_waiters_cancelled_at_shutdown_leave_the_queue() {
    bounded("rwlock waiters cancelled", || {
        let l = Arc::new(RwLock::new(0u32));
        let read = l.read();
        let rt = runtime(1);
        {
            let l = Arc::clone(&l);
            rt.spawn(move || *l.write() += 1);
        }
        wait_parks(&rt, 1);
        {
            // Queued behind the writer (FIFO), so it parks too.
            let l = Arc::clone(&l);
            rt.spawn(move || drop(l.read()));
        }
        wait_parks(&rt, 2);
        drop(rt);
        drop(read);
        assert!(l.try_write().is_some(), "a cancelled waiter kept the lock");
        assert!(l.try_read().is_some());
        *l.write() += 10;
        assert_eq!(*l.read(), 10);
    });
}

// ----------------------------------------------------------- semaphore ---

/// A coroutine cancelled while waiting for a permit must not take the next
/// one from a live waiter (a plain thread here).
#[test]
fn semaphore_waiter_cancelled_at_shutdown_leaves_the_queue() {
    bounded("semaphore waiter cancelled", || {
        let sem = Arc::new(Semaphore::new(0));
        let rt = runtime(1);
        {
            let sem = Arc::clone(&sem);
            rt.spawn(move || sem.acquire().forget());
        }
        wait_parks(&rt, 1);
        drop(rt);
        let waiter = {
            let sem = Arc::clone(&sem);
            std::thread::spawn(move || sem.acquire_timeout(LONG).map(|g| g.forget()).is_some())
        };
        sem.add_permits(1);
        assert!(
            waiter.join().unwrap(),
            "the permit went to the cancelled waiter"
        );
        assert_eq!(sem.available_permits(), 0);
    });
}

/// Permits granted to a waiter that is then unwound go back, and on to
/// the next waiter.
#[test]
fn semaphore_permits_granted_to_a_cancelled_waiter_are_passed_on() {
    bounded("semaphore grant passed on", || {
        let sem = Arc::new(Semaphore::new(0));
        let sem2 = Arc::clone(&sem);
        let sem3 = Arc::clone(&sem);
        cancel_after_hand_over(
            move || sem2.acquire_many(2).forget(),
            move || sem3.add_permits(2),
        );
        assert_eq!(sem.available_permits(), 2, "permits died with the waiter");
        assert!(sem.try_acquire_many(2).is_some());
    });
}

// ------------------------------------------------------------- condvar ---

/// A coroutine cancelled in `Condvar::wait` must not take a later
/// `notify_one` meant for a live waiter (a plain thread, queued after it).
/// Before the fix the notification went to the dead waiter and the live one
/// waited until its timeout.
#[test]
fn condvar_waiter_cancelled_at_shutdown_does_not_take_a_notification() {
    bounded("condvar waiter cancelled", || {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let rt = runtime(1);
        {
            let pair = Arc::clone(&pair);
            rt.spawn(move || {
                let (m, cv) = &*pair;
                drop(cv.wait(m.lock()));
            });
        }
        wait_parks(&rt, 1);
        let ready = Arc::new(AtomicBool::new(false));
        let live = {
            let (pair, ready) = (Arc::clone(&pair), Arc::clone(&ready));
            std::thread::spawn(move || {
                let (m, cv) = &*pair;
                let g = m.lock();
                ready.store(true, Ordering::SeqCst);
                let (_g, r) = cv.wait_timeout(g, LONG);
                !r.timed_out()
            })
        };
        wait_flag(&ready);
        // The live waiter queued itself before it released the mutex, so
        // once we hold the mutex it waits behind the coroutine.
        drop(pair.0.lock());
        drop(rt);
        pair.1.notify_one();
        assert!(
            live.join().unwrap(),
            "the notification went to the cancelled waiter"
        );
    });
}

/// A `notify_one` that reached a waiter being unwound is passed on to the
/// next waiter.
#[test]
fn condvar_notification_to_a_cancelled_waiter_is_passed_on() {
    bounded("condvar notification passed on", || {
        let pair = Arc::new((Mutex::new(()), Condvar::new()));
        let ready = Arc::new(AtomicBool::new(false));
        let live = {
            let (pair, ready) = (Arc::clone(&pair), Arc::clone(&ready));
            // Queued second: it starts once the coroutine is parked.
            move || {
                std::thread::spawn(move || {
                    let (m, cv) = &*pair;
                    let g = m.lock();
                    ready.store(true, Ordering::SeqCst);
                    let (_g, r) = cv.wait_timeout(g, LONG);
                    !r.timed_out()
                })
            }
        };
        let mut live_thread = None;
        let pair2 = Arc::clone(&pair);
        cancel_after_hand_over(
            move || {
                let (m, cv) = &*pair2;
                drop(cv.wait(m.lock()));
            },
            || {
                live_thread = Some(live());
                wait_flag(&ready);
                drop(pair.0.lock());
                // Goes to the coroutine, first in the queue.
                pair.1.notify_one();
            },
        );
        assert!(
            live_thread.unwrap().join().unwrap(),
            "the notification died with the cancelled waiter"
        );
    });
}

// ------------------------------------------------------------ channels ---

/// A value handed to a receiver that is unwound before it returns it goes
/// back to the channel, for the other receivers.
#[test]
fn channel_value_handed_to_a_cancelled_receiver_is_passed_on() {
    bounded("channel value passed on", || {
        let (tx, rx) = mpmc::channel::<u32>();
        let rx2 = rx.clone();
        let got = Arc::new(AtomicUsize::new(0));
        let got2 = Arc::clone(&got);
        cancel_after_hand_over(
            move || {
                if rx2.recv().is_ok() {
                    got2.fetch_add(1, Ordering::SeqCst);
                }
            },
            || tx.send(7).unwrap(),
        );
        let here = rx.try_recv();
        // Either the coroutine returned it (another scheduler) or it is
        // back in the channel.
        match got.load(Ordering::SeqCst) {
            0 => assert_eq!(here, Ok(7), "the value died with the receiver"),
            _ => assert_eq!(here, Err(mpmc::TryRecvError::Empty)),
        }
    });
}

/// Same for `mpsc` with the receiver shared by reference: the value comes
/// back to the front of the queue, before those sent after it.
#[test]
fn mpsc_value_handed_to_a_cancelled_receiver_keeps_its_place() {
    bounded("mpsc value passed on", || {
        let (tx, rx) = mpsc::channel::<u32>();
        let rx = Arc::new(rx);
        let rx2 = Arc::clone(&rx);
        cancel_after_hand_over(
            move || {
                let _ = rx2.recv();
            },
            || {
                tx.send(1).unwrap();
                tx.send(2).unwrap();
            },
        );
        assert_eq!(rx.try_recv(), Ok(1), "the value died with the receiver");
        assert_eq!(rx.try_recv(), Ok(2));
    });
}

/// An unwound rendezvous sender takes its value back: its `send` never
/// returned, so the value must not be delivered, and a later send and
/// receive must pair up as usual.
#[test]
fn rendezvous_sender_cancelled_at_shutdown_takes_its_value_back() {
    bounded("rendezvous sender cancelled", || {
        let (tx, rx) = mpsc::sync_channel::<u32>(0);
        let rt = runtime(1);
        {
            let tx = tx.clone();
            rt.spawn(move || {
                let _ = tx.send(1);
            });
        }
        wait_parks(&rt, 1);
        drop(rt);
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Empty));
        let sender = std::thread::spawn(move || tx.send(2));
        assert_eq!(rx.recv_timeout(LONG), Ok(2));
        sender.join().unwrap().unwrap();
    });
}

/// A rendezvous sender that times out takes its value back and lets the
/// senders waiting for room in. Before the fix they were not woken: a
/// receiver arriving next waited on an empty queue while they waited for
/// room, for ever.
#[test]
fn rendezvous_send_timeout_lets_waiting_senders_in() {
    bounded("rendezvous timeout wakes senders", || {
        let (tx, rx) = mpsc::sync_channel::<u32>(0);
        let rt = runtime(1);
        let timed_out = {
            let tx = tx.clone();
            rt.spawn(move || tx.send_timeout(1, Duration::from_millis(300)).is_err())
        };
        wait_parks(&rt, 1);
        // Waits for room behind the first (if it gets there before the
        // first times out; otherwise the test passes without the race).
        let second = rt.spawn(move || tx.send(2));
        assert!(timed_out.join().unwrap(), "nobody received the first");
        assert_eq!(rx.recv_timeout(LONG), Ok(2), "the second never got in");
        second.join().unwrap().unwrap();
    });
}
