//! loom models of the workers' sleep/wake decision: the sleeper
//! bookkeeping of `scheduler/idle.rs` (production code, through the shim)
//! driven by the steps of the worker's run loop (`worker/`: `run`,
//! `Local::sleep`, `Local::stop_searching`) and of a spawn or remote
//! wake-up (`Shared::notify_one`, `Shared::notify_worker`).
//!
//! Two things are mocks, and the models say nothing about them:
//!
//! - the queues (crossbeam's deque and injector, the inbox): one counter
//!   per queue, pushed with Release and checked with Acquire, which is
//!   weaker than crossbeam's own orderings, so a model that passes with it
//!   passes with them;
//! - the sleep itself (`Driver::poll` in `epoll_wait`, woken by an eventfd
//!   write): [`Sleep`], a token that a wake-up leaves and the next poll,
//!   blocking or not, consumes, as the eventfd's edge is.
//!
//! A task left queued while every worker sleeps is a loom deadlock (the
//! main thread waits for it to run).

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use crate::scheduler::idle::Idle;

/// The mock of a worker's sleep in its driver (module docs).
struct Sleep {
    token: Mutex<bool>,
    cvar: Condvar,
}

impl Sleep {
    fn new() -> Sleep {
        Sleep {
            token: Mutex::new(false),
            cvar: Condvar::new(),
        }
    }

    /// `Driver::poll(block)`: waits for a wake-up if `block`, and consumes
    /// one either way.
    fn poll(&self, block: bool) {
        let mut t = self.token.lock().unwrap();
        if block {
            while !*t {
                t = self.cvar.wait(t).unwrap();
            }
        }
        *t = false;
    }

    /// `DriverHandle::unpark`: the eventfd write.
    fn wake(&self) {
        *self.token.lock().unwrap() = true;
        self.cvar.notify_one();
    }
}

/// A queue of tasks (module docs): only how many.
struct Queue(AtomicUsize);

impl Queue {
    fn new() -> Queue {
        Queue(AtomicUsize::new(0))
    }

    fn push(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    fn is_empty(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }

    fn pop(&self) -> bool {
        let mut n = self.0.load(Ordering::Acquire);
        while n > 0 {
            match self
                .0
                .compare_exchange(n, n - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => n = actual,
            }
        }
        false
    }
}

/// What the workers share (`Shared`, reduced to the sleep/wake parts).
struct Sim {
    idle: Idle,
    /// The injector and deques: any worker's work.
    injector: Queue,
    /// Each worker's inbox: remote wake-ups of its own coroutines.
    inbox: Vec<Queue>,
    sleep: Vec<Sleep>,
    shutdown: AtomicBool,
    /// Tasks run, for the main thread to wait on.
    ran: Mutex<usize>,
    ran_cvar: Condvar,
}

impl Sim {
    fn new(workers: usize) -> Arc<Sim> {
        Arc::new(Sim {
            idle: Idle::new(workers),
            injector: Queue::new(),
            inbox: (0..workers).map(|_| Queue::new()).collect(),
            sleep: (0..workers).map(|_| Sleep::new()).collect(),
            shutdown: AtomicBool::new(false),
            ran: Mutex::new(0),
            ran_cvar: Condvar::new(),
        })
    }

    /// `Shared::notify_one`.
    fn notify_one(&self) {
        if let Some(w) = self.idle.pop_sleeper() {
            self.sleep[w].wake();
        }
    }

    /// `Shared::notify_worker`.
    fn notify_worker(&self, w: usize) {
        if self.idle.remove_sleeper(w) {
            self.sleep[w].wake();
        }
    }

    /// A spawn from outside the runtime: push, then `notify_one` (whose
    /// first step is the SeqCst fence).
    fn spawn(&self) {
        self.injector.push();
        self.notify_one();
    }

    /// A remote wake-up of a coroutine of worker `w`: into its inbox, then
    /// `notify_worker`.
    fn wake_remote(&self, w: usize) {
        self.inbox[w].push();
        self.notify_worker(w);
    }

