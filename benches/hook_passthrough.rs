//! What the blocking-call hooks cost a plain thread (issue 18, goal: within
//! 5 ns of calling libc directly).
//!
//! The binary's own `read`, `write` and `recv` are greenstack's hooks
//! (`runtime/src/hook/sys.rs`), so `libc::read` here reaches the hook:
//! outside a coroutine it is one thread-local check and `libc::syscall`.
//! "libc directly" is glibc's own function, found with
//! `dlsym(RTLD_NEXT, "read")`. Each pair runs on a cheap system call:
//!
//! - `read_dev_zero`: a 1-byte `read` from `/dev/zero`;
//! - `write_dev_null`: a 1-byte `write` to `/dev/null`;
//! - `recv_eagain`: `recv(.., MSG_DONTWAIT)` on an empty Unix stream
//!   socket, which fails with `EAGAIN`.
//!
//! Two groups, both on the bench's own (plain) thread:
//! `passthrough_no_runtime` with no runtime in the process, and
//! `passthrough_runtime_built` with a 2-worker runtime built and running
//! (its workers idle) while the calls are made from outside it. Each
//! benchmark id is `<call>/hook` or `<call>/glibc`; ns per call is the
//! time per iteration.
//!
//! After criterion's figures (`cargo bench --bench hook_passthrough` only,
//! not in test mode) the bench prints an interleaved summary, robust to
//! other load on the machine: alternating blocks of [`BLOCK`] calls of the
//! hook and of glibc, [`BLOCKS`] each, and for each call the fastest block
//! of each side, the median block, and their differences in ns per call.

use std::ffi::CStr;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use greenstack::Runtime;
use libc::{c_int, c_void, size_t, ssize_t};

type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
type WriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
type RecvFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, c_int) -> ssize_t;

/// Calls per block of the interleaved summary.
const BLOCK: u32 = 20_000;
/// Blocks per side and call in the interleaved summary.
const BLOCKS: usize = 31;

/// glibc's definition of `name`, the one the binary's hook shadows.
fn next_symbol(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name only looks
    // the symbol up.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    assert!(!p.is_null(), "dlsym(RTLD_NEXT, {name:?}) found nothing");
    p
}

/// The fds and both sides of each call.
struct Calls {
    zero: c_int,
    null: c_int,
    /// One end of an empty socketpair (its peer kept open in `peer`).
    sock: c_int,
    peer: c_int,
    glibc_read: ReadFn,
    glibc_write: WriteFn,
    glibc_recv: RecvFn,
}

impl Calls {
    fn new() -> Self {
        // SAFETY: the transmutes turn dlsym's non-null pointers to the
        // functions of the same names into their C signatures.
        let (glibc_read, glibc_write, glibc_recv) = unsafe {
            (
                std::mem::transmute::<*mut c_void, ReadFn>(next_symbol(c"read")),
                std::mem::transmute::<*mut c_void, WriteFn>(next_symbol(c"write")),
                std::mem::transmute::<*mut c_void, RecvFn>(next_symbol(c"recv")),
            )
        };
        // The hooks are what `libc::read` & co. resolve to in this binary;
        // if they were not linked in, both sides would be glibc.
        assert_ne!(
            libc::read as *const () as usize,
            glibc_read as *const () as usize,
            "read not hooked"
        );
        assert_ne!(
            libc::write as *const () as usize,
            glibc_write as *const () as usize,
            "write not hooked"
        );
        assert_ne!(
            libc::recv as *const () as usize,
            glibc_recv as *const () as usize,
            "recv not hooked"
        );
        // SAFETY: plain opens of device files with NUL-terminated paths.
        let zero = unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        // SAFETY: as above.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        assert!(zero >= 0 && null >= 0, "open /dev/zero, /dev/null");
        let mut sv = [0 as c_int; 2];
        // SAFETY: socketpair writes two fds into `sv`.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "socketpair");
        Calls {
            zero,
            null,
            sock: sv[0],
            peer: sv[1],
            glibc_read,
            glibc_write,
            glibc_recv,
        }
    }

