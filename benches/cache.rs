//! 4 KiB cache-hit latency of the data cache, per tier (targets: memory < 1 us, disk
//! < 10 us). The disk tier is measured with its files in the page cache, as a hot cache
//! is; a read that has to reach the device is the device's latency, not the cache's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use s3files::cache::{block_range, BlockId, CacheOptions, DataCache, ObjectId, BLOCK_SIZE};
use s3files::metrics::Metrics;

/// A 64 MiB object: 256 blocks, read at pseudo-random 4 KiB-aligned offsets.
const SIZE: u64 = 64 << 20;

fn filled(dir: &std::path::Path, memory_bytes: u64) -> (Arc<DataCache>, ObjectId) {
    let options = CacheOptions {
        dir: dir.to_path_buf(),
        disk_bytes: 1 << 30,
        memory_bytes,
        expiry: Duration::from_secs(86400),
    };
    let cache = Arc::new(
        DataCache::open(&options, Arc::new(Metrics::default()))
            .unwrap()
            .0,
    );
    let object = ObjectId::new("bench/object", "\"etag\"");
    let block = Bytes::from(vec![7u8; BLOCK_SIZE as usize]);
    for index in 0..(SIZE / BLOCK_SIZE) as u32 {
        let len = block_range(index, SIZE);
        cache.insert(
            BlockId { object, index },
            block.slice(0..(len.end - len.start) as usize),
        );
    }
    (cache, object)
}

fn offsets() -> impl FnMut() -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (SIZE / 4096)) * 4096
    }
}

fn hits(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (cache, object) = filled(&dir.path().join("memory"), 1 << 30);
    let mut next = offsets();
    c.bench_function("cache_hit_4k_memory", |b| {
        b.iter(|| black_box(cache.read(object, SIZE, next(), 4096).unwrap()))
    });

    // No memory tier: every read goes to a block file.
    let (cache, object) = filled(&dir.path().join("disk"), 0);
    let mut next = offsets();
    c.bench_function("cache_hit_4k_disk", |b| {
        b.iter(|| black_box(cache.read(object, SIZE, next(), 4096).unwrap()))
    });
}

criterion_group!(benches, hits);
criterion_main!(benches);
