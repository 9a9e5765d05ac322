//! Randomized stress of the scheduler: spawn, park, unpark (from
//! coroutines and from a plain thread), join, detach, panic, sleep, yield
//! and channel waits, mixed at random on runtimes of 2 to 4 workers, for a
//! bounded number of operations.
//!
//! Checks: every coroutine finishes (a lost wake-up hangs, and the hang
//! guard fails the test); the arena's slot counts stay consistent (live plus
//! pooled never exceeds the slots ever set up, and at the end every slot is
//! pooled again: nothing freed twice or lost); the runtime's counters agree
//! with ours; and no growth fault hit a no-fault section.
//!
//! The seed comes from `GREENSTACK_SEED` or the clock, and is printed on
//! any failure (by a panic hook, and in the hang guard's message):
//! `GREENSTACK_SEED=<seed> cargo test --test rt_random_stress` replays the
//! same choices (the interleaving still varies).

mod common;

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use greenstack::stack::ArenaStats;
use greenstack::sync::mpsc;
use greenstack::{Coroutine, JoinHandle, Runtime};

/// The seed of this run, for the panic hook.
static SEED: AtomicU64 = AtomicU64::new(0);

/// Rounds, each on a fresh runtime with 2 to 4 workers.
const ROUNDS: u64 = 6;

/// Operations per round, over all coroutines.
const OPS_PER_ROUND: i64 = 60_000;

/// Coroutines the driver starts per round; they spawn the rest.
const ROOTS: usize = 24;

/// Deepest nesting of script coroutines.
const MAX_DEPTH: u32 = 4;

/// Prefix of every intended panic's message (the hook keeps them quiet).
const INTENDED: &str = "intended panic";

/// A small generator (xorshift64*), so a seed reproduces the choices.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// A generator for `seed`; any seed works (0 is mapped away).
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0; the bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seed: `GREENSTACK_SEED` if set, else the clock.
fn seed() -> u64 {
    match std::env::var("GREENSTACK_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("GREENSTACK_SEED={s:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// Installs (once) a panic hook that stays quiet for intended panics and
/// prints the seed before any other panic's report.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if msg.starts_with(INTENDED) {
                return;
            }
            eprintln!(
                "random stress failed; replay with GREENSTACK_SEED={}",
                SEED.load(Ordering::Relaxed)
            );
            default(info);
        }));
    });
}

/// Something parked that the driver or a script may release.
enum Pending {
    /// A coroutine parked until its flag is set.
    Flag(Arc<AtomicBool>, Coroutine),
    /// A coroutine waiting in `recv` on the other end.
    Chan(mpsc::Sender<u64>),
}

impl Pending {
    /// Releases the waiter.
    fn release(self) {
        match self {
            Pending::Flag(flag, co) => {
                flag.store(true, Ordering::Release);
                co.unpark();
            }
            Pending::Chan(tx) => {
                // The receiver waits for exactly this value; it is alive
                // until it has it.
                tx.send(7).expect("a waiting receiver");
            }
        }
    }
}

/// State shared by the driver and every coroutine of one round.
struct Ctx {
    /// Operations left in the round (may go below zero).
    budget: AtomicI64,
    /// Coroutines spawned by this test, and those whose body has ended
    /// (returned or unwound).
    created: AtomicU64,
    ended: AtomicU64,
    /// Waiters someone must release.
    pending: Mutex<Vec<Pending>>,
    /// Checks that failed inside coroutines (whose panics a detached
    /// coroutine would only report through tracing).
    failures: Mutex<Vec<String>>,
    /// Counts per operation kind, for the report.
    ops: [AtomicU64; OPS],
}

/// Names of the operation kinds, indexed as `Ctx::ops`.
const OP_NAMES: [&str; OPS] = [
    "spawn", "join", "detach", "park", "unpark", "spurious", "sleep", "yield", "recv",
];

/// Number of operation kinds.
const OPS: usize = 9;

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            budget: AtomicI64::new(OPS_PER_ROUND),
            created: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            ops: Default::default(),
        }
    }

    /// Takes one operation from the budget; false once it is spent.
    fn take_op(&self, kind: usize) -> bool {
        self.ops[kind].fetch_add(1, Ordering::Relaxed);
        self.budget.fetch_sub(1, Ordering::Relaxed) > 0
    }

    /// Records a failed check (with the seed) and panics.
    fn fail(&self, msg: String) -> ! {
        let msg = format!("{msg} (GREENSTACK_SEED={})", SEED.load(Ordering::Relaxed));
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(msg.clone());
        panic!("{msg}");
    }

    /// Queues a waiter for release.
    fn push_pending(&self, p: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(p);
    }

    /// Takes a random pending waiter, if any.
    fn take_pending(&self, rng: &mut Rng) -> Option<Pending> {
        let mut v = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if v.is_empty() {
            return None;
        }
        let i = rng.below(v.len() as u64) as usize;
        Some(v.swap_remove(i))
    }
}

