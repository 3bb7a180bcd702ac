//! Disk tier: one file per cached block under CACHE_DIR/data, named after the object
//! version, the block index and the block's checksums, so a restart finds its blocks again
//! by name alone, and knows what their bytes must be.
//!
//! A block file is written to a temporary name and renamed into place: a block file that
//! exists was written whole (a crash leaves at most a temporary file, removed at the next
//! start). The file holds only the block's bytes, exactly the object's range (so it could
//! be handed to the kernel as is); its crc32c checksums, one per `CHECKSUM_CHUNK` bytes,
//! are in its name and in the index. Every read checks the file's length and the checksum
//! of each chunk it serves: a damaged block (bytes changed, truncated or extended) is never
//! served; it is dropped, counted (`cache_corrupt_blocks`), logged, and read from S3.
//!
//! The in-memory index keeps the least-recently-used order, the byte total against the
//! bound, and last-use times; last use is written back to the file's mtime at most once per
//! `touch_interval`, so the expiry survives restarts without a write per hit.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lru::LruCache;
use tracing::warn;

use super::{BlockId, ObjectId, BLOCK_SIZE};
use crate::metrics::Metrics;

const TMP_PREFIX: &str = ".tmp-";

/// A block is checksummed in chunks of this size, one crc32c each, so that a 4 KiB read of
/// a 256 KiB block reads and checks 16 KiB (about 2 us here) rather than the whole block
/// (about 20 us, four times the cost of the hit itself).
pub const CHECKSUM_CHUNK: u64 = 16 << 10;

// A block's name (32 hex digits, a dot, up to 10 digits of index, a dot, 8 hex digits per
// chunk) must fit in a file name (255 bytes).
const _: () = assert!(32 + 1 + 10 + 1 + 8 * BLOCK_SIZE.div_ceil(CHECKSUM_CHUNK) <= 255);

/// The crc32c of each `CHECKSUM_CHUNK` of a block, in order. Shared, so a read takes it out
/// of the index without copying.
type Checksums = Arc<[u32]>;

/// The checksums of a block's bytes.
pub fn checksums(data: &[u8]) -> Checksums {
    data.chunks(CHECKSUM_CHUNK as usize)
        .map(crc32c::crc32c)
        .collect()
}

struct Entry {
    len: u64,
    sums: Checksums,
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
    /// The block is not cached (or was, damaged, and has just been dropped).
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
    /// Leftovers removed: temporary files, foreign names (old-format block files without
    /// checksums too), blocks past the bound.
    pub removed: u64,
    /// Block files whose length does not match their checksums (truncated or extended).
    pub corrupt: u64,
}

/// Blocks dropped by one insert.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub evicted: u64,
    /// Blocks that went unused for the expiry (the memory tier must drop them too).
    pub expired: Vec<BlockId>,
}

/// How a block file was found damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// The file's length is not the block's.
    Length { found: u64, expected: u64 },
    /// A chunk's bytes do not match its checksum.
    Checksum { chunk: u64 },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Length { found, expected } => {
                write!(f, "{found} bytes long, expected {expected}")
            }
            Damage::Checksum { chunk } => write!(
                f,
                "checksum mismatch at bytes {}..{}",
                chunk * CHECKSUM_CHUNK,
                (chunk + 1) * CHECKSUM_CHUNK
            ),
        }
    }
}

/// Why reading a block file gave no bytes.
enum Fault {
    WouldBlock,
    /// Removed or unreadable: a plain miss.
    Gone,
    Damaged(Damage),
}

