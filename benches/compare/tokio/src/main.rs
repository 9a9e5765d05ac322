//! tokio's side of the comparison harness: the same workloads as the
//! greenstack program, written as idiomatic async Rust on tokio's
//! multi-thread runtime. One workload per run, one `RESULT` line out.
//!
//! All work runs on the runtime's workers: the driver task is started with
//! `rt.spawn(..)` and `main` waits for it with `rt.block_on` (whose own
//! future runs on the calling thread, not on a worker). The workloads of
//! issue 19 that measure what users write are the exceptions:
//! `spawn_join_main`, `deep_stack_main` and `deep_stack_run` spawn from the
//! body of a `#[tokio::main]` function (module `user_main`), which tokio
//! runs in `block_on` on the main thread.

#[path = "../../common.rs"]
mod common;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fib_spawns, measure, report, touch, Args};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot, Barrier};

const PEER: &str = "tokio";

fn runtime(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("build the runtime")
}

/// Runs `f` as a task on `rt`'s workers and waits for it.
fn on_workers<T: Send + 'static>(rt: &Runtime, f: impl Future<Output = T> + Send + 'static) -> T {
    let task = rt.spawn(f);
    rt.block_on(task).expect("the driver task does not panic")
}

/// `n` tiny tasks each returning its index, joined in spawn order,
/// spawned from the caller.
async fn spawn_join_here(n: u64) -> (Duration, u64) {
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| tokio::spawn(async move { black_box(i) }))
        .collect();
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    let t = start.elapsed();
    assert_eq!(sum, n * (n - 1) / 2);
    (t, n)
}

/// `spawn_join_here` in a driver task on the workers.
fn spawn_join(rt: &Runtime, n: u64) -> (Duration, u64) {
    on_workers(rt, spawn_join_here(n))
}

/// Two tasks each calling `yield_now` `n` times.
fn yield_pingpong(rt: &Runtime, n: u64) -> (Duration, u64) {
    on_workers(rt, async move {
        let yielder = move || async move {
            for i in 0..n {
                tokio::task::yield_now().await;
                black_box(i);
            }
        };
        let start = Instant::now();
        let a = tokio::spawn(yielder());
        let b = tokio::spawn(yielder());
        a.await.unwrap();
        b.await.unwrap();
        (start.elapsed(), 2 * n)
    })
}

