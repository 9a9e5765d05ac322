//! Every example runs to completion (the servers serve one scripted request,
//! curl, or wrk for a second), and a crate outside this workspace can use
//! the macros and `sync`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

mod common;

/// The directory cargo put this profile's example binaries in.
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/..");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example binary {} missing: cargo test builds examples",
        path.display()
    );
    Command::new(path)
}

/// Runs an example to completion; returns its stdout.
fn run(name: &str, args: &[&str]) -> String {
    let out = example(name).args(args).output().expect("run example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn showcase_runs() {
    let out = run("showcase", &[]);
    assert!(out.contains("checksum ok"), "{out}");
    assert!(out.contains("parsed 100000 nested levels"), "{out}");
    assert!(out.contains("fib(25) = 75025"), "{out}");
    assert!(out.contains("no-fault-section violations"), "{out}");
}

/// Issue 17, item 13 (b): with the `mprotect` fallback, at a mapping limit
/// of Linux's default 65,530 (planned for through `GREENSTACK_MAX_MAP_COUNT`
/// on machines set higher), the showcase parks as many coroutines as fit,
/// says how many and why, and exits 0 (it aborted when malloc found no
/// mapping left, or panicked at the spawn limit).
#[test]
fn showcase_reports_the_mapping_limit_with_the_fallback() {
    let mut child = example("showcase")
        .env("GREENSTACK_GUARD_MODE", "mprotect")
        .env("GREENSTACK_MAX_MAP_COUNT", "65530")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run example");
    // Hang guard (it hung inside its own panic's allocation before): far
    // above what the run takes, polled, and the child is killed past it.
    let guard = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while child
        .try_wait()
        .expect("waiting for the showcase")
        .is_none()
    {
        if std::time::Instant::now() > guard {
            let _ = child.kill();
            panic!("hang guard: the showcase did not finish within 600 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("collecting the output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "showcase failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("of 100000 coroutines fit"), "{stdout}");
    assert!(stdout.contains("vm.max_map_count (65530)"), "{stdout}");
    assert!(stdout.contains("checksum ok"), "{stdout}");
    assert!(stdout.contains("fib(25) = 75025"), "{stdout}");
}

#[test]
fn fanout_fib_runs() {
    let out = run("fanout_fib", &["18"]);
    assert!(out.contains("fib(18) = 2584"), "{out}");
}

#[test]
fn deep_recursion_runs() {
    let out = run("deep_recursion", &["100000"]);
    assert!(out.contains("parsed 100000 nested levels"), "{out}");
}

#[test]
fn async_interop_runs() {
    let out = run("async_interop", &[]);
    assert!(out.contains("completed by another thread"), "{out}");
    assert!(out.contains("sum of squares = 285"), "{out}");
}

/// Kills the server when the test ends, however it ends. Keeps the read
/// end of its stdout open meanwhile, so its prints do not fail.
struct Server(Child, BufReader<std::process::ChildStdout>);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server example on an ephemeral port; returns it and its address.
fn start_server(name: &str) -> (Server, String) {
    start_server_with(name, &[])
}

/// [`start_server`] with more arguments after the address.
fn start_server_with(name: &str, args: &[&str]) -> (Server, String) {
    let mut child = example(name)
        .arg("127.0.0.1:0")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server example");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("the server prints its address");
    let server = Server(child, reader);
    let addr = line
        .split_whitespace()
        .last()
        .expect("an address")
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    (server, addr)
}

#[test]
fn echo_server_echoes() {
    let (_server, addr) = start_server("echo_server");
    let mut c = TcpStream::connect(&addr).expect("connect to echo_server");
    c.write_all(b"greenstack echo").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    c.read_to_string(&mut back).unwrap();
    assert_eq!(back, "greenstack echo");
}

/// SIGTERM drains echo_server: no new connections, the open one is still
/// echoed, and the server exits with status 0 once it closes.
#[test]
fn echo_server_drains_on_sigterm() {
    let (mut server, addr) = start_server("echo_server");
    let mut c = TcpStream::connect(&addr).expect("connect to echo_server");
    let mut buf = [0u8; 5];
    c.write_all(b"first").unwrap();
    c.read_exact(&mut buf).unwrap();
    // SAFETY: a signal to the child we started.
    assert_eq!(
        unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) },
        0
    );
    let mut line = String::new();
    while !line.contains("draining") {
        line.clear();
        assert!(server.1.read_line(&mut line).unwrap() > 0, "no drain");
    }
    assert!(
        TcpStream::connect(&addr).is_err(),
        "accepted while draining"
    );
    c.write_all(b"again").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"again");
    drop(c);
    let status = server.0.wait().unwrap();
    let mut rest = String::new();
    server.1.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}");
    assert!(rest.contains("drained"), "{rest:?}");
}

