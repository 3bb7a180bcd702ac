//! FUSE passthrough (issue 11): open files whose bytes are local are read and written by
//! the kernel directly. These tests prove that it is really in use (the daemon serves no
//! read of such files, status says so) and that nothing users see changes: writes reach
//! the bucket after the write-back delay, also from a writer that stays open, sizes and
//! mtimes are right while the file is written, many handles on one file agree with a
//! local file step for step, and `--no-passthrough` serves everything through the daemon.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{assert_answers, status_xattr, sync, wait_for, Mount, S3Server};

const LIMIT: Duration = Duration::from_secs(30);

fn status(path: &Path) -> String {
    status_xattr(path, LIMIT)
}

/// A `name=N` counter of the status text's metrics line.
fn counter(status: &str, name: &str) -> u64 {
    let metrics = status
        .lines()
        .find_map(|l| l.strip_prefix("metrics: "))
        .expect("metrics line");
    let at = metrics
        .find(name)
        .unwrap_or_else(|| panic!("{name} in {metrics}"));
    metrics[at + name.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn writes_and_reads_go_through_the_kernel_and_reach_the_bucket() {
    let server = S3Server::start();
    server.create_bucket("pass");
    let mount = Mount::start(
        &server,
        "s3://pass",
        &["--write-back-delay", "1s", "--poll-interval", "1s"],
    );
    let path = mount.join("new.bin");
    let data = pattern(3 << 20, 7);
    {
        let mut file = File::create(&path).expect("create");
        let before = counter(&status(&mount.join("")), "opens passthrough=");
        assert!(before >= 1, "the create was passed through");
        file.write_all(&data[..1 << 20]).expect("write");
        // The size and mtime of a file being written through the kernel are the file's.
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.len(), 1 << 20, "size while written");
        let age = SystemTime::now()
            .duration_since(meta.modified().unwrap())
            .unwrap_or_default();
        assert!(
            age < Duration::from_secs(5),
            "mtime follows writes: {age:?}"
        );
        file.write_all(&data[1 << 20..]).expect("write");
        let text = status(&path);
        assert!(text.contains("passthrough: on"), "{text}");
        assert!(text.contains("open: 1 passthrough"), "{text}");
    }
    // Reads of the local bytes reach the daemon no more: its read counter stays put.
    let read_before = counter(&status(&mount.join("")), "read=");
    let back = std::fs::read(&path).expect("read back");
    assert!(back == data, "read back through the kernel");
    let read_after = counter(&status(&mount.join("")), "read=");
    assert_eq!(read_before, read_after, "no read was served by the daemon");

    sync(&mount.join(""), LIMIT).expect("sync");
    assert!(
        server.get("pass", "new.bin") == data,
        "the bucket has the bytes"
    );
    assert_answers(&mount.join(""), Duration::from_secs(5));
}

#[test]
fn a_writer_that_stays_open_is_exported_after_the_quiet_time() {
    let server = S3Server::start();
    server.create_bucket("pass");
    let mount = Mount::start(
        &server,
        "s3://pass",
        &["--write-back-delay", "1s", "--poll-interval", "0s"],
    );
    let path = mount.join("log.txt");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open");
    file.write_all(b"first line\n").expect("write");
    assert!(
        wait_for(LIMIT, || server.exists("pass", "log.txt")
            && server.get("pass", "log.txt") == b"first line\n"),
        "exported while still open"
    );
    file.write_all(b"second line\n").expect("write");
    assert!(
        wait_for(LIMIT, || server.get("pass", "log.txt")
            == b"first line\nsecond line\n"),
        "a later write while open is exported too"
    );
    drop(file);
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"first line\nsecond line\n"
    );
    assert_answers(&mount.join(""), Duration::from_secs(5));
}

