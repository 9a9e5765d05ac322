//! Procedural macros for greenstack, re-exported by the `greenstack` crate:
//! [`macro@main`], [`macro@test`], [`spawn!`] and [`select!`].
//!
//! The generated code names the facade by its absolute path
//! (`::greenstack::…`), so it works in any crate that depends on
//! `greenstack`. A misuse is a compile error pointing at the offending token
//! and listing the options accepted.
#![warn(missing_docs)]

mod entry;
mod select;

use proc_macro::TokenStream;

/// Runs `fn main`'s body as a coroutine on a worker of a greenstack
/// runtime (`Runtime::block_on_worker`), so spawning and joining from it
/// cost what they cost in any coroutine.
///
/// `main` may return `()`, a `Result` or any other `Termination`, as
/// usual; the value is reported on the worker, as std reports `main`'s (an
/// `Err` prints "Error: …" and the exit status is 1), and the generated
/// `main` returns the `ExitCode`. The body captures nothing, so nothing in
/// it need be `Send`. It runs on a worker thread: its thread-locals are
/// that worker's, not the main thread's. Options:
///
/// - `workers = N`: worker threads (default: the available parallelism);
/// - `stack_size = EXPR`: the default stack reserve per coroutine, in bytes.
///
/// ```ignore
/// #[greenstack::main(workers = 2, stack_size = 1 << 20)]
/// fn main() -> std::io::Result<()> {
///     let h = greenstack::spawn!(|| 6 * 7);
///     assert_eq!(h.join().unwrap(), 42);
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::entry(args.into(), item.into(), entry::Kind::Main).into()
}

/// Runs a test as the root coroutine of its own greenstack runtime, with
/// the same options as [`macro@main`].
///
/// ```ignore
/// #[greenstack::test(workers = 1)]
/// fn spawns_and_joins() {
///     assert_eq!(greenstack::spawn!(|| 1 + 1).join().unwrap(), 2);
/// }
/// ```
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::entry(args.into(), item.into(), entry::Kind::Test).into()
}

/// Spawns a coroutine, as `greenstack::spawn` does, with optional settings
/// before the closure: `name = EXPR` and `stack_size = EXPR`.
///
/// Expands to `greenstack::Builder`, and returns the `JoinHandle`; like
/// `greenstack::spawn`, it panics with the error's message if no stack can
/// be had.
///
/// ```ignore
/// let h = greenstack::spawn!(name = "conn", stack_size = 256 * 1024, move || handle(conn));
/// ```
#[proc_macro]
pub fn spawn(input: TokenStream) -> TokenStream {
    entry::spawn(input.into()).into()
}

/// Waits for the first ready of several channel operations, in
/// crossbeam-channel's `select!` shape, over
/// `greenstack::sync::select::Select` (Go's semantics: a random pick among
/// the ready cases).
///
/// Cases: `recv(rx) -> v => BODY` (`v` is `Result<T, RecvError>`),
/// `send(tx, value) -> res => BODY` (`value` is evaluated only if the case
/// is picked; `res` is `Result<(), SendError<T>>`), and at most one
/// `default => BODY` (nothing ready now) or `default(timeout) => BODY`
/// (nothing ready within `timeout`). Each receiver and sender expression
/// is evaluated once.
///
/// ```ignore
/// greenstack::select! {
///     recv(jobs) -> job => handle(job?),
///     recv(quit) -> _ => return Ok(()),
///     default(Duration::from_secs(1)) => heartbeat(),
/// }
/// ```
#[proc_macro]
pub fn select(input: TokenStream) -> TokenStream {
    select::select(input.into()).into()
}
