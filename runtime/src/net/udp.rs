//! UDP with std's API, parking coroutines.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use super::tcp::each_addr;
use super::{dup, Dir, Io};

/// A UDP socket, as [`std::net::UdpSocket`]; receives park the coroutine
/// until a datagram arrives.
///
/// # Examples
///
/// ```
/// use greenstack_runtime::net::UdpSocket;
/// let a = UdpSocket::bind("127.0.0.1:0")?;
/// let b = UdpSocket::bind("127.0.0.1:0")?;
/// a.send_to(b"ping", b.local_addr()?)?;
/// let mut buf = [0; 4];
/// let (n, from) = b.recv_from(&mut buf)?;
/// assert_eq!((&buf[..n], from), (&b"ping"[..], a.local_addr()?));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UdpSocket {
    io: Io<mio::net::UdpSocket>,
}

impl UdpSocket {
    /// Binds to the first address that works.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        each_addr(addr, |a| {
            Ok(UdpSocket {
                io: Io::new(mio::net::UdpSocket::bind(a)?),
            })
        })
    }

    /// Wraps a std socket (made non-blocking here).
    pub fn from_std(s: std::net::UdpSocket) -> io::Result<UdpSocket> {
        s.set_nonblocking(true)?;
        Ok(UdpSocket {
            io: Io::new(mio::net::UdpSocket::from_std(s)),
        })
    }

    /// Sends a datagram to `addr`.
    pub fn send_to(&self, buf: &[u8], addr: impl ToSocketAddrs) -> io::Result<usize> {
        let target = crate::hook::resolve(addr)?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no addresses to send data to")
        })?;
        self.io.op(Dir::Write, |s| s.send_to(buf, target))
    }

    /// Receives a datagram and its sender.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io.op(Dir::Read, |s| s.recv_from(buf))
    }

    /// Receives a datagram without consuming it.
    pub fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io.op(Dir::Read, |s| s.peek_from(buf))
    }

    /// Sets the default peer for `send` and `recv`.
    pub fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<()> {
        each_addr(addr, |a| self.io.sock.connect(a))
    }

    /// Sends to the connected peer.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.io.op(Dir::Write, |s| s.send(buf))
    }

    /// Receives from the connected peer.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.op(Dir::Read, |s| s.recv(buf))
    }

    /// Receives from the connected peer without consuming.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.op(Dir::Read, |s| s.peek(buf))
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.local_addr()
    }

    /// The connected peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.peer_addr()
    }

    /// Limits how long a receive waits (`WouldBlock` on timeout).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Read, t)
    }

    /// Limits how long a send waits.
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

    /// Sets `SO_BROADCAST`.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.io.sock.set_broadcast(on)
    }

    /// Reads `SO_BROADCAST`.
    pub fn broadcast(&self) -> io::Result<bool> {
        self.io.sock.broadcast()
    }

    /// Sets the IP time-to-live.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.io.sock.set_ttl(ttl)
    }

    /// The IP time-to-live.
    pub fn ttl(&self) -> io::Result<u32> {
        self.io.sock.ttl()
    }

    /// A second handle to the same socket (timeouts copied).
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        let fd = dup(self.io.sock.as_raw_fd())?;
        let s = UdpSocket {
            io: Io::new(mio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))),
        };
        self.io.copy_timeouts_to(&s.io);
        Ok(s)
    }

    /// The pending socket error, if any.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.sock.take_error()
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.sock.as_raw_fd()
    }
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local", &self.local_addr().ok())
            .finish()
    }
}
