//! Tests of the disk tier: the bound, expiry, restarts, RWF_NOWAIT reads, the file layout
//! (one sparse data file and one checksum log per object), crash leftovers, hole
//! punching, pins, and damaged files (flipped bytes, truncated, extended), plus a
//! proptest model.

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Block `i` of an object of its own (key `key`).
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

/// The data file of an object.
pub(crate) fn data_file(dir: &Path, object: ObjectId) -> PathBuf {
    dir.join(object.hex())
}

fn sums_file(dir: &Path, object: ObjectId) -> PathBuf {
    dir.join(format!("{}.sums", object.hex()))
}

/// Bytes of disk a file occupies (its holes take none).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Ways to damage a block behind the cache's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Harm {
    /// 32 bytes in the middle of the block inverted (all of a shorter block), the file's
    /// length unchanged.
    Flip,
    /// The file cut inside the block, at three quarters of it (less one byte): this block
    /// and every later one are damaged.
    Truncate,
    /// 4 KiB of zeros appended to the file: its object's short last block is damaged
    /// (the file no longer ends with it).
    Extend,
}

pub(crate) const HARMS: [Harm; 3] = [Harm::Flip, Harm::Truncate, Harm::Extend];

pub(crate) fn harm(dir: &Path, id: &BlockId, block_len: u64, harm: Harm) {
    let path = data_file(dir, id.object);
    let len = fs::metadata(&path).unwrap().len();
    let file = File::options().read(true).write(true).open(&path).unwrap();
    let start = u64::from(id.index) * BLOCK_SIZE;
    match harm {
        Harm::Flip => {
            let n = block_len.min(32);
            let at = start + (block_len - n) / 2;
            let mut bytes = vec![0u8; n as usize];
            file.read_exact_at(&mut bytes, at).unwrap();
            bytes.iter_mut().for_each(|b| *b = !*b);
            file.write_all_at(&bytes, at).unwrap();
        }
        Harm::Truncate => file.set_len(start + block_len - block_len / 4 - 1).unwrap(),
        Harm::Extend => file.write_all_at(&[0u8; 4096], len).unwrap(),
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(7).wrapping_add(seed) % 253) as u8)
        .collect()
}

/// Inserts every block of an object of `data.len()` bytes.
fn insert_object(tier: &DiskTier, object: ObjectId, data: &[u8]) {
    let size = data.len() as u64;
    for index in blocks_of(0, size) {
        let r = block_range(index, size);
        let block = &data[r.start as usize..r.end as usize];
        tier.insert(BlockId { object, index }, block).unwrap();
    }
}

fn read_all(file: &File) -> Vec<u8> {
    let mut out = vec![0u8; file.metadata().unwrap().len() as usize];
    file.read_exact_at(&mut out, 0).unwrap();
    out
}

#[test]
fn blocks_survive_a_reopen_and_the_bound_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, report) = open(dir.path(), 1000, DAY);
    assert_eq!(report, ScanReport::default());
    let a = |i: u32| id(&format!("a{i}"), 0);
    for i in 0..5 {
        tier.insert(a(i), &[i as u8; 300]).unwrap();
    }
    // 5 x 300 > 1000: the two oldest went, files and all.
    assert_eq!(tier.usage(), (900, 3));
    assert!(!tier.contains(&a(0)) && !tier.contains(&a(1)));
    assert!(!data_file(dir.path(), a(0).object).exists());
    assert!(!sums_file(dir.path(), a(0).object).exists());
    let mut buf = [0u8; 10];
    assert_eq!(tier.read(&a(4), 300, 290, &mut buf), Some(10));
    assert_eq!(buf, [4u8; 10]);
    // The wrong expected length is a miss (and the block is dropped as damaged).
    assert_eq!(tier.read(&a(3), 299, 0, &mut buf), None);
    assert!(!tier.contains(&a(3)));
    assert_eq!(corrupt(&tier), 1);
    drop(tier);

    std::fs::write(dir.path().join(".tmp-1-1"), b"partial").unwrap();
    // a2 used longest ago.
    touch_file(
        &data_file(dir.path(), a(2).object),
        SystemTime::now() - Duration::from_secs(60),
    );
    let (tier, report) = open(dir.path(), 1000, DAY);
    assert_eq!((report.blocks, report.bytes, report.removed), (2, 600, 1));
    assert_eq!(&tier.read_block(&a(4), 300).unwrap()[..], &[4u8; 300]);
    // A smaller bound at the next start drops the oldest blocks.
    drop(tier);
    let (tier, report) = open(dir.path(), 400, DAY);
    assert_eq!((report.blocks, report.removed), (1, 1));
    assert!(tier.contains(&a(4)));
    assert_eq!(names(dir.path()).len(), 2);
}

#[test]
fn unused_blocks_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    tier.insert(id("old", 0), b"old").unwrap();
    tier.insert(id("new", 0), b"new").unwrap();
    // Age the first object's file by two days, as if it had not been used since.
    let old = SystemTime::now() - 2 * DAY;
    touch_file(&data_file(dir.path(), id("old", 0).object), old);
    drop(tier);
    let (tier, report) = open(dir.path(), 1 << 20, DAY);
    assert_eq!((report.blocks, report.expired), (1, 1));
    assert!(tier.contains(&id("new", 0)));
    assert_eq!(names(dir.path()).len(), 2);

    // In a running tier, a sweep drops what has gone unused too long.
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, Duration::from_millis(50));
    tier.insert(id("x", 0), b"x").unwrap();
    assert_eq!(tier.sweep_expired(), vec![]);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(tier.sweep_expired(), vec![id("x", 0)]);
    assert_eq!(tier.usage(), (0, 0));
    assert!(names(dir.path()).is_empty());
}

