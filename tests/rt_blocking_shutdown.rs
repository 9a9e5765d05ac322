//! The blocking pool shuts down with its runtime in every drop path, the
//! one where a coroutine drops its own runtime (which cannot join the
//! workers) included: new `spawn_blocking` work is refused (its join gives
//! `Cancelled`), a job already running finishes and its join gets its
//! value, and every pool thread leaves (an idle one at once, a busy one
//! after its job) instead of waiting out the pool's keep-alive.

mod common;

use std::cell::RefCell;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bounded;
use greenstack::{spawn_blocking, Cancelled, JoinHandle, Runtime};

/// How long a pool thread may take to leave once told to: a hang guard,
/// far above the microseconds that takes, and below the pool's keep-alive
/// (10 s, `KEEP_ALIVE` in `runtime/src/scheduler/blocking.rs`; must stay
/// under it), after which an idle thread leaves even if never told.
const LEAVE_GUARD: Duration = Duration::from_secs(5);

/// Sends its label when the thread that holds it (in [`ON_EXIT`]) exits.
struct SignalOnExit(Sender<&'static str>, &'static str);

impl Drop for SignalOnExit {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

thread_local! {
    /// Dropped when its thread exits.
    static ON_EXIT: RefCell<Option<SignalOnExit>> = const { RefCell::new(None) };
}

/// Makes the calling thread send `label` on `tx` when it exits.
fn signal_on_exit(tx: Sender<&'static str>, label: &'static str) {
    ON_EXIT.with(|e| *e.borrow_mut() = Some(SignalOnExit(tx, label)));
}

/// Waits for the next pool thread to exit and returns its label.
fn next_exit(exits: &Receiver<&'static str>, what: &str) -> &'static str {
    exits
        .recv_timeout(LEAVE_GUARD)
        .unwrap_or_else(|_| panic!("{what} did not leave within {LEAVE_GUARD:?}"))
}

/// A coroutine that drops its own runtime, with one pool thread idle and
/// one running a job: the idle thread leaves; the running job finishes
/// with its value, a `spawn_blocking` it makes after the drop is refused,
/// and its thread leaves after it.
#[test]
fn a_coroutine_dropping_its_own_runtime_shuts_the_blocking_pool_down() {
    bounded("the blocking pool's shutdown", || {
        let rt = Runtime::builder()
            .workers(1)
            .watchdog(None)
            .build()
            .unwrap();
        let (exit_tx, exits) = channel();
        let (go, wait_for_go) = channel::<()>();
        let cell: Arc<Mutex<Option<Runtime>>> = Arc::default();
        let dropper = {
            let cell = Arc::clone(&cell);
            rt.spawn(move || {
                let tx = exit_tx.clone();
                let busy: JoinHandle<_> = spawn_blocking(move || {
                    signal_on_exit(tx, "busy");
                    wait_for_go.recv().unwrap();
                    // The pool thread's runtime was dropped meanwhile.
                    let late = spawn_blocking(|| "ran after its runtime was dropped").join();
                    (
                        42,
                        late.map_err(|p| p.downcast_ref::<Cancelled>().is_some()),
                    )
                });
                // A second thread (the first is busy), idle once this ends.
                spawn_blocking(move || signal_on_exit(exit_tx, "idle"))
                    .join()
                    .unwrap();
                // Handed over by the test's thread once this was spawned.
                let rt = loop {
                    if let Some(rt) = cell.lock().unwrap().take() {
                        break rt;
                    }
                    greenstack::yield_now();
                };
                drop(rt);
                busy
            })
        };
        *cell.lock().unwrap() = Some(rt);
        let busy = dropper.join().unwrap();
        go.send(()).unwrap();
        let (value, late) = busy.join().unwrap();
        assert_eq!(value, 42, "the running job finishes");
        assert_eq!(
            late,
            Err(true),
            "spawn_blocking after the runtime was dropped must be cancelled"
        );
        let mut left = [
            next_exit(&exits, "a pool thread"),
            next_exit(&exits, "the other pool thread"),
        ];
        left.sort_unstable();
        assert_eq!(left, ["busy", "idle"]);
    });
}
