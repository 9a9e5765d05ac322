//! Signals as something a coroutine waits for: [`Signals`].
//!
//! # Design
//!
//! The self-pipe pattern, with a datagram socket pair per [`Signals`]: the
//! process-wide handler this module installs for a signal sends the
//! signal's number, one datagram, to the write end of every `Signals`
//! listening for it, with `MSG_DONTWAIT` through the raw system call (a
//! full buffer drops that one notice: the handler never blocks). A
//! `Signals` reads its end with a blocking `recv`: in a coroutine the
//! runtime's blocking-call hooks park the coroutine until a datagram comes
//! (see [`crate::hook`]); on a plain thread it blocks the thread.
//!
//! The handler is async-signal-safe: it reads a fixed table of atomics
//! (the write ends per signal, [`MAX_LISTENERS`] each) and makes system
//! calls, nothing else. It is installed when the first `Signals` for a
//! signal is made and stays installed (as tokio's does), so a signal that
//! arrives with no listener is dropped instead of taking its default
//! action. The signals the runtime or the kernel reserve (`SIGSEGV`,
//! `SIGBUS`, `SIGILL`, `SIGFPE`, `SIGKILL`, `SIGSTOP`) are refused.

use crate::loom::sync::Mutex;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;

/// How many [`Signals`] may listen for one signal at once.
pub const MAX_LISTENERS: usize = 16;

/// Signal numbers 1..=64 (Linux's `SIGRTMAX`).
const SIGNALS: usize = 65;

/// Write ends per signal: -1 for a free place.
static LISTENERS: [[AtomicI32; MAX_LISTENERS]; SIGNALS] =
    [const { [const { AtomicI32::new(-1) }; MAX_LISTENERS] }; SIGNALS];

/// Whether our handler is installed, per signal.
static INSTALLED: [AtomicBool; SIGNALS] = [const { AtomicBool::new(false) }; SIGNALS];

/// Handlers running now (see `Drop for Signals`).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Serializes installing handlers and taking places in [`LISTENERS`].
static SETUP: Mutex<()> = Mutex::new(());

/// The handler: one datagram to every listener of `sig`. Async-signal-safe
/// (atomics and raw system calls only); keeps `errno`.
extern "C" fn on_signal(sig: libc::c_int) {
    let Some(places) = usize::try_from(sig).ok().and_then(|s| LISTENERS.get(s)) else {
        return;
    };
    // SAFETY: reading and restoring this thread's errno.
    let saved = unsafe { *libc::__errno_location() };
    // SeqCst, with the loads below and `drop`'s store and load: either a
    // load here sees a place emptied, or `drop` sees this handler running
    // and waits before it closes the fd.
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    for place in places {
        let fd = place.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: a datagram of 4 bytes from a local, to a write end
            // that stays open while this handler runs (see `drop`).
            unsafe {
                libc::syscall(
                    libc::SYS_sendto,
                    fd,
                    &sig as *const libc::c_int,
                    std::mem::size_of::<libc::c_int>(),
                    libc::MSG_DONTWAIT,
                    0usize,
                    0usize,
                );
            }
        }
    }
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Receives signals in a coroutine (which parks while it waits) or a plain
/// thread, instead of having them kill the process: for a graceful
/// shutdown on `SIGTERM`, say.
///
/// # Examples
///
/// ```
/// use greenstack_runtime::signal::Signals;
/// # let rt = greenstack_runtime::Runtime::new()?;
/// rt.block_on(|| -> std::io::Result<()> {
///     let signals = Signals::new(&[libc::SIGUSR1])?;
///     // SAFETY: raising a signal we now handle.
///     unsafe { libc::raise(libc::SIGUSR1) };
///     assert_eq!(signals.recv()?, libc::SIGUSR1);
///     Ok(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Signals {
    read: OwnedFd,
    write: OwnedFd,
    /// `(signal, place)` in [`LISTENERS`].
    places: Vec<(usize, usize)>,
}