/// Counts a coroutine's body as ended when dropped, on return or unwind.
struct EndGuard(Arc<Ctx>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::SeqCst);
    }
}

/// What a coroutine of the stress does.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Runs a random script of operations (spawning more coroutines).
    Script { seed: u64, depth: u32 },
    /// Panics with a message naming `tag`, maybe after a switch.
    Panic { tag: u64, switch: bool },
    /// Parks until released through the pending list.
    Park { tag: u64 },
    /// Waits in a channel receive until released.
    Recv { tag: u64 },
    /// Sleeps for `nanos`.
    Sleep { tag: u64, nanos: u64 },
}

/// What joining a coroutine of `kind` must give.
#[derive(Debug)]
enum Expect {
    Value(u64),
    Panic(String),
}

impl Kind {
    /// A random kind for a child of a script at `depth`.
    fn random(rng: &mut Rng, depth: u32) -> Kind {
        let tag = rng.next();
        match rng.below(100) {
            0..=29 if depth < MAX_DEPTH => Kind::Script {
                seed: tag,
                depth: depth + 1,
            },
            0..=44 => Kind::Panic {
                tag,
                switch: rng.chance(50),
            },
            45..=64 => Kind::Park { tag },
            65..=79 => Kind::Recv { tag },
            _ => Kind::Sleep {
                tag,
                nanos: match rng.below(4) {
                    0 => 0,
                    1 => 1,
                    _ => rng.below(300_000),
                },
            },
        }
    }

    fn expect(self) -> Expect {
        match self {
            Kind::Script { seed, .. } => Expect::Value(seed),
            Kind::Panic { tag, .. } => Expect::Panic(format!("{INTENDED} {tag}")),
            Kind::Park { tag } | Kind::Recv { tag } | Kind::Sleep { tag, .. } => Expect::Value(tag),
        }
    }

    /// The coroutine body.
    fn run(self, ctx: Arc<Ctx>) -> u64 {
        let _end = EndGuard(Arc::clone(&ctx));
        match self {
            Kind::Script { seed, depth } => script(&ctx, seed, depth),
            Kind::Panic { tag, switch } => {
                if switch {
                    greenstack::yield_now();
                }
                panic!("{INTENDED} {tag}");
            }
            Kind::Park { tag } => {
                park_until_released(&ctx);
                tag
            }
            Kind::Recv { tag } => {
                let (tx, rx) = mpsc::channel();
                ctx.push_pending(Pending::Chan(tx));
                match rx.recv() {
                    Ok(7) => tag,
                    other => ctx.fail(format!("recv gave {other:?}")),
                }
            }
            Kind::Sleep { tag, nanos } => {
                let d = Duration::from_nanos(nanos);
                let t = Instant::now();
                greenstack::time::sleep(d);
                if t.elapsed() < d {
                    ctx.fail(format!("sleep({d:?}) returned after {:?}", t.elapsed()));
                }
                tag
            }
        }
    }
}

/// Parks the calling coroutine until someone releases it through the
/// pending list (spurious wake-ups loop).
fn park_until_released(ctx: &Ctx) {
    let flag = Arc::new(AtomicBool::new(false));
    ctx.push_pending(Pending::Flag(Arc::clone(&flag), greenstack::current()));
    while !flag.load(Ordering::Acquire) {
        greenstack::park();
    }
}

/// Spawns a coroutine of `kind` from inside a coroutine.
fn spawn_kind(ctx: &Arc<Ctx>, kind: Kind) -> JoinHandle<u64> {
    ctx.created.fetch_add(1, Ordering::SeqCst);
    let c = Arc::clone(ctx);
    greenstack::spawn(move || kind.run(c))
}

/// Joins `h` and checks its outcome against `want`.
fn join_checked(ctx: &Ctx, h: JoinHandle<u64>, want: Expect) {
    match (h.join(), want) {
        (Ok(v), Expect::Value(w)) if v == w => {}
        (Err(p), Expect::Panic(w)) => {
            let got = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or("<not a String>");
            if got != w {
                ctx.fail(format!("join gave panic {got:?}, want {w:?}"));
            }
        }
        (Ok(v), w) => ctx.fail(format!("join gave {v}, want {w:?}")),
        (Err(_), w) => ctx.fail(format!("join gave an unexpected panic, want {w:?}")),
    }
}

