//! Hot-data cache: object data in fixed-size blocks, keyed by object version (key + ETag),
//! in a memory tier (the hottest blocks) over a disk tier under CACHE_DIR/data bounded by
//! `--cache-size` (one sparse file per object version, so a fully cached object can be
//! handed to the kernel as a `CacheBacking`).
//!
//! Only data that is in S3 lives here (unexported bytes stay in the staging area, which
//! eviction never touches), so dropping a block never loses anything. A new version of an
//! object has a new ETag and so new block ids: a changed object can never be served from
//! blocks of the old one.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::metrics::Metrics;

pub mod disk;
pub mod memory;

pub use disk::{Missed, ScanReport};

/// Cache granularity: large enough that a file under the eager-import threshold is one
/// block and a 1 GiB file is 4,096 index entries; small enough that a random 4 KiB read
/// of a cold file fetches little.
pub const BLOCK_SIZE: u64 = 256 << 10;

/// Disk-tier blocks up to this size are copied into the memory tier on a hit (a small
/// file read again is likely read whole again); larger blocks are read in place.
const PROMOTE_MAX: u64 = 64 << 10;

/// One version of one object: a hash of its key and ETag, 128 bits so that two versions
/// never share blocks in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 16]);

impl ObjectId {
    pub fn new(key: &str, etag: &str) -> Self {
        let mut hash = Sha256::new();
        hash.update(key.as_bytes());
        hash.update([0]);
        hash.update(etag.as_bytes());
        let digest = hash.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ObjectId(id)
    }

