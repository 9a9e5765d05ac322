//! Blocking calls of std and other crates that park the coroutine, not the
//! worker.
//!
//! # Design
//!
//! The runtime defines the blocking libc functions itself (`read`, `recv`,
//! `connect`, `poll`, `nanosleep`, …), with C linkage and their
//! libc names. The final binary links these definitions before libc's, so
//! every call from Rust code (std included) and from C code linked into
//! the binary reaches them. Each one first reads one thread-local flag,
//! `active`: set only while a worker runs a coroutine of a runtime with
//! hooks on, and cleared around the runtime's own code that must not park.
//! Off the flag (plain threads, a `block_on` root, the worker's own loop,
//! signal handlers of such threads), the function is the system call and
//! nothing more: no allocation, no lock, async-signal-safe.
//!
//! Inside a coroutine the call is made so that it cannot block, and if it
//! would, the coroutine parks until the fd is ready and tries again:
//!
//! - **Sockets**: `recv`/`send` with `MSG_DONTWAIT`, which is non-blocking
//!   whatever the fd's flags. The fd itself is never switched to
//!   non-blocking, so its flags stay the user's, and a child process that
//!   inherits it sees what it would have. `connect` on a blocking socket
//!   is the exception: it sets `O_NONBLOCK` for the call and restores it.
//! - **Pipes, FIFOs, terminals**: `poll` with a zero timeout first, then
//!   the call.
//! - **Regular files**: `read`, `readv`, `pread`, `preadv`, `write`,
//!   `writev`, `pwrite` and `pwritev` (and `preadv2`/`pwritev2`, keeping
//!   the caller's `RWF_HIPRI`, `RWF_DSYNC`, `RWF_SYNC` and `RWF_APPEND`;
//!   a caller's own `RWF_NOWAIT` gets the plain call) are tried with
//!   `RWF_NOWAIT` (`preadv2`/`pwritev2`): what the page cache can do
//!   at once is done at once, the rest goes to the blocking pool (below).
//!   Measured on ext4 (Linux 6.18), a cached 4 KiB `std::fs::read` costs
//!   1.5x the plain call (`benches/hook_file_read.rs`). A file system
//!   without the non-blocking form (`EOPNOTSUPP`: ext4 and tmpfs refuse
//!   it for buffered writes, tmpfs for reads too) gets the plain call,
//!   and the fd is remembered so it is not asked again.
//!
//! When the attempt reports `EAGAIN`, the fd's flags decide: if the user
//! made it non-blocking (`O_NONBLOCK` by `fcntl`, `ioctl(FIONBIO)` or
//! `SOCK_NONBLOCK`), `EAGAIN` is the answer, as without the runtime.
//! Otherwise the coroutine parks until the fd is ready (or the socket's
//! `SO_RCVTIMEO`/`SO_SNDTIMEO` passes, after which the call fails with
//! `EAGAIN` as Linux's does) and tries again. Each worker keeps an
//! edge-triggered registration of the fds its coroutines waited on
//! (`FdWait`), tagged with the fd's generation, which `close`, `dup2`,
//! `dup3` and every hook that returns a new fd bump: a stale registration
//! is replaced, not trusted. An fd the poller refuses (already
//! registered there by `greenstack::net`, say) is waited on through a duplicate registered for that wait only (as is a child's
//! pidfd).
//!
//! Both answers (non-blocking? a timeout?) are cached per fd, so a wait
//! asks the kernel nothing: the hooks of `fcntl` (`F_SETFL`), `ioctl`
//! (`FIONBIO`) and `setsockopt` (the two timeouts) invalidate the cache,
//! and `socket`, `accept`, `dup`, `pipe`, `open`, `close`, `dup2` and
//! `dup3` forget what they replace. A change the hooks cannot see (a raw
//! `syscall`, another process sharing the socket) is not seen: the fd
//! keeps its old behaviour until one of those calls.
//!
//! Sleeps (`nanosleep`, `clock_nanosleep`, `usleep`, `sleep`) park on the
//! worker's timers. `poll` with a timeout polls once without waiting, then
//! parks until one of its fds is ready or the timeout passes; `ppoll`,
//! `select` and `pselect` (without a signal mask) go the same way, and so
//! do `epoll_wait`, `epoll_pwait` and `epoll_pwait2` (without a signal
//! mask) on a crate's own epoll fd (mio's
//! `Poll`, say; not a tokio runtime's, below): the coroutine parks until
//! that fd is readable, which an epoll fd is while it has events to
//! report.
//!
//! Name resolution (`getaddrinfo`, `getnameinfo`, `gethostbyname`,
//! `gethostbyname2`, `gethostbyname_r`; `errno` and `h_errno` carried back),
//! opening a FIFO, a regular-file read the page cache cannot answer at
//! once (`preadv2` with `RWF_NOWAIT` tells) and a write it cannot take,
//! `fsync`, `fdatasync`, `copy_file_range` (std's `fs::copy`), `splice`
//! (std's `io::copy` from or to a pipe; it first parks until its input
//! is readable), `sendfile` (it first parks until its output is
//! writable), a file lock that is not free at once (`flock`,
//! so std's `File::lock`, and `fcntl`'s `F_SETLKW`/`F_OFD_SETLKW`, tried
//! without waiting first), joining a plain thread that is still running
//! (`pthread_join`, so std's `JoinHandle::join`), and waiting for a
//! child other than through its pidfd run on the blocking pool while the
//! coroutine parks. `wait4`/`waitpid` of one child park on its pidfd
//! (where the kernel has none, or a seccomp filter refuses `pidfd_open`:
//! in naps of 1 ms doubling to 50 ms between looks with `WNOHANG`).
//!
//! A contended std `Mutex` parks the coroutine too: std makes its futex
//! waits through libc's `syscall` function, which `futex` replaces, and a
//! `Mutex`'s wait in a coroutine (known by its call site in std) queues
//! there and parks until a wake of the same word, from any thread, finds
//! it. std's other locks (`RwLock`, `Condvar`, `Once`, `OnceLock`,
//! `LazyLock`) do so only with [`RuntimeBuilder::hook_std_locks`], an
//! `unsafe` opt-in: crates build per-thread parkers and latches on
//! condition variables, which every coroutine of the worker shares, and
//! two coroutines parked inside one break it (tokio's `blocking_recv`
//! panicked; rayon's `install` crashed). Waits on the worker thread's own
//! `thread::park` word (std's channels) and on locks kept inside a
//! `thread_local!` are always left to the kernel (see `futex`'s docs).
//!
//! Nor does a call park inside a tokio runtime's context other than the
//! worker's own (a tokio `block_on` driven in the coroutine, as sync
//! facades over async crates do; a `Handle::enter` guard): tokio keeps
//! that state per thread, and another coroutine of the worker entering
//! tokio meanwhile would make tokio panic. The call blocks the worker
//! there, as without the runtime (`inside_foreign_tokio`).
//!
//! A coroutine never parks from a hook while it unwinds from a panic, nor
//! inside a signal handler (the interrupted code may be anywhere, inside
//! malloc or the runtime): the call then blocks the worker as it would
//! have without the runtime. The hooks know a handler runs because every
//! handler installed through this binary's `sigaction`, `signal` or
//! `bsd_signal` is wrapped in a trampoline that counts it (and `sigaction`
//! reports the user's handler back, never the trampoline); this costs no
//! system call per wait, and sees handlers that leave the signal mask
//! alone (`SA_NODEFER`, an empty mask). A handler installed by a raw
//! system call or by a library loaded at run time is not wrapped; neither
//! is one that leaves by `longjmp` counted out (the hooks on that thread
//! then never park again, which is safe).
//!
//! # Not covered (yet)
//!
//! Regular-file I/O on a file system without `RWF_NOWAIT` (the plain
//! call: fast while the page cache takes it, blocking the worker when the
//! kernel throttles dirty pages or the disk is slow), calls with a
//! signal mask (`ppoll`, `pselect`, `epoll_pwait`, `epoll_pwait2`: the mask
//! is the worker thread's, shared by its coroutines), `sigtimedwait`,
//! std's locks other than `Mutex` without `hook_std_locks`,
//! `thread::park` (so std's channels' blocking `recv`) and other crates'
//! futex waits (`parking_lot`'s locks) still block the worker: the
//! watchdog reports a worker stalled in them, naming the call. So do
//! writes to standard output and error (fds 1 and 2), on purpose: std's
//! `Stdout` and `Stderr` write under a reentrant lock that the OS thread
//! owns, and a coroutine parked inside one would let the next coroutine
//! of its worker to print re-enter it and panic ("RefCell already
//! borrowed"). Calls made by shared libraries loaded at run time resolve
//! to libc, not to these, and raw system calls (every call of a crate
//! built on `rustix`'s default backend) never reach them. The hooks are
//! built on x86-64 Linux only; elsewhere blocking calls block the worker.
//!
//! The switches: [`RuntimeBuilder::hook_blocking_calls`] and the
//! environment variable [`HOOKS_ENV`] (`0` or `off` turns hooks off for
//! every runtime of the process).
//!
//! [`RuntimeBuilder::hook_blocking_calls`]: crate::RuntimeBuilder::hook_blocking_calls
//! [`RuntimeBuilder::hook_std_locks`]: crate::RuntimeBuilder::hook_std_locks

