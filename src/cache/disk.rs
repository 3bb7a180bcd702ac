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
    /// Last uses to persist in block files' mtimes, put off by callers that must not
    /// wait for the disk (the FUSE thread answering inline); written by the next caller
    /// that may (a blocking read, a block insert, the expiry sweep).
    deferred_touches: Mutex<Vec<(PathBuf, SystemTime)>>,
}

/// Deferred touches kept at most; past it a use is not persisted (only its expiry after
/// a restart is affected: the block may go a little early).
const MAX_DEFERRED_TOUCHES: usize = 4096;

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
            deferred_touches: Mutex::new(Vec::new()),
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
            self.touch_or_defer(path.clone(), when, wait);
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

    /// A cached block's file, opened read-only, after checking its whole length and every
    /// checksum (it is about to be handed to the kernel, which reads it unchecked). None:
    /// not cached, or damaged (then dropped and reported, as on any read).
    pub fn open_verified(&self, id: &BlockId, block_len: u64) -> Option<(File, PathBuf)> {
        let mut buf = vec![0u8; block_len as usize];
        let n = self.read_mode(id, block_len, 0, &mut buf, true).ok()?;
        if n as u64 != block_len {
            return None;
        }
        let (sums, _) = self.note_use(id, block_len)?;
        let path = self.path(id, &sums);
        let file = File::open(&path).ok()?;
        Some((file, path))
    }

    /// Moves a cached block's file to `dest` (a writer takes the bytes the kernel is
    /// reading as its staged file) and forgets the block.
    pub fn adopt(&self, id: &BlockId, block_len: u64, dest: &Path) -> io::Result<()> {
        let (sums, _) = self
            .note_use(id, block_len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "block not cached"))?;
        fs::rename(self.path(id, &sums), dest)?;
        let mut index = self.lock();
        if let Some(entry) = index.blocks.pop(id) {
            index.bytes -= entry.len;
        }
        Ok(())
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
        self.flush_touches();
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
        self.flush_touches();
        let mut victims = Vec::new();
        self.expire_locked(&mut self.lock(), SystemTime::now(), &mut victims);
        let ids = victims.iter().map(|(id, _)| *id).collect();
        self.unlink(victims);
        ids
    }

    /// Records a use of a block served from elsewhere (the memory tier), so that its
    /// expiry and its place in the eviction order follow its real use.
    /// Memory hits are answered inline, so the file's mtime is written later.
    pub fn note_hit(&self, id: &BlockId, block_len: u64) {
        if let Some((sums, Some(when))) = self.note_use(id, block_len) {
            self.touch_or_defer(self.path(id, &sums), when, false);
        }
    }

    /// Persists a block's last use in its mtime now (`wait`), or later.
    fn touch_or_defer(&self, path: PathBuf, when: SystemTime, wait: bool) {
        if wait {
            touch_file(&path, when);
            self.flush_touches();
        } else {
            let mut deferred = self
                .deferred_touches
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if deferred.len() < MAX_DEFERRED_TOUCHES {
                deferred.push((path, when));
            }
        }
    }

    /// Writes the deferred touches (from a thread that may wait for the disk).
    pub fn flush_touches(&self) {
        let deferred = std::mem::take(
            &mut *self
                .deferred_touches
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (path, when) in deferred {
            touch_file(&path, when);
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
#[path = "disk_tests.rs"]
pub(crate) mod tests;
