//! Stacks grow on demand: deep recursion, contiguous growth, prefault.

use std::hint::black_box;

use corosensei::{Coroutine, CoroutineResult};
use greenstack::stack::{testing, NoFaultSection, Slot, StackArena};

/// Runs `f` to completion as a coroutine on `slot`, returning its value and
/// the slot.
fn run_on<R: 'static>(slot: Slot, f: impl FnOnce() -> R + 'static) -> (R, Slot) {
    greenstack::stack::prepare_thread().unwrap();
    let mut co = Coroutine::with_stack(slot, move |_: &corosensei::Yielder<(), ()>, ()| f());
    let r = match co.resume(()) {
        CoroutineResult::Return(r) => r,
        CoroutineResult::Yield(()) => unreachable!("the body never yields"),
    };
    (r, co.into_stack())
}

/// The stack pointer, near enough: the address of a local.
#[inline(always)]
fn sp() -> usize {
    let here = 0u8;
    black_box(&here) as *const u8 as usize
}

/// Recurses with a 1 KiB live local per frame until the stack pointer is
/// `bytes` below `top`; returns the depth reached plus a checksum of every
/// frame's local, so each frame's memory must have held its value.
#[inline(never)]
fn recurse(top: usize, bytes: usize, depth: u64) -> (u64, u64) {
    let mut buf = [0u8; 1024];
    buf[(depth % 1024) as usize] = depth as u8;
    let buf = black_box(buf);
    if top - sp() >= bytes {
        return (depth, buf[(depth % 1024) as usize] as u64);
    }
    let (d, sum) = recurse(top, bytes, depth + 1);
    (d, sum + buf[(depth % 1024) as usize] as u64)
}

#[test]
fn deep_recursion_grows_in_chunks() {
    const MIB: usize = 1 << 20;
    let arena = StackArena::builder().stack_size(64 * MIB).build().unwrap();
    let slot = arena.allocate().unwrap();
    assert_eq!(slot.reserve(), 64 * MIB);
    let before = arena.stats();
    let top = slot.top();
    let ((depth, sum), slot) = run_on(slot, move || recurse(top, 32 * MIB + 4096, 0));
    let expected: u64 = (0..=depth).map(|d| d % 256).sum();
    assert_eq!(sum, expected, "a frame's local lost its value");
    let after = arena.stats();
    assert!(
        slot.committed() >= 32 * MIB,
        "committed only {} bytes",
        slot.committed()
    );
    assert!(after.committed_bytes >= 32 * MIB);
    let faults = after.growth_faults - before.growth_faults;
    assert!(
        faults >= 1,
        "the recursion never faulted: nothing was grown"
    );
    assert!(
        faults <= (32 * MIB / (16 * 1024)) as u64,
        "{faults} growth faults: growth is not chunked"
    );
    assert_eq!(
        after.bytes_grown - before.bytes_grown,
        (slot.committed() - greenstack::stack::DEFAULT_INITIAL_COMMIT) as u64
    );
}

#[test]
fn syscall_into_freshly_grown_frame_sees_no_efault() {
    let arena = StackArena::builder().stack_size(4 << 20).build().unwrap();
    let slot = arena.allocate().unwrap();
    /// Recurses `n` frames deep, then reads /dev/zero into a 64 KiB local
    /// array that lies below everything touched so far.
    #[inline(never)]
    fn deep_read(n: usize) -> std::io::Result<usize> {
        if n > 0 {
            let pad = black_box([1u8; 512]);
            return deep_read(n - 1).map(|r| r + pad[n % 512] as usize - 1);
        }
        read_zero()
    }
    /// The leaf, in its own frame so the recursion above stays small.
    #[inline(never)]
    fn read_zero() -> std::io::Result<usize> {
        let mut buf = [0xffu8; 64 * 1024];
        let fd = std::fs::File::open("/dev/zero")?;
        // A raw read(2): std's File::read would also do, but this is the
        // system call the kernel answers with EFAULT for ungrown pages.
        use std::os::fd::AsRawFd;
        // SAFETY: `buf` is a live, writable local of the stated length.
        let got = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        assert!(buf[..got as usize].iter().all(|&b| b == 0));
        Ok(got as usize)
    }
    let (r, _slot) = run_on(slot, || deep_read(200));
    assert_eq!(r.expect("read into a grown stack buffer failed"), 64 * 1024);
}

/// Uses a few KiB of stack, as a no-fault section's body would.
#[inline(never)]
fn use_stack(n: usize) -> u8 {
    let buf = black_box([7u8; 6 * 1024]);
    buf[n % buf.len()]
}

/// Recurses until the stack pointer is within 1 KiB of the committed floor,
/// then runs `section` there.
#[inline(never)]
fn descend_to_floor<R>(section: &dyn Fn() -> R) -> R {
    let here = 0u8;
    let sp = black_box(&here) as *const u8 as usize;
    let floor = testing::floor_of(sp).expect("running on an arena slot");
    if sp - floor < 1024 {
        return section();
    }
    let pad = black_box([0u8; 200]);
    let r = descend_to_floor(section);
    black_box(pad);
    r
}

/// Places the stack pointer just above the committed floor, enters a
/// no-fault section that needs ~6 KiB, and returns the violations counted.
fn violations_near_floor(arena: &StackArena) -> u64 {
    let slot = arena.allocate().unwrap();
    let before = arena.stats().nofault_violations;
    let (v, _slot) = run_on(slot, || {
        descend_to_floor(&|| {
            let _section = NoFaultSection::enter();
            use_stack(3)
        })
    });
    assert_eq!(v, 7);
    arena.stats().nofault_violations - before
}

#[test]
fn prefault_keeps_nofault_sections_fault_free() {
    // Both halves in one test: the switch is process-wide.
    let arena = StackArena::builder().stack_size(1 << 20).build().unwrap();
    assert_eq!(
        violations_near_floor(&arena),
        0,
        "prefault left a growth fault in the section"
    );
    testing::set_runtime_prefault(false);
    let without = violations_near_floor(&arena);
    testing::set_runtime_prefault(true);
    assert!(
        without > 0,
        "with prefault disabled the section should have faulted"
    );
}

/// A coroutine of a runtime recursing 200 KiB deep, past its stack's
/// initial commit, keeps every frame's value. Natively the stack grows by
/// fault. Under valgrind (the test command runs this test under memcheck
/// too), where growth by fault does not work, the arena uses the
/// `mprotect` fallback and commits each stack whole, so nothing grows.
#[test]
fn a_runtime_coroutine_recursing_past_its_initial_commit_keeps_every_frame() {
    let under_valgrind =
        std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload"));
    let rt = greenstack::Runtime::builder().workers(1).build().unwrap();
    // `recurse` returns once its frames reach 200 KiB below the top.
    let (depth, sum) = rt.block_on(|| {
        greenstack::spawn(|| recurse(sp(), 200 * 1024, 0))
            .join()
            .unwrap()
    });
    let expected: u64 = (0..=depth).map(|d| d % 256).sum();
    assert_eq!(sum, expected, "a frame's local lost its value");
    let stats = rt.stats().arena;
    if under_valgrind {
        assert_eq!(
            rt.arena().guard_mode(),
            greenstack::stack::GuardMode::Mprotect
        );
        assert_eq!(
            stats.growth_faults, 0,
            "grew by fault under valgrind: {stats:?}"
        );
    } else {
        assert!(stats.growth_faults > 0, "never grew: {stats:?}");
    }
}