/// A mount of a bucket holding `small.bin` (100 KiB of `pattern(_, seed)`), once the
/// listing has imported it into the cache (eager import of small files).
fn mount_with_a_cached_file(seed: u8) -> (S3Server, Mount, PathBuf, Vec<u8>) {
    let server = S3Server::start();
    server.create_bucket("pass");
    let small = pattern(100 << 10, seed);
    server.put("pass", "small.bin", small.clone(), &[]);
    let mount = Mount::start(&server, "s3://pass", &["--poll-interval", "0s"]);
    let path = mount.join("small.bin");
    assert!(
        wait_for(LIMIT, || status(&path).contains("cached: 102400 of 102400")),
        "imported: {}",
        status(&path)
    );
    (server, mount, path, small)
}

#[test]
fn cached_objects_are_read_by_the_kernel() {
    // The listing imports it; then opens pass through.
    let (server, mount, path, small) = mount_with_a_cached_file(3);
    // Cached means in memory at once and on disk a moment later (one background writer):
    // an open passes through once the file is on disk.
    let mut file = None;
    let passed = wait_for(LIMIT, || {
        let before = counter(&status(&mount.join("")), "opens passthrough=");
        let opened = File::open(&path).expect("open");
        let after = counter(&status(&mount.join("")), "opens passthrough=");
        file = Some(opened);
        after == before + 1
    });
    assert!(passed, "the open of a cached file is passed through");
    let file = file.expect("opened");
    let mut buf = vec![0u8; small.len()];
    file.read_exact_at(&mut buf, 0).expect("read");
    assert!(buf == small);

    // A writer beside the passthrough reader takes the cached file as its staged bytes
    // (the kernel allows one backing file per inode): the reader sees the writes at
    // once, as on a local file, and the change reaches the bucket.
    let mut expected = small.clone();
    expected[..5].copy_from_slice(b"HELLO");
    {
        let writer = OpenOptions::new().write(true).open(&path).expect("open rw");
        writer.write_all_at(b"HELLO", 0).expect("write");
        let mut head = [0u8; 8];
        file.read_exact_at(&mut head, 0).expect("read");
        assert_eq!(&head, &expected[..8], "the reader sees the write");
        assert!(
            status(&path).contains("open: 2 passthrough"),
            "{}",
            status(&path)
        );
    }
    drop(file);
    assert!(std::fs::read(&path).expect("read") == expected);
    sync(&mount.join(""), LIMIT).expect("sync");
    assert!(server.get("pass", "small.bin") == expected);
    assert_answers(&mount.join(""), Duration::from_secs(5));
}

#[test]
fn no_passthrough_serves_everything_through_the_daemon() {
    let server = S3Server::start();
    server.create_bucket("pass");
    let mount = Mount::start(&server, "s3://pass", &["--no-passthrough"]);
    let path = mount.join("f.txt");
    std::fs::write(&path, b"hello").expect("write");
    assert_eq!(std::fs::read(&path).expect("read"), b"hello");
    let text = status(&path);
    assert!(
        text.contains("passthrough: off (turned off with --no-passthrough)"),
        "{text}"
    );
    assert_eq!(counter(&text, "opens passthrough="), 0);
    assert_answers(&mount.join(""), Duration::from_secs(5));
}

/// A deterministic xorshift, so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// fsx-style: random opens (read-only, read-write, truncating), writes, reads,
/// truncates and closes over several handles of one file at once, the same steps on the
/// mount and on a local file, compared read for read; then the bucket's copy.
/// Exports wait: every handle sees the same staged bytes (the export itself is checked
/// at the end).
#[test]
fn many_handles_on_one_file_agree_with_a_local_file() {
    fsx(
        &["--write-back-delay", "1h", "--poll-interval", "0s"],
        0x5eed_1234_abcd_0001,
        false,
    );
}

