//! Tests of the disk tier: the bound, expiry, restarts, RWF_NOWAIT reads, and damaged
//! block files (flipped bytes, truncated, extended), plus a proptest model.

use super::*;

fn id(key: &str, i: u32) -> BlockId {
    BlockId {
        object: ObjectId::new(key, "etag"),
        index: i,
    }
}

const DAY: Duration = Duration::from_secs(86400);

fn open(dir: &Path, bound: u64, expiry: Duration) -> (DiskTier, ScanReport) {
    DiskTier::open(dir, bound, expiry, Arc::new(Metrics::default())).unwrap()
}

fn corrupt(tier: &DiskTier) -> u64 {
    tier.metrics.cache_corrupt_blocks.load(Ordering::Relaxed)
}

/// The file holding a block, whatever its checksums.
pub(crate) fn block_file(dir: &Path, id: &BlockId) -> Option<PathBuf> {
    let prefix = format!("{}.{}.", id.object.hex(), id.index);
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
}

/// Ways to damage a block file behind the cache's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Harm {
    /// 32 bytes in the middle inverted (all of a shorter file), length unchanged.
    Flip,
    /// Cut to three quarters of its length (less one byte).
    Truncate,
    /// 4 KiB of zeros appended.
    Extend,
}

pub(crate) const HARMS: [Harm; 3] = [Harm::Flip, Harm::Truncate, Harm::Extend];

pub(crate) fn harm(path: &Path, harm: Harm) {
    let len = fs::metadata(path).unwrap().len();
    let file = File::options().read(true).write(true).open(path).unwrap();
    match harm {
        Harm::Flip => {
            let n = len.min(32);
            let at = (len - n) / 2;
            let mut bytes = vec![0u8; n as usize];
            file.read_exact_at(&mut bytes, at).unwrap();
            bytes.iter_mut().for_each(|b| *b = !*b);
            file.write_all_at(&bytes, at).unwrap();
        }
        Harm::Truncate => file.set_len(len - len / 4 - 1).unwrap(),
        Harm::Extend => file.write_all_at(&[0u8; 4096], len).unwrap(),
    }
}

#[test]
fn blocks_survive_a_reopen_and_the_bound_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, report) = open(dir.path(), 1000, DAY);
    assert_eq!(report, ScanReport::default());
    for i in 0..5 {
        tier.insert(id("a", i), &[i as u8; 300]).unwrap();
    }
    // 5 x 300 > 1000: the two oldest went.
    assert_eq!(tier.usage(), (900, 3));
    assert!(!tier.contains(&id("a", 0)) && !tier.contains(&id("a", 1)));
    let mut buf = [0u8; 10];
    assert_eq!(tier.read(&id("a", 4), 300, 290, &mut buf), Some(10));
    assert_eq!(buf, [4u8; 10]);
    // The wrong expected length is a miss (and the block is dropped as damaged).
    assert_eq!(tier.read(&id("a", 3), 299, 0, &mut buf), None);
    assert!(!tier.contains(&id("a", 3)));
    assert_eq!(corrupt(&tier), 1);
    drop(tier);

    std::fs::write(dir.path().join(".tmp-1-1"), b"partial").unwrap();
    let (tier, report) = open(dir.path(), 1000, DAY);
    assert_eq!((report.blocks, report.bytes, report.removed), (2, 600, 1));
    assert_eq!(&tier.read_block(&id("a", 4), 300).unwrap()[..], &[4u8; 300]);
    // A smaller bound at the next start drops the oldest blocks.
    drop(tier);
    let (tier, report) = open(dir.path(), 400, DAY);
    assert_eq!((report.blocks, report.removed), (1, 1));
    assert!(tier.contains(&id("a", 4)));
}

#[test]
fn unused_blocks_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    tier.insert(id("old", 0), b"old").unwrap();
    tier.insert(id("new", 0), b"new").unwrap();
    // Age the first block's file by two days, as if it had not been used since.
    let old = SystemTime::now() - 2 * DAY;
    touch_file(&block_file(dir.path(), &id("old", 0)).unwrap(), old);
    drop(tier);
    let (tier, report) = open(dir.path(), 1 << 20, DAY);
    assert_eq!((report.blocks, report.expired), (1, 1));
    assert!(tier.contains(&id("new", 0)));

    // In a running tier, a sweep drops what has gone unused too long.
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, Duration::from_millis(50));
    tier.insert(id("x", 0), b"x").unwrap();
    assert_eq!(tier.sweep_expired(), vec![]);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(tier.sweep_expired(), vec![id("x", 0)]);
    assert_eq!(tier.usage(), (0, 0));
}

