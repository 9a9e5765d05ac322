//! `greenstack::signal::Signals`: signals received in a coroutine (which
//! parks meanwhile, its worker serving others) or a plain thread, every
//! listener gets each one, reserved signals are refused. Each test uses its
//! own signal: they are process-wide, and the tests run in parallel.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bounded;
use greenstack::signal::Signals;
use greenstack::RuntimeBuilder;

/// Sends `sig` to the whole process.
fn kill_self(sig: libc::c_int) {
    // SAFETY: kill with our own pid and a signal a Signals handles.
    assert_eq!(unsafe { libc::kill(libc::getpid(), sig) }, 0);
}

/// A coroutine waiting in `recv` parks: on one worker, a heartbeat beats
/// while it waits, and it gets the signal sent later.
#[test]
fn a_coroutine_waiting_for_a_signal_parks() {
    let sig = libc::SIGUSR1;
    bounded("a signal in a coroutine", move || {
        let rt = RuntimeBuilder::default().workers(1).build().unwrap();
        let beats = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(AtomicBool::new(false));
        let (b, s, w) = (beats.clone(), stop.clone(), waiting.clone());
        let beaten = beats.clone();
        let got = rt.block_on(move || {
            let signals = Signals::new(&[sig]).unwrap();
            let hb = greenstack::spawn(move || {
                while !s.load(SeqCst) {
                    greenstack::time::sleep(Duration::from_millis(5));
                    // Only beats while the other coroutine waits count.
                    if w.load(SeqCst) {
                        b.fetch_add(1, SeqCst);
                    }
                }
            });
            // Sends once the heartbeat has beaten while the other waits
            // (with one worker, only a parked wait lets it beat); if the
            // wait blocked the worker, this never sends and the hang guard
            // reports it.
            let sender = std::thread::spawn(move || {
                while beaten.load(SeqCst) == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                kill_self(sig);
            });
            let got = greenstack::spawn(move || {
                waiting.store(true, SeqCst);
                let got = signals.recv().unwrap();
                waiting.store(false, SeqCst);
                got
            })
            .join()
            .unwrap();
            stop.store(true, SeqCst);
            hb.join().unwrap();
            sender.join().unwrap();
            got
        });
        assert_eq!(got, sig);
        assert!(
            beats.load(SeqCst) > 0,
            "the worker was blocked while waiting"
        );
    });
}

/// Every listener gets each signal; `try_recv` and `recv_timeout` report
/// none when none came (never early); on a plain thread.
#[test]
fn every_listener_gets_each_signal() {
    let sig = libc::SIGUSR2;
    bounded("two listeners", move || {
        let a = Signals::new(&[sig]).unwrap();
        let b = Signals::new(&[sig, sig]).unwrap();
        assert_eq!(a.try_recv(), None);
        let t = Instant::now();
        assert_eq!(b.recv_timeout(Duration::from_millis(20)).unwrap(), None);
        assert!(t.elapsed() >= Duration::from_millis(20));
        kill_self(sig);
        assert_eq!(a.recv().unwrap(), sig);
        assert_eq!(b.recv_timeout(Duration::from_secs(60)).unwrap(), Some(sig));
        assert_eq!(b.try_recv(), None, "one signal, one notice per listener");
        drop((a, b));
        // Still handled (not the default action, which ends the process).
        kill_self(sig);
    });
}

#[test]
fn reserved_and_out_of_range_signals_are_refused() {
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGKILL,
        libc::SIGSTOP,
        0,
        65,
        -1,
    ] {
        let e = Signals::new(&[sig]).expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{sig}: {e}");
    }
}
