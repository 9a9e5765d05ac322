//! The interposed libc functions (see the module docs of `hook`).
//!
//! Each starts with the one thread-local check [`active`]; off it, the
//! function is its system call through `libc::syscall`, which sets `errno`
//! as libc's wrapper does, allocates nothing and takes no lock (so it is
//! async-signal-safe wherever libc's is). The functions are `unsafe extern
//! "C"` with libc's signatures: their callers (std, C code) hold libc's
//! contracts for the pointers, and the bodies pass those pointers only to
//! the kernel.
//!
//! By hand, not through a crate: interposition needs the definitions in
//! the binary itself, with the exact libc names and signatures, and the
//! parking path is this runtime's own.

// `pub` for the linker, not for Rust callers: the symbols are exported
// by name whatever the module's visibility.
#![allow(clippy::missing_safety_doc, unreachable_pub)]

use std::time::{Duration, Instant};

use libc::{c_int, c_long, c_uint, c_void, size_t, sockaddr, socklen_t, ssize_t};

use super::{
    active, errno, flags_changed, forget_fd, kind, offload_call, set_errno, set_kind, sleep_until,
    timespec_until, user_nonblocking, wait_fd, AssertSend, Dir, FdWait, Kind, Wait,
};

/// A system call's result as `ssize_t`.
macro_rules! sys {
    ($n:expr $(, $a:expr)* $(,)?) => {
        // SAFETY: the caller's arguments, forwarded unchanged to the
        // kernel, which checks them (see the module docs). Each is widened
        // to a full register first: `syscall` is variadic, and an `int`
        // passed to it leaves the register's upper half undefined, which
        // the kernel reads for an `unsigned long` parameter (pwritev2's
        // count) and memcheck reported for its flags.
        unsafe { libc::syscall($n $(, ($a) as libc::c_long)*) as ssize_t }
    };
}

/// The loop of a non-blocking attempt on a socket: `attempt` must not
/// block; on `EAGAIN` the coroutine parks until `fd` is ready for `dir`
/// (or the socket's timeout) and tries again. `blocking` is the call as
/// the caller made it, for when parking is not possible.
fn socket_loop(
    fd: c_int,
    dir: Dir,
    mut attempt: impl FnMut() -> ssize_t,
    blocking: impl FnOnce() -> ssize_t,
) -> ssize_t {
    let mut w = FdWait::new(fd, dir, true, true);
    loop {
        w.before_attempt();
        let r = attempt();
        if r >= 0 {
            return r;
        }
        let e = errno();
        if e == libc::EINTR {
            continue;
        }
        if e != libc::EAGAIN {
            return r;
        }
        match w.wait() {
            Wait::Retry => {}
            Wait::Again => {
                set_errno(libc::EAGAIN);
                return -1;
            }
            Wait::Block => return blocking(),
            Wait::Cancelled(e) => {
                set_errno(e);
                return -1;
            }
        }
    }
}

/// For a pollable non-socket fd (pipe, FIFO, terminal), or a listening
/// socket (`socket`): `poll` without a timeout first, then `call`, parking
/// while the fd is not ready.
fn pollable_loop(fd: c_int, dir: Dir, socket: bool, call: impl FnOnce() -> ssize_t) -> ssize_t {
    let events = match dir {
        Dir::Read => libc::POLLIN,
        Dir::Write => libc::POLLOUT,
    };
    let mut w = FdWait::new(fd, dir, socket, true);
    loop {
        w.before_attempt();
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let r = sys!(libc::SYS_poll, &mut pfd as *mut libc::pollfd, 1, 0);
        if r != 0 {
            // Ready, or an error the call reports its own way.
            return call();
        }
        match w.wait() {
            Wait::Retry => {}
            Wait::Again | Wait::Block => return call(),
            Wait::Cancelled(e) => {
                set_errno(e);
                return -1;
            }
        }
    }
}

/// A `recv`-style call in a coroutine: `flags | MSG_DONTWAIT` attempts,
/// `MSG_WAITALL` kept by looping over partial reads of a stream.
fn recv_like(
    fd: c_int,
    len: size_t,
    flags: c_int,
    call: impl Fn(size_t, c_int) -> ssize_t,
) -> ssize_t {
    if flags & libc::MSG_DONTWAIT != 0 {
        return call(0, flags);
    }
    let nb = flags | libc::MSG_DONTWAIT;
    if flags & libc::MSG_WAITALL == 0 || len == 0 {
        return socket_loop(fd, Dir::Read, || call(0, nb), || call(0, flags));
    }
    let nb = nb & !libc::MSG_WAITALL;
    let mut done: size_t = 0;
    while done < len {
        let r = socket_loop(fd, Dir::Read, || call(done, nb), || call(done, flags));
        if r <= 0 {
            return if done > 0 { done as ssize_t } else { r };
        }
        done += r as size_t;
    }
    done as ssize_t
}

/// A `send`-style call in a coroutine: `MSG_DONTWAIT` attempts, looping
/// over partial sends as a blocking send does (it returns once all is
/// queued).
fn send_like(
    fd: c_int,
    len: size_t,
    flags: c_int,
    call: impl Fn(size_t, c_int) -> ssize_t,
) -> ssize_t {
    if flags & libc::MSG_DONTWAIT != 0 {
        return call(0, flags);
    }
    let nb = flags | libc::MSG_DONTWAIT;
    let mut done: size_t = 0;
    loop {
        let r = socket_loop(fd, Dir::Write, || call(done, nb), || call(done, flags));
        if r < 0 {
            return if done > 0 { done as ssize_t } else { r };
        }
        done += r as size_t;
        if done >= len || r == 0 {
            return done as ssize_t;
        }
    }
}

/// `fd`'s kind for a call in a coroutine, or `None` to pass the call
/// through (a regular file, or an fd `fstat` rejects).
fn hooked_kind(fd: c_int) -> Option<Kind> {
    match kind(fd) {
        Some(Kind::File) | None => None,
        k => k,
    }
}

/// `read(2)`.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    if !active() {
        return sys!(libc::SYS_read, fd, buf, count);
    }
    match hooked_kind(fd) {
        Some(Kind::Socket) => {
            let r = recv_like(fd, count, 0, |off, fl| {
                sys!(
                    libc::SYS_recvfrom,
                    fd,
                    buf.cast::<u8>().wrapping_add(off),
                    count - off,
                    fl,
                    0usize,
                    0usize
                )
            });
            if r < 0 && errno() == libc::ENOTSOCK {
                set_kind(fd, Kind::Pollable);
                return pollable_loop(fd, Dir::Read, false, || {
                    sys!(libc::SYS_read, fd, buf, count)
                });
            }
            r
        }
        Some(_) => pollable_loop(fd, Dir::Read, false, || {
            sys!(libc::SYS_read, fd, buf, count)
        }),
        None if kind(fd) == Some(Kind::File) => file_io_one(fd, FileOp::Read, buf, count, -1),
        None => sys!(libc::SYS_read, fd, buf, count),
    }
}

/// Which way a regular-file call goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileOp {
    Read,
    Write,
}

/// A regular file's read or write in a coroutine, of the `iovcnt`
/// buffers at `iov`, at offset `off` (-1: at the file position, as
/// `read`/`write`/`readv`/`writev`): at once when the page cache can serve
/// it without blocking (`preadv2`/`pwritev2` with `RWF_NOWAIT`: one system
/// call, as the plain one), else on the blocking pool while the coroutine
/// parks. `direct` is the plain call. Where the file system has no
/// non-blocking form (`EOPNOTSUPP`: buffered writes on ext4 as of Linux
/// 6.18, for one), the plain call is made, and the fd remembered so that
/// it is not asked again. `flags`: the caller's own `RWF_*` flags (of a
/// `preadv2`/`pwritev2`), kept in the attempt; a refusal of the attempt
/// then is not taken for the file system's (the fd is not remembered).
fn file_io(
    fd: c_int,
    op: FileOp,
    (iov, iovcnt): (*const libc::iovec, c_int),
    off: i64,
    flags: c_int,
    direct: impl Fn() -> ssize_t + Copy + 'static,
) -> ssize_t {
    let unsupported = match op {
        FileOp::Read => super::FL_NO_NOWAIT_READ,
        FileOp::Write => super::FL_NO_NOWAIT_WRITE,
    };
    if super::fd_flag(fd, unsupported) {
        return direct();
    }
    let n = match op {
        FileOp::Read => libc::SYS_preadv2,
        FileOp::Write => libc::SYS_pwritev2,
    };
    let r = sys!(n, fd, iov, iovcnt, off, 0, flags | libc::RWF_NOWAIT);
    if r >= 0 {
        return r;
    }
    match errno() {
        libc::EAGAIN => {}
        libc::EOPNOTSUPP => {
            if flags == 0 {
                super::set_fd_flag(fd, unsupported);
            }
            return direct();
        }
        // Not seekable (EINVAL, ESPIPE) or another refusal of the flag:
        // the plain call, which reports its own errors.
        libc::EINVAL | libc::ESPIPE => return direct(),
        _ => return r,
    }
    offload_raw(direct)
}