/// A script coroutine: random operations until its length or the round's
/// budget runs out; then joins or detaches what it still holds.
fn script(ctx: &Arc<Ctx>, seed: u64, depth: u32) -> u64 {
    let mut rng = Rng::new(seed);
    let mut held: Vec<(JoinHandle<u64>, Expect)> = Vec::new();
    let len = 8 + rng.below(100);
    for _ in 0..len {
        let op = rng.below(OPS as u64) as usize;
        if !ctx.take_op(op) {
            break;
        }
        match op {
            0 => {
                let kind = Kind::random(&mut rng, depth);
                held.push((spawn_kind(ctx, kind), kind.expect()));
            }
            1 if !held.is_empty() => {
                let i = rng.below(held.len() as u64) as usize;
                let (h, want) = held.swap_remove(i);
                join_checked(ctx, h, want);
            }
            2 if !held.is_empty() => {
                let i = rng.below(held.len() as u64) as usize;
                drop(held.swap_remove(i));
            }
            3 => park_until_released(ctx),
            4 => {
                if let Some(p) = ctx.take_pending(&mut rng) {
                    p.release();
                }
            }
            5 if !held.is_empty() => {
                // A spurious unpark: a parked coroutine must re-check and
                // park again; a finished one must not mind.
                let i = rng.below(held.len() as u64) as usize;
                if let Some(co) = held[i].0.coroutine() {
                    co.unpark();
                }
            }
            6 => greenstack::time::sleep(Duration::from_nanos(rng.below(200_000))),
            7 => greenstack::yield_now(),
            8 => {
                // A receive with a timeout that expires, or a value that
                // another coroutine sends first.
                let (tx, rx) = mpsc::channel::<u64>();
                if rng.chance(50) {
                    let tx = tx.clone();
                    let c = Arc::clone(ctx);
                    ctx.created.fetch_add(1, Ordering::SeqCst);
                    drop(greenstack::spawn(move || {
                        let _end = EndGuard(c);
                        let _ = tx.send(1);
                    }));
                }
                let _ = rx.recv_timeout(Duration::from_micros(rng.below(200)));
                drop(tx);
            }
            _ => {}
        }
    }
    for (h, want) in held {
        if rng.chance(50) {
            join_checked(ctx, h, want);
        }
    }
    seed
}

/// Slots the arena has ever set up, from its byte counters: each set-up
/// commits the initial commit; growth and trims are counted apart. Exact
/// when no stack grows or is trimmed meanwhile (the stress's coroutines
/// are shallow: growth and trims only happen to slots that grew).
fn slots_set_up(a: &ArenaStats) -> u64 {
    let initial = greenstack::stack::DEFAULT_INITIAL_COMMIT as u64;
    (a.committed_bytes as u64 + a.bytes_reclaimed).saturating_sub(a.bytes_grown) / initial
}

/// Checks the arena's counts mid-run: live plus pooled never exceeds the
/// slots ever set up, nor the coroutines created so far (`created`, read
/// after `a`). `slack` covers the slots in flight while the sharded
/// counters are read. Returns what is wrong, if anything.
fn arena_problem(a: &ArenaStats, created: u64, slack: u64) -> Option<String> {
    let held = (a.live_slots + a.pooled_slots) as u64;
    if held > created + slack {
        return Some(format!(
            "live {} + pooled {} slots exceed the {created} coroutines created: {a:?}",
            a.live_slots, a.pooled_slots
        ));
    }
    if a.live_slots > a.capacity_slots {
        return Some(format!("more live slots than capacity: {a:?}"));
    }
    if a.bytes_grown != 0 {
        // A growth or trim racing with the snapshot makes the next check
        // inexact; the ones above still hold.
        return None;
    }
    let set_up = slots_set_up(a);
    (held > set_up + slack).then(|| {
        format!(
            "live {} + pooled {} slots exceed the {set_up} set up: {a:?}",
            a.live_slots, a.pooled_slots
        )
    })
}

