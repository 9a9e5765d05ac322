fn main() {
    let (_tx, rx) = greenstack::sync::mpsc::channel::<u32>();
    greenstack::select! {
        recv(rx) -> _v => (),
        take(rx) -> _v => (),
    }
}