/// Makes `direct`, a call on the caller's raw pointers, on the blocking
/// pool while the coroutine parks, and returns its result (with its
/// `errno`); where it may not park, makes it here. The pointers stay
/// valid meanwhile: the caller's frame waits in `offload_call` until the
/// pool is done with them (see `AssertSend`).
fn offload_raw(direct: impl Fn() -> ssize_t + Copy + 'static) -> ssize_t {
    let call = AssertSend(direct);
    offload_call(move || {
        let c = call;
        (c.0)()
    })
    .unwrap_or_else(direct)
}

/// [`file_io`] of one buffer.
fn file_io_one(fd: c_int, op: FileOp, buf: *mut c_void, count: size_t, off: i64) -> ssize_t {
    let iov = libc::iovec {
        iov_base: buf,
        iov_len: count,
    };
    file_io(fd, op, (&iov, 1), off, 0, move || match (op, off) {
        (FileOp::Read, -1) => sys!(libc::SYS_read, fd, buf, count),
        (FileOp::Read, _) => sys!(libc::SYS_pread64, fd, buf, count, off),
        (FileOp::Write, -1) => sys!(libc::SYS_write, fd, buf, count),
        (FileOp::Write, _) => sys!(libc::SYS_pwrite64, fd, buf, count, off),
    })
}

/// Whether `fd` is standard output or error, whose writes never park.
///
/// std's `Stdout` and `Stderr` write under a reentrant lock owned by the
/// OS thread, around a `RefCell`. A coroutine parked in such a write (a
/// full pipe, a socket, a slow file) would leave the lock held by its
/// worker thread, and the next coroutine of that worker to print would
/// re-enter it and panic ("RefCell already borrowed"): every `println!`,
/// `eprintln!` and logger on stdout would be a hazard. So these writes
/// block the worker, as without the hooks; the watchdog reports one that
/// lasts.
#[inline(always)]
fn std_stream(fd: c_int) -> bool {
    fd == libc::STDOUT_FILENO || fd == libc::STDERR_FILENO
}

/// `write(2)`: never parks on standard output or error ([`std_stream`]).
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    if !active() || std_stream(fd) {
        return sys!(libc::SYS_write, fd, buf, count);
    }
    match hooked_kind(fd) {
        Some(Kind::Socket) => {
            let r = send_like(fd, count, 0, |off, fl| {
                sys!(
                    libc::SYS_sendto,
                    fd,
                    buf.cast::<u8>().wrapping_add(off),
                    count - off,
                    fl,
                    0usize,
                    0usize
                )
            });
            if r < 0 && errno() == libc::ENOTSOCK {
                set_kind(fd, Kind::Pollable);
                return pollable_loop(fd, Dir::Write, false, || {
                    sys!(libc::SYS_write, fd, buf, count)
                });
            }
            r
        }
        Some(_) => pollable_loop(fd, Dir::Write, false, || {
            sys!(libc::SYS_write, fd, buf, count)
        }),
        None if kind(fd) == Some(Kind::File) => {
            file_io_one(fd, FileOp::Write, buf.cast_mut(), count, -1)
        }
        None => sys!(libc::SYS_write, fd, buf, count),
    }
}

/// `readv(2)`: on a socket, pipe or FIFO as `read`; on a regular file,
/// from the page cache at once, else on the blocking pool (`file_io`).
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> ssize_t {
    if !active() {
        return sys!(libc::SYS_readv, fd, iov, iovcnt);
    }
    match hooked_kind(fd) {
        Some(Kind::Socket) => {
            // SAFETY: an all-zero msghdr is valid; we set the vector only.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.cast_mut();
            msg.msg_iovlen = iovcnt.max(0) as usize;
            let m = &mut msg as *mut libc::msghdr;
            socket_loop(
                fd,
                Dir::Read,
                || sys!(libc::SYS_recvmsg, fd, m, libc::MSG_DONTWAIT),
                || sys!(libc::SYS_readv, fd, iov, iovcnt),
            )
        }
        Some(_) => pollable_loop(fd, Dir::Read, false, || {
            sys!(libc::SYS_readv, fd, iov, iovcnt)
        }),
        None if kind(fd) == Some(Kind::File) => {
            file_io(fd, FileOp::Read, (iov, iovcnt), -1, 0, move || {
                sys!(libc::SYS_readv, fd, iov, iovcnt)
            })
        }
        None => sys!(libc::SYS_readv, fd, iov, iovcnt),
    }
}

/// `writev(2)`: on a socket, pipe or FIFO as `write`; on a regular file,
/// as `write` there (`file_io`); never parks on standard output or error
/// ([`std_stream`]).
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> ssize_t {
    if !active() || std_stream(fd) {
        return sys!(libc::SYS_writev, fd, iov, iovcnt);
    }
    match hooked_kind(fd) {
        Some(Kind::Socket) => {
            // SAFETY: an all-zero msghdr is valid; we set the vector only.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.cast_mut();
            msg.msg_iovlen = iovcnt.max(0) as usize;
            let m = &msg as *const libc::msghdr;
            socket_loop(
                fd,
                Dir::Write,
                || sys!(libc::SYS_sendmsg, fd, m, libc::MSG_DONTWAIT),
                || sys!(libc::SYS_writev, fd, iov, iovcnt),
            )
        }
        Some(_) => pollable_loop(fd, Dir::Write, false, || {
            sys!(libc::SYS_writev, fd, iov, iovcnt)
        }),
        None if kind(fd) == Some(Kind::File) => {
            file_io(fd, FileOp::Write, (iov, iovcnt), -1, 0, move || {
                sys!(libc::SYS_writev, fd, iov, iovcnt)
            })
        }
        None => sys!(libc::SYS_writev, fd, iov, iovcnt),
    }
}

/// `recv(2)`.
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    // SAFETY: the caller's arguments, and no address wanted.
    unsafe {
        recvfrom(
            fd,
            buf,
            len,
            flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    }
}

/// `recvfrom(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> ssize_t {
    let call = |off: size_t, fl: c_int| {
        sys!(
            libc::SYS_recvfrom,
            fd,
            buf.cast::<u8>().wrapping_add(off),
            len - off,
            fl,
            addr,
            addrlen
        )
    };
    if !active() {
        return call(0, flags);
    }
    recv_like(fd, len, flags, call)
}

/// `recvmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t {
    if !active() || flags & libc::MSG_DONTWAIT != 0 {
        return sys!(libc::SYS_recvmsg, fd, msg, flags);
    }
    socket_loop(
        fd,
        Dir::Read,
        || sys!(libc::SYS_recvmsg, fd, msg, flags | libc::MSG_DONTWAIT),
        || sys!(libc::SYS_recvmsg, fd, msg, flags),
    )
}

/// `send(2)`.
#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    // SAFETY: the caller's arguments, and no address.
    unsafe { sendto(fd, buf, len, flags, std::ptr::null(), 0) }
}

/// `sendto(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addrlen: socklen_t,
) -> ssize_t {
    let call = |off: size_t, fl: c_int| {
        sys!(
            libc::SYS_sendto,
            fd,
            buf.cast::<u8>().wrapping_add(off),
            len - off,
            fl,
            addr,
            addrlen
        )
    };
    if !active() {
        return call(0, flags);
    }
    send_like(fd, len, flags, call)
}

/// `sendmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t {
    if !active() || flags & libc::MSG_DONTWAIT != 0 {
        return sys!(libc::SYS_sendmsg, fd, msg, flags);
    }
    socket_loop(
        fd,
        Dir::Write,
        || sys!(libc::SYS_sendmsg, fd, msg, flags | libc::MSG_DONTWAIT),
        || sys!(libc::SYS_sendmsg, fd, msg, flags),
    )
}

