//! Deep recursion on a coroutine whose stack grows on demand: a recursive
//! JSON-like depth parser on deeply nested input, on a 1 GiB reserve that
//! starts with 32 KiB committed.
//!
//! Run with `cargo run --release --example deep_recursion [DEPTH]`
//! (default 1,000,000 levels).

use std::hint::black_box;

/// The nesting depth of `[[[...]]]`, by plain recursion: one frame per
/// level, with a little live state in each, as a real parser would have.
fn depth(s: &[u8], pos: &mut usize) -> Result<u64, String> {
    let frame = black_box([0u8; 64]);
    match s.get(*pos) {
        Some(b'[') => {
            *pos += 1;
            let inner = if s.get(*pos) == Some(&b']') {
                0
            } else {
                depth(s, pos)?
            };
            if s.get(*pos) != Some(&b']') {
                return Err(format!("expected ']' at byte {}", *pos));
            }
            *pos += 1;
            Ok(inner + 1 + frame[0] as u64)
        }
        _ => Err(format!("expected '[' at byte {}", *pos)),
    }
}

fn main() -> std::io::Result<()> {
    let levels: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = greenstack::Runtime::builder().workers(1).build()?;
    let input = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    let t = std::time::Instant::now();
    let handle = greenstack::Builder::new()
        .name("parser")
        .stack_size(1 << 30)
        .spawn_on(&rt, move || {
            let mut pos = 0;
            depth(input.as_bytes(), &mut pos)
        })?;
    let found = handle
        .join()
        .expect("the parser does not panic")
        .expect("the input is well formed");
    let s = rt.stats().arena;
    println!(
        "parsed {found} nested levels in {:.1} ms: the stack grew from 32 KiB to {} MiB in {} growth faults \
         (reserve 1 GiB, nothing committed up front)",
        t.elapsed().as_secs_f64() * 1e3,
        s.bytes_grown >> 20,
        s.growth_faults
    );
    assert_eq!(found, levels as u64);
    Ok(())
}
