//! Unix-domain stream sockets with std's API, parking coroutines.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{dup, Dir, Io};

/// A Unix-domain socket server, as [`std::os::unix::net::UnixListener`].
pub struct UnixListener {
    io: Io<mio::net::UnixListener>,
}

/// A Unix-domain stream, as [`std::os::unix::net::UnixStream`].
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use greenstack_runtime::net::UnixStream;
/// let (mut a, mut b) = UnixStream::pair()?;
/// a.write_all(b"hi")?;
/// let mut buf = [0; 2];
/// b.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"hi");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UnixStream {
    io: Io<mio::net::UnixStream>,
}

impl UnixListener {
    /// Binds to `path`.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        Ok(UnixListener {
            io: Io::new(mio::net::UnixListener::bind(path)?),
        })
    }

    /// Waits for a connection.
    pub fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (s, addr) = self.io.op(Dir::Read, |l| l.accept())?;
        crate::scheduler::worker::note_accept();
        Ok((UnixStream { io: Io::new(s) }, addr))
    }

    /// Waits at most `timeout` for a connection; `ErrorKind::TimedOut` if
    /// none came (never early, unless the coroutine is cancelled: see
    /// [`crate::cancel`]).
    pub fn accept_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> io::Result<(UnixStream, SocketAddr)> {
        let (s, addr) = super::accept_until(&self.io, timeout, |l| l.accept())?;
        crate::scheduler::worker::note_accept();
        Ok((UnixStream { io: Io::new(s) }, addr))
    }

    /// An endless iterator of accepted connections.
    pub fn incoming(&self) -> impl Iterator<Item = io::Result<UnixStream>> + '_ {
        std::iter::repeat_with(move || self.accept().map(|(s, _)| s))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.local_addr()
    }

    /// The pending socket error, if any.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.sock.take_error()
    }
}

impl UnixStream {
    /// Connects to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let s = UnixStream {
            io: Io::new(mio::net::UnixStream::connect(path)?),
        };
        s.io.op(Dir::Write, |s| match s.take_error()? {
            Some(e) => Err(e),
            None => match s.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Err(e) => Err(e),
            },
        })?;
        Ok(s)
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = mio::net::UnixStream::pair()?;
        Ok((UnixStream { io: Io::new(a) }, UnixStream { io: Io::new(b) }))
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.local_addr()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.peer_addr()
    }

    /// Shuts down one or both halves.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.sock.shutdown(how)
    }

    /// Limits how long a read waits (`WouldBlock` on timeout).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Read, t)
    }

    /// Limits how long a write waits.
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

    /// A second handle to the same stream (timeouts copied).
    pub fn try_clone(&self) -> io::Result<UnixStream> {
        let fd = dup(self.io.sock.as_raw_fd())?;
        let s = UnixStream {
            io: Io::new(mio::net::UnixStream::from_std(
                std::os::unix::net::UnixStream::from(fd),
            )),
        };
        self.io.copy_timeouts_to(&s.io);
        Ok(s)
    }

    /// The pending socket error, if any.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.sock.take_error()
    }
}

super::stream_io!(UnixStream);

impl AsRawFd for UnixStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.sock.as_raw_fd()
    }
}

impl AsRawFd for UnixListener {
    fn as_raw_fd(&self) -> RawFd {
        self.io.sock.as_raw_fd()
    }
}

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixStream").finish_non_exhaustive()
    }
}

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixListener").finish_non_exhaustive()
    }
}
