//! Dropping a runtime: every unfinished coroutine is dropped with its
//! destructors run, every stack goes back to the arena, and every joiner
//! learns that its coroutine was cancelled.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use greenstack::{Builder, Cancelled, JoinHandle, Runtime};

/// How long a wait loop may poll before the test fails. A hang guard, not a
/// timing assertion: it is far above any expected wait, so a lost wake-up
/// fails the test instead of hanging it.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Polls `cond` (every millisecond) until it holds; fails after
/// [`HANG_GUARD`] naming `what`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "hang guard: still waiting for {what}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Asserts that `h`'s coroutine was cancelled: its join gives `Err` with a
/// [`Cancelled`] payload.
fn assert_cancelled<T>(h: JoinHandle<T>) {
    match h.join() {
        Ok(_) => panic!("a cancelled coroutine cannot return a value"),
        Err(p) => assert!(
            p.downcast_ref::<Cancelled>().is_some(),
            "the payload is not Cancelled"
        ),
    }
}

/// Drops of [`ParkedGuard`].
static PARKED_DROPS: AtomicUsize = AtomicUsize::new(0);

/// Held by a parked coroutine; counts its drop.
struct ParkedGuard;

impl Drop for ParkedGuard {
    fn drop(&mut self) {
        PARKED_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn dropping_the_runtime_unwinds_parked_coroutines() {
    const N: usize = 10_000;
    let rt = Runtime::builder().workers(2).build().unwrap();
    let arena = rt.arena().clone();
    let handles: Vec<JoinHandle<()>> = (0..N)
        .map(|_| {
            rt.spawn(|| {
                let _guard = ParkedGuard;
                loop {
                    greenstack::park();
                }
            })
        })
        .collect();
    // Nobody unparks them: each parks once and stays parked.
    wait_until("10,000 coroutines to park", || rt.stats().parks >= N as u64);
    assert_eq!(PARKED_DROPS.load(Ordering::SeqCst), 0);
    assert!(arena.stats().live_slots >= N);

    drop(rt);
    assert_eq!(PARKED_DROPS.load(Ordering::SeqCst), N);
    assert_eq!(arena.stats().live_slots, 0);
    for h in handles {
        assert_cancelled(h);
    }
}

/// Drops of [`QueuedGuard`].
static QUEUED_DROPS: AtomicUsize = AtomicUsize::new(0);

/// Captured by a coroutine that never starts; counts its drop.
struct QueuedGuard;

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        QUEUED_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn dropping_the_runtime_drops_coroutines_that_never_started() {
    const N: usize = 1_000;
    // Hooks off: the blocker's `thread::sleep` must hold the worker.
    let rt = Runtime::builder()
        .workers(1)
        .hook_blocking_calls(false)
        .build()
        .unwrap();
    let arena = rt.arena().clone();
    // Occupies the only worker until the runtime shuts down, which it sees
    // as spawning failing; meanwhile nothing else can start.
    let started = Arc::new(AtomicBool::new(false));
    let blocker = {
        let started = Arc::clone(&started);
        rt.spawn(move || {
            started.store(true, Ordering::Release);
            let mut probes = 0u64;
            while Builder::new().name("probe").spawn(|| ()).is_ok() {
                probes += 1;
                thread::sleep(Duration::from_millis(1));
            }
            probes
        })
    };
    wait_until("the blocker to start", || started.load(Ordering::Acquire));
    let handles: Vec<JoinHandle<()>> = (0..N)
        .map(|_| {
            let guard = QueuedGuard;
            rt.spawn(move || drop(guard))
        })
        .collect();
    assert_eq!(QUEUED_DROPS.load(Ordering::SeqCst), 0);

    drop(rt);
    assert_eq!(QUEUED_DROPS.load(Ordering::SeqCst), N);
    assert_eq!(arena.stats().live_slots, 0);
    for h in handles {
        assert_cancelled(h);
    }
    // The blocker itself ran to completion.
    blocker.join().expect("the blocker does not panic");
}

#[test]
fn spawning_on_a_dropped_runtime_is_impossible_but_joins_still_work() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let done = rt.spawn(|| 41 + 1);
    assert_eq!(done.join().unwrap(), 42);
    let finished = rt.spawn(|| "kept");
    wait_until("a coroutine to finish", || finished.is_finished());
    drop(rt);
    // The outcome of a coroutine that finished before the drop is kept.
    assert_eq!(finished.join().unwrap(), "kept");
}

#[test]
fn many_runtimes_come_and_go() {
    for round in 0..50u64 {
        let rt = Runtime::builder().workers(2).build().unwrap();
        let arena = rt.arena().clone();
        let parked: Vec<JoinHandle<()>> = (0..20).map(|_| rt.spawn(greenstack::park)).collect();
        let sum = rt.block_on(move || {
            let hs: Vec<_> = (0..100u64)
                .map(|i| greenstack::spawn(move || i + round))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
        });
        assert_eq!(sum, 99 * 100 / 2 + 100 * round);
        drop(rt);
        assert_eq!(arena.stats().live_slots, 0, "round {round}");
        for h in parked {
            // Each either ran and parked (then was cancelled) or returned
            // from a spurious wake-up; neither may hang.
            let _ = h.join();
        }
    }
}

/// Set in the child process that runs a test which may abort.
const CHILD_ENV: &str = "GREENSTACK_RT_SHUTDOWN_CHILD";

/// Re-runs test `name` of this binary in a child process with [`CHILD_ENV`]
/// set, and fails unless the child succeeds (an abort there harms no other
/// test).
fn run_in_child(name: &str) {
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--nocapture", "--include-ignored"])
        .args(["--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("running the child test process");
    assert!(
        out.status.success(),
        "child {name} failed: {:?} (signal {:?})\nstderr:\n{}",
        out.status,
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops of [`JoinOnDrop`] and [`YieldOnDrop`] (in the child process).
static SUSPENDING_DROPS: AtomicUsize = AtomicUsize::new(0);

/// A scope guard that joins a coroutine when dropped, as structured
/// concurrency does.
struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            // Cancelled at shutdown; either way it must not abort.
            let _ = h.join();
        }
        SUSPENDING_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// A guard that yields when dropped.
struct YieldOnDrop;

impl Drop for YieldOnDrop {
    fn drop(&mut self) {
        greenstack::yield_now();
        SUSPENDING_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Destructors run by the cancellation unwind at shutdown may block the
/// coroutine (join, park, yield): that must not abort the process.
#[test]
fn destructor_that_suspends_during_shutdown_does_not_abort() {
    if std::env::var_os(CHILD_ENV).is_none() {
        run_in_child("destructor_that_suspends_during_shutdown_does_not_abort");
        return;
    }
    let rt = Runtime::builder().workers(1).build().unwrap();
    let parked = Arc::new(AtomicUsize::new(0));
    let joiner = {
        let parked = Arc::clone(&parked);
        rt.spawn(move || {
            let child = greenstack::spawn(|| loop {
                greenstack::park();
            });
            let _join = JoinOnDrop(Some(child));
            let _yield = YieldOnDrop;
            parked.fetch_add(1, Ordering::SeqCst);
            loop {
                greenstack::park();
            }
        })
    };
    wait_until("the coroutine to park", || {
        parked.load(Ordering::SeqCst) == 1 && rt.stats().parks >= 2
    });
    drop(rt);
    assert_eq!(SUSPENDING_DROPS.load(Ordering::SeqCst), 2);
    assert_cancelled(joiner);
}

/// A runtime dropped from one of its own coroutines is not joined, so no
/// later point sees every worker gone. Meanwhile an accept-loop-like
/// spawner (yielding between spawns, so its children are placed on the
/// workers' incoming queues) keeps spawning until spawning fails. Every
/// child it got a handle for must still end: run, be unwound, or be
/// cancelled; none may be left in a queue nobody drains.
#[test]
fn dropping_the_runtime_from_its_own_coroutine_ends_every_spawned_child() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let handles: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
    let spawned = Arc::new(AtomicUsize::new(0));
    let spawner = {
        let handles = Arc::clone(&handles);
        let spawned = Arc::clone(&spawned);
        rt.spawn(move || loop {
            match Builder::new().spawn(|| {
                for _ in 0..3 {
                    greenstack::yield_now();
                }
            }) {
                Ok(h) => handles.lock().unwrap().push(h),
                Err(_) => return,
            }
            spawned.fetch_add(1, Ordering::SeqCst);
            greenstack::yield_now();
        })
    };
    wait_until("the spawner to get going", || {
        spawned.load(Ordering::SeqCst) >= 200
    });
    let cell: Arc<std::sync::Mutex<Option<Runtime>>> = Arc::default();
    let dropper = {
        let cell = Arc::clone(&cell);
        rt.spawn(move || loop {
            let rt = cell.lock().unwrap().take();
            if rt.is_some() {
                drop(rt);
                return;
            }
            greenstack::yield_now();
        })
    };
    *cell.lock().unwrap() = Some(rt);
    wait_until("the dropper to end", || dropper.is_finished());
    wait_until("the spawner to end", || spawner.is_finished());
    let handles = std::mem::take(&mut *handles.lock().unwrap());
    assert!(handles.len() >= 200);
    for (i, h) in handles.iter().enumerate() {
        wait_until(&format!("child {i} to end"), || h.is_finished());
    }
}

/// `Runtime::shutdown_timeout`: spawns fail from the start of it, running
/// coroutines finish on their own (their joins see their values), and one
/// that never finishes is cancelled once the timeout has passed (never
/// before): first through its waits (`JoinHandle::cancel`), so one that
/// waits on a channel returns, then by force; `true` only when everything
/// finished in time.
#[test]
fn graceful_shutdown_lets_running_coroutines_finish_then_cancels_the_rest() {
    let rt = Runtime::new().unwrap();
    // Spawning while the runtime closes fails: probes until a spawn does
    // (if none ever failed, its sleeps, cancelled past the timeout, would
    // return at once and it would spin until unwound by force).
    let finisher = rt.spawn(|| {
        while Builder::new().spawn(|| ()).is_ok() {
            greenstack::time::sleep(Duration::from_millis(1));
        }
        true
    });
    let parked = rt.spawn(|| loop {
        greenstack::park();
    });
    // Past the timeout it is cancelled, and returns by its own code.
    let (tx, rx) = greenstack::sync::mpsc::channel::<u32>();
    let cooperative = rt.spawn(move || {
        let r = rx.recv();
        (r.is_err(), greenstack::cancel::is_cancelled())
    });
    let t = Instant::now();
    assert!(
        !rt.shutdown_timeout(Duration::from_millis(300)),
        "a coroutine never finishes"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "cancelled before the timeout"
    );
    assert!(
        finisher.join().unwrap(),
        "a spawn succeeded during the shutdown"
    );
    assert_cancelled(parked);
    assert_eq!(
        cooperative.join().unwrap(),
        (true, true),
        "cancelled through its wait, it returned"
    );
    drop(tx);

    let rt = Runtime::new().unwrap();
    let quick = rt.spawn(|| {
        greenstack::time::sleep(Duration::from_millis(20));
        7
    });
    assert!(rt.shutdown_timeout(Duration::from_secs(60)));
    assert_eq!(quick.join().unwrap(), 7);
}

/// A graceful shutdown past its timeout cancels coroutines that never
/// started too: the one worker is held (hooks off, a plain blocking
/// receive) past the timeout, so the three queued behind it start only
/// once their cancellation is due, and each returns through its first
/// wait instead of being unwound.
#[test]
fn graceful_shutdown_cancels_never_started_coroutines_through_their_waits() {
    let rt = Runtime::builder()
        .workers(1)
        .hook_blocking_calls(false)
        .build()
        .unwrap();
    // Released by a thread of the test's, half-way through the grace that
    // follows the timeout (both 1 s): the release does not depend on when
    // the worker started the holder.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let hold = rt.spawn(move || held.recv().is_ok());
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        release.send(()).unwrap();
    });
    let (tx, rx) = greenstack::sync::mpmc::channel::<u32>();
    let queued: Vec<JoinHandle<(bool, bool)>> = (0..3)
        .map(|_| {
            let rx = rx.clone();
            rt.spawn(move || {
                let r = rx.recv();
                (r.is_err(), greenstack::cancel::is_cancelled())
            })
        })
        .collect();
    // Past the timeout the worker is still held; it is free within the
    // grace.
    assert!(!rt.shutdown_timeout(Duration::from_secs(1)));
    releaser.join().unwrap();
    assert!(hold.join().unwrap(), "released, not cancelled");
    for h in queued {
        assert_eq!(h.join().unwrap(), (true, true));
    }
    drop(tx);
}