#[test]
fn a_read_that_would_wait_for_the_device_says_so() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    tier.insert(id("cold", 0), &[9u8; 8192]).unwrap();
    // Write the block out and drop its pages, as memory pressure would.
    let file = File::open(data_file(dir.path(), id("cold", 0).object)).unwrap();
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
    std::fs::remove_file(data_file(dir.path(), id("a", 0).object)).unwrap();
    assert_eq!(tier.read_block(&id("a", 0), 3), None);
    assert_eq!(tier.usage(), (0, 0));
    // Gone is a plain miss, not damage; the orphaned checksum log goes too.
    assert_eq!(corrupt(&tier), 0);
    assert!(names(dir.path()).is_empty());
}

/// One data file per object, each block's bytes at its offset in the object, holes
/// between; the checksums in the log beside it; both private. Anything else in the
/// directory (the older one-file-per-block layout's block files, temporary files, near
/// misses of our names) is removed at start-up.
#[test]
fn an_object_is_one_sparse_file_and_a_checksum_log() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (tier, _) = open(&data_dir, 1 << 30, DAY);
    assert_eq!(
        fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let object = id("n", 0).object;
    let full = pattern(BLOCK_SIZE as usize, 1);
    let last = pattern(40_000, 2);
    tier.insert(BlockId { object, index: 2 }, &full).unwrap();
    tier.insert(BlockId { object, index: 7 }, &last).unwrap();
    let path = data_file(&data_dir, object);
    let sums = sums_file(&data_dir, object);
    let hex = object.hex();
    assert_eq!(names(&data_dir), [hex.clone(), format!("{hex}.sums")]);
    for file in [&path, &sums] {
        let mode = fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, 7 * BLOCK_SIZE + 40_000);
    assert!(bytes[2 * BLOCK_SIZE as usize..3 * BLOCK_SIZE as usize] == full[..]);
    assert!(bytes[7 * BLOCK_SIZE as usize..] == last[..]);
    // Only the two blocks take space.
    assert!(
        allocated(&path) <= BLOCK_SIZE + (40 << 10),
        "{}",
        allocated(&path)
    );
    let log = parse_log(&fs::read(&sums).unwrap()).unwrap();
    assert!(log.clean);
    let want: BTreeMap<u32, (u64, Checksums)> = [
        (2, (BLOCK_SIZE, checksums(&full))),
        (7, (40_000, checksums(&last))),
    ]
    .into();
    assert_eq!(log.live, want);
    drop(tier);

    let sum = format!("{:08x}", crc32c::crc32c(&last[..100]));
    for leftover in [
        // The older layout: `<object>.<index>.<checksums>`, and before it `<object>.<index>`.
        format!("{hex}.8.{sum}"),
        format!("{hex}.8"),
        hex.to_uppercase(),
        format!("{hex}.sums.x"),
        format!("{hex}0"),
        ".tmp-1-2".to_string(),
    ] {
        fs::write(data_dir.join(leftover), &last[..100]).unwrap();
    }
    let (tier, report) = open(&data_dir, 1 << 30, DAY);
    assert_eq!((report.blocks, report.removed, report.corrupt), (2, 6, 0));
    assert_eq!(names(&data_dir).len(), 2);
    let got = tier.read_block(&BlockId { object, index: 7 }, 40_000);
    assert!(got.unwrap()[..] == last[..]);
}

