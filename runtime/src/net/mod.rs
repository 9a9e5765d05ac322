//! Networking with std's API that parks the coroutine, not the worker.
//!
//! Sockets are non-blocking underneath (mio). An operation tries the system
//! call; when it would block inside a coroutine on a worker, the socket is
//! registered (edge-triggered) with the poller of the worker the coroutine
//! runs on, and the coroutine parks until readiness or its timeout. The
//! registration follows the socket: a coroutine on another worker, or of
//! another runtime, that waits on it later moves it to its own worker's
//! poller (see `scheduler/driver.rs`). On a plain thread, and in the root
//! coroutine of `block_on` (which has its thread to itself), the same call
//! waits in `poll(2)` on the socket alone and leaves the registration as
//! it is, so the types work from threads too, and a socket set up in the
//! root is registered by the first coroutine that uses it. EOF and errors
//! come back exactly as the system call reports them, as std's do.
//!
//! mio rather than `polling`: it is the poller under tokio, edge-triggered
//! by default (one registration per socket, no re-arming per wait), and has
//! the eventfd waker the worker's sleep already uses.

/// `Read` and `Write` for a stream type and for shared references to it
/// (as std offers for `&TcpStream`), over its `io: Io<_>` field; and the
/// async I/O traits (futures-io's always, tokio's and hyper's with their
/// features), all through [`Io::poll_read`] and [`Io::poll_write`].
macro_rules! stream_io {
    ($t:ty) => {
        impl std::io::Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                std::io::Read::read(&mut &*self, buf)
            }
        }

        impl std::io::Read for &$t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.io.op($crate::net::Dir::Read, |mut s| {
                    std::io::Read::read(&mut s, buf)
                })
            }
        }

        impl std::io::Write for $t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                std::io::Write::write(&mut &*self, buf)
            }

            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        impl std::io::Write for &$t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.io.op($crate::net::Dir::Write, |mut s| {
                    std::io::Write::write(&mut s, buf)
                })
            }

            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        $crate::net::async_io!($t);
        $crate::net::async_io!(&$t);

        #[cfg(feature = "tokio")]
        impl tokio::io::AsyncRead for $t {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let dst = buf.initialize_unfilled();
                let r = std::task::ready!(self.io.poll_read(cx, dst));
                std::task::Poll::Ready(r.map(|n| buf.advance(n)))
            }
        }

        #[cfg(feature = "tokio")]
        impl tokio::io::AsyncWrite for $t {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.io.poll_write(cx, &[std::io::IoSlice::new(buf)])
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(self.shutdown(std::net::Shutdown::Write))
            }
        }

        #[cfg(feature = "hyper")]
        impl hyper::rt::Read for $t {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                mut buf: hyper::rt::ReadBufCursor<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                // SAFETY: only what the kernel reports it wrote is marked
                // filled (`poll_read_uninit`).
                let dst = unsafe { buf.as_mut() };
                let r = std::task::ready!(self.io.poll_read_uninit(cx, dst));
                // SAFETY: the read initialized `n` bytes.
                std::task::Poll::Ready(r.map(|n| unsafe { buf.advance(n) }))
            }
        }

        #[cfg(feature = "hyper")]
        impl hyper::rt::Write for $t {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.io.poll_write(cx, &[std::io::IoSlice::new(buf)])
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.io.poll_write(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(self.shutdown(std::net::Shutdown::Write))
            }
        }
    };
}

/// futures-io's `AsyncRead`/`AsyncWrite` for `$t` (a stream type or a
/// shared reference to one).
macro_rules! async_io {
    ($t:ty) => {
        impl futures_io::AsyncRead for $t {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.io.poll_read(cx, buf)
            }
        }

        impl futures_io::AsyncWrite for $t {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.io.poll_write(cx, &[std::io::IoSlice::new(buf)])
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.io.poll_write(cx, bufs)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(self.shutdown(std::net::Shutdown::Write))
            }
        }
    };
}
pub(crate) use async_io;
pub(crate) use stream_io;

mod tcp;
mod udp;
mod unix;

pub use tcp::{Incoming, TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixListener, UnixStream};

pub use std::net::Shutdown;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;

use crate::cancel::Point;
use crate::scheduler::driver::{
    polls_registered, waits_registered, Registration, READABLE, WRITABLE,
};

/// The direction an operation waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

impl Dir {
    fn bit(self) -> u8 {
        match self {
            Dir::Read => READABLE,
            Dir::Write => WRITABLE,
        }
    }
}

/// A non-blocking socket plus what waiting on it needs.
pub(crate) struct Io<S: AsRawFd> {
    pub(crate) sock: S,
    /// Set by the first operation in a coroutine on a worker, which
    /// registers the socket with that worker's driver; it moves with the
    /// coroutines that wait on it later (see `driver.rs`). A `block_on`
    /// root and a plain thread wait in `poll(2)` and leave it unset.
    reg: OnceCell<Registration>,
    /// Read and write timeouts in nanoseconds; `u64::MAX` is none.
    timeouts: [AtomicU64; 2],
}

