//! TCP echo throughput: N client coroutines each doing request/response
//! round trips of 64 bytes against an echo server of one coroutine per
//! connection, all on one 2-worker runtime over loopback. Reports time per
//! round trip, for 100 and 1,000 connections.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use greenstack::net::{TcpListener, TcpStream};
use greenstack::Runtime;

/// Round trips per connection per measured iteration.
const TRIPS: u64 = 100;

/// Starts an echo server; returns its address.
fn start_server(rt: &Runtime) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            greenstack::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut buf = [0u8; 64];
                while conn.read_exact(&mut buf).is_ok() {
                    if conn.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `conns` clients doing `TRIPS` round trips each; returns the time.
fn run(rt: &Runtime, addr: std::net::SocketAddr, conns: usize) -> Duration {
    rt.spawn(move || {
        let streams: Vec<TcpStream> = (0..conns)
            .map(|_| {
                let s = TcpStream::connect(addr).expect("connect");
                s.set_nodelay(true).expect("nodelay");
                s
            })
            .collect();
        let start = Instant::now();
        let clients: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                greenstack::spawn(move || {
                    let msg = [i as u8; 64];
                    let mut back = [0u8; 64];
                    for _ in 0..TRIPS {
                        s.write_all(&msg).expect("write");
                        s.read_exact(&mut back).expect("read");
                        assert_eq!(back, msg);
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client does not panic");
        }
        start.elapsed()
    })
    .join()
    .expect("driver does not panic")
}

/// Raises the soft open-file limit to the hard one (1,000 connections need
/// 2,000 descriptors).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The benchmark group.
fn bench(c: &mut Criterion) {
    raise_fd_limit();
    let rt = Runtime::builder().workers(2).build().expect("runtime");
    let addr = start_server(&rt);
    let mut g = c.benchmark_group("tcp_echo");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for conns in [100usize, 1000] {
        g.throughput(Throughput::Elements(conns as u64 * TRIPS));
        g.bench_function(format!("{conns}_connections"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(&rt, addr, conns)).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
