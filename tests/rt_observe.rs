//! What the runtime tells `tracing`: the watchdog naming a coroutine that
//! holds its worker, the stack checker's thresholds, and a panic nobody
//! joins.
//!
//! The events come from worker and watchdog threads, which a thread-local
//! subscriber (`with_default`) would not see; so this binary installs one
//! global subscriber that records every event at INFO or above, and each
//! test picks its events out by coroutine name.

use std::fmt;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::thread;
use std::time::{Duration, Instant};

use greenstack::stack::StackArena;
use greenstack::{Builder, Runtime};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// How long a wait loop may poll before the test fails. A hang guard, not a
/// timing assertion: it is far above any expected wait, so a lost event
/// fails the test instead of hanging it.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// One recorded event.
#[derive(Debug, Clone)]
struct Captured {
    /// Its level.
    level: Level,
    /// Its message (the `message` field).
    message: String,
    /// Its other fields, by name, as strings (`&str` fields unquoted).
    fields: Vec<(String, String)>,
}

impl Captured {
    /// The value of field `name`, if the event has it.
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the event names coroutine `name` (field `coroutine.name`).
    fn names(&self, name: &str) -> bool {
        self.field("coroutine.name") == Some(name)
    }
}

/// Every event at INFO or above since the process started.
static EVENTS: Mutex<Vec<Captured>> = Mutex::new(Vec::new());

/// Installs the global capturing subscriber, once per process.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
            .expect("no other global subscriber in this binary");
    });
}

/// The recorded events (the lock poisoned by a failed test is still fine).
fn events() -> MutexGuard<'static, Vec<Captured>> {
    EVENTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until an event matching `pred` was recorded and returns it; fails