/// A token bounced `rounds` times between two tasks through two unbounded
/// `mpsc` channels; one op is one one-way hand-off.
fn channel_pingpong(rt: &Runtime, rounds: u64) -> (Duration, u64) {
    on_workers(rt, async move {
        let (to_b, mut from_a) = mpsc::unbounded_channel::<u64>();
        let (to_a, mut from_b) = mpsc::unbounded_channel::<u64>();
        let start = Instant::now();
        let b = tokio::spawn(async move {
            while let Some(v) = from_a.recv().await {
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let mut v = 0;
        for _ in 0..rounds {
            to_b.send(v).unwrap();
            v = from_b.recv().await.unwrap();
        }
        drop(to_b);
        b.await.unwrap();
        let t = start.elapsed();
        assert_eq!(v, rounds);
        (t, 2 * rounds)
    })
}

/// A token bounced `rounds` times between two tasks, the receiving side
/// selecting: A sends it on one of two unbounded `mpsc` channels,
/// alternately, and B waits for it with `tokio::select!` over both
/// receivers (the other stays idle), then replies on a third, which A
/// receives from with a plain `recv().await`. One op is one round trip.
fn select_pingpong(rt: &Runtime, rounds: u64) -> (Duration, u64) {
    on_workers(rt, async move {
        let (to_b1, mut from_a1) = mpsc::unbounded_channel::<u64>();
        let (to_b2, mut from_a2) = mpsc::unbounded_channel::<u64>();
        let (to_a, mut from_b) = mpsc::unbounded_channel::<u64>();
        let start = Instant::now();
        let b = tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    v = from_a1.recv() => v,
                    v = from_a2.recv() => v,
                };
                // A dropped its senders: done.
                let Some(v) = got else { break };
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let mut v = 0;
        for i in 0..rounds {
            let to_b = if i % 2 == 0 { &to_b1 } else { &to_b2 };
            to_b.send(v).unwrap();
            v = from_b.recv().await.unwrap();
        }
        drop((to_b1, to_b2));
        b.await.unwrap();
        let t = start.elapsed();
        assert_eq!(v, rounds);
        (t, rounds)
    })
}

/// `channel_pingpong` with every receive, on both sides, wrapped in
/// `tokio::time::timeout(timeout, rx.recv())`, a deadline the reply always
/// beats (the harness gives 1 s). One op is one round trip.
fn timeout_pingpong(rt: &Runtime, rounds: u64, timeout: Duration) -> (Duration, u64) {
    on_workers(rt, async move {
        let (to_b, mut from_a) = mpsc::unbounded_channel::<u64>();
        let (to_a, mut from_b) = mpsc::unbounded_channel::<u64>();
        let start = Instant::now();
        let b = tokio::spawn(async move {
            while let Some(v) = tokio::time::timeout(timeout, from_a.recv())
                .await
                .unwrap_or_else(|_| panic!("a receive timed out after {timeout:?}"))
            {
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let mut v = 0;
        for _ in 0..rounds {
            to_b.send(v).unwrap();
            v = tokio::time::timeout(timeout, from_b.recv())
                .await
                .unwrap_or_else(|_| panic!("a receive timed out after {timeout:?}"))
                .expect("B replies");
        }
        drop(to_b);
        b.await.unwrap();
        let t = start.elapsed();
        assert_eq!(v, rounds);
        (t, rounds)
    })
}

/// `fib(n)` with `fib(n - 1)` in a new task and `fib(n - 2)` inline. A
/// recursive `async fn` must box its future.
fn fib(n: u64) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move {
        if n < 2 {
            return n;
        }
        let left = tokio::spawn(fib(n - 1));
        let right = fib(n - 2).await;
        left.await.unwrap() + right
    })
}

fn fanout_fib(rt: &Runtime, n: u64) -> (Duration, u64) {
    on_workers(rt, async move {
        let start = Instant::now();
        let v = fib(n).await;
        let t = start.elapsed();
        assert_eq!(v, common::fib_plain(n));
        (t, fib_spawns(n))
    })
}

/// One level of the deep recursion as a boxed async fn (async Rust's only
/// form of recursion): the live 1 KiB local sits in the level's heap-boxed
/// future; with a barrier, the deepest level waits at it (without, the
/// task unwinds and ends as soon as it is down: `deep_stack_run`).
fn recurse(depth: u64, barrier: Option<Arc<Barrier>>) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move {
        let mut local = [0u8; 1024];
        touch(&mut local, depth);
        if depth == 0 {
            if let Some(b) = barrier {
                b.wait().await;
            }
            return u64::from(local[0]);
        }
        let below = recurse(depth - 1, barrier).await;
        below + u64::from(local[(depth as usize * 7) % 1024])
    })
}

fn deep_stack(rt: &Runtime, n: u64, depth: u64) -> Duration {
    on_workers(rt, async move {
        let start = Instant::now();
        let barrier = Arc::new(Barrier::new(n as usize));
        let handles: Vec<_> = (0..n)
            .map(|_| tokio::spawn(recurse(depth, Some(barrier.clone()))))
            .collect();
        let mut sum = 0;
        for h in handles {
            sum += h.await.unwrap();
        }
        black_box(sum);
        start.elapsed()
    })
}

/// `n` tasks spawned from the caller, each recursing `depth` boxed levels
/// of 1 KiB, then joined: with `alive`, all wait at a barrier at the bottom
/// (as `deep_stack`); without, each ends as soon as it is down
/// (spawn-then-run). Returns the time of the whole pass.
async fn deep_stack_here(n: u64, depth: u64, alive: bool) -> Duration {
    let start = Instant::now();
    let barrier = alive.then(|| Arc::new(Barrier::new(n as usize)));
    let handles: Vec<_> = (0..n)
        .map(|_| tokio::spawn(recurse(depth, barrier.clone())))
        .collect();
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    black_box(sum);
    start.elapsed()
}

/// `common::measure_or_cold` for an async pass: with `cold` the first pass
/// alone, else one untimed pass, then timed passes until `budget_ms` have
/// passed (the same loop as `common::measure`).
async fn measure_or_cold_async<F, Fut>(cold: bool, budget_ms: u64, mut once: F) -> (f64, u64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (Duration, u64)>,
{
    if cold {
        let (t, n) = once().await;
        return (t.as_nanos() as f64 / n as f64, 1);
    }
    once().await;
    let budget = Duration::from_millis(budget_ms);
    let (mut total, mut ops, mut iters) = (Duration::ZERO, 0u64, 0u64);
    while iters == 0 || (total < budget && iters < 1000) {
        let (t, n) = once().await;
        total += t;
        ops += n;
        iters += 1;
    }
    (total.as_nanos() as f64 / ops as f64, iters)
}

/// The workloads whose spawner is `main`'s own body, as an application
/// writes it (issue 19): the body of a `#[tokio::main]` function, which
/// tokio runs in `Runtime::block_on` on the calling thread (so spawns come
/// from outside the workers, through the runtime's shared queue, and the
/// joins wake that thread). The attribute takes the worker count as a
/// literal: 2, the harness's; `main` refuses other counts.
mod user_main {
    use super::*;

    /// The worker count written in the attributes below.
    pub(crate) const WORKERS: usize = 2;

    /// `spawn_join_main`: `spawn_join`'s work in `main`'s body; `cold=1`
    /// times the first pass alone.
    #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    pub(crate) async fn spawn_join(args: &Args) {
        let n = args.get("n", 1_000_000);
        let (ns, iters) =
            measure_or_cold_async(args.flag("cold"), args.get("budget_ms", 500), || {
                spawn_join_here(n)
            })
            .await;
        report(
            PEER,
            args,
            &[
                ("ns_per_op", format!("{ns:.2}")),
                ("iters", iters.to_string()),
            ],
        );
    }

    /// `deep_stack_main` (all alive) and `deep_stack_run` (spawn-then-run)
    /// in `main`'s body. Reports the mean pass and the peak RSS.
    #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    pub(crate) async fn deep_stack(args: &Args) {
        let (n, depth) = (args.get("n", 1000), args.get("depth", 256));
        let alive = args.workload == "deep_stack_main";
        let (ns, iters) = measure_or_cold_async(
            args.flag("cold"),
            args.get("budget_ms", 500),
            || async move { (deep_stack_here(n, depth, alive).await, 1) },
        )
        .await;
        report(
            PEER,
            args,
            &[
                ("ms", format!("{:.2}", ns / 1e6)),
                ("iters", iters.to_string()),
                ("peak_rss_kib", common::peak_rss_kib().to_string()),
            ],
        );
    }
}

