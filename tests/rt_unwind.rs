//! Panics and unwinds that reach the runtime: user code the worker runs (a
//! detached coroutine's result, a joiner's waker, a tracing subscriber)
//! that panics, shutdown cancelling coroutines whose destructors wait or
//! which catch their cancellation, and a coroutine that tries to switch
//! while it unwinds.
//!
//! Each scenario that could crash or hang before its fix runs in a child
//! process (this binary re-run with `CHILD_ENV` set) under the hang guard,
//! and the parent checks how it ended. The use-after-free scenarios are
//! also run under valgrind memcheck by `scripts/test-all.sh`.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, RawWaker, RawWakerVTable, Waker};
use std::thread;
use std::time::Duration;

use common::*;
use greenstack::{Cancelled, Coroutine, Runtime};

/// Names the scenario a child process plays.
const CHILD_ENV: &str = "GREENSTACK_UNWIND_CHILD";

/// Runs scenario `name` of test `name` in a child and returns its output.
fn child(name: &str) -> std::process::Output {
    run_child(CHILD_ENV, name, name)
}

/// Whether this process is the child playing test `name`.
fn is_child(name: &str) -> bool {
    child_scenario(CHILD_ENV).as_deref() == Some(name)
}

/// Asserts the child exited with status 0 and printed `marker`.
#[track_caller]
fn assert_clean_exit(out: &std::process::Output, marker: &str) {
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(marker),
        "{}",
        describe(out)
    );
}

/// A runtime of `workers` workers with a small arena: the default one
/// reserves 256 GiB of address space, more than valgrind's address space
/// manager grants, and these scenarios are the ones to run under valgrind.
fn small_runtime(workers: usize) -> greenstack::RuntimeBuilder {
    Runtime::builder()
        .workers(workers)
        .arena(greenstack::stack::StackArena::builder().capacity(256))
}

/// Polls `cond` every millisecond; callers run under a hang guard.
fn wait_for(mut cond: impl FnMut() -> bool) {
    while !cond() {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Parks the calling coroutine for ever (spurious wake-ups included).
fn park_forever() -> ! {
    loop {
        greenstack::park();
    }
}

/// Panics when dropped.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("a result that panics on drop");
    }
}

/// Unparks a coroutine when dropped.
struct UnparkOnDrop(Coroutine);

impl Drop for UnparkOnDrop {
    fn drop(&mut self) {
        self.0.unpark();
    }
}

/// Item 1 of the soundness review: a detached coroutine's result panics
/// when the worker drops it. The worker must neither unwind (which freed
/// its ready queue while a coroutine parked there still unparked into it at
/// shutdown: a use-after-free, then every later join hung) nor stop: the
/// panic is reported and later coroutines run.
#[test]
fn a_detached_result_that_panics_on_drop_does_not_unwind_the_worker() {
    let name = "a_detached_result_that_panics_on_drop_does_not_unwind_the_worker";
    if is_child(name) {
        let rt = small_runtime(1).build().unwrap();
        // Parked for good, holding a guard that unparks it when the
        // shutdown unwinds it (the write into the freed ready queue).
        let _parked = rt.spawn(|| {
            let _guard = UnparkOnDrop(greenstack::current());
            park_forever()
        });
        wait_for(|| rt.stats().parks >= 1);
        let (tx, rx) = std::sync::mpsc::channel();
        drop(rt.spawn(move || {
            rx.recv().unwrap();
            PanicOnDrop
        }));
        tx.send(()).unwrap();
        for i in 0..3 {
            assert_eq!(rt.spawn(move || i).join().unwrap(), i);
        }
        drop(rt);
        println!("worker survived");
        return;
    }
    assert_clean_exit(&child(name), "worker survived");
}

/// A waker that panics when woken.
fn panicking_waker() -> Waker {
    fn clone(p: *const ()) -> RawWaker {
        RawWaker::new(p, &VTABLE)
    }
    fn wake(_: *const ()) {
        panic!("a waker that panics");
    }
    fn drop_it(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop_it);
    // SAFETY: the vtable's functions ignore the data pointer.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
}