    /// Waits until `n` tasks ran, then shuts the workers down (as
    /// `Runtime::drop`: the flag, then a wake-up for each).
    fn wait_then_shut_down(&self, n: usize) {
        let mut ran = self.ran.lock().unwrap();
        while *ran < n {
            ran = self.ran_cvar.wait(ran).unwrap();
        }
        drop(ran);
        self.shutdown.store(true, Ordering::SeqCst);
        for s in &self.sleep {
            s.wake();
        }
    }
}

/// One worker's run loop (`worker::run`), reduced to picking, searching
/// and sleeping. `searching`: it starts as just woken.
fn worker(sim: &Sim, w: usize, mut searching: bool) {
    if searching {
        sim.idle.start_searching();
    }
    while !sim.shutdown.load(Ordering::Acquire) {
        // `next_work`: the inbox, then the shared queues.
        let found = sim.inbox[w].pop() || sim.injector.pop();
        // `stop_searching`.
        if std::mem::replace(&mut searching, false) {
            let last = sim.idle.stop_searching();
            if found && last && !sim.injector.is_empty() {
                sim.notify_one();
            }
        }
        if found {
            *sim.ran.lock().unwrap() += 1;
            sim.ran_cvar.notify_one();
            continue;
        }
        // `Local::sleep`, after its spin: announce (with the fence),
        // re-check every source, sleep or just poll, leave the sleepers,
        // search.
        sim.idle.announce(w);
        let has_work = !sim.inbox[w].is_empty()
            || !sim.injector.is_empty()
            || sim.shutdown.load(Ordering::Acquire);
        sim.sleep[w].poll(!has_work);
        sim.idle.remove_sleeper(w);
        searching = true;
        sim.idle.start_searching();
    }
}

/// Starts `n` workers, the first `searching` of them as just woken.
fn start(sim: &Arc<Sim>, n: usize, searching: usize) -> Vec<thread::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let sim = Arc::clone(sim);
            thread::spawn(move || worker(&sim, w, w < searching))
        })
        .collect()
}

/// A spawn while the only worker decides to sleep: the worker runs it
/// (it finds it on its re-check, or is woken).
#[test]
fn loom_idle_spawn_reaches_sleeping_worker() {
    loom::model(|| {
        let sim = Sim::new(1);
        let workers = start(&sim, 1, 0);
        sim.spawn();
        sim.wait_then_shut_down(1);
        for t in workers {
            t.join().unwrap();
        }
    });
}

/// A spawn while one worker is searching (just woken) and wakes nobody:
/// the searcher finds it, or the spawn sees it gone to sleep and wakes
/// a sleeper.
#[test]
fn loom_idle_spawn_during_search() {
    loom::model(|| {
        let sim = Sim::new(2);
        let workers = start(&sim, 2, 1);
        sim.spawn();
        sim.wait_then_shut_down(1);
        for t in workers {
            t.join().unwrap();
        }
    });
}

/// A remote wake-up (a coroutine of worker 0 unparked from elsewhere)
/// while worker 0 decides to sleep: worker 0 runs it.
#[test]
fn loom_idle_remote_wakeup_reaches_home_worker() {
    loom::model(|| {
        let sim = Sim::new(1);
        let workers = start(&sim, 1, 0);
        sim.wake_remote(0);
        sim.wait_then_shut_down(1);
        for t in workers {
            t.join().unwrap();
        }
    });
}

/// Two spawns while two workers decide to sleep: both tasks run (a
/// wake-up that reaches a worker already awake is made up for by the last
/// searcher, `stop_searching`, or by that worker itself).
#[test]
fn loom_idle_two_spawns_two_workers() {
    loom::model(|| {
        let sim = Sim::new(2);
        let workers = start(&sim, 2, 0);
        sim.spawn();
        sim.spawn();
        sim.wait_then_shut_down(2);
        for t in workers {
            t.join().unwrap();
        }
    });
}
