#[greenstack::test(workers = 1, workers = 2)]
fn twice() {}

fn main() {}