/// Item 1, the waker case: a `JoinHandle` polled as a future registers a
/// waker that panics; the worker wakes it when the coroutine finishes. The
/// panic is contained there, and the worker goes on.
#[test]
fn a_joiners_waker_that_panics_does_not_unwind_the_worker() {
    let name = "a_joiners_waker_that_panics_does_not_unwind_the_worker";
    if is_child(name) {
        let rt = small_runtime(1).build().unwrap();
        let _parked = rt.spawn(|| {
            let _guard = UnparkOnDrop(greenstack::current());
            park_forever()
        });
        wait_for(|| rt.stats().parks >= 1);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut h = rt.spawn(move || rx.recv().unwrap());
        let waker = panicking_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(std::pin::Pin::new(&mut h).poll(&mut cx).is_pending());
        tx.send(7u32).unwrap();
        wait_for(|| h.is_finished());
        assert_eq!(h.join().unwrap(), 7);
        assert_eq!(rt.spawn(|| 1).join().unwrap(), 1);
        drop(rt);
        println!("worker survived");
        return;
    }
    assert_clean_exit(&child(name), "worker survived");
}

use std::future::Future;

/// A tracing subscriber whose `new_span` panics; everything else is on.
struct PanickingSubscriber;

impl tracing::Subscriber for PanickingSubscriber {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        panic!("a subscriber whose new_span panics");
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Item 2: a tracing subscriber panics while the worker makes a starting
/// coroutine's span. Before the fix the unwind freed the task (its
/// detached handle's last reference) and then read it again; now the
/// coroutine runs without a span, and so does the next.
#[test]
fn a_subscriber_that_panics_in_new_span_costs_only_the_span() {
    let name = "a_subscriber_that_panics_in_new_span_costs_only_the_span";
    if is_child(name) {
        tracing::subscriber::set_global_default(PanickingSubscriber).unwrap();
        let rt = small_runtime(1).build().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let ran = Arc::clone(&ran);
            drop(rt.spawn(move || ran.fetch_add(1, Ordering::SeqCst)));
        }
        wait_for(|| ran.load(Ordering::SeqCst) == 3);
        assert_eq!(rt.spawn(|| 5).join().unwrap(), 5);
        drop(rt);
        println!("spans lost, coroutines ran");
        return;
    }
    assert_clean_exit(&child(name), "spans lost, coroutines ran");
}

/// Locks a greenstack mutex when dropped, and records that it got it.
struct LockOnDrop(Arc<greenstack::sync::Mutex<()>>, Arc<AtomicBool>);

impl Drop for LockOnDrop {
    fn drop(&mut self) {
        let _g = self.0.lock();
        self.1.store(true, Ordering::SeqCst);
    }
}

/// Item 3a: at shutdown, a cancelled coroutine's destructor locks a
/// greenstack `Mutex` that another coroutine on the same (only) worker
/// holds. Before the fix every wait returned at once during the
/// cancellation and the lock spun for ever: `Runtime::drop` never returned.
/// Now the destructor really waits, the holder is cancelled and unlocks,
/// and the destructor gets the lock.
#[test]
fn shutdown_lets_a_destructor_wait_for_another_cancelled_coroutine() {
    let name = "shutdown_lets_a_destructor_wait_for_another_cancelled_coroutine";
    if is_child(name) {
        let rt = small_runtime(1)
            // Far longer than the wait needs: the test shows the wait ends
            // because the holder unlocked, not because time ran out.
            .shutdown_timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let m = Arc::new(greenstack::sync::Mutex::new(()));
        let locked = Arc::new(AtomicBool::new(false));
        // Cancelled first (the lower slab key): its destructor waits.
        let waiter = {
            let (m, locked) = (Arc::clone(&m), Arc::clone(&locked));
            rt.spawn(move || {
                let _d = LockOnDrop(m, locked);
                park_forever()
            })
        };
        wait_for(|| rt.stats().parks >= 1);
        let holder = {
            let m = Arc::clone(&m);
            rt.spawn(move || {
                let _g = m.lock();
                park_forever()
            })
        };
        wait_for(|| rt.stats().parks >= 2);
        drop(rt);
        assert!(locked.load(Ordering::SeqCst), "the destructor got the lock");
        for h in [waiter, holder] {
            assert!(h.join().unwrap_err().is::<Cancelled>());
        }
        assert!(m.try_lock().is_some(), "nothing holds the mutex afterwards");
        println!("shutdown returned");
        return;
    }
    assert_clean_exit(&child(name), "shutdown returned");
}

