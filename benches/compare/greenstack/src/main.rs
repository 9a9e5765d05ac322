//! greenstack's side of the comparison harness: one workload per run,
//! chosen on the command line, one `RESULT` line out. See
//! `benches/README.md` for the workloads and `run.py` for the driver.
//!
//! All work runs on the runtime's workers: the driver coroutine is started
//! with `rt.spawn(..).join()` from `main` (`block_on`'s root would run on
//! the calling thread instead). The workloads of issue 19 that measure what
//! users write are the exceptions: `spawn_join_main`, `deep_stack_main` and
//! `deep_stack_run` spawn from the body of a `#[greenstack::main]` function
//! (module `user_main`), `spawn_join_root` from `rt.block_on(..)`'s root.

#[path = "../../common.rs"]
mod common;

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{fib_spawns, measure, measure_or_cold, report, touch, Args};
use greenstack::net::{TcpListener, TcpStream};
use greenstack::sync::{mpsc, oneshot, Barrier};
use greenstack::{Builder, Runtime};

const PEER: &str = "greenstack";

/// Runs `f` in a coroutine on `rt`'s workers and waits for it.
fn on_workers<T: Send + 'static>(rt: &Runtime, f: impl FnOnce() -> T + Send + 'static) -> T {
    rt.spawn(f)
        .join()
        .expect("the driver coroutine does not panic")
}

/// `n` tiny coroutines each returning its index, joined in spawn order,
/// spawned from the caller (a coroutine).
fn spawn_join_here(n: u64) -> (Duration, u64) {
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| greenstack::spawn(move || black_box(i)))
        .collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let t = start.elapsed();
    assert_eq!(sum, n * (n - 1) / 2);
    (t, n)
}

/// `spawn_join_here` in a driver coroutine on the workers.
fn spawn_join(rt: &Runtime, n: u64) -> (Duration, u64) {
    on_workers(rt, move || spawn_join_here(n))
}

/// Two coroutines each calling `yield_now` `n` times.
fn yield_pingpong(rt: &Runtime, n: u64) -> (Duration, u64) {
    on_workers(rt, move || {
        let yielder = move || {
            for i in 0..n {
                greenstack::yield_now();
                black_box(i);
            }
        };
        let start = Instant::now();
        let a = greenstack::spawn(yielder);
        let b = greenstack::spawn(yielder);
        a.join().unwrap();
        b.join().unwrap();
        (start.elapsed(), 2 * n)
    })
}

