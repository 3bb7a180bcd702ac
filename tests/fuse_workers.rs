//! Several FUSE workers (`--fuse-threads`): one request stuck inside the daemon never
//! holds up the others. The stuck request is a real inline one: a read answered from the
//! disk cache, whose data file the test swaps for a FIFO, so the daemon's open of it
//! waits (as a read from a hung disk would) until the test opens the FIFO's other end.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::{bounded, wait_for, within, Mount, S3Server};

/// Two 256 KiB cache blocks and a bit.
const SIZE: usize = 300 * 1024;
/// How long requests beside the stuck one may take (they take milliseconds).
const ANSWER: Duration = Duration::from_secs(3);

fn content(seed: u8) -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// The disk cache's data files (one per object, 32 hex digits) whose blocks of an
/// object of SIZE bytes are all on disk, bytes and checksum records (the log's format: an
/// 8-byte header, then per block 12 bytes and 4 per 16 KiB; docs/ARCHITECTURE.md).
fn cached_objects(cache_dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let log_len = 8 + (12 + 4 * 16) + (12 + 4 * (SIZE as u64 - (256 << 10)).div_ceil(16 << 10));
    match std::fs::read_dir(cache_dir.join("data")) {
        Ok(dir) => dir
            .map(|e| e.expect("cache entry").path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let data = std::fs::metadata(p).map_or(0, |m| m.blocks() * 512);
                let log = std::fs::metadata(p.with_extension("sums")).map_or(0, |m| m.len());
                name.len() == 32 && data == SIZE as u64 && log == log_len
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Drops the kernel's cached pages of `path`, so the next read reaches the daemon.
fn drop_pages(file: &File) {
    // SAFETY: fadvise on an open fd; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

fn read_fresh(path: &Path) -> Vec<u8> {
    let file = File::open(path).expect("open");
    drop_pages(&file);
    let mut buf = vec![0u8; SIZE];
    let mut done = 0;
    while done < SIZE {
        let n = file.read_at(&mut buf[done..], done as u64).expect("read");
        assert!(n > 0, "short file");
        done += n;
    }
    buf
}

/// Mounts with `threads` FUSE workers, makes one cached read hang in the daemon, and
/// returns whether a second reader's cached read and fresh lookups answered meanwhile.
/// Either way the hung read completes, with the right bytes, once the disk "recovers".
fn others_answer_while_one_read_hangs(threads: &str) -> bool {
    let server = S3Server::start();
    server.create_bucket("workers");
    server.put("workers", "slow.bin", content(1), &[]);
    server.put("workers", "fast.bin", content(2), &[]);
    for i in 0..4 {
        server.put("workers", &format!("names/n{i}"), "x", &[]);
    }
    // Blocks on disk only (no memory tier), and no eager import: each read is ours.
    let mount = Mount::start(
        &server,
        "s3://workers",
        &[
            "--fuse-threads",
            threads,
            "--memory-cache-size",
            "0",
            "--import-size-threshold",
            "0",
            // The daemon serves every read (passthrough would hand the cached file to
            // the kernel, and no read would reach the daemon to hang in it).
            "--no-passthrough",
        ],
    );
    let root = mount.path.clone();

    // Cache slow.bin, note its data file, then cache fast.bin.
    let slow = root.join("slow.bin");
    assert_eq!(read_fresh(&slow), content(1));
    let cache_dir = mount.cache_dir.clone();
    assert!(
        wait_for(Duration::from_secs(10), || cached_objects(&cache_dir).len()
            == 1),
        "slow.bin's blocks never reached the disk cache"
    );
    let slow_file = cached_objects(&cache_dir).remove(0);
    let fast = root.join("fast.bin");
    assert_eq!(read_fresh(&fast), content(2));
    assert!(
        wait_for(Duration::from_secs(10), || cached_objects(&cache_dir).len()
            == 2),
        "fast.bin's blocks never reached the disk cache"
    );

    // slow.bin's data file becomes a FIFO: opening it waits for a writer.
    std::fs::remove_file(&slow_file).expect("remove data file");
    let c_path = std::ffi::CString::new(slow_file.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");

    let (tx, hung_read) = mpsc::channel();
    let slow_path = slow.clone();
    std::thread::spawn(move || {
        let file = File::open(&slow_path).expect("open slow.bin");
        drop_pages(&file);
        let mut buf = vec![0u8; 4096];
        let n = file.read_at(&mut buf, 0).expect("read slow.bin");
        buf.truncate(n);
        let _ = tx.send(buf);
    });
    assert!(
        hung_read.recv_timeout(Duration::from_millis(500)).is_err(),
        "the read of the FIFO-backed object did not hang: the test does not stall the daemon"
    );

    // Another reader: a cached read (its pages dropped, so it reaches the daemon) and
    // lookups of names the kernel has never seen.
    let (fast_path, names) = (fast.clone(), root.join("names"));
    let (tx_other, other) = mpsc::channel();
    std::thread::spawn(move || {
        let bytes = read_fresh(&fast_path);
        let sizes: Vec<u64> = (0..4)
            .map(|i| {
                std::fs::metadata(names.join(format!("n{i}")))
                    .unwrap()
                    .len()
            })
            .collect();
        let _ = tx_other.send((bytes, sizes));
    });
    let answered = match other.recv_timeout(ANSWER) {
        Ok((bytes, sizes)) => {
            assert!(bytes == content(2), "fast.bin read wrong bytes");
            assert_eq!(sizes, [1, 1, 1, 1]);
            true
        }
        Err(_) => false,
    };

    // The disk "recovers": the daemon's open returns, finds the block damaged (empty)
    // and fetches the range from S3 instead.
    let fifo = slow_file.clone();
    bounded(ANSWER, "open the FIFO's writing end", move || {
        drop(std::fs::OpenOptions::new().write(true).open(&fifo))
    });
    let first = hung_read
        .recv_timeout(Duration::from_secs(20))
        .expect("the hung read never completed after the disk recovered");
    assert_eq!(first, content(1)[..4096]);
    if !answered {
        let (bytes, _) = other
            .recv_timeout(Duration::from_secs(20))
            .expect("the other reader never completed");
        assert!(bytes == content(2), "fast.bin read wrong bytes");
    }
    let _ = std::fs::remove_file(&slow_file);
    let listed = within(ANSWER, move || {
        std::fs::read_dir(&root).map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        })
    })
    .expect("mount answers after the stall")
    .expect("list root");
    assert!(listed.iter().any(|n| n == "fast.bin"), "{listed:?}");
    answered
}

#[test]
fn a_hung_inline_read_does_not_block_other_requests() {
    assert!(
        others_answer_while_one_read_hangs("4"),
        "with 4 FUSE workers, a cached read and lookups waited behind one hung read"
    );
}

/// The control: with one worker (the behaviour before `--fuse-threads`) the same hung
/// read stalls every other request, which shows the test above stalls a worker for real.
#[test]
fn one_fuse_worker_stalls_behind_a_hung_read() {
    assert!(
        !others_answer_while_one_read_hangs("1"),
        "with 1 FUSE worker, other requests answered while a read was hung"
    );
}
