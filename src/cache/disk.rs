//! Disk tier: one file per cached block under CACHE_DIR/data, named after the object
//! version and block index, so a restart finds its blocks again by name alone.
//!
//! A block file is written to a temporary name and renamed into place: a block file that
//! exists is complete (a crash leaves at most a temporary file, removed at the next start).
//! The in-memory index keeps the least-recently-used order, the byte total against the
//! bound, and last-use times; last use is written back to the file's mtime at most once per
//! `touch_interval`, so the expiry survives restarts without a write per hit.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lru::LruCache;

use super::{BlockId, ObjectId};

const TMP_PREFIX: &str = ".tmp-";

struct Entry {
    len: u64,
    last_used: SystemTime,
    /// When last use was last written to the file's mtime.
    touched: SystemTime,
}

struct Index {
    blocks: LruCache<BlockId, Entry>,
    bytes: u64,
}

/// Why a disk-tier read found nothing to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// The block is not cached.
    Absent,
    /// The block is cached but reading it would wait for the device.
    WouldBlock,
}

/// What a start-up scan found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks dropped because unused for longer than the expiry.
    pub expired: u64,
    /// Leftovers removed: temporary files, foreign names, blocks past the bound.
    pub removed: u64,
}

/// Blocks dropped by one insert.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub evicted: u64,
    /// Blocks that went unused for the expiry (the memory tier must drop them too).
    pub expired: Vec<BlockId>,
}

