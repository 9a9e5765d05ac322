//! std's locks inside coroutines park the coroutine, not its worker: a
//! `Mutex` that another coroutine of the same worker holds across a park
//! would block the worker for good (the holder could only run on the
//! blocked thread); its waiter parks instead, by default. With
//! `RuntimeBuilder::hook_std_locks` (an `unsafe` opt-in) so do `RwLock`,
//! `Condvar` and `LazyLock` waits. Crates that keep a parker or latch per
//! thread (tokio's `blocking_recv`, rayon's `install`) must work either
//! way. `thread::park` and std's channels, which wait on the worker
//! thread's own parker word, still block the worker, and must still work.
//!
//! Every scenario that would hang without the hook runs under a hang guard
//! (`common::bounded`); no timing thresholds.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, LazyLock, Mutex, RwLock};
use std::time::Duration;

use greenstack::{Runtime, RuntimeBuilder};

/// A runtime of `n` workers whose std lock waits park (`hook_std_locks`).
fn workers(n: usize) -> Runtime {
    // SAFETY: the coroutines of these tests wait on no lock owned by their
    // thread through a pointer kept per thread (rayon's thread-local latch
    // is recognised).
    unsafe { RuntimeBuilder::default().hook_std_locks(true) }
        .workers(n)
        .build()
        .expect("building a runtime")
}

/// A coroutine that counts a beat every 5 ms while `waiting` holds (with
/// one worker, a beat during a wait means the wait parked).
fn heartbeat(waiting: &Arc<AtomicBool>, beats: &Arc<AtomicUsize>) -> greenstack::JoinHandle<()> {
    let (waiting, beats) = (Arc::clone(waiting), Arc::clone(beats));
    greenstack::spawn(move || {
        while waiting.load(SeqCst) {
            greenstack::time::sleep(Duration::from_millis(5));
            beats.fetch_add(1, SeqCst);
        }
    })
}

/// One worker: `holder` locks, starts a second coroutine that locks too,
/// and parks (a sleep) with the guard held. The second must park in
/// `lock` for the holder to run again; then it gets the lock, after the
/// holder's update. A `Mutex` wait parks by default too.
#[test]
fn a_std_mutex_held_across_a_park_parks_the_next_locker() {
    for all in [false, true] {
        assert_eq!(
            mutex_across_a_park(all),
            ["holder", "waiter"],
            "hook_std_locks({all})"
        );
    }
}

fn mutex_across_a_park(all: bool) -> Vec<&'static str> {
    common::bounded(
        "a std mutex between two coroutines of one worker",
        move || {
            let rt = if all {
                workers(1)
            } else {
                RuntimeBuilder::default().workers(1).build().unwrap()
            };
            rt.block_on(|| {
                let lock = Arc::new(Mutex::new(Vec::new()));
                let l = Arc::clone(&lock);
                let holder = greenstack::spawn(move || {
                    let mut g = l.lock().unwrap();
                    let again = Arc::clone(&l);
                    let waiter = greenstack::spawn(move || again.lock().unwrap().push("waiter"));
                    // Parks with the guard held: the waiter runs meanwhile.
                    std::thread::sleep(Duration::from_millis(20));
                    g.push("holder");
                    drop(g);
                    waiter.join().unwrap();
                });
                holder.join().unwrap();
                let v = lock.lock().unwrap().clone();
                v
            })
        },
    )
}

/// The same with a `RwLock`: a reader waits while a writer of the same
/// worker holds it across a park.
#[test]
fn a_std_rwlock_held_across_a_park_parks_the_reader() {
    let got = common::bounded("a std rwlock between two coroutines of one worker", || {
        let rt = workers(1);
        rt.block_on(|| {
            let lock = Arc::new(RwLock::new(0u32));
            let l = Arc::clone(&lock);
            greenstack::spawn(move || {
                let mut w = l.write().unwrap();
                let again = Arc::clone(&l);
                let reader = greenstack::spawn(move || *again.read().unwrap());
                std::thread::sleep(Duration::from_millis(20));
                *w = 7;
                drop(w);
                reader.join().unwrap()
            })
            .join()
            .unwrap()
        })
    });
    assert_eq!(got, 7);
}