const NO_TIMEOUT: u64 = u64::MAX;

impl<S: AsRawFd> Io<S> {
    pub(crate) fn new(sock: S) -> Io<S> {
        Io {
            sock,
            reg: OnceCell::new(),
            timeouts: [AtomicU64::new(NO_TIMEOUT), AtomicU64::new(NO_TIMEOUT)],
        }
    }

    /// std's `set_read_timeout`/`set_write_timeout`: `Some(0)` is an error.
    pub(crate) fn set_timeout(&self, dir: Dir, t: Option<Duration>) -> io::Result<()> {
        let nanos = match t {
            Some(d) if d.is_zero() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "cannot set a 0 duration timeout",
                ))
            }
            Some(d) => u64::try_from(d.as_nanos()).unwrap_or(NO_TIMEOUT - 1),
            None => NO_TIMEOUT,
        };
        self.timeouts[dir as usize].store(nanos, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn timeout(&self, dir: Dir) -> Option<Duration> {
        match self.timeouts[dir as usize].load(Ordering::Relaxed) {
            NO_TIMEOUT => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// Copies the timeouts to a clone.
    pub(crate) fn copy_timeouts_to<T: AsRawFd>(&self, other: &Io<T>) {
        for i in 0..2 {
            other.timeouts[i].store(self.timeouts[i].load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Runs `op` until it does not report `WouldBlock`, waiting for `dir`
    /// readiness in between, until the direction's timeout.
    pub(crate) fn op<R>(&self, dir: Dir, op: impl FnMut(&S) -> io::Result<R>) -> io::Result<R> {
        let deadline = self
            .timeout(dir)
            .and_then(|t| Instant::now().checked_add(t));
        self.op_until(dir, deadline, op)
    }

    /// As [`op`](Self::op) with an explicit deadline.
    pub(crate) fn op_until<R>(
        &self,
        dir: Dir,
        deadline: Option<Instant>,
        mut op: impl FnMut(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        let registered = waits_registered();
        // A cancellation point (see `crate::cancel`), made when first
        // needed: an operation ready at once costs no look at the limits.
        let mut point: Option<Point> = None;
        loop {
            let reg = if registered {
                Some(self.registration()?)
            } else {
                None
            };
            if let Some(r) = reg {
                r.state.clear(dir.bit());
            }
            // The socket is non-blocking already: its calls need no hook
            // (which would ask the kernel for its flags on every EAGAIN).
            match crate::hook::bypass(|| op(&self.sock)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
            let p = *point.get_or_insert_with(|| Point::new(deadline));
            if let Some(end) = p.ended() {
                if let Some(r) = reg {
                    // A waker left behind would keep the socket from
                    // moving to its next waiter's worker.
                    r.forget(dir.bit());
                }
                return Err(crate::cancel::io_error(end));
            }
            match reg {
                Some(r) => {
                    let fd = self.sock.as_raw_fd();
                    if r.wait(dir.bit(), &mut mio::unix::SourceFd(&fd))? {
                        crate::time::park_until(p.deadline());
                    }
                }
                None => poll_fd(self.sock.as_raw_fd(), dir, p.deadline())?,
            }
        }
    }

    /// `op` as a future's poll, tokio's way: tries it while the socket's
    /// `dir` bit says it may be ready; on `WouldBlock` clears the bit
    /// (unless an event came meanwhile), registers `cx`'s waker and returns
    /// `Pending`. A poll of a socket known not to be ready makes no system
    /// call; `drained` says a result shows the socket drained (a short
    /// read or write), which clears the bit too, saving the `EAGAIN`
    /// attempt after it. Only for a future polled by a coroutine on a
    /// worker (`spawn_future`, `block_on_future`), whose worker's poller
    /// then wakes it; anywhere else a `WouldBlock` is an `Unsupported`
    /// error.
    pub(crate) fn poll_op<R>(
        &self,
        dir: Dir,
        cx: &mut std::task::Context<'_>,
        drained: impl Fn(&R) -> bool,
        mut op: impl FnMut(&S) -> io::Result<R>,
    ) -> std::task::Poll<io::Result<R>> {
        use crate::scheduler::driver::IoState;
        use std::task::Poll;
        let reg = if polls_registered() {
            match self.registration() {
                Ok(r) => Some(r),
                Err(e) => return Poll::Ready(Err(e)),
            }
        } else {
            None
        };
        let bit = dir.bit();
        let fd = self.sock.as_raw_fd();
        loop {
            let snapshot = reg.map(|r| r.state.snapshot());
            if let (Some(r), Some(snap)) = (reg, snapshot) {
                if !IoState::is_ready(snap, bit) {
                    match r.wait_with(bit, &mut mio::unix::SourceFd(&fd), cx.waker().clone()) {
                        Ok(true) => return Poll::Pending,
                        // Readiness came meanwhile: try.
                        Ok(false) => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            match crate::hook::bypass(|| op(&self.sock)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(v) => {
                    if let (Some(r), Some(snap)) = (reg, snapshot) {
                        if drained(&v) {
                            r.state.clear_if_unchanged(bit, snap);
                        }
                    }
                    return Poll::Ready(Ok(v));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            let (Some(r), Some(snap)) = (reg, snapshot) else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "greenstack sockets are polled as futures only by coroutines on a \
                     worker (spawn_future, block_on_future in a coroutine)",
                )));
            };
            r.state.clear_if_unchanged(bit, snap);
        }
    }

    /// A future's read into `buf` ([`poll_op`](Self::poll_op)).
    pub(crate) fn poll_read(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        // SAFETY: same layout; the read only ever writes initialized bytes
        // into it, so `buf` stays initialized.
        let buf = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        self.poll_read_uninit(cx, buf)
    }

    /// A future's read into possibly uninitialized memory (hyper's
    /// buffers): the count returned is what the kernel wrote.
    pub(crate) fn poll_read_uninit(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [std::mem::MaybeUninit<u8>],
    ) -> std::task::Poll<io::Result<usize>> {
        let len = buf.len();
        self.poll_op(
            Dir::Read,
            cx,
            |&n| n > 0 && n < len,
            |s| {
                // SAFETY: `buf` is writable memory of `len` bytes; the
                // kernel only writes to it.
                let n = unsafe { libc::read(s.as_raw_fd(), buf.as_mut_ptr().cast(), len) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            },
        )
    }

    /// A future's (vectored) write of `bufs`.
    pub(crate) fn poll_write(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        // At most IOV_MAX (1024 on Linux) slices per call, as std's
        // `write_vectored` does: the rest goes in the next write.
        let count = bufs.len().min(1024);
        self.poll_op(
            Dir::Write,
            cx,
            |&n| n < len,
            |s| {
                // With `MSG_NOSIGNAL`, as std's socket writes: a peer that
                // closed is `EPIPE`, never a SIGPIPE. One slice (what hyper
                // writes for a small response: it copies the body after the
                // head) goes by `send`, which spares the kernel the copy-in
                // of a `msghdr` and an iovec array that `sendmsg` does.
                if let [one] = bufs {
                    // SAFETY: `one` is readable memory of `one.len()`
                    // bytes, alive for the call; the kernel only reads it.
                    let n = unsafe {
                        libc::send(
                            s.as_raw_fd(),
                            one.as_ptr().cast(),
                            one.len(),
                            libc::MSG_NOSIGNAL,
                        )
                    };
                    return if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    };
                }
                // SAFETY: zeroed is a valid empty `msghdr`.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                // `IoSlice` is ABI-compatible with `iovec`; `bufs` holds
                // `count` of them, each readable, and the kernel only
                // reads them.
                msg.msg_iov = bufs.as_ptr().cast_mut().cast();
                msg.msg_iovlen = count as _;
                // SAFETY: `msg` points at `bufs`, alive for the call.
                let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            },
        )
    }

    /// The registration, made with the calling coroutine's worker on first
    /// use; call only where [`waits_registered`] holds.
    fn registration(&self) -> io::Result<&Registration> {
        let fd = self.sock.as_raw_fd();
        self.reg.get_or_try_init(|| {
            // A socket first used through the blocking-call hooks (then
            // wrapped) may still be registered for them here.
            crate::scheduler::driver::drop_hook_registration(fd);
            Registration::new(&mut mio::unix::SourceFd(&fd))
        })
    }
}

impl<S: AsRawFd> Drop for Io<S> {
    fn drop(&mut self) {
        if let Some(r) = self.reg.get() {
            r.deregister(&mut mio::unix::SourceFd(&self.sock.as_raw_fd()));
        }
    }
}

/// Waits in `poll(2)` for `fd` to be ready for `dir`, until `deadline`.
fn poll_fd(fd: RawFd, dir: Dir, deadline: Option<Instant>) -> io::Result<()> {
    let events = match dir {
        Dir::Read => libc::POLLIN,
        Dir::Write => libc::POLLOUT,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let timeout_ms = match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            // Round up so we never wake before the deadline.
            i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
        }
    };
    // SAFETY: one valid pollfd on our stack, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Duplicates `fd` (close-on-exec), for `try_clone`.
pub(crate) fn dup(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh fd owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// An accept that waits at most `timeout` (`accept_timeout` of both
/// listeners): `TimedOut` if no connection came, never early.
pub(crate) fn accept_until<S: AsRawFd, R>(
    io: &Io<S>,
    timeout: std::time::Duration,
    accept: impl FnMut(&S) -> io::Result<R>,
) -> io::Result<R> {
    let deadline = Instant::now().checked_add(timeout);
    io.op_until(Dir::Read, deadline, accept).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no connection came before the timeout",
            )
        } else {
            e
        }
    })
}