/// Each harm, through the read that must not wait (the FUSE thread's, RWF_NOWAIT) and
/// the one that may (the blocking pool's), on a one-chunk block and a 256 KiB one, with
/// the tier running and across a restart: the damaged bytes are never returned; the
/// block is dropped (index entry, and here its files: it was the object's only block)
/// and counted once; inserted again (fetched from S3 again), it is served.
#[test]
fn damaged_blocks_are_dropped_never_served() {
    let full = pattern(BLOCK_SIZE as usize, 0);
    for len in [10_000, BLOCK_SIZE as usize] {
        let data = &full[..len];
        for how in HARMS {
            // A full-size block may be followed by others: a longer file is no damage
            // to it (a backing checks the object's length; see the pin tests).
            if how == Harm::Extend && len as u64 == BLOCK_SIZE {
                continue;
            }
            for wait in [false, true] {
                for restart in [false, true] {
                    let case = format!("{len} bytes, {how:?}, wait {wait}, restart {restart}");
                    let dir = tempfile::tempdir().unwrap();
                    let (mut tier, _) = open(dir.path(), 1 << 20, DAY);
                    let b = id("h", 0);
                    tier.insert(b, data).unwrap();
                    harm(dir.path(), &b, len as u64, how);
                    let mut at_start = 0;
                    if restart {
                        drop(tier);
                        tier = open(dir.path(), 1 << 20, DAY).0;
                        // A length the file cannot hold is found by the scan.
                        at_start = corrupt(&tier);
                    }
                    // The middle 4 KiB, where the flipped bytes are.
                    let mut buf = vec![0u8; 4096];
                    let at = len as u64 / 2 - 2048;
                    let got = tier.read_mode(&b, len as u64, at, &mut buf, wait);
                    assert_eq!(got, Err(Missed::Absent), "{case}");
                    assert!(!tier.contains(&b), "{case}");
                    assert!(names(dir.path()).is_empty(), "{case}");
                    assert_eq!(tier.usage(), (0, 0), "{case}");
                    assert_eq!(corrupt(&tier), 1, "{case}");
                    assert!(at_start <= 1, "{case}");
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
    let data = pattern(BLOCK_SIZE as usize, 0);
    // Block 1 of its object: the chunks sit at an offset in the data file.
    let b = id("c", 1);
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
        .open(data_file(dir.path(), b.object))
        .unwrap();
    let at = BLOCK_SIZE as usize + 10 * chunk + 5;
    file.write_all_at(&[!data[10 * chunk + 5]], at as u64)
        .unwrap();
    let got = tier.read_mode(&b, BLOCK_SIZE, 0, &mut buf, false);
    assert_eq!(got, Ok(4096));
    assert!(buf[..] == data[..4096]);
    assert_eq!(corrupt(&tier), 0);
    // A read from the end of chunk 9 into chunk 10.
    let got = tier.read_mode(&b, BLOCK_SIZE, (10 * chunk - 100) as u64, &mut buf, false);
    assert_eq!(got, Err(Missed::Absent));
    assert_eq!(corrupt(&tier), 1);
    assert!(!tier.contains(&b));
    assert!(names(dir.path()).is_empty());
}

/// A data file whose length cannot hold its blocks (cut short, or longer than the object
/// whose short last block it holds) loses those blocks at start-up; changed bytes of
/// the right length are found by the first read.
#[test]
fn the_start_up_scan_drops_blocks_the_file_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 30, DAY);
    let data = vec![5u8; 40_000];
    for i in 0..4 {
        tier.insert(id(&format!("s{i}"), 0), &data).unwrap();
    }
    // Three blocks (256 KiB, 256 KiB, 40,000 bytes), cut inside the second.
    let big = pattern(2 * BLOCK_SIZE as usize + 40_000, 3);
    let cut = id("cut", 0).object;
    insert_object(&tier, cut, &big);
    drop(tier);
    let set_len = |object: ObjectId, len: u64| {
        File::options()
            .write(true)
            .open(data_file(dir.path(), object))
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    set_len(id("s0", 0).object, 30_000);
    set_len(id("s1", 0).object, 50_000);
    set_len(id("s2", 0).object, 39_999);
    harm(dir.path(), &id("s3", 0), 40_000, Harm::Flip);
    set_len(cut, BLOCK_SIZE + 1000);
    let (tier, report) = open(dir.path(), 1 << 30, DAY);
    // s0, s1, s2 and the last two blocks of `cut`.
    assert_eq!((report.blocks, report.corrupt), (2, 5));
    assert_eq!(corrupt(&tier), 5);
    assert_eq!(tier.read_block(&id("s3", 0), 40_000), None);
    assert_eq!(corrupt(&tier), 6);
    let first = tier.read_block(
        &BlockId {
            object: cut,
            index: 0,
        },
        BLOCK_SIZE,
    );
    assert!(first.unwrap()[..] == big[..BLOCK_SIZE as usize]);
    // Only `cut`'s files are left, its log rewritten to its one live block.
    assert_eq!(names(dir.path()).len(), 2);
    let log = parse_log(&fs::read(sums_file(dir.path(), cut)).unwrap()).unwrap();
    assert_eq!((log.records, log.live.len()), (1, 1));
}

#[test]
fn a_block_written_again_with_other_bytes_is_replaced_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 20, DAY);
    tier.insert(id("w", 0), b"first").unwrap();
    tier.insert(id("w", 0), b"other").unwrap();
    tier.insert(id("w", 0), b"other").unwrap();
    assert_eq!(names(dir.path()).len(), 2);
    assert_eq!(tier.usage(), (5, 1));
    assert_eq!(&tier.read_block(&id("w", 0), 5).unwrap()[..], b"other");
    drop(tier);
    // The log's last record for the block wins.
    let (tier, report) = open(dir.path(), 1 << 20, DAY);
    assert_eq!((report.blocks, report.removed, report.corrupt), (1, 0, 0));
    assert_eq!(&tier.read_block(&id("w", 0), 5).unwrap()[..], b"other");
}

/// What a crash can leave, and what the next start makes of it: a record whose bytes
/// were never written is caught by its checksum (or by the scan when past the file's
/// end); bytes whose record was never written are never served, and their space is
/// given back; a record cut short at the end of the log is ignored.
#[test]
fn crash_leftovers_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 30, DAY);
    let object = id("crash", 0).object;
    let block = |i: u32| BlockId { object, index: i };
    let data = pattern(BLOCK_SIZE as usize, 9);
    tier.insert(block(1), &data).unwrap();
    drop(tier);
    let sums = sums_file(dir.path(), object);
    let append = |bytes: &[u8]| {
        let mut log = File::options().append(true).open(&sums).unwrap();
        log.write_all(bytes).unwrap();
    };
    // Records appended, their bytes never written: block 0 (a hole inside the file) and
    // block 3 (past its end).
    append(&record(0, BLOCK_SIZE, &checksums(&data)));
    append(&record(3, BLOCK_SIZE, &checksums(&data)));
    // Bytes written, their record never: block 2.
    let path = data_file(dir.path(), object);
    let file = File::options().write(true).open(&path).unwrap();
    file.write_all_at(&data, 2 * BLOCK_SIZE).unwrap();
    file.sync_all().unwrap();
    assert!(allocated(&path) >= 2 * BLOCK_SIZE);
    // Half a record: the crash came mid-append.
    append(&record(4, BLOCK_SIZE, &checksums(&data))[..30]);

    let (tier, report) = open(dir.path(), 1 << 30, DAY);
    // Block 3 is past the file's end; blocks 0 and 1 are indexed.
    assert_eq!((report.blocks, report.corrupt), (2, 1));
    // Block 2's bytes are not ours to serve, and no longer take space.
    assert!(!tier.contains(&block(2)));
    assert_eq!(tier.read_block(&block(2), BLOCK_SIZE), None);
    assert!(allocated(&path) <= BLOCK_SIZE, "{}", allocated(&path));
    // Block 0 reads as zeros: not its checksums.
    assert_eq!(tier.read_block(&block(0), BLOCK_SIZE), None);
    assert_eq!(corrupt(&tier), 2);
    assert!(tier.read_block(&block(1), BLOCK_SIZE).unwrap()[..] == data[..]);
    // The log was rewritten without the torn tail: new records follow good ones.
    tier.insert(block(4), &data).unwrap();
    drop(tier);
    let (tier, report) = open(dir.path(), 1 << 30, DAY);
    assert_eq!((report.blocks, report.corrupt), (2, 0));
    assert!(tier.read_block(&block(4), BLOCK_SIZE).unwrap()[..] == data[..]);
}

