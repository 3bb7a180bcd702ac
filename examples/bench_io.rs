//! Measuring tool for scripts/bench.sh: the client side of each end-to-end benchmark,
//! in Rust so that the tool's own overhead stays far below what it measures.
//!
//!   bench_io pread PATH SECONDS      4 KiB O_DIRECT preads at random aligned offsets:
//!                                    prints "reads p50_us p99_us"
//!   bench_io pread-buffered PATH SECONDS  the same without O_DIRECT (the page cache
//!                                    answers once a page was read)
//!   bench_io pread-cold PATH COUNT   4 KiB O_DIRECT preads, each in a different 256 KiB
//!                                    block (first touches: every one a cache miss):
//!                                    prints "reads p50_us p99_us"
//!   bench_io seq PATH                read the file once with 1 MiB reads: prints
//!                                    "bytes seconds MiB/s"
//!   bench_io sdk BUCKET KEY CHUNK_MIB [PARALLEL]  a plain aws-sdk-s3 loop of ranged
//!                                    GETs over the whole object, PARALLEL (default 1) in
//!                                    flight, consumed in order (endpoint, keys and region
//!                                    from the AWS_* environment): prints
//!                                    "bytes seconds MiB/s"
//!   bench_io warm PATH               read the whole file once in 256 KiB O_DIRECT reads in
//!                                    a shuffled order, so that a file system that streams
//!                                    sequential (or large) reads past its cache still
//!                                    caches every block: prints "bytes seconds MiB/s"
//!   bench_io readers SECONDS PATH..  one thread per PATH, each reading its file in 128 KiB
//!                                    O_DIRECT preads from start to end and over again, for
//!                                    SECONDS: prints "readers bytes seconds MiB/s" (aggregate)
//!   bench_io stat-tree DIR           walk DIR (readdir) and lstat every entry, as
//!                                    `git status` does: prints "entries seconds"
//!   bench_io gets BUCKET PREFIX PARALLEL  list PREFIX, then GetObject every key under
//!                                    it, PARALLEL in flight, bodies read whole (the
//!                                    `ls -l` floor: one request per object, no file
//!                                    system): prints "objects seconds" (the GETs only)

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["pread", path, secs] => pread(path, Duration::from_secs_f64(number(secs)), true),
        ["pread-buffered", path, secs] => pread(path, Duration::from_secs_f64(number(secs)), false),
        ["pread-cold", path, count] => pread_cold(path, number(count) as usize),
        ["seq", path] => seq(path),
        ["sdk", bucket, key, chunk] => sdk(bucket, key, number(chunk) as u64 * (1 << 20), 1),
        ["sdk", bucket, key, chunk, parallel] if number(parallel) >= 1.0 => sdk(
            bucket,
            key,
            number(chunk) as u64 * (1 << 20),
            number(parallel) as usize,
        ),
        ["warm", path] => warm(path),
        ["readers", secs, paths @ ..] if !paths.is_empty() => {
            readers(Duration::from_secs_f64(number(secs)), paths)
        }
        ["stat-tree", dir] => stat_tree(dir),
        ["gets", bucket, prefix, parallel] if number(parallel) >= 1.0 => {
            gets(bucket, prefix, number(parallel) as usize)
        }
        _ => {
            eprintln!(
                "usage: bench_io pread PATH SECONDS | pread-buffered PATH SECONDS \
                 | pread-cold PATH COUNT | seq PATH | sdk BUCKET KEY CHUNK_MIB [PARALLEL] \
                 | warm PATH | readers SECONDS PATH... | stat-tree DIR \
                 | gets BUCKET PREFIX PARALLEL"
            );
            std::process::exit(2);
        }
    }
}

fn number(text: &str) -> f64 {
    text.parse().unwrap_or_else(|_| {
        eprintln!("bench_io: not a number: {text}");
        std::process::exit(2)
    })
}

fn open_direct(path: &str) -> (File, u64) {
    open_with(path, libc::O_DIRECT)
}

fn open_with(path: &str, flags: i32) -> (File, u64) {
    let file = File::options()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .unwrap_or_else(|e| fail(path, e));
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    (file, size)
}

/// xorshift64: a fixed, cheap sequence of offsets.
fn random(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn timed_reads(path: &str, file: &File, mut next: impl FnMut() -> Option<u64>) -> Vec<u64> {
    // O_DIRECT wants an aligned buffer.
    let mut backing = vec![0u8; 8192];
    let skew = backing.as_ptr().align_offset(4096);
    let buf = &mut backing[skew..skew + 4096];
    let mut latencies = Vec::new();
    while let Some(offset) = next() {
        let started = Instant::now();
        file.read_at(buf, offset).unwrap_or_else(|e| fail(path, e));
        latencies.push(started.elapsed().as_nanos() as u64);
    }
    latencies
}

fn pread(path: &str, secs: Duration, direct: bool) {
    let (file, size) = open_with(path, if direct { libc::O_DIRECT } else { 0 });
    let blocks = (size / 4096).max(1);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let end = Instant::now() + secs;
    let latencies = timed_reads(path, &file, || {
        (Instant::now() < end).then(|| (random(&mut x) % blocks) * 4096)
    });
    print_percentiles(latencies);
}

fn pread_cold(path: &str, count: usize) {
    const BLOCK: u64 = 256 << 10;
    let (file, size) = open_direct(path);
    let mut blocks: Vec<u64> = (0..size / BLOCK).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, (random(&mut x) % (i as u64 + 1)) as usize);
    }
    blocks.truncate(count);
    let mut offsets = blocks
        .into_iter()
        .map(|b| b * BLOCK + (random(&mut x) % 64) * 4096);
    print_percentiles(timed_reads(path, &file, || offsets.next()));
}

