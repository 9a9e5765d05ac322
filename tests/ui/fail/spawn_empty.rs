#[greenstack::main]
fn main() {
    let _h = greenstack::spawn!();
}
