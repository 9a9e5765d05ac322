//! What the hooks cost a cached file read (issue 18: a cached 4 KiB
//! `std::fs::read` in a coroutine costs at most 2x the direct call):
//! `std::fs::read` of a 4 KiB file in the page cache, from a coroutine of a
//! runtime with the hooks on (open checks for a FIFO, the read goes through
//! `preadv2(RWF_NOWAIT)`), from one with the hooks off, and from a plain
//! thread. `cargo bench --bench hook_file_read`; compare `hooks_on` with
//! `plain_thread`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use greenstack::Runtime;

fn file() -> PathBuf {
    let p = std::env::temp_dir().join(format!("greenstack-bench-{}", std::process::id()));
    std::fs::write(&p, vec![7u8; 4096]).expect("writing the file");
    // Into the page cache.
    assert_eq!(std::fs::read(&p).unwrap().len(), 4096);
    p
}

fn reads(p: &Path, iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        let v = std::fs::read(p).expect("reading");
        assert_eq!(v.len(), 4096);
    }
    t.elapsed()
}

fn in_coroutine(rt: &Runtime, p: &Path, iters: u64) -> Duration {
    let p = p.to_path_buf();
    rt.spawn(move || reads(&p, iters))
        .join()
        .expect("reader does not panic")
}

fn bench(c: &mut Criterion) {
    let p = file();
    let on = Runtime::builder().workers(1).build().unwrap();
    let off = Runtime::builder()
        .workers(1)
        .hook_blocking_calls(false)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("fs_read_4k_cached");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.bench_function("plain_thread", |b| b.iter_custom(|n| reads(&p, n)));
    g.bench_function("hooks_off", |b| {
        b.iter_custom(|n| in_coroutine(&off, &p, n))
    });
    g.bench_function("hooks_on", |b| b.iter_custom(|n| in_coroutine(&on, &p, n)));
    g.finish();
    let _ = std::fs::remove_file(&p);
}

criterion_group!(benches, bench);
criterion_main!(benches);
