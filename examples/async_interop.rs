//! Coroutines and futures together: coroutine code waits on a future with
//! `block_on_future` (parking the coroutine, not the worker), and async code
//! awaits a coroutine through its `JoinHandle`.
//!
//! Run with `cargo run --release --example async_interop`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// A future completed by another OS thread after a delay: the shape of
/// every callback-driven async API.
struct Delayed {
    state: Arc<Mutex<(Option<&'static str>, Option<Waker>)>>,
}

impl Delayed {
    fn new(value: &'static str, after: Duration) -> Delayed {
        let state = Arc::new(Mutex::new((None, None::<Waker>)));
        let s = Arc::clone(&state);
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let mut g = s.lock().unwrap();
            g.0 = Some(value);
            if let Some(w) = g.1.take() {
                w.wake();
            }
        });
        Delayed { state }
    }
}

impl Future for Delayed {
    type Output = &'static str;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
        let mut g = self.state.lock().unwrap();
        match g.0 {
            Some(v) => Poll::Ready(v),
            None => {
                g.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// An `async fn` that awaits a coroutine.
async fn sum_in_coroutines(n: u64) -> u64 {
    let mut total = 0;
    for i in 0..n {
        total += greenstack::spawn(move || i * i).await.expect("no panic");
    }
    total
}

#[greenstack::main(workers = 2)]
fn main() {
    // Coroutine code calling async code: the coroutine parks until the
    // other thread completes the future; the worker runs others meanwhile.
    let ticker = greenstack::spawn!(|| {
        let mut ticks = 0;
        for _ in 0..5 {
            greenstack::time::sleep(Duration::from_millis(10));
            ticks += 1;
        }
        ticks
    });
    let v = greenstack::block_on_future(Delayed::new(
        "completed by another thread",
        Duration::from_millis(30),
    ));
    println!("block_on_future: {v}");
    println!(
        "meanwhile a ticker coroutine ticked {} times",
        ticker.join().unwrap()
    );

    // Async code awaiting coroutines.
    let total = greenstack::block_on_future(sum_in_coroutines(10));
    println!("an async fn awaited 10 coroutines: sum of squares = {total}");
    assert_eq!(total, 285);
}
