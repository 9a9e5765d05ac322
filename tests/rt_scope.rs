//! Scoped coroutines (`greenstack::scope`, `Runtime::scope`): borrowing from
//! the parent's stack, waiting for every child, panics, and shutdown, from
//! coroutines and from plain threads, with std's `thread::scope` semantics.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, panic_message};
use greenstack::{Runtime, RuntimeBuilder};

fn runtime(workers: usize) -> Runtime {
    RuntimeBuilder::default()
        .workers(workers)
        .build()
        .expect("building a runtime")
}

/// Children borrow the parent's locals, one of them mutably, and the
/// scope returns their values; from a coroutine and from a plain thread.
#[test]
fn children_borrow_the_parents_locals() {
    bounded("scoped borrows", || {
        let rt = runtime(2);
        let in_coroutine = rt.block_on_worker(|| {
            let words = ["a".to_string(), "bb".into(), "ccc".into()];
            let mut total = 0;
            let lens = greenstack::scope(|s| {
                let hs: Vec<_> = words.iter().map(|w| s.spawn(move || w.len())).collect();
                s.spawn(|| total = words.iter().map(String::len).sum::<usize>());
                hs.into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            });
            (lens, total)
        });
        assert_eq!(in_coroutine, (vec![1, 2, 3], 6));

        let mut slots = [0u64; 8];
        rt.scope(|s| {
            for (i, slot) in slots.iter_mut().enumerate() {
                s.spawn(move || {
                    greenstack::time::sleep(Duration::from_millis(1));
                    *slot = i as u64 * 10;
                });
            }
        });
        assert_eq!(slots, [0, 10, 20, 30, 40, 50, 60, 70]);
    });
}

/// `scope` returns only once every child has finished, joined or not, and
/// children may spawn siblings into the same scope.
#[test]
fn the_scope_waits_for_every_child() {
    bounded("a scope waits", || {
        let rt = runtime(2);
        let finished = AtomicUsize::new(0);
        rt.scope(|s| {
            for i in 0..20u64 {
                let finished = &finished;
                s.spawn(move || {
                    greenstack::time::sleep(Duration::from_millis(i % 5 * 3));
                    s.spawn(move || {
                        greenstack::time::sleep(Duration::from_millis(2));
                        finished.fetch_add(1, SeqCst);
                    });
                    finished.fetch_add(1, SeqCst);
                });
            }
        });
        assert_eq!(finished.load(SeqCst), 40);
    });
}

/// A child's panic that nobody joins makes the scope panic, after the
/// other children finish; a joined one is the joiner's `Err` only.
#[test]
fn an_unjoined_panic_panics_the_scope_after_the_others_finish() {
    bounded("scoped panics", || {
        let rt = runtime(2);
        let other_done = AtomicBool::new(false);
        let p = catch_unwind(AssertUnwindSafe(|| {
            rt.scope(|s| {
                s.spawn(|| panic!("child panics"));
                s.spawn(|| {
                    greenstack::time::sleep(Duration::from_millis(50));
                    other_done.store(true, SeqCst);
                });
            })
        }))
        .expect_err("the scope panics");
        assert_eq!(panic_message(p.as_ref()), "a scoped coroutine panicked");
        assert!(
            other_done.load(SeqCst),
            "the scope panicked before the others finished"
        );

        let joined = rt.scope(|s| {
            let h = s.spawn(|| -> u32 { panic!("joined child panics") });
            panic_message(h.join().expect_err("it panicked").as_ref())
        });
        assert_eq!(joined, "joined child panics");
    });
}

/// The closure's own panic resumes in the caller once the children are
/// done (they may still be using what it borrowed).
#[test]
fn the_closures_panic_resumes_after_the_children_finish() {
    bounded("the closure panics", || {
        let rt = runtime(2);
        let p = rt.block_on_worker(|| {
            let child_done = AtomicBool::new(false);
            let p = catch_unwind(AssertUnwindSafe(|| {
                greenstack::scope(|s| {
                    s.spawn(|| {
                        greenstack::time::sleep(Duration::from_millis(50));
                        child_done.store(true, SeqCst);
                    });
                    panic!("the closure panics");
                })
            }))
            .expect_err("the scope resumes the panic");
            (panic_message(p.as_ref()), child_done.load(SeqCst))
        });
        assert_eq!(p, ("the closure panics".to_string(), true));
    });
}

/// A local of the parent whose destructor records that it ran.
struct Watched<'a>(&'a AtomicBool);

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// A child's destructor that reads the parent's local.
struct ReadsAtDrop<'a> {
    parent_dropped: &'a AtomicBool,
    local: &'a Watched<'a>,
    saw_dropped: &'a AtomicBool,
}

impl Drop for ReadsAtDrop<'_> {
    fn drop(&mut self) {
        // `local` is a reference into the parent's frame: it must still be
        // there, undropped.
        let _ = self.local.0;
        if self.parent_dropped.load(SeqCst) {
            self.saw_dropped.store(true, SeqCst);
        }
    }
}

/// Shutdown while a coroutine waits in a scope whose children wait for
/// ever: the cancellation does not unwind the scope before its children,
/// which are cancelled too (their destructors still see the parent's
/// locals alive), and the drop of the runtime returns.
#[test]
fn shutdown_cancels_the_children_before_the_scope_unwinds() {
    static DROPPED: AtomicBool = AtomicBool::new(false);
    static SAW_DROPPED: AtomicBool = AtomicBool::new(false);
    static CHILDREN_UNWOUND: AtomicUsize = AtomicUsize::new(0);
    bounded("shutdown inside a scope", || {
        let rt = runtime(2);
        let started = Arc::new(AtomicUsize::new(0));
        let st = Arc::clone(&started);
        let _h = rt.spawn(move || {
            let local = Watched(&DROPPED);
            greenstack::scope(|s| {
                for _ in 0..4 {
                    let (local, st) = (&local, &st);
                    s.spawn(move || {
                        let _reads = ReadsAtDrop {
                            parent_dropped: &DROPPED,
                            local,
                            saw_dropped: &SAW_DROPPED,
                        };
                        struct Count;
                        impl Drop for Count {
                            fn drop(&mut self) {
                                CHILDREN_UNWOUND.fetch_add(1, SeqCst);
                            }
                        }
                        let _count = Count;
                        st.fetch_add(1, SeqCst);
                        // Parked for ever (no unpark ever comes).
                        loop {
                            greenstack::park();
                        }
                    });
                }
            });
        });
        while started.load(SeqCst) < 4 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(rt);
    });
    assert_eq!(
        CHILDREN_UNWOUND.load(SeqCst),
        4,
        "the children were not cancelled"
    );
    assert!(DROPPED.load(SeqCst), "the parent was not unwound");
    assert!(
        !SAW_DROPPED.load(SeqCst),
        "a child ran after the parent's local was dropped"
    );
}

/// A forgotten handle changes nothing: the scope still waits.
#[test]
fn a_forgotten_handle_still_makes_the_scope_wait() {
    bounded("a forgotten handle", || {
        let rt = runtime(2);
        let done = AtomicBool::new(false);
        rt.scope(|s| {
            let h = s.spawn(|| {
                greenstack::time::sleep(Duration::from_millis(50));
                done.store(true, SeqCst);
            });
            std::mem::forget(h);
        });
        assert!(
            done.load(SeqCst),
            "the scope returned before its child finished"
        );
    });
}