    pub fn hex(&self) -> String {
        // Built by hand: this names the cache file on every open of a cached file.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(32);
        for b in self.0 {
            hex.push(char::from(DIGITS[usize::from(b >> 4)]));
            hex.push(char::from(DIGITS[usize::from(b & 15)]));
        }
        hex
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 || !hex.is_ascii() {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ObjectId(id))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId {
    pub object: ObjectId,
    pub index: u32,
}

/// The byte range of block `index` of an object of `size` bytes.
pub fn block_range(index: u32, size: u64) -> Range<u64> {
    let start = u64::from(index) * BLOCK_SIZE;
    start.min(size)..(start + BLOCK_SIZE).min(size)
}

/// The blocks covering [offset, end).
pub fn blocks_of(offset: u64, end: u64) -> Range<u32> {
    if end <= offset {
        return 0..0;
    }
    (offset / BLOCK_SIZE) as u32..end.div_ceil(BLOCK_SIZE) as u32
}

#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub dir: PathBuf,
    /// Bound on the disk tier.
    pub disk_bytes: u64,
    /// Bound on the memory tier.
    pub memory_bytes: u64,
    /// Blocks unused this long are dropped.
    pub expiry: Duration,
}

/// A cached object's bytes as one local file, for the kernel to read directly
/// (FUSE passthrough). Holding it pins the object: its file's bytes are never
/// changed while any CacheBacking of it lives (eviction unlinks instead).
pub struct CacheBacking {
    /// Opened read-only.
    file: std::fs::File,
    path: PathBuf,
    _pin: disk::Pin,
}

impl CacheBacking {
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Where the file was when it was opened (it may have been unlinked since: the open
    /// file stays valid).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for CacheBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBacking")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Bytes of fetched blocks waiting for the disk writer, at most. Past it a block is kept
/// in the memory tier only (the cache is best effort), so a disk slower than the network
/// cannot make the daemon hold more and more of what it fetched.
const DISK_QUEUE_MAX: u64 = 64 << 20;

/// The disk writer's niceness. Its work can wait: a listing's eager import stores
/// thousands of small objects, each a new data file and checksum log, and creating files
/// is CPU work in the kernel (ext4 without a journal scans for a free inode) that would
/// otherwise take the CPU the FUSE requests and S3 requests of that very listing need.
const DISK_WRITER_NICE: libc::c_int = 10;

/// The share of the cache's file system the disk tier leaves free (1/20, at most 1 GiB),
/// for the mount's writes.
fn leaves_reserve(total: u64, available: u64, len: u64) -> bool {
    let reserve = (total / 20).min(1 << 30);
    available >= len.saturating_add(reserve)
}

/// Blocks fetched from S3 on their way to the disk tier, written in arrival order by one
/// thread that lives while there is work: one writer, because threads creating files in
/// one directory at once spin on its lock.
#[derive(Default)]
struct WriteQueue {
    blocks: std::collections::VecDeque<(BlockId, Bytes)>,
    bytes: u64,
    /// A writer thread is running (or about to): it takes every block queued.
    writing: bool,
}

pub struct DataCache {
    memory: Mutex<memory::MemoryTier>,
    disk: disk::DiskTier,
    metrics: Arc<Metrics>,
    writes: Mutex<WriteQueue>,
    /// Signalled by the writer after each block, for fills waiting for room.
    written: tokio::sync::Notify,
}

impl DataCache {
    pub fn open(options: &CacheOptions, metrics: Arc<Metrics>) -> io::Result<(Self, ScanReport)> {
        let (disk, report) = disk::DiskTier::open(
            &options.dir,
            options.disk_bytes,
            options.expiry,
            metrics.clone(),
        )?;
        metrics
            .cache_expired
            .fetch_add(report.expired, Ordering::Relaxed);
        let cache = DataCache {
            memory: Mutex::new(memory::MemoryTier::new(options.memory_bytes)),
            disk,
            metrics,
            writes: Mutex::default(),
            written: tokio::sync::Notify::new(),
        };
        Ok((cache, report))
    }

    /// Serves [offset, offset+len) of an object version of `size` bytes if every block it
    /// touches is cached; None otherwise (the caller fetches what is missing).
    pub fn read(&self, object: ObjectId, size: u64, offset: u64, len: u32) -> Option<Bytes> {
        self.read_mode(object, size, offset, len, true).ok()
    }

    /// Like `read`, but never waits for the disk: a cached block whose pages are not in
    /// memory is `Missed::WouldBlock`, for the caller to read from a thread that may wait.
    pub fn read_nowait(
        &self,
        object: ObjectId,
        size: u64,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, Missed> {
        self.read_mode(object, size, offset, len, false)
    }

    fn read_mode(
        &self,
        object: ObjectId,
        size: u64,
        offset: u64,
        len: u32,
        wait: bool,
    ) -> Result<Bytes, Missed> {
        let end = size.min(offset + u64::from(len));
        if offset >= end {
            return Ok(Bytes::new());
        }
        let blocks = blocks_of(offset, end);
        if blocks.len() == 1 {
            return self.read_in_block(object, blocks.start, size, offset, end, wait);
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for index in blocks {
            let range = block_range(index, size);
            let part = self.read_in_block(
                object,
                index,
                size,
                offset.max(range.start),
                end.min(range.end),
                wait,
            )?;
            out.extend_from_slice(&part);
        }
        Ok(out.freeze())
    }

    /// [from, to) within one block.
    fn read_in_block(
        &self,
        object: ObjectId,
        index: u32,
        size: u64,
        from: u64,
        to: u64,
        wait: bool,
    ) -> Result<Bytes, Missed> {
        let id = BlockId { object, index };
        let range = block_range(index, size);
        let (start, end) = ((from - range.start) as usize, (to - range.start) as usize);
        if let Some(block) = self.memory_get(&id) {
            if block.len() as u64 == range.end - range.start {
                self.count_hit(&self.metrics.cache_hits_memory, end - start);
                // Keep the disk tier's use time and order true to this use.
                self.disk.note_hit(&id, block.len() as u64);
                return Ok(block.slice(start..end));
            }
            self.memory_lock().remove(&id);
        }
        let block_len = range.end - range.start;
        if block_len <= PROMOTE_MAX {
            let block = self.disk.read_block_mode(&id, block_len, wait)?;
            self.count_hit(&self.metrics.cache_hits_disk, end - start);
            let part = block.slice(start..end);
            self.memory_insert(id, block);
            return Ok(part);
        }
        let mut buf = vec![0u8; end - start];
        let n = self
            .disk
            .read_mode(&id, block_len, start as u64, &mut buf, wait)?;
        buf.truncate(n);
        self.count_hit(&self.metrics.cache_hits_disk, n);
        Ok(Bytes::from(buf))
    }

    /// A whole block, if cached.
    pub fn get_block(&self, id: BlockId, size: u64) -> Option<Bytes> {
        self.get_block_mode(id, size, true).ok()
    }

    /// A whole block, if cached, waiting for the disk only with `wait`.
    pub fn get_block_mode(&self, id: BlockId, size: u64, wait: bool) -> Result<Bytes, Missed> {
        let range = block_range(id.index, size);
        self.read_in_block(id.object, id.index, size, range.start, range.end, wait)
    }

    /// Adds a block fetched from S3: in memory at once, on disk in the background (a disk
    /// write must not hold up the reader that asked for it). Past DISK_QUEUE_MAX waiting,
    /// the block is kept in memory only. Outside a tokio runtime (tools, unit tests) the
    /// disk write is done at once.
    pub fn insert(self: &Arc<Self>, id: BlockId, data: Bytes) {
        self.memory_insert(id, data.clone());
        if tokio::runtime::Handle::try_current().is_err() {
            return self.insert_on_disk(id, &data);
        }
        if let Err((id, _)) = self.queue_write(id, data) {
            debug!(
                object = id.object.hex(),
                block = id.index,
                "disk cache writes behind; block kept in memory only"
            );
        }
    }

    /// Like `insert`, but waits for room in the disk queue instead of keeping the block
    /// in memory only: block fills use it, so a disk slower than the network slows the
    /// fills (and the readers waiting on them) rather than leaving holes in what a reader
    /// of a whole file expects to find cached.
    pub async fn insert_waiting(self: &Arc<Self>, id: BlockId, data: Bytes) {
        self.memory_insert(id, data.clone());
        let mut block = (id, data);
        loop {
            let room = self.written.notified();
            match self.queue_write(block.0, block.1) {
                Ok(()) => return,
                Err(back) => block = back,
            }
            room.await;
        }
    }

    /// Queues a block for the disk writer (starting it if idle); gives the block back when
    /// the queue is full.
    fn queue_write(self: &Arc<Self>, id: BlockId, data: Bytes) -> Result<(), (BlockId, Bytes)> {
        let len = data.len() as u64;
        let start = {
            let mut writes = self.writes_lock();
            // An empty queue takes any block, so one larger than the bound still goes.
            if writes.bytes > 0 && writes.bytes + len > DISK_QUEUE_MAX {
                return Err((id, data));
            }
            writes.blocks.push_back((id, data));
            writes.bytes += len;
            !std::mem::replace(&mut writes.writing, true)
        };
        if start {
            self.start_writer();
        }
        Ok(())
    }

    /// Starts the thread that writes queued blocks to disk until none is left.
    fn start_writer(self: &Arc<Self>) {
        let cache = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("s3files-cache-writer".into())
            .spawn(move || {
                // SAFETY: setpriority on this thread's own id; no memory is passed.
                unsafe {
                    libc::setpriority(
                        libc::PRIO_PROCESS,
                        libc::gettid() as libc::id_t,
                        DISK_WRITER_NICE,
                    );
                }
                cache.write_queued();
            });
        if let Err(e) = started {
            // Best effort, as for a full disk: the queued blocks stay in memory only.
            let mut writes = self.writes_lock();
            *writes = WriteQueue::default();
            drop(writes);
            self.written.notify_waiters();
            warn!(error = %e, "cannot start the disk cache writer; blocks kept in memory only");
        }
    }

    /// The writer thread's work: every queued block, in order, until the queue is empty.
    fn write_queued(&self) {
        loop {
            let (id, data) = {
                let mut writes = self.writes_lock();
                match writes.blocks.pop_front() {
                    Some(block) => block,
                    None => {
                        writes.writing = false;
                        return;
                    }
                }
            };
            self.insert_on_disk(id, &data);
            self.writes_lock().bytes -= data.len() as u64;
            self.written.notify_waiters();
        }
    }

    fn writes_lock(&self) -> std::sync::MutexGuard<'_, WriteQueue> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert_on_disk(&self, id: BlockId, data: &[u8]) {
        let written = if self.room_on_disk(data.len() as u64) {
            self.disk.insert(id, data)
        } else {
            Err(io::Error::other(
                "its file system is nearly full (the last 1/20, at most 1 GiB, is left for writes to the mount)",
            ))
        };
        match written {
            Ok(dropped) => {
                let m = &self.metrics;
                m.cache_evictions
                    .fetch_add(dropped.evicted, Ordering::Relaxed);
                self.forget_expired(&dropped.expired);
            }
            Err(e) => {
                // Caching is best effort: the data is in S3 and in memory; a full disk
                // only means this block is not kept.
                if self
                    .metrics
                    .cache_write_errors
                    .fetch_add(1, Ordering::Relaxed)
                    == 0
                {
                    warn!(error = %e, "cannot write to the disk cache; data is served from S3");
                }
            }
        }
    }

    /// Whether writing `len` more bytes leaves the cache's file system its reserve: the
    /// cache is best effort and must not take the space that writes to the mount (staged
    /// bytes, the journal) need, on the same disk, once the disk fills up.
    fn room_on_disk(&self, len: u64) -> bool {
        let Ok(dir) = std::ffi::CString::new(self.disk.dir().as_os_str().as_encoded_bytes()) else {
            return false;
        };
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a NUL-terminated path and a buffer statvfs fills on success.
        if unsafe { libc::statvfs(dir.as_ptr(), st.as_mut_ptr()) } != 0 {
            // Unknown: the write itself reports a full disk.
            return true;
        }
        // SAFETY: statvfs returned 0, so it filled the buffer.
        let st = unsafe { st.assume_init() };
        let unit = st.f_frsize;
        leaves_reserve(st.f_blocks * unit, st.f_bavail * unit, len)
    }

    /// Adds a whole object version, split into its blocks.
    pub fn insert_object(self: &Arc<Self>, object: ObjectId, data: Bytes) {
        let size = data.len() as u64;
        for index in blocks_of(0, size) {
            let range = block_range(index, size);
            let block = data.slice(range.start as usize..range.end as usize);
            self.insert(BlockId { object, index }, block);
        }
    }

    /// Whether a block is cached in either tier. A question, not a use: it does not
    /// move the block in either tier's eviction order.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.memory_lock().contains(id) || self.disk.contains(id)
    }

    /// Moves the file `backing` returned for the object to `dest` and forgets the object:
    /// a writer adopts the bytes the kernel reads as its own staged file.
    pub fn adopt(&self, object: ObjectId, size: u64, dest: &Path) -> io::Result<()> {
        let mut memory = self.memory_lock();
        for index in blocks_of(0, size) {
            memory.remove(&BlockId { object, index });
        }
        drop(memory);
        self.disk.adopt(object, size, dest)
    }

    /// How many bytes of an object version of `size` bytes are cached.
    pub fn cached_bytes(&self, object: ObjectId, size: u64) -> u64 {
        blocks_of(0, size)
            .filter(|&index| self.contains(&BlockId { object, index }))
            .map(|index| {
                let range = block_range(index, size);
                range.end - range.start
            })
            .sum()
    }

    /// Drops every block of an object version (it changed or was deleted in S3) and
    /// removes its files (a pinned object's open file stays intact for its holders).
    pub fn forget_object(&self, object: ObjectId, size: u64) {
        let mut memory = self.memory_lock();
        for index in blocks_of(0, size) {
            memory.remove(&BlockId { object, index });
        }
        drop(memory);
        self.disk.forget_object(object);
    }

    /// A cached object's bytes as one local file, for the kernel to read directly
    /// (FUSE passthrough). Some when every block of [0, size) is on disk; the bytes are
    /// verified against their checksums once (a damaged block is dropped as on any read,
    /// and None is returned), then remembered as verified until a block of the object
    /// changes. Counts as a use of each block (LRU). size 0 → None. May read the whole
    /// object from the disk (the first time): call it from a thread that may wait.
    pub fn backing(&self, object: ObjectId, size: u64) -> Option<CacheBacking> {
        let (file, path, pin) = self.disk.backing(object, size)?;
        Some(CacheBacking {
            file,
            path,
            _pin: pin,
        })
    }

    /// Drops blocks unused for longer than the expiry.
    pub fn sweep_expired(&self) {
        let expired = self.disk.sweep_expired();
        self.forget_expired(&expired);
    }

    /// Drops expired blocks from the memory tier too, and counts them.
    fn forget_expired(&self, expired: &[BlockId]) {
        if expired.is_empty() {
            return;
        }
        let mut memory = self.memory_lock();
        for id in expired {
            memory.remove(id);
        }
        drop(memory);
        self.metrics
            .cache_expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
    }

    /// (disk bytes, disk blocks, memory bytes).
    pub fn usage(&self) -> (u64, u64, u64) {
        let (bytes, blocks) = self.disk.usage();
        (bytes, blocks, self.memory_lock().bytes())
    }

    pub fn disk_bound(&self) -> u64 {
        self.disk.bound()
    }

    /// One line for the log and `s3files status`.
    pub fn summary(&self) -> String {
        let (bytes, blocks, memory) = self.usage();
        format!(
            "cache: disk {} in {} blocks (bound {}), memory {}",
            crate::units::format_size(bytes),
            blocks,
            crate::units::format_size(self.disk.bound()),
            crate::units::format_size(memory),
        )
    }

    fn memory_get(&self, id: &BlockId) -> Option<Bytes> {
        self.memory_lock().get(id)
    }

    fn memory_insert(&self, id: BlockId, data: Bytes) {
        let evicted = self.memory_lock().insert(id, data);
        self.metrics
            .memory_evictions
            .fetch_add(evicted, Ordering::Relaxed);
    }

    fn count_hit(&self, counter: &std::sync::atomic::AtomicU64, bytes: usize) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes_from_cache
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn memory_lock(&self) -> std::sync::MutexGuard<'_, memory::MemoryTier> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &std::path::Path, disk: u64, memory: u64) -> Arc<DataCache> {
        let options = CacheOptions {
            dir: dir.to_path_buf(),
            disk_bytes: disk,
            memory_bytes: memory,
            expiry: Duration::from_secs(3600),
        };
        Arc::new(
            DataCache::open(&options, Arc::new(Metrics::default()))
                .unwrap()
                .0,
        )
    }

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 % 251) as u8).collect()
    }

    /// Blocks wait for the one disk writer; past DISK_QUEUE_MAX of waiting bytes a block
    /// is kept in memory only, and the writer then stores the queued ones in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_writes_queue_behind_one_writer_up_to_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 30, 1 << 30);
        // As if a writer were busy: blocks queue up.
        cache.writes_lock().writing = true;
        let fits = (DISK_QUEUE_MAX / BLOCK_SIZE) as u32;
        let data = Bytes::from(body(BLOCK_SIZE as usize));
        let size = BLOCK_SIZE * u64::from(fits + 2);
        let object = ObjectId::new("queued", "e");
        for index in 0..fits + 2 {
            cache.insert(BlockId { object, index }, data.clone());
        }
        assert_eq!(cache.writes_lock().bytes, DISK_QUEUE_MAX);
        assert_eq!(cache.writes_lock().blocks.len(), fits as usize);
        // Every block is served (from memory) meanwhile.
        assert_eq!(cache.cached_bytes(object, size), size);
        cache.start_writer();
        let done = || {
            let writes = cache.writes_lock();
            !writes.writing && writes.bytes == 0
        };
        assert!(
            within_5s(done).await,
            "the writer ends within 5 s, its queue written"
        );
        let written = |index: u32| cache.disk.contains(&BlockId { object, index });
        assert!((0..fits).all(written), "the queued blocks are on disk");
        assert!(
            !written(fits) && !written(fits + 1),
            "the blocks past the bound are not"
        );
        // A fill waits for room instead: blocked while the queue is full, stored once the
        // writer makes room.
        cache.writes_lock().writing = true;
        for index in 0..fits {
            cache.insert(
                BlockId {
                    object,
                    index: 1000 + index,
                },
                data.clone(),
            );
        }
        let waiting = BlockId {
            object,
            index: 2000,
        };
        let fill = tokio::spawn({
            let (cache, data) = (cache.clone(), data.clone());
            async move { cache.insert_waiting(waiting, data).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!fill.is_finished(), "a fill waits while the queue is full");
        cache.start_writer();
        tokio::time::timeout(Duration::from_secs(5), fill)
            .await
            .expect("the fill goes on once there is room")
            .unwrap();
        assert!(
            within_5s(|| cache.disk.contains(&waiting)).await,
            "the waiting fill's block is on disk"
        );
        // A later block starts a new writer.
        let late = BlockId {
            object,
            index: fits,
        };
        cache.insert(late, data.clone());
        assert!(within_5s(|| cache.disk.contains(&late)).await);
    }

    /// Whether `cond` holds within 5 s (checked every 10 ms).
    async fn within_5s(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cond()
    }

    #[test]
    fn the_disk_tier_leaves_a_reserve_for_writes() {
        // 1/20 of a small file system...
        assert!(leaves_reserve(1 << 20, 900 << 10, 800 << 10));
        assert!(!leaves_reserve(1 << 20, 900 << 10, 880 << 10));
        // ...and at most 1 GiB of a large one.
        let tib = 1u64 << 40;
        assert!(leaves_reserve(tib, 2 << 30, 1 << 30));
        assert!(!leaves_reserve(tib, 2 << 30, (1 << 30) + 1));
        assert!(!leaves_reserve(tib, 0, 1));
    }

    #[test]
    fn object_ids_are_stable_and_distinct() {
        let a = ObjectId::new("k", "\"e1\"");
        assert_eq!(ObjectId::from_hex(&a.hex()), Some(a));
        assert_ne!(a, ObjectId::new("k", "\"e2\""));
        assert_ne!(ObjectId::new("ab", "c"), ObjectId::new("a", "bc"));
        assert_eq!(ObjectId::from_hex("zz"), None);
        let mut bytes = [0u8; 16];
        bytes[0] = 0x0f;
        bytes[15] = 0xa9;
        assert_eq!(ObjectId(bytes).hex(), format!("0f{}a9", "0".repeat(28)));
    }

    #[test]
    fn block_geometry() {
        assert_eq!(blocks_of(0, 1), 0..1);
        assert_eq!(blocks_of(BLOCK_SIZE - 1, BLOCK_SIZE + 1), 0..2);
        assert_eq!(blocks_of(5, 5), 0..0);
        assert_eq!(block_range(1, BLOCK_SIZE + 10), BLOCK_SIZE..BLOCK_SIZE + 10);
    }

    #[test]
    fn reads_span_blocks_and_tiers() {
        let dir = tempfile::tempdir().unwrap();
        // Memory holds one block: the rest must come from disk.
        let cache = cache(dir.path(), 1 << 30, BLOCK_SIZE);
        let size = 3 * BLOCK_SIZE - 100;
        let data = body(size as usize);
        let object = ObjectId::new("k", "e");
        assert_eq!(cache.read(object, size, 0, 10), None);
        for index in blocks_of(0, size) {
            let r = block_range(index, size);
            let block = Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]);
            cache.insert(BlockId { object, index }, block);
        }
        for (offset, len) in [
            (0, 4096),
            (BLOCK_SIZE - 10, 4096),
            (size - 50, 4096),
            (7, 600_000),
        ] {
            let got = cache.read(object, size, offset, len).unwrap();
            let end = size.min(offset + u64::from(len)) as usize;
            assert_eq!(&got[..], &data[offset as usize..end], "at {offset}");
        }
        assert!(cache.metrics.cache_hits_disk.load(Ordering::Relaxed) > 0);
        assert!(cache.metrics.cache_hits_memory.load(Ordering::Relaxed) > 0);
        // Another version of the object shares nothing.
        assert_eq!(cache.read(ObjectId::new("k", "e2"), size, 0, 10), None);
        cache.forget_object(object, size);
        assert_eq!(cache.read(object, size, 0, 10), None);
        assert_eq!(cache.usage(), (0, 0, 0));
    }

    /// A damaged disk-tier block is a miss through every read the file system makes: the
    /// inline ones (`read_nowait`, `get_block_mode` without waiting: RWF_NOWAIT on the
    /// FUSE thread) and the blocking-pool ones (`read`, `get_block`), for a block read
    /// whole into the memory tier and one read in place. The block is dropped and counted
    /// (metrics and summary), the other block is still served, and the block fetched again
    /// is cached again.
    #[test]
    fn damaged_disk_blocks_are_misses_on_every_read_path() {
        use disk::tests::{harm, Harm, HARMS};
        // Block 0 is read in place (256 KiB), block 1 whole (20,000 bytes).
        let size = BLOCK_SIZE + 20_000;
        let data = body(size as usize);
        let object = ObjectId::new("k", "e");
        let block = |index: u32| {
            let r = block_range(index, size);
            Bytes::copy_from_slice(&data[r.start as usize..r.end as usize])
        };
        for how in HARMS {
            for index in [0u32, 1] {
                // Cut short inside block 0, the file loses block 1 too; a longer file
                // harms only the last block.
                if how != Harm::Flip && index == 0 {
                    continue;
                }
                for path in ["read", "read_nowait", "get_block", "get_block_mode nowait"] {
                    let case = format!("{how:?} block {index} {path}");
                    let dir = tempfile::tempdir().unwrap();
                    // No memory tier: every read goes to the data file.
                    let cache = cache(dir.path(), 1 << 30, 0);
                    cache.insert_object(object, Bytes::from(data.clone()));
                    let id = BlockId { object, index };
                    let range = block_range(index, size);
                    harm(dir.path(), &id, range.end - range.start, how);
                    let middle = (range.start + range.end) / 2 - 2048;
                    let served = match path {
                        "read" => cache.read(object, size, middle, 4096),
                        "read_nowait" => {
                            let got = cache.read_nowait(object, size, middle, 4096);
                            assert_eq!(got.as_ref().err(), Some(&Missed::Absent), "{case}");
                            got.ok()
                        }
                        "get_block" => cache.get_block(id, size),
                        _ => {
                            let got = cache.get_block_mode(id, size, false);
                            assert_eq!(got.as_ref().err(), Some(&Missed::Absent), "{case}");
                            got.ok()
                        }
                    };
                    assert_eq!(served, None, "{case}");
                    assert!(!cache.contains(&id), "{case}");
                    let corrupt = cache.metrics.cache_corrupt_blocks.load(Ordering::Relaxed);
                    assert_eq!(corrupt, 1, "{case}");
                    let summary = cache.metrics.summary();
                    assert!(summary.contains(" corrupt=1 "), "{case}: {summary}");
                    // The other block is intact and served.
                    let other = block_range(1 - index, size);
                    let got = cache.read(object, size, other.start, 4096).unwrap();
                    assert!(got[..] == data[other.start as usize..][..4096], "{case}");
                    // Fetched again (from S3, in the file system), it is cached again.
                    cache.insert(id, block(index));
                    let got = cache.read_nowait(object, size, middle, 4096).unwrap();
                    assert!(got[..] == data[middle as usize..][..4096], "{case}");
                }
            }
        }
    }

    /// The backing of a fully cached object is the object, read-only; it needs every
    /// block on disk (the memory tier does not count), and pins the object until dropped.
    #[test]
    fn a_backing_needs_every_block_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 30, 1 << 30);
        let size = 2 * BLOCK_SIZE + 10;
        let data = body(size as usize);
        let object = ObjectId::new("k", "e");
        assert!(cache.backing(object, size).is_none());
        assert!(cache.backing(object, 0).is_none());
        cache.insert_object(object, Bytes::from(data.clone()));
        let backing = cache.backing(object, size).unwrap();
        assert_eq!(backing.path(), dir.path().join(object.hex()));
        let mut got = vec![0u8; size as usize];
        use std::os::unix::fs::FileExt;
        backing.file().read_exact_at(&mut got, 0).unwrap();
        assert!(got == data);
        // Pinned: forgetting the object unlinks its file, which the holder still reads.
        cache.forget_object(object, size);
        assert!(!backing.path().exists());
        backing.file().read_exact_at(&mut got, 0).unwrap();
        assert!(got == data);
        assert_eq!(cache.usage(), (0, 0, 0));
        drop(backing);
        // Blocks in memory only are no backing.
        cache.memory_insert(
            BlockId { object, index: 0 },
            Bytes::from(data[..10].to_vec()),
        );
        assert!(cache.backing(object, 10).is_none());
    }
}
