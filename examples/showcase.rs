//! The greenstack showcase: a hundred thousand parked coroutines for little
//! memory, deep recursion that grows its stack on demand, and a fan-out
//! across workers, then the runtime's own account of it.
//!
//! Run with `cargo run --release --example showcase`.

use std::hint::black_box;
use std::time::Instant;

use greenstack::sync::{mpsc, oneshot};
use greenstack::{Builder, Runtime, RuntimeStats};

/// VmRSS + VmPTE of this process, in KiB.
fn rss_pte_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| -> usize {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    kib("VmRSS:") + kib("VmPTE:")
}

/// A recursive-descent parser for nested sums like `(1+(2+(3)))`; each
/// nesting level is a few frames deep.
struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    /// expr := term ('+' term)*
    #[inline(never)]
    fn expr(&mut self) -> Result<u64, String> {
        let mut v = self.term()?;
        while self.input.get(self.pos) == Some(&b'+') {
            self.pos += 1;
            v += self.term()?;
        }
        Ok(v)
    }

    /// term := digits | '(' expr ')'
    #[inline(never)]
    fn term(&mut self) -> Result<u64, String> {
        // A little live state per frame, as real parsers have.
        let scratch = black_box([0u8; 256]);
        match self.input.get(self.pos) {
            Some(b'(') => {
                self.pos += 1;
                let v = self.expr()?;
                if self.input.get(self.pos) != Some(&b')') {
                    return Err(format!("expected ')' at {}", self.pos));
                }
                self.pos += 1;
                Ok(v + scratch[0] as u64)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while self.input.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                let s =
                    std::str::from_utf8(&self.input[start..self.pos]).map_err(|e| e.to_string())?;
                s.parse().map_err(|e| format!("{e}"))
            }
            _ => Err(format!("unexpected input at {}", self.pos)),
        }
    }
}

/// `(1+(1+(1+ ... (1) ...)))` nested `depth` deep.
fn nested(depth: usize) -> String {
    let mut s = String::with_capacity(depth * 4);
    for _ in 0..depth {
        s.push_str("(1+");
    }
    s.push('1');
    for _ in 0..depth {
        s.push(')');
    }
    s
}

/// Fan-out Fibonacci: a coroutine per call.
fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let left = greenstack::spawn(move || fib(n - 1));
    let right = fib(n - 2);
    left.join().expect("fib never panics") + right
}

fn row(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<36} {value:>18}");
}

fn print_stats(s: &RuntimeStats) {
    println!("runtime stats");
    row(
        "coroutines spawned / finished",
        format!("{} / {}", s.spawned, s.finished),
    );
    row(
        "steals / parks / wake-ups",
        format!("{} / {} / {}", s.steals, s.parks, s.wakeups),
    );
    row(
        "resumes per worker",
        s.worker_runs
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" / "),
    );
    let a = &s.arena;
    row("stack reserved", format!("{} GiB", a.reserved_bytes >> 30));
    row(
        "stack committed",
        format!("{} MiB", a.committed_bytes >> 20),
    );
    row(
        "stack slots live / pooled",
        format!("{} / {}", a.live_slots, a.pooled_slots),
    );
    row("growth faults", a.growth_faults);
    row("bytes grown", format!("{} MiB", a.bytes_grown >> 20));
    row(
        "bytes reclaimed",
        format!("{} MiB", a.bytes_reclaimed >> 20),
    );
    row("no-fault-section violations", a.nofault_violations);
}

