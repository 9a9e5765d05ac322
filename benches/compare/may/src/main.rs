//! may's side of the comparison harness: the same workloads as the
//! greenstack program, written with may's `go!` (its documented way to call
//! the `unsafe` `coroutine::spawn`), `may::sync` and `may::net`. One workload
//! per run, one `RESULT` line out.
//!
//! may is configured through its global `may::config()` before the first
//! coroutine starts: the worker count, and for `deep_stack` the default
//! stack size (in words, as may's API takes it). All work runs in
//! coroutines on the workers: the driver coroutine is started with `go!`
//! from `main`, which joins it (the shape of may's `examples/spawn.rs`).
//!
//! The workloads of issue 19 that measure what users write
//! (`spawn_join_main`, `deep_stack_main`, `deep_stack_run`) spawn from
//! `main`'s thread itself, with `go!`, and join there: may has no main
//! coroutine and no attribute that makes one, and that is the shape of
//! the first program in may's README (an accept loop in `main` that
//! `go!`s a coroutine per connection). A `JoinHandle::join` on a thread
//! blocks the thread.

#[path = "../../common.rs"]
mod common;

use std::hint::black_box;
use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fib_spawns, measure, measure_or_cold, report, touch, Args};
use may::go;
use may::net::{TcpListener, TcpStream};
use may::sync::{mpsc, Barrier};

const PEER: &str = "may";

/// Runs `f` in a coroutine on the workers and waits for it.
fn on_workers<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    go!(f).join().expect("the driver coroutine does not panic")
}

/// `n` tiny coroutines each returning its index, joined in spawn order,
/// spawned from the caller (a coroutine or a thread).
fn spawn_join_here(n: u64) -> (Duration, u64) {
    let start = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| go!(move || black_box(i))).collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let t = start.elapsed();
    assert_eq!(sum, n * (n - 1) / 2);
    (t, n)
}

/// `spawn_join_here` in a driver coroutine on the workers.
fn spawn_join(n: u64) -> (Duration, u64) {
    on_workers(move || spawn_join_here(n))
}

/// Two coroutines each calling `yield_now` `n` times.
fn yield_pingpong(n: u64) -> (Duration, u64) {
    on_workers(move || {
        let yielder = move || {
            for i in 0..n {
                may::coroutine::yield_now();
                black_box(i);
            }
        };
        let start = Instant::now();
        let a = go!(yielder);
        let b = go!(yielder);
        a.join().unwrap();
        b.join().unwrap();
        (start.elapsed(), 2 * n)
    })
}

