//! Disk tier: one sparse file per cached object version under CACHE_DIR/data, named after
//! the version (`<object>`), holding each cached block's bytes at the block's offset in
//! the object, so a fully cached object is a plain copy of it that the kernel can read
//! directly (FUSE passthrough, `DataCache::backing`). Block checksums live beside it, in
//! `<object>.sums`: an append-only log of records (block index, length, a crc32c per
//! `CHECKSUM_CHUNK`; or a tombstone for a removed block), each with its own crc32c,
//! rewritten without dead records when it grows past twice its live size.
//!
//! Crash safety: a block's record is appended only after its bytes are written, and the
//! index learns of a block only after its record, so a crash can lose blocks but never
//! make a record point at bytes nobody wrote without the checksums noticing: every read
//! checks the file's length and the checksum of each chunk it serves. A damaged block
//! (torn write, bytes changed, file cut short or extended) is never served; it is dropped,
//! counted (`cache_corrupt_blocks`), logged, and read from S3. Bytes without a record (a
//! crash before the append) are never served and their space is reclaimed at the next
//! start; a torn last record is ignored.
//!
//! Eviction is per block (least recently used, byte bound, expiry by last use): a dropped
//! block's range is punched out of the file (its tombstone first) and an object left with
//! no blocks loses both files. A pinned object (handed to the kernel, see `backing`)
//! never has its file's bytes changed: dropping any of its blocks drops them all and
//! unlinks its files instead (the kernel keeps reading its open file; the next fill
//! starts a new one). Last use is written to the data file's mtime at most once per
//! `touch_interval`, so expiry survives restarts (per object across a restart).
//!
//! Locks: the index mutex is held only for index updates, never across file I/O. Each
//! object has an I/O mutex that orders the writes to its two files (block bytes, records,
//! hole punches, unlinks); it is held across those writes (like the journal's lock),
//! never taken while the index is held, and never by a read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lru::LruCache;
use tracing::warn;

use super::{block_range, blocks_of, BlockId, ObjectId, BLOCK_SIZE};
use crate::local_state::{DIR_MODE, FILE_MODE};
use crate::metrics::Metrics;

const TMP_PREFIX: &str = ".tmp-";
/// Suffix of an object's checksum log.
const SUMS_SUFFIX: &str = ".sums";
/// First bytes of a checksum log (the format's version).
const SUMS_MAGIC: &[u8; 8] = b"s3fsums1";
/// A checksum log is rewritten when it holds more than this many records per live block
/// (plus `COMPACT_SLACK`), so its size stays a small multiple of what it describes.
const COMPACT_FACTOR: u64 = 2;
const COMPACT_SLACK: u64 = 16;

/// A block is checksummed in chunks of this size, one crc32c each, so that a 4 KiB read of
/// a 256 KiB block reads and checks 16 KiB (about 2 us here) rather than the whole block
/// (about 20 us, four times the cost of the hit itself).
pub const CHECKSUM_CHUNK: u64 = 16 << 10;

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
    /// Tells this copy of the block from a later one (dropped and written again): a read
    /// that found damage drops the copy it read, never a newer one it did not read.
    seq: u64,
}

/// Serializes the writes to one object's files; counts the records in its log.
struct ObjectIo {
    records: u64,
}

/// What the index knows of one object's files.
struct ObjectState {
    /// Tells this object's files apart from later ones at the same path (after an unlink).
    gen: u64,
    /// Blocks in the index.
    present: BTreeSet<u32>,
    /// Inserts under way (between choosing to write a block and indexing it): the files
    /// must not be removed under them even if `present` empties.
    writers: u32,
    /// Live `CacheBacking`s: the file's bytes must not change.
    pins: u32,
    /// Its files are being unlinked: no new writes; the state goes once they are.
    doomed: bool,
    /// Every block's bytes were checked against its checksums since the last change.
    verified: bool,
    /// Last use written to the data file's mtime.
    touched: SystemTime,
    io: Arc<Mutex<ObjectIo>>,
}

struct Index {
    blocks: LruCache<BlockId, Entry>,
    bytes: u64,
    objects: HashMap<ObjectId, ObjectState>,
    next_gen: u64,
    next_seq: u64,
}

/// File work decided under the index lock, done after it is released.
enum Victim {
    /// Record the block's removal, then punch its range out of the data file.
    Punch {
        id: BlockId,
        gen: u64,
        touched: SystemTime,
        io: Arc<Mutex<ObjectIo>>,
    },
    /// Remove the object's files (its blocks have left the index), then its state.
    Unlink {
        object: ObjectId,
        gen: u64,
        io: Arc<Mutex<ObjectIo>>,
    },
}

impl Index {
    /// Removes a block from the index; returns whether it was there. Its range is to be
    /// punched out, or, if the object is pinned or has no blocks left, all its blocks go
    /// and its files are unlinked. Popped block ids are added to `popped`.
    fn drop_block(
        &mut self,
        id: &BlockId,
        victims: &mut Vec<Victim>,
        popped: &mut Vec<BlockId>,
    ) -> bool {
        let Some(entry) = self.blocks.pop(id) else {
            return false;
        };
        self.bytes -= entry.len;
        popped.push(*id);
        let Some(state) = self.objects.get_mut(&id.object) else {
            return true;
        };
        state.present.remove(&id.index);
        state.verified = false;
        if state.pins > 0 || (state.present.is_empty() && state.writers == 0) {
            self.doom(id.object, victims, popped);
        } else {
            victims.push(Victim::Punch {
                id: *id,
                gen: state.gen,
                touched: state.touched,
                io: state.io.clone(),
            });
        }
        true
    }