fn main() -> std::io::Result<()> {
    let rt = Runtime::new()?;
    println!(
        "greenstack showcase: {} workers, stacks reserved {} KiB each, committed on demand\n",
        rt.stats().worker_runs.len(),
        rt.arena().default_stack_size() >> 10
    );

    // 1. 100,000 coroutines parked at once, each waiting on its own oneshot.
    //    With the `mprotect` fallback (kernels before 6.13), the kernel's
    //    mapping limit allows fewer: as many as fit are parked, and the
    //    limit is reported.
    const WANTED: usize = 100_000;
    let base = rss_pte_kib();
    let t = Instant::now();
    let (senders, parked_kib, limit) = rt.block_on(move || {
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut senders = Vec::with_capacity(WANTED);
        let mut handles = Vec::with_capacity(WANTED);
        let mut limit = None;
        for i in 0..WANTED as u64 {
            let (tx, rx) = oneshot::channel::<u64>();
            let ready = ready_tx.clone();
            match Builder::new().spawn(move || {
                ready.send(()).expect("main waits for all");
                drop(ready);
                rx.recv().expect("main sends to every coroutine") + i
            }) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    limit = Some(e);
                    break;
                }
            }
            senders.push(tx);
        }
        drop(ready_tx);
        ready_rx.iter().take(handles.len()).for_each(drop);
        (
            senders.into_iter().zip(handles).collect::<Vec<_>>(),
            rss_pte_kib(),
            limit,
        )
    });
    let n = senders.len();
    if let Some(e) = &limit {
        println!(
            "1. {n} of {WANTED} coroutines fit: the arena guards stacks with {:?} (no guard \
             markers before Linux 6.13, or GREENSTACK_GUARD_MODE=mprotect), which costs two \
             mappings per stack, and spawn {} returned this error:\n   {e}",
            rt.arena().guard_mode(),
            n + 1
        );
    }
    let per = parked_kib.saturating_sub(base) as f64 / n as f64;
    println!(
        "{}{n} coroutines parked in {:.0} ms: {per:.2} KiB each (RSS + page tables, everything included)",
        if limit.is_some() { "   " } else { "1. " },
        t.elapsed().as_secs_f64() * 1e3
    );
    let sum = rt.block_on(move || {
        let mut joins = Vec::with_capacity(n);
        for (tx, h) in senders {
            tx.send(1).expect("the coroutine waits");
            joins.push(h);
        }
        joins
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .sum::<u64>()
    });
    assert_eq!(sum, (0..n as u64).map(|i| i + 1).sum());
    println!("   all {n} woken, finished and joined (checksum ok)\n");

    // 2. Deep recursion: parse 100,000 nesting levels on one coroutine whose
    //    stack starts at 32 KiB committed and grows to what the parse needs.
    let depth = 100_000;
    let before = rt.stats().arena;
    let t = Instant::now();
    let (v, used) = rt.block_on(move || {
        let input = nested(depth);
        Builder::new()
            .name("parser")
            .stack_size(256 << 20)
            .spawn(move || {
                let mut p = Parser {
                    input: input.as_bytes(),
                    pos: 0,
                };
                let v = p.expr().expect("the input is well formed");
                let here = 0u8;
                (v, black_box(&here) as *const u8 as usize)
            })
            .expect("a 256 MiB reserve is available")
            .join()
            .expect("the parser does not panic")
    });
    assert_eq!(v, depth as u64 + 1);
    let _ = used;
    let after = rt.stats().arena;
    println!(
        "2. parsed {depth} nested levels in {:.1} ms on a 256 MiB reserve: \
         {} growth faults committed {} MiB on demand\n",
        t.elapsed().as_secs_f64() * 1e3,
        after.growth_faults - before.growth_faults,
        (after.bytes_grown - before.bytes_grown) >> 20
    );

    // 3. Fan-out: fib(25) with a coroutine per call, stolen across workers.
    let before = rt.stats();
    let t = Instant::now();
    let f = rt.block_on(|| fib(25));
    let after = rt.stats();
    println!(
        "3. fib(25) = {f} with {} coroutines in {:.1} ms; {} steals across workers\n",
        after.spawned - before.spawned,
        t.elapsed().as_secs_f64() * 1e3,
        after.steals - before.steals
    );

    // 4. Idle pooled stacks give their pages back.
    let reclaimed = rt.arena().trim_idle() + rt.arena().trim_idle();
    println!(
        "4. trim_idle gave back {} MiB of idle pooled stack\n",
        reclaimed >> 20
    );
    print_stats(&rt.stats());
    Ok(())
}