/// A dropped block's range is punched out of the data file: its space is freed, the
/// file keeps its length and the other blocks; an object left with no block loses its
/// files.
#[test]
fn dropping_a_block_punches_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 4 * BLOCK_SIZE, DAY);
    let object = id("p", 0).object;
    let data = pattern(4 * BLOCK_SIZE as usize, 4);
    insert_object(&tier, object, &data);
    let path = data_file(dir.path(), object);
    let before = allocated(&path);
    assert!(before >= 4 * BLOCK_SIZE, "{before}");
    tier.remove(&BlockId { object, index: 1 });
    assert_eq!(allocated(&path), before - BLOCK_SIZE);
    assert_eq!(fs::metadata(&path).unwrap().len(), 4 * BLOCK_SIZE);
    // Eviction too: two blocks of other objects take the room of the oldest, block 0.
    for key in ["q", "r"] {
        tier.insert(id(key, 0), &data[..BLOCK_SIZE as usize])
            .unwrap();
    }
    assert!(!tier.contains(&BlockId { object, index: 0 }));
    assert_eq!(allocated(&path), before - 2 * BLOCK_SIZE);
    for index in [2, 3] {
        let got = tier
            .read_block(&BlockId { object, index }, BLOCK_SIZE)
            .unwrap();
        let r = block_range(index, 4 * BLOCK_SIZE);
        assert!(got[..] == data[r.start as usize..r.end as usize]);
    }
    tier.remove(&BlockId { object, index: 2 });
    tier.remove(&BlockId { object, index: 3 });
    assert!(!path.exists() && !sums_file(dir.path(), object).exists());
    drop(tier);
    let (_, report) = open(dir.path(), 4 * BLOCK_SIZE, DAY);
    assert_eq!((report.blocks, report.removed, report.corrupt), (2, 0, 0));
}

/// The checksum log stays a small multiple of its live records.
#[test]
fn the_checksum_log_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 30, DAY);
    let object = id("log", 0).object;
    let full = pattern(BLOCK_SIZE as usize, 5);
    let last = pattern(1000, 6);
    let block = |index| BlockId { object, index };
    // The object's last block stays; its first three come and go.
    tier.insert(block(3), &last).unwrap();
    for round in 0..60u32 {
        tier.insert(block(round % 3), &full).unwrap();
        tier.remove(&block(round % 3));
    }
    let log = parse_log(&fs::read(sums_file(dir.path(), object)).unwrap()).unwrap();
    assert!(
        log.records <= COMPACT_FACTOR * 2 + COMPACT_SLACK + 2,
        "{}",
        log.records
    );
    assert_eq!(log.live.len(), 1);
    drop(tier);
    let (tier, report) = open(dir.path(), 1 << 30, DAY);
    assert_eq!((report.blocks, report.corrupt), (1, 0));
    assert!(tier.read_block(&block(3), 1000).unwrap()[..] == last[..]);
}

/// The start-up scan rebuilds the index from the checksum logs: the same blocks, bytes
/// and contents, with blocks removed before the restart still gone.
#[test]
fn a_restart_rebuilds_the_index_from_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 30, DAY);
    let big = pattern(3 * BLOCK_SIZE as usize + 77, 6);
    let small = pattern(5000, 7);
    let (a, b) = (id("ra", 0).object, id("rb", 0).object);
    insert_object(&tier, a, &big);
    insert_object(&tier, b, &small);
    tier.remove(&BlockId {
        object: a,
        index: 1,
    });
    let usage = tier.usage();
    assert_eq!(usage, (2 * BLOCK_SIZE + 77 + 5000, 4));
    drop(tier);
    let (tier, report) = open(dir.path(), 1 << 30, DAY);
    assert_eq!((report.bytes, report.blocks), usage);
    assert_eq!(tier.usage(), usage);
    assert!(!tier.contains(&BlockId {
        object: a,
        index: 1
    }));
    for index in [0, 2, 3] {
        let r = block_range(index, big.len() as u64);
        let got = tier.read_block(&BlockId { object: a, index }, r.end - r.start);
        assert!(got.unwrap()[..] == big[r.start as usize..r.end as usize]);
    }
    let got = tier.read_block(
        &BlockId {
            object: b,
            index: 0,
        },
        5000,
    );
    assert!(got.unwrap()[..] == small[..]);
}