/// Item 3b: a coroutine catches every unwind around its wait, so the
/// shutdown's cancellation never ends it. Before the fix it spun for ever
/// inside the cancellation; now, after a few cancellations caught, it is
/// abandoned (reported, its joiner told `Cancelled`) and the drop returns.
#[test]
fn shutdown_abandons_a_coroutine_that_swallows_its_cancellation() {
    let name = "shutdown_abandons_a_coroutine_that_swallows_its_cancellation";
    if is_child(name) {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::ERROR)
            .init();
        let rt = small_runtime(1)
            .shutdown_timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let (tx, rx) = greenstack::sync::mpsc::channel::<()>();
        let caught = Arc::new(AtomicUsize::new(0));
        let h = {
            let caught = Arc::clone(&caught);
            rt.spawn(move || loop {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rx.recv()));
                if r.is_err() {
                    caught.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        wait_for(|| rt.stats().parks >= 1);
        drop(rt);
        assert!(caught.load(Ordering::SeqCst) >= 1);
        assert!(h.join().unwrap_err().is::<Cancelled>());
        drop(tx);
        println!("shutdown returned");
        return;
    }
    let out = child(name);
    assert_clean_exit(&out, "shutdown returned");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("caught its cancellation"),
        "the abandonment is reported: {}",
        describe(&out)
    );
}

/// Item 3, the time limit: a destructor waits at shutdown for a lock a
/// plain thread holds and never releases in time. After the shutdown
/// timeout the coroutine is abandoned and the drop returns; the lock's
/// later release does not touch freed memory (the abandoned stack, where
/// the waiter's queue node lives, is leaked, not unmapped).
#[test]
fn shutdown_abandons_a_destructor_still_waiting_at_the_timeout() {
    let name = "shutdown_abandons_a_destructor_still_waiting_at_the_timeout";
    if is_child(name) {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::ERROR)
            .init();
        let rt = small_runtime(1)
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let m = Arc::new(greenstack::sync::Mutex::new(()));
        let locked = Arc::new(AtomicBool::new(false));
        let guard = m.lock(); // held by this plain thread
        let h = {
            let (m, locked) = (Arc::clone(&m), Arc::clone(&locked));
            rt.spawn(move || {
                let _d = LockOnDrop(m, locked);
                park_forever()
            })
        };
        wait_for(|| rt.stats().parks >= 1);
        drop(rt);
        assert!(h.join().unwrap_err().is::<Cancelled>());
        assert!(!locked.load(Ordering::SeqCst));
        drop(guard);
        println!("shutdown returned");
        return;
    }
    let out = child(name);
    assert_clean_exit(&out, "shutdown returned");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shutdown timeout passed"),
        "the abandonment is reported: {}",
        describe(&out)
    );
}