/// `connect(2)`. On a blocking socket in a coroutine: connects with
/// `O_NONBLOCK` set for the call, parks until the connection is made or
/// fails (or `SO_SNDTIMEO` passes: `EINPROGRESS`, as Linux reports it),
/// and restores the flags.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let direct = || sys!(libc::SYS_connect, fd, addr, len) as c_int;
    if !active() || hooked_kind(fd) != Some(Kind::Socket) || user_nonblocking(fd) {
        return direct();
    }
    let fl = sys!(libc::SYS_fcntl, fd, libc::F_GETFL) as c_int;
    if fl < 0 || sys!(libc::SYS_fcntl, fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
        return direct();
    }
    let restore = || {
        let e = errno();
        sys!(libc::SYS_fcntl, fd, libc::F_SETFL, fl);
        // Another thread may have cached the flag of the moment (through a
        // duplicate of the fd).
        flags_changed();
        set_errno(e);
    };
    let r = direct();
    if r == 0 || errno() != libc::EINPROGRESS {
        restore();
        return r;
    }
    let mut w = FdWait::new(fd, Dir::Write, true, false);
    loop {
        w.before_attempt();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        if sys!(libc::SYS_poll, &mut pfd as *mut libc::pollfd, 1, 0) != 0 {
            break;
        }
        match w.wait() {
            Wait::Retry => {}
            Wait::Again => {
                set_errno(libc::EINPROGRESS);
                restore();
                return -1;
            }
            Wait::Block => {
                sys!(libc::SYS_poll, &mut pfd as *mut libc::pollfd, 1, -1);
                break;
            }
            Wait::Cancelled(e) => {
                set_errno(e);
                restore();
                return -1;
            }
        }
    }
    let mut err: c_int = 0;
    let mut elen = std::mem::size_of::<c_int>() as socklen_t;
    let rc = sys!(
        libc::SYS_getsockopt,
        fd,
        libc::SOL_SOCKET,
        libc::SO_ERROR,
        &mut err as *mut c_int,
        &mut elen as *mut socklen_t
    );
    let result = if rc < 0 {
        -1
    } else if err != 0 {
        set_errno(err);
        -1
    } else {
        0
    };
    restore();
    result
}

/// `accept(2)`.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the caller's arguments.
    unsafe { accept4(fd, addr, len, 0) }
}

/// `accept4(2)`. In a coroutine, on a blocking listener: waits until a
/// connection is pending, then accepts it. (Another thread taking that
/// connection first makes the accept block, as the listener is the
/// user's and stays blocking.)
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let call = || {
        let r = sys!(libc::SYS_accept4, fd, addr, len, flags) as c_int;
        if r >= 0 {
            forget_fd(r);
        }
        r
    };
    if !active() || hooked_kind(fd) != Some(Kind::Socket) {
        return call();
    }
    let r = pollable_loop(fd, Dir::Read, true, || call() as ssize_t) as c_int;
    if r >= 0 {
        crate::scheduler::worker::note_accept();
    }
    r
}

/// `poll(2)`. In a coroutine with a timeout: polls once without waiting,
/// then parks until one of the fds is ready or the timeout passes.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    if !active() || timeout == 0 {
        return sys!(libc::SYS_poll, fds, nfds, timeout) as c_int;
    }
    let deadline = (timeout > 0)
        .then(|| Instant::now().checked_add(Duration::from_millis(timeout as u64)))
        .flatten();
    poll_parking(fds, nfds, deadline)
}

/// `poll` over the caller's `fds` in a coroutine until `deadline` (none:
/// forever), parking between attempts.
fn poll_parking(fds: *mut libc::pollfd, nfds: libc::nfds_t, deadline: Option<Instant>) -> c_int {
    let direct = |t: c_int| sys!(libc::SYS_poll, fds, nfds, t) as c_int;
    if nfds == 0 {
        return match deadline {
            Some(d) if sleep_until(d) => 0,
            _ => direct(ms_until(deadline)),
        };
    }
    wait_parking(deadline, direct, || {
        (0..nfds as usize)
            .map(|i| {
                // SAFETY: the caller's array holds `nfds` entries.
                let p = unsafe { &*fds.add(i) };
                (p.fd, p.events)
            })
            .collect()
    })
}

/// Milliseconds from now to `deadline`, rounded up, as a poll timeout
/// (none, or one past what `c_int` holds: -1, forever).
fn ms_until(deadline: Option<Instant>) -> c_int {
    match deadline {
        Some(d) => c_int::try_from(
            d.saturating_duration_since(Instant::now())
                .as_nanos()
                .div_ceil(1_000_000),
        )
        .unwrap_or(c_int::MAX),
        None => -1,
    }
}

/// A poll-like call in a coroutine until `deadline` (none: forever):
/// `direct(0)` attempts it without waiting; while that finds nothing, the
/// coroutine parks until one of `fds()`'s (fd, events) is ready or the
/// deadline passes. Where it may not park, `direct` waits with what is
/// left of the timeout. Returns the call's result (0 at the deadline).
fn wait_parking(
    deadline: Option<Instant>,
    direct: impl Fn(c_int) -> c_int,
    fds: impl FnOnce() -> Vec<(c_int, libc::c_short)>,
) -> c_int {
    // Made only once parking is allowed: nothing allocates before that
    // check (a signal handler may have interrupted malloc).
    let mut fds = Some(fds);
    let mut list: Vec<(c_int, libc::c_short)> = Vec::new();
    let point = crate::cancel::Point::new(deadline);
    loop {
        let r = direct(0);
        if r != 0 {
            return r;
        }
        if super::cancelling() {
            super::cancelled();
            set_errno(libc::ECANCELED);
            return -1;
        }
        match super::stop(&point) {
            Some(Wait::Cancelled(e)) => {
                set_errno(e);
                return -1;
            }
            Some(_) => return 0,
            None => {}
        }
        if let Some(make) = fds.take() {
            if !super::parkable() {
                return direct(ms_until(deadline));
            }
            list = make();
        }
        let until = point.deadline();
        if super::park(|| crate::scheduler::driver::park_on_fds(&list, until)).is_err() {
            return direct(ms_until(deadline));
        }
    }
}

/// `epoll_wait(2)`. In a coroutine with a timeout: collects what is ready
/// without waiting, then parks until the epoll fd itself is readable (it
/// has events to report) or the timeout passes, and collects again.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout: c_int,
) -> c_int {
    let direct = |t: c_int| sys!(libc::SYS_epoll_wait, epfd, events, maxevents, t) as c_int;
    if !active() || timeout == 0 {
        return direct(timeout);
    }
    let deadline = (timeout > 0)
        .then(|| Instant::now().checked_add(Duration::from_millis(timeout as u64)))
        .flatten();
    wait_parking(deadline, direct, || vec![(epfd, libc::POLLIN)])
}

/// `epoll_pwait(2)`: as `epoll_wait` when no signal mask is given; with
/// one (an atomic mask change) it is the system call.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout: c_int,
    sigmask: *const libc::sigset_t,
) -> c_int {
    if sigmask.is_null() {
        // SAFETY: the caller's arguments.
        return unsafe { epoll_wait(epfd, events, maxevents, timeout) };
    }
    sys!(
        libc::SYS_epoll_pwait,
        epfd,
        events,
        maxevents,
        timeout,
        sigmask,
        8usize
    ) as c_int
}

/// `epoll_pwait2(2)`: `epoll_pwait` with a `timespec` timeout (null:
/// forever). As `epoll_wait` in a coroutine when no signal mask is given;
/// with one (an atomic mask change), or a timeout the kernel would refuse,
/// it is the system call.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    let call = || {
        sys!(
            libc::SYS_epoll_pwait2,
            epfd,
            events,
            maxevents,
            timeout,
            sigmask,
            8usize
        ) as c_int
    };
    if !active() || !sigmask.is_null() {
        return call();
    }
    // SAFETY: null or the caller's timeout.
    let deadline = match unsafe { timeout.as_ref() } {
        None => None,
        Some(t) => match duration_of(t) {
            Some(d) if d.is_zero() => return call(),
            Some(d) => Instant::now().checked_add(d),
            None => return call(),
        },
    };
    let direct = |t: c_int| sys!(libc::SYS_epoll_wait, epfd, events, maxevents, t) as c_int;
    wait_parking(deadline, direct, || vec![(epfd, libc::POLLIN)])
}

/// `ppoll(2)`: as `poll` when no signal mask is given; with one (an atomic
/// mask change) it is the system call.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    tmo: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    let direct = || {
        // The kernel updates the timeout it is given: hand it a copy.
        // SAFETY: null or the caller's timeout.
        let mut t = unsafe { tmo.as_ref() }.copied();
        let tp = t
            .as_mut()
            .map_or(std::ptr::null_mut(), |t| t as *mut libc::timespec);
        sys!(libc::SYS_ppoll, fds, nfds, tp, sigmask, 8usize) as c_int
    };
    if !active() || !sigmask.is_null() {
        return direct();
    }
    let deadline = if tmo.is_null() {
        None
    } else {
        // SAFETY: non-null, the caller's timeout.
        let Some(d) = duration_of(unsafe { &*tmo }) else {
            set_errno(libc::EINVAL);
            return -1;
        };
        if d.is_zero() {
            return direct();
        }
        Instant::now().checked_add(d)
    };
    poll_parking(fds, nfds, deadline)
}