/// libc's own definition of a function these hooks replace, looked up once
/// with `dlsym(RTLD_NEXT)` (the next definition after this binary's).
macro_rules! next_fn {
    ($name:literal, $ty:ty) => {{
        static FN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut p = FN.load(std::sync::atomic::Ordering::Relaxed);
        if p == 0 {
            // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds
            // libc's definition, not ours.
            p = unsafe {
                libc::dlsym(libc::RTLD_NEXT, concat!($name, "\0").as_ptr().cast()) as usize
            };
            FN.store(p, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: `p` is null or the address of libc's function of this
        // exact signature (`$ty` is its C prototype).
        (p != 0).then(|| unsafe { std::mem::transmute::<usize, $ty>(p) })
    }};
}

#[cfg(target_arch = "x86_64")]
mod futex;
#[cfg(target_arch = "x86_64")]
mod sys;

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variable that turns the hooks off for every runtime of the
/// process when set to `0`, `off` or `false`.
pub const HOOKS_ENV: &str = "GREENSTACK_HOOKS";

thread_local! {
    /// Whether blocking calls on this thread park the running coroutine.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Signal handlers running on this thread (see `sys::trampoline`).
    static IN_HANDLER: Cell<u32> = const { Cell::new(0) };
}

/// A wrapped signal handler starts on this thread. Async-signal-safe: a
/// const thread-local without a destructor.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn enter_handler() {
    IN_HANDLER.with(|c| c.set(c.get().wrapping_add(1)));
}

/// The wrapped signal handler returns.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn leave_handler() {
    IN_HANDLER.with(|c| c.set(c.get().saturating_sub(1)));
}