#[test]
fn http_hello_answers_keep_alive_requests() {
    let (_server, addr) = start_server("http_hello");
    let mut c = TcpStream::connect(&addr).expect("connect to http_hello");
    c.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 2, "{resp}");
    assert_eq!(resp.matches("Hello, world!").count(), 2, "{resp}");

    // 16 pipelined in one write (answered with one write), then one split
    // across two writes in the middle of its header.
    let mut c = TcpStream::connect(&addr).expect("connect to http_hello");
    c.write_all(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(16))
        .unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.write_all(b"st: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 17, "{resp}");
}

/// SIGTERM drains http_hello: it stops accepting, keeps serving the open
/// connection, and exits with status 0 once that one closes.
#[test]
fn http_hello_drains_on_sigterm() {
    let (mut server, addr) = start_server("http_hello");
    let mut c = TcpStream::connect(&addr).expect("connect to http_hello");
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut buf = [0u8; 4096];
    c.write_all(request).unwrap();
    let n = c.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    // SAFETY: a signal to the child we started.
    assert_eq!(
        unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) },
        0
    );
    let mut line = String::new();
    server.1.read_line(&mut line).unwrap();
    assert!(line.contains("draining"), "{line:?}");
    assert!(
        TcpStream::connect(&addr).is_err(),
        "a new connection was accepted while draining"
    );
    c.write_all(request).unwrap();
    let n = c.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 OK"),
        "not served while draining"
    );
    drop(c);
    let status = server.0.wait().unwrap();
    let mut rest = String::new();
    server.1.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}");
    assert!(rest.contains("drained"), "{line:?} then {rest:?}");
}

