//! `#[greenstack::main]` runs `main`'s body as an ordinary coroutine on a
//! worker: values that are not `Send` live in it across joins, and it
//! returns a value that is not `Send` either.

use std::rc::Rc;

#[greenstack::main(workers = 2)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::thread::current().name().map(str::to_owned);
    assert!(
        name.as_deref().is_some_and(|n| n.starts_with("greenstack-worker-")),
        "main's body runs on {name:?}, not on a worker"
    );
    let local = Rc::new(5);
    let h = greenstack::spawn!(|| 6 * 7);
    assert_eq!(h.join().unwrap() + *local, 47);
    std::fs::metadata("/")?;
    Ok(())
}
