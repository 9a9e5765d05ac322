//! Blocking calls of std (and so of any crate built on it) inside a
//! coroutine park the coroutine, not its worker (issue 18): on one worker,
//! a heartbeat coroutine keeps beating while another coroutine makes the
//! call. Without the hooks the worker is blocked for the whole call and
//! the heartbeat does not beat once in it, which `hooks_off_*` shows.
//!
//! No timing thresholds: a test counts beats seen while the call was in
//! progress (zero when the worker is blocked), not how long gaps were.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenstack::{Runtime, RuntimeBuilder};

fn one_worker(hooks: bool) -> Runtime {
    RuntimeBuilder::default()
        .workers(1)
        .hook_blocking_calls(hooks)
        .build()
        .expect("building a runtime")
}

/// Runs `call` in a coroutine on `rt`'s single worker next to a heartbeat
/// coroutine that beats every 5 ms; returns how many beats happened while
/// `call` was in progress, and `call`'s result.
fn beats_during<T: Send + 'static>(
    rt: &Runtime,
    call: impl FnOnce() -> T + Send + 'static,
) -> (usize, T) {
    beats_counted_in(rt, Arc::default(), call)
}

/// [`beats_during`], counting in `beats`, which another thread may watch
/// (with one worker, a beat while `call` runs means `call` has parked).
fn beats_counted_in<T: Send + 'static>(
    rt: &Runtime,
    beats: Arc<AtomicUsize>,
    call: impl FnOnce() -> T + Send + 'static,
) -> (usize, T) {
    rt.block_on(move || {
        let busy = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let hb = {
            let (busy, stop, beats) = (busy.clone(), stop.clone(), beats.clone());
            greenstack::spawn(move || {
                while !stop.load(SeqCst) {
                    greenstack::time::sleep(Duration::from_millis(5));
                    if busy.load(SeqCst) {
                        beats.fetch_add(1, SeqCst);
                    }
                }
            })
        };
        let caller = {
            let busy = busy.clone();
            greenstack::spawn(move || {
                // Let the heartbeat start first.
                greenstack::time::sleep(Duration::from_millis(20));
                busy.store(true, SeqCst);
                let r = call();
                busy.store(false, SeqCst);
                r
            })
        };
        let r = caller.join().expect("the calling coroutine");
        stop.store(true, SeqCst);
        hb.join().expect("the heartbeat");
        (beats.load(SeqCst), r)
    })
}

/// A thread that runs `then` once `beats` counts a beat (with one worker,
/// once the call being watched has parked: a blocked call never lets the
/// heartbeat beat, so `then` never runs and the hang guard reports it).
fn after_a_beat(
    beats: &Arc<AtomicUsize>,
    then: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let beats = Arc::clone(beats);
    std::thread::spawn(move || {
        while beats.load(SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        then();
    })
}

#[test]
fn thread_sleep_parks_only_the_coroutine() {
    let rt = one_worker(true);
    let (beats, took) = common::bounded("thread::sleep", move || {
        beats_during(&rt, || {
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(300));
            t.elapsed()
        })
    });
    assert!(took >= Duration::from_millis(300), "slept only {took:?}");
    assert!(beats > 0, "the heartbeat never beat during thread::sleep");
}

#[test]
fn hooks_off_thread_sleep_blocks_the_worker() {
    let rt = one_worker(false);
    let (beats, ()) = common::bounded("thread::sleep", move || {
        beats_during(&rt, || std::thread::sleep(Duration::from_millis(200)))
    });
    assert_eq!(beats, 0, "with the hooks off the worker is blocked");
}

/// A std TCP read from a silent peer with a read timeout (what a sync
/// database or HTTP client does inside): parks, then times out exactly as
/// std reports it without the runtime (`WouldBlock`).
#[test]
fn std_tcp_read_with_timeout_parks_and_times_out_as_std() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Silent, and open until the read has timed out.
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let _ = wait_done.recv();
        drop(s);
    });
    let rt = one_worker(true);
    let (beats, (kind, took)) = common::bounded("a std read with a timeout", move || {
        beats_during(&rt, move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let t = Instant::now();
            let mut buf = [0u8; 16];
            let e = s.read(&mut buf).expect_err("the peer is silent");
            (e.kind(), t.elapsed())
        })
    });
    drop(done);
    peer.join().unwrap();
    assert_eq!(kind, ErrorKind::WouldBlock);
    assert!(
        took >= Duration::from_millis(300),
        "timed out after {took:?}"
    );
    assert!(beats > 0, "the heartbeat never beat during the read");
}

/// A std TCP echo inside coroutines (client and server on one worker): it
/// can finish only if a blocked `read`/`accept` parks its coroutine.
#[test]
fn std_tcp_echo_between_coroutines_on_one_worker() {
    let rt = one_worker(true);
    let got = common::bounded("std TCP echo", move || {
        rt.block_on(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = greenstack::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).unwrap();
                }
            });
            let client = greenstack::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let mut out = Vec::new();
                for i in 0..100u32 {
                    let msg = format!("message {i}\n");
                    s.write_all(msg.as_bytes()).unwrap();
                    let mut buf = vec![0u8; msg.len()];
                    s.read_exact(&mut buf).unwrap();
                    out.push(String::from_utf8(buf).unwrap());
                }
                out
            });
            let out = client.join().unwrap();
            server.join().unwrap();
            out
        })
    });
    assert_eq!(got.len(), 100);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m, &format!("message {i}\n"));
    }
}

/// A socket the user made non-blocking keeps returning `WouldBlock` at
/// once inside a coroutine.
#[test]
fn a_users_nonblocking_socket_still_gets_wouldblock() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = one_worker(true);
    let kind = common::bounded("a non-blocking read", move || {
        rt.block_on(move || {
            greenstack::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let _held = listener.accept().unwrap();
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 8];
                s.read(&mut buf).expect_err("nothing was sent").kind()
            })
            .join()
            .unwrap()
        })
    });
    assert_eq!(kind, ErrorKind::WouldBlock);
}

/// What the hooks learn of a socket (blocking, no timeout) is relearnt when
/// the user changes it, through the socket or a duplicate of it (which
/// shares its flags and options), from a coroutine or a plain thread.
#[test]
fn flags_changed_after_a_parked_read_are_honoured() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = one_worker(true);
    let (first, nonblocking, blocking_again, timed) =
        common::bounded("reads after flag changes", move || {
            rt.block_on(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let (mut peer, _) = listener.accept().unwrap();
                greenstack::spawn(move || {
                    let mut buf = [0u8; 1];
                    // A read that parks until the peer (another coroutine)
                    // writes: the socket is now known blocking, no timeout.
                    let writer = greenstack::spawn(move || {
                        greenstack::time::sleep(Duration::from_millis(20));
                        peer.write_all(b"a").unwrap();
                        peer
                    });
                    let first = s.read(&mut buf).map(|n| (n, buf[0]));
                    let _peer = writer.join().unwrap();
                    // Non-blocking through a duplicate: the original's
                    // read must not park.
                    let dup = s.try_clone().unwrap();
                    dup.set_nonblocking(true).unwrap();
                    let nonblocking = s.read(&mut buf).map_err(|e| e.kind());
                    // Blocking again, from a plain thread, with a timeout.
                    std::thread::spawn(move || {
                        dup.set_nonblocking(false).unwrap();
                        dup.set_read_timeout(Some(Duration::from_millis(50)))
                            .unwrap();
                    })
                    .join()
                    .unwrap();
                    let t = Instant::now();
                    let blocking_again = s.read(&mut buf).map_err(|e| e.kind());
                    (first.ok(), nonblocking, blocking_again, t.elapsed())
                })
                .join()
                .unwrap()
            })
        });
    assert_eq!(first, Some((1, b'a')));
    assert_eq!(nonblocking, Err(ErrorKind::WouldBlock));
    assert_eq!(blocking_again, Err(ErrorKind::WouldBlock));
    assert!(
        timed >= Duration::from_millis(50),
        "the 50 ms timeout set through the duplicate ended the read after {timed:?}"
    );
}