/// `n` tasks each parked on its own channel; returns the memory (VmRSS +
/// VmPTE, KiB) and mapping count while all of them are parked.
fn parked(rt: &Runtime, n: u64) -> (u64, usize) {
    on_workers(rt, async move {
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
        let mut senders = Vec::with_capacity(n as usize);
        let mut handles = Vec::with_capacity(n as usize);
        for i in 0..n {
            let (tx, rx) = oneshot::channel::<u64>();
            let ready = ready_tx.clone();
            handles.push(tokio::spawn(async move {
                ready.send(()).unwrap();
                drop(ready);
                rx.await.unwrap() + i
            }));
            senders.push(tx);
        }
        drop(ready_tx);
        for _ in 0..n {
            ready_rx.recv().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let kib = common::rss_pte_kib();
        let maps = common::maps_lines();
        for tx in senders {
            tx.send(1).unwrap();
        }
        let mut sum = 0;
        for h in handles {
            sum += h.await.unwrap();
        }
        assert_eq!(sum, n * (n - 1) / 2 + n);
        (kib, maps)
    })
}

/// An echo server of one task per connection; returns its address.
fn echo_server(rt: &Runtime, paged: bool) -> std::net::SocketAddr {
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                conn.set_nodelay(true).unwrap();
                let mut buf = [0u8; 64];
                let mut page = paged.then(OwnPage::new);
                loop {
                    OwnPage::touch(&mut page, buf[0]);
                    match conn.read_exact(&mut buf).await {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(e) => {
                            eprintln!("echo server: read failed: {e}");
                            break;
                        }
                    }
                    if let Err(e) = conn.write_all(&buf).await {
                        eprintln!("echo server: write failed: {e}");
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A 4 KiB block on a page of its own, for `tcp_echo`'s `page_per_task`
/// diagnostic.
#[repr(align(4096))]
struct OwnPage([u8; 4096]);

impl OwnPage {
    fn new() -> Box<OwnPage> {
        Box::new(OwnPage([0; 4096]))
    }

    /// Writes one byte near the end of the page, as a coroutine's switch
    /// writes the top of its stack (a no-op without a page).
    #[inline(never)]
    fn touch(page: &mut Option<Box<OwnPage>>, v: u8) {
        if let Some(p) = page {
            p.0[4095] = v;
            std::hint::black_box(&p);
        }
    }
}

/// `paged` (the `page_per_task=1` diagnostic, not run by `run.py`): each
/// task writes one byte of a page of its own per round trip, as each
/// greenstack coroutine's switch writes the top of its own stack. What
/// that costs tokio at many connections is the part of greenstack's gap
/// that comes from one stack page per coroutine (README, Benchmarks).
fn tcp_echo(rt: &Runtime, conns: u64, trips: u64, budget_ms: u64, paged: bool) -> (f64, u64) {
    common::raise_nofile();
    let addr = echo_server(rt, paged);
    let mut streams: Vec<TcpStream> = on_workers(rt, async move {
        let mut v = Vec::with_capacity(conns as usize);
        for _ in 0..conns {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).unwrap();
            // One exchange before the next connect (untimed set-up).
            let mut buf = [0u8; 64];
            s.write_all(&buf).await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            v.push(s);
        }
        v
    });
    measure(budget_ms, || {
        let all = std::mem::take(&mut streams);
        let (back, t) = on_workers(rt, async move {
            let start = Instant::now();
            let clients: Vec<_> = all
                .into_iter()
                .enumerate()
                .map(|(i, mut s)| {
                    tokio::spawn(async move {
                        let msg = [i as u8; 64];
                        let mut buf = [0u8; 64];
                        let mut page = paged.then(OwnPage::new);
                        for _ in 0..trips {
                            OwnPage::touch(&mut page, buf[0]);
                            s.write_all(&msg).await.unwrap();
                            s.read_exact(&mut buf).await.unwrap();
                            assert_eq!(buf, msg);
                        }
                        s
                    })
                })
                .collect();
            let mut back = Vec::with_capacity(clients.len());
            for c in clients {
                back.push(c.await.unwrap());
            }
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
    match args.workload.as_str() {
        // The spawner is `#[tokio::main]`'s body (see `user_main`).
        "spawn_join_main" | "deep_stack_main" | "deep_stack_run" => {
            if workers != user_main::WORKERS {
                report(
                    PEER,
                    &args,
                    &[
                        ("status", "failed".into()),
                        (
                            "error",
                            format!(
                                "#[tokio::main] here has worker_threads = {}",
                                user_main::WORKERS
                            ),
                        ),
                    ],
                );
                return;
            }
            if args.workload == "spawn_join_main" {
                user_main::spawn_join(&args);
            } else {
                user_main::deep_stack(&args);
            }
            return;
        }
        _ => {}
    }
    let rt = runtime(workers);
    match args.workload.as_str() {
        "deep_stack" => {
            on_workers(&rt, async {}); // workers up
            let t = deep_stack(&rt, n, args.get("depth", 256));
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
            on_workers(&rt, async {}); // workers up
            let base = common::rss_pte_kib();
            let base_maps = common::maps_lines();
            let (kib, maps) = parked(&rt, n);
            report(
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
            );
        }
        "tcp_echo" => {
            let paged = args.flag("page_per_task");
            let (ns, iters) = tcp_echo(&rt, n, args.get("trips", 100), budget, paged);
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
                "spawn_join" => Box::new(|| spawn_join(&rt, n)),
                "yield_pingpong" => Box::new(|| yield_pingpong(&rt, n)),
                "channel_pingpong" => Box::new(|| channel_pingpong(&rt, n)),
                "select_pingpong" => Box::new(|| select_pingpong(&rt, n)),
                "timeout_pingpong" => Box::new(|| timeout_pingpong(&rt, n, timeout)),
                "fanout_fib" => Box::new(|| fanout_fib(&rt, n)),
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