/// Runs `f`, runtime code that must not switch coroutines midway (a wait
/// for one of its own std locks, a push onto a worker's deque), with the
/// futex hook's take-over off on this thread: a std wait inside it, the
/// runtime's own or a library's it calls (crossbeam-epoch's first-use
/// `OnceLock`, say), is the kernel's (see `futex`).
#[inline]
pub(crate) fn internal<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        futex::internal(f)
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

/// Whether hooked calls on this thread park the running coroutine.
#[inline(always)]
pub(crate) fn active() -> bool {
    ACTIVE.with(Cell::get)
}

/// Sets the flag for the coroutine a worker is about to resume (`on`), or
/// clears it when the coroutine has suspended.
#[inline]
pub(crate) fn set_active(on: bool) {
    ACTIVE.with(|c| c.set(on));
}

/// Runs `f` with the hooks off on this thread: for the runtime's own calls
/// that must not park (waking another worker's poller, say).
#[inline]
pub(crate) fn bypass<R>(f: impl FnOnce() -> R) -> R {
    let was = ACTIVE.with(|c| c.replace(false));
    let r = f();
    if was {
        set_active(true);
    }
    r
}

/// In a child process forked from a coroutine, the forking thread's flag
/// would still be set: the child has no runtime to park on, so its calls
/// (std's between `fork` and `exec`) must be the plain system calls. The
/// parent's coroutines queued on futex words do not exist in the child
/// either: their queues are emptied (see `futex::forget_after_fork`).
extern "C" fn clear_after_fork() {
    // A const-initialized thread-local without a destructor: a plain TLS
    // write, safe in a forked child.
    ACTIVE.with(|c| c.set(false));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: this is the child handler, run before the child can start a
    // thread.
    unsafe {
        futex::forget_after_fork()
    };
}

