//! A group of coroutines joined in the order they finish: tokio's
//! `JoinSet` for coroutines.
//!
//! Each coroutine spawned into the set has a waker registered with its
//! join state that sends the coroutine's key on the set's channel when it
//! completes, however it does: returns, panics, is cancelled, is dropped
//! unrun (its runtime shut down first) or is abandoned at shutdown (its
//! closure then never ends: a guard inside it would never tell).
//! `join_next` receives the next key and joins that coroutine, whose
//! result is there already.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use super::{Builder, JoinHandle, Runtime};
use crate::sync::mpsc;

/// A set of coroutines, joined in the order they finish.
///
/// Dropping the set cancels every coroutine still in it (as
/// [`JoinHandle::cancel`] does: their waits end, their own code returns)
/// and detaches them.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use greenstack_runtime::JoinSet;
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let mut set = JoinSet::new();
///     for ms in [30u64, 10, 20] {
///         set.spawn(move || {
///             greenstack_runtime::time::sleep(Duration::from_millis(ms));
///             ms
///         });
///     }
///     let mut order = Vec::new();
///     while let Some(r) = set.join_next() {
///         order.push(r.unwrap());
///     }
///     assert_eq!(order, [10, 20, 30]);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct JoinSet<T> {
    handles: HashMap<u64, JoinHandle<T>>,
    done_tx: mpsc::Sender<u64>,
    done_rx: mpsc::Receiver<u64>,
    next_key: u64,
}

/// Sends its key when woken: the coroutine completed.
struct Finished {
    tx: mpsc::Sender<u64>,
    key: u64,
}

impl std::task::Wake for Finished {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        // The set may be gone: nobody to tell. (An unbounded send never
        // waits, so the completer, a worker among them, never stalls.)
        let _ = self.tx.send(self.key);
    }
}

impl<T: Send + 'static> Default for JoinSet<T> {
    fn default() -> Self {
        JoinSet::new()
    }
}

impl<T: Send + 'static> JoinSet<T> {
    /// An empty set.
    pub fn new() -> JoinSet<T> {
        let (done_tx, done_rx) = mpsc::channel();
        JoinSet {
            handles: HashMap::new(),
            done_tx,
            done_rx,
            next_key: 0,
        }
    }

    /// Spawns `f` into the set, on the current runtime (as
    /// [`spawn`](crate::spawn)).
    ///
    /// # Panics
    ///
    /// Outside a runtime, or if no stack can be had (as
    /// [`spawn`](crate::spawn)).
    pub fn spawn<F>(&mut self, f: F) -> &JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let key = self.new_key();
        self.insert(key, crate::spawn(f))
    }

    /// Spawns `f` into the set, on `rt`, from any thread.
    ///
    /// # Panics
    ///
    /// If no stack can be had (as [`Runtime::spawn`]).
    pub fn spawn_on<F>(&mut self, rt: &Runtime, f: F) -> &JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let key = self.new_key();
        self.insert(key, rt.spawn(f))
    }

    /// Spawns `f` into the set with `builder`'s settings.
    ///
    /// # Errors
    ///
    /// As [`Builder::spawn`]; the set is unchanged then.
    pub fn spawn_with<F>(&mut self, builder: Builder, f: F) -> std::io::Result<&JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let key = self.new_key();
        let h = builder.spawn(f)?;
        Ok(self.insert(key, h))
    }

    fn new_key(&mut self) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        key
    }

    fn insert(&mut self, key: u64, h: JoinHandle<T>) -> &JoinHandle<T> {
        let waker = std::task::Waker::from(std::sync::Arc::new(Finished {
            tx: self.done_tx.clone(),
            key,
        }));
        h.watch(&waker);
        if h.is_finished() {
            // Completed before the waker was there: it may never be woken.
            // (A duplicate key, if it was, finds the handle gone.)
            let _ = self.done_tx.send(key);
        }
        self.handles.entry(key).or_insert(h)
    }

    /// Waits for the next coroutine of the set to finish and returns what
    /// [`JoinHandle::join`] would: `None` once the set is empty.
    ///
    /// A cancellation point (see [`crate::cancel`]): a cancelled caller
    /// gets `None` while coroutines remain (they stay in the set).
    pub fn join_next(&mut self) -> Option<std::thread::Result<T>> {
        if self.handles.is_empty() {
            return None;
        }
        loop {
            let key = self.done_rx.recv().ok()?;
            if let Some(r) = self.take(key) {
                return Some(r);
            }
        }
    }

    /// [`join_next`](Self::join_next), waiting at most `timeout`: `None`
    /// also if none finished by then.
    pub fn join_next_timeout(&mut self, timeout: Duration) -> Option<std::thread::Result<T>> {
        if self.handles.is_empty() {
            return None;
        }
        let deadline = crate::time::deadline_after(timeout);
        loop {
            let key = match deadline {
                Some(d) => self.done_rx.recv_deadline(d).ok()?,
                None => self.done_rx.recv().ok()?,
            };
            if let Some(r) = self.take(key) {
                return Some(r);
            }
        }
    }

    /// The result of a coroutine of the set that has finished, if any, now.
    pub fn try_join_next(&mut self) -> Option<std::thread::Result<T>> {
        loop {
            let key = self.done_rx.try_recv().ok()?;
            if let Some(r) = self.take(key) {
                return Some(r);
            }
        }
    }

    /// Joins the coroutine of `key` (it has completed), if still in the
    /// set.
    fn take(&mut self, key: u64) -> Option<std::thread::Result<T>> {
        let h = self.handles.remove(&key)?;
        // Not a cancellation point, and no wait: the result is there.
        Some(h.join())
    }

    /// Joins every coroutine of the set, in the order they finish.
    pub fn join_all(mut self) -> Vec<std::thread::Result<T>> {
        let mut out = Vec::with_capacity(self.handles.len());
        while !self.handles.is_empty() {
            match self.join_next() {
                Some(r) => out.push(r),
                // Cancelled: the rest are cancelled with the set.
                None => break,
            }
        }
        out
    }

    /// Cancels every coroutine in the set (as [`JoinHandle::cancel`]);
    /// they stay in it, to be joined.
    pub fn cancel_all(&self) {
        for h in self.handles.values() {
            h.cancel();
        }
    }

    /// Removes every coroutine from the set without cancelling it: they
    /// run on, detached.
    pub fn detach_all(&mut self) {
        self.handles.clear();
    }

    /// How many coroutines the set holds (finished and not yet joined
    /// included).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether the set holds no coroutine.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl<T> Drop for JoinSet<T> {
    fn drop(&mut self) {
        for h in self.handles.values() {
            h.cancel();
        }
    }
}

impl<T> fmt::Debug for JoinSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinSet")
            .field("len", &self.handles.len())
            .finish()
    }
}