/// Item 6, the other coroutine's view: coroutine A yields from a
/// destructor while unwinding from a panic. std counts panics per OS
/// thread, so had A switched out, coroutine B on the same worker would see
/// `panicking() == true` and poison a std mutex it unlocks. The yield is
/// skipped instead: B sees `false`, its mutex is not poisoned; A, in its
/// destructor, still sees `true` (its own view).
#[test]
fn a_yield_while_unwinding_does_not_leak_panicking_to_other_coroutines() {
    bounded("panicking() is per coroutine", || {
        let rt = runtime(1);
        let std_mutex = Arc::new(std::sync::Mutex::new(()));
        let a_saw = Arc::new(AtomicUsize::new(0)); // 1: false, 2: true
        let b_saw = Arc::new(AtomicUsize::new(0));
        struct YieldOnDrop(Arc<AtomicUsize>);
        impl Drop for YieldOnDrop {
            fn drop(&mut self) {
                greenstack::yield_now();
                let p = thread::panicking();
                self.0.store(if p { 2 } else { 1 }, Ordering::SeqCst);
            }
        }
        let (go_tx, go_rx) = greenstack::sync::mpsc::channel::<()>();
        let b = {
            let (m, b_saw) = (Arc::clone(&std_mutex), Arc::clone(&b_saw));
            rt.spawn(move || {
                go_rx.recv().unwrap();
                let p = thread::panicking();
                b_saw.store(if p { 2 } else { 1 }, Ordering::SeqCst);
                drop(m.lock().unwrap());
            })
        };
        let a = {
            let a_saw = Arc::clone(&a_saw);
            rt.spawn(move || {
                // B is runnable before A starts unwinding.
                go_tx.send(()).unwrap();
                let _d = YieldOnDrop(a_saw);
                std::panic::resume_unwind(Box::new("A unwinds"));
            })
        };
        assert!(a.join().is_err());
        b.join().unwrap();
        assert_eq!(a_saw.load(Ordering::SeqCst), 2, "A sees its own panic");
        assert_eq!(b_saw.load(Ordering::SeqCst), 1, "B sees no panic");
        assert!(!std_mutex.is_poisoned(), "B's std mutex is not poisoned");
    });
}

/// Item 6, A's wait: a destructor that parks while its coroutine unwinds
/// from a panic would switch with the thread's panic count raised. It is
/// refused with a message that says why and what to do, and the process
/// aborts (as std does for a panic during a panic).
#[test]
fn a_wait_while_unwinding_aborts_with_a_message() {
    let name = "a_wait_while_unwinding_aborts_with_a_message";
    if is_child(name) {
        struct SleepOnDrop;
        impl Drop for SleepOnDrop {
            fn drop(&mut self) {
                greenstack::time::sleep(Duration::from_millis(1));
            }
        }
        let rt = runtime(1);
        let _ = rt
            .spawn(|| {
                let _d = SleepOnDrop;
                std::panic::resume_unwind(Box::new("unwinding"));
            })
            .join();
        println!("the wait went through");
        return;
    }
    let out = child(name);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tried to wait while unwinding from a panic")
            && stderr.contains("catch_unwind"),
        "{}",
        describe(&out)
    );
}

/// Item 3, a coroutine that never suspends: it keeps its worker busy, so
/// that worker never sees the shutdown. Before, `Runtime::drop` joined it
/// for ever; now the drop returns after the shutdown timeout (plus a
/// second), reports the worker and leaks the runtime's memory for the
/// thread, which goes on running.
#[test]
fn dropping_a_runtime_returns_while_a_coroutine_never_suspends() {
    let name = "dropping_a_runtime_returns_while_a_coroutine_never_suspends";
    if is_child(name) {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::ERROR)
            .init();
        static STOP: AtomicBool = AtomicBool::new(false);
        static SPINNING: AtomicBool = AtomicBool::new(false);
        let rt = small_runtime(1)
            .shutdown_timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let h = rt.spawn(|| {
            SPINNING.store(true, Ordering::SeqCst);
            while !STOP.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
        });
        wait_for(|| SPINNING.load(Ordering::SeqCst));
        drop(rt);
        println!("drop returned");
        // The abandoned worker finishes the coroutine and its shutdown.
        STOP.store(true, Ordering::SeqCst);
        h.join().unwrap();
        return;
    }
    let out = child(name);
    assert_clean_exit(&out, "drop returned");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("worker thread is abandoned"),
        "the abandoned worker is reported: {}",
        describe(&out)
    );
}

