//! Model tests of the stack arena's synchronization.

#[cfg(greenstack_loom)]
mod loom_arena;
