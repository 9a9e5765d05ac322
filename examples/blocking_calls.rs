//! Blocking calls of std, unchanged, inside coroutines: how long a 10 ms
//! heartbeat on the same (single) worker goes without beating while
//! another coroutine makes the call, with the hooks on (the default) and
//! off.
//!
//! Run with `cargo run --release --example blocking_calls`. As root it
//! also resolves a name through a resolver that never answers (in its own
//! mount namespace, with its own `/etc/resolv.conf`); otherwise that row
//! is skipped.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenstack::Runtime;

/// The heartbeat's largest gap while `call` runs in a coroutine next to it.
fn largest_gap(hooks: bool, call: fn()) -> Duration {
    let rt = Runtime::builder()
        .workers(1)
        .hook_blocking_calls(hooks)
        .watchdog(None)
        .build()
        .expect("a runtime");
    rt.block_on(move || {
        let stop = Arc::new(AtomicBool::new(false));
        let gap = Arc::new(Mutex::new(Duration::ZERO));
        let hb = {
            let (stop, gap) = (stop.clone(), gap.clone());
            greenstack::spawn(move || {
                let mut last = Instant::now();
                while !stop.load(SeqCst) {
                    greenstack::time::sleep(Duration::from_millis(10));
                    let now = Instant::now();
                    let mut g = gap.lock().unwrap();
                    *g = (*g).max(now - last);
                    last = now;
                }
            })
        };
        greenstack::spawn(move || {
            greenstack::time::sleep(Duration::from_millis(30));
            call();
            greenstack::time::sleep(Duration::from_millis(30));
        })
        .join()
        .unwrap();
        stop.store(true, SeqCst);
        hb.join().unwrap();
        let g = *gap.lock().unwrap();
        g
    })
}

fn fifo_read() {
    let dir = std::env::temp_dir().join(format!("greenstack-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fifo");
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p = path.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        std::fs::write(&p, b"late").unwrap();
    });
    assert_eq!(std::fs::read(&path).unwrap(), b"late");
    writer.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tcp_read_with_timeout() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let _peer = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert!(s.read(&mut buf).is_err(), "the peer is silent");
}

fn command_output() {
    let out = std::process::Command::new("sleep")
        .arg("0.5")
        .output()
        .unwrap();
    assert!(out.status.success());
}

fn thread_sleep() {
    std::thread::sleep(Duration::from_millis(500));
}

fn dns_silent_resolver() {
    use std::net::ToSocketAddrs;
    assert!(("db.example.internal", 5432).to_socket_addrs().is_err());
}

/// Points this process's resolver at a UDP socket that never answers
/// (1 s timeout, one attempt), in a mount namespace of its own. Needs root.
fn silence_the_resolver() -> Result<std::net::UdpSocket, String> {
    use std::ffi::CString;
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain system calls; only this process's mounts change.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(err("unshare"));
        }
        let root = CString::new("/").unwrap();
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(err("mount --make-rprivate /"));
        }
    }
    let conf = std::env::temp_dir().join(format!("greenstack-resolv-{}", std::process::id()));
    std::fs::write(
        &conf,
        "nameserver 127.0.0.77\noptions timeout:1 attempts:1\n",
    )
    .map_err(|e| e.to_string())?;
    let src = CString::new(conf.as_os_str().as_encoded_bytes()).unwrap();
    let dst = CString::new("/etc/resolv.conf").unwrap();
    // SAFETY: bind-mounts our file over resolv.conf in our namespace.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    let _ = std::fs::remove_file(&conf);
    if rc != 0 {
        return Err(err("bind mount over /etc/resolv.conf"));
    }
    std::net::UdpSocket::bind("127.0.0.77:53").map_err(|e| e.to_string())
}

fn main() {
    let resolver = silence_the_resolver();
    let mut calls: Vec<(&str, fn())> = vec![
        ("std::fs::read of a FIFO, writer 500 ms later", fifo_read),
        (
            "std::net::TcpStream read, silent peer, 500 ms timeout",
            tcp_read_with_timeout,
        ),
        (
            "Command::new(\"sleep\").arg(\"0.5\").output()",
            command_output,
        ),
        ("std::thread::sleep(500 ms)", thread_sleep),
    ];
    if resolver.is_ok() {
        calls.push((
            "to_socket_addrs, resolver silent for 1 s",
            dns_silent_resolver,
        ));
    }
    println!("a 10 ms heartbeat's largest gap on 1 worker while another coroutine makes the call");
    println!();
    println!("| call | hooks on | hooks off |");
    println!("|---|---|---|");
    for (name, call) in calls {
        let on = largest_gap(true, call);
        let off = largest_gap(false, call);
        println!(
            "| {name} | {} ms | {} ms |",
            on.as_millis(),
            off.as_millis()
        );
    }
    if let Err(e) = resolver {
        println!();
        println!("(name resolution skipped: {e}; run as root)");
    }
}
