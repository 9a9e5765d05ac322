// `MutexGuard` and `RwLockWriteGuard` are invariant in `T`, as std's are:
// they hand out `&mut T`, so a guard of `&'static str` must not pass for
// one of `&'a str` (through it, a short-lived `&'a str` could be stored
// where `'static` is promised). `RwLockReadGuard` is covariant, as std's
// (tests/sync_locks.rs, `read_guard_covariance`).
use greenstack::sync::{MutexGuard, RwLockWriteGuard};

fn shorten_mutex_guard<'a, 'g>(g: MutexGuard<'g, &'static str>) -> MutexGuard<'g, &'a str> {
    g
}

fn shorten_write_guard<'a, 'g>(
    g: RwLockWriteGuard<'g, &'static str>,
) -> RwLockWriteGuard<'g, &'a str> {
    g
}

fn main() {}