/// `select(2)` in a coroutine: the sets become a `poll` list that parks,
/// and are rewritten from its result as select's are; the timeout is
/// updated to what is left, as Linux does.
#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    let direct = || sys!(libc::SYS_select, nfds, r, w, e, timeout) as c_int;
    if !active() || nfds < 0 || nfds > libc::FD_SETSIZE as c_int {
        return direct();
    }
    let deadline = if timeout.is_null() {
        None
    } else {
        // SAFETY: non-null, the caller's timeout.
        let tv = unsafe { *timeout };
        if tv.tv_sec < 0 || !(0..1_000_000).contains(&tv.tv_usec) {
            set_errno(libc::EINVAL);
            return -1;
        }
        let d = Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
        if d.is_zero() {
            return direct();
        }
        Instant::now().checked_add(d)
    };
    if !super::parkable() {
        // Possibly a signal handler: no allocation, the system call.
        return direct();
    }
    // SAFETY: the caller's sets (or null), each valid for `nfds` bits.
    let n = unsafe { select_parking(nfds, r, w, e, deadline) };
    if !timeout.is_null() {
        let left = deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        // SAFETY: the caller's timeout, non-null.
        unsafe {
            *timeout = libc::timeval {
                tv_sec: left.as_secs() as libc::time_t,
                tv_usec: left.subsec_micros() as libc::suseconds_t,
            }
        };
    }
    n
}

/// `pselect(2)`: as `select` when no signal mask is given; with one it is
/// the system call.
#[no_mangle]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    let direct = || {
        // SAFETY: null or the caller's timeout.
        let mut t = unsafe { timeout.as_ref() }.copied();
        let tp = t
            .as_mut()
            .map_or(std::ptr::null_mut(), |t| t as *mut libc::timespec);
        // The kernel's sixth argument: the mask and its size.
        let mask = [sigmask as usize, 8usize];
        let mp = if sigmask.is_null() {
            std::ptr::null()
        } else {
            mask.as_ptr()
        };
        sys!(libc::SYS_pselect6, nfds, r, w, e, tp, mp) as c_int
    };
    if !active() || !sigmask.is_null() || nfds < 0 || nfds > libc::FD_SETSIZE as c_int {
        return direct();
    }
    let deadline = if timeout.is_null() {
        None
    } else {
        // SAFETY: non-null, the caller's timeout.
        let Some(d) = duration_of(unsafe { &*timeout }) else {
            set_errno(libc::EINVAL);
            return -1;
        };
        if d.is_zero() {
            return direct();
        }
        Instant::now().checked_add(d)
    };
    if !super::parkable() {
        // Possibly a signal handler: no allocation, the system call.
        return direct();
    }
    // SAFETY: the caller's sets (or null), each valid for `nfds` bits.
    unsafe { select_parking(nfds, r, w, e, deadline) }
}

/// The parking half of `select`/`pselect`.
///
/// # Safety
///
/// `r`, `w`, `e` are null or valid `fd_set`s covering `nfds` fds.
unsafe fn select_parking(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    deadline: Option<Instant>,
) -> c_int {
    let isset = |set: *mut libc::fd_set, fd: c_int| {
        // SAFETY: the caller's valid set (non-null here), fd < nfds.
        !set.is_null() && unsafe { libc::FD_ISSET(fd, set) }
    };
    let mut list = Vec::new();
    for fd in 0..nfds {
        let mut events = 0;
        if isset(r, fd) {
            events |= libc::POLLIN;
        }
        if isset(w, fd) {
            events |= libc::POLLOUT;
        }
        if isset(e, fd) {
            events |= libc::POLLPRI;
        }
        if events != 0 {
            list.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
        }
    }
    let n = poll_parking(list.as_mut_ptr(), list.len() as libc::nfds_t, deadline);
    if n < 0 {
        return n;
    }
    if list.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        set_errno(libc::EBADF);
        return -1;
    }
    for set in [r, w, e] {
        if !set.is_null() {
            // SAFETY: as above.
            unsafe { libc::FD_ZERO(set) };
        }
    }
    let mut count = 0;
    for p in &list {
        let mark = |set: *mut libc::fd_set, hit: bool, count: &mut c_int| {
            if hit && !set.is_null() {
                // SAFETY: as above.
                unsafe { libc::FD_SET(p.fd, set) };
                *count += 1;
            }
        };
        let ev = p.revents;
        mark(
            r,
            p.events & libc::POLLIN != 0
                && ev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0,
            &mut count,
        );
        mark(
            w,
            p.events & libc::POLLOUT != 0 && ev & (libc::POLLOUT | libc::POLLERR) != 0,
            &mut count,
        );
        mark(
            e,
            p.events & libc::POLLPRI != 0 && ev & libc::POLLPRI != 0,
            &mut count,
        );
    }
    count
}

/// `nanosleep(2)`: parks the coroutine for the duration.
#[no_mangle]
pub unsafe extern "C" fn nanosleep(req: *const libc::timespec, rem: *mut libc::timespec) -> c_int {
    if !active() || req.is_null() {
        return sys!(libc::SYS_nanosleep, req, rem) as c_int;
    }
    // SAFETY: non-null, the caller's request.
    let ts = unsafe { *req };
    let Some(d) = duration_of(&ts) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    match Instant::now().checked_add(d) {
        Some(deadline) => sleep_for_hook(deadline, rem),
        None => sys!(libc::SYS_nanosleep, req, rem) as c_int,
    }
}

/// A hooked sleep until `deadline`: parks, or (cancelled, or not parkable
/// here) sleeps the thread for what is left; `rem` as `nanosleep`'s.
fn sleep_for_hook(deadline: Instant, rem: *mut libc::timespec) -> c_int {
    if !sleep_until(deadline) {
        let left = timespec_until(deadline);
        return sys!(libc::SYS_nanosleep, &left as *const libc::timespec, rem) as c_int;
    }
    if !rem.is_null() {
        // SAFETY: the caller's out-parameter.
        unsafe {
            *rem = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }
        };
    }
    0
}

/// `clock_nanosleep(2)` (returns the error number, not -1): parks the
/// coroutine for the relative duration, or until the absolute time on
/// `CLOCK_REALTIME`/`CLOCK_MONOTONIC`/`CLOCK_BOOTTIME`; other clocks (CPU
/// time) pass through.
#[no_mangle]
pub unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> c_int {
    let direct = || {
        let r = sys!(libc::SYS_clock_nanosleep, clock, flags, req, rem);
        if r < 0 {
            errno()
        } else {
            0
        }
    };
    let wall = matches!(
        clock,
        libc::CLOCK_REALTIME | libc::CLOCK_MONOTONIC | libc::CLOCK_BOOTTIME
    );
    if !active() || req.is_null() || !wall {
        return direct();
    }
    // SAFETY: non-null, the caller's request.
    let ts = unsafe { *req };
    let Some(mut d) = duration_of(&ts) else {
        return libc::EINVAL;
    };
    let absolute = flags & libc::TIMER_ABSTIME != 0;
    if absolute {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if sys!(
            libc::SYS_clock_gettime,
            clock,
            &mut now as *mut libc::timespec
        ) < 0
        {
            return direct();
        }
        d = d.saturating_sub(duration_of(&now).unwrap_or_default());
    }
    let Some(deadline) = Instant::now().checked_add(d) else {
        return direct();
    };
    let rem = if absolute { std::ptr::null_mut() } else { rem };
    if sleep_for_hook(deadline, rem) < 0 {
        errno()
    } else {
        0
    }
}

/// `usleep(3)`.
#[no_mangle]
pub unsafe extern "C" fn usleep(usec: libc::useconds_t) -> c_int {
    let ts = libc::timespec {
        tv_sec: (usec / 1_000_000) as libc::time_t,
        tv_nsec: ((usec % 1_000_000) * 1000) as c_long,
    };
    // SAFETY: a valid request on our stack, no remainder wanted.
    unsafe { nanosleep(&ts, std::ptr::null_mut()) }
}