/// On a plain thread a read with a timeout behaves as without the runtime.
#[test]
fn a_read_on_a_plain_thread_is_untouched() {
    let _rt = one_worker(true);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let _held = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 8];
    let e = s.read(&mut buf).expect_err("the peer is silent");
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    assert!(t.elapsed() >= Duration::from_millis(100));
}

/// A pipe read waits for a writer that comes later, parking.
#[test]
fn a_pipe_read_parks_until_the_writer_writes() {
    let (mut r, mut w) = common::pipe();
    let beats = Arc::new(AtomicUsize::new(0));
    // Writes once the heartbeat has beaten during the read.
    let writer = after_a_beat(&beats, move || w.write_all(b"late").unwrap());
    let rt = one_worker(true);
    let (beats, got) = common::bounded("a pipe read", move || {
        beats_counted_in(&rt, beats, move || {
            let mut buf = [0u8; 4];
            r.read_exact(&mut buf).unwrap();
            buf
        })
    });
    writer.join().unwrap();
    assert_eq!(&got, b"late");
    assert!(beats > 0, "the heartbeat never beat during the pipe read");
}

/// `poll(2)` with a timeout parks, returns 0 at the timeout, and reports
/// readiness when it comes.
#[test]
fn poll_with_a_timeout_parks() {
    let (r, mut w) = common::pipe();
    let rt = one_worker(true);
    let (beats, (first, second)) = common::bounded("poll", move || {
        beats_during(&rt, move || {
            let mut pfd = libc::pollfd {
                fd: r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let first = unsafe { libc::poll(&mut pfd, 1, 200) };
            w.write_all(b"x").unwrap();
            // SAFETY: as above.
            let second = unsafe { libc::poll(&mut pfd, 1, 1000) };
            assert_ne!(pfd.revents & libc::POLLIN, 0);
            (first, second)
        })
    });
    assert_eq!(first, 0, "nothing was ready before the timeout");
    assert_eq!(second, 1);
    assert!(beats > 0, "the heartbeat never beat during poll");
}

/// A fresh epoll fd with `fd`'s readability registered under `token`
/// (closed by the caller).
fn epoll_for(fd: &impl AsRawFd, token: u64) -> libc::c_int {
    // SAFETY: a fresh epoll fd, and a registration of a live fd in it.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0, "epoll_create1");
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        assert_eq!(
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev),
            0
        );
        ep
    }
}

/// `epoll_wait(2)` on the user's own epoll fd (a crate's private event
/// loop, as mio's) parks: 0 at the timeout, then the registered pipe's
/// event once it is readable (through `epoll_pwait` without a signal
/// mask); a bad epoll fd fails at once with `EBADF`, even without a
/// timeout.
#[test]
fn epoll_wait_with_a_timeout_parks() {
    let (r, mut w) = common::pipe();
    let rt = one_worker(true);
    let (beats, (first, second, token, bad)) = common::bounded("epoll_wait", move || {
        beats_during(&rt, move || {
            let ep = epoll_for(&r, 77);
            // SAFETY: `ep` and the pipe outlive the calls; arrays of the
            // lengths given.
            unsafe {
                let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
                let first = libc::epoll_wait(ep, out.as_mut_ptr(), 4, 200);
                w.write_all(b"x").unwrap();
                let second = libc::epoll_pwait(ep, out.as_mut_ptr(), 4, 1000, std::ptr::null());
                let token = out[0].u64;
                let bad = (
                    libc::epoll_wait(-1, out.as_mut_ptr(), 4, -1),
                    std::io::Error::last_os_error().raw_os_error(),
                );
                libc::close(ep);
                (first, second, token, bad)
            }
        })
    });
    assert_eq!(first, 0, "nothing was ready before the timeout");
    assert_eq!(second, 1, "the pipe became readable");
    assert_eq!(token, 77, "the event carries the registration's data");
    assert_eq!(bad, (-1, Some(libc::EBADF)), "a bad epoll fd");
    assert!(beats > 0, "the heartbeat never beat during epoll_wait");
}

/// `epoll_pwait2` (a `timespec` timeout) without a signal mask parks as
/// `epoll_wait` does: nothing ready within 200 ms is 0, then the pipe's
/// event; with a mask it is the plain call, which still works.
#[test]
fn epoll_pwait2_with_a_timeout_parks() {
    let (r, mut w) = common::pipe();
    let rt = one_worker(true);
    let (beats, (first, second, token, masked)) = common::bounded("epoll_pwait2", move || {
        beats_during(&rt, move || {
            let ep = epoll_for(&r, 78);
            // SAFETY: `ep` and the pipe outlive the calls; arrays of the
            // lengths given, an empty signal set.
            unsafe {
                let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
                let t = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 200_000_000,
                };
                let first = libc::epoll_pwait2(ep, out.as_mut_ptr(), 4, &t, std::ptr::null());
                w.write_all(b"x").unwrap();
                let second =
                    libc::epoll_pwait2(ep, out.as_mut_ptr(), 4, std::ptr::null(), std::ptr::null());
                let token = out[0].u64;
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                let masked = libc::epoll_pwait2(ep, out.as_mut_ptr(), 4, &t, &set);
                libc::close(ep);
                (first, second, token, masked)
            }
        })
    });
    assert_eq!(first, 0, "nothing was ready before the timeout");
    assert_eq!(second, 1, "the pipe became readable");
    assert_eq!(token, 78, "the event carries the registration's data");
    assert_eq!(
        masked, 1,
        "with a mask: the plain call, the pipe still readable"
    );
    assert!(beats > 0, "the heartbeat never beat during epoll_pwait2");
}

/// A crate's own event loop, unchanged: mio's `Poll::poll` without a
/// timeout in a coroutine parks until its socket is readable (a writer
/// that writes only once the heartbeat has beaten during the poll, which a
/// blocked worker would never let happen).
#[test]
fn a_crates_own_mio_event_loop_parks() {
    let (mut a, b) = mio::net::UnixStream::pair().unwrap();
    let beats = Arc::new(AtomicUsize::new(0));
    let writer = after_a_beat(&beats, move || a.write_all(b"mio").unwrap());
    let rt = one_worker(true);
    let (beats, (token, got)) = common::bounded("mio's poll", move || {
        beats_counted_in(&rt, beats, move || {
            let mut b = b;
            let mut poll = mio::Poll::new().unwrap();
            poll.registry()
                .register(&mut b, mio::Token(5), mio::Interest::READABLE)
                .unwrap();
            let mut events = mio::Events::with_capacity(4);
            loop {
                poll.poll(&mut events, None).unwrap();
                if let Some(e) = events.iter().next() {
                    let mut buf = [0u8; 3];
                    b.read_exact(&mut buf).unwrap();
                    return (e.token(), buf);
                }
            }
        })
    });
    writer.join().unwrap();
    assert_eq!(token, mio::Token(5));
    assert_eq!(&got, b"mio");
    assert!(beats > 0, "the heartbeat never beat during mio's poll");
}

