//! hyper 1.x on greenstack, with the `hyper` feature: an
//! [`Executor`] that runs hyper's background futures as coroutines, a
//! [`Timer`] on the workers' own timers, and hyper's I/O traits
//! (`hyper::rt::Read`/`Write`) on [`crate::net::TcpStream`] and
//! [`crate::net::UnixStream`], driven by the workers' pollers. No tokio
//! runtime is involved.
//!
//! A server serves each connection as a future of its own with
//! [`spawn_future`](crate::spawn_future), polled on the worker's stack as
//! tokio polls its tasks (`examples/async/examples/hyper_server.rs`):
//!
//! ```ignore
//! let (stream, _) = listener.accept()?;
//! greenstack::spawn_future(async move {
//!     let conn = hyper::server::conn::http1::Builder::new()
//!         .timer(greenstack::hyper_rt::Timer)
//!         .serve_connection(stream, hyper::service::service_fn(hello));
//!     let _ = conn.await;
//! });
//! ```
//!
//! A service that makes blocking calls (a sync database client, say)
//! serves its connection in a coroutine instead, where each blocking call
//! parks: `greenstack::spawn(move || greenstack::block_on_future(conn))`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Runs each of hyper's background futures (an HTTP/2 connection's
/// tasks, whose streams run the service) in a coroutine of its own on the
/// current runtime, polled on that coroutine's stack
/// (`spawn(|| block_on_future(fut))`): blocking calls in a service park
/// only its coroutine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        drop(crate::spawn(move || crate::block_on_future(fut)));
    }
}

/// hyper's timers (header read timeouts, keep-alive) on the timers of the
/// worker that polls them; off a worker (a plain thread, a `block_on`
/// root), a thread sleeps until each deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timer;

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = Instant::now()
            .checked_add(duration)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365 * 30));
        Box::pin(Sleep::until(deadline))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(deadline))
    }
}

/// A future that is ready at its deadline.
///
/// Its timer is armed for the waker of the poll that arms it, and armed
/// again when a later poll brings a waker that wakes another task. On a
/// worker, the timer is disarmed when the `Sleep` is dropped or re-armed
/// there: a busy server's header-read timeouts, one per request, leave
/// nothing behind. (Dropped on another thread, it fires as a spurious
/// wake-up at its deadline.)
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    /// The waker the armed timer wakes, if armed.
    armed: Option<std::task::Waker>,
    /// The armed timer, if armed on a worker.
    timer: Option<crate::scheduler::worker::WakerTimer>,
}

impl Sleep {
    /// Ready at `deadline`.
    pub fn until(deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            armed: None,
            timer: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        if self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if let Some(t) = self.timer.take() {
            crate::scheduler::worker::cancel_waker_timer(t);
        }
        let waker = cx.waker().clone();
        self.armed = Some(waker.clone());
        let deadline = self.deadline;
        match crate::scheduler::worker::add_waker_timer(deadline, waker.clone()) {
            Some(t) => self.timer = Some(t),
            None => {
                // Off a worker: a thread sleeps for it; if none can be
                // started, the future is polled again at once.
                let spawned = std::thread::Builder::new()
                    .name("greenstack-hyper-sleep".into())
                    .spawn(move || {
                        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                        waker.wake();
                    });
                if spawned.is_err() {
                    self.armed = None;
                    cx.waker().wake_by_ref();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            crate::scheduler::worker::cancel_waker_timer(t);
        }
    }
}

impl hyper::rt::Sleep for Sleep {}
