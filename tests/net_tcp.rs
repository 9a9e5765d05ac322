//! `greenstack::net` with std's semantics, from coroutines (and threads):
//!
//! - a TCP echo server (an accepting coroutine, one echo coroutine per
//!   connection) serving 1,000 concurrent client connections on a second
//!   runtime, each sending 64 KiB derived from its index and checking the
//!   echo byte for byte;
//! - clients that reset their connection mid-transfer (SO_LINGER 0, then
//!   close: an RST) while others are served: those others all verify and
//!   every echo coroutine ends;
//! - EOF after `shutdown(Write)`, full-duplex transfer on cloned handles,
//!   read timeouts (`WouldBlock` after at least the timeout, as std on
//!   Unix), a refused connect (`ConnectionRefused`, as std), a UDP round
//!   trip and a Unix-socket round trip inside coroutines.
//!
//! File descriptors: 1,000 client plus 1,000 server sockets need more than
//! the usual soft limit of 1024, so [`raise_fd_limit`] lifts this process's
//! soft `RLIMIT_NOFILE` to its hard limit (with `setrlimit`) before the
//! socket-heavy tests, and fails clearly if even the hard limit is too low.
//!
//! Timing: only lower bounds are asserted (a timeout never fires early).
//! Every test runs under a hang guard.

mod common;
#[allow(unused_imports)]
use common::*;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use greenstack::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use greenstack::sync::Barrier;
use greenstack::{JoinHandle, Runtime};

/// File descriptors the socket-heavy tests need at once (they may run in
/// parallel): 1,000 + 1,000 for the big echo test, a few hundred for the
/// others, and slack for runtimes, epoll and eventfds.
const FDS_NEEDED: u64 = 4_096;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (once) and
/// returns the soft limit now in force. Panics if the hard limit is below
/// [`FDS_NEEDED`], naming the limit to raise.
fn raise_fd_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: setrlimit reads one valid `rlimit`; raising the soft
            // limit up to the hard one needs no privilege.
            let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
            assert_eq!(rc, 0, "setrlimit: {}", io::Error::last_os_error());
            lim = raised;
        }
        let soft: u64 = lim.rlim_cur;
        assert!(
            soft >= FDS_NEEDED,
            "these tests need {FDS_NEEDED} file descriptors; the hard RLIMIT_NOFILE is {soft} \
             (raise it, e.g. `ulimit -Hn {FDS_NEEDED}` as root)"
        );
        soft
    })
}

/// Fills `buf` with connection `conn`'s message bytes starting at `offset`
/// (a multiple of 8): a splitmix64 stream seeded by the connection index,
/// so every connection sends different bytes.
fn fill(conn: u64, offset: usize, buf: &mut [u8]) {
    debug_assert_eq!(offset % 8, 0);
    for (i, word) in buf.chunks_mut(8).enumerate() {
        let mut z = (conn << 40) ^ (offset / 8 + i) as u64;
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
    }
}

