#[greenstack::main]
fn main(argc: i32) {
    let _ = argc;
}