/// A tokio runtime driven inside coroutines (a sync facade over an async
/// crate: the `postgres` crate builds a current-thread runtime per client
/// and `block_on`s each query). tokio marks the thread as inside a runtime
/// for the whole `block_on`, and coroutines of one worker share the
/// thread, so the hooks do not park there: another coroutine entering
/// tokio meanwhile would make tokio panic ("Cannot start a runtime from
/// within a runtime"). On one worker, three coroutines each drive their
/// own current-thread runtime (a sleep, then a TCP echo through it) and
/// two `block_on` a shared multi-thread runtime's handle, all at once:
/// every one finishes with its value.
#[test]
fn tokio_runtimes_driven_in_coroutines_of_one_worker_all_finish() {
    let shared = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = shared.handle().clone();
    let got = common::bounded("tokio runtimes in coroutines", move || {
        let rt = one_worker(true);
        rt.block_on(move || {
            let own: Vec<_> = (0..3u8)
                .map(|i| {
                    greenstack::spawn(move || {
                        let tokio_rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        tokio_rt.block_on(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                            let addr = l.local_addr().unwrap();
                            let server = tokio::spawn(async move {
                                let (mut s, _) = l.accept().await.unwrap();
                                let mut buf = [0u8; 1];
                                s.read_exact(&mut buf).await.unwrap();
                                s.write_all(&buf).await.unwrap();
                            });
                            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                            c.write_all(&[i]).await.unwrap();
                            let mut buf = [0u8; 1];
                            c.read_exact(&mut buf).await.unwrap();
                            server.await.unwrap();
                            buf[0]
                        })
                    })
                })
                .collect();
            let via_handle: Vec<_> = (10..12u8)
                .map(|i| {
                    let handle = handle.clone();
                    greenstack::spawn(move || {
                        handle.block_on(async move {
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            i
                        })
                    })
                })
                .collect();
            own.into_iter()
                .chain(via_handle)
                .map(|h| h.join().expect("a coroutine driving tokio"))
                .collect::<Vec<u8>>()
        })
    });
    drop(shared);
    assert_eq!(got, [0, 1, 2, 10, 11]);
}

/// `select(2)` with a timeout parks, returns 0 at the timeout with the set
/// cleared, then reports the fd readable once it is; `ppoll` too.
#[test]
fn select_and_ppoll_with_a_timeout_park() {
    let (r, mut w) = common::pipe();
    let rt = one_worker(true);
    let (beats, (first, second, third)) = common::bounded("select", move || {
        beats_during(&rt, move || {
            let fd = r.as_raw_fd();
            let select = |ms: i64| {
                // SAFETY: an fd_set on our stack holding one fd below
                // FD_SETSIZE, and a timeout on our stack.
                unsafe {
                    let mut set: libc::fd_set = std::mem::zeroed();
                    libc::FD_ZERO(&mut set);
                    libc::FD_SET(fd, &mut set);
                    let mut tv = libc::timeval {
                        tv_sec: 0,
                        tv_usec: ms * 1000,
                    };
                    let n = libc::select(
                        fd + 1,
                        &mut set,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        &mut tv,
                    );
                    (n, libc::FD_ISSET(fd, &set))
                }
            };
            let first = select(200);
            w.write_all(b"x").unwrap();
            let second = select(900);
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 500_000_000,
            };
            // SAFETY: one valid pollfd, a timeout, no mask.
            let third = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            (first, second, third)
        })
    });
    assert_eq!(first, (0, false), "nothing was ready before the timeout");
    assert_eq!(second, (1, true));
    assert_eq!(third, 1);
    assert!(beats > 0, "the heartbeat never beat during select");
}

static SIGNAL_WRITE_FD: AtomicUsize = AtomicUsize::new(usize::MAX);

extern "C" fn write_from_handler(_: libc::c_int) {
    let fd = SIGNAL_WRITE_FD.load(SeqCst) as libc::c_int;
    // SAFETY: write is async-signal-safe; a static buffer.
    unsafe { libc::write(fd, b"signal".as_ptr().cast(), 6) };
}

/// A signal handler that calls `write` while a coroutine runs: the write
/// happens (passing through or not, it must not park the handler).
#[test]
fn a_signal_handler_that_writes_works_in_a_coroutine() {
    let (mut r, w) = common::pipe();
    SIGNAL_WRITE_FD.store(w.as_raw_fd() as usize, SeqCst);
    // SAFETY: installs a handler that only calls write(2).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = write_from_handler as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let rt = one_worker(true);
    common::bounded("a signal handler's write", move || {
        rt.block_on(|| {
            greenstack::spawn(|| {
                // SAFETY: raise sends to this thread, whose handler writes.
                assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
            })
            .join()
            .unwrap();
        })
    });
    drop(w);
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "signal");
}

static FULL_PIPE_FD: AtomicUsize = AtomicUsize::new(usize::MAX);
static IN_NODEFER_HANDLER: AtomicBool = AtomicBool::new(false);

extern "C" fn write_to_full_pipe(_: libc::c_int) {
    IN_NODEFER_HANDLER.store(true, SeqCst);
    let fd = FULL_PIPE_FD.load(SeqCst) as libc::c_int;
    // SAFETY: write is async-signal-safe; a static buffer.
    unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
    IN_NODEFER_HANDLER.store(false, SeqCst);
}

/// A handler installed with `SA_NODEFER` and an empty mask (so the thread's
/// signal mask does not change while it runs) makes a call that would
/// block, in a coroutine: the hooks must not park inside the handler (the
/// interrupted coroutine is stopped at any instruction), so the call
/// blocks the worker until a thread drains the pipe, and no other
/// coroutine of the worker runs meanwhile.
#[test]
fn a_handler_that_leaves_the_mask_alone_is_not_parked_in() {
    let (mut r, w) = common::pipe();
    // Fill the pipe: the handler's one-byte write would block.
    // SAFETY: fcntl on our fd; writes from a local buffer.
    unsafe {
        let fl = libc::fcntl(w.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(w.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        let chunk = [0u8; 4096];
        while libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) > 0 {}
        libc::fcntl(w.as_raw_fd(), libc::F_SETFL, fl);
    }
    FULL_PIPE_FD.store(w.as_raw_fd() as usize, SeqCst);
    let sig = libc::SIGRTMIN() + 1;
    // SAFETY: installs a handler that only calls write(2) and atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = write_to_full_pipe as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_NODEFER;
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
    let drainer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let mut buf = vec![0u8; 1 << 20];
        let _ = r.read(&mut buf);
        r
    });
    let rt = one_worker(true);
    let beats_in_handler = common::bounded("a write in a SA_NODEFER handler", move || {
        rt.block_on(move || {
            let stop = Arc::new(AtomicBool::new(false));
            let beats = Arc::new(AtomicUsize::new(0));
            let hb = {
                let (stop, beats) = (stop.clone(), beats.clone());
                greenstack::spawn(move || {
                    while !stop.load(SeqCst) {
                        greenstack::time::sleep(Duration::from_millis(2));
                        if IN_NODEFER_HANDLER.load(SeqCst) {
                            beats.fetch_add(1, SeqCst);
                        }
                    }
                })
            };
            greenstack::spawn(move || {
                greenstack::time::sleep(Duration::from_millis(10));
                // SAFETY: raise sends to this thread, whose handler writes.
                assert_eq!(unsafe { libc::raise(sig) }, 0);
            })
            .join()
            .unwrap();
            stop.store(true, SeqCst);
            hb.join().unwrap();
            beats.load(SeqCst)
        })
    });
    drop(drainer.join().unwrap());
    drop(w);
    assert_eq!(
        beats_in_handler, 0,
        "the worker ran other coroutines inside the handler"
    );
}