/// Where two buffers first differ, for error messages.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Echoes everything read on `s` back until EOF; the bytes echoed, or the
/// first error.
fn echo(mut s: TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        s.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// What one echo coroutine reports: the client's address and how its
/// connection ended.
type EchoReport = (SocketAddr, io::Result<u64>);

/// Binds an echo server on `rt`: one coroutine accepts exactly `conns`
/// connections, spawning an [`echo`] coroutine for each, then joins them
/// all. Returns the address and the accepting coroutine, whose value is
/// every connection's report and the most connections open at once.
fn echo_server(rt: &Runtime, conns: usize) -> (SocketAddr, JoinHandle<(Vec<EchoReport>, usize)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    // std (and mio) listen with a backlog of 128; 1,000 simultaneous
    // connects would overflow it and wait for SYN retransmits. Listening
    // again only updates the backlog (the kernel caps it at somaxconn).
    // SAFETY: listen(2) on a socket fd we own, already listening.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 4_096) };
    assert_eq!(rc, 0, "listen: {}", io::Error::last_os_error());
    let addr = listener.local_addr().expect("local_addr");
    let server = rt.spawn(move || {
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let mut handlers = Vec::with_capacity(conns);
        for _ in 0..conns {
            let (s, peer) = listener.accept().expect("accept");
            let n = open.fetch_add(1, Ordering::SeqCst) + 1;
            max_open.fetch_max(n, Ordering::SeqCst);
            let open = Arc::clone(&open);
            handlers.push(greenstack::spawn(move || {
                let r = echo(s);
                open.fetch_sub(1, Ordering::SeqCst);
                (peer, r)
            }));
        }
        let reports = handlers
            .into_iter()
            .map(|h| h.join().expect("an echo coroutine does not panic"))
            .collect();
        (reports, max_open.load(Ordering::SeqCst))
    });
    (addr, server)
}

/// Message size per connection in the big echo test.
const MSG: usize = 64 * 1024;
/// Bytes written before reading their echo back: at most this much is in
/// flight per connection, so neither side can fill both socket buffers.
const CHUNK: usize = 16 * 1024;

/// A well-behaved client: connects, waits at `gate` until every client is
/// connected, sends its [`MSG`] bytes in [`CHUNK`]s, checking each chunk's
/// echo byte for byte, then shuts down writing and expects EOF.
fn good_client(addr: SocketAddr, conn: u64, gate: Option<Arc<Barrier>>) -> Result<(), String> {
    let connected = TcpStream::connect(addr).map_err(|e| format!("conn {conn}: connect: {e}"));
    if let Some(gate) = gate {
        // Even a client that failed to connect passes the gate, so the
        // others are not left waiting for it.
        gate.wait();
    }
    let mut s = connected?;
    let mut out = vec![0u8; CHUNK];
    let mut back = vec![0u8; CHUNK];
    for off in (0..MSG).step_by(CHUNK) {
        fill(conn, off, &mut out);
        s.write_all(&out)
            .map_err(|e| format!("conn {conn}: write at {off}: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("conn {conn}: read at {off}: {e}"))?;
        if let Some(i) = first_difference(&out, &back) {
            return Err(format!("conn {conn}: echo differs at byte {}", off + i));
        }
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("conn {conn}: shutdown: {e}"))?;
    match s.read(&mut back) {
        Ok(0) => Ok(()),
        other => Err(format!("conn {conn}: expected EOF, got {other:?}")),
    }
}

/// Sets SO_LINGER to {on, 0 s} on `s`, so closing it sends an RST.
fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a valid
    // `linger` on our stack; the fd is the stream's, open for this call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        io::Error::last_os_error()
    );
}

/// An abrupt client: sends part of its message, reads some of the echo
/// (so the server is serving it, mid-transfer), then resets the
/// connection. Returns its local address.
fn abrupt_client(addr: SocketAddr, conn: u64) -> io::Result<SocketAddr> {
    let mut s = TcpStream::connect(addr)?;
    let local = s.local_addr()?;
    let mut out = vec![0u8; 24 * 1024];
    fill(conn, 0, &mut out);
    s.write_all(&out)?;
    let mut back = [0u8; 1024];
    s.read_exact(&mut back)?;
    assert_eq!(&back[..], &out[..1024], "the start of the echo");
    set_linger_zero(&s);
    drop(s);
    Ok(local)
}

#[test]
fn echo_one_thousand_concurrent_connections() {
    raise_fd_limit();
    bounded("1,000 echo connections", || {
        const CONNS: usize = 1_000;
        let server_rt = runtime(2);
        let client_rt = runtime(2);
        let (addr, server) = echo_server(&server_rt, CONNS);
        // Every client holds its connection open at the gate until all
        // 1,000 are connected: 1,000 concurrent connections.
        let gate = Arc::new(Barrier::new(CONNS));
        let t = Instant::now();
        let clients: Vec<JoinHandle<Result<(), String>>> = (0..CONNS as u64)
            .map(|conn| {
                let gate = Arc::clone(&gate);
                client_rt.spawn(move || good_client(addr, conn, Some(gate)))
            })
            .collect();
        let failures: Vec<String> = clients
            .into_iter()
            .filter_map(|h| h.join().expect("a client does not panic").err())
            .collect();
        assert!(
            failures.is_empty(),
            "{} clients failed, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        let (reports, max_open) = server.join().expect("the server does not panic");
        assert_eq!(reports.len(), CONNS);
        for (peer, r) in &reports {
            assert_eq!(r.as_ref().ok(), Some(&(MSG as u64)), "echo to {peer}");
        }
        println!(
            "{CONNS} connections x {} KiB echoed in {:?}; at most {max_open} served at once",
            MSG / 1024,
            t.elapsed()
        );
        assert_no_nofault_violations(&server_rt);
        assert_no_nofault_violations(&client_rt);
    });
}

/// Abrupt clients reset their connections mid-transfer, interleaved with
/// good clients: every good client verifies, every echo coroutine ends
/// (the reset ones with `ConnectionReset` or `BrokenPipe`), and the server
/// goes on accepting throughout.
#[test]
fn echo_survives_clients_resetting_mid_transfer() {
    raise_fd_limit();
    bounded("abrupt clients", || {
        const GOOD: usize = 150;
        const BAD: usize = 50;
        let server_rt = runtime(2);
        let client_rt = runtime(2);
        let (addr, server) = echo_server(&server_rt, GOOD + BAD);
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for conn in 0..(GOOD + BAD) as u64 {
            if conn % 4 == 1 {
                bad.push(client_rt.spawn(move || abrupt_client(addr, conn)));
            } else {
                good.push(client_rt.spawn(move || good_client(addr, conn, None)));
            }
        }
        for h in good {
            h.join()
                .expect("a client does not panic")
                .expect("a good client");
        }
        let reset: Vec<SocketAddr> = bad
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("an abrupt client does not panic")
                    .expect("an abrupt client gets as far as its reset")
            })
            .collect();
        let (reports, _) = server.join().expect("the server does not panic");
        assert_eq!(reports.len(), GOOD + BAD);
        for (peer, r) in &reports {
            if reset.contains(peer) {
                let e = r.as_ref().expect_err("a reset connection ends in an error");
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ),
                    "reset connection {peer}: {e:?}"
                );
            } else {
                assert_eq!(r.as_ref().ok(), Some(&(MSG as u64)), "echo to {peer}");
            }
        }
        // The server still serves after all that.
        let (addr, server) = echo_server(&server_rt, 1);
        client_rt
            .spawn(move || good_client(addr, 7, None))
            .join()
            .unwrap()
            .unwrap();
        server.join().unwrap();
        assert_no_nofault_violations(&server_rt);
        assert_no_nofault_violations(&client_rt);
    });
}