    /// Drops every block of an object and has its files unlinked.
    fn doom(&mut self, object: ObjectId, victims: &mut Vec<Victim>, popped: &mut Vec<BlockId>) {
        let Some(state) = self.objects.get_mut(&object) else {
            return;
        };
        if state.doomed {
            return;
        }
        state.doomed = true;
        state.verified = false;
        let present = std::mem::take(&mut state.present);
        let (gen, io) = (state.gen, state.io.clone());
        for index in present {
            let id = BlockId { object, index };
            if let Some(entry) = self.blocks.pop(&id) {
                self.bytes -= entry.len;
                popped.push(id);
            }
        }
        victims.push(Victim::Unlink { object, gen, io });
    }

    /// An insert of the object's `gen` files is over (its block indexed or not).
    fn writer_done(&mut self, object: ObjectId, gen: u64, victims: &mut Vec<Victim>) {
        let Some(state) = self.objects.get_mut(&object).filter(|s| s.gen == gen) else {
            return;
        };
        state.writers = state.writers.saturating_sub(1);
        if state.present.is_empty() && state.writers == 0 {
            self.doom(object, victims, &mut Vec::new());
        }
    }

    fn new_state(&mut self, touched: SystemTime, records: u64) -> ObjectState {
        self.next_gen += 1;
        ObjectState {
            gen: self.next_gen,
            present: BTreeSet::new(),
            writers: 0,
            pins: 0,
            doomed: false,
            verified: false,
            touched,
            io: Arc::new(Mutex::new(ObjectIo { records })),
        }
    }
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
    /// Leftovers removed: temporary files, foreign names (block files of the older
    /// one-file-per-block layout too), a data file without its checksum log or the
    /// reverse, objects with no block left; and blocks past the bound.
    pub removed: u64,
    /// Blocks whose file is too short for them, or extended past the object's end.
    pub corrupt: u64,
}

/// Blocks dropped by one insert.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub evicted: u64,
    /// Blocks that went unused for the expiry (the memory tier must drop them too).
    pub expired: Vec<BlockId>,
}

/// How a block was found damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// The data file's length does not fit the block: cut short before the block's end,
    /// or, for the object's short last block, longer than the object.
    Length { found: u64, expected: u64 },
    /// A chunk's bytes do not match its checksum (offset within the block).
    Checksum { chunk: u64 },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Length { found, expected } => {
                write!(f, "file {found} bytes long, the block ends at {expected}")
            }
            Damage::Checksum { chunk } => write!(
                f,
                "checksum mismatch at bytes {}..{} of the block",
                chunk * CHECKSUM_CHUNK,
                (chunk + 1) * CHECKSUM_CHUNK
            ),
        }
    }
}

/// Why reading a block gave no bytes.
enum Fault {
    WouldBlock,
    /// Removed or unreadable: a plain miss.
    Gone,
    Damaged(Damage),
}

/// Holds an object pinned: while any `Pin` of its files lives, their bytes never change.
pub struct Pin {
    index: Arc<Mutex<Index>>,
    object: ObjectId,
    gen: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut index = lock(&self.index);
        if let Some(state) = index.objects.get_mut(&self.object) {
            if state.gen == self.gen {
                state.pins = state.pins.saturating_sub(1);
            }
        }
    }
}

pub struct DiskTier {
    dir: PathBuf,
    /// Protects the index; held only for index updates, never across file I/O. Shared
    /// with the pins, which must find it to unpin when dropped.
    index: Arc<Mutex<Index>>,
    bound: u64,
    expiry: Duration,
    touch_interval: Duration,
    next_tmp: AtomicU64,
    metrics: Arc<Metrics>,
    /// Last uses to persist in data files' mtimes, put off by callers that must not
    /// wait for the disk (the FUSE thread answering inline); written by the next caller
    /// that may (a blocking read, a block insert, the expiry sweep).
    deferred_touches: Mutex<Vec<(PathBuf, SystemTime)>>,
}

/// Deferred touches kept at most; past it a use is not persisted (only its expiry after
/// a restart is affected: the block may go a little early).
const MAX_DEFERRED_TOUCHES: usize = 4096;