#[test]
fn a_backing_is_the_whole_object_once_every_block_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 30, DAY);
    let object = id("b", 0).object;
    let size = 2 * BLOCK_SIZE + 123;
    let data = pattern(size as usize, 8);
    assert!(tier.backing(object, size).is_none());
    assert!(tier.backing(object, 0).is_none());
    tier.insert(BlockId { object, index: 0 }, &data[..BLOCK_SIZE as usize])
        .unwrap();
    tier.insert(
        BlockId { object, index: 2 },
        &data[2 * BLOCK_SIZE as usize..],
    )
    .unwrap();
    // Block 1 missing.
    assert!(tier.backing(object, size).is_none());
    insert_object(&tier, object, &data);
    let (file, path, pin) = tier.backing(object, size).unwrap();
    assert_eq!(path, data_file(dir.path(), object));
    assert!(read_all(&file) == data);
    // Read-only.
    assert!(file.write_at(b"x", 0).is_err());
    // A size that is not the object's: not all of it is there as asked.
    assert!(tier.backing(object, size + 1).is_none());
    assert!(tier.backing(object, size - 1).is_none());
    drop(pin);
    assert_eq!(corrupt(&tier), 0);
}

/// While a backing lives, the object's file bytes never change: a dropped block (evicted,
/// removed, damaged, forgotten) takes all the object's blocks with it and the files are
/// unlinked; the holder's open file still has every byte. Pins are counted; once the
/// last is gone, a dropped block is punched out again.
#[test]
fn a_pinned_object_is_unlinked_never_changed() {
    let size = 3 * BLOCK_SIZE;
    let data = pattern(size as usize, 10);
    let other = pattern(BLOCK_SIZE as usize, 11);
    for how in ["evict", "remove", "forget", "damage", "rewrite"] {
        let dir = tempfile::tempdir().unwrap();
        let (tier, _) = open(dir.path(), 4 * BLOCK_SIZE, DAY);
        let object = id("pin", 0).object;
        insert_object(&tier, object, &data);
        let (file, path, pin) = tier.backing(object, size).unwrap();
        let (file2, _, pin2) = tier.backing(object, size).unwrap();
        let block1 = BlockId { object, index: 1 };
        match how {
            // Two blocks of another object: the oldest of ours goes.
            "evict" => {
                tier.insert(id("o", 0), &other).unwrap();
                tier.insert(id("o", 1), &other).unwrap();
            }
            "remove" => tier.remove(&block1),
            "forget" => tier.forget_object(object),
            // A read that finds the asked length wrong drops the block as damaged.
            "damage" => assert_eq!(tier.read_block(&block1, BLOCK_SIZE - 1), None),
            _ => {
                tier.insert(block1, &other).unwrap();
            }
        }
        for index in 0..3 {
            let id = BlockId { object, index };
            let rewritten = how == "rewrite" && index == 1;
            assert_eq!(tier.contains(&id), rewritten, "{how} {index}");
        }
        assert!(read_all(&file) == data, "{how}");
        assert!(read_all(&file2) == data, "{how}");
        if how == "rewrite" {
            // The new block is in a new file.
            assert_eq!(tier.usage().0, BLOCK_SIZE);
            assert!(path.exists());
            let got = tier.read_block(&block1, BLOCK_SIZE).unwrap();
            assert!(got[..] == other[..]);
        } else {
            assert!(!path.exists(), "{how}");
        }
        drop((pin, pin2));
    }

    // Counted pins: after the first of two goes, still pinned; after both, a dropped
    // block is punched out, the file otherwise unchanged.
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 30, DAY);
    let object = id("count", 0).object;
    insert_object(&tier, object, &data);
    let first = tier.backing(object, size).unwrap();
    let second = tier.backing(object, size).unwrap();
    drop(first);
    tier.remove(&BlockId { object, index: 0 });
    assert!(!second.1.exists());
    assert!(read_all(&second.0) == data);
    drop(second);
    insert_object(&tier, object, &data);
    let third = tier.backing(object, size).unwrap();
    drop(third);
    tier.remove(&BlockId { object, index: 0 });
    let path = data_file(dir.path(), object);
    let bytes = fs::read(&path).unwrap();
    assert!(bytes[..BLOCK_SIZE as usize].iter().all(|b| *b == 0));
    assert!(bytes[BLOCK_SIZE as usize..] == data[BLOCK_SIZE as usize..]);
}

/// A damaged block is found by the first backing (which reads every block): no backing,
/// the block dropped and counted. Once verified, a backing is not read again, but the
/// file's length is checked every time.
#[test]
fn a_backing_checks_the_bytes_once_and_the_length_always() {
    let size = 2 * BLOCK_SIZE + 500;
    let data = pattern(size as usize, 12);
    for how in HARMS {
        for index in [0u32, 2] {
            let case = format!("{how:?} block {index}");
            let dir = tempfile::tempdir().unwrap();
            let (tier, _) = open(dir.path(), 1 << 30, DAY);
            let object = id("v", 0).object;
            insert_object(&tier, object, &data);
            let block = BlockId { object, index };
            let len = {
                let r = block_range(index, size);
                r.end - r.start
            };
            harm(dir.path(), &block, len, how);
            assert!(tier.backing(object, size).is_none(), "{case}");
            // Damaged: this block (and, cut short, every one after it; extended, the
            // last).
            let damaged: Vec<u32> = match how {
                Harm::Flip => vec![index],
                Harm::Truncate => (index..3).collect(),
                Harm::Extend => vec![2],
            };
            for i in 0..3 {
                let present = tier.contains(&BlockId { object, index: i });
                assert_eq!(present, !damaged.contains(&i), "{case}: block {i}");
            }
            assert_eq!(corrupt(&tier), damaged.len() as u64, "{case}");
            // Fetched again, the object is whole.
            insert_object(&tier, object, &data);
            let (file, ..) = tier.backing(object, size).expect(&case);
            assert!(read_all(&file) == data, "{case}");
        }
    }

    // Verified once: a later backing does not read the blocks (a flip after it is not
    // seen by the backing; reads still check every chunk they serve).
    let dir = tempfile::tempdir().unwrap();
    let (tier, _) = open(dir.path(), 1 << 30, DAY);
    let object = id("once", 0).object;
    insert_object(&tier, object, &data);
    drop(tier.backing(object, size).unwrap());
    harm(
        dir.path(),
        &BlockId { object, index: 0 },
        BLOCK_SIZE,
        Harm::Flip,
    );
    assert!(tier.backing(object, size).is_some());
    assert_eq!(
        tier.read_block(&BlockId { object, index: 0 }, BLOCK_SIZE),
        None
    );
    assert_eq!(corrupt(&tier), 1);
    // A block that changes clears it: the next backing reads them all again.
    insert_object(&tier, object, &data);
    harm(
        dir.path(),
        &BlockId { object, index: 1 },
        BLOCK_SIZE,
        Harm::Flip,
    );
    assert!(tier.backing(object, size).is_none());
    assert_eq!(corrupt(&tier), 2);
}

