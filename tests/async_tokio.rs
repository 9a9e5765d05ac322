//! The async ecosystem from coroutines (the `tokio` feature): futures that
//! need tokio's reactor and timer awaited with `block_on_future`, futures
//! run as coroutines with `spawn_future`, and greenstack's sockets driven
//! through tokio's and futures-io's async I/O traits by greenstack's own
//! poller.
#![cfg(feature = "tokio")]

mod common;

use std::future::poll_fn;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::*;
use greenstack::{block_on_future, net, spawn_future};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A greenstack echo server on a loopback port, for `conns` connections.
fn echo_server(rt: &greenstack::Runtime, conns: usize) -> std::net::SocketAddr {
    let listener = net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(move || {
        for _ in 0..conns {
            let (mut s, _) = listener.accept().unwrap();
            greenstack::spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    match std::io::Read::read(&mut s, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => std::io::Write::write_all(&mut s, &buf[..n]).unwrap(),
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn tokio_timers_and_sockets_work_from_coroutines() {
    bounded("tokio from coroutines", || {
        let rt = runtime(2);
        let addr = echo_server(&rt, 100);
        let clients: Vec<_> = (0..100u32)
            .map(|i| {
                rt.spawn(move || {
                    let t = Instant::now();
                    block_on_future(tokio::time::sleep(Duration::from_millis(10)));
                    assert!(t.elapsed() >= Duration::from_millis(10));
                    block_on_future(async move {
                        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                        let msg = i.to_le_bytes();
                        s.write_all(&msg).await.unwrap();
                        let mut back = [0u8; 4];
                        s.read_exact(&mut back).await.unwrap();
                        u32::from_le_bytes(back)
                    })
                })
            })
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            assert_eq!(c.join().unwrap(), i as u32);
        }
    });
}

#[test]
fn spawn_future_runs_async_code_as_a_coroutine() {
    bounded("spawn_future", || {
        let rt = runtime(2);
        // From a plain thread, through the runtime.
        let h = rt.spawn_future(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            7
        });
        assert_eq!(h.join().unwrap(), 7);
        // From a coroutine; a panic in the future is the join's Err.
        let r = rt.block_on(|| {
            let ok = spawn_future(async { 1 + 1 });
            let bad = spawn_future(async { panic!("in a future") });
            (ok.join().unwrap(), bad.join().is_err())
        });
        assert_eq!(r, (2, true));
    });
}

#[test]
fn greenstack_sockets_are_async_read_and_write() {
    bounded("async traits", || {
        let rt = runtime(2);
        let addr = echo_server(&rt, 2);
        // tokio's traits, in a future run as a coroutine.
        let h = rt.spawn_future(async move {
            let mut s = net::TcpStream::connect(addr).unwrap();
            AsyncWriteExt::write_all(&mut s, b"hello").await.unwrap();
            let mut back = [0u8; 5];
            AsyncReadExt::read_exact(&mut s, &mut back).await.unwrap();
            back
        });
        assert_eq!(&h.join().unwrap(), b"hello");
        // futures-io's traits, polled by hand.
        let h = rt.spawn_future(async move {
            let mut s = net::TcpStream::connect(addr).unwrap();
            let n = poll_fn(|cx| futures_io::AsyncWrite::poll_write(Pin::new(&mut s), cx, b"abc"))
                .await
                .unwrap();
            assert_eq!(n, 3);
            let mut got = Vec::new();
            while got.len() < 3 {
                let mut buf = [0u8; 8];
                let n =
                    poll_fn(|cx| futures_io::AsyncRead::poll_read(Pin::new(&mut s), cx, &mut buf))
                        .await
                        .unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            poll_fn(|cx| futures_io::AsyncWrite::poll_close(Pin::new(&mut s), cx))
                .await
                .unwrap();
            got
        });
        assert_eq!(h.join().unwrap(), b"abc");
    });
}

#[test]
fn a_greenstack_socket_polled_off_a_worker_says_so() {
    bounded("off a worker", || {
        let rt = runtime(1);
        let addr = echo_server(&rt, 1);
        let mut s = net::TcpStream::connect(addr).unwrap();
        // A plain thread: nothing to read yet, and no poller to wake it.
        let e =
            block_on_future(async { AsyncReadExt::read(&mut s, &mut [0u8; 4]).await }).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    });
}

#[test]
fn tokio_futures_can_be_made_anywhere_in_a_coroutine_or_block_on_root() {
    bounded("context", || {
        let rt = runtime(1);
        // Made outside block_on_future (tokio looks for its context at
        // construction): in a block_on root and in a spawned coroutine.
        rt.block_on(|| {
            let sleep = tokio::time::sleep(Duration::from_millis(1));
            block_on_future(sleep);
            let h = greenstack::spawn(|| {
                let sleep = tokio::time::sleep(Duration::from_millis(1));
                block_on_future(sleep);
                tokio::runtime::Handle::try_current().is_ok()
            });
            assert!(h.join().unwrap());
        });
        // A plain thread is inside the context during block_on_future.
        block_on_future(async { tokio::time::sleep(Duration::from_millis(1)).await });
    });
}

/// The worker's tokio context is a handle's, not a running runtime's: a
/// coroutine may still drive its own tokio runtime with `block_on` (tokio
/// refuses that inside a runtime it is driving).
#[test]
fn a_coroutine_may_still_block_on_a_tokio_runtime_of_its_own() {
    let rt = runtime(1);
    let v = rt.spawn(|| {
        let own = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        own.block_on(async { 3 })
    });
    assert_eq!(v.join().unwrap(), 3);
}

/// A std socket a coroutine first reads through the blocking-call hooks
/// (its worker's poller then watches the fd for them), then wraps as a
/// greenstack socket and awaits in a future polled on the same worker's
/// stack: the wrap takes over the hooks' registration, so the await is
/// woken by the data instead of failing with `EEXIST`.
#[test]
fn a_socket_used_through_the_hooks_then_awaited_on_the_worker_stack() {
    bounded("hooks, then spawn_future", || {
        let rt = runtime(1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (reading_tx, reading_rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            // The first byte once the coroutine reads, so that it parks.
            reading_rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            std::io::Write::write_all(&mut client, b"a").unwrap();
            // The second byte only once the future waits for it.
            go_rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            std::io::Write::write_all(&mut client, b"b").unwrap();
            client
        });
        let got = rt.block_on(move || {
            greenstack::spawn(move || {
                let mut server = server;
                let mut b = [0u8; 1];
                // A blocking std read: parks through the hooks.
                reading_tx.send(()).unwrap();
                std::io::Read::read_exact(&mut server, &mut b).unwrap();
                let mut s = net::TcpStream::from_std(server).unwrap();
                let second = spawn_future(async move {
                    go_tx.send(()).unwrap();
                    let mut c = [0u8; 1];
                    let n = poll_fn(|cx| {
                        futures_io::AsyncRead::poll_read(Pin::new(&mut s), cx, &mut c)
                    })
                    .await;
                    n.map(|n| c[..n].to_vec())
                })
                .join()
                .unwrap();
                (b[0], second)
            })
            .join()
            .unwrap()
        });
        let _client = writer.join().unwrap();
        assert_eq!(got.0, b'a');
        assert_eq!(got.1.unwrap(), b"b");
    });
}

/// Environment variable of the child process of
/// `async_writes_to_a_closed_peer_fail_instead_of_raising_sigpipe`.
const PIPE_CHILD: &str = "GREENSTACK_ASYNC_PIPE_CHILD";

/// An async write to a peer that has closed fails with an error, as std's
/// socket writes do, instead of raising SIGPIPE: checked in a child with
/// SIGPIPE back at its default action (which kills), the way a program
/// that is not Rust's starts, for a write of one slice (`send`) and of two
/// (`sendmsg`).
#[test]
fn async_writes_to_a_closed_peer_fail_instead_of_raising_sigpipe() {
    if child_scenario(PIPE_CHILD).is_some() {
        // SAFETY: restoring a signal's default action has no memory
        // preconditions; no handler of ours is replaced (Rust ignores
        // SIGPIPE, greenstack installs none for it).
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let rt = runtime(1);
        let listener = net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        for slices in [1usize, 2] {
            let mut s = net::TcpStream::connect(addr).unwrap();
            // The peer closes at once: the first write draws a reset, the
            // next ones fail.
            drop(listener.accept().unwrap());
            let kind = rt
                .spawn_future(async move {
                    let chunk = [7u8; 1024];
                    let bufs = [std::io::IoSlice::new(&chunk), std::io::IoSlice::new(&chunk)];
                    loop {
                        let r = poll_fn(|cx| {
                            futures_io::AsyncWrite::poll_write_vectored(
                                Pin::new(&mut s),
                                cx,
                                &bufs[..slices],
                            )
                        })
                        .await;
                        if let Err(e) = r {
                            return e.kind();
                        }
                    }
                })
                .join()
                .unwrap();
            assert!(
                matches!(
                    kind,
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ),
                "{slices} slice(s): {kind:?}"
            );
        }
        println!("both writes failed with an error");
        return;
    }
    let out = run_child(
        PIPE_CHILD,
        "async_writes_to_a_closed_peer_fail_instead_of_raising_sigpipe",
        "run",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("both writes failed with an error"),
        "{}",
        describe(&out)
    );
}
