//! `spawn_blocking`: a pool of plain threads for work that would block a
//! worker (a blocking system call, a long computation).
//!
//! Threads are started on demand up to [`MAX_THREADS`] and leave after
//! [`KEEP_ALIVE`] without work. Code on them may call `greenstack::spawn`,
//! which reaches the runtime they belong to.
//!
//! Dropping the runtime shuts the pool down, in every drop path (one of
//! its own coroutines dropping it included: `Runtime::drop`): it takes no
//! more jobs (their joins see `Cancelled`), jobs already queued or running
//! finish and their joins get their outcome, idle threads leave at once
//! and busy ones after their job. The threads are not joined: a job may
//! block for as long as it likes, and a drop must return; each thread holds
//! the runtime's shared state until it leaves, so nothing it touches is
//! freed under it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar};

use crate::loom::sync::Mutex;
use std::time::Duration;

use super::join::{Completer, JoinState, Outcome};
use super::{JoinHandle, Shared};

/// Most blocking threads at once: 512.
pub(crate) const MAX_THREADS: usize = 512;
/// How long an idle blocking thread waits for work before it leaves: 10 s.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
    shutdown: bool,
}

/// The pool.
#[derive(Default)]
pub(crate) struct Pool {
    state: Mutex<State>,
    cvar: Condvar,
}

thread_local! {
    /// The runtime a blocking thread belongs to.
    static RUNTIME: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}

/// The runtime of the calling blocking thread, if it is one.
pub(crate) fn current_shared() -> Option<Arc<Shared>> {
    RUNTIME.with(|r| r.borrow().clone())
}

impl Pool {
    pub(crate) fn new() -> Pool {
        Pool::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops taking jobs; idle threads leave at once, busy ones after their job.
    pub(crate) fn shutdown(&self) {
        self.lock().shutdown = true;
        self.cvar.notify_all();
    }
}

/// Runs `f` on a thread of the current runtime's blocking pool and returns
/// a handle to join it (from a coroutine or a thread).
///
/// # Panics
///
/// Outside a greenstack runtime, or if no thread can be started while none
/// is free.
pub fn spawn_blocking<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let shared = super::current_shared()
        .expect("greenstack::spawn_blocking called outside a greenstack runtime");
    let state = crate::loom::sync::Arc::new(JoinState::new());
    let completer = Completer::new(crate::loom::sync::Arc::clone(&state));
    let job: Job = Box::new(move || {
        let outcome = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => Outcome::Value(v),
            Err(p) => Outcome::Panic(Box::new(p)),
        };
        completer.complete(outcome);
    });
    submit(&shared, job);
    JoinHandle::blocking(state)
}

fn submit(shared: &Arc<Shared>, job: Job) {
    let pool = &shared.blocking;
    let mut st = pool.lock();
    if st.shutdown {
        // Dropping the job drops its completer: the joiner sees Cancelled.
        return;
    }
    st.queue.push_back(job);
    if st.idle > 0 {
        drop(st);
        pool.cvar.notify_one();
        return;
    }
    if st.threads >= MAX_THREADS {
        return; // a busy thread takes it when done
    }
    st.threads += 1;
    drop(st);
    let s = Arc::clone(shared);
    let started = std::thread::Builder::new()
        .name("greenstack-blocking".into())
        .spawn(move || thread_main(s));
    if let Err(e) = started {
        let mut st = pool.lock();
        st.threads -= 1;
        if st.threads == 0 {
            panic!("greenstack::spawn_blocking: cannot start a thread: {e}");
        }
    }
}

fn thread_main(shared: Arc<Shared>) {
    RUNTIME.with(|r| *r.borrow_mut() = Some(Arc::clone(&shared)));
    let pool = &shared.blocking;
    let mut st = pool.lock();
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            job();
            st = pool.lock();
            continue;
        }
        if st.shutdown {
            break;
        }
        st.idle += 1;
        let (guard, timeout) = pool
            .cvar
            .wait_timeout(st, KEEP_ALIVE)
            .unwrap_or_else(|p| p.into_inner());
        st = guard;
        st.idle -= 1;
        if timeout.timed_out() && st.queue.is_empty() {
            break;
        }
    }
    st.threads -= 1;
    drop(st);
    RUNTIME.with(|r| r.borrow_mut().take());
}
