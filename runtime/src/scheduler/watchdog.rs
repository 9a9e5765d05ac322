//! The watchdog: a thread that notices a worker stuck in one coroutine.
//!
//! Every quarter threshold it samples each worker's switch counter and the
//! header pointer of the coroutine it runs. A worker whose counter has not
//! moved for a whole threshold while a coroutine runs gets one warn event
//! naming the coroutine. It runs only when a threshold is set.
//!
//! The report names the likely causes. Besides a blocking call or long CPU
//! work in the coroutine itself, there is one that is not its fault: a
//! wait the hooks do not park (a std channel's `recv`, `thread::park`,
//! `parking_lot`'s locks; std's own locks park, `crate::hook`) for what
//! only another coroutine of the same worker would do, a send or an
//! unlock. The named coroutine then blocks the worker thread, and the
//! other, which only that thread may run, never gets to it: the worker
//! hangs for good.
//!
//! The report says which it is when it can, from the worker thread's
//! `/proc/self/task/<tid>/syscall`: `running` is CPU work; the futex call
//! is such a wait (most likely the case above); any
//! other number is a blocking system call the hooks do not park
//! (`crate::hook`: calls they cover park the coroutine and never stall the
//! worker), named for the common ones. Without `/proc` it lists the
//! causes.
//!
//! # Reading a header another thread may free
//!
//! The worker frees a header only after `finish`: it stores null in
//! `current` (SeqCst), then waits while `watch_reading` is set. The
//! watchdog sets `watch_reading` (SeqCst) before loading `current` (SeqCst)
//! and clears it after copying the id and name. If the watchdog loaded a
//! non-null pointer, its load precedes the worker's null store in the single
//! SeqCst order, so the worker's later load of `watch_reading` sees it set
//! (or already cleared, when the watchdog is done): the header outlives the
//! read.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;

/// Longest sleep between samples.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Starts the watchdog thread; it ends at shutdown.
pub(crate) fn start(shared: Arc<Shared>) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("greenstack-watchdog".into())
        .spawn(move || run(&shared))
}

struct Seen {
    switches: u64,
    since: Instant,
    reported: bool,
}

fn run(shared: &Shared) {
    let Some(threshold) = shared.watchdog else {
        return;
    };
    let tick = (threshold / 4).clamp(Duration::from_millis(1), MAX_TICK);
    let now = Instant::now();
    let mut seen: Vec<Seen> = shared
        .workers
        .iter()
        .map(|_| Seen {
            switches: 0,
            since: now,
            reported: false,
        })
        .collect();
    while !shared.shutdown.load(Ordering::Acquire) {
        shared.watchdog_parker.park_timeout(tick);
        let now = Instant::now();
        for (w, s) in shared.workers.iter().zip(seen.iter_mut()) {
            let switches = w.switches.load(Ordering::Relaxed);
            let running = !w.current.load(Ordering::Relaxed).is_null();
            if switches != s.switches || !running {
                *s = Seen {
                    switches,
                    since: now,
                    reported: false,
                };
                continue;
            }
            let stuck = now.duration_since(s.since);
            if s.reported || stuck < threshold {
                continue;
            }
            s.reported = true;
            w.watch_reading.store(true, Ordering::SeqCst);
            let p = w.current.load(Ordering::SeqCst);
            // SAFETY: see the module docs: a non-null header read here
            // stays alive until `watch_reading` is cleared below.
            let who = unsafe { p.as_ref() }.map(|h| (h.id.get(), h.shared.name.clone()));
            w.watch_reading.store(false, Ordering::SeqCst);
            if let Some((id, name)) = who {
                let cause = Cause::of(w.tid.load(Ordering::Relaxed));
                tracing::warn!(
                    coroutine.id = id,
                    coroutine.name = name.as_deref().unwrap_or("<unnamed>"),
                    stuck_ms = stuck.as_millis() as u64,
                    cause = cause.label(),
                    "a coroutine has held its worker without switching; {}",
                    cause.explain()
                );
            }
        }
    }
}