/// after [`HANG_GUARD`] naming `what`, listing what was recorded.
fn wait_for_event(what: &str, pred: impl Fn(&Captured) -> bool) -> Captured {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(e) = events().iter().find(|e| pred(e)) {
            return e.clone();
        }
        if Instant::now() >= deadline {
            panic!(
                "hang guard: no event for {what}; recorded: {:#?}",
                *events()
            );
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Polls `cond` (every millisecond) until it holds; fails after
/// [`HANG_GUARD`] naming `what`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "hang guard: still waiting for {what}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// The layer that records events into [`EVENTS`].
struct Capture;

impl<S: Subscriber> Layer<S> for Capture {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Only events at INFO or above (a more verbose level compares
        // greater); no spans, no spawn traces.
        if meta.is_event() && *meta.level() <= Level::INFO {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut v = Recorder::default();
        event.record(&mut v);
        events().push(Captured {
            level: *event.metadata().level(),
            message: v.message,
            fields: v.fields,
        });
    }
}

/// Collects an event's fields.
#[derive(Default)]
struct Recorder {
    /// The `message` field.
    message: String,
    /// The other fields.
    fields: Vec<(String, String)>,
}

impl Visit for Recorder {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .push((field.name().to_owned(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name().to_owned(), value));
        }
    }
}

#[test]
fn watchdog_names_a_coroutine_that_holds_its_worker() {
    install();
    let rt = Runtime::builder()
        .workers(2)
        .watchdog(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let h = Builder::new()
        .name("spinner")
        .spawn_on(&rt, || {
            // Holds its worker without a switch until the watchdog has
            // spoken (however late its thread runs), or the hang guard.
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < HANG_GUARD
                && !events()
                    .iter()
                    .any(|e| e.level == Level::WARN && e.names("spinner"))
            {
                for _ in 0..1000 {
                    x = black_box(x.wrapping_add(1));
                }
            }
            x
        })
        .unwrap();
    assert!(h.join().unwrap() > 0);
    let e = wait_for_event("the watchdog's warning about 'spinner'", |e| {
        e.level == Level::WARN && e.names("spinner")
    });
    assert!(e.field("coroutine.id").is_some(), "{e:?}");
    assert!(e.field("stuck_ms").is_some(), "{e:?}");
    assert!(e.message.contains("without switching"), "{e:?}");
}

#[test]
fn watchdog_off_says_nothing() {
    install();
    let rt = Runtime::builder()
        .workers(1)
        .watchdog(None)
        .build()
        .unwrap();
    let h = Builder::new()
        .name("quiet-spinner")
        .spawn_on(&rt, || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(300) {
                std::hint::spin_loop();
            }
        })
        .unwrap();
    h.join().unwrap();
    drop(rt); // the watchdog thread has ended
    assert!(
        !events().iter().any(|e| e.names("quiet-spinner")),
        "an event with the watchdog off: {:?}",
        events().iter().find(|e| e.names("quiet-spinner"))
    );
}

/// The stack pointer, near enough: the address of a local.
#[inline(never)]
fn sp() -> usize {
    let here = 0u8;
    black_box(&here) as *const u8 as usize
}

/// Recurses in 1 KiB frames until the stack pointer is `bytes` below
/// `start`; returns the depth reached.
#[inline(never)]
fn recurse_until(start: usize, bytes: usize) -> usize {
    let frame = black_box([1u8; 1024]);
    if start - sp() >= bytes {
        return frame[0] as usize;
    }
    recurse_until(start, bytes) + frame[1023] as usize
}

/// Spawns a coroutine named `name` on `rt` with a 1 MiB reserve that uses
/// `fraction` of it in one go, and waits for it.
fn use_stack(rt: &Runtime, name: &str, fraction: f64) {
    const RESERVE: usize = 1 << 20;
    let h = Builder::new()
        .name(name)
        .stack_size(RESERVE)
        .spawn_on(rt, move || {
            recurse_until(sp(), (RESERVE as f64 * fraction) as usize)
        })
        .unwrap();
    assert!(h.join().unwrap() > 0);
}

#[test]
fn stack_checker_warns_past_seven_eighths() {
    install();
    let rt = Runtime::builder().workers(2).build().unwrap();
    use_stack(&rt, "deep", 0.9);
    let e = wait_for_event("the stack checker's warning about 'deep'", |e| {
        e.level == Level::WARN && e.names("deep")
    });
    assert!(e.message.contains("past 7/8"), "{e:?}");
    assert_eq!(e.field("reserve"), Some("1048576"), "{e:?}");
}

#[test]
fn stack_checker_reports_half_and_seven_eighths_in_one_run() {
    install();
    let rt = Runtime::builder().workers(2).build().unwrap();
    use_stack(&rt, "deep-oneshot", 0.9);
    wait_for_event("the stack checker's warning about 'deep-oneshot'", |e| {
        e.level == Level::WARN && e.names("deep-oneshot")
    });
    // Both thresholds are checked at the same switch: the info, if any, is
    // recorded by now.
    let n = events()
        .iter()
        .filter(|e| {
            e.level == Level::INFO
                && e.names("deep-oneshot")
                && e.message.contains("1/2 of its reserve")
        })
        .count();
    assert_eq!(n, 1, "{:#?}", *events());
}

#[test]
fn stack_checker_reports_half_then_seven_eighths() {
    install();
    // Growth in 64 KiB steps, so the committed size can stop between 1/2
    // and 7/8 of a 1 MiB reserve (doubling jumps from exactly 1/2 to all).
    let rt = Runtime::builder()
        .workers(2)
        .arena(StackArena::builder().max_growth_step(64 << 10))
        .build()
        .unwrap();
    const RESERVE: usize = 1 << 20;
    let h = Builder::new()
        .name("deep-stepwise")
        .stack_size(RESERVE)
        .spawn_on(&rt, || {
            let start = sp();
            let a = recurse_until(start, RESERVE * 6 / 10);
            // The checker runs at each switch: here, at 60%.
            greenstack::yield_now();
            a + recurse_until(start, RESERVE * 9 / 10)
        })
        .unwrap();
    assert!(h.join().unwrap() > 0);
    let info = wait_for_event("the info about 'deep-stepwise'", |e| {
        e.level == Level::INFO && e.names("deep-stepwise")
    });
    assert!(info.message.contains("1/2 of its reserve"), "{info:?}");
    let warn = wait_for_event("the warning about 'deep-stepwise'", |e| {
        e.level == Level::WARN && e.names("deep-stepwise")
    });
    assert!(warn.message.contains("past 7/8"), "{warn:?}");
    // Once each.
    let n = events().iter().filter(|e| e.names("deep-stepwise")).count();
    assert_eq!(n, 2, "{:#?}", *events());
}

#[test]
fn stack_checker_quiet_for_shallow_coroutines() {
    install();
    let rt = Runtime::builder().workers(2).build().unwrap();
    let hs: Vec<_> = (0..100)
        .map(|_| {
            Builder::new()
                .name("shallow")
                .spawn_on(&rt, greenstack::yield_now)
                .unwrap()
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    wait_until("the coroutines to finish", || {
        let s = rt.stats();
        s.finished == s.spawned
    });
    assert!(
        !events().iter().any(|e| e.names("shallow")),
        "{:?}",
        events().iter().find(|e| e.names("shallow"))
    );
}

#[test]
fn stack_checker_quiet_for_a_shallow_coroutine_on_a_reused_stack() {
    install();
    let rt = Runtime::builder().workers(1).build().unwrap();
    use_stack(&rt, "deep-before-reuse", 0.9);
    wait_for_event("the warning about 'deep-before-reuse'", |e| {
        e.level == Level::WARN && e.names("deep-before-reuse")
    });
    // Its stack is back in the pool once it finished; the next 1 MiB
    // coroutine takes it (the pool is LIFO).
    wait_until("'deep-before-reuse' to finish", || {
        let s = rt.stats();
        s.finished == s.spawned
    });
    let h = Builder::new()
        .name("shallow-after-reuse")
        .stack_size(1 << 20)
        .spawn_on(&rt, || 1)
        .unwrap();
    assert_eq!(h.join().unwrap(), 1);
    wait_until("'shallow-after-reuse' to finish", || {
        let s = rt.stats();
        s.finished == s.spawned
    });
    assert!(
        !events().iter().any(|e| e.names("shallow-after-reuse")),
        "{:?}",
        events().iter().find(|e| e.names("shallow-after-reuse"))
    );
}

#[test]
fn unjoined_panic_is_reported() {
    install();
    let rt = Runtime::builder().workers(2).build().unwrap();

    // Handle dropped before the panic: reported by the coroutine's worker.
    let go = Arc::new(AtomicBool::new(false));
    let early = {
        let go = Arc::clone(&go);
        Builder::new()
            .name("orphan-early")
            .spawn_on(&rt, move || {
                while !go.load(Ordering::Acquire) {
                    greenstack::park();
                }
                panic!("nobody joins orphan-early");
            })
            .unwrap()
    };
    let co = early.coroutine().unwrap().clone();
    drop(early);
    go.store(true, Ordering::Release);
    co.unpark();
    let e = wait_for_event("the report of 'orphan-early'", |e| {
        e.level == Level::ERROR && e.names("orphan-early")
    });
    assert_eq!(e.field("panic"), Some("nobody joins orphan-early"), "{e:?}");

    // Handle dropped after the panic: reported by the dropping thread.
    let late = Builder::new()
        .name("orphan-late")
        .spawn_on(&rt, || -> () { panic!("nobody joins orphan-late") })
        .unwrap();
    wait_until("'orphan-late' to finish", || late.is_finished());
    drop(late);
    let e = wait_for_event("the report of 'orphan-late'", |e| {
        e.level == Level::ERROR && e.names("orphan-late")
    });
    assert_eq!(e.field("panic"), Some("nobody joins orphan-late"), "{e:?}");

    // A joined panic is the joiner's business: no report.
    let joined = Builder::new()
        .name("joined-panic")
        .spawn_on(&rt, || -> () { panic!("joined") })
        .unwrap();
    assert!(joined.join().is_err());
    wait_until("the coroutines to finish", || {
        let s = rt.stats();
        s.finished == s.spawned
    });
    assert!(
        !events().iter().any(|e| e.names("joined-panic")),
        "{:?}",
        events().iter().find(|e| e.names("joined-panic"))
    );
}