/// `sleep(3)`: returns the seconds left unslept (0 unless interrupted).
#[no_mangle]
pub unsafe extern "C" fn sleep(secs: c_uint) -> c_uint {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let mut rem = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid request and remainder on our stack.
    if unsafe { nanosleep(&ts, &mut rem) } == 0 {
        0
    } else {
        rem.tv_sec as c_uint + c_uint::from(rem.tv_nsec > 0)
    }
}

/// `close(2)`: forgets what the hooks knew of the fd.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    forget_fd(fd);
    sys!(libc::SYS_close, fd) as c_int
}

/// `dup2(2)`: forgets what the hooks knew of `new`.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    forget_fd(new);
    if old == new {
        // dup2 with equal fds checks `old` and returns it; dup3 would fail.
        return if sys!(libc::SYS_fcntl, old, libc::F_GETFD) < 0 {
            -1
        } else {
            old
        };
    }
    sys!(libc::SYS_dup3, old, new, 0) as c_int
}

/// `dup3(2)`: forgets what the hooks knew of `new`.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    forget_fd(new);
    sys!(libc::SYS_dup3, old, new, flags) as c_int
}

/// `dup(2)`: a new fd, of which nothing is known yet.
#[no_mangle]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    let r = sys!(libc::SYS_dup, old) as c_int;
    if r >= 0 {
        forget_fd(r);
    }
    r
}

/// `socket(2)`: a new fd (its number may have been closed by code that does
/// not go through the `close` hook, libc's own `fclose` say).
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let r = sys!(libc::SYS_socket, domain, ty, protocol) as c_int;
    if r >= 0 {
        forget_fd(r);
    }
    r
}

/// `socketpair(2)`: two new fds.
#[no_mangle]
pub unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    sv: *mut c_int,
) -> c_int {
    let r = sys!(libc::SYS_socketpair, domain, ty, protocol, sv) as c_int;
    if r == 0 {
        // SAFETY: the kernel filled the caller's two-element array.
        unsafe { forget_fds(sv) };
    }
    r
}

/// `pipe(2)`: two new fds.
#[no_mangle]
pub unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    // SAFETY: the caller's two-element array.
    unsafe { pipe2(fds, 0) }
}

/// `pipe2(2)`: two new fds.
#[no_mangle]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    let r = sys!(libc::SYS_pipe2, fds, flags) as c_int;
    if r == 0 {
        // SAFETY: the kernel filled the caller's two-element array.
        unsafe { forget_fds(fds) };
    }
    r
}

/// Forgets the two fds a `pipe2`/`socketpair` returned.
///
/// # Safety
///
/// `fds` points to two initialized `c_int`s.
unsafe fn forget_fds(fds: *const c_int) {
    // SAFETY: per the contract.
    let (a, b) = unsafe { (*fds, *fds.add(1)) };
    forget_fd(a);
    forget_fd(b);
}

extern "C" {
    /// glibc's `fcntl` under its exported alias, so the hook needs no
    /// `dlsym` (not async-signal-safe, and `fcntl` is) and keeps glibc's
    /// handling of every command (`F_GETOWN`'s negative group ids, say).
    fn __fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
}

/// `fcntl(2)`: glibc's, and then: `F_SETFL` may have changed `O_NONBLOCK`
/// (the cached flags of every fd are invalidated), `F_DUPFD*` returned a
/// new fd. The C prototype is variadic; on x86-64 a variadic call passes
/// the third argument in the register a fixed one uses, and every command
/// takes at most one (an int, a long or a pointer), so it is taken as a
/// `c_ulong` and handed on unchanged.
///
/// In a coroutine, a wait for a record lock (`F_SETLKW`, `F_OFD_SETLKW`)
/// first tries it without waiting, then waits on the blocking pool while
/// the coroutine parks: such a lock belongs to the process or to the open
/// file description, not to the thread, so the pool thread takes the same
/// lock the caller would have.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    if matches!(cmd, libc::F_SETLKW | libc::F_OFD_SETLKW) && active() {
        let try_cmd = if cmd == libc::F_SETLKW {
            libc::F_SETLK
        } else {
            libc::F_OFD_SETLK
        };
        // SAFETY: the caller's lock description, forwarded unchanged.
        let r = unsafe { __fcntl(fd, try_cmd, arg) };
        if r == 0 || !matches!(errno(), libc::EAGAIN | libc::EACCES) {
            return r;
        }
        // SAFETY: as above; `arg` points into the caller's memory, which
        // stays valid while the coroutine parks in `offload_call`.
        let direct = move || unsafe { __fcntl(fd, cmd, arg) };
        return offload_call(direct).unwrap_or_else(direct);
    }
    // SAFETY: the caller's arguments, forwarded unchanged.
    let r = unsafe { __fcntl(fd, cmd, arg) };
    match cmd {
        libc::F_SETFL if r >= 0 => flags_changed(),
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC if r >= 0 => forget_fd(r),
        _ => {}
    }
    r
}

/// `fcntl64`: glibc's name for `fcntl` in code built with 64-bit offsets.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    // SAFETY: as `fcntl`.
    unsafe { fcntl(fd, cmd, arg) }
}

/// `ioctl(2)`: the system call (glibc's is just that on x86-64), and
/// `FIONBIO` invalidates the cached flags. Variadic in C, taken as
/// `fcntl` takes its third argument.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: libc::c_ulong, arg: libc::c_ulong) -> c_int {
    let r = sys!(libc::SYS_ioctl, fd, request, arg) as c_int;
    // The kernel reads the request as a 32-bit unsigned int.
    if r >= 0 && request as u32 == libc::FIONBIO as u32 {
        flags_changed();
    }
    r
}

/// `SO_RCVTIMEO_NEW` and `SO_SNDTIMEO_NEW` (asm-generic/socket.h): the
/// 64-bit-time names of the timeouts, which the libc crate lacks.
const SO_TIMEO_NEW: [c_int; 2] = [66, 67];

/// `setsockopt(2)`: the system call, and setting `SO_RCVTIMEO` or
/// `SO_SNDTIMEO` invalidates the cached flags (the timeouts the hooks park
/// with).
#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let r = sys!(libc::SYS_setsockopt, fd, level, name, val, len) as c_int;
    if r == 0
        && level == libc::SOL_SOCKET
        && (name == libc::SO_RCVTIMEO || name == libc::SO_SNDTIMEO || SO_TIMEO_NEW.contains(&name))
    {
        flags_changed();
    }
    r
}

/// A valid timespec as a duration; `None` if out of range (`EINVAL`).
fn duration_of(ts: &libc::timespec) -> Option<Duration> {
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

type GetAddrInfoFn = unsafe extern "C" fn(
    *const libc::c_char,
    *const libc::c_char,
    *const libc::addrinfo,
    *mut *mut libc::addrinfo,
) -> c_int;

/// `getaddrinfo(3)`: in a coroutine, resolves on the blocking pool while
/// the coroutine parks (a resolver that is slow to answer stalls only it).
#[no_mangle]
pub unsafe extern "C" fn getaddrinfo(
    node: *const libc::c_char,
    service: *const libc::c_char,
    hints: *const libc::addrinfo,
    res: *mut *mut libc::addrinfo,
) -> c_int {
    let Some(real) = next_fn!("getaddrinfo", GetAddrInfoFn) else {
        set_errno(libc::ENOSYS);
        return libc::EAI_SYSTEM;
    };
    if !active() {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        return unsafe { real(node, service, hints, res) };
    }
    let args = AssertSend((node, service, hints, res));
    offload_call(move || {
        let a = args;
        // SAFETY: as above; `offload` returns only once this call is done.
        unsafe { real(a.0 .0, a.0 .1, a.0 .2, a.0 .3) }
    })
    .unwrap_or_else(|| {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        unsafe { real(node, service, hints, res) }
    })
}

type GetNameInfoFn = unsafe extern "C" fn(
    *const sockaddr,
    socklen_t,
    *mut libc::c_char,
    socklen_t,
    *mut libc::c_char,
    socklen_t,
    c_int,
) -> c_int;

/// `getnameinfo(3)`: as `getaddrinfo`, on the blocking pool.
#[no_mangle]
pub unsafe extern "C" fn getnameinfo(
    sa: *const sockaddr,
    salen: socklen_t,
    host: *mut libc::c_char,
    hostlen: socklen_t,
    serv: *mut libc::c_char,
    servlen: socklen_t,
    flags: c_int,
) -> c_int {
    let Some(real) = next_fn!("getnameinfo", GetNameInfoFn) else {
        set_errno(libc::ENOSYS);
        return libc::EAI_SYSTEM;
    };
    if !active() {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        return unsafe { real(sa, salen, host, hostlen, serv, servlen, flags) };
    }
    let args = AssertSend((sa, host, serv));
    offload_call(move || {
        let a = args;
        // SAFETY: as above; `offload` returns only once this call is done.
        unsafe { real(a.0 .0, salen, a.0 .1, hostlen, a.0 .2, servlen, flags) }
    })
    .unwrap_or_else(|| {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        unsafe { real(sa, salen, host, hostlen, serv, servlen, flags) }
    })
}

type GetHostByNameFn = unsafe extern "C" fn(*const libc::c_char) -> *mut c_void;
type GetHostByName2Fn = unsafe extern "C" fn(*const libc::c_char, c_int) -> *mut c_void;
type GetHostByNameRFn = unsafe extern "C" fn(
    *const libc::c_char,
    *mut c_void,
    *mut libc::c_char,
    size_t,
    *mut *mut c_void,
    *mut c_int,
) -> c_int;

extern "C" {
    /// glibc's per-thread `h_errno`, which the legacy resolver functions set.
    fn __h_errno_location() -> *mut c_int;
}

/// Runs a legacy resolver call (`gethostbyname*`) on the blocking pool
/// while the coroutine parks, carrying `errno` and `h_errno` back; `None`
/// if it cannot (the caller calls it here).
fn offload_resolver<R: Send + 'static>(call: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (r, h) = offload_call(move || {
        let r = call();
        // SAFETY: glibc's thread-local h_errno of the pool thread.
        (r, unsafe { *__h_errno_location() })
    })?;
    // SAFETY: this thread's h_errno.
    unsafe { *__h_errno_location() = h };
    Some(r)
}

