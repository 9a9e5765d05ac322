//! A group of coroutines joined in the order they finish: tokio's
//! `JoinSet` for coroutines.
//!
//! Each coroutine spawned into the set carries a guard that, when its
//! closure returns, unwinds or is dropped unrun (its runtime shut down
//! first), sends the coroutine's key on the set's channel. `join_next`
//! receives the next key and joins that coroutine, whose result follows
//! at once (the guard drops as the closure's frame ends).

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

/// Sends its key when dropped: the coroutine's closure ended (or was
/// dropped without running).
struct Done {
    tx: mpsc::Sender<u64>,
    key: u64,
}

impl Drop for Done {
    fn drop(&mut self) {
        // The set may be gone: nobody to tell.
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
        let (key, f) = self.wrap(f);
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
        let (key, f) = self.wrap(f);
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
        let (key, f) = self.wrap(f);
        let h = builder.spawn(f)?;
        Ok(self.insert(key, h))
    }

    fn wrap<F>(&mut self, f: F) -> (u64, impl FnOnce() -> T + Send + 'static)
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let key = self.next_key;
        self.next_key += 1;
        let done = Done {
            tx: self.done_tx.clone(),
            key,
        };
        (key, move || {
            let _done = done;
            f()
        })
    }

    fn insert(&mut self, key: u64, h: JoinHandle<T>) -> &JoinHandle<T> {
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

    /// Joins the coroutine of `key` (its closure has ended), if still in
    /// the set.
    fn take(&mut self, key: u64) -> Option<std::thread::Result<T>> {
        let h = self.handles.remove(&key)?;
        // Not a cancellation point: the result comes as the closure's
        // frame ends.
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
