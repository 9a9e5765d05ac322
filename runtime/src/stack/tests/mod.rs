//! Model tests of the stack arena's synchronization, and unit tests of what
//! the integration tests cannot drive by hand.

#[cfg(not(greenstack_loom))]
mod deferred_trim;
#[cfg(not(greenstack_loom))]
mod identity;
#[cfg(greenstack_loom)]
mod loom_arena;
#[cfg(greenstack_loom)]
mod loom_class;