/// [`arena_problem`] on fresh reads of `rt`'s counters: the live and
/// pooled sums are not one snapshot (a slot released between the two reads
/// counts in both), and a reader the OS preempts between them can see any
/// number of such moves. So a count that is off must stay off over several
/// reads to fail: a slot handed out twice or lost stays counted; a torn
/// read does not repeat.
fn check_arena(rt: &Runtime, created: &AtomicU64, slack: u64, seed: u64) {
    let mut last = None;
    for _ in 0..20 {
        let a = rt.stats().arena;
        match arena_problem(&a, created.load(Ordering::SeqCst), slack) {
            None => return,
            Some(p) => last = Some(p),
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!(
        "{} (GREENSTACK_SEED={seed}), on 20 reads in a row",
        last.expect("a problem was seen")
    );
}

/// One round on a fresh runtime of `workers` workers, its choices drawn
/// from `round_seed`.
fn round(round_seed: u64, workers: usize) -> String {
    // Messages name the seed of the whole run, which replays this round.
    let seed = SEED.load(Ordering::Relaxed);
    let rt = Runtime::builder()
        .workers(workers)
        .build()
        .expect("building a runtime");
    let ctx = Arc::new(Ctx::new());
    let mut rng = Rng::new(round_seed);
    let roots: Vec<(JoinHandle<u64>, Expect)> = (0..ROOTS)
        .map(|_| {
            let kind = Kind::Script {
                seed: rng.next(),
                depth: 0,
            };
            ctx.created.fetch_add(1, Ordering::SeqCst);
            let c = Arc::clone(&ctx);
            (rt.spawn(move || kind.run(c)), kind.expect())
        })
        .collect();
    // The driver: releases waiters from this plain thread (remote
    // wake-ups), and checks the arena while everything runs. A lost
    // wake-up keeps `ended` short of `created` until the hang guard fires.
    let slack = workers as u64 + 2;
    let mut samples = 0u64;
    while ctx.ended.load(Ordering::SeqCst) < ctx.created.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_micros(rng.below(300)));
        let spent = ctx.budget.load(Ordering::Relaxed) <= 0;
        let n = if spent {
            usize::MAX
        } else {
            rng.below(4) as usize
        };
        for _ in 0..n {
            match ctx.take_pending(&mut rng) {
                Some(p) => p.release(),
                None => break,
            }
        }
        check_arena(&rt, &ctx.created, slack, seed);
        samples += 1;
    }
    for (h, want) in roots {
        join_checked(&ctx, h, want);
    }
    // Counters settle once each worker has released what it finished.
    while {
        let s = rt.stats();
        s.finished != s.spawned || s.live != 0 || s.arena.live_slots != 0
    } {
        thread::sleep(Duration::from_millis(1));
    }
    let s = rt.stats();
    let failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        failures.is_empty(),
        "checks failed in coroutines (GREENSTACK_SEED={seed}):\n{}",
        failures.join("\n")
    );
    let created = ctx.created.load(Ordering::SeqCst);
    assert_eq!(
        s.spawned, created,
        "the runtime counted other spawns than we made (GREENSTACK_SEED={seed}): {s:?}"
    );
    assert_eq!(
        ctx.ended.load(Ordering::SeqCst),
        created,
        "GREENSTACK_SEED={seed}"
    );
    assert_eq!(
        s.arena.nofault_violations, 0,
        "growth faults in no-fault sections (GREENSTACK_SEED={seed}): {s:?}"
    );
    assert_eq!(s.arena.live_slots, 0, "GREENSTACK_SEED={seed}: {s:?}");
    // Quiescent: every slot ever set up is pooled again, exactly once.
    assert_eq!(
        s.arena.pooled_slots as u64,
        slots_set_up(&s.arena),
        "pooled slots differ from those set up: one freed twice or lost (GREENSTACK_SEED={seed}): {s:?}"
    );
    assert!(
        ctx.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty(),
        "a waiter was never released (GREENSTACK_SEED={seed})"
    );
    let ops: Vec<String> = OP_NAMES
        .iter()
        .zip(&ctx.ops)
        .map(|(n, c)| format!("{n} {}", c.load(Ordering::Relaxed)))
        .collect();
    format!(
        "{workers} workers: {created} coroutines, {} parks, {} wake-ups, {samples} arena samples, {} slots set up, {} growth faults; ops chosen: {}",
        s.parks,
        s.wakeups,
        slots_set_up(&s.arena),
        s.arena.growth_faults,
        ops.join(", ")
    )
}

#[test]
fn random_mix_on_two_to_four_workers() {
    let seed = seed();
    SEED.store(seed, Ordering::Relaxed);
    install_hook();
    println!("GREENSTACK_SEED={seed}");
    let t = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| {
        bounded_for(
            &format!("random stress with GREENSTACK_SEED={seed}"),
            Duration::from_secs(120),
            move || {
                let mut rng = Rng::new(seed ^ 0x5EED);
                (0..ROUNDS)
                    .map(|r| {
                        let workers = 2 + rng.below(3) as usize;
                        round(seed.wrapping_add(r).wrapping_mul(0x100_0000_01B3), workers)
                    })
                    .collect::<Vec<_>>()
            },
        )
    }));
    match result {
        Ok(reports) => {
            for r in reports {
                println!("{r}");
            }
            println!("random stress took {:?}", t.elapsed());
        }
        Err(p) => {
            eprintln!("random stress failed; replay with GREENSTACK_SEED={seed}");
            resume_unwind(p);
        }
    }
}
