//! The thread peer of the comparison harness: plain OS threads with
//! crossbeam-channel, for the rows whose issue (20) names crossbeam's
//! `select!` between threads as a peer. It has only those workloads,
//! `select_pingpong` and `timeout_pingpong`; `run.py` runs it on no other
//! row (its cases list it in `only_peers`). One workload per run, one
//! `RESULT` line out.
//!
//! There is no runtime and no worker pool: the two sides of each ping-pong
//! are two threads, the calling one and one spawned per timed iteration
//! (the others spawn one task per iteration the same way). `workers` is
//! accepted and echoed, not used: two threads is what the other peers'
//! `workers=2` gives them. crossbeam's blocking receive spins and yields a
//! little before it parks the thread (`Backoff`), as it ships.

#[path = "../../common.rs"]
mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{measure, report, Args};
use crossbeam_channel::{select, unbounded, Receiver, RecvTimeoutError};

const PEER: &str = "threads";

/// A token bounced `rounds` times between two threads, the receiving side
/// selecting: A sends it on one of two unbounded channels, alternately,
/// and B waits for it with `crossbeam_channel::select!` over both (the
/// other stays idle), then replies on a third, which A receives from with
/// a plain `recv`. One op is one round trip.
fn select_pingpong(rounds: u64) -> (Duration, u64) {
    let (to_b1, from_a1) = unbounded::<u64>();
    let (to_b2, from_a2) = unbounded::<u64>();
    let (to_a, from_b) = unbounded::<u64>();
    let start = Instant::now();
    let b = thread::spawn(move || loop {
        let got = select! {
            recv(from_a1) -> v => v,
            recv(from_a2) -> v => v,
        };
        // A dropped its senders: done.
        let Ok(v) = got else { break };
        if to_a.send(v + 1).is_err() {
            break;
        }
    });
    let mut v = 0;
    for i in 0..rounds {
        let to_b = if i % 2 == 0 { &to_b1 } else { &to_b2 };
        to_b.send(v).unwrap();
        v = from_b.recv().unwrap();
    }
    drop((to_b1, to_b2));
    b.join().unwrap();
    let t = start.elapsed();
    assert_eq!(v, rounds);
    (t, rounds)
}

/// The one-channel ping-pong with every receive, on both sides, a
/// `recv_timeout(timeout)`, a deadline the reply always beats (the harness
/// gives 1 s). One op is one round trip.
fn timeout_pingpong(rounds: u64, timeout: Duration) -> (Duration, u64) {
    // `None`: the channel is disconnected.
    let recv = move |rx: &Receiver<u64>| match rx.recv_timeout(timeout) {
        Ok(v) => Some(v),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => panic!("a receive timed out after {timeout:?}"),
    };
    let (to_b, from_a) = unbounded::<u64>();
    let (to_a, from_b) = unbounded::<u64>();
    let start = Instant::now();
    let b = thread::spawn(move || {
        while let Some(v) = recv(&from_a) {
            if to_a.send(v + 1).is_err() {
                break;
            }
        }
    });
    let mut v = 0;
    for _ in 0..rounds {
        to_b.send(v).unwrap();
        v = recv(&from_b).expect("B replies");
    }
    drop(to_b);
    b.join().unwrap();
    let t = start.elapsed();
    assert_eq!(v, rounds);
    (t, rounds)
}

fn main() {
    let args = Args::parse();
    let n = args.get("n", 1000);
    let budget = args.get("budget_ms", 500);
    let timeout = Duration::from_millis(args.get("timeout_ms", 1000));
    let once: Box<dyn FnMut() -> (Duration, u64)> = match args.workload.as_str() {
        "select_pingpong" => Box::new(|| select_pingpong(n)),
        "timeout_pingpong" => Box::new(|| timeout_pingpong(n, timeout)),
        w => {
            eprintln!(
                "unknown workload {w} (this peer has select_pingpong and timeout_pingpong only)"
            );
            std::process::exit(2);
        }
    };
    let (ns, iters) = measure(budget, once);
    report(
        PEER,
        &args,
        &[
            ("ns_per_op", format!("{ns:.2}")),
            ("iters", iters.to_string()),
        ],
    );
}