/// A large object is checked by several threads: damage anywhere (the first thread's
/// part, a middle one, the short last block) is found and only that block dropped
/// (cut short, every block after it), and a whole object is handed out intact.
#[test]
fn a_large_backing_is_checked_in_parallel_parts() {
    let blocks = PARALLEL_CHECK_BLOCKS + 7;
    let size = u64::from(blocks - 1) * BLOCK_SIZE + 700;
    let data = pattern(size as usize, 13);
    for how in HARMS {
        for index in [0, blocks / 2, blocks - 1] {
            let case = format!("{how:?} block {index}");
            let dir = tempfile::tempdir().unwrap();
            let (tier, _) = open(dir.path(), 1 << 30, DAY);
            let object = id("big", 0).object;
            insert_object(&tier, object, &data);
            let len = {
                let r = block_range(index, size);
                r.end - r.start
            };
            harm(dir.path(), &BlockId { object, index }, len, how);
            assert!(tier.backing(object, size).is_none(), "{case}");
            let damaged: Vec<u32> = match how {
                Harm::Flip => vec![index],
                Harm::Truncate => (index..blocks).collect(),
                Harm::Extend => vec![blocks - 1],
            };
            for i in 0..blocks {
                let present = tier.contains(&BlockId { object, index: i });
                assert_eq!(present, !damaged.contains(&i), "{case}: block {i}");
            }
            insert_object(&tier, object, &data);
            let (file, ..) = tier.backing(object, size).expect(&case);
            assert!(read_all(&file) == data, "{case}");
        }
    }
}

