//! A fair mutex and reader-writer lock that park coroutines.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::time::Duration;

use super::semaphore::{Semaphore, SemaphoreGuard};
use super::wait::deadline_after;
use crate::cancel::Point;

/// A mutual-exclusion lock that parks the waiting coroutine (or blocks a
/// plain thread), and hands the lock to waiters in arrival order, so no
/// waiter starves.
///
/// Unlike std's, it is not poisoned by a panic while held.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use greenstack_runtime::sync::Mutex;
/// # let rt = greenstack_runtime::Runtime::new()?;
/// let total = rt.block_on(|| {
///     let m = Arc::new(Mutex::new(0));
///     let hs: Vec<_> = (0..10).map(|_| {
///         let m = Arc::clone(&m);
///         greenstack_runtime::spawn(move || *m.lock() += 1)
///     }).collect();
///     hs.into_iter().for_each(|h| h.join().unwrap());
///     let v = *m.lock();
///     v
/// });
/// assert_eq!(total, 10);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Mutex<T: ?Sized> {
    sem: Semaphore,
    data: UnsafeCell<T>,
}

// SAFETY: the semaphore (one permit) grants `&mut T` to one holder at a
// time; the value moves between threads with the lock, so `T: Send`.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}
// SAFETY: as above: shared access only hands out `&mut T` under the permit.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}

/// Holds a [`Mutex`] locked; unlocks on drop. `!Send`, like std's guard.
#[must_use = "the lock is released when the guard is dropped"]
pub struct MutexGuard<'a, T: ?Sized> {
    lock: &'a Mutex<T>,
    permit: Option<SemaphoreGuard<'a>>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing the guard shares `&T` only.
unsafe impl<T: ?Sized + Sync> Sync for MutexGuard<'_, T> {}

impl<T> Mutex<T> {
    /// A new unlocked mutex.
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            sem: Semaphore::new(1),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the mutex, returning the value.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Waits for the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.guard(self.sem.acquire())
    }

    /// Takes the lock if it is free and nobody waits for it.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.sem.try_acquire().map(|p| self.guard(p))
    }

    /// Waits for the lock for at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Option<MutexGuard<'_, T>> {
        self.sem
            .acquire_until(1, Point::new(deadline_after(timeout)))
            .map(|p| self.guard(p))
    }

    /// The value, through a unique borrow: no locking needed.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    fn guard<'a>(&'a self, permit: SemaphoreGuard<'a>) -> MutexGuard<'a, T> {
        MutexGuard {
            lock: self,
            permit: Some(permit),
            _not_send: PhantomData,
        }
    }
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// Unlocks, keeping the reference to the mutex.
    pub(crate) fn unlock(mut self) -> &'a Mutex<T> {
        self.permit.take();
        self.lock
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the mutex's only permit.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the mutex's only permit, uniquely.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_lock() {
            Some(g) => f.debug_struct("Mutex").field("data", &&*g).finish(),
            None => f.debug_struct("Mutex").field("data", &"<locked>").finish(),
        }
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Permits a writer takes: all of them. Readers take one each.
const WRITE: usize = usize::MAX >> 3;

/// A reader-writer lock that parks coroutines. Readers and writers are
/// served in arrival order: a waiting writer holds back later readers, so
/// writers do not starve, and neither do readers.
///
/// # Examples
///
/// ```
/// use greenstack_runtime::sync::RwLock;
/// let l = RwLock::new(5);
/// {
///     let a = l.read();
///     let b = l.read();
///     assert_eq!(*a + *b, 10);
/// }
/// *l.write() += 1;
/// assert_eq!(*l.read(), 6);
/// ```
pub struct RwLock<T: ?Sized> {
    sem: Semaphore,
    data: UnsafeCell<T>,
}

// SAFETY: writers get `&mut T` alone (all permits); readers share `&T`, so
// `T: Sync` is needed for readers on several threads and `T: Send` for the
// value to move with the lock.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}

/// Shared access to an [`RwLock`]'s value.
///
/// Covariant in `T`, as std's is: it holds a pointer to the value, not a
/// reference to the lock (whose `UnsafeCell` would make it invariant), so a
/// guard of `&'static str` can stand where one of `&'a str` is expected.
/// [`MutexGuard`] and [`RwLockWriteGuard`] stay invariant, as std's do
/// (they hand out `&mut T`).
///
/// `!Send`, like std's guard:
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// let l = greenstack_runtime::sync::RwLock::new(1);
/// send(l.read());
/// ```
#[must_use = "the lock is released when the guard is dropped"]
pub struct RwLockReadGuard<'a, T: ?Sized> {
    /// The value; valid for `'a`, shared-only while `_permit` is held.
    data: NonNull<T>,
    /// The read permit, released on drop.
    _permit: SemaphoreGuard<'a>,
    /// `!Send`, like std's guard (`NonNull` already is; said explicitly).
    _not_send: PhantomData<*const ()>,
}

/// Exclusive access to an [`RwLock`]'s value.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
    _permit: SemaphoreGuard<'a>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing a guard shares `&T` only.
unsafe impl<T: ?Sized + Sync> Sync for RwLockReadGuard<'_, T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Sync> Sync for RwLockWriteGuard<'_, T> {}

impl<T> RwLock<T> {
    /// A new unlocked lock.
    pub const fn new(value: T) -> RwLock<T> {
        RwLock {
            sem: Semaphore::new(WRITE),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the lock, returning the value.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Waits for shared access.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.read_guard(self.sem.acquire())
    }

    /// Waits for exclusive access.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        RwLockWriteGuard {
            lock: self,
            _permit: self.sem.acquire_many(WRITE),
            _not_send: PhantomData,
        }
    }

    /// Waits at most `timeout` for shared access.
    pub fn read_timeout(&self, timeout: Duration) -> Option<RwLockReadGuard<'_, T>> {
        self.sem
            .acquire_until(1, Point::new(deadline_after(timeout)))
            .map(|p| self.read_guard(p))
    }

    /// Waits at most `timeout` for exclusive access.
    pub fn write_timeout(&self, timeout: Duration) -> Option<RwLockWriteGuard<'_, T>> {
        let p = self
            .sem
            .acquire_until(WRITE, Point::new(deadline_after(timeout)))?;
        Some(RwLockWriteGuard {
            lock: self,
            _permit: p,
            _not_send: PhantomData,
        })
    }

    /// Shared access if available at once.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        self.sem.try_acquire().map(|p| self.read_guard(p))
    }

    /// Exclusive access if available at once.
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        let p = self.sem.try_acquire_many(WRITE)?;
        Some(RwLockWriteGuard {
            lock: self,
            _permit: p,
            _not_send: PhantomData,
        })
    }

    /// The value, through a unique borrow.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    fn read_guard<'a>(&'a self, permit: SemaphoreGuard<'a>) -> RwLockReadGuard<'a, T> {
        RwLockReadGuard {
            // SAFETY: `UnsafeCell::get` never returns null.
            data: unsafe { NonNull::new_unchecked(self.data.get()) },
            _permit: permit,
            _not_send: PhantomData,
        }
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `data` points into the lock, borrowed for the guard's
        // lifetime, and the read permit excludes writers.
        unsafe { self.data.as_ref() }
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write guard holds every permit.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write guard holds every permit, uniquely.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> Self {
        RwLock::new(T::default())
    }
}

impl<T: ?Sized> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock").finish_non_exhaustive()
    }
}