/// One object's files as the start-up scan found them.
#[derive(Default)]
struct FoundFiles {
    data: Option<(PathBuf, fs::Metadata)>,
    sums: Option<PathBuf>,
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `dir` and indexes what an earlier run left,
    /// oldest use first, dropping expired objects, blocks the data file's length cannot
    /// hold, anything that is not a data file with its checksum log (the older layout's
    /// block files too), and anything past the bound.
    pub fn open(
        dir: &Path,
        bound: u64,
        expiry: Duration,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Self, ScanReport)> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        let now = SystemTime::now();
        let mut report = ScanReport::default();
        let mut objects: BTreeMap<ObjectId, FoundFiles> = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let meta = entry.metadata();
            let regular = meta.as_ref().is_ok_and(|m| m.is_file());
            match name.to_str().and_then(parse_name) {
                Some((object, false)) if regular => {
                    objects.entry(object).or_default().data = Some((entry.path(), meta?));
                }
                Some((object, true)) if regular => {
                    objects.entry(object).or_default().sums = Some(entry.path());
                }
                _ => {
                    let _ = fs::remove_file(entry.path());
                    report.removed += 1;
                }
            }
        }
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            index: Arc::new(Mutex::new(Index {
                blocks: LruCache::unbounded(),
                bytes: 0,
                objects: HashMap::new(),
                next_gen: 0,
                next_seq: 0,
            })),
            bound,
            expiry,
            touch_interval: (expiry / 8).min(Duration::from_secs(3600)),
            next_tmp: AtomicU64::new(0),
            metrics,
            deferred_touches: Mutex::new(Vec::new()),
        };
        let mut found = Vec::new();
        for (object, files) in objects {
            let (Some((data, meta)), Some(sums)) = (files.data.clone(), files.sums.clone()) else {
                for path in [files.data.map(|d| d.0), files.sums].into_iter().flatten() {
                    let _ = fs::remove_file(path);
                    report.removed += 1;
                }
                continue;
            };
            let remove = |report: &mut ScanReport| {
                let _ = fs::remove_file(&data);
                let _ = fs::remove_file(&sums);
                report.removed += 1;
            };
            let Some(log) = fs::read(&sums).ok().and_then(|bytes| parse_log(&bytes)) else {
                remove(&mut report);
                continue;
            };
            let mtime = meta.modified().unwrap_or(now);
            let mut live = log.live;
            let file_len = meta.len();
            live.retain(|&index, (len, _)| {
                let expected = u64::from(index) * BLOCK_SIZE + *len;
                let fits = expected <= file_len && (*len == BLOCK_SIZE || file_len == expected);
                if !fits {
                    report.corrupt += 1;
                    warn!(
                        file = %data.display(),
                        "damaged cache block dropped at start-up (block {index}, {})",
                        Damage::Length { found: file_len, expected }
                    );
                }
                fits
            });
            if live.is_empty() {
                remove(&mut report);
                continue;
            }
            if expired(now, mtime, expiry) {
                let _ = fs::remove_file(&data);
                let _ = fs::remove_file(&sums);
                report.expired += live.len() as u64;
                continue;
            }
            let stale = !log.clean || log.records != live.len() as u64;
            if stale && tier.write_log(&sums, &live).is_err() {
                remove(&mut report);
                continue;
            }
            reclaim(&data, &meta, &live);
            found.push((mtime, object, live));
        }
        found.sort_by_key(|(mtime, ..)| *mtime);
        tier.metrics
            .cache_corrupt_blocks
            .fetch_add(report.corrupt, Ordering::Relaxed);
        let mut victims = Vec::new();
        {
            let mut index = tier.lock();
            let index = &mut *index;
            for (mtime, object, live) in found {
                let mut state = index.new_state(mtime, live.len() as u64);
                for (block, (len, sums)) in live {
                    let id = BlockId {
                        object,
                        index: block,
                    };
                    index.bytes += len;
                    state.present.insert(block);
                    index.next_seq += 1;
                    let entry = Entry {
                        len,
                        sums,
                        last_used: mtime,
                        seq: index.next_seq,
                    };
                    index.blocks.put(id, entry);
                }
                index.objects.insert(object, state);
            }
            let mut popped = Vec::new();
            tier.evict_locked(index, 0, &mut victims, &mut popped);
            report.removed += popped.len() as u64;
            report.blocks = index.blocks.len() as u64;
            report.bytes = index.bytes;
        }
        tier.process(victims);
        Ok((tier, report))
    }

    /// Reads from a cached block at `offset` within it. `block_len` is the length the block
    /// must have (known from the object's size); another length is damage. None is a miss.
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
        let (sums, seq, touch) = self.note_use(id, block_len).ok_or(Missed::Absent)?;
        let path = self.data_path(id.object);
        if let Some(when) = touch {
            self.touch_or_defer(path.clone(), when, wait);
        }
        match read_verified(&path, &sums, id.index, block_len, offset, buf, wait) {
            Ok(n) => Ok(n),
            Err(Fault::WouldBlock) => Err(Missed::WouldBlock),
            Err(Fault::Gone) => {
                // Removed or unreadable under us: forget it.
                self.drop_if_same(id, seq);
                Err(Missed::Absent)
            }
            Err(Fault::Damaged(damage)) => {
                if self.drop_if_same(id, seq) {
                    self.report_damage(&path, id.index, damage);
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

    /// Marks a block used; returns None if it is not cached, else its checksums, its
    /// copy's `seq` and whether (and to when) the data file's mtime should be brought up to date. A block
    /// indexed with another length than `block_len` is dropped as damaged.
    fn note_use(
        &self,
        id: &BlockId,
        block_len: u64,
    ) -> Option<(Checksums, u64, Option<SystemTime>)> {
        let mut index = self.lock();
        let entry = index.blocks.get_mut(id)?;
        if entry.len != block_len {
            let found = u64::from(id.index) * BLOCK_SIZE + entry.len;
            let mut victims = Vec::new();
            index.drop_block(id, &mut victims, &mut Vec::new());
            drop(index);
            self.process(victims);
            self.report_damage(
                &self.data_path(id.object),
                id.index,
                Damage::Length {
                    found,
                    expected: u64::from(id.index) * BLOCK_SIZE + block_len,
                },
            );
            return None;
        }
        let now = SystemTime::now();
        entry.last_used = now;
        let (sums, seq) = (entry.sums.clone(), entry.seq);
        let state = index.objects.get_mut(&id.object)?;
        Some((sums, seq, self.due_touch(state, now)))
    }

    /// Whether an object's use at `now` should be written to its mtime (and notes it).
    fn due_touch(&self, state: &mut ObjectState, now: SystemTime) -> Option<SystemTime> {
        if now.duration_since(state.touched).unwrap_or_default() >= self.touch_interval {
            state.touched = now;
            Some(now)
        } else {
            None
        }
    }

    /// Stores a block (whole), then drops least-recently-used blocks past the bound.
    /// Best effort: an insert that meets another one of the same block, or its object's
    /// files being removed, stores nothing.
    pub fn insert(&self, id: BlockId, data: &[u8]) -> io::Result<Dropped> {
        self.flush_touches();
        let len = data.len() as u64;
        let mut dropped = Dropped::default();
        if len > self.bound || len == 0 || len > BLOCK_SIZE {
            return Ok(dropped);
        }
        let sums = checksums(data);
        let now = SystemTime::now();
        // Choose to write (and make room first, so the files stay under the bound while
        // this block is written, not just once the insert is done). A pinned object's
        // block written again with other bytes dooms the object (its file must not
        // change); the second round then starts a new file.
        let mut chosen = None;
        for round in 0..2 {
            let mut victims = Vec::new();
            let mut expired = Vec::new();
            let mut evicted = Vec::new();
            let mut again = false;
            {
                let mut index = self.lock();
                let index = &mut *index;
                if round == 0 {
                    self.expire_locked(index, now, &mut victims, &mut expired);
                }
                let same = index.blocks.peek(&id).map(|e| e.sums == sums);
                let state = index.objects.get(&id.object);
                let blocked = state.is_some_and(|s| s.doomed);
                let pinned = state.is_some_and(|s| s.pins > 0);
                if same == Some(true) {
                    // The same bytes: only a use.
                    if let Some(entry) = index.blocks.get_mut(&id) {
                        entry.last_used = now;
                    }
                } else if blocked {
                    again = true;
                } else if same == Some(false) && pinned {
                    // Replaced, not evicted: not counted.
                    index.doom(id.object, &mut victims, &mut Vec::new());
                    again = true;
                } else {
                    if !index.objects.contains_key(&id.object) {
                        let state = index.new_state(now, 0);
                        index.objects.insert(id.object, state);
                    }
                    let state = index.objects.get_mut(&id.object).expect("just inserted");
                    state.writers += 1;
                    chosen = Some((state.gen, state.io.clone()));
                    // Counted as a writer first, so dropping its old bytes keeps the
                    // files.
                    index.drop_block(&id, &mut victims, &mut Vec::new());
                    self.evict_locked(index, len, &mut victims, &mut evicted);
                }
            }
            dropped.evicted += evicted.len() as u64;
            dropped.expired.extend(expired);
            self.process(victims);
            if !again {
                break;
            }
        }
        let Some((gen, io)) = chosen else {
            return Ok(dropped);
        };
        let mut victims = Vec::new();
        let written = {
            let mut io = lock(&io);
            let ours = {
                let index = self.lock();
                index
                    .objects
                    .get(&id.object)
                    .is_some_and(|s| s.gen == gen && !s.doomed && !s.present.contains(&id.index))
            };
            let written = if ours {
                let written = self.write_block(&mut io, &id, data, &sums);
                if written.is_err() {
                    // Whatever part was written has no record (it is never served); give
                    // its space back now rather than at the next start.
                    if let Ok(file) = open_for_write(&self.data_path(id.object), false) {
                        let _ = punch_hole(&file, u64::from(id.index) * BLOCK_SIZE, BLOCK_SIZE);
                    }
                }
                written.map(|()| true)
            } else {
                Ok(false)
            };
            let live = {
                let mut index = self.lock();
                let index = &mut *index;
                let state = index
                    .objects
                    .get_mut(&id.object)
                    .filter(|s| s.gen == gen && !s.doomed);
                let live = state.map(|state| {
                    if matches!(written, Ok(true)) {
                        state.present.insert(id.index);
                        state.verified = false;
                        state.touched = now;
                    }
                    state.present.len() as u64
                });
                if live.is_some() && matches!(written, Ok(true)) {
                    index.bytes += len;
                    index.next_seq += 1;
                    let entry = Entry {
                        len,
                        sums,
                        last_used: now,
                        seq: index.next_seq,
                    };
                    index.blocks.put(id, entry);
                }
                index.writer_done(id.object, gen, &mut victims);
                // Concurrent inserts may have used the room made above.
                let mut evicted = Vec::new();
                self.evict_locked(index, 0, &mut victims, &mut evicted);
                dropped.evicted += evicted.len() as u64;
                live
            };
            if live.is_some_and(|live| io.records > COMPACT_FACTOR * live + COMPACT_SLACK) {
                let _ = self.compact(&mut io, id.object);
            }
            written
        };
        self.process(victims);
        written.map(|_| dropped)
    }

    /// Writes a block's bytes at its offset in the data file, then its record.
    fn write_block(
        &self,
        io: &mut ObjectIo,
        id: &BlockId,
        data: &[u8],
        sums: &[u32],
    ) -> io::Result<()> {
        let file = open_for_write(&self.data_path(id.object), true)?;
        let start = u64::from(id.index) * BLOCK_SIZE;
        file.write_all_at(data, start)?;
        let end = start + data.len() as u64;
        // A short block is the object's last: the file ends with it (an extended file
        // would give the kernel bytes past the object's end).
        if (data.len() as u64) < BLOCK_SIZE && file.metadata()?.len() > end {
            file.set_len(end)?;
        }
        self.append(io, id.object, &record(id.index, data.len() as u64, sums))
    }

    /// Appends a record to an object's checksum log (creating it with its header).
    fn append(&self, io: &mut ObjectIo, object: ObjectId, record: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.sums_path(object))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("checksum log is not a regular file"));
        }
        if meta.len() == 0 {
            // One write: a crash leaves no header without its first record to matter.
            let mut first = SUMS_MAGIC.to_vec();
            first.extend_from_slice(record);
            file.write_all(&first)?;
            io.records = 1;
        } else {
            file.write_all(record)?;
            io.records += 1;
        }
        Ok(())
    }

    /// Rewrites an object's checksum log with only its live records.
    fn compact(&self, io: &mut ObjectIo, object: ObjectId) -> io::Result<()> {
        let path = self.sums_path(object);
        let log = parse_log(&fs::read(&path)?)
            .ok_or_else(|| io::Error::other("unreadable checksum log"))?;
        self.write_log(&path, &log.live)?;
        io.records = log.live.len() as u64;
        Ok(())
    }

    /// Writes a checksum log of `live` blocks to a temporary name, renamed over `path`.
    fn write_log(&self, path: &Path, live: &BTreeMap<u32, (u64, Checksums)>) -> io::Result<()> {
        let mut bytes = SUMS_MAGIC.to_vec();
        for (&index, (len, sums)) in live {
            bytes.extend_from_slice(&record(index, *len, sums));
        }
        let tmp = self.tmp_path();
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes));
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }

    /// Does the file work the index decided, in order.
    fn process(&self, victims: Vec<Victim>) {
        for victim in victims {
            match victim {
                Victim::Punch {
                    id,
                    gen,
                    touched,
                    io,
                } => {
                    let mut io = lock(&io);
                    // Written again (or the files replaced) since it was dropped: the
                    // bytes there now are not the dropped ones.
                    let still = self.lock().objects.get(&id.object).map(|s| {
                        (s.gen == gen && !s.doomed && !s.present.contains(&id.index))
                            .then_some(s.present.len() as u64)
                    });
                    let Some(Some(live)) = still else {
                        continue;
                    };
                    // The tombstone first: a crash between the two leaves bytes without
                    // a record (never served, reclaimed at the next start), not a record
                    // over a hole.
                    if self
                        .append(&mut io, id.object, &record(id.index, 0, &[]))
                        .is_err()
                    {
                        continue;
                    }
                    if let Ok(file) = open_for_write(&self.data_path(id.object), false) {
                        // The block's whole slot: for the object's short last block, that
                        // also frees what a damaged (extended) file held past its end.
                        let _ = punch_hole(&file, u64::from(id.index) * BLOCK_SIZE, BLOCK_SIZE);
                        // A punch is no use: keep the last use the mtime stood for.
                        let _ = file.set_modified(touched);
                    }
                    if io.records > COMPACT_FACTOR * live + COMPACT_SLACK {
                        let _ = self.compact(&mut io, id.object);
                    }
                }
                Victim::Unlink { object, gen, io } => {
                    let _io = lock(&io);
                    let _ = fs::remove_file(self.data_path(object));
                    let _ = fs::remove_file(self.sums_path(object));
                    let mut index = self.lock();
                    if index.objects.get(&object).is_some_and(|s| s.gen == gen) {
                        index.objects.remove(&object);
                    }
                }
            }
        }
    }

    pub fn contains(&self, id: &BlockId) -> bool {
        self.lock().blocks.contains(id)
    }

    pub fn remove(&self, id: &BlockId) {
        let mut victims = Vec::new();
        self.lock().drop_block(id, &mut victims, &mut Vec::new());
        self.process(victims);
    }

    /// Moves an object's data file to `dest` and forgets the object: a writer takes the
    /// bytes the kernel is reading (a backing) as its staged file. Fails unless every
    /// block of [0, size) is on disk.
    pub fn adopt(&self, object: ObjectId, size: u64, dest: &Path) -> io::Result<()> {
        let mut victims = Vec::new();
        let io = {
            let mut index = self.lock();
            let whole = index
                .objects
                .get(&object)
                .filter(|s| !s.doomed && s.present.len() == blocks_of(0, size).len())
                .map(|s| s.io.clone());
            let Some(io) = whole else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "object not wholly cached",
                ));
            };
            index.doom(object, &mut victims, &mut Vec::new());
            io
        };
        // Under the object's I/O lock, before its unlink runs (which then finds no data
        // file, and removes the checksum log).
        let moved = {
            let _io = lock(&io);
            fs::rename(self.data_path(object), dest)
        };
        self.process(victims);
        moved
    }

    /// Drops every block of an object version and removes its files (a pinned object's
    /// open file stays intact for whoever holds it).
    pub fn forget_object(&self, object: ObjectId) {
        let mut victims = Vec::new();
        self.lock().doom(object, &mut victims, &mut Vec::new());
        self.process(victims);
    }

    /// Drops a block if the index still holds the copy `seq` of it (not a newer copy
    /// written meanwhile); returns whether it did.
    fn drop_if_same(&self, id: &BlockId, seq: u64) -> bool {
        let mut victims = Vec::new();
        {
            let mut index = self.lock();
            match index.blocks.peek(id) {
                Some(entry) if entry.seq == seq => {
                    index.drop_block(id, &mut victims, &mut Vec::new());
                }
                _ => return false,
            }
        }
        self.process(victims);
        true
    }

    /// Counts and logs a damaged block that has just been dropped.
    fn report_damage(&self, path: &Path, index: u32, damage: Damage) {
        self.metrics
            .cache_corrupt_blocks
            .fetch_add(1, Ordering::Relaxed);
        warn!(
            file = %path.display(),
            "damaged cache block dropped (block {index}, {damage}); its data is read from S3 again"
        );
    }

    /// The object's bytes [0, size) as one open file, if every block is cached: checked
    /// against their checksums the first time (a damaged block is dropped and None
    /// returned), then remembered as checked until a block changes. The object stays
    /// pinned while the returned `Pin` lives. Counts as a use of every block.
    pub fn backing(&self, object: ObjectId, size: u64) -> Option<(File, PathBuf, Pin)> {
        if size == 0 {
            return None;
        }
        let now = SystemTime::now();
        let blocks = blocks_of(0, size);
        let (pin, verified, sums, touch) = {
            let mut index = self.lock();
            let index = &mut *index;
            let state = index.objects.get(&object)?;
            if state.doomed || state.present.len() != blocks.len() {
                return None;
            }
            let mut sums = Vec::with_capacity(blocks.len());
            for block in blocks.clone() {
                let range = block_range(block, size);
                let entry = index.blocks.get_mut(&BlockId {
                    object,
                    index: block,
                })?;
                if entry.len != range.end - range.start {
                    return None;
                }
                entry.last_used = now;
                sums.push((entry.sums.clone(), entry.seq));
            }
            let state = index.objects.get_mut(&object)?;
            state.pins += 1;
            let pin = Pin {
                index: self.index.clone(),
                object,
                gen: state.gen,
            };
            (pin, state.verified, sums, self.due_touch(state, now))
        };
        let path = self.data_path(object);
        if let Some(when) = touch {
            self.touch_or_defer(path.clone(), when, true);
        }
        // Non-blocking: something other than a regular file put there (a FIFO) must not
        // hang the open; it is refused just below.
        let file = open_for_read(&path, libc::O_NONBLOCK).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let damaged = |damage: Vec<(u32, Damage)>, pin: Pin| {
            // Unpinned first, so the damaged block is punched out rather than the whole
            // object unlinked (unless someone else pins it).
            drop(pin);
            for (block, damage) in damage {
                let id = BlockId {
                    object,
                    index: block,
                };
                if self.drop_if_same(&id, sums[block as usize].1) {
                    self.report_damage(&path, block, damage);
                }
            }
        };
        let found = meta.len();
        if found != size {
            // Cut short: every block past the cut; extended: the last block.
            let hit: Vec<(u32, Damage)> = blocks
                .clone()
                .filter(|&b| found < size && block_range(b, size).end > found)
                .chain((found > size).then_some(blocks.end - 1))
                .map(|b| {
                    let expected = block_range(b, size).end;
                    (b, Damage::Length { found, expected })
                })
                .collect();
            damaged(hit, pin);
            return None;
        }
        if !verified {
            let block_sums: Vec<&[u32]> = sums.iter().map(|(s, _)| &s[..]).collect();
            match check_file(&file, size, &block_sums) {
                Ok(()) => {}
                Err(CheckFailed::Io) => return None,
                Err(CheckFailed::Damaged(hit)) => {
                    damaged(hit, pin);
                    return None;
                }
            }
        }
        // Still the files pinned above (not dropped and replaced meanwhile)?
        let current = {
            let mut index = self.lock();
            match index.objects.get_mut(&object) {
                Some(state) if state.gen == pin.gen && !state.doomed => {
                    state.verified = true;
                    true
                }
                _ => false,
            }
        };
        current.then_some((file, path, pin))
    }

    /// Drops every block unused for longer than the expiry; returns them.
    pub fn sweep_expired(&self) -> Vec<BlockId> {
        self.flush_touches();
        let mut victims = Vec::new();
        let mut expired = Vec::new();
        self.expire_locked(
            &mut self.lock(),
            SystemTime::now(),
            &mut victims,
            &mut expired,
        );
        self.process(victims);
        expired
    }

    /// Records a use of a block served from elsewhere (the memory tier), so that its
    /// expiry and its place in the eviction order follow its real use.
    /// Memory hits are answered inline, so the file's mtime is written later.
    pub fn note_hit(&self, id: &BlockId, block_len: u64) {
        if let Some((_, _, Some(when))) = self.note_use(id, block_len) {
            self.touch_or_defer(self.data_path(id.object), when, false);
        }
    }

    /// Persists an object's last use in its data file's mtime now (`wait`), or later.
    fn touch_or_defer(&self, path: PathBuf, when: SystemTime, wait: bool) {
        if wait {
            touch_file(&path, when);
            self.flush_touches();
        } else {
            let mut deferred = lock(&self.deferred_touches);
            if deferred.len() < MAX_DEFERRED_TOUCHES {
                deferred.push((path, when));
            }
        }
    }

    /// Writes the deferred touches (from a thread that may wait for the disk).
    pub fn flush_touches(&self) {
        let deferred = std::mem::take(&mut *lock(&self.deferred_touches));
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
        victims: &mut Vec<Victim>,
        popped: &mut Vec<BlockId>,
    ) {
        while let Some((&id, entry)) = index.blocks.peek_lru() {
            if !expired(now, entry.last_used, self.expiry) {
                break;
            }
            index.drop_block(&id, victims, popped);
        }
    }

    /// Drops least-recently-used blocks until `room` more bytes fit under the bound.
    fn evict_locked(
        &self,
        index: &mut Index,
        room: u64,
        victims: &mut Vec<Victim>,
        popped: &mut Vec<BlockId>,
    ) {
        while index.bytes + room > self.bound {
            match index.blocks.peek_lru() {
                Some((&id, _)) => {
                    index.drop_block(&id, victims, popped);
                }
                None => break,
            }
        }
    }

    /// The directory of the data files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<object>`: the object's cached bytes at their offsets.
    pub(crate) fn data_path(&self, object: ObjectId) -> PathBuf {
        self.dir.join(object.hex())
    }

    /// `<object>.sums`: the object's checksum log.
    fn sums_path(&self, object: ObjectId) -> PathBuf {
        self.dir.join(format!("{}{SUMS_SUFFIX}", object.hex()))
    }

    fn tmp_path(&self) -> PathBuf {
        self.dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// The indexed blocks, least recently used first.
    #[cfg(test)]
    fn lru_order(&self) -> Vec<BlockId> {
        let index = self.lock();
        index.blocks.iter().rev().map(|(id, _)| *id).collect()
    }
}