/// A token bounced `rounds` times between two coroutines through two
/// `mpsc` channels; one op is one one-way hand-off.
fn channel_pingpong(rounds: u64) -> (Duration, u64) {
    on_workers(move || {
        let (to_b, from_a) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let start = Instant::now();
        let b = go!(move || {
            for v in from_a.iter() {
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let mut v = 0;
        for _ in 0..rounds {
            to_b.send(v).unwrap();
            v = from_b.recv().unwrap();
        }
        drop(to_b);
        b.join().unwrap();
        let t = start.elapsed();
        assert_eq!(v, rounds);
        (t, 2 * rounds)
    })
}

/// A token bounced `rounds` times between two coroutines, the receiving
/// side selecting: A sends it on one of two `mpsc` channels, alternately,
/// and B waits for it with `may::select!` over both (the other stays
/// idle), then replies on a third, which A receives from with a plain
/// `recv`. One op is one round trip.
///
/// may's `select!` runs each case's expression in a coroutine of its own
/// (a `cqueue` scope: two coroutines spawned per select), takes the first
/// to finish, runs its body on the caller and cancels the other. The
/// bodies run in those coroutines' closures, so the value comes back
/// through a slot (`u64::MAX`: the channel is disconnected).
fn select_pingpong(rounds: u64) -> (Duration, u64) {
    const GONE: u64 = u64::MAX;
    on_workers(move || {
        let (to_b1, from_a1) = mpsc::channel::<u64>();
        let (to_b2, from_a2) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let start = Instant::now();
        let b = go!(move || {
            let got = AtomicU64::new(GONE);
            loop {
                may::select!(
                    v = from_a1.recv() => got.store(v.unwrap_or(GONE), Ordering::Relaxed),
                    v = from_a2.recv() => got.store(v.unwrap_or(GONE), Ordering::Relaxed)
                );
                // A dropped its senders: done.
                let v = got.load(Ordering::Relaxed);
                if v == GONE || to_a.send(v + 1).is_err() {
                    break;
                }
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
    })
}

/// `channel_pingpong` with every receive, on both sides, a
/// `recv_timeout(timeout)` (may has no timeout wrapper for a wait; its
/// channels take one), a deadline the reply always beats (the harness
/// gives 1 s). One op is one round trip.
fn timeout_pingpong(rounds: u64, timeout: Duration) -> (Duration, u64) {
    // `None`: the channel is disconnected.
    let recv = move |rx: &mpsc::Receiver<u64>| match rx.recv_timeout(timeout) {
        Ok(v) => Some(v),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("a receive timed out after {timeout:?}")
        }
    };
    on_workers(move || {
        let (to_b, from_a) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let start = Instant::now();
        let b = go!(move || {
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
    })
}

/// `fib(n)` with `fib(n - 1)` in a new coroutine and `fib(n - 2)` inline.
fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let left = go!(move || fib(n - 1));
    let right = fib(n - 2);
    left.join().unwrap() + right
}

fn fanout_fib(n: u64) -> (Duration, u64) {
    on_workers(move || {
        let start = Instant::now();
        let v = fib(n);
        let t = start.elapsed();
        assert_eq!(v, common::fib_plain(n));
        (t, fib_spawns(n))
    })
}

/// One frame of the deep recursion: a live 1 KiB local, used after the
/// recursive call; with a barrier, the deepest frame waits at it so that
/// every coroutine's whole stack is live at once (without, each coroutine
/// unwinds and ends as soon as it is down: `deep_stack_run`).
#[inline(never)]
fn recurse(depth: u64, barrier: Option<&Barrier>) -> u64 {
    let mut local = [0u8; 1024];
    touch(&mut local, depth);
    if depth == 0 {
        if let Some(b) = barrier {
            b.wait();
        }
        return u64::from(local[0]);
    }
    let below = recurse(depth - 1, barrier);
    below + u64::from(local[(depth as usize * 7) % 1024])
}

fn deep_stack(n: u64, depth: u64) -> Duration {
    on_workers(move || {
        let start = Instant::now();
        let barrier = Arc::new(Barrier::new(n as usize));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = barrier.clone();
                go!(move || recurse(depth, Some(&barrier)))
            })
            .collect();
        let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        black_box(sum);
        start.elapsed()
    })
}

/// `n` coroutines spawned from the caller, each recursing `depth` frames of
/// 1 KiB, then joined: with `alive`, all wait at a barrier at the bottom
/// (as `deep_stack`); without, each ends as soon as it is down
/// (spawn-then-run). Returns the time of the whole pass.
fn deep_stack_here(n: u64, depth: u64, alive: bool) -> Duration {
    let start = Instant::now();
    let barrier = alive.then(|| Arc::new(Barrier::new(n as usize)));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            go!(move || recurse(depth, barrier.as_deref()))
        })
        .collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    black_box(sum);
    start.elapsed()
}

/// What became of a `parked` run.
enum Parked {
    /// All parked: memory (VmRSS + VmPTE, KiB) and mapping count.
    Ok(u64, usize),
    /// Spawning coroutine number `.0` (0-based) failed with `.1`.
    Failed(u64, String, usize),
}

/// `n` coroutines each parked on its own channel (may has no oneshot; its
/// `mpsc` is the single-value channel of choice).
fn parked(n: u64) -> Parked {
    on_workers(move || {
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let mut senders = Vec::with_capacity(n as usize);
        let mut handles = Vec::with_capacity(n as usize);
        let mut failed = None;
        for i in 0..n {
            let (tx, rx) = mpsc::channel::<u64>();
            let ready = ready_tx.clone();
            // may panics when it cannot allocate a stack (mmap/mprotect
            // fail at the kernel's mapping limit): record where.
            let spawned = std::panic::catch_unwind(AssertUnwindSafe(|| {
                go!(move || {
                    ready.send(()).unwrap();
                    drop(ready);
                    rx.recv().unwrap() + i
                })
            }));
            match spawned {
                Ok(h) => {
                    handles.push(h);
                    senders.push(tx);
                }
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into());
                    failed = Some((i, msg));
                    break;
                }
            }
        }
        drop(ready_tx);
        for _ in 0..handles.len() {
            ready_rx.recv().unwrap();
        }
        may::coroutine::sleep(Duration::from_millis(50));
        let kib = common::rss_pte_kib();
        let maps = common::maps_lines();
        if let Some((i, msg)) = failed {
            // Leave the parked ones parked: the process exits next.
            std::mem::forget((senders, handles));
            return Parked::Failed(i, msg, maps);
        }
        for tx in senders {
            tx.send(1).unwrap();
        }
        let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(sum, n * (n - 1) / 2 + n);
        Parked::Ok(kib, maps)
    })
}