/// A coroutine waits on a std `Condvar` until another coroutine of the
/// same worker sets the flag and notifies: the wait parks.
#[test]
fn a_std_condvar_wait_parks_until_a_coroutine_notifies() {
    let got = common::bounded("a std condvar between two coroutines of one worker", || {
        let rt = workers(1);
        rt.block_on(|| {
            let pair = Arc::new((Mutex::new(None::<u32>), Condvar::new()));
            let p = Arc::clone(&pair);
            let waiter = greenstack::spawn(move || {
                let (m, cv) = &*p;
                let g = cv.wait_while(m.lock().unwrap(), |v| v.is_none()).unwrap();
                g.unwrap()
            });
            // The notifier is a coroutine of the same worker: it runs
            // only if the wait parked.
            greenstack::spawn(move || {
                greenstack::time::sleep(Duration::from_millis(20));
                let (m, cv) = &*pair;
                *m.lock().unwrap() = Some(42);
                cv.notify_all();
            })
            .join()
            .unwrap();
            waiter.join().unwrap()
        })
    });
    assert_eq!(got, 42);
}

/// `Condvar::wait_timeout` with nobody to notify: it times out as std's
/// does, and the worker ran others meanwhile (the heartbeat beat).
#[test]
fn a_std_condvar_wait_timeout_parks_and_times_out() {
    let (beats, timed_out) = common::bounded("a std condvar wait with a timeout", || {
        let rt = workers(1);
        rt.block_on(|| {
            let waiting = Arc::new(AtomicBool::new(true));
            let beats = Arc::new(AtomicUsize::new(0));
            let hb = heartbeat(&waiting, &beats);
            let b = Arc::clone(&beats);
            let (during, r) = greenstack::spawn(move || {
                let pair = (Mutex::new(()), Condvar::new());
                let g = pair.0.lock().unwrap();
                let (_g, r) = pair.1.wait_timeout(g, Duration::from_millis(100)).unwrap();
                (b.load(SeqCst), r)
            })
            .join()
            .unwrap();
            waiting.store(false, SeqCst);
            hb.join().unwrap();
            (during, r.timed_out())
        })
    });
    assert!(timed_out, "the wait reported a notification nobody sent");
    assert!(beats > 0, "the worker was blocked for the whole wait");
}