pub struct DiskTier {
    dir: PathBuf,
    index: Mutex<Index>,
    bound: u64,
    expiry: Duration,
    touch_interval: Duration,
    next_tmp: AtomicU64,
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `dir` and indexes what an earlier run left,
    /// oldest use first, dropping expired blocks and anything past the bound.
    pub fn open(dir: &Path, bound: u64, expiry: Duration) -> io::Result<(Self, ScanReport)> {
        fs::create_dir_all(dir)?;
        let now = SystemTime::now();
        let mut report = ScanReport::default();
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let parsed = name.to_str().and_then(parse_name);
            let meta = entry.metadata();
            match (parsed, meta) {
                (Some(id), Ok(meta)) if meta.is_file() => {
                    let mtime = meta.modified().unwrap_or(now);
                    if expired(now, mtime, expiry) {
                        let _ = fs::remove_file(entry.path());
                        report.expired += 1;
                    } else {
                        found.push((mtime, id, meta.len()));
                    }
                }
                _ => {
                    let _ = fs::remove_file(entry.path());
                    report.removed += 1;
                }
            }
        }
        found.sort_by_key(|(mtime, _, _)| *mtime);
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            index: Mutex::new(Index {
                blocks: LruCache::unbounded(),
                bytes: 0,
            }),
            bound,
            expiry,
            touch_interval: (expiry / 8).min(Duration::from_secs(3600)),
            next_tmp: AtomicU64::new(0),
        };
        let mut victims = Vec::new();
        {
            let mut index = tier.lock();
            for (mtime, id, len) in found {
                index.bytes += len;
                index.blocks.put(
                    id,
                    Entry {
                        len,
                        last_used: mtime,
                        touched: mtime,
                    },
                );
            }
            tier.evict_locked(&mut index, 0, &mut victims);
            report.removed += victims.len() as u64;
            report.blocks = index.blocks.len() as u64;
            report.bytes = index.bytes;
        }
        tier.unlink(victims);
        Ok((tier, report))
    }

    /// Reads from a cached block at `offset` within it. `block_len` is the length the block
    /// must have (known from the object's size); a file of another length is not trusted.
    /// None is a miss.
    pub fn read(&self, id: &BlockId, block_len: u64, offset: u64, buf: &mut [u8]) -> Option<usize> {
        self.read_mode(id, block_len, offset, buf, true).ok()
    }

    /// Like `read`, but with `wait` false it does not wait for the device: a block whose
    /// pages are not in the page cache is `Missed::WouldBlock` (RWF_NOWAIT), so a caller
    /// that must not stall (the FUSE thread) can hand the read to a thread that may.
    pub fn read_mode(
        &self,
        id: &BlockId,
        block_len: u64,
        offset: u64,
        buf: &mut [u8],
        wait: bool,
    ) -> Result<usize, Missed> {
        let touch = self.note_use(id, block_len).ok_or(Missed::Absent)?;
        let path = self.path(id);
        if let Some(when) = touch {
            touch_file(&path, when);
        }
        let result = File::open(&path).and_then(|file| read_full(&file, buf, offset, wait));
        match result {
            Ok(n) if offset + n as u64 == block_len || n == buf.len() => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Missed::WouldBlock),
            _ => {
                // Gone (evicted under us) or cut short: forget it.
                self.remove(id);
                Err(Missed::Absent)
            }
        }
    }

    /// Reads a whole cached block.
    pub fn read_block(&self, id: &BlockId, block_len: u64) -> Option<Bytes> {
        self.read_block_mode(id, block_len, true).ok()
    }

    pub fn read_block_mode(
        &self,
        id: &BlockId,
        block_len: u64,
        wait: bool,
    ) -> Result<Bytes, Missed> {
        let mut buf = vec![0u8; block_len as usize];
        let n = self.read_mode(id, block_len, 0, &mut buf, wait)?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    }

    /// Marks a block used; returns None if it is not cached (or has the wrong length), else
    /// whether (and to when) its file's mtime should be brought up to date.
    fn note_use(&self, id: &BlockId, block_len: u64) -> Option<Option<SystemTime>> {
        let mut index = self.lock();
        let entry = index.blocks.get_mut(id)?;
        if entry.len != block_len {
            let len = entry.len;
            index.blocks.pop(id);
            index.bytes -= len;
            drop(index);
            let _ = fs::remove_file(self.path(id));
            return None;
        }
        let now = SystemTime::now();
        entry.last_used = now;
        if now.duration_since(entry.touched).unwrap_or_default() >= self.touch_interval {
            entry.touched = now;
            return Some(Some(now));
        }
        Some(None)
    }

    /// Stores a block (whole), then drops least-recently-used blocks past the bound.
    pub fn insert(&self, id: BlockId, data: &[u8]) -> io::Result<Dropped> {
        let len = data.len() as u64;
        if len > self.bound {
            return Ok(Dropped::default());
        }
        // Make room first, so the files on disk stay under the bound while this one is
        // written, not just once the insert is done.
        let mut victims = Vec::new();
        let now = SystemTime::now();
        let mut dropped = {
            let mut index = self.lock();
            self.expire_locked(&mut index, now, &mut victims);
            let expired = victims.clone();
            // A block written again replaces its old file: only the difference is new.
            let replaced = index.blocks.peek(&id).map_or(0, |e| e.len);
            self.evict_locked(&mut index, len.saturating_sub(replaced), &mut victims);
            Dropped {
                evicted: (victims.len() - expired.len()) as u64,
                expired,
            }
        };
        self.unlink(victims);
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let written = File::create(&tmp).and_then(|mut f| f.write_all(data));
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, self.path(&id))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let mut victims = Vec::new();
        {
            let mut index = self.lock();
            index.bytes += len;
            if let Some(old) = index.blocks.put(
                id,
                Entry {
                    len,
                    last_used: now,
                    touched: now,
                },
            ) {
                index.bytes -= old.len;
            }
            // Concurrent inserts may have used the room made above.
            self.evict_locked(&mut index, 0, &mut victims);
            dropped.evicted += victims.len() as u64;
        }
        self.unlink(victims);
        Ok(dropped)
    }

    pub fn contains(&self, id: &BlockId) -> bool {
        self.lock().blocks.contains(id)
    }

    pub fn remove(&self, id: &BlockId) {
        let removed = {
            let mut index = self.lock();
            match index.blocks.pop(id) {
                Some(entry) => {
                    index.bytes -= entry.len;
                    true
                }
                None => false,
            }
        };
        if removed {
            let _ = fs::remove_file(self.path(id));
        }
    }

    /// Drops every block unused for longer than the expiry; returns them.
    pub fn sweep_expired(&self) -> Vec<BlockId> {
        let mut victims = Vec::new();
        self.expire_locked(&mut self.lock(), SystemTime::now(), &mut victims);
        self.unlink(victims.clone());
        victims
    }

    /// Records a use of a block served from elsewhere (the memory tier), so that its
    /// expiry and its place in the eviction order follow its real use.
    pub fn note_hit(&self, id: &BlockId, block_len: u64) {
        if let Some(Some(when)) = self.note_use(id, block_len) {
            touch_file(&self.path(id), when);
        }
    }

    /// Bytes and blocks held.
    pub fn usage(&self) -> (u64, u64) {
        let index = self.lock();
        (index.bytes, index.blocks.len() as u64)
    }

    pub fn bound(&self) -> u64 {
        self.bound
    }

    fn expire_locked(&self, index: &mut Index, now: SystemTime, victims: &mut Vec<BlockId>) -> u64 {
        let mut n = 0;
        while let Some((_, entry)) = index.blocks.peek_lru() {
            if !expired(now, entry.last_used, self.expiry) {
                break;
            }
            if let Some((id, entry)) = index.blocks.pop_lru() {
                index.bytes -= entry.len;
                victims.push(id);
                n += 1;
            }
        }
        n
    }

    /// Pops least-recently-used blocks until `room` more bytes fit under the bound.
    fn evict_locked(&self, index: &mut Index, room: u64, victims: &mut Vec<BlockId>) {
        while index.bytes + room > self.bound {
            match index.blocks.pop_lru() {
                Some((id, entry)) => {
                    index.bytes -= entry.len;
                    victims.push(id);
                }
                None => break,
            }
        }
    }

    fn unlink(&self, victims: Vec<BlockId>) {
        for id in victims {
            let _ = fs::remove_file(self.path(&id));
        }
    }

    fn path(&self, id: &BlockId) -> PathBuf {
        self.dir.join(block_name(id))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // Index updates keep bytes and blocks in step before any call that could panic.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn expired(now: SystemTime, last_used: SystemTime, expiry: Duration) -> bool {
    now.duration_since(last_used).unwrap_or_default() > expiry
}