/// Runs curl (Debian's, installed by `scripts/test-all.sh`) with `args`,
/// checks it succeeded and returns what it printed.
#[cfg(all(feature = "tokio", feature = "hyper"))]
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(args)
        .output()
        .expect("curl (installed by scripts/test-all.sh)");
    assert!(out.status.success(), "curl failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// hyper 1.x on greenstack (the `hyper` feature), checked with curl: the
/// response hyper wrote, over a keep-alive connection that serves two
/// requests.
// The three async examples are built by `examples/async`'s package, which
// enables both features on `greenstack` (so they are on whenever
// `cargo test --workspace` builds these tests with it).
#[cfg(all(feature = "tokio", feature = "hyper"))]
#[test]
fn hyper_server_answers_curl() {
    let (_server, addr) = start_server("hyper_server");
    let url = format!("http://{addr}/");
    let body = curl(&["-s", "-i", &url, &url]);
    assert_eq!(body.matches("HTTP/1.1 200 OK").count(), 2, "{body}");
    assert_eq!(body.matches("Hello, world!").count(), 2, "{body}");
}

/// wrk's Lua hooks: every response's status and body checked, the counts
/// gathered from each wrk thread's own Lua state in `done` (a thread's
/// globals are not the main state's).
const WRK_CHECK: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  seen = (seen or 0) + 1
  if status ~= 200 or body ~= "Hello, world!" then bad = (bad or 0) + 1 end
end
function done(summary, latency, requests)
  local s, b = 0, 0
  for _, t in ipairs(threads) do
    s = s + (t:get("seen") or 0)
    b = b + (t:get("bad") or 0)
  end
  io.write(string.format("checked %d bad %d\n", s, b))
end
"#;

/// Drives the server at `addr` with wrk (Debian's, installed by
/// `scripts/test-all.sh`) for a second over 50 keep-alive connections and
/// checks what it reports: responses seen, each a 200 with the hello body,
/// and no socket error or other status. Returns the count of responses.
fn wrk_hello(addr: &str) -> u64 {
    // One file per call: the tests calling this run in parallel.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let script =
        std::env::temp_dir().join(format!("greenstack-wrk-{}-{call}.lua", std::process::id()));
    std::fs::write(&script, WRK_CHECK).expect("writing wrk's script");
    let out = Command::new("wrk")
        .args(["-t2", "-c50", "-d1s", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .output()
        .expect("wrk (installed by scripts/test-all.sh)");
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {out:?}");
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("checked "))
        .unwrap_or_else(|| panic!("no count from the script: {text}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [seen, bad] = nums[..] else {
        panic!("{line}")
    };
    assert_eq!(bad, 0, "responses other than 200 \"Hello, world!\": {text}");
    assert!(seen > 0, "no response checked: {text}");
    seen
}

/// `examples/http_hello` under wrk: every response whole and right.
#[test]
fn http_hello_serves_wrk() {
    let (_server, addr) = start_server("http_hello");
    wrk_hello(&addr);
}

/// hyper on greenstack under wrk, the client the compare harness drives
/// it with: every response whole and right.
#[cfg(all(feature = "tokio", feature = "hyper"))]
#[test]
fn hyper_server_serves_wrk() {
    let (_server, addr) = start_server("hyper_server");
    wrk_hello(&addr);
}

/// hyper's header-read timeout on greenstack's timers (`hyper_rt::Timer`,
/// `hyper_server`'s second argument): a client that sends half a request
/// head is dropped. Without the argument the same client is kept waiting.
#[cfg(all(feature = "tokio", feature = "hyper"))]
#[test]
fn hyper_server_drops_a_client_too_slow_to_send_its_head() {
    use std::time::Duration;
    let half_a_head = |addr: &str, wait: Duration| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        (
            r.map_err(|e| e.kind()),
            String::from_utf8_lossy(&got).into_owned(),
        )
    };
    let (_server, addr) = start_server_with("hyper_server", &["1"]);
    let (r, got) = half_a_head(&addr, Duration::from_secs(20));
    assert!(r.is_ok(), "the server closed the connection: {r:?}");
    assert!(!got.contains("200 OK"), "{got}");
    let (_server, addr) = start_server("hyper_server");
    let (r, got) = half_a_head(&addr, Duration::from_secs(2));
    assert!(
        matches!(
            r,
            Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "without a timeout the connection stays open: {r:?} {got}"
    );
}

/// rustls over greenstack's sockets, checked with curl (`--insecure`: the
/// certificate is self-signed at start-up).
#[cfg(all(feature = "tokio", feature = "hyper"))]
#[test]
fn https_hello_answers_curl_over_tls() {
    let (_server, addr) = start_server("https_hello");
    let url = format!("https://{addr}/");
    assert_eq!(
        curl(&["-s", "--insecure", &url, &url]),
        "Hello, world!Hello, world!"
    );
}

/// reqwest (async, tokio-based) from 1,000 coroutines through the `tokio`
/// feature, against http_hello.
#[cfg(all(feature = "tokio", feature = "hyper"))]
#[test]
fn async_client_fetches_from_a_thousand_coroutines() {
    let (_server, addr) = start_server("http_hello");
    let out = run("async_client", &[&format!("http://{addr}/"), "1000"]);
    assert!(
        out.contains("1000 of 1000 requests answered 200 (\"Hello, world!\")"),
        "{out}"
    );
}

#[test]
fn blocking_calls_prints_the_heartbeat_table() {
    let out = run("blocking_calls", &[]);
    for row in [
        "| std::fs::read of a FIFO",
        "| std::net::TcpStream read",
        "| Command::new",
        "| std::thread::sleep(500 ms) |",
    ] {
        assert!(out.contains(row), "row {row:?} missing:\n{out}");
    }
}

/// A gate in front of `upstream`: holds every request it receives until
/// `n` requests are waiting at once, then forwards each and relays its
/// answer (one plain thread per connection). Returns the gate's address.
fn gate(upstream: String, n: usize) -> String {
    use std::sync::{Arc, Condvar, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let waiting = Arc::new((Mutex::new(0usize), Condvar::new()));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (upstream, waiting) = (upstream.clone(), waiting.clone());
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => req.extend_from_slice(&buf[..k]),
                        }
                    }
                    let (count, cvar) = &*waiting;
                    let mut c = count.lock().unwrap();
                    *c += 1;
                    cvar.notify_all();
                    while *c < n {
                        c = cvar.wait(c).unwrap();
                    }
                    drop(c);
                    let mut up = TcpStream::connect(&upstream).unwrap();
                    up.write_all(&req).unwrap();
                    let mut resp = vec![0u8; 4096];
                    let k = up.read(&mut resp).unwrap();
                    let _ = conn.write_all(&resp[..k]);
                })
                .unwrap();
        }
    });
    addr
}