/// `gethostbyname(3)`: on the blocking pool (its result lives in libc's
/// process-wide static buffer, as when called on this thread).
#[no_mangle]
pub unsafe extern "C" fn gethostbyname(name: *const libc::c_char) -> *mut c_void {
    let Some(real) = next_fn!("gethostbyname", GetHostByNameFn) else {
        return std::ptr::null_mut();
    };
    if !active() {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        return unsafe { real(name) };
    }
    let args = AssertSend(name);
    offload_resolver(move || {
        let a = args;
        // SAFETY: as above; `offload` returns only once this call is done.
        AssertSend(unsafe { real(a.0) })
    })
    .map(|p| p.0)
    .unwrap_or_else(|| {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        unsafe { real(name) }
    })
}

/// `gethostbyname2(3)`: as `gethostbyname`, for one address family.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname2(name: *const libc::c_char, af: c_int) -> *mut c_void {
    let Some(real) = next_fn!("gethostbyname2", GetHostByName2Fn) else {
        return std::ptr::null_mut();
    };
    if !active() {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        return unsafe { real(name, af) };
    }
    let args = AssertSend(name);
    offload_resolver(move || {
        let a = args;
        // SAFETY: as above; `offload` returns only once this call is done.
        AssertSend(unsafe { real(a.0, af) })
    })
    .map(|p| p.0)
    .unwrap_or_else(|| {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        unsafe { real(name, af) }
    })
}

/// `gethostbyname_r(3)`: on the blocking pool, writing into the caller's
/// buffers.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const libc::c_char,
    ret: *mut c_void,
    buf: *mut libc::c_char,
    buflen: size_t,
    result: *mut *mut c_void,
    h_errnop: *mut c_int,
) -> c_int {
    let Some(real) = next_fn!("gethostbyname_r", GetHostByNameRFn) else {
        return libc::ENOSYS;
    };
    if !active() {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        return unsafe { real(name, ret, buf, buflen, result, h_errnop) };
    }
    let args = AssertSend((name, ret, buf, result, h_errnop));
    offload_resolver(move || {
        let a = args;
        let (name, ret, buf, result, h_errnop) = a.0;
        // SAFETY: as above; `offload` returns only once this call is done.
        unsafe { real(name, ret, buf, buflen, result, h_errnop) }
    })
    .unwrap_or_else(|| {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        unsafe { real(name, ret, buf, buflen, result, h_errnop) }
    })
}

/// `wait4(2)` for one child (`pid > 0`) without `WNOHANG`, stop or
/// continue events: parks on the child's pidfd until it exits, then reaps
/// it. Other forms run on the blocking pool.
#[no_mangle]
pub unsafe extern "C" fn wait4(
    pid: libc::pid_t,
    status: *mut c_int,
    options: c_int,
    rusage: *mut libc::rusage,
) -> libc::pid_t {
    let direct = || sys!(libc::SYS_wait4, pid, status, options, rusage) as libc::pid_t;
    if !active() || options & libc::WNOHANG != 0 {
        return direct();
    }
    if pid > 0 && options & (libc::WUNTRACED | libc::WCONTINUED) == 0 {
        // Without a pidfd (a kernel before 5.3, a seccomp filter, valgrind),
        // the child is looked at with `WNOHANG` between naps of 1 ms
        // doubling to 50 ms: the coroutine parks and stays cancellable, and
        // the child is reaped by this call only, as with the pidfd.
        let mut nap = Duration::from_millis(1);
        loop {
            let r = sys!(
                libc::SYS_wait4,
                pid,
                status,
                options | libc::WNOHANG,
                rusage
            );
            if r != 0 {
                return r as libc::pid_t;
            }
            let pidfd = sys!(libc::SYS_pidfd_open, pid, 0) as c_int;
            let waited = if pidfd < 0 {
                let w = super::nap(nap);
                nap = (nap * 2).min(Duration::from_millis(50));
                w
            } else {
                let w = wait_fd(pidfd, Dir::Read, None, false);
                sys!(libc::SYS_close, pidfd);
                w
            };
            match waited {
                Wait::Retry => {}
                Wait::Cancelled(e) => {
                    set_errno(e);
                    return -1;
                }
                Wait::Again | Wait::Block => return direct(),
            }
        }
    }
    let args = AssertSend((status, rusage));
    offload_call(move || {
        let a = args;
        sys!(libc::SYS_wait4, pid, a.0 .0, options, a.0 .1) as libc::pid_t
    })
    .unwrap_or_else(direct)
}

/// `waitpid(2)`: `wait4` without resource usage.
#[no_mangle]
pub unsafe extern "C" fn waitpid(
    pid: libc::pid_t,
    status: *mut c_int,
    options: c_int,
) -> libc::pid_t {
    // SAFETY: the caller's arguments, and no rusage wanted.
    unsafe { wait4(pid, status, options, std::ptr::null_mut()) }
}

/// `waitid(2)`: on the blocking pool in a coroutine (unless `WNOHANG`).
#[no_mangle]
pub unsafe extern "C" fn waitid(
    idtype: libc::idtype_t,
    id: libc::id_t,
    info: *mut libc::siginfo_t,
    options: c_int,
) -> c_int {
    let direct = || sys!(libc::SYS_waitid, idtype, id, info, options, 0usize) as c_int;
    if !active() || options & libc::WNOHANG != 0 {
        return direct();
    }
    let args = AssertSend(info);
    offload_call(move || {
        let a = args;
        sys!(libc::SYS_waitid, idtype, id, a.0, options, 0usize) as c_int
    })
    .unwrap_or_else(direct)
}

/// `openat(2)` (and `open`, `open64`, `openat64`): opening a FIFO without
/// `O_NONBLOCK` waits for the other end, so in a coroutine it runs on the
/// blocking pool; every other open is the system call.
#[no_mangle]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const libc::c_char,
    flags: c_int,
    mode: libc::mode_t,
) -> c_int {
    let direct = || {
        let r = sys!(libc::SYS_openat, dirfd, path, flags, mode) as c_int;
        if r >= 0 {
            forget_fd(r);
        }
        r
    };
    if !active() || flags & libc::O_NONBLOCK != 0 || path.is_null() {
        return direct();
    }
    // SAFETY: an all-zero stat is valid; fstatat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let is_fifo = sys!(
        libc::SYS_newfstatat,
        dirfd,
        path,
        &mut st as *mut libc::stat,
        0
    ) == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFIFO;
    if !is_fifo {
        return direct();
    }
    let args = AssertSend(path);
    let r = offload_call(move || {
        let a = args;
        sys!(libc::SYS_openat, dirfd, a.0, flags, mode) as c_int
    })
    .unwrap_or_else(direct);
    if r >= 0 {
        forget_fd(r);
    }
    r
}

/// `open(2)`.
#[no_mangle]
pub unsafe extern "C" fn open(
    path: *const libc::c_char,
    flags: c_int,
    mode: libc::mode_t,
) -> c_int {
    // SAFETY: the caller's arguments, relative to the working directory.
    unsafe { openat(libc::AT_FDCWD, path, flags, mode) }
}