fn block_name(id: &BlockId) -> String {
    format!("{}.{}", id.object.hex(), id.index)
}

fn parse_name(name: &str) -> Option<BlockId> {
    let (object, index) = name.split_once('.')?;
    Some(BlockId {
        object: ObjectId::from_hex(object)?,
        index: index.parse().ok()?,
    })
}

/// Reads until `buf` is full or the file ends. Without `wait`, fails with `WouldBlock`
/// rather than wait for the device (file systems without RWF_NOWAIT read normally).
fn read_full(file: &File, buf: &mut [u8], offset: u64, wait: bool) -> io::Result<usize> {
    let mut done = 0;
    let mut nowait = !wait;
    while done < buf.len() {
        let at = offset + done as u64;
        let result = if nowait {
            read_nowait(file, &mut buf[done..], at)
        } else {
            file.read_at(&mut buf[done..], at)
        };
        match result {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => nowait = false,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn read_nowait(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over a live, writable buffer of its stated length.
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn touch_file(path: &Path, when: SystemTime) {
    if let Ok(file) = File::options().write(true).open(path) {
        let _ = file.set_modified(when);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str, i: u32) -> BlockId {
        BlockId {
            object: ObjectId::new(key, "etag"),
            index: i,
        }
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn blocks_survive_a_reopen_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (tier, report) = DiskTier::open(dir.path(), 1000, DAY).unwrap();
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
        // The wrong expected length is a miss (and the block is dropped).
        assert_eq!(tier.read(&id("a", 3), 299, 0, &mut buf), None);
        assert!(!tier.contains(&id("a", 3)));
        drop(tier);

        std::fs::write(dir.path().join(".tmp-1-1"), b"partial").unwrap();
        let (tier, report) = DiskTier::open(dir.path(), 1000, DAY).unwrap();
        assert_eq!((report.blocks, report.bytes, report.removed), (2, 600, 1));
        assert_eq!(&tier.read_block(&id("a", 4), 300).unwrap()[..], &[4u8; 300]);
        // A smaller bound at the next start drops the oldest blocks.
        drop(tier);
        let (tier, report) = DiskTier::open(dir.path(), 400, DAY).unwrap();
        assert_eq!((report.blocks, report.removed), (1, 1));
        assert!(tier.contains(&id("a", 4)));
    }

    #[test]
    fn unused_blocks_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (tier, _) = DiskTier::open(dir.path(), 1 << 20, DAY).unwrap();
        tier.insert(id("old", 0), b"old").unwrap();
        tier.insert(id("new", 0), b"new").unwrap();
        // Age the first block's file by two days, as if it had not been used since.
        let old = SystemTime::now() - 2 * DAY;
        touch_file(&dir.path().join(block_name(&id("old", 0))), old);
        drop(tier);
        let (tier, report) = DiskTier::open(dir.path(), 1 << 20, DAY).unwrap();
        assert_eq!((report.blocks, report.expired), (1, 1));
        assert!(tier.contains(&id("new", 0)));

        // In a running tier, a sweep drops what has gone unused too long.
        let dir = tempfile::tempdir().unwrap();
        let (tier, _) = DiskTier::open(dir.path(), 1 << 20, Duration::from_millis(50)).unwrap();
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
        let (tier, _) = DiskTier::open(dir.path(), 1 << 20, DAY).unwrap();
        tier.insert(id("cold", 0), &[9u8; 8192]).unwrap();
        // Write the block out and drop its pages, as memory pressure would.
        let file = File::open(dir.path().join(block_name(&id("cold", 0)))).unwrap();
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
        let (tier, _) = DiskTier::open(dir.path(), 1 << 20, DAY).unwrap();
        tier.insert(id("a", 0), b"abc").unwrap();
        std::fs::remove_file(dir.path().join(block_name(&id("a", 0)))).unwrap();
        assert_eq!(tier.read_block(&id("a", 0), 3), None);
        assert_eq!(tier.usage(), (0, 0));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Insert(u32, usize),
            Read(u32),
            Reopen,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u32..12, 1usize..400).prop_map(|(i, len)| Op::Insert(i, len)),
                4 => (0u32..12).prop_map(Op::Read),
                1 => Just(Op::Reopen),
            ]
        }

        const BOUND: u64 = 1000;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Against a model LRU list: the same blocks are present (until a reopen,
            /// which orders by mtime, so only coarsely), a present block always has the
            /// bytes last written for it, and the bound always holds, on disk too.
            #[test]
            fn disk_tier_matches_an_lru_model(ops in proptest::collection::vec(op(), 1..60)) {
                let dir = tempfile::tempdir().unwrap();
                let (mut tier, _) = DiskTier::open(dir.path(), BOUND, DAY).unwrap();
                // Most recently used last: (index, len, fill byte).
                let mut lru: Vec<(u32, usize, u8)> = Vec::new();
                let mut exact = true;
                let mut version = 0u8;
                for op in ops {
                    match op {
                        Op::Insert(i, len) => {
                            version = version.wrapping_add(1);
                            tier.insert(id("m", i), &vec![version; len]).unwrap();
                            lru.retain(|e| e.0 != i);
                            lru.push((i, len, version));
                            while lru.iter().map(|e| e.1 as u64).sum::<u64>() > BOUND {
                                lru.remove(0);
                            }
                        }
                        Op::Read(i) => {
                            let want = lru.iter().position(|e| e.0 == i);
                            let len = want.map_or(1, |p| lru[p].1);
                            let got = tier.read_block(&id("m", i), len as u64);
                            if let Some(data) = &got {
                                let expected = lru.iter().find(|e| e.0 == i);
                                prop_assert!(expected.is_some(), "block {} should be gone", i);
                                let (_, len, fill) = expected.unwrap();
                                prop_assert_eq!(data.len(), *len);
                                prop_assert!(data.iter().all(|b| b == fill));
                            }
                            if exact {
                                prop_assert_eq!(got.is_some(), want.is_some(), "block {}", i);
                            }
                            if let (Some(p), true) = (want, got.is_some()) {
                                let e = lru.remove(p);
                                lru.push(e);
                            } else if let Some(p) = want {
                                // Gone after a reopen: the model forgets it too.
                                lru.remove(p);
                            }
                        }
                        Op::Reopen => {
                            drop(tier);
                            tier = DiskTier::open(dir.path(), BOUND, DAY).unwrap().0;
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
}
