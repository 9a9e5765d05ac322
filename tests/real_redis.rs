//! The sync `redis` crate, unchanged, against a real `redis-server`
//! (issue 18): 5,000 coroutines on 2 workers each wait in `BLPOP` on a key
//! of its own, and only when the server reports all 5,000 blocked does
//! the main coroutine push every key. That can finish only if every
//! waiter parks its coroutine, not a worker: 2 workers blocked in `recv`
//! would hold 2 of them and the server would never see the rest.
//!
//! The test command installs `redis-server` (Debian's package); the test
//! starts its own on a free loopback port and stops it at the end.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;

/// A `redis-server` child, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "10000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "starting redis-server: the test command installs it (apt-get install redis-server)",
        );
    let server = Server { child, port };
    let url = server.url();
    let t = Instant::now();
    loop {
        let up = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if up.is_ok() {
            return server;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "redis-server did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// The number of clients the server reports blocked in a command.
fn blocked_clients(c: &mut redis::Connection) -> usize {
    let info: String = redis::cmd("INFO").arg("clients").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO clients reports blocked_clients")
}

#[test]
fn five_thousand_blpop_waiters_on_two_workers() {
    const N: usize = 5_000;
    let server = start_redis();
    let url = server.url();
    let rt = common::runtime(2);
    let (values, blocked_at_push, took) =
        common::bounded_for("5,000 BLPOP waiters", Duration::from_secs(120), move || {
            rt.block_on(move || {
                let t = Instant::now();
                let client = redis::Client::open(url.as_str()).unwrap();
                let waiters: Vec<_> = (0..N)
                    .map(|i| {
                        let client = client.clone();
                        greenstack::spawn(move || {
                            let mut c = client.get_connection().expect("a connection per waiter");
                            let (_key, v): (String, String) =
                                c.blpop(format!("greenstack:key:{i}"), 0.0).expect("BLPOP");
                            v
                        })
                    })
                    .collect();
                // The main coroutine: waits until the server holds every
                // waiter blocked, then pushes every key.
                let main = greenstack::spawn(move || {
                    let mut c = client.get_connection().unwrap();
                    let mut blocked = blocked_clients(&mut c);
                    while blocked < N {
                        std::thread::sleep(Duration::from_millis(10));
                        blocked = blocked_clients(&mut c);
                    }
                    let mut pipe = redis::pipe();
                    for i in 0..N {
                        pipe.rpush(format!("greenstack:key:{i}"), format!("value {i}"))
                            .ignore();
                    }
                    pipe.query::<()>(&mut c).unwrap();
                    blocked
                });
                let blocked = main.join().unwrap();
                let values: Vec<String> = waiters.into_iter().map(|h| h.join().unwrap()).collect();
                (values, blocked, t.elapsed())
            })
        });
    assert_eq!(blocked_at_push, N);
    assert_eq!(values.len(), N);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v, &format!("value {i}"), "waiter {i} got another value");
    }
    println!("{N} BLPOP waiters on 2 workers, all blocked at once, served in {took:?}");
    drop(server);
}
