//! Model tests of the sync primitives' synchronization (built only with
//! `--cfg greenstack_loom`: see `lib.rs`).

mod loom_futex_queue;
mod loom_oneshot;
mod loom_wait;
