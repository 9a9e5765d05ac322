fn work() -> u32 {
    1
}

#[greenstack::main]
fn main() {
    let _h = greenstack::spawn!(work());
}
