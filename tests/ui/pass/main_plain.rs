//! `#[greenstack::main]` with no options and no return value.

#[greenstack::main]
fn main() {
    let v: Vec<u32> = (0..10).map(|i| greenstack::spawn!(move || i * 2)).map(|h| h.join().unwrap()).collect();
    assert_eq!(v.iter().sum::<u32>(), 90);
}