fn print_percentiles(mut latencies: Vec<u64>) {
    if latencies.is_empty() {
        eprintln!("bench_io: no reads");
        std::process::exit(1);
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!("{} {:.1} {:.1}", latencies.len(), at(0.5), at(0.99));
}

fn seq(path: &str) {
    // The open is timed too: a file system may do work there (s3files checks a cached
    // file's checksums before handing it to the kernel).
    let started = Instant::now();
    let mut file = File::open(path).unwrap_or_else(|e| fail(path, e));
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => fail(path, e),
        }
    }
    report(total, started.elapsed());
}

/// A plain aws-sdk-s3 client: endpoint, keys and region from the environment.
async fn sdk_client() -> aws_sdk_s3::Client {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let endpoint = std::env::var("GARAGE_ENDPOINT")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .expect("GARAGE_ENDPOINT or AWS_ENDPOINT_URL");
    let s3 = aws_sdk_s3::config::Builder::from(&config)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// One GetObject (of `range`, an HTTP Range value, if given), its body read whole.
async fn get_whole(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    range: Option<String>,
) -> bytes::Bytes {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_range(range)
        .send()
        .await
        .expect("GetObject");
    out.body.collect().await.expect("body").into_bytes()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn gets(bucket: &str, prefix: &str, parallel: usize) {
    use futures::StreamExt;
    runtime().block_on(async {
        let client = sdk_client().await;
        let mut keys = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.expect("ListObjectsV2");
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
        }
        let started = Instant::now();
        let count = futures::stream::iter(keys)
            .map(|key| {
                let client = client.clone();
                async move { get_whole(&client, bucket, &key, None).await }
            })
            .buffer_unordered(parallel)
            .count()
            .await;
        println!("{count} {:.4}", started.elapsed().as_secs_f64());
    });
}

fn sdk(bucket: &str, key: &str, chunk: u64, parallel: usize) {
    use futures::StreamExt;
    runtime().block_on(async {
        let client = sdk_client().await;
        let head = client.head_object().bucket(bucket).key(key).send().await;
        let size = head.expect("HeadObject").content_length().unwrap_or(0) as u64;
        let started = Instant::now();
        let ranges = (0..size.div_ceil(chunk)).map(|i| (i * chunk, size.min((i + 1) * chunk)));
        // Up to `parallel` GETs in flight, their bodies consumed in order, as a program
        // reading the object from start to end with read-ahead would.
        let mut bodies = futures::stream::iter(ranges)
            .map(|(offset, end)| {
                let client = client.clone();
                async move {
                    let range = format!("bytes={}-{}", offset, end - 1);
                    let body = get_whole(&client, bucket, key, Some(range)).await;
                    assert_eq!(body.len() as u64, end - offset, "short body");
                    body.len() as u64
                }
            })
            .buffered(parallel);
        let mut total = 0;
        while let Some(n) = bodies.next().await {
            total += n;
        }
        report(total, started.elapsed());
    });
}

/// A zeroed buffer of `len` bytes aligned to 4 KiB, as O_DIRECT wants.
fn aligned(backing: &mut Vec<u8>, len: usize) -> &mut [u8] {
    *backing = vec![0u8; len + 4096];
    let skew = backing.as_ptr().align_offset(4096);
    &mut backing[skew..skew + len]
}

fn warm(path: &str) {
    // s3files streams (without caching) once a run of sequential reads reaches 1 MiB.
    const CHUNK: u64 = 256 << 10;
    let (file, size) = open_direct(path);
    let mut chunks: Vec<u64> = (0..size.div_ceil(CHUNK)).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..chunks.len()).rev() {
        chunks.swap(i, (random(&mut x) % (i as u64 + 1)) as usize);
    }
    let mut backing = Vec::new();
    let buf = aligned(&mut backing, CHUNK as usize);
    let started = Instant::now();
    let mut total = 0;
    for chunk in chunks {
        total += file
            .read_at(buf, chunk * CHUNK)
            .unwrap_or_else(|e| fail(path, e)) as u64;
    }
    report(total, started.elapsed());
}

fn readers(secs: Duration, paths: &[&str]) {
    const CHUNK: usize = 128 << 10;
    let end = Instant::now() + secs;
    let started = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let threads: Vec<_> = paths
            .iter()
            .map(|path| {
                scope.spawn(move || {
                    let (file, size) = open_direct(path);
                    let mut backing = Vec::new();
                    let buf = aligned(&mut backing, CHUNK);
                    let (mut offset, mut total) = (0u64, 0u64);
                    while Instant::now() < end {
                        let n = file.read_at(buf, offset).unwrap_or_else(|e| fail(path, e));
                        total += n as u64;
                        offset += n as u64;
                        if n == 0 || offset >= size {
                            offset = 0;
                        }
                    }
                    total
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("reader")).sum()
    });
    let elapsed = started.elapsed();
    print!("{} ", paths.len());
    report(total, elapsed);
}

fn stat_tree(dir: &str) {
    fn walk(dir: &std::path::Path, count: &mut u64) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| fail(&dir.to_string_lossy(), e));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| fail(&dir.to_string_lossy(), e))
                .path();
            let meta = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|e| fail(&path.to_string_lossy(), e));
            *count += 1;
            if meta.is_dir() {
                walk(&path, count);
            }
        }
    }
    let started = Instant::now();
    let mut count = 0;
    walk(std::path::Path::new(dir), &mut count);
    println!("{count} {:.3}", started.elapsed().as_secs_f64());
}

fn report(bytes: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{bytes} {secs:.3} {:.1}",
        bytes as f64 / secs / (1 << 20) as f64
    );
}

fn fail(path: &str, error: std::io::Error) -> ! {
    eprintln!("bench_io: {path}: {error}");
    std::process::exit(1)
}