/// The shutdown's time limit holds while a destructor spins on `yield_now`
/// during its cancellation: the worker runs the ready coroutines in rounds
/// and looks at the deadline between them, so the spinning coroutine is
/// abandoned at the timeout (its worker is not).
#[test]
fn shutdown_abandons_a_destructor_spinning_on_yield() {
    let name = "shutdown_abandons_a_destructor_spinning_on_yield";
    if is_child(name) {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::ERROR)
            .init();
        struct SpinOnDrop;
        impl Drop for SpinOnDrop {
            fn drop(&mut self) {
                loop {
                    greenstack::yield_now();
                }
            }
        }
        let rt = small_runtime(1)
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let h = rt.spawn(|| {
            let _d = SpinOnDrop;
            park_forever()
        });
        wait_for(|| rt.stats().parks >= 1);
        drop(rt);
        assert!(h.join().unwrap_err().is::<Cancelled>());
        println!("shutdown returned");
        return;
    }
    let out = child(name);
    assert_clean_exit(&out, "shutdown returned");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shutdown timeout passed")
            && !stderr.contains("worker thread is abandoned"),
        "the coroutine, not its worker, is abandoned: {}",
        describe(&out)
    );
}

greenstack::coroutine_local! {
    static LOCK_ON_DROP: std::cell::RefCell<Option<LockOnDrop>> = std::cell::RefCell::new(None);
}

/// A `coroutine_local!` value's destructor, run after the cancellation
/// reached the body's top, may still wait at shutdown: it gets the lock
/// another cancelled coroutine held, instead of being cancelled again
/// (and reported as a panic).
#[test]
fn shutdown_lets_a_coroutine_local_destructor_wait() {
    let name = "shutdown_lets_a_coroutine_local_destructor_wait";
    if is_child(name) {
        let rt = small_runtime(1)
            .shutdown_timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let m = Arc::new(greenstack::sync::Mutex::new(()));
        let locked = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (m, locked) = (Arc::clone(&m), Arc::clone(&locked));
            rt.spawn(move || {
                LOCK_ON_DROP.with(|l| *l.borrow_mut() = Some(LockOnDrop(m, locked)));
                park_forever()
            })
        };
        wait_for(|| rt.stats().parks >= 1);
        let holder = {
            let m = Arc::clone(&m);
            rt.spawn(move || {
                let _g = m.lock();
                park_forever()
            })
        };
        wait_for(|| rt.stats().parks >= 2);
        drop(rt);
        assert!(
            locked.load(Ordering::SeqCst),
            "the local's destructor got the lock"
        );
        for h in [waiter, holder] {
            assert!(h.join().unwrap_err().is::<Cancelled>());
        }
        println!("shutdown returned");
        return;
    }
    assert_clean_exit(&child(name), "shutdown returned");
}

/// A destructor that spins on `yield_now` while its coroutine unwinds from
/// a panic (outside shutdown) would spin for ever, the yields being
/// skipped: after 65,536 of them the process aborts and says why.
#[test]
fn a_yield_spin_while_unwinding_aborts_with_a_message() {
    let name = "a_yield_spin_while_unwinding_aborts_with_a_message";
    if is_child(name) {
        struct SpinOnDrop;
        impl Drop for SpinOnDrop {
            fn drop(&mut self) {
                loop {
                    greenstack::yield_now();
                }
            }
        }
        let rt = runtime(1);
        let _ = rt
            .spawn(|| {
                let _d = SpinOnDrop;
                std::panic::resume_unwind(Box::new("unwinding"));
            })
            .join();
        return;
    }
    let out = child(name);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("times while unwinding from a panic"),
        "{}",
        describe(&out)
    );
}