#[test]
fn a_read_that_would_wait_for_the_device_says_so() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    tier.insert(id("cold", 0), &[9u8; 8192]).unwrap();
    // Write the block out and drop its pages, as memory pressure would.
    let file = File::open(block_file(dir.path(), &id("cold", 0)).unwrap()).unwrap();
    file.sync_all().unwrap();
    // SAFETY: fadvise on an open descriptor; only a hint to the kernel.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut buf = [0u8; 4096];
    match tier.read_mode(&id("cold", 0), 8192, 0, &mut buf, false) {
        // File systems with RWF_NOWAIT for buffered reads (ext4, xfs, btrfs; the
        // case on these machines).
        Err(Missed::WouldBlock) => {}
        // Without it the read just waits; either way the bytes are right.
        Ok(n) => assert_eq!((n, buf), (4096, [9u8; 4096])),
        Err(Missed::Absent) => panic!("cached block reported absent"),
    }
    assert_eq!(tier.read(&id("cold", 0), 8192, 4096, &mut buf), Some(4096));
    assert_eq!(buf, [9u8; 4096]);
    // Now in the page cache: no waiting needed.
    assert_eq!(
        tier.read_mode(&id("cold", 0), 8192, 0, &mut buf, false),
        Ok(4096)
    );
    assert!(tier.contains(&id("cold", 0)));
}

#[test]
fn a_block_removed_behind_the_index_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    tier.insert(id("a", 0), b"abc").unwrap();
    std::fs::remove_file(block_file(dir.path(), &id("a", 0)).unwrap()).unwrap();
    assert_eq!(tier.read_block(&id("a", 0), 3), None);
    assert_eq!(tier.usage(), (0, 0));
    // Gone is a plain miss, not damage.
    assert_eq!(corrupt(&tier), 0);
}

#[test]
fn block_names_carry_the_checksums_and_files_only_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    tier.insert(id("n", 7), &data).unwrap();
    let path = block_file(dir.path(), &id("n", 7)).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    // 40,000 bytes: three chunks, three checksums.
    let sums: Vec<u32> = data.chunks(16 << 10).map(crc32c::crc32c).collect();
    let object = id("n", 7).object.hex();
    assert_eq!(
        name,
        format!("{object}.7.{:08x}{:08x}{:08x}", sums[0], sums[1], sums[2])
    );
    assert_eq!(fs::read(&path).unwrap(), data);
    assert_eq!(parse_name(&name), Some((id("n", 7), Checksums::from(sums))));
    drop(tier);

    // What an older version left (no checksums in the name), and names that are
    // nearly but not exactly ours: none is trusted.
    let sum = format!("{:08x}", crc32c::crc32c(&data[..100]));
    for leftover in [
        format!("{object}.8"),
        format!("{object}.9.{}", sum.to_uppercase()),
        format!("{object}.010.{sum}"),
        format!("{object}.11.{sum}0"),
        format!("{object}.12.{sum}.x"),
    ] {
        fs::write(dir.path().join(leftover), &data[..100]).unwrap();
    }
    let (tier, report) = open(dir.path(), 1 << 20, DAY);
    assert_eq!((report.blocks, report.removed, report.corrupt), (1, 5, 0));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    assert_eq!(
        &tier.read_block(&id("n", 7), 40_000).unwrap()[..],
        &data[..]
    );
}

/// Each harm, through the read that must not wait (the FUSE thread's, RWF_NOWAIT) and
/// the one that may (the blocking pool's), on a one-chunk block and a 256 KiB one, with
/// the tier running and across a restart: the damaged bytes are never returned; the
/// block is dropped (index entry and file) and counted once; inserted again (fetched
/// from S3 again), it is served.
#[test]
fn damaged_blocks_are_dropped_never_served() {
    let full: Vec<u8> = (0..BLOCK_SIZE as u32)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    for len in [10_000, BLOCK_SIZE as usize] {
        let data = &full[..len];
        for how in HARMS {
            for wait in [false, true] {
                for restart in [false, true] {
                    let case = format!("{len} bytes, {how:?}, wait {wait}, restart {restart}");
                    let dir = tempfile::tempdir().unwrap();
                    let (mut tier, _) = open(dir.path(), 1 << 20, DAY);
                    let b = id("h", 0);
                    tier.insert(b, data).unwrap();
                    harm(&block_file(dir.path(), &b).unwrap(), how);
                    if restart {
                        drop(tier);
                        tier = open(dir.path(), 1 << 20, DAY).0;
                    }
                    // The middle 4 KiB, where the flipped bytes are.
                    let mut buf = vec![0u8; 4096];
                    let at = len as u64 / 2 - 2048;
                    let got = tier.read_mode(&b, len as u64, at, &mut buf, wait);
                    assert_eq!(got, Err(Missed::Absent), "{case}");
                    assert!(!tier.contains(&b), "{case}");
                    assert_eq!(block_file(dir.path(), &b), None, "{case}");
                    assert_eq!(tier.usage(), (0, 0), "{case}");
                    assert_eq!(corrupt(&tier), 1, "{case}");
                    // Gone, not damaged again: counted once.
                    let got = tier.read_block_mode(&b, len as u64, wait);
                    assert_eq!(got, Err(Missed::Absent), "{case}");
                    assert_eq!(corrupt(&tier), 1, "{case}");
                    tier.insert(b, data).unwrap();
                    let got = tier.read_block_mode(&b, len as u64, wait).unwrap();
                    assert!(got[..] == data[..], "{case}");
                }
            }
        }
    }
}

