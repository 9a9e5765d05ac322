//! [`OnceLock`]: std's `OnceLock`, whose concurrent initializers park.

use std::fmt;

use super::Mutex;

/// A cell written once, as [`std::sync::OnceLock`], except that a
/// coroutine that finds another initializing it parks until that one is
/// done (std's blocks the worker thread in a futex, and with it every
/// coroutine on that worker, possibly the initializer itself).
///
/// The value is stored in a `std::sync::OnceLock`, which this type alone
/// writes, and only while it holds its own (parking) lock: so std's lock
/// never has anyone to wait for. If the initializer panics, the cell stays
/// empty and the next caller initializes it, as with std's.
///
/// # Examples
///
/// ```
/// use greenstack_runtime::sync::OnceLock;
/// static CONFIG: OnceLock<String> = OnceLock::new();
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let hs: Vec<_> = (0..8)
///         .map(|_| greenstack_runtime::spawn(|| CONFIG.get_or_init(|| "loaded".to_string()).len()))
///         .collect();
///     assert!(hs.into_iter().all(|h| h.join().unwrap() == 6));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct OnceLock<T> {
    value: std::sync::OnceLock<T>,
    init: Mutex<()>,
}

impl<T> OnceLock<T> {
    /// An empty cell.
    pub const fn new() -> OnceLock<T> {
        OnceLock {
            value: std::sync::OnceLock::new(),
            init: Mutex::new(()),
        }
    }

    /// The value, if set.
    pub fn get(&self) -> Option<&T> {
        self.value.get()
    }

    /// The value, if set, mutably.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.value.get_mut()
    }

    /// Sets the value if the cell is empty; else gives `value` back.
    /// Waits (parking) while another caller initializes the cell.
    pub fn set(&self, value: T) -> Result<(), T> {
        if self.value.get().is_some() {
            return Err(value);
        }
        let _init = self.init.lock();
        self.value.set(value)
    }

    /// The value, initialized with `f` if the cell is empty. Of concurrent
    /// callers, one runs its `f`; the others park until it is done and
    /// return its value (or, if it panicked, one of them tries next).
    ///
    /// Calling it again on the same cell from inside `f` never returns (the
    /// caller waits for itself), as std's may deadlock.
    pub fn get_or_init(&self, f: impl FnOnce() -> T) -> &T {
        if let Some(v) = self.value.get() {
            return v;
        }
        let _init = self.init.lock();
        // Nobody else writes `value`, and we hold the lock: this never
        // waits in std's lock.
        self.value.get_or_init(f)
    }

    /// The value, if set, consuming the cell.
    pub fn into_inner(self) -> Option<T> {
        self.value.into_inner()
    }

    /// Takes the value out, leaving the cell empty.
    pub fn take(&mut self) -> Option<T> {
        self.value.take()
    }
}

impl<T> Default for OnceLock<T> {
    fn default() -> Self {
        OnceLock::new()
    }
}

impl<T: fmt::Debug> fmt::Debug for OnceLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.get() {
            Some(v) => f.debug_tuple("OnceLock").field(v).finish(),
            None => f.write_str("OnceLock(<uninit>)"),
        }
    }
}

impl<T> From<T> for OnceLock<T> {
    fn from(value: T) -> Self {
        OnceLock {
            value: std::sync::OnceLock::from(value),
            init: Mutex::new(()),
        }
    }
}