/// A handler installed through `sigaction` is reported back as itself (the
/// runtime's wrapper never shows), with its flags, by `sigaction` and
/// `signal`.
#[test]
fn sigaction_reports_the_users_handler() {
    let sig = libc::SIGRTMIN() + 2;
    let h = write_from_handler as extern "C" fn(libc::c_int) as usize;
    // SAFETY: installs and queries actions for a signal nobody sends.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = h;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut old), 0);
        assert_eq!(old.sa_sigaction, h);
        assert_eq!(old.sa_flags & libc::SA_SIGINFO, 0, "SA_SIGINFO leaked out");
        assert_eq!(libc::signal(sig, libc::SIG_DFL), h);
        assert_eq!(libc::signal(sig, h), libc::SIG_DFL);
        assert_eq!(libc::signal(sig, libc::SIG_IGN), h);
    }
}

/// A FIFO with no writer yet: `std::fs::read` blocks in `open` until the
/// writer comes, then reads. Parks the coroutine throughout.
#[test]
fn std_fs_read_of_a_fifo_parks_until_the_writer_comes() {
    let dir = std::env::temp_dir().join(format!("greenstack-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fifo");
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p2 = path.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(&p2, b"from the late writer").unwrap();
    });
    let rt = one_worker(true);
    let p3 = path.clone();
    let (beats, got) = common::bounded("a FIFO read", move || {
        beats_during(&rt, move || std::fs::read(&p3).unwrap())
    });
    writer.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(got, b"from the late writer");
    assert!(beats > 0, "the heartbeat never beat during the FIFO read");
}

/// `Command::output` of a child that takes 300 ms (its pipes read through
/// `poll`/`read`, the child reaped through `waitpid`): parks.
#[test]
fn command_output_parks_the_coroutine() {
    let rt = one_worker(true);
    let (beats, out) = common::bounded("Command::output", move || {
        beats_during(&rt, || {
            std::process::Command::new("sh")
                .args(["-c", "sleep 0.3; echo done"])
                .output()
                .unwrap()
        })
    });
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"done\n");
    assert!(beats > 0, "the heartbeat never beat during Command::output");
}

/// `Child::wait` on a child that exits later, and the exit status as std
/// reports it.
#[test]
fn child_wait_parks_and_reports_the_status() {
    let rt = one_worker(true);
    let (beats, code) = common::bounded("Child::wait", move || {
        beats_during(&rt, || {
            let mut child = std::process::Command::new("sh")
                .args(["-c", "sleep 0.3; exit 7"])
                .spawn()
                .unwrap();
            child.wait().unwrap().code()
        })
    });
    assert_eq!(code, Some(7));
    assert!(beats > 0, "the heartbeat never beat during Child::wait");
}

/// Regular files read in a coroutine read exactly what is there (the
/// page-cache path and the offloaded one give the same bytes).
#[test]
fn regular_file_reads_in_a_coroutine_are_exact() {
    let dir = std::env::temp_dir().join(format!("greenstack-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let rt = one_worker(true);
    let p2 = path.clone();
    let got = common::bounded("file reads", move || {
        rt.block_on(move || {
            greenstack::spawn(move || {
                let whole = std::fs::read(&p2).unwrap();
                let mut f = std::fs::File::open(&p2).unwrap();
                let mut pieces = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    pieces.extend_from_slice(&buf[..n]);
                }
                let mut at = vec![0u8; 4096];
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut at, 500_000).unwrap();
                pieces.extend_from_slice(&at);
                (whole, pieces)
            })
            .join()
            .unwrap()
        })
    });
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(got.0 == data, "std::fs::read differs");
    assert!(
        got.1[..data.len()] == data[..],
        "read in 4 KiB pieces differs"
    );
    assert!(
        got.1[data.len()..] == data[500_000..504_096],
        "read_at (pread) differs"
    );
}

