//! TCP with std's API, parking coroutines.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use super::{dup, Dir, Io};

/// A TCP socket server, as [`std::net::TcpListener`]; `accept` parks the
/// coroutine until a connection arrives.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use greenstack_runtime::net::{TcpListener, TcpStream};
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| {
///     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
///     let addr = listener.local_addr().unwrap();
///     let server = greenstack_runtime::spawn(move || {
///         let (mut s, _) = listener.accept().unwrap();
///         let mut buf = [0; 5];
///         s.read_exact(&mut buf).unwrap();
///         s.write_all(&buf).unwrap();
///     });
///     let mut c = TcpStream::connect(addr).unwrap();
///     c.write_all(b"hello").unwrap();
///     let mut back = [0; 5];
///     c.read_exact(&mut back).unwrap();
///     assert_eq!(&back, b"hello");
///     server.join().unwrap();
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct TcpListener {
    io: Io<mio::net::TcpListener>,
}

/// A TCP connection, as [`std::net::TcpStream`]; reads and writes park the
/// coroutine until the socket is ready.
pub struct TcpStream {
    io: Io<mio::net::TcpStream>,
}

impl TcpListener {
    /// Binds to the first address that works, as std's `bind`.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let std = std::net::TcpListener::bind(addr)?;
        TcpListener::from_std(std)
    }

    /// Wraps a std listener (made non-blocking here).
    pub fn from_std(l: std::net::TcpListener) -> io::Result<TcpListener> {
        l.set_nonblocking(true)?;
        Ok(TcpListener {
            io: Io::new(mio::net::TcpListener::from_std(l)),
        })
    }

    /// Waits for a connection.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, addr) = self.io.op(Dir::Read, |l| l.accept())?;
        crate::scheduler::worker::note_accept();
        Ok((TcpStream { io: Io::new(s) }, addr))
    }

    /// Waits at most `timeout` for a connection; `ErrorKind::TimedOut` if
    /// none came (never early, unless the coroutine is cancelled: see
    /// [`crate::cancel`]).
    pub fn accept_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, addr) = super::accept_until(&self.io, timeout, |l| l.accept())?;
        crate::scheduler::worker::note_accept();
        Ok((TcpStream { io: Io::new(s) }, addr))
    }

    /// An endless iterator of `accept`ed connections.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.local_addr()
    }

    /// A second handle to the same socket.
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        let fd = dup(self.io.sock.as_raw_fd())?;
        Ok(TcpListener {
            io: Io::new(mio::net::TcpListener::from_std(
                std::net::TcpListener::from(fd),
            )),
        })
    }

    /// Sets the IP time-to-live.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.io.sock.set_ttl(ttl)
    }

    /// The IP time-to-live.
    pub fn ttl(&self) -> io::Result<u32> {
        self.io.sock.ttl()
    }

    /// The pending socket error, if any (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.sock.take_error()
    }
}

/// Iterator over connections; see [`TcpListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

impl TcpStream {
    /// Connects to the first address that accepts, as std's `connect`.
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        each_addr(addr, |a| TcpStream::connect_until(a, None))
    }

    /// Connects to `addr`, failing with `TimedOut` after `timeout`.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        if timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        TcpStream::connect_until(*addr, Instant::now().checked_add(timeout))
    }

    fn connect_until(addr: SocketAddr, deadline: Option<Instant>) -> io::Result<TcpStream> {
        let stream = TcpStream {
            io: Io::new(mio::net::TcpStream::connect(addr)?),
        };
        // The connection is established once the socket is writable and
        // reports no error and a peer.
        let r = stream.io.op_until(Dir::Write, deadline, |s| {
            if let Some(e) = s.take_error()? {
                return Err(e);
            }
            match s.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Err(e) => Err(e),
            }
        });
        match r {
            Ok(()) => Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            )),
            Err(e) => Err(e),
        }
    }

    /// Wraps a connected std stream (made non-blocking here).
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        s.set_nonblocking(true)?;
        Ok(TcpStream {
            io: Io::new(mio::net::TcpStream::from_std(s)),
        })
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.local_addr()
    }

    /// Shuts down the read, write, or both halves.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.sock.shutdown(how)
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.sock.set_nodelay(nodelay)
    }

    /// Reads `TCP_NODELAY`.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.io.sock.nodelay()
    }

    /// Sets the IP time-to-live.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.io.sock.set_ttl(ttl)
    }

    /// The IP time-to-live.
    pub fn ttl(&self) -> io::Result<u32> {
        self.io.sock.ttl()
    }

    /// Limits how long a read waits; `None` waits forever. A read that times
    /// out fails with `WouldBlock`, as std's does on Unix. `Some(0)` is an
    /// error.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Read, t)
    }

    /// Limits how long a write waits; as [`set_read_timeout`](Self::set_read_timeout).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Write, t)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.io.timeout(Dir::Read))
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.io.timeout(Dir::Write))
    }

    /// Reads without consuming.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.op(Dir::Read, |s| s.peek(buf))
    }

    /// A second handle to the same connection (timeouts copied).
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        let fd = dup(self.io.sock.as_raw_fd())?;
        let s = TcpStream {
            io: Io::new(mio::net::TcpStream::from_std(std::net::TcpStream::from(fd))),
        };
        self.io.copy_timeouts_to(&s.io);
        Ok(s)
    }

    /// The pending socket error, if any (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.sock.take_error()
    }
}

/// Tries `f` on each address in turn; the last error if none works.
pub(crate) fn each_addr<T>(
    addr: impl ToSocketAddrs,
    mut f: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for a in crate::hook::resolve(addr)? {
        match f(a) {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any addresses",
        )
    }))
}

super::stream_io!(TcpStream);

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.sock.as_raw_fd()
    }
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.sock.as_fd()
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.io.sock.as_raw_fd()
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local", &self.local_addr().ok())
            .finish()
    }
}