/// An echo server of one coroutine per connection; returns its address.
fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    go!(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            go!(move || {
                conn.set_nodelay(true).unwrap();
                let mut buf = [0u8; 64];
                loop {
                    match conn.read_exact(&mut buf) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(e) => {
                            eprintln!("echo server: read failed: {e}");
                            break;
                        }
                    }
                    if let Err(e) = conn.write_all(&buf) {
                        eprintln!("echo server: write failed: {e}");
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn tcp_echo(conns: u64, trips: u64, budget_ms: u64) -> (f64, u64) {
    common::raise_nofile();
    let addr = echo_server();
    let mut streams: Vec<TcpStream> = on_workers(move || {
        (0..conns)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_nodelay(true).unwrap();
                // One exchange before the next connect (untimed set-up).
                let mut buf = [0u8; 64];
                s.write_all(&buf).unwrap();
                s.read_exact(&mut buf).unwrap();
                s
            })
            .collect()
    });
    measure(budget_ms, || {
        let all = std::mem::take(&mut streams);
        let (back, t) = on_workers(move || {
            let start = Instant::now();
            let clients: Vec<_> = all
                .into_iter()
                .enumerate()
                .map(|(i, mut s)| {
                    go!(move || {
                        let msg = [i as u8; 64];
                        let mut buf = [0u8; 64];
                        for _ in 0..trips {
                            s.write_all(&msg).unwrap();
                            s.read_exact(&mut buf).unwrap();
                            assert_eq!(buf, msg);
                        }
                        s
                    })
                })
                .collect();
            let back: Vec<TcpStream> = clients.into_iter().map(|c| c.join().unwrap()).collect();
            (back, start.elapsed())
        });
        streams = back;
        (t, conns * trips)
    })
}

fn main() {
    let args = Args::parse();
    let workers = args.get("workers", 2) as usize;
    let n = args.get("n", 1000);
    let budget = args.get("budget_ms", 500);
    may::config().set_workers(workers);
    match args.workload.as_str() {
        // The spawner is `main`'s thread (see the module's docs); no
        // driver coroutine, no warm-up unless `cold=0`.
        "spawn_join_main" => {
            let (ns, iters) = measure_or_cold(args.flag("cold"), budget, || spawn_join_here(n));
            report(
                PEER,
                &args,
                &[
                    ("ns_per_op", format!("{ns:.2}")),
                    ("iters", iters.to_string()),
                ],
            );
        }
        "deep_stack_main" | "deep_stack_run" => {
            let stack = args.get("stack", 1 << 20) as usize;
            may::config().set_stack_size(stack / std::mem::size_of::<usize>());
            let (depth, alive) = (args.get("depth", 256), args.workload == "deep_stack_main");
            let (ns, iters) = measure_or_cold(args.flag("cold"), budget, || {
                (deep_stack_here(n, depth, alive), 1)
            });
            report(
                PEER,
                &args,
                &[
                    ("ms", format!("{:.2}", ns / 1e6)),
                    ("iters", iters.to_string()),
                    ("peak_rss_kib", common::peak_rss_kib().to_string()),
                ],
            );
        }
        "deep_stack" => {
            // may's stacks are fixed-size: configure room for the recursion
            // (the size is in words).
            let stack = args.get("stack", 1 << 20) as usize;
            may::config().set_stack_size(stack / std::mem::size_of::<usize>());
            on_workers(|| ()); // workers up
            let t = deep_stack(n, args.get("depth", 256));
            report(
                PEER,
                &args,
                &[
                    ("ms", format!("{:.2}", t.as_secs_f64() * 1e3)),
                    ("peak_rss_kib", common::peak_rss_kib().to_string()),
                ],
            );
        }
        "parked" => {
            on_workers(|| ()); // workers up
            let base = common::rss_pte_kib();
            let base_maps = common::maps_lines();
            match parked(n) {
                Parked::Ok(kib, maps) => report(
                    PEER,
                    &args,
                    &[
                        ("status", "ok".into()),
                        (
                            "kib_per_task",
                            format!("{:.3}", kib.saturating_sub(base) as f64 / n as f64),
                        ),
                        ("maps_lines", maps.to_string()),
                        ("base_maps_lines", base_maps.to_string()),
                        ("base_kib", base.to_string()),
                    ],
                ),
                Parked::Failed(i, msg, maps) => {
                    report(
                        PEER,
                        &args,
                        &[
                            ("status", "failed".into()),
                            ("spawned", i.to_string()),
                            ("maps_lines", maps.to_string()),
                            ("base_maps_lines", base_maps.to_string()),
                            (
                                "max_map_count",
                                std::fs::read_to_string("/proc/sys/vm/max_map_count")
                                    .unwrap_or_default()
                                    .trim()
                                    .to_string(),
                            ),
                            // Last: the rest of the line is the message.
                            ("error", msg.replace('\n', " ")),
                        ],
                    );
                    std::process::exit(0);
                }
            }
        }
        "tcp_echo" => {
            let (ns, iters) = tcp_echo(n, args.get("trips", 100), budget);
            report(
                PEER,
                &args,
                &[
                    ("ns_per_op", format!("{ns:.2}")),
                    ("iters", iters.to_string()),
                ],
            );
        }
        w => {
            let timeout = Duration::from_millis(args.get("timeout_ms", 1000));
            let once: Box<dyn FnMut() -> (Duration, u64)> = match w {
                "spawn_join" => Box::new(|| spawn_join(n)),
                "yield_pingpong" => Box::new(|| yield_pingpong(n)),
                "channel_pingpong" => Box::new(|| channel_pingpong(n)),
                "select_pingpong" => Box::new(|| select_pingpong(n)),
                "timeout_pingpong" => Box::new(|| timeout_pingpong(n, timeout)),
                "fanout_fib" => Box::new(|| fanout_fib(n)),
                _ => {
                    eprintln!("unknown workload {w}");
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
    }
}