/// Writes `msg` to `s`, shuts down writing, and reads the echo to EOF:
/// the echo equals `msg`, and `read` keeps returning `Ok(0)` after it.
fn eof_round_trip(mut s: TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(first_difference(&back, msg), None);
    assert_eq!(back.len(), msg.len());
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "EOF again");
    assert_eq!(s.read(&mut buf).unwrap(), 0, "and again");
}

#[test]
fn shutdown_write_gets_echo_then_eof() {
    raise_fd_limit();
    bounded("EOF", || {
        let rt = runtime(2);
        let (addr, server) = echo_server(&rt, 2);
        let mut msg = vec![0u8; 40 * 1024];
        fill(99, 0, &mut msg);
        let m = msg.clone();
        // From a coroutine...
        rt.spawn(move || eof_round_trip(TcpStream::connect(addr).unwrap(), &m))
            .join()
            .unwrap();
        // ...and from a plain thread.
        thread::spawn(move || eof_round_trip(TcpStream::connect(addr).unwrap(), &msg))
            .join()
            .unwrap();
        let (reports, _) = server.join().unwrap();
        for (_, r) in reports {
            assert_eq!(r.unwrap(), 40 * 1024);
        }
        assert_no_nofault_violations(&rt);
    });
}

/// Full duplex: per connection, one coroutine writes 1 MiB while another
/// reads the echo at the same time (they may run on different workers);
/// the echo verifies. Even connections give the writer a `try_clone`d
/// handle; odd ones share one `TcpStream` (through `&TcpStream`), so both
/// directions wait on the same registration.
#[test]
fn full_duplex_on_cloned_and_shared_streams() {
    raise_fd_limit();
    bounded("full duplex", || {
        const CONNS: usize = 8;
        const LEN: usize = 1 << 20;
        let server_rt = runtime(2);
        let client_rt = runtime(2);
        let (addr, server) = echo_server(&server_rt, CONNS);
        let clients: Vec<JoinHandle<()>> = (0..CONNS as u64)
            .map(|conn| {
                client_rt.spawn(move || {
                    let r = Arc::new(TcpStream::connect(addr).unwrap());
                    let w = if conn % 2 == 0 {
                        Arc::new(r.try_clone().unwrap())
                    } else {
                        Arc::clone(&r)
                    };
                    let writer = greenstack::spawn(move || {
                        let mut buf = vec![0u8; 32 * 1024];
                        for off in (0..LEN).step_by(buf.len()) {
                            fill(conn, off, &mut buf);
                            (&*w).write_all(&buf).unwrap();
                        }
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut r = &*r;
                    let mut got = vec![0u8; 32 * 1024];
                    let mut want = vec![0u8; 32 * 1024];
                    for off in (0..LEN).step_by(got.len()) {
                        r.read_exact(&mut got).unwrap();
                        fill(conn, off, &mut want);
                        assert_eq!(first_difference(&got, &want), None, "conn {conn} at {off}");
                    }
                    assert_eq!(r.read(&mut got).unwrap(), 0);
                    writer.join().unwrap();
                })
            })
            .collect();
        clients.into_iter().for_each(|h| h.join().unwrap());
        let (reports, _) = server.join().unwrap();
        for (_, r) in reports {
            assert_eq!(r.unwrap(), LEN as u64);
        }
        assert_no_nofault_violations(&server_rt);
        assert_no_nofault_violations(&client_rt);
    });
}

/// Streams connected by one coroutine, then used by coroutines spawned
/// afresh each round (so a stream's user moves between the workers from
/// round to round, and its registration with it), on the server's runtime
/// as in the `tcp_echo` bench: every round trip gets its echo back, and a
/// read timeout turns a lost wake-up into a failure instead of a hang. The
/// server ends with every connection's bytes accounted for.
#[test]
fn streams_handed_between_coroutines_keep_echoing() {
    raise_fd_limit();
    bounded("handed-over streams", || {
        const CONNS: usize = 64;
        const ROUNDS: usize = 6;
        const TRIPS: usize = 50;
        let rt = runtime(2);
        let (addr, server) = echo_server(&rt, CONNS);
        let mut streams: Vec<TcpStream> = rt
            .spawn(move || {
                (0..CONNS)
                    .map(|_| {
                        let s = TcpStream::connect(addr).unwrap();
                        s.set_nodelay(true).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        s
                    })
                    .collect()
            })
            .join()
            .unwrap();
        for round in 0..ROUNDS {
            let all = std::mem::take(&mut streams);
            streams = rt
                .spawn(move || {
                    let users: Vec<JoinHandle<TcpStream>> = all
                        .into_iter()
                        .enumerate()
                        .map(|(i, mut s)| {
                            greenstack::spawn(move || {
                                let mut out = [0u8; 64];
                                let mut back = [0u8; 64];
                                for trip in 0..TRIPS {
                                    fill(i as u64, (round * TRIPS + trip) * 64, &mut out);
                                    s.write_all(&out).unwrap();
                                    s.read_exact(&mut back).unwrap_or_else(|e| {
                                        panic!("conn {i}, round {round}, trip {trip}: {e}")
                                    });
                                    assert_eq!(out, back, "conn {i}, round {round}, trip {trip}");
                                }
                                s
                            })
                        })
                        .collect();
                    users.into_iter().map(|u| u.join().unwrap()).collect()
                })
                .join()
                .unwrap();
        }
        drop(streams);
        let (reports, _) = server.join().unwrap();
        for (_, r) in reports {
            assert_eq!(r.unwrap(), (ROUNDS * TRIPS * 64) as u64);
        }
        assert_no_nofault_violations(&rt);
    });
}

/// `set_read_timeout(50 ms)` on a stream nobody writes to: `read` fails
/// with `WouldBlock` (std's kind on Unix; `TimedOut` also accepted) after
/// at least 50 ms, in a coroutine and on a plain thread; the stream still
/// works afterwards. A zero timeout is rejected with `InvalidInput`, as
/// std does.
#[test]
fn read_timeout_on_idle_stream() {
    raise_fd_limit();
    bounded("read timeout", || {
        let rt = runtime(2);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt.spawn(move || {
            let mut streams = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                // Idle until the client has timed out once; then one byte.
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                s.write_all(b"!").unwrap();
                streams.push(s);
            }
            streams
        });
        let client = |s: TcpStream| {
            let timeout = Duration::from_millis(50);
            assert_eq!(
                s.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            s.set_read_timeout(Some(timeout)).unwrap();
            assert_eq!(s.read_timeout().unwrap(), Some(timeout));
            let mut buf = [0u8; 8];
            let t = Instant::now();
            let e = (&s).read(&mut buf).expect_err("nothing to read");
            let elapsed = t.elapsed();
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "timed-out read: {e:?}"
            );
            assert!(elapsed >= timeout, "read timed out after {elapsed:?}");
            (&s).write_all(b"?").unwrap();
            s.set_read_timeout(None).unwrap();
            assert_eq!((&s).read(&mut buf).unwrap(), 1);
            assert_eq!(buf[0], b'!');
        };
        rt.spawn(move || client(TcpStream::connect(addr).unwrap()))
            .join()
            .unwrap();
        thread::spawn(move || client(TcpStream::connect(addr).unwrap()))
            .join()
            .unwrap();
        drop(server.join().unwrap());

        // std's own behaviour, for comparison: WouldBlock on Unix.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let e = (&s).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_no_nofault_violations(&rt);
    });
}

/// Four acceptor coroutines share one listener (through an `Arc`) and
/// serve 200 connections between them: each connection is accepted
/// exactly once, and the acceptors end when told to (by a zero-byte
/// "stop" connection each).
#[test]
fn several_acceptors_share_one_listener() {
    raise_fd_limit();
    bounded("shared listener", || {
        const ACCEPTORS: usize = 4;
        const CONNS: u64 = 200;
        let rt = runtime(2);
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
        let addr = listener.local_addr().unwrap();
        let acceptors: Vec<JoinHandle<Vec<u64>>> = (0..ACCEPTORS)
            .map(|_| {
                let listener = Arc::clone(&listener);
                rt.spawn(move || {
                    let mut ids = Vec::new();
                    loop {
                        let (mut s, _) = listener.accept().unwrap();
                        let mut id = [0u8; 8];
                        match s.read_exact(&mut id) {
                            Ok(()) => {
                                let id = u64::from_le_bytes(id);
                                s.write_all(&id.to_le_bytes()).unwrap();
                                ids.push(id);
                            }
                            // A stop connection: closed without a byte.
                            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return ids,
                            Err(e) => panic!("acceptor: {e}"),
                        }
                    }
                })
            })
            .collect();
        let clients: Vec<JoinHandle<()>> = (0..CONNS)
            .map(|id| {
                rt.spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(&id.to_le_bytes()).unwrap();
                    let mut back = [0u8; 8];
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(u64::from_le_bytes(back), id);
                })
            })
            .collect();
        clients.into_iter().for_each(|h| h.join().unwrap());
        for _ in 0..ACCEPTORS {
            drop(TcpStream::connect(addr).unwrap());
        }
        let mut all: Vec<u64> = acceptors
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..CONNS).collect::<Vec<_>>());
        assert_no_nofault_violations(&rt);
    });
}