/// Threads inserting, reading, removing, forgetting and pinning the same objects at
/// once (each block always with its object's bytes, as in the file system): a read
/// returns the right bytes or nothing, no race is ever taken for damage, a pinned file
/// never changes while held, the bound holds, and a restart finds exactly what the index
/// held.
#[test]
fn concurrent_use_never_serves_wrong_bytes_or_reports_false_damage() {
    const OBJECTS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let bound = 6 * BLOCK_SIZE;
    let tier = Arc::new(open(dir.path(), bound, DAY).0);
    let size = |o: usize| (o as u64 + 1) * BLOCK_SIZE + 1000 * o as u64 + 7;
    let object = |o: usize| ObjectId::new(&format!("c{o}"), "etag");
    let data: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..OBJECTS)
            .map(|o| pattern(size(o) as usize, o as u32 * 31))
            .collect(),
    );
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    let threads: Vec<_> = (0..5u64)
        .map(|t| {
            let (tier, data) = (tier.clone(), data.clone());
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                let mut next = move |n: u64| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % n
                };
                let mut pinned = 0u32;
                while std::time::Instant::now() < deadline {
                    let o = next(OBJECTS as u64) as usize;
                    let size = size(o);
                    let index = next(u64::from(blocks_of(0, size).end)) as u32;
                    let r = block_range(index, size);
                    let bytes = &data[o][r.start as usize..r.end as usize];
                    let id = BlockId {
                        object: object(o),
                        index,
                    };
                    match (t, next(10)) {
                        (0 | 1, 0..=6) => {
                            tier.insert(id, bytes).unwrap();
                        }
                        (0 | 1, 7 | 8) => tier.remove(&id),
                        (0 | 1, _) => tier.forget_object(object(o)),
                        (2 | 3, n) => {
                            if let Ok(got) = tier.read_block_mode(&id, r.end - r.start, n < 5) {
                                assert!(got[..] == *bytes, "block {index} of object {o}");
                            }
                        }
                        _ => match tier.backing(object(o), size) {
                            Some((file, _, pin)) => {
                                assert!(read_all(&file) == data[o]);
                                std::thread::sleep(Duration::from_millis(2));
                                assert!(read_all(&file) == data[o], "pinned file changed");
                                drop(pin);
                                pinned += 1;
                            }
                            None => insert_object(&tier, object(o), &data[o]),
                        },
                    }
                }
                pinned
            })
        })
        .collect();
    let pinned: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(pinned > 0, "no backing was ever whole");
    assert_eq!(corrupt(&tier), 0);
    let usage = tier.usage();
    assert!(usage.0 <= bound);
    let tier = Arc::into_inner(tier).unwrap();
    drop(tier);
    let (tier, report) = open(dir.path(), bound, DAY);
    assert_eq!(
        (report.bytes, report.blocks, report.corrupt),
        (usage.0, usage.1, 0)
    );
    for o in 0..OBJECTS {
        for index in blocks_of(0, size(o)) {
            let r = block_range(index, size(o));
            let id = BlockId {
                object: object(o),
                index,
            };
            if let Some(got) = tier.read_block(&id, r.end - r.start) {
                assert!(got[..] == data[o][r.start as usize..r.end as usize]);
            }
        }
    }
    assert_eq!(corrupt(&tier), 0);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    /// Object sizes: one short block; a full block and a short one; two full and a
    /// short one.
    const SIZES: [u64; 3] = [300, BLOCK_SIZE + 200, 2 * BLOCK_SIZE + 50];
    /// Holds two objects of the three at most, so eviction is frequent.
    const BOUND: u64 = 2 * BLOCK_SIZE + 600;

    fn object(o: usize) -> ObjectId {
        ObjectId::new(&format!("m{o}"), "etag")
    }

    fn blocks(o: usize) -> u32 {
        blocks_of(0, SIZES[o]).end
    }

    fn block_len(o: usize, i: u32) -> u64 {
        let r = block_range(i, SIZES[o]);
        r.end - r.start
    }

    #[derive(Debug, Clone, Copy)]
    enum Via {
        Wait,
        NoWait,
        Backing,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, u32),
        Read(usize, u32),
        Reopen,
        /// Damage the object's file at a block, then read what is damaged.
        Damage(usize, u32, Harm, Via),
        Backing(usize),
        Unpin(usize),
        Forget(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let via = prop_oneof![Just(Via::Wait), Just(Via::NoWait), Just(Via::Backing)];
        prop_oneof![
            6 => (0usize..3, 0u32..3).prop_map(|(o, i)| Op::Insert(o, i % blocks(o))),
            3 => (0usize..3, 0u32..3).prop_map(|(o, i)| Op::Read(o, i % blocks(o))),
            1 => Just(Op::Reopen),
            2 => (0usize..3, 0u32..3, proptest::sample::select(HARMS.to_vec()), via)
                .prop_map(|(o, i, how, via)| Op::Damage(o, i % blocks(o), how, via)),
            3 => (0usize..3).prop_map(Op::Backing),
            2 => (0usize..4).prop_map(Op::Unpin),
            1 => (0usize..3).prop_map(Op::Forget),
        ]
    }

    struct Pinned {
        o: usize,
        /// The object's files when pinned (`Model::gen`).
        gen: u64,
        file: File,
        bytes: Vec<u8>,
        _pin: Pin,
    }

    /// What the tier must hold: its blocks in LRU order (most recent last) with the fill
    /// byte last written for each, and per object which files are current.
    #[derive(Default)]
    struct Model {
        lru: Vec<(usize, u32)>,
        fill: HashMap<(usize, u32), u8>,
        /// Bumped whenever an object's files are unlinked: a pin of an older generation
        /// pins nothing current.
        gen: [u64; 3],
        verified: [bool; 3],
    }

    impl Model {
        fn present(&self, o: usize, i: u32) -> bool {
            self.lru.contains(&(o, i))
        }

        fn whole(&self, o: usize) -> bool {
            (0..blocks(o)).all(|i| self.present(o, i))
        }

        fn bytes(&self) -> u64 {
            self.lru.iter().map(|&(o, i)| block_len(o, i)).sum()
        }

        fn forget(&mut self, o: usize) {
            self.lru.retain(|e| e.0 != o);
            self.gen[o] += 1;
            self.verified[o] = false;
        }

        /// A block leaves the tier (evicted, damaged, removed); `writing` if an insert
        /// into its object is under way (its files stay even if it empties).
        fn drop_block(&mut self, o: usize, i: u32, pinned: bool, writing: bool) {
            self.lru.retain(|e| *e != (o, i));
            self.verified[o] = false;
            let empty = !self.lru.iter().any(|e| e.0 == o);
            if pinned || (empty && !writing) {
                self.forget(o);
            }
        }

        fn use_block(&mut self, o: usize, i: u32) {
            self.lru.retain(|e| *e != (o, i));
            self.lru.push((o, i));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a model LRU list: the tier holds the same blocks in the same order
        /// (restarts included: the model takes the order the scan rebuilt), each served
        /// block has the bytes last written for it, the bound always holds, on disk too,
        /// and the files hold nothing else. A damaged block is never served: it is
        /// dropped and counted. `backing` is Some exactly when every block of the
        /// object is held, and a pinned object's file bytes never change while pinned.
        #[test]
        fn disk_tier_matches_an_lru_model(ops in proptest::collection::vec(op(), 1..50)) {
            let dir = tempfile::tempdir().unwrap();
            let (mut tier, _) = open(dir.path(), BOUND, DAY);
            let mut model = Model::default();
            let mut pins: Vec<Pinned> = Vec::new();
            let mut version = 0u8;
            for op in ops {
                let pinned = |model: &Model, pins: &[Pinned], o: usize| {
                    pins.iter().any(|p| p.o == o && p.gen == model.gen[o])
                };
                match op {
                    Op::Insert(o, i) => {
                        version = version.wrapping_add(1);
                        let len = block_len(o, i) as usize;
                        let b = BlockId { object: object(o), index: i };
                        tier.insert(b, &vec![version; len]).unwrap();
                        if model.present(o, i) {
                            let p = pinned(&model, &pins, o);
                            model.drop_block(o, i, p, !p);
                        }
                        while model.bytes() + len as u64 > BOUND {
                            let (vo, vi) = model.lru[0];
                            let p = pinned(&model, &pins, vo);
                            model.drop_block(vo, vi, p, vo == o);
                        }
                        model.lru.push((o, i));
                        model.fill.insert((o, i), version);
                        model.verified[o] = false;
                    }
                    Op::Read(o, i) => {
                        let b = BlockId { object: object(o), index: i };
                        let got = tier.read_block(&b, block_len(o, i));
                        prop_assert_eq!(got.is_some(), model.present(o, i), "{:?}", b);
                        if let Some(data) = got {
                            let fill = model.fill[&(o, i)];
                            prop_assert!(data.iter().all(|b| *b == fill));
                            model.use_block(o, i);
                        }
                    }
                    Op::Damage(o, i, how, via) => {
                        let n = blocks(o);
                        // The blocks the harm damages, of those held.
                        let hit: Vec<u32> = match how {
                            Harm::Flip => vec![i],
                            Harm::Truncate => (i..n).collect(),
                            Harm::Extend => vec![n - 1],
                        };
                        let hit: Vec<u32> =
                            hit.into_iter().filter(|&j| model.present(o, j)).collect();
                        // The test never writes into a pinned file (that would be the
                        // test's change, not the tier's).
                        if !model.present(o, i) || hit.is_empty() || pinned(&model, &pins, o) {
                            continue;
                        }
                        let before = corrupt(&tier);
                        harm(dir.path(), &BlockId { object: object(o), index: i },
                             block_len(o, i), how);
                        if matches!(via, Via::Backing) && model.whole(o) && !model.verified[o] {
                            prop_assert!(tier.backing(object(o), SIZES[o]).is_none());
                            // A use of every block, though it found one damaged.
                            for j in 0..n {
                                model.use_block(o, j);
                            }
                        } else {
                            for &j in &hit {
                                let b = BlockId { object: object(o), index: j };
                                let len = block_len(o, j);
                                let mut buf = vec![0u8; len as usize];
                                let wait = !matches!(via, Via::NoWait);
                                let got = tier.read_mode(&b, len, 0, &mut buf, wait);
                                prop_assert_eq!(got, Err(Missed::Absent));
                            }
                        }
                        for &j in &hit {
                            let b = BlockId { object: object(o), index: j };
                            prop_assert!(!tier.contains(&b));
                            model.drop_block(o, j, false, false);
                        }
                        prop_assert_eq!(corrupt(&tier), before + hit.len() as u64);
                    }
                    Op::Backing(o) => {
                        let got = tier.backing(object(o), SIZES[o]);
                        prop_assert_eq!(got.is_some(), model.whole(o), "object {}", o);
                        if let Some((file, _, pin)) = got {
                            let bytes = read_all(&file);
                            prop_assert_eq!(bytes.len() as u64, SIZES[o]);
                            for i in 0..blocks(o) {
                                let r = block_range(i, SIZES[o]);
                                let fill = model.fill[&(o, i)];
                                let block = &bytes[r.start as usize..r.end as usize];
                                prop_assert!(block.iter().all(|b| *b == fill));
                                model.use_block(o, i);
                            }
                            model.verified[o] = true;
                            if pins.len() < 4 {
                                pins.push(Pinned { o, gen: model.gen[o], file, bytes, _pin: pin });
                            }
                        }
                    }
                    Op::Unpin(k) => {
                        if !pins.is_empty() {
                            pins.remove(k % pins.len());
                        }
                    }
                    Op::Forget(o) => {
                        tier.forget_object(object(o));
                        model.forget(o);
                    }
                    Op::Reopen => {
                        // A restart ends every pin (the kernel's too).
                        pins.clear();
                        drop(tier);
                        tier = open(dir.path(), BOUND, DAY).0;
                        // Order by object mtime: take the tier's, then check it holds
                        // the same blocks.
                        let order: Vec<(usize, u32)> = tier
                            .lru_order()
                            .iter()
                            .map(|b| ((0..3).find(|&o| object(o) == b.object).unwrap(), b.index))
                            .collect();
                        let mut had = model.lru.clone();
                        let mut now = order.clone();
                        had.sort();
                        now.sort();
                        prop_assert_eq!(had, now);
                        model.lru = order;
                        model.verified = [false; 3];
                    }
                }
                // The same blocks in the same order.
                let order: Vec<(usize, u32)> = tier
                    .lru_order()
                    .iter()
                    .map(|b| ((0..3).find(|&o| object(o) == b.object).unwrap(), b.index))
                    .collect();
                prop_assert_eq!(&order, &model.lru);
                let (bytes, count) = tier.usage();
                prop_assert!(bytes <= BOUND);
                prop_assert_eq!((bytes, count), (model.bytes(), model.lru.len() as u64));
                // Pinned files never change.
                for pin in &pins {
                    prop_assert!(read_all(&pin.file) == pin.bytes, "pinned object {}", pin.o);
                }
                // On disk: a data file and a log per object holding blocks, their live
                // records the index's blocks, and no space beyond them.
                let mut logged = 0;
                for o in 0..3 {
                    let held = model.lru.iter().any(|e| e.0 == o);
                    let data = data_file(dir.path(), object(o));
                    let sums = sums_file(dir.path(), object(o));
                    prop_assert_eq!(data.exists(), held);
                    prop_assert_eq!(sums.exists(), held);
                    if held {
                        let log = parse_log(&fs::read(&sums).unwrap()).unwrap();
                        let live: u64 = log.live.values().map(|(len, _)| *len).sum();
                        logged += live;
                        let need: u64 = log.live.values().map(|(len, _)| len.next_multiple_of(4096)).sum();
                        prop_assert!(allocated(&data) <= need, "{} > {}", allocated(&data), need);
                    }
                }
                prop_assert_eq!(logged, bytes);
                prop_assert!(names(dir.path()).len() <= 6);
            }
        }
    }
}
