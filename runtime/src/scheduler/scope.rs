//! Scoped coroutines: coroutines that borrow from the stack of the code
//! that spawns them, in the shape of [`std::thread::scope`].
//!
//! # Why it is sound
//!
//! A scoped coroutine's closure borrows for `'scope`, and is spawned as an
//! ordinary coroutine after its lifetime is erased. That is sound only if
//! the closure, and everything it captured, is gone before `'scope` ends,
//! that is before [`scope`] returns or unwinds. So:
//!
//! - Every scoped spawn counts one on the scope's [`WaitGroup`], and the
//!   count is given back by a guard that is the *last* field of what the
//!   coroutine owns ([`Child`]): it drops after the closure's captures and
//!   after the result, on every path (the body ran, the body panicked, the
//!   coroutine was dropped unrun at shutdown, or the spawn failed).
//! - [`scope`] waits for that count to reach zero after its closure
//!   returns *or panics* (the panic is caught, and resumed after the wait),
//!   and the wait cannot be cut short by the runtime's cancellation at
//!   shutdown (`worker::without_cancel_unwind`: a coroutine cancelled
//!   while in a scope waits for its children, which are being cancelled
//!   too). Nothing else waits: a forgotten [`ScopedJoinHandle`] changes
//!   nothing.
//! - A child the runtime abandons at shutdown (it kept catching its
//!   cancellation) never gives its count back: its scope waits for ever.
//!   That is sound (the child never runs again, and its captures are never
//!   dropped) and, for a scope in a coroutine of the same runtime, ends
//!   with that coroutine abandoned in turn at the shutdown timeout.

use std::any::Any;
use std::io;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::task::CancelUnwind;
use super::{spawn_on, Builder, Cancelled, Coroutine, JoinHandle, Runtime, Shared};
use crate::sync::WaitGroup;

/// Creates a scope for spawning coroutines that borrow from the caller's
/// stack, on the current runtime, as [`std::thread::scope`] does for
/// threads.
///
/// The closure gets a [`Scope`], whose [`spawn`](Scope::spawn) takes
/// closures that may borrow anything that outlives the call. When the
/// closure returns, `scope` waits for every coroutine spawned in it to
/// finish, then returns the closure's value. Works in a coroutine (which
/// parks meanwhile) and on a thread of [`spawn_blocking`](crate::spawn_blocking);
/// from any other thread use [`Runtime::scope`].
///
/// # Panics
///
/// Outside a greenstack runtime. If the closure panics, the panic resumes
/// here once every spawned coroutine has finished; if a spawned coroutine
/// panicked and nobody joined it, `scope` panics with "a scoped coroutine
/// panicked" after the others finish.
///
/// # Examples
///
/// ```
/// # let rt = greenstack_runtime::Runtime::new()?;
/// # rt.block_on(|| {
/// let mut counts = vec![0u32; 4];
/// let words = ["stackful", "coroutines", "borrow", "freely"];
/// greenstack_runtime::scope(|s| {
///     for (count, word) in counts.iter_mut().zip(&words) {
///         s.spawn(move || *count = word.len() as u32);
///     }
/// });
/// assert_eq!(counts, [8, 10, 6, 6]);
/// # });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn scope<'env, F, T>(f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    let shared = super::current_shared()
        .expect("greenstack::scope called outside a greenstack runtime (use Runtime::scope)");
    scope_on(shared, f)
}

impl Runtime {
    /// [`scope`] on this runtime, from any thread: the coroutines spawned
    /// in it run on this runtime's workers.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = greenstack_runtime::Runtime::new()?;
    /// let text = String::from("borrowed from main");
    /// let len = rt.scope(|s| s.spawn(|| text.len()).join().unwrap());
    /// assert_eq!(len, text.len());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn scope<'env, F, T>(&self, f: F) -> T
    where
        F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
    {
        scope_on(Arc::clone(&self.shared), f)
    }
}

fn scope_on<'env, F, T>(shared: Arc<Shared>, f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    let scope = Scope {
        data: Arc::new(ScopeData {
            running: WaitGroup::new(),
            panicked: AtomicBool::new(false),
        }),
        shared,
        scope: PhantomData,
        env: PhantomData,
    };
    let result = catch_unwind(AssertUnwindSafe(|| f(&scope)));
    // Not cut short by a cancellation at shutdown (module docs).
    super::worker::without_cancel_unwind(|| {
        while scope.data.running.count() > 0 {
            scope.data.running.wait();
        }
    });
    match result {
        Err(p) => resume_unwind(p),
        Ok(_) if scope.data.panicked.load(Ordering::Acquire) => {
            panic!("a scoped coroutine panicked")
        }
        Ok(v) => v,
    }
}

/// A scope to spawn coroutines in: see [`scope`].
///
/// Invariant in both lifetimes, as std's `Scope`: `'scope` is the scope's
/// own lifetime, `'env` that of what its coroutines borrow.
pub struct Scope<'scope, 'env: 'scope> {
    data: Arc<ScopeData>,
    shared: Arc<Shared>,
    scope: PhantomData<&'scope mut &'scope ()>,
    env: PhantomData<&'env mut &'env ()>,
}

struct ScopeData {
    /// Coroutines spawned in the scope whose [`Child`] still exists.
    running: WaitGroup,
    /// A coroutine panicked and nobody took the panic from its handle.
    panicked: AtomicBool,
}

impl std::fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("running", &self.data.running.count())
            .finish_non_exhaustive()
    }
}