/// Connecting to a port nobody listens on fails with `ConnectionRefused`,
/// exactly as std's `connect` does: from a coroutine and a plain thread.
#[test]
fn connect_to_closed_port_is_refused_like_std() {
    bounded("refused", || {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let std_kind = std::net::TcpStream::connect(addr).unwrap_err().kind();
        assert_eq!(std_kind, io::ErrorKind::ConnectionRefused);
        let rt = runtime(2);
        let co_kind = rt
            .spawn(move || TcpStream::connect(addr).unwrap_err().kind())
            .join()
            .unwrap();
        let th_kind = TcpStream::connect(addr).unwrap_err().kind();
        assert_eq!((co_kind, th_kind), (std_kind, std_kind));
        let co_timeout_kind = rt
            .spawn(move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(30))
                    .unwrap_err()
                    .kind()
            })
            .join()
            .unwrap();
        assert_eq!(co_timeout_kind, std_kind);

        // A Unix socket path nobody listens on: the same error as std's.
        let path = socket_path("nobody");
        let std_kind = std::os::unix::net::UnixStream::connect(&path)
            .unwrap_err()
            .kind();
        let co_kind = rt
            .spawn(move || UnixStream::connect(&path).unwrap_err().kind())
            .join()
            .unwrap();
        assert_eq!(co_kind, std_kind);
        assert_no_nofault_violations(&rt);
    });
}

