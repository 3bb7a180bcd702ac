//! The hot-data cache through a real mount against a real S3 server (moto): eager import,
//! hits after a remount, no stale reads, the bound under a workload twice its size,
//! eviction never dropping unexported data, and streaming that does not fill the cache.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{sync, wait_for, Mount, S3Server};

/// Disk space the disk tier's data files take under CACHE_DIR/data (they are sparse:
/// evicted blocks are holes, which take none).
fn disk_cache_bytes(cache_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    data_files(cache_dir)
        .iter()
        .filter_map(|(path, _)| std::fs::metadata(path).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn status(path: &Path) -> String {
    let out = std::process::Command::new(common::s3files_bin())
        .arg("status")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn gets(server: &S3Server, bucket: &str, prefix: &str, n: usize) -> usize {
    (0..n)
        .map(|i| server.count_requests("GET", bucket, &format!("{prefix}{i:03}.txt")))
        .sum()
}

#[test]
fn listing_imports_small_files_so_reads_hit_the_cache() {
    let server = S3Server::start();
    server.create_bucket("eager");
    for i in 0..40 {
        server.put(
            "eager",
            &format!("tree/{i:03}.txt"),
            body(i as u8, 3000),
            &[],
        );
    }
    // Above the threshold: listed but not imported.
    server.put("eager", "tree/big.bin", body(9, 300 << 10), &[]);
    let mount = Mount::start(&server, "s3://eager", &[]);
    assert_eq!(std::fs::read_dir(mount.join("tree")).unwrap().count(), 41);
    let imported = || status(&mount.path).contains("eager imports=40;");
    assert!(
        wait_for(Duration::from_secs(20), imported),
        "eager import did not fetch the 40 small files"
    );
    assert_eq!(gets(&server, "eager", "tree/", 40), 40);
    assert_eq!(server.count_requests("GET", "eager", "tree/big.bin"), 0);
    for i in 0..40 {
        let data = std::fs::read(mount.join(&format!("tree/{i:03}.txt"))).unwrap();
        assert_eq!(data, body(i as u8, 3000));
    }
    // Every lookup and read was answered locally: still one GET per file, and no HEAD
    // (the import's GET brought the metadata too).
    assert_eq!(gets(&server, "eager", "tree/", 40), 40);
    let heads: usize = (0..40)
        .map(|i| server.count_requests("HEAD", "eager", &format!("tree/{i:03}.txt")))
        .sum();
    assert_eq!(heads, 0);
    let text = status(&mount.join("tree/007.txt"));
    assert!(text.contains("cached: 3000 of 3000 bytes"), "{text}");
    assert!(text.contains("eager imports=40"), "{text}");
}

#[test]
fn cache_survives_a_remount_and_never_serves_a_changed_object() {
    let server = S3Server::start();
    server.create_bucket("remount");
    let key = |i: usize| format!("d/{i:03}.txt");
    for i in 0..5 {
        server.put("remount", &key(i), body(i as u8, 600 << 10), &[]);
    }
    let cache = tempfile::tempdir().unwrap();
    // Eager import off: the cache is filled by the reads themselves.
    let flags = ["--import-size-threshold", "0", "--poll-interval", "1s"];
    let mut mount = Mount::start_with_cache(&server, "s3://remount", &flags, cache.path());
    for i in 0..5 {
        assert_eq!(
            std::fs::read(mount.join(&key(i))).unwrap(),
            body(i as u8, 600 << 10)
        );
    }
    let count = |i: usize| server.count_requests("GET", "remount", &key(i));
    let before: Vec<usize> = (0..5).map(count).collect();
    mount.stop();

    // Changed in S3 while unmounted: same size, other bytes.
    server.put("remount", &key(0), body(100, 600 << 10), &[]);
    let mount = Mount::start_with_cache(&server, "s3://remount", &flags, cache.path());
    assert_eq!(
        std::fs::read(mount.join(&key(0))).unwrap(),
        body(100, 600 << 10)
    );
    for i in 1..5 {
        assert_eq!(
            std::fs::read(mount.join(&key(i))).unwrap(),
            body(i as u8, 600 << 10)
        );
    }
    // Only the changed object was fetched again.
    assert!(count(0) > before[0]);
    for (i, &n) in before.iter().enumerate().skip(1) {
        assert_eq!(count(i), n, "{} fetched again after the remount", key(i));
    }

    // Changed in S3 while mounted: within the poll interval the new bytes, never a mix.
    let path = mount.join(&key(1));
    server.put("remount", &key(1), body(200, 600 << 10), &[]);
    let (old, new) = (body(1, 600 << 10), body(200, 600 << 10));
    let mut saw_new = false;
    assert!(wait_for(Duration::from_secs(10), || {
        match std::fs::read(&path) {
            Ok(data) => {
                assert!(data == old || data == new, "a read mixed two versions");
                saw_new = data == new;
            }
            // An open that met the change mid-read: by design, EIO rather than a mix.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        }
        saw_new
    }));
    // And the old version's blocks are gone from the cache.
    let text = status(&path);
    assert!(text.contains("cached: 614400 of 614400 bytes"), "{text}");
}

#[test]
fn cache_bound_holds_under_a_workload_twice_its_size() {
    let server = S3Server::start();
    server.create_bucket("bound");
    let n = 16;
    for i in 0..n {
        server.put(
            "bound",
            &format!("f/{i:03}.txt"),
            body(i as u8, 512 << 10),
            &[],
        );
    }
    // 16 x 512 KiB = 8 MiB of reads through a 4 MiB cache, twice over.
    let mount = Mount::start(
        &server,
        "s3://bound",
        &["--cache-size", "4MiB", "--memory-cache-size", "1MiB"],
    );
    let mut peak = 0;
    for round in 0..2 {
        for i in 0..n {
            let data = std::fs::read(mount.join(&format!("f/{i:03}.txt"))).unwrap();
            assert_eq!(data, body(i as u8, 512 << 10), "round {round} file {i}");
            peak = peak.max(disk_cache_bytes(&mount.cache_dir));
        }
    }
    // Disk writes happen in the background: let them land, then look again.
    std::thread::sleep(Duration::from_millis(500));
    peak = peak.max(disk_cache_bytes(&mount.cache_dir));
    assert!(peak <= 4 << 20, "disk cache reached {peak} bytes");
    assert!(peak >= 3 << 20, "the cache was barely used ({peak} bytes)");
    let text = status(&mount.path);
    let evictions: u64 = text
        .split("evictions=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(evictions >= 16, "{text}");
}

#[test]
fn eviction_never_drops_unexported_data() {
    let server = S3Server::start();
    server.create_bucket("pinned");
    for i in 0..8 {
        server.put(
            "pinned",
            &format!("r/{i:03}.txt"),
            body(i as u8, 512 << 10),
            &[],
        );
    }
    // A 1 MiB cache and no export for 10 minutes: 4 MiB of new files wait in staging
    // while 4 MiB of reads churn the cache.
    let mount = Mount::start(
        &server,
        "s3://pinned",
        &["--cache-size", "1MiB", "--write-back-delay", "600s"],
    );
    std::fs::create_dir(mount.join("w")).unwrap();
    for i in 0..8 {
        std::fs::write(
            mount.join(&format!("w/{i:03}.bin")),
            body(50 + i as u8, 512 << 10),
        )
        .unwrap();
    }
    for i in 0..8 {
        let data = std::fs::read(mount.join(&format!("r/{i:03}.txt"))).unwrap();
        assert_eq!(data, body(i as u8, 512 << 10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(disk_cache_bytes(&mount.cache_dir) <= 1 << 20);
    for i in 0..8 {
        let path = mount.join(&format!("w/{i:03}.bin"));
        assert_eq!(std::fs::read(path).unwrap(), body(50 + i as u8, 512 << 10));
        assert!(!server.exists("pinned", &format!("w/{i:03}.bin")));
    }
    sync(&mount.path, Duration::from_secs(60)).unwrap();
    for i in 0..8 {
        assert_eq!(
            server.get("pinned", &format!("w/{i:03}.bin")),
            body(50 + i as u8, 512 << 10)
        );
    }
}

#[test]
fn sequential_reads_stream_without_filling_the_cache() {
    let server = S3Server::start();
    server.create_bucket("stream");
    let size = 24 << 20;
    server.put("stream", "big.bin", body(3, size), &[]);
    let mount = Mount::start(&server, "s3://stream", &[]);
    let data = std::fs::read(mount.join("big.bin")).unwrap();
    assert!(data == body(3, size), "streamed bytes differ");
    std::thread::sleep(Duration::from_millis(300));
    // Only the blocks read before the stream started: the first MiB, plus what the
    // kernel's concurrent read-ahead asked for meanwhile; never the 24 MiB.
    let cached = disk_cache_bytes(&mount.cache_dir);
    assert!(cached <= 2 << 20, "{cached} bytes cached");
    let text = status(&mount.join("big.bin"));
    assert!(text.contains("streams=1"), "{text}");
    // Fewer GETs than 1 MiB pieces: the window grew.
    let gets = server.count_requests("GET", "stream", "big.bin");
    assert!(gets < 20, "{gets} GETs for 24 MiB");
}

#[test]
fn written_files_stay_cached_after_export() {
    let server = S3Server::start();
    server.create_bucket("written");
    let mount = Mount::start(&server, "s3://written", &["--write-back-delay", "600s"]);
    for i in 0..3 {
        std::fs::write(mount.join(&format!("out{i}.json")), body(i, 40_000)).unwrap();
    }
    sync(&mount.path, Duration::from_secs(60)).unwrap();
    for i in 0..3 {
        let key = format!("out{i}.json");
        assert_eq!(server.get("written", &key), body(i, 40_000));
        // Read back through the mount after the export: from the cache, not S3.
        assert_eq!(std::fs::read(mount.join(&key)).unwrap(), body(i, 40_000));
        let text = status(&mount.join(&key));
        assert!(text.contains("state: synced"), "{text}");
        assert!(text.contains("cached: 40000 of 40000 bytes"), "{text}");
    }
    // Only the test's own GETs (server.get above) reached the server.
    for i in 0..3 {
        assert_eq!(
            server.count_requests("GET", "written", &format!("out{i}.json")),
            1
        );
    }
}

#[test]
fn full_cache_disk_still_serves_reads_from_s3() {
    let server = S3Server::start();
    server.create_bucket("fullread");
    // Above the eager-import threshold: the reads fill the cache.
    for i in 0..12 {
        server.put("fullread", &format!("f{i:02}.bin"), body(i, 200 << 10), &[]);
    }
    let disk = common::SmallDisk::new("1m");
    let cache = disk.0.path().join("cache");
    let mount = Mount::start_with_cache(&server, "s3://fullread", &[], &cache);
    for round in 0..2 {
        for i in 0..12 {
            let data = std::fs::read(mount.join(&format!("f{i:02}.bin"))).unwrap();
            assert!(data == body(i, 200 << 10), "round {round} file {i}");
        }
    }
    assert!(
        wait_for(Duration::from_secs(5), || mount
            .log()
            .contains("cannot write to the disk cache")),
        "{}",
        mount.log()
    );
    let text = status(&mount.path);
    assert!(!text.contains("write-errors=0;"), "{text}");
    drop(mount);
}

#[test]
fn unused_data_expires() {
    let server = S3Server::start();
    server.create_bucket("expiry");
    server.put("expiry", "f.bin", body(1, 300 << 10), &[]);
    let mount = Mount::start(&server, "s3://expiry", &["--cache-expiry", "2s"]);
    assert_eq!(
        std::fs::read(mount.join("f.bin")).unwrap(),
        body(1, 300 << 10)
    );
    assert!(wait_for(Duration::from_secs(5), || disk_cache_bytes(
        &mount.cache_dir
    ) > 0));
    // Unused for longer than the expiry: dropped by the next sweep.
    assert!(
        wait_for(Duration::from_secs(15), || disk_cache_bytes(
            &mount.cache_dir
        ) == 0),
        "cached data outlived --cache-expiry"
    );
    let text = status(&mount.join("f.bin"));
    assert!(text.contains("cached: 0 of 307200 bytes"), "{text}");
    assert!(!text.contains("expired=0 "), "{text}");
}

/// The disk tier's data files (one per cached object, named by 32 hex digits; their
/// checksum logs and temporary files left out), with their lengths.
fn data_files(cache_dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(cache_dir.join("data"))
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    let len = e.metadata().ok().filter(|m| m.is_file())?.len();
                    let name = e.file_name().into_string().ok()?;
                    (name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| (e.path(), len))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The mount still answers: a stat of its root within 5 s, from a thread, so that a hung
/// mount fails the test instead of hanging it (dropping the Mount detaches it).
fn assert_mount_answers(path: &Path) {
    let (tx, rx) = std::sync::mpsc::channel();
    let root = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::metadata(&root).map(|m| m.is_dir()));
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(true)) => {}
        other => panic!("the mount did not answer a stat within 5 s: {other:?}"),
    }
}

#[test]
fn damaged_cache_blocks_are_never_served() {
    let server = S3Server::start();
    server.create_bucket("damaged");
    let key = |i: usize| format!("d/{i:02}.bin");
    // Six files of three blocks (256 + 256 + 88 KiB; read in place) and two of one small
    // block (20,000 bytes; read whole into the memory tier).
    let sizes = [
        600 << 10,
        600 << 10,
        600 << 10,
        600 << 10,
        600 << 10,
        600 << 10,
        20_000,
        20_000,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        server.put("damaged", &key(i), body(i as u8 + 1, size), &[]);
    }
    let cache = tempfile::tempdir().unwrap();
    // Eager import off, so the reads fill the cache; a small memory tier, so that reads
    // after the remount come from the block files; no passthrough, so that the daemon
    // serves (and checks) every read (the check at hand-over to the kernel is
    // tests/passthrough.rs's).
    let flags = [
        "--import-size-threshold",
        "0",
        "--memory-cache-size",
        "256KiB",
        "--no-passthrough",
    ];
    let mut mount = Mount::start_with_cache(&server, "s3://damaged", &flags, cache.path());
    for (i, &size) in sizes.iter().enumerate() {
        assert!(std::fs::read(mount.join(&key(i))).unwrap() == body(i as u8 + 1, size));
    }
    // Blocks are written in the background: wait until all 20 are on disk, bytes and
    // checksum records (whose length the log's format gives: an 8-byte header, then per
    // block 12 bytes and 4 per 16 KiB; docs/ARCHITECTURE.md).
    let log_len = |size: u64| -> u64 {
        let blocks = (0..size.div_ceil(256 << 10)).map(|b| (size - b * (256 << 10)).min(256 << 10));
        8 + blocks
            .map(|len| 12 + 4 * len.div_ceil(16 << 10))
            .sum::<u64>()
    };
    let complete = || {
        let files = data_files(cache.path());
        files.len() == 8
            && files.iter().all(|(path, len)| {
                let log = std::fs::metadata(path.with_extension("sums")).map_or(0, |m| m.len());
                sizes.contains(&(*len as usize)) && log == log_len(*len)
            })
    };
    assert!(
        wait_for(Duration::from_secs(10), complete),
        "{:?}",
        data_files(cache.path())
    );
    assert!(mount.stop().success());

    // While the daemon is down: 32 bytes flipped in the middle of a 256 KiB block, a file
    // cut short inside its last block, another extended past its end, and 32 bytes flipped
    // in a small file.
    let files = data_files(cache.path());
    let large: Vec<_> = files.iter().filter(|f| f.1 == 600 << 10).collect();
    let small = files.iter().find(|f| f.1 == 20_000).unwrap();
    assert_eq!(large.len(), 6, "{files:?}");
    let flip = |path: &Path, at: u64| {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut bytes = [0u8; 32];
        file.read_exact_at(&mut bytes, at - 16).unwrap();
        bytes.iter_mut().for_each(|b| *b = !*b);
        file.write_all_at(&bytes, at - 16).unwrap();
    };
    flip(&large[0].0, (256 << 10) + (128 << 10));
    flip(&small.0, small.1 / 2);
    let open = |path: &Path| std::fs::OpenOptions::new().write(true).open(path).unwrap();
    open(&large[1].0).set_len((512 << 10) + 40_000).unwrap();
    open(&large[2].0).set_len((600 << 10) + 4096).unwrap();

    // The bucket's bytes, read with an independent client (before counting GETs).
    let expected: Vec<Vec<u8>> = (0..sizes.len())
        .map(|i| server.get("damaged", &key(i)))
        .collect();
    for (i, &size) in sizes.iter().enumerate() {
        assert!(
            expected[i] == body(i as u8 + 1, size),
            "{} in the bucket",
            key(i)
        );
    }
    let gets = || -> usize {
        (0..sizes.len())
            .map(|i| server.count_requests("GET", "damaged", &key(i)))
            .sum()
    };
    let before = gets();

    let mount = Mount::start_with_cache(&server, "s3://damaged", &flags, cache.path());
    for (i, want) in expected.iter().enumerate() {
        let data = std::fs::read(mount.join(&key(i))).unwrap();
        assert!(
            data == *want,
            "{} differs from the bucket after the remount",
            key(i)
        );
    }
    // The four damaged blocks, and only they, were fetched again (one ranged GET each);
    // the other 16 came from the disk tier.
    assert_eq!(gets() - before, 4, "{}", server.request_log());
    let text = status(&mount.path);
    assert!(text.contains(" corrupt=4 "), "{text}");
    let disk_hits: u64 = text
        .split(" disk=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(disk_hits >= 16, "{text}");
    let log = mount.log();
    assert_eq!(
        log.matches("damaged cache block dropped").count(),
        4,
        "{log}"
    );
    // Fetched again, the four blocks are cached again: every file whole (no holes), of
    // its object's length.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let files = data_files(cache.path());
            files.len() == 8
                && files.iter().all(|(path, len)| {
                    use std::os::unix::fs::MetadataExt;
                    let on_disk = std::fs::metadata(path).map_or(0, |m| m.blocks() * 512);
                    sizes.contains(&(*len as usize)) && on_disk == len.next_multiple_of(4096)
                })
        }),
        "{:?}",
        data_files(cache.path())
    );
    assert_mount_answers(&mount.path);
}
