//! The greenstack showcase: many parked coroutines for little memory, and
//! deep recursion that grows its stack on demand.
//!
//! Run with `cargo run --release --example showcase`.
//!
//! Today it drives the stack arena directly with corosensei coroutines; once
//! the scheduler lands it runs the same workloads through `spawn`.

use std::hint::black_box;
use std::time::Instant;

use corosensei::{Coroutine, CoroutineResult, Yielder};
use greenstack::stack::{ArenaStats, Slot, StackArena};

type Co = Coroutine<(), (), u64, Slot>;

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
                let s = std::str::from_utf8(&self.input[start..self.pos]).unwrap();
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

fn row(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<34} {value:>16}");
}

fn print_stats(title: &str, s: &ArenaStats) {
    println!("{title}");
    row(
        "slots live / pooled",
        format!("{} / {}", s.live_slots, s.pooled_slots),
    );
    row("stack reserved", format!("{} MiB", s.reserved_bytes >> 20));
    row(
        "stack committed",
        format!("{} KiB", s.committed_bytes >> 10),
    );
    row("growth faults", s.growth_faults);
    row("bytes grown", format!("{} KiB", s.bytes_grown >> 10));
    row(
        "bytes reclaimed",
        format!("{} KiB", s.bytes_reclaimed >> 10),
    );
    row("no-fault-section violations", s.nofault_violations);
}

fn main() -> std::io::Result<()> {
    greenstack::stack::prepare_thread()?;
    println!("greenstack showcase: stacks reserved large, committed small, grown on fault\n");

    // 1. 100,000 coroutines, each parked mid-run on its own 256 KiB reserve.
    const N: usize = 100_000;
    let arena = StackArena::new()?;
    let base = rss_pte_kib();
    let t = Instant::now();
    let mut parked: Vec<Co> = Vec::with_capacity(N);
    for i in 0..N {
        let mut slot = arena.allocate()?;
        slot.set_identity(i as u64 + 1, None);
        let mut co = Co::with_stack(slot, move |y: &Yielder<(), ()>, ()| {
            let local = black_box(i as u64);
            y.suspend(());
            local * 2
        });
        let CoroutineResult::Yield(()) = co.resume(()) else {
            unreachable!()
        };
        parked.push(co);
    }
    let per = (rss_pte_kib() - base) as f64 / N as f64;
    println!(
        "1. {N} coroutines parked in {:.0} ms: {per:.2} KiB each (RSS + page tables), reserve {} KiB each",
        t.elapsed().as_secs_f64() * 1e3,
        arena.default_stack_size() >> 10
    );
    print_stats("   arena while parked:", &arena.stats());
    let mut sum = 0;
    for mut co in parked.drain(..) {
        let CoroutineResult::Return(v) = co.resume(()) else {
            unreachable!()
        };
        sum += v;
    }
    assert_eq!(sum, (0..N as u64).map(|i| i * 2).sum());
    println!("   all {N} resumed and finished (checksum ok)\n");

    // 2. Deep recursion: parse 100,000 levels of nesting on one coroutine
    //    whose stack starts at one page and grows to what the parse needs.
    let deep = StackArena::builder().stack_size(256 << 20).build()?;
    let depth = 100_000;
    let input = nested(depth);
    let mut slot = deep.allocate()?;
    slot.set_identity(1, Some("parser"));
    let t = Instant::now();
    let mut co = Co::with_stack(slot, move |_: &Yielder<(), ()>, ()| {
        let mut p = Parser {
            input: input.as_bytes(),
            pos: 0,
        };
        p.expr().expect("the input is well formed")
    });
    let CoroutineResult::Return(v) = co.resume(()) else {
        unreachable!()
    };
    assert_eq!(v, depth as u64 + 1);
    let slot = co.into_stack();
    println!(
        "2. parsed {depth} nested levels in {:.1} ms: stack grew to {} KiB of a {} MiB reserve",
        t.elapsed().as_secs_f64() * 1e3,
        slot.committed() >> 10,
        slot.reserve() >> 20
    );
    drop(slot);
    print_stats("   arena after the parse:", &deep.stats());
    println!();

    // 3. Reclaim: idle pooled stacks give their pages back.
    let trimmed = deep.trim_idle() + deep.trim_idle() + arena.trim_idle() + arena.trim_idle();
    println!(
        "3. trim_idle gave back {} KiB of idle pooled stack",
        trimmed >> 10
    );
    print_stats("   default arena at the end:", &arena.stats());
    Ok(())
}
