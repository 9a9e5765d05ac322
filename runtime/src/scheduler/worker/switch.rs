//! The coroutine's side of its worker: how code running in a coroutine
//! switches out (yield, park, the unusual cases: unwinding, cancellation,
//! a spawned future's poll on the worker's stack) and what it finds when
//! it is resumed.

use std::ptr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::*;
use crate::scheduler::task::CancelUnwind;
use crate::stack;

/// Runs `f` (a hook's park) with the running coroutine's cancellation
/// held back: a park inside it returns when the coroutine is resumed to be
/// cancelled, instead of unwinding (see `Running::no_throw`).
pub(crate) fn without_cancel_unwind<R>(f: impl FnOnce() -> R) -> R {
    let Some(r) = current_running() else {
        return f();
    };
    let was = r.no_throw.replace(true);
    let out = f();
    // `current_running` again: the same coroutine, on the same thread.
    if let Some(r) = current_running() {
        r.no_throw.set(was);
    }
    out
}

/// A blocking-call hook of the running coroutine, being cancelled, is
/// about to fail its call with `ECANCELED` (see `crate::hook`). Code that
/// retries whatever the error (an accept loop that `continue`s) would
/// spin on the worker for ever: after [`CANCEL_THROWS`] such failures the
/// coroutine is abandoned, as one that keeps catching its cancellation.
/// Not while it unwinds (a destructor's call just fails).
pub(crate) fn hook_call_cancelled() {
    let Some(r) = current_running() else {
        return;
    };
    if std::thread::panicking() {
        return;
    }
    let n = r.cancel_throws.get().saturating_add(1);
    r.cancel_throws.set(n);
    if n > CANCEL_THROWS {
        switch_out(
            r,
            Request::abandon(
                "its blocking calls kept failing with ECANCELED (the runtime shuts down) \
                 and it kept making them",
            ),
        );
        abort("an abandoned coroutine was resumed");
    }
}

/// Whether the running coroutine is being cancelled (the runtime shuts
/// down).
pub(crate) fn current_cancelling() -> bool {
    current_running().is_some_and(|r| r.header.cancelling())
}

/// Runs `f` on the stack of the worker that resumed the calling coroutine
/// (corosensei's `on_parent_stack`, what Go calls `systemstack`), with no
/// coroutine current meanwhile; on a plain thread it just calls `f`.
///
/// What it is for: polling a future. Futures polled on their coroutines'
/// own stacks each write their frames into memory of their own, which no
/// other connection has warmed (callgrind's cache simulation of hyper at
/// 100 connections: 92 first-level write misses per request, against
/// tokio's 18, whose tasks are all polled on one stack). Polled here, every
/// future of the worker writes the same, warm, stack.
///
/// The price: nothing inside `f` can park the coroutine, since its frames
/// are not on the coroutine's stack. With no coroutine current, a
/// greenstack wait inside `f` blocks the worker thread, and a blocking
/// libc call passes straight through, as in any async runtime. What the
/// coroutine *is* stays visible through [`code_running`]: its
/// coroutine-locals, its cancellation, its spawns' placement.
pub(crate) fn on_worker_stack<R>(f: impl FnOnce() -> R) -> R {
    /// Carries `f` across corosensei's `Send` bound (see the SAFETY below).
    struct SameThread<F>(F);
    // SAFETY: the bound keeps references to the yielder off another
    // thread's stack; the parent stack here is this same thread's (a
    // started coroutine never leaves its worker, and a `block_on` root
    // runs on the thread that resumes it), and `f` sees no yielder: no
    // coroutine is current while it runs.
    unsafe impl<F> Send for SameThread<F> {}
    impl<F> SameThread<F> {
        fn into_inner(self) -> F {
            self.0
        }
    }
    /// Makes the coroutine current again, and its hooks as they were,
    /// also when `f` unwinds.
    struct Restore(*const Running, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            POLLED.with(|c| c.set(ptr::null()));
            set_current(self.0);
            crate::hook::set_active(self.1);
        }
    }
    let p = current_ptr();
    // SAFETY: as in `current_running`.
    let Some(r) = (unsafe { p.as_ref() }) else {
        return f();
    };
    let y = r.yielder.get();
    if y.is_null() {
        // Not started through the worker's body (cannot happen for a
        // coroutine that runs code): just call it.
        return f();
    }
    let f = SameThread(f);
    let p = SameThread(p);
    // The switch must not take a growth fault (as `switch_out`).
    stack::prefault_for_runtime();
    // SAFETY: the yielder lives in the coroutine's body frame for as long as
    // the coroutine runs, and we are that coroutine; the closure returns
    // (or unwinds, which corosensei carries back here) before it goes on.
    unsafe {
        (*y).on_parent_stack(move || {
            let (f, p) = (f.into_inner(), p.into_inner());
            // Nothing in `f` may park: no coroutine is current, and the
            // blocking-call hooks pass straight through.
            let _restore = Restore(p, crate::hook::active());
            crate::hook::set_active(false);
            set_current(ptr::null());
            POLLED.with(|c| c.set(p));
            f()
        })
    }
}

/// Suspends the calling coroutine with `req`. False on a plain thread.
#[inline(always)]
pub(super) fn suspend(req: Request) -> bool {
    match current_running() {
        Some(r) => suspend_running(r, req),
        None => false,
    }
}