/// Locks a mutex whose holders keep its data consistent before any call that could
/// panic, so a poisoned one is still sound.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn expired(now: SystemTime, last_used: SystemTime, expiry: Duration) -> bool {
    now.duration_since(last_used).unwrap_or_default() > expiry
}

/// The object a name in the data dir stands for, and whether it is its checksum log;
/// None for anything else (temporary files, block files of the older layout, names with
/// capitals).
fn parse_name(name: &str) -> Option<(ObjectId, bool)> {
    let (hex, sums) = match name.strip_suffix(SUMS_SUFFIX) {
        Some(hex) => (hex, true),
        None => (name, false),
    };
    let object = ObjectId::from_hex(hex)?;
    (object.hex() == hex).then_some((object, sums))
}

/// A checksum-log record: block index, length (0 for a tombstone), its checksums, then
/// the crc32c of all that, little-endian.
fn record(index: u32, len: u64, sums: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + 4 * sums.len());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    for sum in sums {
        out.extend_from_slice(&sum.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// What a checksum log says.
struct Log {
    /// The blocks whose last record is not a tombstone.
    live: BTreeMap<u32, (u64, Checksums)>,
    /// Records read.
    records: u64,
    /// Whether the log ended exactly after its last good record (no torn or foreign tail).
    clean: bool,
}

/// Parses a checksum log; None if it lacks the header. Reading stops at the first record
/// that is cut short or fails its crc (a crash mid-append).
fn parse_log(bytes: &[u8]) -> Option<Log> {
    let mut rest = bytes.strip_prefix(SUMS_MAGIC.as_slice())?;
    let mut log = Log {
        live: BTreeMap::new(),
        records: 0,
        clean: true,
    };
    let word = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    while !rest.is_empty() {
        if rest.len() < 12 {
            log.clean = false;
            break;
        }
        let index = word(rest, 0);
        let len = u64::from(word(rest, 4));
        let count = len.div_ceil(CHECKSUM_CHUNK) as usize;
        let size = 8 + 4 * count + 4;
        if len > BLOCK_SIZE
            || rest.len() < size
            || word(rest, size - 4) != crc32c::crc32c(&rest[..size - 4])
        {
            log.clean = false;
            break;
        }
        if len == 0 {
            log.live.remove(&index);
        } else {
            let sums = (0..count).map(|i| word(rest, 8 + 4 * i)).collect();
            log.live.insert(index, (len, sums));
        }
        log.records += 1;
        rest = &rest[size..];
    }
    Some(log)
}

/// Punches out of a data file every range no live block covers (bytes written just
/// before a crash, or of blocks whose tombstone was written but not yet punched).
fn reclaim(path: &Path, meta: &fs::Metadata, live: &BTreeMap<u32, (u64, Checksums)>) {
    let mut gaps = Vec::new();
    let mut at = 0;
    for (&index, (len, _)) in live {
        let start = u64::from(index) * BLOCK_SIZE;
        if start > at {
            gaps.push((at, start - at));
        }
        at = start + len;
    }
    if meta.len() > at {
        gaps.push((at, meta.len() - at));
    }
    if gaps.is_empty() {
        return;
    }
    let Ok(file) = open_for_write(path, false) else {
        return;
    };
    for (offset, len) in gaps {
        let _ = punch_hole(&file, offset, len);
    }
    if let Ok(mtime) = meta.modified() {
        let _ = file.set_modified(mtime);
    }
}

/// Opens a data file for reading (with `flags`, such as O_NONBLOCK) without updating
/// its access time: a first read of a freshly written file would otherwise write its
/// inode (last use is kept in the mtime). Files not ours (another user's cache
/// directory) are opened without O_NOATIME.
fn open_for_read(path: &Path, flags: i32) -> io::Result<File> {
    let open = |flags| OpenOptions::new().read(true).custom_flags(flags).open(path);
    match open(flags | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(flags),
        result => result,
    }
}

/// Opens a data file for writing without ever waiting on a non-regular file (a FIFO
/// put in its place would block an open for writing until a reader came).
fn open_for_write(path: &Path, create: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(create)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Frees a range of a file's blocks, keeping its length (the range reads as zeros).
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The first chunk of `data` (chunk `first` of its block onwards) whose crc32c differs
/// from its checksum.
fn bad_chunk(data: &[u8], sums: &[u32], first: u64) -> Option<u64> {
    data.chunks(CHECKSUM_CHUNK as usize)
        .enumerate()
        .map(|(i, chunk)| (first + i as u64, chunk))
        .find(|(index, chunk)| sums.get(*index as usize) != Some(&crc32c::crc32c(chunk)))
        .map(|(index, _)| index)
}

/// Objects of at least this many blocks are checked by several threads at once: the
/// device serves parallel reads faster than one stream (a 1 GiB file, page cache
/// dropped, on this project's machines: 0.63 s with 4 readers, 0.94 s with one).
const PARALLEL_CHECK_BLOCKS: u32 = 64;
/// Threads for such a check.
const CHECK_THREADS: u32 = 4;
/// Blocks per read during a check (1 MiB).
const CHECK_READ_BLOCKS: u32 = 4;

/// Why a whole-file check failed.
#[derive(Debug)]
enum CheckFailed {
    /// The file could not be read.
    Io,
    /// These blocks' bytes are damaged.
    Damaged(Vec<(u32, Damage)>),
}

/// Checks every block of an object's data file (`size` bytes, `sums[b]` the checksums of
/// block `b`), on several threads for a large object.
fn check_file(file: &File, size: u64, sums: &[&[u32]]) -> Result<(), CheckFailed> {
    let blocks = blocks_of(0, size);
    if blocks.len() < PARALLEL_CHECK_BLOCKS as usize {
        return check_blocks(file, size, sums, blocks, &AtomicBool::new(false));
    }
    let stop = AtomicBool::new(false);
    let per = blocks.end.div_ceil(CHECK_THREADS);
    let results: Vec<Result<(), CheckFailed>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CHECK_THREADS)
            .map(|i| (i * per).min(blocks.end)..((i + 1) * per).min(blocks.end))
            .map(|part| {
                let stop = &stop;
                let mine = part.clone();
                std::thread::Builder::new()
                    .name("s3files-check".into())
                    .spawn_scoped(scope, move || check_blocks(file, size, sums, mine, stop))
                    // No thread to be had: that part is checked here instead.
                    .map_err(|_| part)
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| match worker {
                Ok(handle) => handle.join().unwrap_or(Err(CheckFailed::Io)),
                Err(part) => check_blocks(file, size, sums, part, &stop),
            })
            .collect()
    });
    let mut hit = Vec::new();
    for result in results {
        match result {
            Ok(()) => {}
            Err(CheckFailed::Io) => return Err(CheckFailed::Io),
            Err(CheckFailed::Damaged(mut found)) => hit.append(&mut found),
        }
    }
    if hit.is_empty() {
        Ok(())
    } else {
        Err(CheckFailed::Damaged(hit))
    }
}

/// Checks `blocks` of an object's data file in reads of `CHECK_READ_BLOCKS`; gives up
/// (raising `stop`) at the first damaged block, or when another checker raised it.
fn check_blocks(
    file: &File,
    size: u64,
    sums: &[&[u32]],
    blocks: Range<u32>,
    stop: &AtomicBool,
) -> Result<(), CheckFailed> {
    // No larger than the bytes to check: most objects checked here are small files,
    // opened one after another (zeroing a large buffer was most of such an open).
    let bytes =
        block_range(blocks.end.saturating_sub(1), size).end - block_range(blocks.start, size).start;
    let mut buf = vec![0u8; bytes.min(BLOCK_SIZE * u64::from(CHECK_READ_BLOCKS)) as usize];
    let mut first = blocks.start;
    while first < blocks.end {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last = (first + CHECK_READ_BLOCKS).min(blocks.end);
        let start = block_range(first, size).start;
        let len = (block_range(last - 1, size).end - start) as usize;
        let n = read_full(file, &mut buf[..len], start, true).map_err(|_| {
            stop.store(true, Ordering::Relaxed);
            CheckFailed::Io
        })?;
        for block in first..last {
            let range = block_range(block, size);
            let (from, to) = ((range.start - start) as usize, (range.end - start) as usize);
            let damage = if n < to {
                Some(Damage::Length {
                    found: start + n as u64,
                    expected: range.end,
                })
            } else {
                bad_chunk(&buf[from..to], sums[block as usize], 0)
                    .map(|chunk| Damage::Checksum { chunk })
            };
            if let Some(damage) = damage {
                stop.store(true, Ordering::Relaxed);
                return Err(CheckFailed::Damaged(vec![(block, damage)]));
            }
        }
        first = last;
    }
    Ok(())
}

/// Reads [offset, offset + buf.len()) of block `index` (clipped to the block) into `buf`,
/// after checking the data file's length and the checksums of the chunks that range
/// touches.
fn read_verified(
    path: &Path,
    sums: &[u32],
    index: u32,
    block_len: u64,
    offset: u64,
    buf: &mut [u8],
    wait: bool,
) -> Result<usize, Fault> {
    if offset >= block_len || buf.is_empty() {
        return Ok(0);
    }
    let want = buf.len().min((block_len - offset) as usize);
    // Blocking, like a read from a stalled disk (tests/fuse_workers.rs stalls one
    // read with a FIFO put in place of a data file).
    let file = open_for_read(path, 0).map_err(|_| Fault::Gone)?;
    let found = file.metadata().map_err(|_| Fault::Gone)?.len();
    let base = u64::from(index) * BLOCK_SIZE;
    let end = base + block_len;
    // A short block is the object's last: the file must end with it.
    if found < end || (block_len < BLOCK_SIZE && found != end) {
        return Err(Fault::Damaged(Damage::Length {
            found,
            expected: end,
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
    let n = match read_full(&file, target, base + start, wait) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Fault::WouldBlock),
        Err(_) => return Err(Fault::Gone),
    };
    if n < span {
        // Cut short since the length check.
        return Err(Fault::Damaged(Damage::Length {
            found: base + start + n as u64,
            expected: end,
        }));
    }
    if let Some(chunk) = bad_chunk(target, sums, first) {
        return Err(Fault::Damaged(Damage::Checksum { chunk }));
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
    if let Ok(file) = open_for_write(path, false) {
        let _ = file.set_modified(when);
    }
}

#[cfg(test)]
#[path = "disk_tests.rs"]
pub(crate) mod tests;