/// `open64(2)` (glibc's name for `open` with large-file support, which
/// std calls).
#[no_mangle]
pub unsafe extern "C" fn open64(
    path: *const libc::c_char,
    flags: c_int,
    mode: libc::mode_t,
) -> c_int {
    // SAFETY: as `open`; on 64-bit Linux every open is large-file.
    unsafe { openat(libc::AT_FDCWD, path, flags, mode) }
}

/// `openat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const libc::c_char,
    flags: c_int,
    mode: libc::mode_t,
) -> c_int {
    // SAFETY: as `openat`.
    unsafe { openat(dirfd, path, flags, mode) }
}

/// `flock(2)` (std's `File::lock` and `lock_shared`): in a coroutine, a
/// lock that is not free at once is waited for on the blocking pool while
/// the coroutine parks (the lock belongs to the open file description,
/// not to the thread). `LOCK_NB` and unlocking are the plain call.
#[no_mangle]
pub unsafe extern "C" fn flock(fd: c_int, op: c_int) -> c_int {
    let direct = move || sys!(libc::SYS_flock, fd, op) as c_int;
    if !active() || op & (libc::LOCK_NB | libc::LOCK_UN) != 0 {
        return direct();
    }
    let r = sys!(libc::SYS_flock, fd, op | libc::LOCK_NB) as c_int;
    if r == 0 || errno() != libc::EWOULDBLOCK {
        return r;
    }
    offload_call(direct).unwrap_or_else(direct)
}

/// `copy_file_range(2)` (std's `fs::copy`, and `io::copy` between files):
/// in a coroutine, on the blocking pool while the coroutine parks. It is
/// an in-kernel copy of up to a gigabyte a call (std's chunk), bound by
/// the disk, with no non-blocking form.
#[no_mangle]
pub unsafe extern "C" fn copy_file_range(
    fd_in: c_int,
    off_in: *mut i64,
    fd_out: c_int,
    off_out: *mut i64,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    let direct = move || {
        sys!(
            libc::SYS_copy_file_range,
            fd_in,
            off_in,
            fd_out,
            off_out,
            len,
            flags
        )
    };
    if !active() {
        return direct();
    }
    offload_raw(direct)
}

/// `splice(2)` (std's `io::copy` from or to a pipe: a child's output to a
/// socket, say), in a coroutine and without `SPLICE_F_NONBLOCK`: parks
/// until the input (a socket, pipe or FIFO) has something to give, then
/// makes the call on the blocking pool while the coroutine parks, since
/// its other side may still block (a socket's send, a file's disk). The
/// pool makes the very call the caller asked for, so what moves and what
/// stays in the pipe are the kernel's; waiting for a slow reader at the
/// output holds a pool thread. An fd the user made non-blocking is the
/// plain call.
#[no_mangle]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut i64,
    fd_out: c_int,
    off_out: *mut i64,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    let direct = move || sys!(libc::SYS_splice, fd_in, off_in, fd_out, off_out, len, flags);
    if !active() || flags & libc::SPLICE_F_NONBLOCK != 0 {
        return direct();
    }
    let (Some(kin), Some(_)) = (kind(fd_in), kind(fd_out)) else {
        return direct();
    };
    if user_nonblocking(fd_in) || user_nonblocking(fd_out) {
        return direct();
    }
    when_ready_offload(fd_in, Dir::Read, kin, direct)
}

/// A transfer with no non-blocking form (`splice`, `sendfile`): parks
/// until `fd` (a socket, pipe or FIFO, of kind `k`) is ready for `dir`
/// (readable with data, end of file or an error; writable), then makes
/// `direct` on the blocking pool (`offload_raw`). `-1` without a call only
/// when the coroutine is cancelled while it waits.
fn when_ready_offload(
    fd: c_int,
    dir: Dir,
    k: Kind,
    direct: impl Fn() -> ssize_t + Copy + 'static,
) -> ssize_t {
    if k != Kind::File {
        let r = pollable_loop(fd, dir, k == Kind::Socket, || 0);
        if r < 0 {
            return r;
        }
    }
    offload_raw(direct)
}

/// `sendfile(2)` in a coroutine: parks until its output (a socket, pipe or
/// FIFO) is writable, then makes the call on the blocking pool while the
/// coroutine parks (it sends all of `count` to a blocking socket, however
/// long the reader takes, and reads a file that may not be cached). A
/// non-blocking output of the user's is the plain call.
#[no_mangle]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut i64,
    count: size_t,
) -> ssize_t {
    let direct = move || sys!(libc::SYS_sendfile, out_fd, in_fd, offset, count);
    if !active() {
        return direct();
    }
    let Some(kout) = kind(out_fd) else {
        return direct();
    };
    if user_nonblocking(out_fd) {
        return direct();
    }
    when_ready_offload(out_fd, Dir::Write, kout, direct)
}

/// `sendfile64`: glibc's name for `sendfile` with 64-bit offsets.
#[no_mangle]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut i64,
    count: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments.
    unsafe { sendfile(out_fd, in_fd, offset, count) }
}

/// `fsync(2)`: on the blocking pool in a coroutine (it waits for the disk).
#[no_mangle]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    let direct = move || sys!(libc::SYS_fsync, fd) as c_int;
    if !active() {
        return direct();
    }
    offload_call(direct).unwrap_or_else(direct)
}

/// `fdatasync(2)`: on the blocking pool, as `fsync`.
#[no_mangle]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    let direct = move || sys!(libc::SYS_fdatasync, fd) as c_int;
    if !active() {
        return direct();
    }
    offload_call(direct).unwrap_or_else(direct)
}

/// `pread64(2)` (std's `read_at`; `pread` is the same function on 64-bit
/// Linux): on a regular file in a coroutine, from the page cache at once
/// (`RWF_NOWAIT`), else on the blocking pool.
#[no_mangle]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, count: size_t, off: i64) -> ssize_t {
    if !active() || kind(fd) != Some(Kind::File) || off < 0 {
        return sys!(libc::SYS_pread64, fd, buf, count, off);
    }
    file_io_one(fd, FileOp::Read, buf, count, off)
}

/// `pread(2)`.
#[no_mangle]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, count: size_t, off: i64) -> ssize_t {
    // SAFETY: the caller's arguments.
    unsafe { pread64(fd, buf, count, off) }
}

/// `pwrite64(2)` (std's `write_at`): on a regular file in a coroutine,
/// into the page cache at once where the file system can say it would
/// not block (`RWF_NOWAIT`), else on the blocking pool; see `file_io`.
#[no_mangle]
pub unsafe extern "C" fn pwrite64(
    fd: c_int,
    buf: *const c_void,
    count: size_t,
    off: i64,
) -> ssize_t {
    if !active() || kind(fd) != Some(Kind::File) || off < 0 {
        return sys!(libc::SYS_pwrite64, fd, buf, count, off);
    }
    file_io_one(fd, FileOp::Write, buf.cast_mut(), count, off)
}

/// `pwrite(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, count: size_t, off: i64) -> ssize_t {
    // SAFETY: the caller's arguments.
    unsafe { pwrite64(fd, buf, count, off) }
}

/// `preadv`/`pwritev` (system call `nr`, no `flags`) and their `2` forms
/// (with the caller's `flags`): on a regular file in a coroutine, as
/// `pread`/`pwrite` (`file_io`, keeping the caller's `RWF_HIPRI`,
/// `RWF_DSYNC`, `RWF_SYNC` and `RWF_APPEND`; the `2` forms take -1 for the
/// file position); otherwise the plain call, as is a call that asks for
/// `RWF_NOWAIT` itself (it wants `EAGAIN`, not a wait) or for flags these
/// hooks do not know.
fn vectored_at(
    nr: libc::c_long,
    op: FileOp,
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: i64,
    flags: Option<c_int>,
) -> ssize_t {
    let direct = move || match flags {
        None => sys!(nr, fd, iov, iovcnt, off, 0usize),
        Some(f) => sys!(nr, fd, iov, iovcnt, off, 0usize, f),
    };
    const KEPT: c_int = libc::RWF_HIPRI | libc::RWF_DSYNC | libc::RWF_SYNC | libc::RWF_APPEND;
    let first = if flags.is_some() { -1 } else { 0 };
    let f = flags.unwrap_or(0);
    if !active() || f & !KEPT != 0 || off < first || kind(fd) != Some(Kind::File) {
        return direct();
    }
    file_io(fd, op, (iov, iovcnt), off, f, direct)
}