impl<'scope> Scope<'scope, '_> {
    /// Spawns a coroutine that may borrow anything that outlives the scope.
    ///
    /// # Panics
    ///
    /// With the `io::Error`'s message if no stack can be had; use
    /// [`Builder::spawn_scoped`] to get the error instead.
    pub fn spawn<F, T>(&'scope self, f: F) -> ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        Builder::new()
            .spawn_scoped(self, f)
            .unwrap_or_else(|e| panic!("greenstack: cannot spawn: {e}"))
    }
}

impl Builder {
    /// Spawns a scoped coroutine with this builder's settings; see
    /// [`Scope::spawn`].
    ///
    /// # Errors
    ///
    /// As [`Builder::spawn`].
    pub fn spawn_scoped<'scope, F, T>(
        self,
        scope: &'scope Scope<'scope, '_>,
        f: F,
    ) -> io::Result<ScopedJoinHandle<'scope, T>>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        scope.data.running.add(1);
        let packet = Arc::new(Packet {
            state: crate::loom::sync::Mutex::new(PacketState {
                result: None,
                handle_alive: true,
            }),
        });
        let child = Child {
            f: Some(f),
            packet: Arc::clone(&packet),
            done: Done(Arc::clone(&scope.data)),
        };
        let body: Box<dyn FnOnce() + Send + 'scope> = Box::new(move || child.run());
        // SAFETY: only the lifetime changes. The closure (with everything
        // it captured, the `Child`) is dropped before `'scope` ends: its
        // `Done` guard, dropped last, gives back the count `scope_on` waits
        // for before it returns or unwinds (module docs). If the spawn
        // fails, `spawn_on` drops it here.
        let body: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(body) };
        let handle = spawn_on(&scope.shared, self.name, self.stack_size, body)?;
        Ok(ScopedJoinHandle {
            handle: Some(handle),
            packet,
            data: Arc::clone(&scope.data),
            scope: PhantomData,
        })
    }
}

/// What a scoped coroutine owns. Fields drop in order: the closure (if it
/// never ran), the result slot, then the count the scope waits for.
struct Child<F, T> {
    f: Option<F>,
    packet: Arc<Packet<T>>,
    done: Done,
}

impl<F: FnOnce() -> T, T> Child<F, T> {
    fn run(mut self) {
        let f = self.f.take().expect("a scoped coroutine runs once");
        let result = catch_unwind(AssertUnwindSafe(f));
        if let Err(p) = &result {
            if p.is::<CancelUnwind>() {
                // The runtime's cancellation at shutdown: it goes on
                // unwinding to the coroutine's top (dropping `self` on the
                // way, and with it the count), where the runtime handles it.
                let Err(p) = result else { unreachable!() };
                resume_unwind(p);
            }
        }
        let unclaimed = {
            let mut st = self.packet.lock();
            if st.handle_alive {
                st.result = Some(result);
                None
            } else {
                Some(result)
            }
        };
        if let Some(r) = unclaimed {
            if r.is_err() {
                self.done.0.panicked.store(true, Ordering::Release);
            }
            // Dropped here, inside the scope.
            drop(r);
        }
    }
}

/// Gives back the scope's count when dropped.
struct Done(Arc<ScopeData>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.running.done();
    }
}

struct Packet<T> {
    state: crate::loom::sync::Mutex<PacketState<T>>,
}

struct PacketState<T> {
    result: Option<std::thread::Result<T>>,
    /// The handle may still take the result.
    handle_alive: bool,
}

impl<T> Packet<T> {
    /// The state; a panic while it was held (a result's destructor) leaves
    /// it usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, PacketState<T>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handle to a scoped coroutine: [`join`](Self::join) waits for it and
/// returns its value. Dropping it does not detach anything: the scope
/// waits for every coroutine spawned in it.
pub struct ScopedJoinHandle<'scope, T> {
    handle: Option<JoinHandle<()>>,
    packet: Arc<Packet<T>>,
    data: Arc<ScopeData>,
    scope: PhantomData<&'scope ()>,
}

impl<T> ScopedJoinHandle<'_, T> {
    /// Waits for the coroutine to finish and returns its value, or the
    /// payload of its panic as `Err` (which then does not make the scope
    /// panic). A coroutine the runtime dropped or cancelled before it
    /// finished gives `Err` with [`Cancelled`] as the payload.
    pub fn join(mut self) -> std::thread::Result<T> {
        if let Some(h) = self.handle.take() {
            // Its outcome is `()`, or why the body never ended.
            let _ = h.join();
        }
        let result = {
            let mut st = self.packet.lock();
            st.handle_alive = false;
            st.result.take()
        };
        result.unwrap_or_else(|| Err(Box::new(Cancelled) as Box<dyn Any + Send>))
    }

    /// Asks the coroutine to stop, as [`JoinHandle::cancel`] does: its
    /// cancellable waits end with errors its own code handles. The scope
    /// still waits for it to return.
    pub fn cancel(&self) {
        if let Some(h) = &self.handle {
            h.cancel();
        }
    }

    /// Whether the coroutine has finished.
    pub fn is_finished(&self) -> bool {
        match &self.handle {
            Some(h) => h.is_finished(),
            None => true,
        }
    }

    /// The coroutine.
    pub fn coroutine(&self) -> Option<&Coroutine> {
        self.handle.as_ref().and_then(JoinHandle::coroutine)
    }
}

impl<T> Drop for ScopedJoinHandle<'_, T> {
    fn drop(&mut self) {
        if self.handle.is_none() {
            return;
        }
        let result = {
            let mut st = self.packet.lock();
            st.handle_alive = false;
            st.result.take()
        };
        if matches!(result, Some(Err(_))) {
            self.data.panicked.store(true, Ordering::Release);
        }
    }
}

impl<T> std::fmt::Debug for ScopedJoinHandle<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedJoinHandle")
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}
