//! Model tests of the scheduler's synchronization.

#[cfg(greenstack_loom)]
mod loom_idle;
#[cfg(greenstack_loom)]
mod loom_join;
#[cfg(greenstack_loom)]
mod loom_park;
#[cfg(greenstack_loom)]
mod loom_refcount;
