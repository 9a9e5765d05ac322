//! A scoped coroutine may borrow only what outlives the scope (a local of
//! the scope's closure does not), and its handle cannot leave the scope.

fn main() {
    let rt = greenstack::Runtime::new().unwrap();
    rt.scope(|s| {
        let local = String::from("dies with the closure");
        s.spawn(|| println!("{local}"));
    });
    let escaped = rt.scope(|s| s.spawn(|| 1));
    let _ = escaped.join();
}