/// Regular-file writes in a coroutine (`write`, `pwrite`, `O_APPEND`,
/// `fsync`, `fdatasync`) land as they would on a plain thread, on a disk
/// file system and on tmpfs.
#[test]
fn regular_file_writes_in_a_coroutine_are_exact() {
    use std::os::unix::fs::FileExt;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    for base in [std::env::temp_dir(), std::path::PathBuf::from("/dev/shm")] {
        if !base.is_dir() {
            continue;
        }
        let dir = base.join(format!("greenstack-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (d2, data2) = (dir.clone(), data.clone());
        let rt = one_worker(true);
        common::bounded("file writes", move || {
            rt.block_on(move || {
                greenstack::spawn(move || {
                    std::fs::write(d2.join("whole"), &data2).unwrap();
                    let mut f = std::fs::File::create(d2.join("pieces")).unwrap();
                    for chunk in data2.chunks(4096) {
                        f.write_all(chunk).unwrap();
                    }
                    f.write_all_at(b"OVERWRITTEN", 1000).unwrap();
                    f.sync_all().unwrap();
                    f.sync_data().unwrap();
                    let mut a = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(d2.join("appended"))
                        .unwrap();
                    for chunk in data2.chunks(1000) {
                        a.write_all(chunk).unwrap();
                    }
                })
                .join()
                .unwrap()
            })
        });
        let mut pieces = data.clone();
        pieces[1000..1011].copy_from_slice(b"OVERWRITTEN");
        let whole = std::fs::read(dir.join("whole")).unwrap();
        let got_pieces = std::fs::read(dir.join("pieces")).unwrap();
        let appended = std::fs::read(dir.join("appended")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(whole == data, "std::fs::write differs in {base:?}");
        assert!(
            got_pieces == pieces,
            "4 KiB writes and write_at differ in {base:?}"
        );
        assert!(appended == data, "appends differ in {base:?}");
    }
}

/// Vectored reads and writes of a regular file in a coroutine (std's
/// `read_vectored`/`write_vectored`, i.e. `readv`/`writev`, and libc's
/// `preadv`/`pwritev` at an offset, and their `2` forms with a flag of the
/// caller's) move exactly the bytes a plain
/// thread's would, and a vectored read the page cache cannot answer (the
/// file's pages dropped after an `fsync`) parks the coroutine while the
/// blocking pool reads, as `read` does: without the hooks the worker
/// itself waits for the disk and nothing parks.
#[test]
fn vectored_file_io_in_a_coroutine_is_exact_and_a_cold_read_parks() {
    use std::io::{IoSlice, IoSliceMut};
    // Inside target/, on the repository's disk (not tmpfs, which has no
    // non-blocking reads).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("greenstack-vectored-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 249) as u8).collect();
    let rt = Arc::new(one_worker(true));
    let (p2, d2) = (path.clone(), data.clone());
    /// Drops `f`'s pages and runs `read`, which starts reading at `at`,
    /// up to five times: the last result and, if the page at `at` was
    /// indeed gone in some try (`mincore` of a mapping says, without
    /// starting any I/O as a read would) and the file system has
    /// non-blocking reads (`nowait`), the most the coroutine parked in
    /// one. Five, and stopping at the first that parked: the hook's
    /// non-blocking attempt itself starts the disk read (readahead),
    /// which a fast disk may finish before the attempt looks again, and
    /// then the page cache answers and nothing need park.
    fn cold_read<T>(
        f: &std::fs::File,
        at: usize,
        nowait: bool,
        rt: &Runtime,
        mut read: impl FnMut() -> T,
    ) -> (T, Option<u64>) {
        let fd = f.as_raw_fd();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let start = at / page * page;
        let mut most: Option<u64> = None;
        let mut tries = 0;
        loop {
            tries += 1;
            // SAFETY: an open fd; advice only, the whole file.
            let advice = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(advice, 0, "posix_fadvise");
            // SAFETY: a fresh read-only shared mapping of one page of the
            // file, asked about and unmapped here; nothing reads through it.
            let resident = unsafe {
                let m = libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    start as libc::off_t,
                );
                assert_ne!(m, libc::MAP_FAILED, "mmap");
                let mut v = 0u8;
                assert_eq!(libc::mincore(m, page, &mut v), 0, "mincore");
                libc::munmap(m, page);
                v & 1 != 0
            };
            let before = rt.stats().parks;
            let v = read();
            if nowait && !resident {
                most = most.max(Some(rt.stats().parks - before));
            }
            if tries == 5 || most.is_some_and(|n| n > 0) {
                return (v, most);
            }
        }
    }
    let (read, at, parks) = common::bounded("vectored file I/O", move || {
        let rt2 = Arc::clone(&rt);
        rt.block_on(move || {
            greenstack::spawn(move || {
                let mut f = std::fs::File::create(&p2).unwrap();
                let (a, rest) = d2.split_at(100);
                let (b, c) = rest.split_at(5000);
                let mut bufs = [IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)];
                let mut slices = &mut bufs[..];
                while !slices.is_empty() {
                    let n = f.write_vectored(slices).unwrap();
                    assert!(n > 0, "write_vectored wrote nothing");
                    IoSlice::advance_slices(&mut slices, n);
                }
                f.sync_all().unwrap();
                drop(f);
                let f = std::fs::File::open(&p2).unwrap();
                // Whether the file system reads without blocking: a read
                // of a page still cached from the writes, with the
                // caller's own `RWF_NOWAIT` (which the hooks pass through).
                let mut probe = [0u8; 1];
                let iov = libc::iovec {
                    iov_base: probe.as_mut_ptr().cast(),
                    iov_len: 1,
                };
                // SAFETY: one iovec over `probe`, which outlives the call.
                let r = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
                let nowait =
                    r >= 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
                let (got, readv) = cold_read(&f, 0, nowait, &rt2, || {
                    use std::io::Seek;
                    (&f).seek(std::io::SeekFrom::Start(0)).unwrap();
                    let (mut x, mut y, mut z) =
                        (vec![0u8; 7], vec![0u8; 70_000], vec![0u8; 1_000_000]);
                    let mut got = Vec::new();
                    loop {
                        let mut bufs = [
                            IoSliceMut::new(&mut x),
                            IoSliceMut::new(&mut y),
                            IoSliceMut::new(&mut z),
                        ];
                        let n = (&f).read_vectored(&mut bufs).unwrap();
                        if n == 0 {
                            break;
                        }
                        let parts = [&x[..], &y[..], &z[..]];
                        let mut left = n;
                        for p in parts {
                            let take = left.min(p.len());
                            got.extend_from_slice(&p[..take]);
                            left -= take;
                        }
                    }
                    got
                });
                // preadv at an offset, into two buffers.
                let (at, preadv) = cold_read(&f, 123_456, nowait, &rt2, || {
                    let (mut p, mut q) = (vec![0u8; 10], vec![0u8; 5000]);
                    let iovs = [
                        libc::iovec {
                            iov_base: p.as_mut_ptr().cast(),
                            iov_len: p.len(),
                        },
                        libc::iovec {
                            iov_base: q.as_mut_ptr().cast(),
                            iov_len: q.len(),
                        },
                    ];
                    // SAFETY: two iovecs over `p` and `q`, which outlive
                    // the call.
                    let n = unsafe { libc::preadv(f.as_raw_fd(), iovs.as_ptr(), 2, 123_456) };
                    assert_eq!(n, 5010, "preadv read short");
                    [p, q].concat()
                });
                // preadv2 with a flag of the caller's (kept by the hooks)
                // at an offset.
                let (at2, preadv2) = cold_read(&f, 500_000, nowait, &rt2, || {
                    let mut p = vec![0u8; 3000];
                    let iov = libc::iovec {
                        iov_base: p.as_mut_ptr().cast(),
                        iov_len: p.len(),
                    };
                    // SAFETY: one iovec over `p`, which outlives the call.
                    let n =
                        unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, 500_000, libc::RWF_HIPRI) };
                    assert_eq!(n, 3000, "preadv2 read short");
                    p
                });
                // pwritev at an offset, from two buffers.
                let w = std::fs::OpenOptions::new().write(true).open(&p2).unwrap();
                let iovs = [
                    libc::iovec {
                        iov_base: b"AB".as_ptr().cast_mut().cast(),
                        iov_len: 2,
                    },
                    libc::iovec {
                        iov_base: b"CD".as_ptr().cast_mut().cast(),
                        iov_len: 2,
                    },
                ];
                // SAFETY: two iovecs over static bytes the call only reads.
                let wrote = unsafe { libc::pwritev(w.as_raw_fd(), iovs.as_ptr(), 2, 10) };
                assert_eq!(wrote, 4, "pwritev");
                let iov = libc::iovec {
                    iov_base: b"EF".as_ptr().cast_mut().cast(),
                    iov_len: 2,
                };
                // SAFETY: one iovec over static bytes the call only reads.
                let wrote = unsafe { libc::pwritev2(w.as_raw_fd(), &iov, 1, 20, libc::RWF_DSYNC) };
                assert_eq!(wrote, 2, "pwritev2");
                (got, [at, at2], [readv, preadv, preadv2])
            })
            .join()
            .unwrap()
        })
    });
    let on_disk = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        read == data,
        "writev then readv in a coroutine differ from the data"
    );
    assert!(
        at[0][..] == data[123_456..128_466],
        "preadv at an offset differs"
    );
    assert!(
        at[1][..] == data[500_000..503_000],
        "preadv2 with RWF_HIPRI at an offset differs"
    );
    let mut expect = data.clone();
    expect[10..14].copy_from_slice(b"ABCD");
    expect[20..22].copy_from_slice(b"EF");
    assert!(
        on_disk == expect,
        "pwritev or pwritev2 at an offset differs"
    );
    for (call, parks) in ["readv", "preadv", "preadv2"].iter().zip(parks) {
        match parks {
            Some(n) => assert!(n >= 1, "a cold {call} did not park the coroutine"),
            None => eprintln!(
                "{call}: the page read first was still cached, or the file system \
                 has no RWF_NOWAIT: the park is not checked"
            ),
        }
    }
}

/// `std::fs::copy` in a coroutine (`copy_file_range`, an in-kernel copy
/// with no non-blocking form) parks while the blocking pool copies, and
/// copies exactly. 32 MiB: a copy long enough that the coroutine has
/// parked before the pool is done (without the hook it never parks).
#[test]
fn fs_copy_in_a_coroutine_parks_and_copies_exactly() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("greenstack-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 247) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let rt = Arc::new(one_worker(true));
    let (s2, d2) = (src.clone(), dst.clone());
    let (copied, parks) = common::bounded("fs::copy", move || {
        let rt2 = Arc::clone(&rt);
        rt.block_on(move || {
            greenstack::spawn(move || {
                let before = rt2.stats().parks;
                let n = std::fs::copy(&s2, &d2).unwrap();
                (n, rt2.stats().parks - before)
            })
            .join()
            .unwrap()
        })
    });
    let got = std::fs::read(&dst).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(copied, data.len() as u64);
    assert!(got == data, "the copy differs");
    assert!(parks >= 1, "fs::copy did not park the coroutine");
}