/// A token bounced `rounds` times between two coroutines through two
/// `mpsc` channels; one op is one one-way hand-off.
fn channel_pingpong(rt: &Runtime, rounds: u64) -> (Duration, u64) {
    on_workers(rt, move || {
        let (to_b, from_a) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let start = Instant::now();
        let b = greenstack::spawn(move || {
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

/// `channel_pingpong` with both sides receiving through
/// `recv_timeout(timeout)` (`None`: plain `recv`): every wait arms a timer
/// that the reply cancels long before its deadline. One op is one round
/// trip. Only this binary has it (issue 17, item 12: what a timeout costs
/// a wait, and whether cancelled timers give their memory back).
fn timed_pingpong(rt: &Runtime, rounds: u64, timeout: Option<Duration>) -> (Duration, u64) {
    let recv = move |rx: &mpsc::Receiver<u64>| match timeout {
        Some(t) => rx.recv_timeout(t).ok(),
        None => rx.recv().ok(),
    };
    on_workers(rt, move || {
        let (to_b, from_a) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let start = Instant::now();
        let b = greenstack::spawn(move || {
            while let Some(v) = recv(&from_a) {
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let mut v = 0;
        for _ in 0..rounds {
            to_b.send(v).unwrap();
            v = recv(&from_b).unwrap();
        }
        drop(to_b);
        b.join().unwrap();
        let t = start.elapsed();
        assert_eq!(v, rounds);
        (t, rounds)
    })
}

/// A token bounced `rounds` times between two coroutines, the receiving
/// side selecting: A sends it on one of two channels, alternately, and B
/// waits for it with `select!` over both (crossbeam-channel's shape, over
/// `sync::select::Select`; the other channel stays idle), then replies on
/// a third, which A receives from with a plain `recv`. One op is one round
/// trip.
fn select_pingpong(rt: &Runtime, rounds: u64) -> (Duration, u64) {
    on_workers(rt, move || {
        let (to_b1, from_a1) = mpsc::channel::<u64>();
        let (to_b2, from_a2) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let start = Instant::now();
        let b = greenstack::spawn(move || loop {
            let got = greenstack::select! {
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
    })
}

/// `channel_pingpong` with every receive, on both sides, wrapped in
/// `time::timeout(timeout, || rx.recv())`, a deadline the reply always
/// beats (the harness gives 1 s). One op is one round trip.
fn timeout_pingpong(rt: &Runtime, rounds: u64, timeout: Duration) -> (Duration, u64) {
    // `None`: the channel is disconnected.
    let recv =
        move |rx: &mpsc::Receiver<u64>| match greenstack::time::timeout(timeout, || rx.recv()) {
            Ok(got) => got.ok(),
            Err(_) => panic!("a receive timed out after {timeout:?}"),
        };
    on_workers(rt, move || {
        let (to_b, from_a) = mpsc::channel::<u64>();
        let (to_a, from_b) = mpsc::channel::<u64>();
        let start = Instant::now();
        let b = greenstack::spawn(move || {
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

/// The floor under `channel_pingpong` on this runtime, no channel at all:
/// the same token bounced `rounds` times, each side with its own atomic
/// slot, `unpark`ing the other and `park`ing until its slot holds the next
/// round. That is a thread-safe hand-off reduced to the scheduler's own
/// park and unpark: what any channel on this runtime starts from. Only
/// this binary has it; `run.py` reports it under the table.
fn park_pingpong(rt: &Runtime, rounds: u64) -> (Duration, u64) {
    on_workers(rt, move || {
        // slots[0]: A's latest round for B; slots[1]: B's reply.
        let slots = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let b_handle: Arc<OnceLock<greenstack::Coroutine>> = Arc::new(OnceLock::new());
        let a_handle = greenstack::current();
        let start = Instant::now();
        let b = {
            let (slots, b_handle) = (Arc::clone(&slots), Arc::clone(&b_handle));
            greenstack::spawn(move || {
                b_handle.set(greenstack::current()).expect("set once, here");
                a_handle.unpark();
                for i in 1..=rounds {
                    // `park` may return spuriously: re-check.
                    while slots[0].load(Ordering::Acquire) != i {
                        greenstack::park();
                    }
                    slots[1].store(i, Ordering::Release);
                    a_handle.unpark();
                }
            })
        };
        let b_co = loop {
            match b_handle.get() {
                Some(c) => break c.clone(),
                None => greenstack::park(),
            }
        };
        for i in 1..=rounds {
            slots[0].store(i, Ordering::Release);
            b_co.unpark();
            while slots[1].load(Ordering::Acquire) != i {
                greenstack::park();
            }
        }
        b.join().unwrap();
        (start.elapsed(), 2 * rounds)
    })
}

/// `fib(n)` with `fib(n - 1)` in a new coroutine and `fib(n - 2)` inline.
fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let left = greenstack::spawn(move || fib(n - 1));
    let right = fib(n - 2);
    left.join().unwrap() + right
}

fn fanout_fib(rt: &Runtime, n: u64) -> (Duration, u64) {
    on_workers(rt, move || {
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

fn deep_stack(rt: &Runtime, n: u64, depth: u64, stack: usize) -> Duration {
    on_workers(rt, move || {
        let start = Instant::now();
        let barrier = Arc::new(Barrier::new(n as usize));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = barrier.clone();
                Builder::new()
                    .stack_size(stack)
                    .spawn(move || recurse(depth, Some(&barrier)))
                    .expect("spawn")
            })
            .collect();
        let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        black_box(sum);
        start.elapsed()
    })
}

/// `n` coroutines spawned from the caller (a coroutine) with the runtime's
/// default stack size, each recursing `depth` frames of 1 KiB, then joined:
/// with `alive`, all of them wait at a barrier at the bottom (every stack
/// live at once, as `deep_stack`); without, each ends as soon as it is down
/// (spawn-then-run). Returns the time of the whole pass.
fn deep_stack_here(n: u64, depth: u64, alive: bool) -> Duration {
    let start = Instant::now();
    let barrier = alive.then(|| Arc::new(Barrier::new(n as usize)));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            greenstack::spawn(move || recurse(depth, barrier.as_deref()))
        })
        .collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    black_box(sum);
    start.elapsed()
}

/// The workloads whose spawner is `main`'s own body, as an application
/// writes it (issue 19): `#[greenstack::main]` runs that body as an
/// ordinary coroutine on a worker (`Runtime::block_on_worker`), and the
/// timed spawning happens right there, in no extra coroutine. A
/// `#[greenstack::main]` function must be called `main`, hence one module
/// per set of runtime options; the real `main` calls the one the workload
/// needs.
mod user_main {
    use super::*;

    /// The command line, parsed once (the attribute's options read it too).
    pub(crate) fn args() -> &'static Args {
        static ARGS: OnceLock<Args> = OnceLock::new();
        ARGS.get_or_init(Args::parse)
    }

    /// `spawn_join_main`: `spawn_join`'s work in `main`'s body; `cold=1`
    /// times the first pass alone.
    pub(crate) mod spawn_join {
        use super::*;

        #[greenstack::main(workers = args().get("workers", 2) as usize)]
        pub(crate) fn main() {
            let args = args();
            let n = args.get("n", 1_000_000);
            let (ns, iters) =
                measure_or_cold(args.flag("cold"), args.get("budget_ms", 500), || {
                    spawn_join_here(n)
                });
            report(
                PEER,
                args,
                &[
                    ("ns_per_op", format!("{ns:.2}")),
                    ("iters", iters.to_string()),
                ],
            );
        }
    }

    /// `deep_stack_main` (all alive) and `deep_stack_run` (spawn-then-run)
    /// in `main`'s body, the stack reserve set as an application sets it:
    /// the runtime's default, an option of the attribute. `cold=1` times
    /// the first pass alone; otherwise one untimed pass, then timed passes
    /// until `budget_ms` have passed. Reports the mean pass and the
    /// process's peak RSS.
    pub(crate) mod deep_stack {
        use super::*;

        #[greenstack::main(
            workers = args().get("workers", 2) as usize,
            stack_size = args().get("stack", 1 << 20) as usize,
        )]
        pub(crate) fn main() {
            let args = args();
            let (n, depth) = (args.get("n", 1000), args.get("depth", 256));
            let alive = args.workload == "deep_stack_main";
            let (ns, iters) =
                measure_or_cold(args.flag("cold"), args.get("budget_ms", 500), || {
                    (deep_stack_here(n, depth, alive), 1)
                });
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
}

/// `n` coroutines each parked on its own channel; returns the memory
/// (VmRSS + VmPTE, KiB) and mapping count while all of them are parked.
fn parked(rt: &Runtime, n: u64) -> (u64, usize) {
    on_workers(rt, move || {
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let mut senders = Vec::with_capacity(n as usize);
        let mut handles = Vec::with_capacity(n as usize);
        for i in 0..n {
            let (tx, rx) = oneshot::channel::<u64>();
            let ready = ready_tx.clone();
            handles.push(greenstack::spawn(move || {
                ready.send(()).unwrap();
                drop(ready);
                rx.recv().unwrap() + i
            }));
            senders.push(tx);
        }
        drop(ready_tx);
        for _ in 0..n {
            ready_rx.recv().unwrap();
        }
        greenstack::time::sleep(Duration::from_millis(50));
        let kib = common::rss_pte_kib();
        let maps = common::maps_lines();
        for tx in senders {
            tx.send(1).unwrap();
        }
        let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(sum, n * (n - 1) / 2 + n);
        (kib, maps)
    })
}

/// The sockets a `tcp_echo` variant uses: `greenstack::net`'s (`tcp_echo`)
/// or std's blocking ones, which the runtime's hooks make park the
/// coroutine instead of the worker (`tcp_echo_std`). The work is the same.
trait Net {
    type Listener: Send + 'static;
    type Stream: Read + Write + Send + 'static;
    fn bind(addr: &str) -> std::io::Result<Self::Listener>;
    fn local_addr(l: &Self::Listener) -> std::io::Result<std::net::SocketAddr>;
    fn accept(l: &Self::Listener) -> std::io::Result<Self::Stream>;
    fn connect(addr: std::net::SocketAddr) -> std::io::Result<Self::Stream>;
    fn set_nodelay(s: &Self::Stream) -> std::io::Result<()>;
}

/// `greenstack::net`.
struct GreenNet;

impl Net for GreenNet {
    type Listener = TcpListener;
    type Stream = TcpStream;
    fn bind(addr: &str) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr)
    }
    fn local_addr(l: &TcpListener) -> std::io::Result<std::net::SocketAddr> {
        l.local_addr()
    }
    fn accept(l: &TcpListener) -> std::io::Result<TcpStream> {
        l.accept().map(|(s, _)| s)
    }
    fn connect(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
        TcpStream::connect(addr)
    }
    fn set_nodelay(s: &TcpStream) -> std::io::Result<()> {
        s.set_nodelay(true)
    }
}

/// `std::net`, blocking sockets inside coroutines.
struct StdNet;

impl Net for StdNet {
    type Listener = std::net::TcpListener;
    type Stream = std::net::TcpStream;
    fn bind(addr: &str) -> std::io::Result<std::net::TcpListener> {
        std::net::TcpListener::bind(addr)
    }
    fn local_addr(l: &std::net::TcpListener) -> std::io::Result<std::net::SocketAddr> {
        l.local_addr()
    }
    fn accept(l: &std::net::TcpListener) -> std::io::Result<std::net::TcpStream> {
        l.accept().map(|(s, _)| s)
    }
    fn connect(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
        std::net::TcpStream::connect(addr)
    }
    fn set_nodelay(s: &std::net::TcpStream) -> std::io::Result<()> {
        s.set_nodelay(true)
    }
}

/// An echo server of one coroutine per connection; returns its address.
fn echo_server<N: Net>(rt: &Runtime) -> std::net::SocketAddr {
    let listener = N::bind("127.0.0.1:0").expect("bind");
    let addr = N::local_addr(&listener).expect("addr");
    rt.spawn(move || loop {
        let Ok(mut conn) = N::accept(&listener) else {
            continue;
        };
        greenstack::spawn(move || {
            N::set_nodelay(&conn).unwrap();
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
    });
    addr
}

fn tcp_echo<N: Net>(rt: &Runtime, conns: u64, trips: u64, budget_ms: u64) -> (f64, u64) {
    common::raise_nofile();
    let addr = echo_server::<N>(rt);
    let mut streams: Vec<N::Stream> = on_workers(rt, move || {
        (0..conns)
            .map(|_| {
                let mut s = N::connect(addr).expect("connect");
                N::set_nodelay(&s).unwrap();
                // One exchange before the next connect, so the server has
                // accepted this one (no listen-queue overflow, untimed).
                let mut buf = [0u8; 64];
                s.write_all(&buf).unwrap();
                s.read_exact(&mut buf).unwrap();
                s
            })
            .collect()
    });
    measure(budget_ms, || {
        let all = std::mem::take(&mut streams);
        let (back, t) = on_workers(rt, move || {
            let start = Instant::now();
            let clients: Vec<_> = all
                .into_iter()
                .enumerate()
                .map(|(i, mut s)| {
                    greenstack::spawn(move || {
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
            let back: Vec<N::Stream> = clients.into_iter().map(|c| c.join().unwrap()).collect();
            (back, start.elapsed())
        });
        streams = back;
        (t, conns * trips)
    })
}

fn main() -> std::io::Result<()> {
    let args = user_main::args();
    let workers = args.get("workers", 2) as usize;
    let n = args.get("n", 1000);
    let budget = args.get("budget_ms", 500);
    match args.workload.as_str() {
        // The spawner is `#[greenstack::main]`'s body (see `user_main`).
        "spawn_join_main" => {
            user_main::spawn_join::main();
        }
        "deep_stack_main" | "deep_stack_run" => {
            user_main::deep_stack::main();
        }
        // The spawner is `block_on`'s root, on the calling thread (not a
        // worker): the same work as `spawn_join_main`.
        "spawn_join_root" => {
            let rt = Runtime::builder().workers(workers).build()?;
            let cold = args.flag("cold");
            let (ns, iters) =
                rt.block_on(move || measure_or_cold(cold, budget, || spawn_join_here(n)));
            report(
                PEER,
                args,
                &[
                    ("ns_per_op", format!("{ns:.2}")),
                    ("iters", iters.to_string()),
                ],
            );
        }
        "machine_threads" => {
            // No runtime: the machine's own 1 -> 2 thread scaling (see
            // `common::two_thread_seconds`), measured by this binary only.
            let n = args.get("n", 300_000_000);
            let (one, aligned) = common::two_thread_seconds(n, false);
            let (one_again, apart) = common::two_thread_seconds(n, true);
            report(
                PEER,
                args,
                &[
                    ("speedup_aligned", format!("{:.3}", 2.0 * one / aligned)),
                    ("speedup_apart", format!("{:.3}", 2.0 * one_again / apart)),
                ],
            );
        }
        "deep_stack" => {
            let depth = args.get("depth", 256);
            let stack = args.get("stack", 1 << 20) as usize;
            let rt = Runtime::builder().workers(workers).build()?;
            on_workers(&rt, || ()); // workers up
            let t = deep_stack(&rt, n, depth, stack);
            report(
                PEER,
                args,
                &[
                    ("ms", format!("{:.2}", t.as_secs_f64() * 1e3)),
                    ("peak_rss_kib", common::peak_rss_kib().to_string()),
                ],
            );
        }
        "parked" => {
            let rt = Runtime::builder().workers(workers).build()?;
            on_workers(&rt, || ()); // workers up
            let base = common::rss_pte_kib();
            let base_maps = common::maps_lines();
            let (kib, maps) = parked(&rt, n);
            report(
                PEER,
                args,
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
        "timed_pingpong" => {
            // One cold run of `n` round trips (default 1M), the RSS around
            // it, `timeout_s=0` for plain `recv`.
            let n = args.get("n", 1_000_000);
            let timeout = match args.get("timeout_s", 60) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            };
            let rt = Runtime::builder().workers(workers).build()?;
            timed_pingpong(&rt, 1_000, timeout); // workers up, queues grown
            let before = common::rss_pte_kib();
            let (t, ops) = timed_pingpong(&rt, n, timeout);
            let after = common::rss_pte_kib();
            report(
                PEER,
                args,
                &[
                    (
                        "ns_per_op",
                        format!("{:.2}", t.as_nanos() as f64 / ops as f64),
                    ),
                    ("rss_before_kib", before.to_string()),
                    ("rss_after_kib", after.to_string()),
                    (
                        "bytes_per_op",
                        format!(
                            "{:.1}",
                            (after as f64 - before as f64) * 1024.0 / ops as f64
                        ),
                    ),
                ],
            );
        }
        "timeout_cost" => {
            // `timed_pingpong` with and without `recv_timeout(60 s)`, in
            // alternating blocks of `n` round trips (default 200k), `reps`
            // blocks each (default 15), in one process: the fastest block
            // of each is the one least disturbed by other load on the
            // machine, and their ratio is what the timeout costs a wait.
            let n = args.get("n", 200_000);
            let reps = args.get("reps", 15);
            let rt = Runtime::builder().workers(workers).build()?;
            let timeout = Some(Duration::from_secs(60));
            timed_pingpong(&rt, 10_000, None);
            timed_pingpong(&rt, 10_000, timeout);
            let (mut plain, mut timed) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let (t, ops) = timed_pingpong(&rt, n, None);
                plain.push(t.as_nanos() as f64 / ops as f64);
                let (t, ops) = timed_pingpong(&rt, n, timeout);
                timed.push(t.as_nanos() as f64 / ops as f64);
            }
            let stats = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                (v[0], v[v.len() / 2])
            };
            let ((pmin, pmed), (tmin, tmed)) = (stats(&mut plain), stats(&mut timed));
            report(
                PEER,
                args,
                &[
                    ("recv_ns_min", format!("{pmin:.1}")),
                    ("recv_ns_median", format!("{pmed:.1}")),
                    ("recv_timeout_ns_min", format!("{tmin:.1}")),
                    ("recv_timeout_ns_median", format!("{tmed:.1}")),
                    ("ratio_min", format!("{:.3}", tmin / pmin)),
                    ("ratio_median", format!("{:.3}", tmed / pmed)),
                ],
            );
        }
        "tcp_echo" | "tcp_echo_std" => {
            let rt = Runtime::builder().workers(workers).build()?;
            let trips = args.get("trips", 100);
            let (ns, iters) = if args.workload == "tcp_echo" {
                tcp_echo::<GreenNet>(&rt, n, trips, budget)
            } else {
                tcp_echo::<StdNet>(&rt, n, trips, budget)
            };
            report(
                PEER,
                args,
                &[
                    ("ns_per_op", format!("{ns:.2}")),
                    ("iters", iters.to_string()),
                ],
            );
        }
        w => {
            let rt = Runtime::builder().workers(workers).build()?;
            let timeout = Duration::from_millis(args.get("timeout_ms", 1000));
            let once: Box<dyn FnMut() -> (Duration, u64)> = match w {
                "spawn_join" => Box::new(|| spawn_join(&rt, n)),
                "yield_pingpong" => Box::new(|| yield_pingpong(&rt, n)),
                "channel_pingpong" => Box::new(|| channel_pingpong(&rt, n)),
                "park_pingpong" => Box::new(|| park_pingpong(&rt, n)),
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
                args,
                &[
                    ("ns_per_op", format!("{ns:.2}")),
                    ("iters", iters.to_string()),
                ],
            );
        }
    }
    Ok(())
}