/// Called by each worker thread as it starts: sets what `futex` takes
/// over on it (std `Mutex` waits with `hooks`, its runtime's hooks; every
/// std lock and condvar wait with `std_locks` too, its `hook_std_locks`),
/// and (once per process) makes forked children start with the hooks off.
pub(crate) fn record_base_mask(hooks: bool, std_locks: bool) {
    #[cfg(target_arch = "x86_64")]
    futex::enable_for_thread(hooks, std_locks);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (hooks, std_locks);
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a child handler that only writes a thread-local
        // and resets the futex queues, without allocating or locking.
        unsafe { libc::pthread_atfork(None, None, Some(clear_after_fork)) };
    });
}

/// Whether the hooks are on for runtimes built now: the environment
/// switch, read once.
pub(crate) fn env_enabled() -> bool {
    static ENV: once_cell::sync::OnceCell<bool> = once_cell::sync::OnceCell::new();
    *ENV.get_or_init(|| {
        !matches!(
            std::env::var(HOOKS_ENV).as_deref().map(str::trim),
            Ok("0" | "off" | "false" | "OFF" | "FALSE")
        )
    })
}

/// A call of a coroutine being cancelled is to fail with `ECANCELED`:
/// counts it (a coroutine that keeps making such calls is abandoned, see
/// `worker::hook_call_cancelled`).
pub(crate) fn cancelled() -> Wait {
    crate::scheduler::worker::hook_call_cancelled();
    Wait::Cancelled(libc::ECANCELED)
}

/// Whether `point` ends the call now (see `crate::cancel`): its own
/// deadline (`Wait::Again`), or the coroutine's cancellation or an
/// enclosing timeout (`Wait::Cancelled`). A call that fails that way
/// first yields, if it may: code that retries every error must not hold
/// its worker.
pub(crate) fn stop(point: &crate::cancel::Point) -> Option<Wait> {
    match point.ended()? {
        crate::cancel::End::Deadline => Some(Wait::Again),
        end => {
            if parkable() {
                park(crate::scheduler::worker::yield_current);
            }
            Some(Wait::Cancelled(crate::cancel::errno(end)))
        }
    }
}

/// Whether the running coroutine is being cancelled at shutdown.
pub(crate) fn cancelling() -> bool {
    crate::scheduler::worker::current_cancelling()
}

/// Whether the running coroutine may park here: not while unwinding from
/// a panic (parking then is refused), not while it is being cancelled, and
/// not inside a signal handler (one installed through this binary's
/// `sigaction` or `signal`, which count it: see `sys::trampoline`).
/// Called only on the slow path, before a park.
pub(crate) fn parkable() -> bool {
    !std::thread::panicking()
        && !cancelling()
        && IN_HANDLER.with(Cell::get) == 0
        && !inside_foreign_tokio()
}

/// Whether a tokio runtime's context other than the worker's own is
/// current on this thread: inside a tokio runtime's `block_on` (a sync
/// facade over an async crate, as the `postgres` crate is), or under a
/// `Handle::enter` guard. tokio keeps that state per thread, and every
/// coroutine of the worker shares the thread: were the call to park,
/// another coroutine entering a tokio runtime meanwhile would find the
/// thread inside one already, and tokio panics ("Cannot start a runtime
/// from within a runtime"), or its guards would leave in the wrong order.
/// So the call blocks the worker instead, as it would without the runtime.
/// Asked last, on the slow path only (not async-signal-safe: tokio's
/// thread-local may allocate on first use).
fn inside_foreign_tokio() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| Some(h.id()) != crate::future::worker_tokio_id())
}

/// What kind of file an fd is, as far as the hooks care.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// A socket: `MSG_DONTWAIT` attempts.
    Socket,
    /// A pipe, FIFO, terminal or other pollable file: poll, then call.
    Pollable,
    /// A regular file or block device: passed through.
    File,
}

/// Cached kinds of the first `KIND_CACHE` fds: 0 unknown, else `Kind` + 1.
/// Reset by the `close`/`dup2`/`dup3` hooks and by every hook that returns
/// a new fd; a stale entry is corrected by the call that trips on it (a
/// socket call answering `ENOTSOCK`).
const KIND_CACHE: usize = 1 << 16;
static KINDS: [AtomicU8; KIND_CACHE] = [const { AtomicU8::new(0) }; KIND_CACHE];