/// A `LazyLock` whose initialiser parks (a sleep): a second coroutine of
/// the same worker that reaches it meanwhile parks in `Once`'s wait, and
/// the initialiser runs once.
#[test]
fn a_lazy_lock_whose_init_parks_is_awaited_by_parking() {
    static INITS: AtomicUsize = AtomicUsize::new(0);
    static VALUE: LazyLock<u32> = LazyLock::new(|| {
        INITS.fetch_add(1, SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        42
    });
    let got = common::bounded(
        "a lazy lock reached by two coroutines of one worker",
        || {
            let rt = workers(1);
            rt.block_on(|| {
                let a = greenstack::spawn(|| *VALUE);
                let b = greenstack::spawn(|| *VALUE);
                (a.join().unwrap(), b.join().unwrap())
            })
        },
    );
    assert_eq!(got, (42, 42));
    assert_eq!(INITS.load(SeqCst), 1);
}

/// A plain thread holds the lock until the coroutine waiting for it has
/// parked (the heartbeat beat during the wait); its unlock wakes the
/// coroutine.
#[test]
fn a_plain_threads_unlock_wakes_the_parked_coroutine() {
    let (beats, v) = common::bounded("a std mutex held by a plain thread", || {
        let rt = workers(1);
        let lock = Arc::new(Mutex::new(0u32));
        let beats = Arc::new(AtomicUsize::new(0));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = {
            let (lock, beats) = (Arc::clone(&lock), Arc::clone(&beats));
            std::thread::spawn(move || {
                let mut g = lock.lock().unwrap();
                held_tx.send(()).unwrap();
                while beats.load(SeqCst) == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                *g = 5;
            })
        };
        held_rx.recv().unwrap();
        let l = Arc::clone(&lock);
        let hb_beats = Arc::clone(&beats);
        let r = rt.block_on(move || {
            let beats = hb_beats;
            let waiting = Arc::new(AtomicBool::new(true));
            let hb = heartbeat(&waiting, &beats);
            let v = greenstack::spawn(move || *l.lock().unwrap())
                .join()
                .unwrap();
            waiting.store(false, SeqCst);
            hb.join().unwrap();
            v
        });
        holder.join().unwrap();
        (beats.load(SeqCst), r)
    });
    assert!(beats > 0);
    assert_eq!(v, 5);
}

/// Mutual exclusion and no lost wake-up under contention: coroutines on
/// two workers and two plain threads add to one std `Mutex`, the
/// coroutines yielding with the guard held now and then (so others queue
/// behind a parked holder). Every addition counts.
#[test]
fn a_contended_std_mutex_counts_exactly() {
    const COROUTINES: usize = 200;
    const THREADS: usize = 2;
    const ROUNDS: usize = 300;
    let total = common::bounded("a contended std mutex", || {
        let rt = workers(2);
        let lock = Arc::new(Mutex::new(0usize));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        *lock.lock().unwrap() += 1;
                    }
                })
            })
            .collect();
        let l = Arc::clone(&lock);
        rt.block_on(move || {
            let hs: Vec<_> = (0..COROUTINES)
                .map(|i| {
                    let l = Arc::clone(&l);
                    greenstack::spawn(move || {
                        for r in 0..ROUNDS {
                            let mut g = l.lock().unwrap();
                            let v = *g;
                            if (i + r) % 17 == 0 {
                                greenstack::yield_now();
                            }
                            *g = v + 1;
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
        for t in threads {
            t.join().unwrap();
        }
        let n = *lock.lock().unwrap();
        n
    });
    assert_eq!(total, (COROUTINES + THREADS) * ROUNDS);
}

/// `thread::park` and std's channels wait on the worker thread's own
/// parker, which its coroutines share: those waits still block the worker
/// (two coroutines parked on one thread's parker would corrupt it), and
/// must still deliver. One worker, two coroutines each receiving from its
/// own std channel, a plain thread sending to both, and a coroutine parked
/// in `thread::park` until a plain thread unparks the worker thread.
#[test]
fn std_channels_and_thread_park_in_coroutines_still_deliver() {
    let got = common::bounded("std channels and thread::park in coroutines", || {
        let rt = workers(1);
        rt.block_on(|| {
            let (tx1, rx1) = std::sync::mpsc::channel::<u32>();
            let (tx2, rx2) = std::sync::mpsc::channel::<u32>();
            let a = greenstack::spawn(move || rx1.recv().unwrap());
            let b = greenstack::spawn(move || rx2.recv().unwrap());
            let (thread_tx, thread_rx) = std::sync::mpsc::channel();
            let c = greenstack::spawn(move || {
                thread_tx.send(std::thread::current()).unwrap();
                // Spurious returns are allowed: park until the flag says.
                while !UNPARKED.load(SeqCst) {
                    std::thread::park();
                }
                3
            });
            static UNPARKED: AtomicBool = AtomicBool::new(false);
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx1.send(1).unwrap();
                tx2.send(2).unwrap();
                let worker = thread_rx.recv().unwrap();
                std::thread::sleep(Duration::from_millis(20));
                UNPARKED.store(true, SeqCst);
                worker.unpark();
            });
            let got = (a.join().unwrap(), b.join().unwrap(), c.join().unwrap());
            sender.join().unwrap();
            got
        })
    });
    assert_eq!(got, (1, 2, 3));
}

/// A coroutine waiting for a std `Mutex` that a plain thread holds when
/// its runtime is dropped: the shutdown completes (the wait fails with
/// `EINTR`, std retries, and the coroutine is abandoned after a few), it
/// does not block the worker until the holder lets go. Afterwards the
/// lock still works: the abandoned waiter left no trace in it.
#[test]
fn a_std_lock_wait_at_shutdown_does_not_hold_it_up() {
    let lock = Arc::new(Mutex::new(0u32));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let lock = Arc::clone(&lock);
        std::thread::spawn(move || {
            let mut g = lock.lock().unwrap();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            *g += 1;
        })
    };
    held_rx.recv().unwrap();
    let waiting = Arc::new(AtomicBool::new(false));
    {
        let (lock, waiting) = (Arc::clone(&lock), Arc::clone(&waiting));
        common::bounded(
            "a shutdown with a coroutine waiting for a std lock",
            move || {
                // SAFETY: the coroutine waits on no thread-owned lock.
                let rt = unsafe { RuntimeBuilder::default().hook_std_locks(true) }
                    .workers(1)
                    .shutdown_timeout(Duration::from_secs(3600))
                    .build()
                    .unwrap();
                let w = Arc::clone(&waiting);
                let _h = rt.spawn(move || {
                    w.store(true, SeqCst);
                    *lock.lock().unwrap() += 10;
                });
                while !waiting.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(50));
                drop(rt);
            },
        );
    }
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    // The lock is free and consistent: only the holder's update happened.
    *lock.lock().unwrap() += 100;
    assert_eq!(*lock.lock().unwrap(), 101);
}

/// A child process forked while a coroutine waited on a std `Condvar`
/// starts with no futex waiter queued: its own coroutine waiting on the
/// same `Condvar` (the child's copy) is the one `notify_one` wakes, not
/// the parent's coroutine, which does not exist in the child.
#[test]
fn a_forked_child_forgets_the_parents_queued_waiters() {
    const ENV: &str = "GREENSTACK_FUTEX_FORK_CHILD";
    if common::child_scenario(ENV).is_some() {
        return fork_child();
    }
    let out = common::run_child(
        ENV,
        "a_forked_child_forgets_the_parents_queued_waiters",
        "fork",
    );
    assert!(out.status.success(), "{}", common::describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("fork: child_status=0 parent_woken=true"),
        "{}",
        common::describe(&out)
    );
}

