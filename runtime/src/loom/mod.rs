//! The only module that names `std::sync` atomics or `loom`.
//!
//! Everything whose interleavings we model with loom imports its
//! synchronization from here. Normal builds get std's types; building with
//! `RUSTFLAGS="--cfg greenstack_loom"` swaps in loom's, so the same code is
//! explored under every interleaving loom can produce. We use a cfg of our
//! own rather than plain `loom`, because `RUSTFLAGS` reaches every crate in
//! the graph and some dependencies change behaviour under `cfg(loom)`.

#[cfg(not(greenstack_loom))]
mod std;
#[cfg(not(greenstack_loom))]
pub(crate) use self::std::*;

#[cfg(greenstack_loom)]
mod mocked;
#[cfg(greenstack_loom)]
pub(crate) use self::mocked::*;