/// Generations of the first `KIND_CACHE` fds: bumped whenever the fd is
/// closed, replaced or handed out anew, so a worker's kept registration of
/// an fd (`driver::hook_registration`) knows it is stale.
static GENS: [AtomicU32; KIND_CACHE] = [const { AtomicU32::new(0) }; KIND_CACHE];

/// Cached answers of the slow path's questions about the first
/// `KIND_CACHE` fds (is it the user's non-blocking fd, has it a receive or
/// send timeout), each valid while its epoch is [`FLAGS_EPOCH`]'s: bits
/// 0-7 are `FL_*` flags, the rest the epoch they were read at.
///
/// Why an epoch rather than per-fd invalidation: `O_NONBLOCK` belongs to
/// the open file description and the timeouts to the socket, both shared
/// by every duplicate of the fd, so a change through one fd must reach
/// the answers cached for all of them. The hooks of `fcntl(F_SETFL)`,
/// `ioctl(FIONBIO)` and `setsockopt` of a timeout bump the epoch (rare
/// calls: set-up, not the data path). A change the hooks cannot see (a
/// raw system call, another process sharing the description) is not
/// seen: documented in the module docs.
static FLAGS: [AtomicU64; KIND_CACHE] = [const { AtomicU64::new(0) }; KIND_CACHE];

/// The epoch of [`FLAGS`]' valid entries; starts at 1, so a zeroed entry
/// is never valid.
static FLAGS_EPOCH: AtomicU64 = AtomicU64::new(1);

/// `O_NONBLOCK` is known (`FL_NB` holds it).
const FL_NB_KNOWN: u64 = 1;
/// The fd's open file description has `O_NONBLOCK`.
const FL_NB: u64 = 2;
/// `SO_RCVTIMEO` is known to be zero (no receive timeout).
const FL_NO_RCVTIMEO: u64 = 4;
/// `SO_SNDTIMEO` is known to be zero (no send timeout).
const FL_NO_SNDTIMEO: u64 = 8;

/// The fd's file system refuses `RWF_NOWAIT` reads (see `sys::file_io`).
pub(crate) const FL_NO_NOWAIT_READ: u64 = 16;
/// The fd's file system refuses `RWF_NOWAIT` writes.
pub(crate) const FL_NO_NOWAIT_WRITE: u64 = 32;

/// Whether `fd`'s cached flags (of this epoch) have `bit`.
pub(crate) fn fd_flag(fd: RawFd, bit: u64) -> bool {
    cached_flags(fd).is_some_and(|f| f & bit != 0)
}

/// Caches `bit` for `fd` (learnt just now).
pub(crate) fn set_fd_flag(fd: RawFd, bit: u64) {
    cache_flags(fd, FLAGS_EPOCH.load(Ordering::Acquire), bit);
}

