//! `#[greenstack::main]` with both options, returning a Result.

#[greenstack::main(workers = 2, stack_size = 512 * 1024)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = String::from("worker");
    let h = greenstack::spawn!(name = name, move || 40 + 2);
    assert_eq!(h.join().unwrap(), 42);
    let plain = greenstack::spawn!(|| "plain");
    assert_eq!(plain.join().unwrap(), "plain");
    Ok(())
}