/// The same with exports under way all along: a write-back delay of zero, the poller
/// re-listing every second (it must see the mount's own exports as its own, not as
/// changes in the bucket), and `s3files sync` between steps while handles are open.
#[test]
fn many_handles_agree_while_exports_and_polls_run_between_steps() {
    fsx(
        &["--write-back-delay", "0s", "--poll-interval", "1s"],
        0x5eed_1234_abcd_0002,
        true,
    );
}

fn fsx(flags: &[&str], seed: u64, syncs: bool) {
    let server = S3Server::start();
    server.create_bucket("pass");
    let mount = Mount::start(&server, "s3://pass", flags);
    let local_dir = tempfile::tempdir().expect("tempdir");
    let local = local_dir.path().join("f.bin");
    let remote = mount.join("f.bin");
    for p in [&local, &remote] {
        std::fs::write(p, pattern(200_000, 1)).expect("seed");
    }
    // FSX_SEED replays or explores other sequences.
    let seed = std::env::var("FSX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    let mut rng = Rng(seed);
    let mut open: Vec<(File, File)> = Vec::new();
    const MAX_SIZE: u64 = 1 << 20;
    for step in 0..600 {
        match rng.below(10) {
            0 | 1 if open.len() < 6 => {
                let (write, truncate) = match rng.below(4) {
                    0 => (false, false),
                    1 | 2 => (true, false),
                    _ => (true, true),
                };
                let opener = |p: &Path| {
                    OpenOptions::new()
                        .read(true)
                        .write(write)
                        .truncate(truncate)
                        .open(p)
                        .unwrap_or_else(|e| panic!("step {step}: open {}: {e}", p.display()))
                };
                open.push((opener(&local), opener(&remote)));
            }
            2 if !open.is_empty() => {
                let i = rng.below(open.len() as u64) as usize;
                open.swap_remove(i);
            }
            3..=5 if !open.is_empty() => {
                let i = rng.below(open.len() as u64) as usize;
                let offset = rng.below(MAX_SIZE);
                let len = 1 + rng.below(64 << 10) as usize;
                let data = pattern(len, step as u8);
                let a = open[i].0.write_at(&data, offset).map_err(|e| e.kind());
                let b = open[i].1.write_at(&data, offset).map_err(|e| e.kind());
                assert_eq!(a, b, "step {step}: write at {offset}+{len}");
            }
            9 if syncs => {
                // Every pending change reaches the bucket now, handles open or not.
                sync(&mount.join(""), LIMIT).unwrap_or_else(|e| panic!("step {step}: sync: {e}"));
            }
            6 if !open.is_empty() => {
                let i = rng.below(open.len() as u64) as usize;
                let size = rng.below(MAX_SIZE);
                let a = open[i].0.set_len(size).map_err(|e| e.kind());
                let b = open[i].1.set_len(size).map_err(|e| e.kind());
                assert_eq!(a, b, "step {step}: truncate to {size}");
            }
            _ if !open.is_empty() => {
                let i = rng.below(open.len() as u64) as usize;
                let offset = rng.below(MAX_SIZE + 1000);
                let len = 1 + rng.below(100 << 10) as usize;
                let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                let na = open[i].0.read_at(&mut a, offset).expect("local read");
                let nb = open[i]
                    .1
                    .read_at(&mut b, offset)
                    .unwrap_or_else(|e| panic!("step {step}: read at {offset}: {e}"));
                assert_eq!(na, nb, "step {step}: read length at {offset}");
                assert!(a[..na] == b[..nb], "step {step}: bytes at {offset}+{na}");
                let (sa, sb) = (
                    std::fs::metadata(&local).unwrap().len(),
                    std::fs::metadata(&remote).unwrap().len(),
                );
                assert_eq!(sa, sb, "step {step}: size");
            }
            _ => {}
        }
    }
    drop(open);
    let want = std::fs::read(&local).expect("local");
    assert!(
        std::fs::read(&remote).expect("mount") == want,
        "final bytes"
    );
    let text = status(&remote);
    assert!(counter(&text, "opens passthrough=") > 0, "{text}");
    sync(&mount.join(""), LIMIT).expect("sync");
    assert!(
        server.get("pass", "f.bin") == want,
        "the bucket has the final bytes"
    );
    assert_answers(&mount.join(""), Duration::from_secs(5));
}

/// The bucket wins a conflict while a writer passed through to the local bytes is still
/// open: the path shows the bucket's version at once (a new inode), the open handle keeps
/// its bytes, which go to lost+found and never reach the bucket.
#[test]
fn a_conflict_under_an_open_passed_through_writer() {
    let server = S3Server::start();
    server.create_bucket("pass");
    server.put("pass", "doc.txt", "base", &[]);
    let mount = Mount::start(
        &server,
        "s3://pass",
        &["--write-back-delay", "1h", "--poll-interval", "1s"],
    );
    let path = mount.join("doc.txt");
    let mut mine = OpenOptions::new()
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("open");
    mine.write_all(b"mine").expect("write");
    assert!(
        status(&path).contains("open: 1 passthrough"),
        "{}",
        status(&path)
    );
    server.put("pass", "doc.txt", "theirs", &[]);
    assert!(
        wait_for(LIMIT, || std::fs::read(&path).ok().as_deref()
            == Some(&b"theirs"[..])),
        "the bucket's version shows to new opens"
    );
    let mut buf = [0u8; 4];
    mine.read_exact_at(&mut buf, 0)
        .expect("the old handle still reads");
    assert_eq!(&buf, b"mine");
    mine.write_all(b" more").expect("write to the old handle");
    drop(mine);
    sync(&mount.join(""), LIMIT).expect("sync");
    assert_eq!(server.get("pass", "doc.txt"), b"theirs", "the bucket wins");
    let lost = common::lost_found_files(&mount.join(""));
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_answers(&mount.join(""), Duration::from_secs(5));
}

/// A large object read whole once is in the disk cache as one file: later opens hand
/// that file to the kernel (after checking it once, off the FUSE thread), and reads
/// never reach the daemon again.
#[test]
fn a_large_object_read_once_is_then_read_by_the_kernel() {
    let server = S3Server::start();
    server.create_bucket("pass");
    let big = pattern(3 << 20, 9);
    server.put("pass", "big.bin", big.clone(), &[]);
    let mount = Mount::start(&server, "s3://pass", &["--poll-interval", "0s"]);
    let path = mount.join("big.bin");
    // Read whole, backwards (a sequential read would stream past the cache).
    {
        let file = File::open(&path).expect("open");
        for block in (0..big.len() / (256 << 10)).rev() {
            let mut buf = vec![0u8; 256 << 10];
            file.read_exact_at(&mut buf, (block * (256 << 10)) as u64)
                .expect("read");
            assert!(buf[..] == big[block * (256 << 10)..(block + 1) * (256 << 10)]);
        }
    }
    // The blocks reach the disk tier in the background.
    assert!(
        wait_for(LIMIT, || {
            let before = counter(&status(&mount.join("")), "opens passthrough=");
            let file = File::open(&path).expect("open");
            let after = counter(&status(&mount.join("")), "opens passthrough=");
            drop(file);
            after > before
        }),
        "a wholly cached object is passed through: {}",
        status(&path)
    );
    let read_before = counter(&status(&mount.join("")), "read=");
    let file = File::open(&path).expect("open");
    let mut buf = vec![0u8; big.len()];
    file.read_exact_at(&mut buf, 0).expect("read");
    assert!(buf == big);
    let mut page = [0u8; 4096];
    file.read_exact_at(&mut page, 1 << 20).expect("pread");
    assert_eq!(&page[..], &big[1 << 20..(1 << 20) + 4096]);
    drop(file);
    let read_after = counter(&status(&mount.join("")), "read=");
    assert_eq!(
        read_before, read_after,
        "the kernel read the cache file itself"
    );
    assert_answers(&mount.join(""), Duration::from_secs(5));
}

/// The kernel does not check what it reads from a cache file, so the daemon checks the
/// whole file when it hands it over: a file damaged on disk (while the daemon was down)
/// is never passed through; its damaged block is dropped and read from S3 again.
#[test]
fn a_damaged_cache_file_is_never_handed_to_the_kernel() {
    use std::os::unix::fs::FileExt;
    let server = S3Server::start();
    server.create_bucket("pass");
    let data = pattern(600 << 10, 5);
    server.put("pass", "f.bin", data.clone(), &[]);
    let cache = tempfile::tempdir().expect("tempdir");
    let flags = ["--import-size-threshold", "0", "--poll-interval", "0s"];
    let mut mount = Mount::start_with_cache(&server, "s3://pass", &flags, cache.path());
    assert!(std::fs::read(mount.join("f.bin")).expect("read") == data);
    let data_file = || {
        std::fs::read_dir(cache.path().join("data"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_none()
                    && std::fs::metadata(p).is_ok_and(|m| m.len() == data.len() as u64)
            })
    };
    assert!(wait_for(LIMIT, || data_file().is_some()), "cached on disk");
    assert!(mount.stop().success());
    let path = data_file().expect("data file");
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.write_all_at(&[0xAA; 64], 300 << 10).expect("damage");
    drop(file);

    let mount = Mount::start_with_cache(&server, "s3://pass", &flags, cache.path());
    let read = std::fs::read(mount.join("f.bin")).expect("read");
    assert!(read == data, "the bucket's bytes, never the damaged ones");
    let text = status(&mount.join(""));
    assert!(text.contains(" corrupt=1 "), "{text}");
    assert_eq!(counter(&text, "opens passthrough="), 0, "{text}");
    assert_answers(&mount.join(""), Duration::from_secs(5));
}

/// Reads `len` bytes at 0 through a 4 KiB-aligned buffer, as `O_DIRECT` wants.
fn read_aligned(file: &File, len: usize) -> Vec<u8> {
    let mut backing = vec![0u8; len + 4096];
    let skew = backing.as_ptr().align_offset(4096);
    let buf = &mut backing[skew..skew + len];
    file.read_exact_at(buf, 0).expect("direct read");
    buf.to_vec()
}

#[test]
fn direct_readers_of_a_cached_file_are_answered_by_the_daemon() {
    use std::os::unix::fs::OpenOptionsExt;
    let (_server, mount, path, small) = mount_with_a_cached_file(5);
    let open_direct = || {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("open O_DIRECT")
    };
    let direct_before = counter(&status(&mount.join("")), "direct=");
    let direct = open_direct();
    assert!(read_aligned(&direct, small.len()) == small);
    assert!(
        status(&path).contains("open: 1 direct"),
        "{}",
        status(&path)
    );
    assert_eq!(
        counter(&status(&mount.join("")), "direct="),
        direct_before + 1
    );

    // Beside it, a plain open is still passed through once the file is on disk (the
    // kernel allows it: direct handles hold no io mode), and a direct open beside that
    // joins it (the kernel would refuse anything else).
    let mut plain = None;
    let passed = wait_for(LIMIT, || {
        let before = counter(&status(&mount.join("")), "opens passthrough=");
        plain = Some(File::open(&path).expect("open"));
        counter(&status(&mount.join("")), "opens passthrough=") == before + 1
    });
    assert!(passed, "a plain open beside a direct one is passed through");
    let plain = plain.expect("opened");
    let joined = open_direct();
    assert!(read_aligned(&joined, small.len()) == small);
    assert!(std::fs::read(&path).expect("read") == small);
    assert!(
        status(&path).contains("open: 2 passthrough, 1 direct"),
        "{}",
        status(&path)
    );
    drop((direct, plain, joined));
    assert_answers(&mount.join(""), Duration::from_secs(5));
}