/// A read checks the chunks it returns bytes from: a damaged chunk elsewhere in the
/// block is found by the first read that touches it.
#[test]
fn a_read_checks_every_chunk_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    let data: Vec<u8> = (0..BLOCK_SIZE as u32)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let b = id("c", 0);
    tier.insert(b, &data).unwrap();
    let chunk = CHECKSUM_CHUNK as usize;
    let mut buf = vec![0u8; 4096];
    for wait in [false, true] {
        // Across the boundary of chunks 2 and 3, then the last bytes of the block.
        for at in [3 * chunk - 2048, data.len() - 4096] {
            let got = tier.read_mode(&b, BLOCK_SIZE, at as u64, &mut buf, wait);
            assert_eq!(got, Ok(4096));
            assert!(buf[..] == data[at..at + 4096]);
        }
    }
    // One byte of chunk 10 changed.
    let file = File::options()
        .write(true)
        .open(block_file(dir.path(), &b).unwrap())
        .unwrap();
    file.write_all_at(&[!data[10 * chunk + 5]], (10 * chunk + 5) as u64)
        .unwrap();
    let got = tier.read_mode(&b, BLOCK_SIZE, 0, &mut buf, false);
    assert_eq!(got, Ok(4096));
    assert!(buf[..] == data[..4096]);
    assert_eq!(corrupt(&tier), 0);
    // A read from the end of chunk 9 into chunk 10.
    let got = tier.read_mode(&b, BLOCK_SIZE, (10 * chunk - 100) as u64, &mut buf, false);
    assert_eq!(got, Err(Missed::Absent));
    assert_eq!(corrupt(&tier), 1);
    assert_eq!(
        (tier.contains(&b), block_file(dir.path(), &b)),
        (false, None)
    );
}