/// Invalidates every cached flag: an fd's `O_NONBLOCK` or a socket's
/// timeout may have changed (called after the change is made).
#[inline]
pub(crate) fn flags_changed() {
    FLAGS_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// `fd`'s cached flags, if valid (in the current epoch).
fn cached_flags(fd: RawFd) -> Option<u64> {
    let slot = usize::try_from(fd).ok().and_then(|i| FLAGS.get(i))?;
    let v = slot.load(Ordering::Acquire);
    (v >> 8 == FLAGS_EPOCH.load(Ordering::Acquire)).then_some(v & 0xff)
}

/// Adds `bits` to `fd`'s cached flags, read in `epoch` (loaded before the
/// kernel was asked: a change after that bumped the epoch, so what is
/// stored here is already invalid then).
fn cache_flags(fd: RawFd, epoch: u64, bits: u64) {
    let Some(slot) = usize::try_from(fd).ok().and_then(|i| FLAGS.get(i)) else {
        return;
    };
    let cur = slot.load(Ordering::Acquire);
    let keep = if cur >> 8 == epoch { cur & 0xff } else { 0 };
    // A lost race with another thread's update of the same fd costs only
    // a later re-read: a compare-exchange is not worth it.
    slot.store((epoch << 8) | keep | bits, Ordering::Release);
}

/// Forgets what `fd` was (it was closed, replaced or is new).
#[inline]
pub(crate) fn forget_fd(fd: RawFd) {
    if let Ok(i) = usize::try_from(fd) {
        if let (Some(k), Some(g), Some(f)) = (KINDS.get(i), GENS.get(i), FLAGS.get(i)) {
            k.store(0, Ordering::Relaxed);
            f.store(0, Ordering::Release);
            g.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `fd`'s generation, if it is within the caches.
fn generation(fd: RawFd) -> Option<u32> {
    let i = usize::try_from(fd).ok()?;
    GENS.get(i).map(|g| g.load(Ordering::Relaxed))
}

/// Records `fd`'s kind.
pub(crate) fn set_kind(fd: RawFd, kind: Kind) {
    if let Some(k) = usize::try_from(fd).ok().and_then(|i| KINDS.get(i)) {
        k.store(kind as u8 + 1, Ordering::Relaxed);
    }
}

/// `fd`'s kind, from the cache or `fstat`; `None` if `fstat` fails (a bad
/// fd: the caller makes the call and lets it fail as it would).
pub(crate) fn kind(fd: RawFd) -> Option<Kind> {
    let slot = usize::try_from(fd).ok().and_then(|i| KINDS.get(i));
    match slot.map(|k| k.load(Ordering::Relaxed)) {
        Some(1) => return Some(Kind::Socket),
        Some(2) => return Some(Kind::Pollable),
        Some(3) => return Some(Kind::File),
        _ => {}
    }
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a bad fd just fails.
    if unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) } != 0 {
        return None;
    }
    let k = match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFREG | libc::S_IFBLK | libc::S_IFDIR => Kind::File,
        _ => Kind::Pollable,
    };
    set_kind(fd, k);
    Some(k)
}

/// Whether the user made `fd` non-blocking (its open file description has
/// `O_NONBLOCK`): then `EAGAIN` is what the caller expects back. Cached
/// (see [`FLAGS`]).
pub(crate) fn user_nonblocking(fd: RawFd) -> bool {
    if let Some(f) = cached_flags(fd) {
        if f & FL_NB_KNOWN != 0 {
            return f & FL_NB != 0;
        }
    }
    let epoch = FLAGS_EPOCH.load(Ordering::Acquire);
    // SAFETY: F_GETFL reads flags; a bad fd returns -1.
    let fl = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) };
    if fl < 0 {
        return true;
    }
    let nb = (fl as libc::c_int & libc::O_NONBLOCK) != 0;
    cache_flags(fd, epoch, FL_NB_KNOWN | if nb { FL_NB } else { 0 });
    nb
}

/// The direction a call waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

/// The socket's `SO_RCVTIMEO` (read) or `SO_SNDTIMEO` (write) as a
/// deadline from now; `None` for no timeout or a non-socket. A timeout
/// known to be zero is cached (see [`FLAGS`]); a set one is read each
/// time, as the deadline needs its value.
pub(crate) fn socket_deadline(fd: RawFd, dir: Dir) -> Option<Instant> {
    let (opt, none) = match dir {
        Dir::Read => (libc::SO_RCVTIMEO, FL_NO_RCVTIMEO),
        Dir::Write => (libc::SO_SNDTIMEO, FL_NO_SNDTIMEO),
    };
    if cached_flags(fd).is_some_and(|f| f & none != 0) {
        return None;
    }
    let epoch = FLAGS_EPOCH.load(Ordering::Acquire);
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `tv`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut tv as *mut libc::timeval,
            &mut len as *mut libc::socklen_t,
        )
    };
    if rc != 0 {
        return None;
    }
    if tv.tv_sec == 0 && tv.tv_usec == 0 {
        cache_flags(fd, epoch, none);
        return None;
    }
    let d = Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64);
    Instant::now().checked_add(d)
}

/// What the slow path decided after an attempt reported `EAGAIN`.
pub(crate) enum Wait {
    /// Ready (or woken): try the call again.
    Retry,
    /// Return `EAGAIN` to the caller: the fd is the user's non-blocking
    /// one, or its timeout passed.
    Again,
    /// Parking is not possible here: make the blocking call.
    Block,
    /// Fail the call with this errno: `ECANCELED` when the coroutine is
    /// being cancelled (by its runtime's shutdown, so its code returns to
    /// where the cancellation can unwind it instead of blocking its
    /// worker; or by `JoinHandle::cancel`), `ETIMEDOUT` when an enclosing
    /// `time::timeout` expired.
    Cancelled(libc::c_int),
}