/// UDP ping-pong inside coroutines (on two workers), then with a plain
/// thread as the peer; a receive with a read timeout fails with
/// `WouldBlock` after at least the timeout.
#[test]
fn udp_round_trip_in_coroutines() {
    bounded("udp", || {
        const ROUNDS: u32 = 200;
        let rt = runtime(2);
        for peer_on_thread in [false, true] {
            let a = UdpSocket::bind("127.0.0.1:0").unwrap();
            let b = UdpSocket::bind("127.0.0.1:0").unwrap();
            let a_addr = a.local_addr().unwrap();
            let b_addr = b.local_addr().unwrap();
            let pong = move || {
                let mut buf = [0u8; 64];
                for _ in 0..ROUNDS {
                    let (n, from) = b.recv_from(&mut buf).unwrap();
                    assert_eq!(from, a_addr);
                    let mut reply = buf[..n].to_vec();
                    reply.reverse();
                    b.send_to(&reply, from).unwrap();
                }
            };
            let ponger: Box<dyn FnOnce() + Send> = if peer_on_thread {
                let t = thread::spawn(pong);
                Box::new(move || t.join().unwrap())
            } else {
                let h = rt.spawn(pong);
                Box::new(move || h.join().unwrap())
            };
            rt.spawn(move || {
                a.connect(b_addr).unwrap();
                let mut buf = [0u8; 64];
                for i in 0..ROUNDS {
                    let msg = format!("ping {i}");
                    a.send(msg.as_bytes()).unwrap();
                    let n = a.recv(&mut buf).unwrap();
                    let mut want = msg.into_bytes();
                    want.reverse();
                    assert_eq!(&buf[..n], &want[..]);
                }
                let timeout = Duration::from_millis(20);
                a.set_read_timeout(Some(timeout)).unwrap();
                let t = Instant::now();
                let e = a.recv(&mut buf).unwrap_err();
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "timed-out recv: {e:?}"
                );
                assert!(t.elapsed() >= timeout, "udp recv timed out early");
            })
            .join()
            .unwrap();
            ponger();
        }
        assert_no_nofault_violations(&rt);
    });
}