fn fork_child() {
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let rt = workers(1);
    let p = Arc::clone(&pair);
    let waiter = rt.spawn(move || {
        let (m, cv) = &*p;
        let g = cv.wait_while(m.lock().unwrap(), |go| !*go).unwrap();
        *g
    });
    // Let the coroutine queue itself on the condvar's word.
    while rt.stats().parks == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: fork; the child below builds its own runtime (glibc's
    // malloc and thread creation work in a forked child) and leaves with
    // `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            let rt2 = workers(1);
            let p = Arc::clone(&pair);
            let h = rt2.spawn(move || {
                let (m, cv) = &*p;
                let g = cv.wait_while(m.lock().unwrap(), |go| !*go).unwrap();
                *g
            });
            while rt2.stats().parks == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(50));
            *pair.0.lock().unwrap() = true;
            pair.1.notify_one();
            // A wake that went to the parent's coroutine leaves this one
            // waiting for good: the parent's guard below kills the child.
            i32::from(!h.join().unwrap())
        })
        .unwrap_or(3);
        // SAFETY: leaves the forked child at once.
        unsafe { libc::_exit(code) };
    }
    // The forked child gets 10 s.
    let mut status = 0;
    let mut waited = 0;
    loop {
        // SAFETY: waits for our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid");
        if r == pid {
            break;
        }
        waited += 1;
        if waited == 1000 {
            // SAFETY: our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let child_status = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    *pair.0.lock().unwrap() = true;
    pair.1.notify_all();
    let parent_woken = waiter.join().unwrap();
    println!("fork: child_status={child_status} parent_woken={parent_woken}");
}

/// rayon's `install` from outside its pool waits on a latch kept in a
/// thread-local (a `Mutex` and `Condvar`), with the job on the caller's
/// stack: two coroutines of one worker in it at once would share that
/// latch, and the first job to finish would release the other's caller,
/// which would return before its job ran (rayon panics) and leave the pool
/// writing into a dead frame. Here the first caller's job is the slower:
/// each coroutine must get its own result.
#[test]
fn rayon_install_from_two_coroutines_of_one_worker_returns_each_its_own_result() {
    for take_over in [false, true] {
        rayon_from_two_coroutines(take_over);
    }
}

fn rayon_from_two_coroutines(take_over: bool) {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a rayon pool"),
    );
    let (a, b) = common::bounded("rayon from coroutines", move || {
        let rt = if take_over {
            workers(1)
        } else {
            RuntimeBuilder::default().workers(1).build().unwrap()
        };
        rt.block_on(move || {
            let p = Arc::clone(&pool);
            let a = greenstack::spawn(move || {
                p.install(|| {
                    std::thread::sleep(Duration::from_millis(300));
                    1
                })
            });
            let b = greenstack::spawn(move || {
                greenstack::time::sleep(Duration::from_millis(50));
                pool.install(|| {
                    std::thread::sleep(Duration::from_millis(10));
                    2
                })
            });
            (a.join().ok(), b.join().ok())
        })
    });
    assert_eq!((a, b), (Some(1), Some(2)), "hook_std_locks({take_over})");
}

/// tokio's blocking calls outside a runtime (`blocking_recv` here) park
/// the thread on a parker tokio keeps per thread, behind a `Mutex` and a
/// `Condvar`. By default (no `hook_std_locks`) such a wait blocks the
/// worker, so two coroutines of one worker never share that parker: both
/// get their message. (With the take-over on, the second would find the
/// parker already parked and tokio would panic: the contract of
/// `hook_std_locks` rules that code out.)
#[test]
fn tokio_blocking_recv_from_two_coroutines_of_one_worker_by_default() {
    let (got_a, got_b) = common::bounded("tokio blocking_recv in coroutines", || {
        let rt = RuntimeBuilder::default().workers(1).build().unwrap();
        let (tx_a, mut rx_a) = tokio::sync::mpsc::channel::<u32>(1);
        let (tx_b, mut rx_b) = tokio::sync::mpsc::channel::<u32>(1);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            tx_b.blocking_send(2).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            tx_a.blocking_send(1).unwrap();
        });
        let got = rt.block_on(move || {
            let a = greenstack::spawn(move || rx_a.blocking_recv());
            let b = greenstack::spawn(move || rx_b.blocking_recv());
            (a.join().ok().flatten(), b.join().ok().flatten())
        });
        sender.join().unwrap();
        got
    });
    assert_eq!((got_a, got_b), (Some(1), Some(2)));
}