/// One hooked call's waits on its fd, across its attempts.
///
/// Protocol (edge-triggered readiness, as `net`'s): the first wait looks
/// up the worker's kept registration of the fd (a fresh one: the poller
/// reports the fd's present state at its next poll) and parks unless its
/// readiness bit is set; from then on the bit is cleared before every
/// attempt ([`before_attempt`](Self::before_attempt)). The bit is set only
/// by this worker's poller, which does not run while the coroutine does,
/// so no edge between an attempt and the park is lost; a bit left set by
/// an edge whose data an earlier call consumed costs one more attempt.
pub(crate) struct FdWait {
    fd: RawFd,
    dir: Dir,
    /// Whether the user's `O_NONBLOCK` decides (false where the hook set
    /// it itself: connect).
    check_user: bool,
    /// Whether the fd is a socket (whose `SO_RCVTIMEO`/`SO_SNDTIMEO` is
    /// the park's timeout).
    socket: bool,
    /// The deadline (the socket's timeout, bounded by an enclosing
    /// `time::timeout`), once read (on the first wait).
    point: Option<crate::cancel::Point>,
    /// The kept registration's state, once looked up.
    state: Option<Arc<crate::scheduler::driver::IoState>>,
    /// Whether the once-per-call checks (the user's `O_NONBLOCK`, not in
    /// a signal handler) passed: neither changes within one call.
    checked: bool,
}

impl FdWait {
    pub(crate) fn new(fd: RawFd, dir: Dir, socket: bool, check_user: bool) -> FdWait {
        FdWait {
            fd,
            dir,
            check_user,
            socket,
            point: None,
            state: None,
            checked: false,
        }
    }

    fn bit(&self) -> u8 {
        match self.dir {
            Dir::Read => crate::scheduler::driver::READABLE,
            Dir::Write => crate::scheduler::driver::WRITABLE,
        }
    }

    /// Call before every attempt.
    #[inline]
    pub(crate) fn before_attempt(&self) {
        if let Some(s) = &self.state {
            s.clear(self.bit());
        }
    }

    /// After an attempt reported `EAGAIN` (or found the fd not ready):
    /// decides, and parks until the fd is ready or the deadline passes.
    pub(crate) fn wait(&mut self) -> Wait {
        if !self.checked && self.check_user && user_nonblocking(self.fd) {
            return Wait::Again;
        }
        let fd = self.fd;
        let (socket, dir) = (self.socket, self.dir);
        let point = *self.point.get_or_insert_with(|| {
            crate::cancel::Point::new(if socket {
                socket_deadline(fd, dir)
            } else {
                None
            })
        });
        if cancelling() {
            return cancelled();
        }
        if let Some(w) = stop(&point) {
            return w;
        }
        let deadline = point.deadline();
        if !self.checked && !parkable() {
            return Wait::Block;
        }
        self.checked = true;
        if self.state.is_none() {
            let reg = generation(fd)
                .map(|g| bypass(|| crate::scheduler::driver::hook_registration(fd, g)));
            match reg {
                Some(Ok((state, _fresh))) => {
                    // Fresh or kept, its readiness bit can be trusted: only
                    // this worker's poller sets it, and that does not run
                    // while this coroutine does, so an edge after the
                    // attempt is still to come, and one before it either
                    // gave the attempt its data or left the bit set (then
                    // the wait below returns at once and the call retries).
                    self.state = Some(state);
                }
                _ => {
                    // No registration to keep: wait on a duplicate.
                    return match park(|| {
                        crate::scheduler::driver::park_on_fd(fd, dir == Dir::Write, deadline)
                    }) {
                        Ok(()) => Wait::Retry,
                        Err(_) => Wait::Block,
                    };
                }
            }
        }
        let bit = self.bit();
        if let Some(state) = &self.state {
            park(|| crate::scheduler::driver::park_on_state(state, bit, deadline));
        }
        Wait::Retry
    }
}

/// A wait on a one-off fd (a child's pidfd): parks on a duplicate
/// registered for this wait only. `check_user` as in [`FdWait`].
pub(crate) fn wait_fd(fd: RawFd, dir: Dir, deadline: Option<Instant>, check_user: bool) -> Wait {
    if check_user && user_nonblocking(fd) {
        return Wait::Again;
    }
    if cancelling() {
        return cancelled();
    }
    let point = crate::cancel::Point::new(deadline);
    if let Some(w) = stop(&point) {
        return w;
    }
    if !parkable() {
        return Wait::Block;
    }
    let deadline = point.deadline();
    match park(|| crate::scheduler::driver::park_on_fd(fd, dir == Dir::Write, deadline)) {
        Ok(()) => Wait::Retry,
        Err(_) => Wait::Block,
    }
}