/// A truncated or extended file whose length no longer matches its checksums is found
/// by the start-up scan; one whose length still does, by the first read.
#[test]
fn the_start_up_scan_drops_files_of_the_wrong_length() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    let data = vec![5u8; 40_000];
    for i in 0..4 {
        tier.insert(id("s", i), &data).unwrap();
    }
    drop(tier);
    let file = |i| block_file(dir.path(), &id("s", i)).unwrap();
    // 40,000 bytes is three chunks (the last of 7,232 bytes).
    File::options()
        .write(true)
        .open(file(0))
        .unwrap()
        .set_len(30_000)
        .unwrap();
    File::options()
        .write(true)
        .open(file(1))
        .unwrap()
        .set_len(50_000)
        .unwrap();
    File::options()
        .write(true)
        .open(file(2))
        .unwrap()
        .set_len(39_999)
        .unwrap();
    let (tier, report) = open(dir.path(), 1 << 20, DAY);
    assert_eq!((report.blocks, report.corrupt), (2, 2));
    assert_eq!(corrupt(&tier), 2);
    assert_eq!(tier.read_block(&id("s", 2), 40_000), None);
    assert_eq!(corrupt(&tier), 3);
    assert_eq!(
        &tier.read_block(&id("s", 3), 40_000).unwrap()[..],
        &data[..]
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_block_written_again_with_other_bytes_leaves_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    tier.insert(id("w", 0), b"first").unwrap();
    tier.insert(id("w", 0), b"other").unwrap();
    tier.insert(id("w", 0), b"other").unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    assert_eq!(tier.usage(), (5, 1));
    assert_eq!(&tier.read_block(&id("w", 0), 5).unwrap()[..], b"other");
    // Both files, as a crash between the rename and the unlink would leave them: the
    // scan keeps the newer.
    let path = block_file(dir.path(), &id("w", 0)).unwrap();
    let older = dir
        .path()
        .join(block_name(&id("w", 0), &checksums(b"first")));
    fs::write(&older, b"first").unwrap();
    touch_file(&older, SystemTime::now() - Duration::from_secs(60));
    drop(tier);
    let (tier, report) = open(dir.path(), 1 << 20, DAY);
    assert_eq!((report.blocks, report.removed), (1, 1));
    assert!(path.exists() && !older.exists());
    assert_eq!(&tier.read_block(&id("w", 0), 5).unwrap()[..], b"other");
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, usize),
        Read(u32),
        Reopen,
        /// Damage the block's file, then read it (waiting or not).
        Damage(u32, Harm, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..12, 1usize..400).prop_map(|(i, len)| Op::Insert(i, len)),
            4 => (0u32..12).prop_map(Op::Read),
            1 => Just(Op::Reopen),
            1 => (0u32..12, proptest::sample::select(HARMS.to_vec()), any::<bool>())
                .prop_map(|(i, how, wait)| Op::Damage(i, how, wait)),
        ]
    }

    const BOUND: u64 = 1000;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a model LRU list: the same blocks are present (until a reopen,
        /// which orders by mtime, so only coarsely), a present block always has the
        /// bytes last written for it, and the bound always holds, on disk too. A damaged
        /// block is never served: it is dropped and counted.
        #[test]
        fn disk_tier_matches_an_lru_model(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let (mut tier, _) = open(dir.path(), BOUND, DAY);
            // Most recently used last: (index, len, fill byte).
            let mut lru: Vec<(u32, usize, u8)> = Vec::new();
            let mut exact = true;
            let mut version = 0u8;
            // The bytes last written for each block: what it must hold if it is served.
            let mut last: std::collections::HashMap<u32, (usize, u8)> = Default::default();
            for op in ops {
                match op {
                    Op::Insert(i, len) => {
                        version = version.wrapping_add(1);
                        tier.insert(id("m", i), &vec![version; len]).unwrap();
                        lru.retain(|e| e.0 != i);
                        lru.push((i, len, version));
                        last.insert(i, (len, version));
                        while lru.iter().map(|e| e.1 as u64).sum::<u64>() > BOUND {
                            lru.remove(0);
                        }
                    }
                    Op::Read(i) => {
                        let want = lru.iter().position(|e| e.0 == i);
                        let len = want.map_or(1, |p| lru[p].1);
                        let len = last.get(&i).map_or(len, |e| e.0);
                        let got = tier.read_block(&id("m", i), len as u64);
                        if let Some(data) = &got {
                            // Whatever is served is the bytes last written for the block.
                            let (len, fill) = last.get(&i).copied().unwrap_or((0, 0));
                            prop_assert_eq!(data.len(), len);
                            prop_assert!(data.iter().all(|b| *b == fill));
                        }
                        if exact {
                            prop_assert_eq!(got.is_some(), want.is_some(), "block {}", i);
                        }
                        // After a reopen the tier's order is only as fine as the block
                        // files' mtimes (recency within the touch interval is not
                        // persisted), so it may keep a block the model dropped or drop
                        // one the model kept: the model follows the tier.
                        if let Some(p) = want {
                            lru.remove(p);
                        }
                        if got.is_some() {
                            let (len, fill) = last[&i];
                            lru.push((i, len, fill));
                        }
                    }
                    Op::Damage(i, how, wait) => {
                        let b = id("m", i);
                        let want = lru.iter().position(|e| e.0 == i);
                        if let (Some(p), Some(path)) = (want, block_file(dir.path(), &b)) {
                            let len = lru[p].1;
                            let before = corrupt(&tier);
                            harm(&path, how);
                            let mut buf = vec![0u8; len];
                            let got = tier.read_mode(&b, len as u64, 0, &mut buf, wait);
                            prop_assert_eq!(got, Err(Missed::Absent));
                            prop_assert!(!tier.contains(&b));
                            prop_assert!(block_file(dir.path(), &b).is_none());
                            prop_assert_eq!(corrupt(&tier), before + 1);
                            lru.remove(p);
                        }
                    }
                    Op::Reopen => {
                        drop(tier);
                        tier = open(dir.path(), BOUND, DAY).0;
                        exact = false;
                    }
                }
                let (bytes, _) = tier.usage();
                prop_assert!(bytes <= BOUND);
                let on_disk: u64 = std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().metadata().unwrap().len())
                    .sum();
                prop_assert_eq!(on_disk, bytes);
            }
        }
    }
}
