//! How work reaches a worker from anywhere: new tasks (`submit`, placed
//! on the spawning worker, another worker's incoming queue or the
//! injector) and wake-ups of parked coroutines (`schedule`: the local
//! ready queue on their home worker, the home worker's inbox elsewhere).

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use crossbeam_deque::{Injector, Steal};

use super::*;
use crate::scheduler::task::{Header, NewTask, SharedHandle, TaskShared};
use crate::scheduler::Shared;
use crate::stack::NoFaultSection;

/// Queues a new task: on the caller's deque if it is a worker of `shared`
/// (or, for a busy spawner, on the least loaded worker: see
/// `Local::placement`), else on the injector. Wakes a sleeping worker if
/// there is one.
///
/// The push is outside the no-fault section: the deque and injector are
/// lock-free, so a growth fault in them holds nothing the handler needs;
/// and a push that grows the deque flushes crossbeam-epoch garbage, whose
/// stack use (26 KiB in a debug build, found by a violation in
/// `tests/rt_stress.rs`) is beyond the look-ahead we can afford on every
/// spawn. The section covers the wake-up, which takes the sleepers' lock.
///
/// A task pushed onto an empty local deque wakes nobody: the spawner's
/// worker runs it as soon as the spawner suspends, and a worker that is
/// awake may still steal it. Waking a sleeper for it would mostly have that
/// worker steal it, and a started coroutine never moves back, so a
/// coroutine and the child it talks to would end up on two workers (as
/// tokio's LIFO slot, whose task wakes nobody either; measured: a channel
/// ping-pong on 2 workers ran at 65–75 ns per hand-off on one worker,
/// 100–300 ns across two). The next spawn onto a non-empty deque wakes a
/// sleeper as before.
pub(crate) fn submit(shared: &Arc<Shared>, task: NewTask) {
    // No coroutine switch midway: the deque's push may wait (see
    // `hook::internal`).
    crate::hook::internal(|| submit_here(shared, task));
}

/// [`submit`]'s work.
fn submit_here(shared: &Arc<Shared>, task: NewTask) {
    // SAFETY: as in `current_shared`.
    match unsafe { worker_ptr().as_ref() } {
        Some(w) if Arc::ptr_eq(&w.shared, shared) => match w.placement() {
            Some(target) if target == w.index => {
                // This worker is awake (it runs the spawner): no wake-up.
                w.ws().incoming.push(task);
                return;
            }
            Some(target) => {
                if !push_shared(shared, &shared.workers[target].incoming, task) {
                    return;
                }
                let _section = NoFaultSection::enter();
                shared.notify_worker(target);
                return;
            }
            None => {
                let first = w.deque.is_empty();
                w.deque.push(task);
                if first {
                    return;
                }
            }
        },
        _ => {
            if !push_shared(shared, &shared.injector, task) {
                return;
            }
        }
    }
    // No fence of our own: `notify_one` issues the SeqCst fence between
    // the push above and its reads of the sleepers (`Idle::pop_sleeper`),
    // and a second one here cost a locked instruction per spawn of a burst.
    let _section = NoFaultSection::enter();
    shared.notify_one();
}

/// Pushes `task` onto a queue other threads drain, then issues the SeqCst
/// fence a wake-up needs. False if shutdown has begun: a spawn that raced
/// with it may have pushed after the worker or runtime that would have
/// drained the queue, so the spawner drains it itself (the push comes
/// before `shutdown` is set, and that drain finds it, or this load sees
/// `shutdown`: SeqCst on both sides).
pub(super) fn push_shared(shared: &Shared, queue: &Injector<NewTask>, task: NewTask) -> bool {
    queue.push(task);
    fence(Ordering::SeqCst);
    if shared.shutdown.load(Ordering::SeqCst) {
        discard_all(shared, queue);
        return false;
    }
    true
}

/// Drops every task in `queue` (its joiners see `Cancelled`).
pub(crate) fn discard_all(shared: &Shared, queue: &Injector<NewTask>) {
    loop {
        match queue.steal() {
            Steal::Success(t) => discard(shared, t),
            Steal::Empty => return,
            Steal::Retry => {}
        }
    }
}

/// An unnamed handle on `shared` for a new header: the calling worker's
/// own if it is one of `shared`'s; off the workers, the calling
/// coroutine's (a `block_on` root's) if it is of `shared` and unnamed;
/// else a new one (see `Header::shared`).
///
/// The root's case saves an allocation and its free per spawn: a root
/// spawning and joining one coroutine at a time made one `malloc` per
/// spawn, all of them here (`perf probe` on libc's `malloc`).
pub(crate) fn shared_handle(shared: &Arc<Shared>) -> SharedHandle {
    // SAFETY: as in `current_shared`.
    match unsafe { worker_ptr().as_ref() } {
        Some(w) if Arc::ptr_eq(&w.shared, shared) => Arc::clone(&w.handle),
        _ => match current_running() {
            Some(r)
                if Arc::ptr_eq(&r.header.shared.shared, shared)
                    && r.header.shared.name.is_none() =>
            {
                Arc::clone(&r.header.shared)
            }
            _ => TaskShared::unnamed(shared),
        },
    }
}

/// Makes a coroutine that an unpark took out of `PARKED` runnable: straight
/// onto the ready queue if the caller is its worker, else through its home
/// worker's inbox (or, for a `block_on` root, by unparking its thread).
///
/// On the home worker itself this is a push onto a `RefCell`'d queue of its
/// own, which holds no lock: no no-fault section (it would cost a prefault
/// on every local wake-up). The remote path edits the home worker's inbox
/// and the sleepers' list under their lock, inside one.
pub(crate) fn schedule(header: &Header) {
    let home = header.home.load(Ordering::Acquire);
    // SAFETY: as in `current_shared`.
    if let Some(w) = unsafe { worker_ptr().as_ref() } {
        // A root's home (`ROOT_HOME`) is no worker's index.
        if w.index == home as usize && Arc::ptr_eq(&w.shared, &header.shared) {
            let key = header.key.load(Ordering::Acquire) as usize;
            bump(&w.ws().wakeups);
            w.ready.borrow_mut().push_back(key);
            return;
        }
    }
    schedule_elsewhere(header, home);
}

/// `schedule` for a coroutine of another worker (or runtime), or a root.
/// Out of line and cold: the local wake-up above is the hot path, and with
/// this inlined into it every local wake-up paid for saving the registers
/// this path needs.
#[cold]
#[inline(never)]
fn schedule_elsewhere(header: &Header, home: u32) {
    let shared: &Arc<Shared> = &header.shared;
    shared.counters.wakeups.add(1);
    if home == ROOT_HOME {
        if let Some(t) = header.root_thread() {
            t.unpark();
        }
        return;
    }
    let key = header.key.load(Ordering::Acquire) as usize;
    let _section = NoFaultSection::enter();
    shared.workers[home as usize].inbox.push(key);
    fence(Ordering::SeqCst);
    shared.notify_worker(home as usize);
}

/// Adds one to a counter whose only writer is the calling worker: a plain
/// load and store, no locked instruction.
pub(super) fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Drops a task that will never run (shutdown); its joiner sees
/// `Cancelled`.
pub(crate) fn discard(shared: &Shared, task: NewTask) {
    // A closure whose captures panic on drop must not cut shutdown short.
    drop_quietly(task);
    shared.counters.discarded.add(1);
}