/// A cancellable pause of `d` between looks at something with no fd to
/// wait on (a child, where the kernel has no pidfd): `Retry` once it is
/// over (or cut short by an enclosing timeout, which the next call sees),
/// `Cancelled` if the coroutine is cancelled, `Block` where it may not park.
pub(crate) fn nap(d: Duration) -> Wait {
    if cancelling() {
        return cancelled();
    }
    let point = crate::cancel::Point::new(Instant::now().checked_add(d));
    match stop(&point) {
        Some(Wait::Again) => return Wait::Retry,
        Some(w) => return w,
        None => {}
    }
    if !parkable() {
        return Wait::Block;
    }
    let deadline = point.deadline();
    park(|| crate::time::park_until(deadline));
    Wait::Retry
}

/// Runs a hook's park: with the hooks off for the runtime's own calls in
/// it, and with the coroutine's cancellation held back (a cancellation
/// cannot unwind through the hook's `extern "C"` frame; the hook instead
/// finds `parkable` false and completes its call without parking).
pub(crate) fn park<R>(f: impl FnOnce() -> R) -> R {
    bypass(|| crate::scheduler::worker::without_cancel_unwind(f))
}

/// Parks the running coroutine until `deadline` (a hooked sleep). False if
/// it may not park (any more): the caller sleeps the thread for what is
/// left.
pub(crate) fn sleep_until(deadline: Instant) -> bool {
    loop {
        if !parkable() {
            return false;
        }
        if crate::time::expired(Some(deadline)) {
            return true;
        }
        park(|| crate::time::park_until(Some(deadline)));
    }
}

/// The time left until `deadline`, as a timespec (zero if passed).
pub(crate) fn timespec_until(deadline: Instant) -> libc::timespec {
    let d = deadline.saturating_duration_since(Instant::now());
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    }
}

/// Sets `errno`.
#[inline]
pub(crate) fn set_errno(e: i32) {
    // SAFETY: glibc's per-thread errno location.
    unsafe { *libc::__errno_location() = e };
}

/// Reads `errno`.
#[inline]
pub(crate) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A value moved to the blocking pool and back although it is not `Send`
/// (the raw pointers of a hooked call's arguments).
pub(crate) struct AssertSend<T>(pub(crate) T);

// SAFETY: used only by `offload`, whose caller waits until the job is done
// (or was dropped unrun) before the pointed-to data can go: the data is
// used by one thread at a time, as a blocking call on the caller's thread
// would use it.
unsafe impl<T> Send for AssertSend<T> {}

/// Runs `f` on the runtime's blocking pool while the coroutine parks, and
/// returns its result; `None` if that is not possible here (not parkable,
/// or the pool has shut down and dropped the job unrun): the caller then
/// makes the call itself. `f` runs on a pool thread, where the hooks are
/// off.
pub(crate) fn offload<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    if !parkable() {
        return None;
    }
    let h = bypass(|| crate::spawn_blocking(f));
    // A join that returns has seen the job finish or be dropped unrun;
    // with the cancellation held back it never returns before that.
    park(|| h.join()).ok()
}

/// `addr.to_socket_addrs()` that, in a coroutine on a worker, resolves
/// names on the blocking pool while the coroutine parks (through the
/// `getaddrinfo` hook), even in a runtime whose hooks are off: what
/// `greenstack::net` resolves with.
pub(crate) fn resolve<A: std::net::ToSocketAddrs>(addr: A) -> io::Result<A::Iter> {
    if active() || !crate::scheduler::driver::waits_registered() {
        return addr.to_socket_addrs();
    }
    set_active(true);
    let r = addr.to_socket_addrs();
    set_active(false);
    r
}

/// [`offload`] for a call that reports failure through `errno`: carries
/// the pool thread's `errno` back to this one.
pub(crate) fn offload_call<R: Send + 'static>(
    call: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    let (r, e) = offload(move || {
        let r = call();
        (r, errno())
    })?;
    set_errno(e);
    Some(r)
}