/// The blocking `ureq` HTTP client, unchanged, from 1,000 coroutines at
/// once on 2 workers against `examples/http_hello` (issue 18), through a
/// gate that answers none until all 1,000 requests wait at once: that
/// finishes only if every request parks its coroutine, not a worker.
#[test]
fn ureq_from_a_thousand_coroutines_fetches_from_http_hello() {
    const N: usize = 1_000;
    let (_server, addr) = start_server("http_hello");
    let url = format!("http://{}/", gate(addr, N));
    let rt = greenstack::Runtime::builder()
        .workers(2)
        .build()
        .expect("a runtime");
    let started = std::time::Instant::now();
    let bodies = common::bounded_for(
        "1,000 ureq fetches",
        std::time::Duration::from_secs(120),
        move || {
            rt.block_on(move || {
                let agent = ureq::AgentBuilder::new().max_idle_connections(0).build();
                let all_in = std::sync::Arc::new(greenstack::sync::Barrier::new(N));
                let handles: Vec<_> = (0..N)
                    .map(|_| {
                        let (agent, url, all_in) = (agent.clone(), url.clone(), all_in.clone());
                        greenstack::spawn(move || {
                            // All 1,000 exist before the first request goes out.
                            all_in.wait();
                            agent
                                .get(&url)
                                .call()
                                .expect("GET from http_hello")
                                .into_string()
                                .expect("a text body")
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a fetching coroutine"))
                    .collect::<Vec<_>>()
            })
        },
    );
    assert_eq!(bodies.len(), N);
    assert!(
        bodies.iter().all(|b| b == "Hello, world!"),
        "a body differs"
    );
    println!(
        "{N} ureq fetches from 1,000 coroutines on 2 workers in {:?}",
        started.elapsed()
    );
}

#[test]
fn a_crate_outside_the_workspace_uses_main_spawn_and_sync() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("greenstack-user-crate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"user-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\ngreenstack = {{ path = {:?} }}\n\n[workspace]\n",
            root.display().to_string()
        ),
    )
    .unwrap();
    // Pin the same dependency versions as this workspace (works offline).
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        r#"
use std::sync::Arc;
use greenstack::sync::{mpsc, Mutex, WaitGroup};

#[greenstack::main(workers = 2)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total = Arc::new(Mutex::new(0u64));
    let wg = Arc::new(WaitGroup::new());
    let (tx, rx) = mpsc::channel();
    for i in 1..=100u64 {
        let (total, wg, tx) = (Arc::clone(&total), Arc::clone(&wg), tx.clone());
        wg.add(1);
        greenstack::spawn!(name = format!("adder-{i}"), move || {
            *total.lock() += i;
            tx.send(i).unwrap();
            wg.done();
        });
    }
    drop(tx);
    wg.wait();
    let received: u64 = rx.iter().sum();
    let sum = *total.lock();
    println!("user crate: sum {sum}, received {received}");
    assert_eq!((sum, received), (5050, 5050));
    Ok(())
}
"#,
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["run", "--quiet", "--offline"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", root.join("target").join("user-crate"))
        .output()
        .expect("run cargo on the user crate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "user crate failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("user crate: sum 5050, received 5050"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