/// A fresh socket path in the temp directory, unique to this process and
/// call.
fn socket_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "greenstack-{tag}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A UnixListener coroutine echoes for several UnixStream client
/// coroutines (each: write, shutdown, read to EOF); `UnixStream::pair`
/// carries data between two coroutines.
#[test]
fn unix_stream_round_trip_in_coroutines() {
    bounded("unix sockets", || {
        const CLIENTS: usize = 10;
        let rt = runtime(2);
        let path = socket_path("echo");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = rt.spawn(move || {
            let hs: Vec<JoinHandle<usize>> = (0..CLIENTS)
                .map(|_| {
                    let (mut s, _) = listener.accept().unwrap();
                    greenstack::spawn(move || {
                        let mut buf = [0u8; 4096];
                        let mut total = 0;
                        loop {
                            let n = s.read(&mut buf).unwrap();
                            if n == 0 {
                                return total;
                            }
                            s.write_all(&buf[..n]).unwrap();
                            total += n;
                        }
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
        });
        let clients: Vec<JoinHandle<()>> = (0..CLIENTS as u64)
            .map(|i| {
                let path = path.clone();
                rt.spawn(move || {
                    let mut s = UnixStream::connect(&path).unwrap();
                    let mut msg = vec![0u8; 8 * 1024];
                    fill(i, 0, &mut msg);
                    s.write_all(&msg).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    assert_eq!(back, msg);
                })
            })
            .collect();
        clients.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(server.join().unwrap(), CLIENTS * 8 * 1024);
        let _ = std::fs::remove_file(&path);

        let (mut a, mut b) = UnixStream::pair().unwrap();
        let reader = rt.spawn(move || {
            let mut s = String::new();
            b.read_to_string(&mut s).unwrap();
            s
        });
        rt.spawn(move || {
            for i in 0..100 {
                write!(a, "{i},").unwrap();
                if i % 10 == 0 {
                    greenstack::time::sleep(Duration::from_millis(1));
                }
            }
        })
        .join()
        .unwrap();
        let got = reader.join().unwrap();
        let want: String = (0..100).map(|i| format!("{i},")).collect();
        assert_eq!(got, want);
        assert_no_nofault_violations(&rt);
    });
}

/// Counts the wakes of [`PanickingWaker`].
static PANICKING_WAKES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A future's waker that panics when woken.
struct PanickingWaker;

impl std::task::Wake for PanickingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        PANICKING_WAKES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        panic!("a future's waker panicked");
    }
}

/// A future polls a greenstack socket with a waker that panics; when the
/// socket becomes readable the worker's poller wakes it: the panic is
/// contained (the worker loop goes on running coroutines), as every user
/// code the worker runs is.
#[test]
fn a_panicking_waker_of_a_polled_socket_does_not_unwind_the_worker() {
    bounded("panicking waker", || {
        let rt = runtime(1);
        let listener = greenstack::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = rt
            .spawn(move || {
                let s = greenstack::net::TcpStream::connect(addr).unwrap();
                let waker = std::task::Waker::from(std::sync::Arc::new(PanickingWaker));
                let mut cx = std::task::Context::from_waker(&waker);
                let mut buf = [0u8; 1];
                let r = futures_io::AsyncRead::poll_read(
                    std::pin::Pin::new(&mut &s),
                    &mut cx,
                    &mut buf,
                );
                assert!(r.is_pending(), "nothing to read yet");
                s
            })
            .join()
            .unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"x").unwrap();
        while PANICKING_WAKES.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The worker survived its waker's panic.
        assert_eq!(rt.spawn(|| 5).join().unwrap(), 5);
        drop(stream);
    });
}