/// Suspends `r`, the calling coroutine's own `Running`, with `req`.
///
/// Two things take the cold path: a coroutine being cancelled at shutdown
/// (see "Shutdown" in the module docs), and one unwinding from a panic.
/// std counts panics per OS thread, so a coroutine that switched out while
/// unwinding would leave `std::thread::panicking()` true for every other
/// coroutine of its worker (and poison the std mutexes whose guards they
/// drop): [`suspend_unusual`] refuses that switch.
#[inline(always)]
pub(super) fn suspend_running(r: &Running, req: Request) -> bool {
    if r.no_throw.get() && !std::thread::panicking() {
        // Parked by a hook, inside an `extern "C"` frame: never throw here.
        switch_out(r, req);
        return true;
    }
    if r.header.cancelling() || std::thread::panicking() {
        return suspend_unusual(r, req);
    }
    switch_out(r, req);
    if r.header.cancelling() {
        // Resumed by the shutdown, to be cancelled.
        throw_cancel(r);
    }
    true
}

/// The switch to the worker itself.
#[inline(always)]
fn switch_out(r: &Running, req: Request) {
    let y = r.yielder.get();
    // The switch itself must not take a growth fault.
    stack::prefault_for_runtime();
    let sp = stack::stack_pointer();
    // A switch from anywhere but the coroutine's own stack (the worker's,
    // during `on_worker_stack`) would resume the worker over live frames.
    debug_assert!(
        r.gauge.contains(sp),
        "a coroutine switched out from outside its own stack"
    );
    r.parked_sp.set(sp);
    // SAFETY: the yielder lives in the coroutine's body frame for as long as
    // the coroutine runs, and we are that coroutine.
    unsafe { (*y).suspend(req) };
}

/// `suspend_running` for a coroutine being cancelled or unwinding.
#[cold]
#[inline(never)]
pub(super) fn suspend_unusual(r: &Running, req: Request) -> bool {
    let header = &r.header;
    if header.cancelling() {
        // Acquire: pairs with the Release in `CancelUnwind::drop`.
        if header.cancel_in_flight() || std::thread::panicking() {
            // A destructor waits while the coroutine unwinds at shutdown:
            // really wait. Every coroutine this worker runs meanwhile is
            // being cancelled and throws before any of its code runs (what
            // runs after its cancellation is caught does see the raised
            // panic count: "Shutdown" in the module docs).
            switch_out(r, req);
            return true;
        }
        if r.cancel_throws.get() >= CANCEL_THROWS {
            // It keeps catching its cancellation and waiting again.
            switch_out(
                r,
                Request::abandon("it caught its cancellation and waited again"),
            );
            abort("an abandoned coroutine was resumed");
        }
        throw_cancel(r);
    }
    if header.home.load(Ordering::Relaxed) == ROOT_HOME {
        // A `block_on` root has its thread to itself: nothing else runs on
        // it to see the panic count.
        switch_out(r, req);
        return true;
    }
    let name = header.name().unwrap_or("<unnamed>");
    match req.asked() {
        // A yield is a hint: skipping it changes nothing a caller relies on,
        // unless it is spun on.
        Asked::Yield => {
            let n = r.unwinding_yields.get() + 1;
            r.unwinding_yields.set(n);
            if n >= UNWINDING_YIELDS {
                abort(&format!(
                    "coroutine {} ({name:?}) yielded {n} times while unwinding from a \
                     panic: yields are skipped then (std counts panics per OS thread, \
                     and switching away would show it to other coroutines), so a \
                     destructor spinning on yield_now never lets anything else run. \
                     Catch the panic first (std::panic::catch_unwind), then wait",
                    header.id
                ))
            }
            true
        }
        Asked::Park(_) | Asked::Abandon(_) => abort(&format!(
            "coroutine {} ({name:?}) tried to wait while unwinding from a panic \
                 (a destructor that waits). std counts panics per OS thread, so \
                 switching away now would make every other coroutine on this worker \
                 see std::thread::panicking() == true and poison the std mutexes \
                 they unlock. Catch the panic first (std::panic::catch_unwind), \
                 then wait",
            header.id
        )),
    }
}

/// Throws the shutdown's cancellation from the calling coroutine's suspend
/// point (see "Shutdown" in the module docs).
#[cold]
#[inline(never)]
fn throw_cancel(r: &Running) -> ! {
    r.cancel_throws.set(r.cancel_throws.get() + 1);
    r.header.set_cancel_in_flight();
    // `resume_unwind`: no panic hook, so nothing is printed for it.
    std::panic::resume_unwind(Box::new(CancelUnwind(r.header.clone())))
}

/// `yield_now` for a coroutine; false on a plain thread.
#[inline(always)]
pub(crate) fn yield_current() -> bool {
    suspend(Request::YIELD)
}

/// `park` for a coroutine, until an unpark or `deadline`; false on a plain
/// thread.
#[inline(always)]
pub(crate) fn park_current_coroutine(deadline: Option<Instant>) -> bool {
    let Some(r) = current_running() else {
        return false;
    };
    if r.header.park.take_token() {
        return true;
    }
    suspend_running(r, Request::park(deadline))
}
