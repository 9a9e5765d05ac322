#[greenstack::main]
async fn main() {}