/// `std::io::copy` from a child's output to a std `TcpStream` (a
/// `splice(2)` from a pipe to a socket) in a coroutine parks while the
/// child has nothing to say: the child answers only once the heartbeat has
/// beaten during the copy (a blocked worker never lets it), and every byte
/// arrives.
#[test]
fn io_copy_from_a_childs_output_to_a_socket_parks() {
    use std::process::{Command, Stdio};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut child = Command::new("sh")
        .args(["-c", "read x; echo \"out-$x\"; head -c 200000 /dev/zero"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    let beats = Arc::new(AtomicUsize::new(0));
    let answerer = after_a_beat(&beats, move || stdin.write_all(b"go\n").unwrap());
    let rt = one_worker(true);
    let (beats, copied) = common::bounded("io::copy from a child", move || {
        beats_counted_in(&rt, beats, move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            std::io::copy(&mut out, &mut s).unwrap()
        })
    });
    answerer.join().unwrap();
    assert!(child.wait().unwrap().success());
    let got = reader.join().unwrap();
    let mut expect = b"out-go\n".to_vec();
    expect.resize(expect.len() + 200_000, 0);
    assert_eq!(copied, expect.len() as u64);
    assert!(
        got == expect,
        "the socket got {} bytes, not the child's output",
        got.len()
    );
    assert!(beats > 0, "the heartbeat never beat during io::copy");
}

/// `sendfile(2)` from a file to a std `TcpStream` in a coroutine parks
/// while the reader does not read: the socket's buffers (the send buffer
/// made small) fill long before the 1 MiB is sent, and the reader starts
/// only once the heartbeat has beaten during the calls. Every byte
/// arrives, and the offset moves as the kernel's would.
#[test]
fn sendfile_to_a_socket_parks_while_the_reader_waits() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("greenstack-sendfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 241) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let beats = Arc::new(AtomicUsize::new(0));
    let reader = {
        let beats = Arc::clone(&beats);
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            while beats.load(SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        })
    };
    let rt = one_worker(true);
    let p2 = path.clone();
    let total = data.len();
    let (beats, sent) = common::bounded("sendfile", move || {
        beats_counted_in(&rt, beats, move || {
            let s = std::net::TcpStream::connect(addr).unwrap();
            let small: libc::c_int = 4096;
            // SAFETY: an open socket and an int option of the right size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&small as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "SO_SNDBUF");
            let f = std::fs::File::open(&p2).unwrap();
            let mut off: libc::off_t = 0;
            while (off as usize) < total {
                // SAFETY: open fds, and `off` outlives the call.
                let n = unsafe {
                    libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), &mut off, total - off as usize)
                };
                assert!(n > 0, "sendfile: {}", std::io::Error::last_os_error());
            }
            off as usize
        })
    });
    let got = reader.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(sent, total, "the offset after the calls");
    assert!(
        got == data,
        "the reader got {} bytes, not the file",
        got.len()
    );
    assert!(beats > 0, "the heartbeat never beat during sendfile");
}

/// Waiting for a file lock parks: std's `File::lock` (`flock`) and an
/// open-file-description record lock (`fcntl(F_OFD_SETLKW)`), each held
/// through another open file of the test's until the heartbeat has beaten
/// during the wait (a blocked worker never lets it). Each wait then gets
/// its lock: a non-blocking try through a third open file fails.
#[test]
fn waiting_for_a_file_lock_parks() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("greenstack-lock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lock");
    std::fs::write(&path, b"lock").unwrap();
    // Write access: a write record lock needs it.
    let open_rw = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    };
    let ofd_lock = |f: &std::fs::File, ty: libc::c_int, cmd: libc::c_int| {
        // SAFETY: an all-zero flock is valid; the whole file, pid 0 as
        // open-file-description locks require.
        let mut l: libc::flock = unsafe { std::mem::zeroed() };
        l.l_type = ty as libc::c_short;
        l.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: an open fd and a valid lock description.
        unsafe { libc::fcntl(f.as_raw_fd(), cmd, &l as *const libc::flock) }
    };
    for how in ["flock", "ofd"] {
        let holder = open_rw(&path);
        match how {
            "flock" => holder.lock().unwrap(),
            _ => assert_eq!(ofd_lock(&holder, libc::F_WRLCK, libc::F_OFD_SETLK), 0),
        }
        let beats = Arc::new(AtomicUsize::new(0));
        let releaser = after_a_beat(&beats, move || drop(holder));
        let rt = one_worker(true);
        let p2 = path.clone();
        let (beats, waiter) = common::bounded("a file lock", move || {
            beats_counted_in(&rt, beats, move || {
                let f = open_rw(&p2);
                match how {
                    "flock" => f.lock().unwrap(),
                    _ => assert_eq!(ofd_lock(&f, libc::F_WRLCK, libc::F_OFD_SETLKW), 0),
                }
                f
            })
        });
        releaser.join().unwrap();
        assert!(beats > 0, "{how}: the heartbeat never beat during the wait");
        let other = open_rw(&path);
        match how {
            "flock" => assert!(
                matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
                "flock: the waiter does not hold the lock"
            ),
            _ => assert_eq!(
                ofd_lock(&other, libc::F_WRLCK, libc::F_OFD_SETLK),
                -1,
                "ofd: the waiter does not hold the lock"
            ),
        }
        drop(waiter);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Name resolution through a resolver that never answers: in a child in
/// its own mount namespace whose `/etc/resolv.conf` names a silent UDP
/// socket on 127.0.0.77:53 (1 s timeout, 1 attempt). The lookup fails
/// after the timeout, and the heartbeat beats meanwhile.
#[test]
fn dns_through_a_silent_resolver_parks_the_coroutine() {
    const ENV: &str = "GREENSTACK_HOOK_DNS_CHILD";
    if common::child_scenario(ENV).is_some() {
        return dns_child();
    }
    let report = ChildReport::run(
        ENV,
        "dns_through_a_silent_resolver_parks_the_coroutine",
        "dns",
    );
    // Each lookup fails (the resolver is silent) after its 1 s timeout,
    // and the heartbeat beats meanwhile.
    for (tag, what) in [
        ("dns:", "to_socket_addrs, hooks on"),
        ("legacy:", "gethostbyname, hooks on"),
        ("netdns:", "greenstack::net::TcpStream::connect, hooks off"),
    ] {
        let line = report.line(tag);
        let field = |k: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} missing in {line}"))
                .to_string()
        };
        assert_eq!(
            field("ok="),
            "false",
            "{what}: the silent resolver answered: {line}"
        );
        let took: u128 = field("took_ms=").parse().unwrap();
        assert!(took >= 900, "{what}: did not wait for the resolver: {line}");
        let beats: usize = field("beats=").parse().unwrap();
        assert!(beats > 0, "{what}: held the worker: {line}");
    }
}

/// What a child test process (see `common::run_child`) printed, once it
/// exited successfully.
struct ChildReport {
    out: std::process::Output,
    stdout: String,
}

