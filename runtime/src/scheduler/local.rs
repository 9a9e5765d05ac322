//! `coroutine_local!`: storage per coroutine, which replaces
//! `thread_local!` in coroutine code (many coroutines share one thread, so a
//! thread-local is shared by all of them).
//!
//! Each key gets a process-wide index on first use. A coroutine's values
//! live in a vector in its `Running` entry, boxed so their addresses stay
//! put while the vector grows, and are dropped when the coroutine ends. On a
//! plain thread the same key falls back to a per-thread vector.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Values of one coroutine (or one thread), by key index. The vector is
/// boxed on first use: most coroutines never use a key, and every one of
/// them carries a map (8 bytes instead of 24).
#[derive(Default)]
pub(crate) struct Map(Option<Box<Values>>);

/// The values by key index; each boxed, so its address stays put.
type Values = Vec<Option<Box<dyn Any>>>;

impl Map {
    /// Removes and returns one value (the last set), to drop it outside the
    /// borrow: its destructor may use other keys.
    pub(crate) fn take_one(&mut self) -> Option<Box<dyn Any>> {
        let v = self.0.as_mut()?;
        while let Some(last) = v.pop() {
            if last.is_some() {
                return last;
            }
        }
        None
    }

    fn values(&mut self) -> &mut Values {
        self.0.get_or_insert_with(Box::default)
    }

    fn get(&self, index: usize) -> Option<&dyn Any> {
        self.0.as_ref()?.get(index)?.as_deref()
    }
}

static NEXT_KEY: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static THREAD_VALUES: RefCell<Map> = RefCell::new(Map::default());
}

/// A key for storage per coroutine, declared with
/// [`coroutine_local!`](crate::coroutine_local).
pub struct LocalKey<T: 'static> {
    init: fn() -> T,
    /// Index into the value vectors; 0 until first use.
    index: AtomicUsize,
}

/// The value of a [`LocalKey`] could not be reached: on a plain thread whose
/// thread-locals are being destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessError;

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("coroutine-local value accessed after its storage was destroyed")
    }
}

impl std::error::Error for AccessError {}

impl<T: 'static> LocalKey<T> {
    #[doc(hidden)]
    pub const fn new(init: fn() -> T) -> LocalKey<T> {
        LocalKey {
            init,
            index: AtomicUsize::new(0),
        }
    }

    fn index(&'static self) -> usize {
        let i = self.index.load(Ordering::Acquire);
        if i != 0 {
            return i;
        }
        let fresh = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        match self
            .index
            .compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => fresh,
            Err(won) => won,
        }
    }

    /// Calls `f` with this coroutine's value, initializing it on first use.
    ///
    /// # Panics
    ///
    /// If the value cannot be reached (see [`try_with`](Self::try_with)).
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        self.try_with(f)
            .expect("coroutine-local value accessed after its storage was destroyed")
    }

    /// Calls `f` with this coroutine's value, initializing it on first use.
    ///
    /// # Errors
    ///
    /// On a plain thread whose thread-locals are being destroyed.
    pub fn try_with<R>(&'static self, f: impl FnOnce(&T) -> R) -> Result<R, AccessError> {
        let index = self.index();
        // `code_running`: a future `spawn_future` polls on the worker's
        // stack still sees its own coroutine's values.
        let value: *const T = match super::worker::code_running() {
            Some(r) => self.get_or_init(&r.locals, index),
            None => THREAD_VALUES
                .try_with(|m| self.get_or_init(m, index))
                .map_err(|_| AccessError)?,
        };
        // SAFETY: the value is boxed in a map owned by the running coroutine
        // (or this thread), never moved, and only dropped when the coroutine
        // ends (or the thread exits) — after `f` returns, since `f` runs on
        // that coroutine (or thread). Only shared references are handed out.
        Ok(f(unsafe { &*value }))
    }

    fn get_or_init(&'static self, map: &RefCell<Map>, index: usize) -> *const T {
        if let Some(v) = Self::lookup(map, index) {
            return v;
        }
        // Initialize without holding the borrow: `init` may use other keys.
        let fresh: Box<dyn Any> = Box::new((self.init)());
        let mut m = map.borrow_mut();
        let values = m.values();
        if values.len() <= index {
            values.resize_with(index + 1, || None);
        }
        let slot = values[index].get_or_insert(fresh);
        slot.downcast_ref::<T>()
            .expect("a key's values all have its type") as *const T
    }

    fn lookup(map: &RefCell<Map>, index: usize) -> Option<*const T> {
        let m = map.borrow();
        let v = m.get(index)?;
        Some(
            v.downcast_ref::<T>()
                .expect("a key's values all have its type") as *const T,
        )
    }
}

impl<T: 'static> fmt::Debug for LocalKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey").finish_non_exhaustive()
    }
}

/// Declares storage per coroutine, as `thread_local!` declares storage per
/// thread.
///
/// # Examples
///
/// ```
/// use std::cell::Cell;
/// greenstack_runtime::coroutine_local! {
///     static REQUESTS: Cell<u32> = Cell::new(0);
/// }
/// # let rt = greenstack_runtime::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| {
///     REQUESTS.with(|r| r.set(r.get() + 1));
///     let other = greenstack_runtime::spawn(|| REQUESTS.with(Cell::get));
///     assert_eq!(other.join().unwrap(), 0); // its own value
///     assert_eq!(REQUESTS.with(Cell::get), 1);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[macro_export]
macro_rules! coroutine_local {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr; $($rest:tt)*) => {
        $(#[$attr])* $vis static $name: $crate::LocalKey<$t> = $crate::LocalKey::new({
            fn __init() -> $t {
                $init
            }
            __init
        });
        $crate::coroutine_local!($($rest)*);
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr) => {
        $crate::coroutine_local!($(#[$attr])* $vis static $name: $t = $init;);
    };
}