/// What a stuck worker's thread is doing, read from
/// `/proc/self/task/<tid>/syscall`: the blocking calls the hooks park
/// (`crate::hook`) never show here, so what does is the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// Running its code: CPU work without a yield.
    Cpu,
    /// Waiting on a futex the hooks do not park: a std channel,
    /// `thread::park`, a std `Condvar` or `RwLock` (without
    /// `hook_std_locks`), another crate's lock.
    Futex,
    /// Blocked writing to standard output or error (the fd), which the
    /// hooks never park (see `crate::hook`'s "Not covered").
    StdStream(i64),
    /// Blocked in another system call (its number) the hooks do not park.
    Syscall(i64),
    /// Not readable (no `/proc`, or the thread moved on).
    Unknown,
}

impl Cause {
    fn of(tid: i32) -> Cause {
        if tid <= 0 {
            return Cause::Unknown;
        }
        let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
            return Cause::Unknown;
        };
        let mut fields = s.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first == "running" {
            return Cause::Cpu;
        }
        // The first argument, in hex: the fd of a write.
        let arg0 = fields
            .next()
            .and_then(|a| i64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
        match first.parse::<i64>() {
            Ok(n) if n == libc::SYS_futex => Cause::Futex,
            Ok(n) if n == libc::SYS_write || n == libc::SYS_writev => match arg0 {
                Some(fd @ (1 | 2)) => Cause::StdStream(fd),
                _ => Cause::Syscall(n),
            },
            Ok(n) if n >= 0 => Cause::Syscall(n),
            _ => Cause::Unknown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Cause::Cpu => "cpu",
            Cause::Futex => "futex",
            Cause::StdStream(_) => "std_stream",
            Cause::Syscall(_) => "syscall",
            Cause::Unknown => "unknown",
        }
    }

    fn explain(self) -> String {
        const ON_WORKER: &str = "a wait for what only another coroutine on this worker \
             would do (a send, an unlock), which cannot run while this one waits (use \
             greenstack::sync's channels and locks)";
        match self {
            Cause::Cpu => "the worker is running it: long CPU work without a yield \
                 (use spawn_blocking, or yield_now in the loop)"
                .to_string(),
            Cause::Futex => format!(
                "the worker is blocked on a futex the hooks do not park: a std channel's \
                 recv, thread::park, a std Condvar or RwLock (they park only with \
                 hook_std_locks), another crate's lock (parking_lot's), or a std lock \
                 with the hooks off; likely {ON_WORKER}"
            ),
            Cause::StdStream(fd) => format!(
                "the worker is blocked writing to standard {} (fd {fd}), whose reader \
                 is not keeping up: writes to stdout and stderr block the worker on \
                 purpose (std's lock on them is the OS thread's, shared by its \
                 coroutines); read the output faster, or print less",
                if fd == 1 { "output" } else { "error" }
            ),
            Cause::Syscall(n) => format!(
                "the worker is blocked in system call {n}{}, a blocking call the hooks do \
                 not park (use spawn_blocking)",
                syscall_name(n)
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            Cause::Unknown => format!(
                "the worker is blocked: likely a blocking call or long CPU work \
                 (use spawn_blocking), or {ON_WORKER}"
            ),
        }
    }
}

/// Names of the blocking system calls a stuck worker most likely sits in.
fn syscall_name(n: i64) -> Option<&'static str> {
    Some(match n {
        libc::SYS_select => "select",
        libc::SYS_pselect6 => "pselect6",
        libc::SYS_ppoll => "ppoll",
        libc::SYS_epoll_wait => "epoll_wait",
        libc::SYS_epoll_pwait => "epoll_pwait",
        libc::SYS_epoll_pwait2 => "epoll_pwait2",
        libc::SYS_read => "read",
        libc::SYS_write => "write",
        libc::SYS_recvfrom => "recvfrom",
        libc::SYS_recvmsg => "recvmsg",
        libc::SYS_flock => "flock",
        libc::SYS_fcntl => "fcntl",
        libc::SYS_msgrcv => "msgrcv",
        libc::SYS_semop => "semop",
        libc::SYS_semtimedop => "semtimedop",
        libc::SYS_rt_sigtimedwait => "rt_sigtimedwait",
        libc::SYS_pause => "pause",
        _ => return None,
    })
}