impl ChildReport {
    /// Runs this binary's test `name` as a child playing `scenario`, and
    /// checks that it succeeded.
    fn run(env: &str, name: &str, scenario: &str) -> ChildReport {
        let out = common::run_child(env, name, scenario);
        assert!(out.status.success(), "{}", common::describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ChildReport { out, stdout }
    }

    /// The line the child printed from `tag` on (libtest may print its
    /// own text before it on the same line).
    fn line(&self, tag: &str) -> &str {
        let at = self
            .stdout
            .find(tag)
            .unwrap_or_else(|| panic!("no {tag} result: {}", common::describe(&self.out)));
        self.stdout[at..].lines().next().unwrap_or("")
    }
}

fn dns_child() {
    use std::ffi::CString;
    // SAFETY: plain system calls on this (single-threaded so far) child.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        let root = CString::new("/").unwrap();
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0
        );
    }
    let conf = std::env::temp_dir().join(format!("greenstack-resolv-{}", std::process::id()));
    std::fs::write(
        &conf,
        "nameserver 127.0.0.77\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let src = CString::new(conf.as_os_str().as_encoded_bytes()).unwrap();
    let dst = CString::new("/etc/resolv.conf").unwrap();
    // SAFETY: bind-mounts our file over resolv.conf in our namespace only.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "bind mount: {}", std::io::Error::last_os_error());
    // Bound and never read: queries get no answer (not a port-unreachable).
    let _silent = std::net::UdpSocket::bind("127.0.0.77:53").expect("binding the silent resolver");
    let rt = one_worker(true);
    let (beats, (ok, took)) = beats_during(&rt, || {
        use std::net::ToSocketAddrs;
        let t = Instant::now();
        let r = ("db.example.internal", 5432).to_socket_addrs();
        (r.is_ok(), t.elapsed())
    });
    println!("dns: ok={ok} took_ms={} beats={beats}", took.as_millis());
    // The legacy resolver (C libraries call it) parks too.
    extern "C" {
        fn gethostbyname(name: *const libc::c_char) -> *mut libc::c_void;
    }
    let (beats, (ok, took)) = beats_during(&rt, || {
        let t = Instant::now();
        let name = std::ffi::CString::new("db.example.internal").unwrap();
        // SAFETY: a NUL-terminated name; the result is only checked for null.
        let r = unsafe { gethostbyname(name.as_ptr()) };
        (!r.is_null(), t.elapsed())
    });
    println!("legacy: ok={ok} took_ms={} beats={beats}", took.as_millis());
    // greenstack::net resolves off the worker even with the hooks off.
    let rt = one_worker(false);
    let (beats, (ok, took)) = beats_during(&rt, || {
        let t = Instant::now();
        let r = greenstack::net::TcpStream::connect(("db.example.internal", 5432));
        (r.is_ok(), t.elapsed())
    });
    let _ = std::fs::remove_file(&conf);
    println!("netdns: ok={ok} took_ms={} beats={beats}", took.as_millis());
}

/// A coroutine parked in a hooked std read when its runtime is dropped:
/// the read fails with `ECANCELED` ("Operation canceled"), so its code
/// returns and the shutdown completes, instead of the read blocking the
/// worker until the worker is abandoned.
#[test]
fn a_std_read_parked_at_shutdown_fails_with_ecanceled() {
    use std::sync::atomic::AtomicI32;
    static CODE: AtomicI32 = AtomicI32::new(0);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The peer's end, held (silent) until the test ends.
    let peer = std::thread::spawn(move || listener.accept().unwrap().0);
    common::bounded("a shutdown with a coroutine in a std read", move || {
        let rt = one_worker(true);
        let parked = Arc::new(AtomicBool::new(false));
        let p2 = parked.clone();
        let _h = rt.spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            p2.store(true, SeqCst);
            let mut buf = [0u8; 8];
            let code = match s.read(&mut buf) {
                Ok(n) => -(n as i32) - 1,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            };
            CODE.store(code, SeqCst);
        });
        while !parked.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(rt);
    });
    let held = peer.join().unwrap();
    assert_eq!(
        CODE.load(SeqCst),
        libc::ECANCELED,
        "the read did not fail with ECANCELED"
    );
    drop(held);
}

/// An accept loop that retries on every error (what many servers write)
/// gets `ECANCELED` from each accept at shutdown; it is abandoned after a
/// few instead of spinning on its worker until the shutdown timeout (an
/// hour here: the hang guard would fire first).
#[test]
fn an_accept_loop_that_retries_every_error_does_not_hold_up_shutdown() {
    use std::sync::Mutex;
    static ERRORS: Mutex<Vec<Option<i32>>> = Mutex::new(Vec::new());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    common::bounded("a shutdown with a retrying accept loop", move || {
        let rt = RuntimeBuilder::default()
            .workers(1)
            .shutdown_timeout(Duration::from_secs(3600))
            .build()
            .unwrap();
        let started = Arc::new(AtomicBool::new(false));
        let s2 = started.clone();
        let _h = rt.spawn(move || {
            s2.store(true, SeqCst);
            loop {
                match listener.accept() {
                    Ok(_) => {}
                    Err(e) => ERRORS.lock().unwrap().push(e.raw_os_error()),
                }
            }
        });
        while !started.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(rt);
    });
    let errors = ERRORS.lock().unwrap().clone();
    assert!(!errors.is_empty(), "the accepts never failed");
    assert!(
        errors.iter().all(|e| *e == Some(libc::ECANCELED)),
        "the accepts failed with {errors:?}, not only ECANCELED"
    );
}

/// A std socket first waited on through the hooks, then wrapped in
/// `greenstack::net::TcpStream`: the wrapper's own registration with the
/// worker's poller replaces the hooks' (one poller takes an fd once).
#[test]
fn a_std_socket_used_through_the_hooks_can_then_be_wrapped() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        for msg in [b"one", b"two"] {
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(msg).unwrap();
        }
        s
    });
    let rt = one_worker(true);
    let got = common::bounded("a wrapped socket", move || {
        rt.block_on(move || {
            greenstack::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let mut a = [0u8; 3];
                s.read_exact(&mut a).unwrap();
                let mut g = greenstack::net::TcpStream::from_std(s).unwrap();
                let mut b = [0u8; 3];
                g.read_exact(&mut b).unwrap();
                (a, b)
            })
            .join()
            .unwrap()
        })
    });
    drop(peer.join().unwrap());
    assert_eq!(&got.0, b"one");
    assert_eq!(&got.1, b"two");
}

/// A child forked from a coroutine (std forks when a `pre_exec` closure is
/// given) runs its pre-exec code with plain system calls: a `poll` with a
/// timeout there times out as it should (with the coroutine's hooks still
/// on in the child it would try to park on a runtime the child does not
/// have). The parent's wait for the child parks.
#[test]
fn a_child_forked_from_a_coroutine_runs() {
    use std::os::unix::process::CommandExt;
    let rt = one_worker(true);
    let (beats, out) = common::bounded("a forked child", move || {
        beats_during(&rt, || {
            let (quiet, _keep) = common::pipe();
            let fd = quiet.as_raw_fd();
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "sleep 0.2; echo forked"]);
            // SAFETY: the closure only makes async-signal-safe calls (a
            // poll of an inherited pipe nobody writes to).
            unsafe {
                cmd.pre_exec(move || {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    match libc::poll(&mut pfd, 1, 50) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::other("poll in the child did not time out")),
                    }
                });
            }
            let out = cmd.output().unwrap();
            drop(quiet);
            out
        })
    });
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"forked\n");
    assert!(
        beats > 0,
        "the heartbeat never beat while the forked child ran"
    );
}

