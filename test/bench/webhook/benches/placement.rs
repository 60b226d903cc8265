//! Placement decision time on a large index: 10,000 agents, 100,000 cached
//! image entries (criterion).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fast_sandbox_bench_webhook::{LARGE, POOL, image, index};

fn placement(c: &mut Criterion) {
    let idx = index(LARGE);
    let hit = image(7);
    let miss = "registry.example.com/team/not-cached:v1";
    let mut g = c.benchmark_group("placement_10k_agents_100k_images");
    g.bench_function("choose_image_hit", |b| {
        b.iter(|| black_box(idx.choose(POOL, black_box(&hit))))
    });
    g.bench_function("choose_image_miss", |b| {
        b.iter(|| black_box(idx.choose(POOL, black_box(miss))))
    });
    let mut n = 0u64;
    g.bench_function("reserve_and_release_hit", |b| {
        b.iter(|| {
            n += 1;
            let key = n.to_string();
            let c = idx.reserve(POOL, &hit, &key);
            idx.release(&key);
            black_box(c)
        })
    });
    g.bench_function("reserve_and_release_miss", |b| {
        b.iter(|| {
            n += 1;
            let key = n.to_string();
            let c = idx.reserve(POOL, miss, &key);
            idx.release(&key);
            black_box(c)
        })
    });
    g.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