impl Signals {
    /// Starts listening for `signals`: from now on each delivery of one of
    /// them is queued here (up to the socket's buffer) instead of taking
    /// its default action.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a signal out of range or reserved (`SIGSEGV`,
    /// `SIGBUS`, `SIGILL`, `SIGFPE`: the runtime's stack growth and crash
    /// reports; `SIGKILL`, `SIGSTOP`: the kernel's), or one that already
    /// has [`MAX_LISTENERS`] listeners; the system's error if the socket
    /// pair or the handler cannot be had.
    pub fn new(signals: &[libc::c_int]) -> io::Result<Signals> {
        for &s in signals {
            if !(1..SIGNALS as libc::c_int).contains(&s)
                || [
                    libc::SIGSEGV,
                    libc::SIGBUS,
                    libc::SIGILL,
                    libc::SIGFPE,
                    libc::SIGKILL,
                    libc::SIGSTOP,
                ]
                .contains(&s)
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("signal {s} cannot be received (out of range, or reserved)"),
                ));
            }
        }
        let mut fds = [-1; 2];
        // SAFETY: socketpair fills the two-element array.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds are new and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut this = Signals {
            read,
            write,
            places: Vec::new(),
        };
        let _setup = SETUP
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &s in signals {
            let sig = s as usize;
            if this.places.iter().any(|&(p, _)| p == sig) {
                continue;
            }
            let Some(place) = LISTENERS[sig]
                .iter()
                .position(|p| p.load(Ordering::Relaxed) < 0)
            else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("signal {s} already has {MAX_LISTENERS} listeners"),
                ));
            };
            LISTENERS[sig][place].store(this.write.as_raw_fd(), Ordering::Release);
            this.places.push((sig, place));
            if !INSTALLED[sig].load(Ordering::Relaxed) {
                install(s)?;
                INSTALLED[sig].store(true, Ordering::Relaxed);
            }
        }
        Ok(this)
    }

    /// Waits for the next signal and returns its number. Parks the calling
    /// coroutine; blocks a plain thread.
    ///
    /// # Errors
    ///
    /// The `recv` system call's error (`ECANCELED` in a coroutine whose
    /// runtime shuts down, see [`crate::hook`]).
    pub fn recv(&self) -> io::Result<libc::c_int> {
        self.recv_with(0)
    }

    /// The next signal if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<libc::c_int> {
        self.recv_with(libc::MSG_DONTWAIT).ok()
    }

    /// Waits at most `timeout` for the next signal; `None` if none came.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> io::Result<Option<libc::c_int>> {
        let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: self.read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own. In a coroutine the hooks park it.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            r if r < 0 => Err(io::Error::last_os_error()),
            0 => Ok(None),
            _ => self.recv_with(libc::MSG_DONTWAIT).map(Some),
        }
    }

    fn recv_with(&self, flags: libc::c_int) -> io::Result<libc::c_int> {
        let mut sig: libc::c_int = 0;
        loop {
            // SAFETY: reads at most 4 bytes into `sig`.
            let n = unsafe {
                libc::recv(
                    self.read.as_raw_fd(),
                    (&mut sig as *mut libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>(),
                    flags,
                )
            };
            if n == std::mem::size_of::<libc::c_int>() as isize {
                return Ok(sig);
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl AsRawFd for Signals {
    /// The fd that turns readable when a signal is queued (for `poll`).
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let _setup = SETUP
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &(sig, place) in &self.places {
            LISTENERS[sig][place].store(-1, Ordering::SeqCst);
        }
        // A handler that read the fd before it was emptied may still send
        // to it: wait for it (a few system calls long) before the fd is
        // closed, so no datagram reaches a socket that reuses the number.
        while IN_FLIGHT.load(Ordering::SeqCst) > 0 {
            std::hint::spin_loop();
        }
    }
}

/// Installs [`on_signal`] for `sig`.
fn install(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: a zeroed sigaction with our handler, an empty mask and
    // SA_RESTART (so interrupted system calls elsewhere resume).
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut act.sa_mask);
        act.sa_flags = libc::SA_RESTART;
        if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
