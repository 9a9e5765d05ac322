#[greenstack::main]
fn main() {
    let _h = greenstack::spawn!(priority = 3, || 1);
}