/// Without pidfds (a kernel before 5.3, or a seccomp filter that refuses
/// `pidfd_open`, as some container profiles do), `Child::wait` still parks
/// the coroutine, still reports the status, and stays cancellable: in a
/// child process whose seccomp filter fails `pidfd_open` with `ENOSYS`.
#[test]
fn child_wait_without_pidfds_parks_and_can_be_cancelled() {
    const ENV: &str = "GREENSTACK_HOOK_NO_PIDFD_CHILD";
    if common::child_scenario(ENV).is_some() {
        return no_pidfd_child();
    }
    let report = ChildReport::run(
        ENV,
        "child_wait_without_pidfds_parks_and_can_be_cancelled",
        "no-pidfd",
    );
    let line = report.line("nopidfd:");
    assert!(
        line.contains(" enosys=true"),
        "pidfd_open was not refused: {line}"
    );
    assert!(line.contains(" code=Some(7)"), "wrong exit status: {line}");
    assert!(!line.contains(" beats=0 "), "held the worker: {line}");
    assert!(
        line.contains(" cancelled=true"),
        "the wait was not cancelled: {line}"
    );
    assert!(
        line.contains(" reaped=true"),
        "the cancelled wait reaped the child: {line}"
    );
}

fn no_pidfd_child() {
    // A filter of four instructions: the system call's number; if it is
    // pidfd_open, fail it with ENOSYS; else allow it. Installed before the
    // runtime starts its threads, which inherit it.
    let mut filter = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0, // offsetof(struct seccomp_data, nr)
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_pidfd_open as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with the documented arguments; `prog` and `filter`
    // outlive the call (the kernel copies the program).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0,
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: pidfd_open of our own pid; a returned fd is closed at once.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    let enosys = r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS);
    if r >= 0 {
        // SAFETY: the fd just returned, closed once.
        unsafe { libc::close(r as i32) };
    }
    let rt = one_worker(true);
    let (beats, code) = beats_during(&rt, || {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3; exit 7"])
            .spawn()
            .unwrap();
        child.wait().unwrap().code()
    });
    // Cancelled while it waits for a child that would sleep for an hour;
    // the child is still there to reap afterwards.
    let (cancelled, reaped) = rt.block_on(|| {
        let child = std::process::Command::new("sleep")
            .arg("3600")
            .spawn()
            .unwrap();
        let h = greenstack::spawn(move || {
            let mut child = child;
            let e = child.wait().unwrap_err();
            (child, e)
        });
        greenstack::time::sleep(Duration::from_millis(100));
        h.cancel();
        let (mut child, e) = h.join().expect("the waiting coroutine");
        let cancelled = greenstack::cancel::is_cancellation(&e);
        child.kill().unwrap();
        let reaped = child.wait().map(|s| s.code().is_none()).unwrap_or(false);
        (cancelled, reaped)
    });
    println!("nopidfd: enosys={enosys} code={code:?} beats={beats} cancelled={cancelled} reaped={reaped}");
}

/// Joining a plain thread (`JoinHandle::join`, `pthread_join`) in a
/// coroutine parks: the thread ends only once the heartbeat has beaten
/// during the join (a blocked worker never lets it, and the hang guard
/// fires). The thread's value, and a panicking thread's `Err`, come back
/// as std's; a thread that has ended already is joined at once.
#[test]
fn joining_a_std_thread_parks_the_coroutine() {
    let beats = Arc::new(AtomicUsize::new(0));
    let b = Arc::clone(&beats);
    let (during, (value, panicked, early)) = common::bounded("joining a std thread", move || {
        let rt = one_worker(true);
        beats_counted_in(&rt, beats, move || {
            let t = std::thread::spawn(move || {
                while b.load(SeqCst) == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                7u32
            });
            let value = t.join().unwrap();
            let p = std::thread::spawn(|| panic!("the joined thread panics on purpose"));
            let panicked = p.join().is_err();
            let done = std::thread::spawn(|| 9u32);
            std::thread::sleep(Duration::from_millis(20));
            (value, panicked, done.join().unwrap())
        })
    });
    assert!(during > 0, "the join blocked the worker");
    assert_eq!((value, panicked, early), (7, true, 9));
}

/// std's `stdout` and `stderr` are reentrant locks owned by the OS thread,
/// around a `RefCell`: were a coroutine parked in a write to a full pipe
/// while holding one, another coroutine of the same worker printing would
/// re-enter the lock and panic ("already borrowed"). So writes to fds 1 and
/// 2 block the worker instead, as without the hooks: on one worker, one
/// coroutine writes 256 KiB to a stream that is a pipe nobody reads for a
/// while, another prints a line meanwhile, and both succeed, in order.
#[test]
fn printing_while_another_coroutine_writes_to_a_full_stdout_or_stderr_works() {
    const ENV: &str = "GREENSTACK_HOOK_STD_STREAM_CHILD";
    if let Some(fd) = common::child_scenario(ENV) {
        return std_stream_child(fd.parse().expect("an fd"));
    }
    for fd in ["1", "2"] {
        let report = ChildReport::run(
            ENV,
            "printing_while_another_coroutine_writes_to_a_full_stdout_or_stderr_works",
            fd,
        );
        let line = report.line("std_stream:");
        assert_eq!(
            line,
            format!("std_stream: fd={fd} printer_ok=true bytes=262146 in_order=true"),
            "{}",
            common::describe(&report.out)
        );
    }
}

fn std_stream_child(fd: i32) {
    const BIG: usize = 256 * 1024;
    let (mut r, w) = common::pipe();
    // SAFETY: dup and dup2 of fds this process owns; `saved` restores the
    // stream afterwards.
    let saved = unsafe { libc::dup(fd) };
    assert!(saved >= 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::dup2(w.as_raw_fd(), fd) }, fd);
    drop(w);
    // The pipe holds 64 KiB: the big write fills it and waits for this
    // reader, which starts late and reads to the end (once the stream is
    // restored below, the pipe has no writer left).
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        all
    });
    let rt = one_worker(true);
    let printer_ok = rt.block_on(move || {
        let writer = greenstack::spawn(move || {
            // Fill the pipe first (its 64 KiB, not through std: no lock
            // held), so the printed rest finds it full while std's lock is
            // held, where the hooks would park.
            let fill = [b'a'; 64 * 1024];
            // SAFETY: a write of a live buffer.
            let n = unsafe { libc::write(fd, fill.as_ptr().cast(), fill.len()) };
            assert_eq!(n, fill.len() as isize);
            let big = "a".repeat(BIG - fill.len());
            if fd == 1 {
                print!("{big}");
                std::io::stdout().flush().unwrap();
            } else {
                eprint!("{big}");
            }
        });
        let printer = greenstack::spawn(move || {
            greenstack::time::sleep(Duration::from_millis(20));
            if fd == 1 {
                println!("b");
                std::io::stdout().flush().unwrap();
            } else {
                eprintln!("b");
            }
        });
        let ok = printer.join().is_ok();
        writer.join().expect("the big write");
        ok
    });
    drop(rt);
    // SAFETY: as above; closes the pipe's last write end.
    assert_eq!(unsafe { libc::dup2(saved, fd) }, fd);
    // SAFETY: `saved` is ours and no longer needed.
    unsafe { libc::close(saved) };
    let all = reader.join().expect("the reader");
    let in_order =
        all.len() == BIG + 2 && all[..BIG].iter().all(|&c| c == b'a') && &all[BIG..] == b"b\n";
    println!(
        "std_stream: fd={fd} printer_ok={printer_ok} bytes={} in_order={in_order}",
        all.len()
    );
}