    /// One call of `which` on the hook (`hook`) or glibc's side.
    #[inline(always)]
    fn call(&self, which: Which, hook: bool) -> ssize_t {
        let mut b = [0u8; 1];
        let p = black_box(b.as_mut_ptr().cast::<c_void>());
        // SAFETY: valid fds of ours and a 1-byte buffer on the stack.
        let r = unsafe {
            match (which, hook) {
                (Which::Read, true) => libc::read(self.zero, p, 1),
                (Which::Read, false) => (self.glibc_read)(self.zero, p, 1),
                (Which::Write, true) => libc::write(self.null, p, 1),
                (Which::Write, false) => (self.glibc_write)(self.null, p, 1),
                (Which::Recv, true) => libc::recv(self.sock, p, 1, libc::MSG_DONTWAIT),
                (Which::Recv, false) => (self.glibc_recv)(self.sock, p, 1, libc::MSG_DONTWAIT),
            }
        };
        black_box(r)
    }

    /// Checks that both sides return what they should.
    fn check(&self) {
        for hook in [true, false] {
            assert_eq!(self.call(Which::Read, hook), 1);
            assert_eq!(self.call(Which::Write, hook), 1);
            assert_eq!(self.call(Which::Recv, hook), -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN)
            );
        }
    }
}

impl Drop for Calls {
    fn drop(&mut self) {
        for fd in [self.zero, self.null, self.sock, self.peer] {
            // SAFETY: our own fds, closed once.
            unsafe { libc::close(fd) };
        }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Read,
    Write,
    Recv,
}

const CALLS: [(Which, &str); 3] = [
    (Which::Read, "read_dev_zero"),
    (Which::Write, "write_dev_null"),
    (Which::Recv, "recv_eagain"),
];

/// Registers one group: each call, hook then glibc.
fn group(c: &mut Criterion, name: &str, calls: &Calls) {
    calls.check();
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (which, id) in CALLS {
        for (hook, side) in [(true, "hook"), (false, "glibc")] {
            g.bench_function(format!("{id}/{side}"), |b| {
                b.iter(|| calls.call(which, hook))
            });
        }
    }
    g.finish();
}

fn no_runtime(c: &mut Criterion) {
    let calls = Calls::new();
    group(c, "passthrough_no_runtime", &calls);
}

fn runtime_built(c: &mut Criterion) {
    let rt = Runtime::builder()
        .workers(2)
        .build()
        .expect("build the runtime");
    // Workers up and through one coroutine.
    rt.spawn(|| ()).join().expect("a no-op coroutine");
    let calls = Calls::new();
    group(c, "passthrough_runtime_built", &calls);
    drop(rt);
}

/// ns per call of one block of [`BLOCK`] calls.
fn block(calls: &Calls, which: Which, hook: bool) -> f64 {
    let start = Instant::now();
    for _ in 0..BLOCK {
        calls.call(which, hook);
    }
    start.elapsed().as_nanos() as f64 / f64::from(BLOCK)
}

/// The interleaved summary (see the module docs), for one setting.
fn interleaved(setting: &str, calls: &Calls) {
    for (which, id) in CALLS {
        let (mut hook, mut glibc) = (Vec::new(), Vec::new());
        block(calls, which, true);
        block(calls, which, false);
        for _ in 0..BLOCKS {
            hook.push(block(calls, which, true));
            glibc.push(block(calls, which, false));
        }
        hook.sort_by(f64::total_cmp);
        glibc.sort_by(f64::total_cmp);
        let (hmin, gmin) = (hook[0], glibc[0]);
        let (hmed, gmed) = (hook[BLOCKS / 2], glibc[BLOCKS / 2]);
        println!(
            "{setting:<14} {id:<15} hook min {hmin:7.1} med {hmed:7.1} | glibc min {gmin:7.1} med {gmed:7.1} | hook - glibc: min {:+6.1} med {:+6.1} ns/call",
            hmin - gmin,
            hmed - gmed,
        );
    }
}

fn summary() {
    println!(
        "\ninterleaved: {BLOCKS} alternating blocks of {BLOCK} calls per side, ns/call (fastest block, median block)"
    );
    let calls = Calls::new();
    interleaved("no runtime", &calls);
    let rt = Runtime::builder()
        .workers(2)
        .build()
        .expect("build the runtime");
    rt.spawn(|| ()).join().expect("a no-op coroutine");
    interleaved("runtime built", &calls);
    drop(rt);
}

criterion_group!(benches, no_runtime, runtime_built);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then criterion runs each benchmark once, and so do we: no summary.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
