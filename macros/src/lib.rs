//! Procedural macros for greenstack: `#[greenstack::main]`, `#[greenstack::test]`
//! and `spawn!`.
//!
//! The macros land together with the scheduler they expand to; until then this
//! crate only reserves the name in the workspace so that the facade's layout is
//! final.
#![warn(missing_docs)]