/// The exports of the `preadv`/`pwritev` family, each `vectored_at` with
/// its system call and direction; those given a `flags` parameter are the
/// `2` forms.
macro_rules! vectored_exports {
    ($($doc:literal $name:ident($nr:expr, $op:expr $(, $flags:ident)?);)*) => {$(
        #[doc = $doc]
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            iov: *const libc::iovec,
            n: c_int,
            off: i64,
            $($flags: c_int,)?
        ) -> ssize_t {
            vectored_at($nr, $op, fd, iov, n, off, vectored_exports!(@flags $($flags)?))
        }
    )*};
    (@flags) => { None };
    (@flags $f:ident) => { Some($f) };
}

vectored_exports! {
    "`preadv(2)`: see `vectored_at`."
    preadv(libc::SYS_preadv, FileOp::Read);
    "`preadv64`: glibc's name for `preadv` with 64-bit offsets."
    preadv64(libc::SYS_preadv, FileOp::Read);
    "`pwritev(2)`: see `vectored_at`."
    pwritev(libc::SYS_pwritev, FileOp::Write);
    "`pwritev64`: glibc's name for `pwritev` with 64-bit offsets."
    pwritev64(libc::SYS_pwritev, FileOp::Write);
    "`preadv2(2)`: see `vectored_at`."
    preadv2(libc::SYS_preadv2, FileOp::Read, flags);
    "`preadv64v2`: glibc's name for `preadv2` with 64-bit offsets."
    preadv64v2(libc::SYS_preadv2, FileOp::Read, flags);
    "`pwritev2(2)`: see `vectored_at`."
    pwritev2(libc::SYS_pwritev2, FileOp::Write, flags);
    "`pwritev64v2`: glibc's name for `pwritev2` with 64-bit offsets."
    pwritev64v2(libc::SYS_pwritev2, FileOp::Write, flags);
}

// --------------------------------------------------------------------------
// Signal handlers: how `parkable` knows a handler is running.
//
// A handler that interrupted a coroutine runs on the coroutine's stack (or
// the thread's alternate one) with the interrupted code suspended at any
// instruction, perhaps inside malloc or the runtime itself: a hooked call
// in it must not park. The hooks used to compare the thread's signal mask
// with the worker's (one `rt_sigprocmask` per wait, and blind to a handler
// installed with `SA_NODEFER` and an empty mask). Instead, every handler
// installed through `sigaction` or `signal` in this binary is wrapped: the
// kernel calls `trampoline`, which counts the handler in `IN_HANDLER` around
// the user's. `sigaction` reports the user's handler and flags back, never
// the trampoline. A handler installed by a raw system call or by a library
// loaded at run time is not seen (the module docs say so).

/// The user's handlers (`sa_sigaction`) and flags per signal, for
/// `trampoline` and for reporting back.
static USER_HANDLER: [std::sync::atomic::AtomicUsize; 65] =
    [const { std::sync::atomic::AtomicUsize::new(0) }; 65];
static USER_FLAGS: [std::sync::atomic::AtomicI32; 65] =
    [const { std::sync::atomic::AtomicI32::new(0) }; 65];

extern "C" {
    /// glibc's `sigaction` under its exported alias (no `dlsym`, which is
    /// not async-signal-safe; `sigaction` is).
    fn __sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
}

/// What the kernel calls for a wrapped handler: the user's, counted.
/// Async-signal-safe: atomics and a const thread-local only.
extern "C" fn trampoline(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let Some(h) = usize::try_from(sig).ok().and_then(|s| USER_HANDLER.get(s)) else {
        return;
    };
    let h = h.load(std::sync::atomic::Ordering::Acquire);
    if h == libc::SIG_DFL || h == libc::SIG_IGN || h == 0 {
        // Replaced between the kernel's dispatch and this load.
        return;
    }
    super::enter_handler();
    // SAFETY: `h` is a handler the user installed for `sig`. Whether it was
    // declared with one argument or three (SA_SIGINFO), the x86-64 calling
    // convention passes the kernel's three in registers, which a callee
    // taking fewer ignores.
    unsafe {
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = std::mem::transmute(h);
        f(sig, info, ctx);
    }
    super::leave_handler();
}

/// `sigaction(2)`: installs the user's handler wrapped in `trampoline`, and
/// reports back the user's handler, never the trampoline.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    use std::sync::atomic::Ordering::AcqRel;
    let Some(slot) = usize::try_from(sig).ok().filter(|&s| (1..65).contains(&s)) else {
        // SAFETY: the caller's arguments (the kernel rejects the signal).
        return unsafe { __sigaction(sig, act, old) };
    };
    let tramp = trampoline as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize;
    // What a trampoline installed now stands for, to report in `old`.
    let mut before = (
        USER_HANDLER[slot].load(std::sync::atomic::Ordering::Acquire),
        USER_FLAGS[slot].load(std::sync::atomic::Ordering::Acquire),
    );
    // SAFETY: `act` is null or the caller's valid action.
    let wanted = unsafe { act.as_ref() };
    let mut wrapped: libc::sigaction;
    let act = match wanted {
        Some(a)
            if a.sa_sigaction != libc::SIG_DFL
                && a.sa_sigaction != libc::SIG_IGN
                && a.sa_sigaction != tramp =>
        {
            before = (
                USER_HANDLER[slot].swap(a.sa_sigaction, AcqRel),
                USER_FLAGS[slot].swap(a.sa_flags, AcqRel),
            );
            wrapped = *a;
            wrapped.sa_sigaction = tramp;
            wrapped.sa_flags |= libc::SA_SIGINFO;
            &wrapped as *const libc::sigaction
        }
        _ => act,
    };
    // SAFETY: valid actions (the caller's, or our copy of it).
    let r = unsafe { __sigaction(sig, act, old) };
    if r != 0 {
        if wanted
            .is_some_and(|a| a.sa_sigaction != libc::SIG_DFL && a.sa_sigaction != libc::SIG_IGN)
        {
            USER_HANDLER[slot].store(before.0, std::sync::atomic::Ordering::Release);
            USER_FLAGS[slot].store(before.1, std::sync::atomic::Ordering::Release);
        }
        return r;
    }
    // SAFETY: `old` is null or the caller's buffer, which the call filled.
    if let Some(o) = unsafe { old.as_mut() } {
        if o.sa_sigaction == tramp {
            o.sa_sigaction = before.0;
            o.sa_flags = (o.sa_flags & !libc::SA_SIGINFO) | (before.1 & libc::SA_SIGINFO);
        }
    }
    r
}

/// `signal(3)` (glibc's BSD semantics: `SA_RESTART`, the signal blocked in
/// its handler), through the `sigaction` above so the handler is wrapped.
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: an all-zero sigaction is valid; the sets are initialized.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        let mut old: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        libc::sigemptyset(&mut act.sa_mask);
        if sig > 0 && sig < 65 {
            libc::sigaddset(&mut act.sa_mask, sig);
        }
        act.sa_flags = libc::SA_RESTART;
        if sigaction(sig, &act, &mut old) != 0 {
            return libc::SIG_ERR;
        }
        old.sa_sigaction
    }
}

/// `bsd_signal(3)`: `signal`.
#[no_mangle]
pub unsafe extern "C" fn bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: the caller's arguments.
    unsafe { signal(sig, handler) }
}

type PthreadJoinFn = unsafe extern "C" fn(libc::pthread_t, *mut *mut c_void) -> c_int;

/// `pthread_join(3)`: std's `JoinHandle::join` of a plain thread. In a
/// coroutine, a thread that has finished is joined at once
/// (`pthread_tryjoin_np`); one still running is joined on the blocking
/// pool while the coroutine parks (any thread may join another).
#[no_mangle]
pub unsafe extern "C" fn pthread_join(thread: libc::pthread_t, retval: *mut *mut c_void) -> c_int {
    let Some(real) = next_fn!("pthread_join", PthreadJoinFn) else {
        return libc::ENOSYS;
    };
    if !active() {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        return unsafe { real(thread, retval) };
    }
    // SAFETY: as above: a try that does not wait (its result is `EBUSY`
    // while the thread runs, or the join's own).
    let r = unsafe { libc::pthread_tryjoin_np(thread, retval) };
    if r != libc::EBUSY {
        return r;
    }
    let out = AssertSend(retval);
    super::offload(move || {
        let out = out;
        // SAFETY: as above; `offload` returns only once this call is done,
        // so `retval` is written while the caller still waits for it.
        unsafe { real(thread, out.0) }
    })
    .unwrap_or_else(|| {
        // SAFETY: the caller's arguments, passed to libc's function unchanged.
        unsafe { real(thread, retval) }
    })
}