pub struct DiskTier {
    dir: PathBuf,
    /// Protects the index; held only for index updates, never across file I/O.
    index: Mutex<Index>,
    bound: u64,
    expiry: Duration,
    touch_interval: Duration,
    next_tmp: AtomicU64,
    metrics: Arc<Metrics>,
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `dir` and indexes what an earlier run left,
    /// oldest use first, dropping expired blocks, files without checksums in their names,
    /// files whose length does not match their checksums, and anything past the bound.
    pub fn open(
        dir: &Path,
        bound: u64,
        expiry: Duration,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Self, ScanReport)> {
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
                (Some((id, sums)), Ok(meta)) if meta.is_file() => {
                    let mtime = meta.modified().unwrap_or(now);
                    let len = meta.len();
                    if len.div_ceil(CHECKSUM_CHUNK) != sums.len() as u64 {
                        // Cut short or grown past its last chunk: whatever it holds now
                        // is not what was written.
                        let _ = fs::remove_file(entry.path());
                        report.corrupt += 1;
                        warn!(
                            file = %entry.path().display(),
                            "damaged cache block dropped: {len} bytes long, its name has {} \
                             checksums of {CHECKSUM_CHUNK} bytes",
                            sums.len()
                        );
                    } else if expired(now, mtime, expiry) {
                        let _ = fs::remove_file(entry.path());
                        report.expired += 1;
                    } else {
                        found.push((mtime, id, sums, len));
                    }
                }
                _ => {
                    let _ = fs::remove_file(entry.path());
                    report.removed += 1;
                }
            }
        }
        found.sort_by_key(|(mtime, ..)| *mtime);
        metrics
            .cache_corrupt_blocks
            .fetch_add(report.corrupt, Ordering::Relaxed);
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
            metrics,
        };
        let mut victims = Vec::new();
        {
            let mut index = tier.lock();
            for (mtime, id, sums, len) in found {
                index.bytes += len;
                let entry = Entry {
                    len,
                    sums,
                    last_used: mtime,
                    touched: mtime,
                };
                // Two files for one block (a crash between writing a new one and
                // unlinking the old): the newer wins.
                if let Some(old) = index.blocks.put(id, entry) {
                    index.bytes -= old.len;
                    victims.push((id, old.sums));
                }
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
    /// must have (known from the object's size); a file of another length is damaged.
    /// None is a miss.
    pub fn read(&self, id: &BlockId, block_len: u64, offset: u64, buf: &mut [u8]) -> Option<usize> {
        self.read_mode(id, block_len, offset, buf, true).ok()
    }

    /// Like `read`, but with `wait` false it does not wait for the device: a block whose
    /// pages are not in the page cache is `Missed::WouldBlock` (RWF_NOWAIT), so a caller
    /// that must not stall (the FUSE thread) can hand the read to a thread that may.
    /// Either way the bytes returned have been checked against the block's checksums; a
    /// damaged block is dropped and reported `Missed::Absent`.
    pub fn read_mode(
        &self,
        id: &BlockId,
        block_len: u64,
        offset: u64,
        buf: &mut [u8],
        wait: bool,
    ) -> Result<usize, Missed> {
        let (sums, touch) = self.note_use(id, block_len).ok_or(Missed::Absent)?;
        let path = self.path(id, &sums);
        if let Some(when) = touch {
            touch_file(&path, when);
        }
        match read_verified(&path, &sums, block_len, offset, buf, wait) {
            Ok(n) => Ok(n),
            Err(Fault::WouldBlock) => Err(Missed::WouldBlock),
            Err(Fault::Gone) => {
                // Evicted or removed under us: forget it.
                self.drop_if_same(id, &sums);
                Err(Missed::Absent)
            }
            Err(Fault::Damaged(damage)) => {
                if self.drop_if_same(id, &sums) {
                    self.report_damage(&path, damage);
                }
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

    /// Marks a block used; returns None if it is not cached, else its checksums and
    /// whether (and to when) its file's mtime should be brought up to date. A block whose
    /// file has another length than `block_len` (it was cut short or extended while the
    /// daemon was down) is dropped as damaged.
    fn note_use(&self, id: &BlockId, block_len: u64) -> Option<(Checksums, Option<SystemTime>)> {
        let mut index = self.lock();
        let entry = index.blocks.get_mut(id)?;
        if entry.len != block_len {
            let found = entry.len;
            let sums = entry.sums.clone();
            index.blocks.pop(id);
            index.bytes -= found;
            drop(index);
            let path = self.path(id, &sums);
            let _ = fs::remove_file(&path);
            self.report_damage(
                &path,
                Damage::Length {
                    found,
                    expected: block_len,
                },
            );
            return None;
        }
        let now = SystemTime::now();
        entry.last_used = now;
        let touch = if now.duration_since(entry.touched).unwrap_or_default() >= self.touch_interval
        {
            entry.touched = now;
            Some(now)
        } else {
            None
        };
        Some((entry.sums.clone(), touch))
    }

    /// Stores a block (whole), then drops least-recently-used blocks past the bound.
    pub fn insert(&self, id: BlockId, data: &[u8]) -> io::Result<Dropped> {
        let len = data.len() as u64;
        if len > self.bound {
            return Ok(Dropped::default());
        }
        let sums = checksums(data);
        // Make room first, so the files on disk stay under the bound while this one is
        // written, not just once the insert is done.
        let mut victims = Vec::new();
        let now = SystemTime::now();
        let mut dropped = {
            let mut index = self.lock();
            self.expire_locked(&mut index, now, &mut victims);
            let expired: Vec<BlockId> = victims.iter().map(|(id, _)| *id).collect();
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
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, self.path(&id, &sums))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let mut victims = Vec::new();
        {
            let mut index = self.lock();
            index.bytes += len;
            let entry = Entry {
                len,
                sums: sums.clone(),
                last_used: now,
                touched: now,
            };
            if let Some(old) = index.blocks.put(id, entry) {
                index.bytes -= old.len;
                // Other bytes, so another name: the old file must go.
                if old.sums != sums {
                    victims.push((id, old.sums));
                }
            }
            // Concurrent inserts may have used the room made above.
            let replaced = victims.len();
            self.evict_locked(&mut index, 0, &mut victims);
            dropped.evicted += (victims.len() - replaced) as u64;
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
            index.blocks.pop(id).map(|entry| {
                index.bytes -= entry.len;
                entry.sums
            })
        };
        if let Some(sums) = removed {
            let _ = fs::remove_file(self.path(id, &sums));
        }
    }

    /// Drops a block if the index still holds the file named by `sums` (not a newer copy
    /// written meanwhile); returns whether it did.
    fn drop_if_same(&self, id: &BlockId, sums: &Checksums) -> bool {
        {
            let mut index = self.lock();
            match index.blocks.peek(id) {
                Some(entry) if entry.sums == *sums => {
                    let len = entry.len;
                    index.blocks.pop(id);
                    index.bytes -= len;
                }
                _ => return false,
            }
        }
        let _ = fs::remove_file(self.path(id, sums));
        true
    }

    /// Counts and logs a damaged block that has just been dropped.
    fn report_damage(&self, path: &Path, damage: Damage) {
        self.metrics
            .cache_corrupt_blocks
            .fetch_add(1, Ordering::Relaxed);
        warn!(
            file = %path.display(),
            "damaged cache block dropped ({damage}); its data is read from S3 again"
        );
    }

    /// Drops every block unused for longer than the expiry; returns them.
    pub fn sweep_expired(&self) -> Vec<BlockId> {
        let mut victims = Vec::new();
        self.expire_locked(&mut self.lock(), SystemTime::now(), &mut victims);
        let ids = victims.iter().map(|(id, _)| *id).collect();
        self.unlink(victims);
        ids
    }

    /// Records a use of a block served from elsewhere (the memory tier), so that its
    /// expiry and its place in the eviction order follow its real use.
    pub fn note_hit(&self, id: &BlockId, block_len: u64) {
        if let Some((sums, Some(when))) = self.note_use(id, block_len) {
            touch_file(&self.path(id, &sums), when);
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

    fn expire_locked(
        &self,
        index: &mut Index,
        now: SystemTime,
        victims: &mut Vec<(BlockId, Checksums)>,
    ) {
        while let Some((_, entry)) = index.blocks.peek_lru() {
            if !expired(now, entry.last_used, self.expiry) {
                break;
            }
            if let Some((id, entry)) = index.blocks.pop_lru() {
                index.bytes -= entry.len;
                victims.push((id, entry.sums));
            }
        }
    }

    /// Pops least-recently-used blocks until `room` more bytes fit under the bound.
    fn evict_locked(&self, index: &mut Index, room: u64, victims: &mut Vec<(BlockId, Checksums)>) {
        while index.bytes + room > self.bound {
            match index.blocks.pop_lru() {
                Some((id, entry)) => {
                    index.bytes -= entry.len;
                    victims.push((id, entry.sums));
                }
                None => break,
            }
        }
    }

    fn unlink(&self, victims: Vec<(BlockId, Checksums)>) {
        for (id, sums) in victims {
            let _ = fs::remove_file(self.path(&id, &sums));
        }
    }

    fn path(&self, id: &BlockId, sums: &[u32]) -> PathBuf {
        self.dir.join(block_name(id, sums))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // Index updates keep bytes and blocks in step before any call that could panic.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn expired(now: SystemTime, last_used: SystemTime, expiry: Duration) -> bool {
    now.duration_since(last_used).unwrap_or_default() > expiry
}

/// `<object>.<index>.<checksums>`: 32 hex digits, the block index in decimal, then 8 hex
/// digits per chunk.
fn block_name(id: &BlockId, sums: &[u32]) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(44 + 8 * sums.len());
    let _ = write!(name, "{}.{}.", id.object.hex(), id.index);
    for sum in sums {
        let _ = write!(name, "{sum:08x}");
    }
    name
}

/// The block and checksums a file name stands for; None for anything that is not exactly
/// a name `block_name` makes (temporary files, block files of older versions without
/// checksums, names with leading zeros or capitals).
fn parse_name(name: &str) -> Option<(BlockId, Checksums)> {
    let mut parts = name.splitn(3, '.');
    let object = ObjectId::from_hex(parts.next()?)?;
    let index = parts.next()?.parse().ok()?;
    let hex = parts.next()?;
    if hex.len() % 8 != 0 || !hex.is_ascii() {
        return None;
    }
    let sums = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[8 * i..8 * i + 8], 16).ok())
        .collect::<Option<Checksums>>()?;
    let id = BlockId { object, index };
    (block_name(&id, &sums) == name).then_some((id, sums))
}

/// Reads [offset, offset + buf.len()) of a block file (clipped to the block) into `buf`,
/// after checking the file's length and the checksums of the chunks that range touches.
fn read_verified(
    path: &Path,
    sums: &[u32],
    block_len: u64,
    offset: u64,
    buf: &mut [u8],
    wait: bool,
) -> Result<usize, Fault> {
    if offset >= block_len || buf.is_empty() {
        return Ok(0);
    }
    let want = buf.len().min((block_len - offset) as usize);
    let file = File::open(path).map_err(|_| Fault::Gone)?;
    let found = file.metadata().map_err(|_| Fault::Gone)?.len();
    if found != block_len {
        return Err(Fault::Damaged(Damage::Length {
            found,
            expected: block_len,
        }));
    }
    // The whole chunks covering the range.
    let first = offset / CHECKSUM_CHUNK;
    let start = first * CHECKSUM_CHUNK;
    let stop = (offset + want as u64)
        .next_multiple_of(CHECKSUM_CHUNK)
        .min(block_len);
    let span = (stop - start) as usize;
    let head = (offset - start) as usize;
    let mut scratch = Vec::new();
    let target: &mut [u8] = if head == 0 && span == want {
        // Chunk-aligned (a whole block, say): straight into the caller's buffer.
        &mut buf[..want]
    } else {
        scratch.resize(span, 0);
        &mut scratch
    };
    let n = match read_full(&file, target, start, wait) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Fault::WouldBlock),
        Err(_) => return Err(Fault::Gone),
    };
    if n < span {
        // Cut short since the length check.
        return Err(Fault::Damaged(Damage::Length {
            found: start + n as u64,
            expected: block_len,
        }));
    }
    for (i, chunk) in target.chunks(CHECKSUM_CHUNK as usize).enumerate() {
        let index = first + i as u64;
        if sums.get(index as usize) != Some(&crc32c::crc32c(chunk)) {
            return Err(Fault::Damaged(Damage::Checksum { chunk: index }));
        }
    }
    if !scratch.is_empty() {
        buf[..want].copy_from_slice(&scratch[head..head + want]);
    }
    Ok(want)
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
pub(crate) mod tests {
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
}
