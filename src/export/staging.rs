//! The staging area: the local bytes of files with unexported changes, one file per
//! journal record in CACHE_DIR/staging/<id>. Writes land here at local-disk speed; a
//! write that returned is in the kernel's page cache, so it survives a killed daemon,
//! and `sync` makes it survive power loss.
//!
//! Exports read a file while writers may still be at it. A write counter and an
//! in-flight counter (a seqlock for many writers) let an exporter prove that what it
//! read is one consistent version, never a mix.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::file_pool::FilePool;
use crate::local_state::DIR_MODE;

#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    /// Empty files made ahead of time, so a create on a request does not allocate an
    /// inode itself.
    pool: FilePool,
}

impl Staging {
    pub fn open(cache_dir: &Path) -> std::io::Result<Self> {
        let dir = cache_dir.join("staging");
        // Private whatever the mode of the file on the mount (docs/CONFIGURATION.md).
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)?;
        let pool = FilePool::new(dir.clone());
        Ok(Staging { dir, pool })
    }

    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}"))
    }

    /// Creates (or truncates) the staging file for `id`.
    pub fn create(&self, id: u64) -> std::io::Result<StagedFile> {
        let path = self.path(id);
        let file = match self.pool.take(&path) {
            Some(file) => file,
            None => crate::local_state::create_private(&path)?,
        };
        Ok(StagedFile::new(path, Some(file), 0))
    }

    /// An existing staging file (after a restart); opened when first used.
    pub fn reopen(&self, id: u64) -> std::io::Result<StagedFile> {
        StagedFile::open_path(&self.path(id))
    }

    /// Ends the file pool's thread (creates then make their own files).
    pub fn stop_pool(&self) {
        self.pool.stop();
    }

    pub fn remove(&self, id: u64) {
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Bytes the staging files hold on disk (allocated blocks, so sparse files count
    /// what they use).
    pub fn disk_bytes(&self) -> std::io::Result<u64> {
        let mut bytes = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            // A file removed between the listing and here holds nothing any more.
            if let Ok(meta) = entry?.metadata() {
                bytes += meta.blocks() * 512;
            }
        }
        Ok(bytes)
    }

    /// Ids of every staging file present (to find orphans after a crash).
    pub fn ids(&self) -> std::io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// The bytes of one staged file. Its descriptor is opened on demand and closed when
/// the file goes idle (`close_idle`), so thousands of files waiting for export do not
/// hold thousands of descriptors.
#[derive(Debug)]
pub struct StagedFile {
    path: PathBuf,
    file: Mutex<Option<Arc<File>>>,
    size: AtomicU64,
    /// Completed changes (writes, truncates).
    changes: AtomicU64,
    /// Changes under way.
    in_flight: AtomicU64,
    /// Handles whose writes the kernel makes to this file directly (FUSE passthrough):
    /// they bypass `write_at`, so while any is open the size and the changes are read
    /// off the file itself.
    external: AtomicU32,
    /// The file as last seen by `external_changes`.
    stamp: Mutex<Option<Stamp>>,
}

/// What a write leaves on a file: its length and change times. Any write(2) updates
/// mtime and ctime (at the start of the write, before the bytes are copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub mtime: SystemTime,
    ctime_ns: i128,
}

impl Stamp {
    fn of(file: &File) -> std::io::Result<Self> {
        let m = file.metadata()?;
        Ok(Stamp {
            len: m.len(),
            mtime: m.modified()?,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }
}

/// Writes landing within this long of a stamp may share its (coarse, clock-tick)
/// timestamps: a read that starts this soon after the file's last change cannot prove
/// no write overlapped it, so it is tried again later.
const TIMESTAMP_GRAIN: Duration = Duration::from_millis(50);

/// A token proving no change happened between `begin_read` and `end_read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadToken {
    changes: u64,
    clean: bool,
    /// The file's stamp, taken when writers outside the daemon were on it.
    stamp: Option<Stamp>,
}

impl StagedFile {
    /// Opens a local file kept elsewhere (lost+found) the same way.
    pub fn open_path(path: &Path) -> std::io::Result<Self> {
        let len = std::fs::metadata(path)?.len();
        Ok(StagedFile::new(path.to_path_buf(), None, len))
    }

    fn new(path: PathBuf, file: Option<File>, size: u64) -> Self {
        StagedFile {
            path,
            file: Mutex::new(file.map(Arc::new)),
            size: AtomicU64::new(size),
            changes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            external: AtomicU32::new(0),
            stamp: Mutex::new(None),
        }
    }

    pub fn size(&self) -> u64 {
        if self.has_external_writers() {
            // Passthrough writes grow the file without telling us.
            if let Ok(len) = self.fd().and_then(|f| f.metadata()).map(|m| m.len()) {
                return len;
            }
        }
        self.size.load(Ordering::Acquire)
    }

    /// The open descriptor (opened if it was closed), e.g. to hand to the kernel.
    pub fn file(&self) -> std::io::Result<Arc<File>> {
        self.fd()
    }

    /// A handle that writes through the kernel directly now uses the file.
    pub fn add_external_writer(&self) -> std::io::Result<()> {
        let stamp = Stamp::of(&*self.fd()?)?;
        let mut seen = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if self.external.fetch_add(1, Ordering::AcqRel) == 0 {
            *seen = Some(stamp);
        }
        Ok(())
    }

    /// Such a handle was released (call `external_changes` first, to see its last writes).
    pub fn remove_external_writer(&self) {
        let _ = self
            .external
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn has_external_writers(&self) -> bool {
        self.external.load(Ordering::Acquire) > 0
    }

    /// Whether writers outside the daemon changed the file since it was last looked at:
    /// its new mtime if they did (the caller records the change). Each change is
    /// reported once.
    pub fn external_changes(&self) -> std::io::Result<Option<SystemTime>> {
        if !self.has_external_writers() {
            return Ok(None);
        }
        let now = Stamp::of(&*self.fd()?)?;
        let mut seen = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == Some(now) {
            return Ok(None);
        }
        *seen = Some(now);
        self.size.store(now.len, Ordering::Release);
        self.changes.fetch_add(1, Ordering::AcqRel);
        Ok(Some(now.mtime))
    }

    /// The file's current stamp, when writers outside the daemon may change it.
    fn external_stamp(&self) -> Option<Stamp> {
        if !self.has_external_writers() {
            return None;
        }
        self.fd().and_then(|f| Stamp::of(&f)).ok()
    }

    /// The open descriptor, opening the file if it was closed.
    fn fd(&self) -> std::io::Result<Arc<File>> {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = slot.as_ref() {
            return Ok(file.clone());
        }
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(&self.path)?);
        *slot = Some(file.clone());
        Ok(file)
    }

    /// Closes the descriptor until the next use.
    pub fn close_idle(&self) {
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.change(|| {
            self.fd()?.write_all_at(data, offset)?;
            self.size
                .fetch_max(offset + data.len() as u64, Ordering::AcqRel);
            Ok(())
        })
    }

    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.change(|| {
            self.fd()?.set_len(len)?;
            self.size.store(len, Ordering::Release);
            Ok(())
        })
    }

    /// Reads at most `buf.len()` bytes at `offset`; fewer only at the end of the file.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let end = self.size().min(offset + buf.len() as u64);
        if offset >= end {
            return Ok(0);
        }
        let want = (end - offset) as usize;
        let file = self.fd()?;
        let mut done = 0;
        while done < want {
            match file.read_at(&mut buf[done..want], offset + done as u64)? {
                0 => {
                    // Sparse tail beyond the data written: zeros.
                    buf[done..want].fill(0);
                    done = want;
                }
                n => done += n,
            }
        }
        Ok(want)
    }

    pub fn sync(&self) -> std::io::Result<()> {
        self.fd()?.sync_data()
    }

    /// Changes completed so far (a version number for the exporter).
    pub fn version(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub fn begin_read(&self) -> ReadToken {
        let changes = self.changes.load(Ordering::Acquire);
        let clean = self.in_flight.load(Ordering::Acquire) == 0;
        let stamp = self.external_stamp();
        // A change too recent to be told apart from the next one by its timestamps.
        let settled =
            stamp.is_none_or(|s| s.mtime.elapsed().is_ok_and(|age| age >= TIMESTAMP_GRAIN));
        ReadToken {
            changes,
            clean: clean && settled,
            stamp,
        }
    }

    /// True when nothing changed the file since `token` was taken.
    pub fn end_read(&self, token: ReadToken) -> bool {
        let idle = self.in_flight.load(Ordering::Acquire) == 0;
        // Writes through the kernel show only on the file: its stamp must not have
        // moved (and a writer that arrived during the read makes the read unprovable).
        let external_same = token.stamp == self.external_stamp();
        token.clean
            && idle
            && external_same
            && self.changes.load(Ordering::Acquire) == token.changes
    }

    fn change<T>(&self, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let result = f();
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reads_truncates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let f = staging.create(7).unwrap();
        // Private whatever the process's umask (the test runner's is looser).
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&staging.path(7)), 0o600);
        assert_eq!(mode(&dir.path().join("staging")), 0o700);
        f.write_at(b"hello", 0).unwrap();
        f.write_at(b"world", 10).unwrap(); // sparse gap
        assert_eq!(f.size(), 15);
        let mut buf = vec![9u8; 20];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 15);
        assert_eq!(&buf[..15], b"hello\0\0\0\0\0world");
        f.set_len(3).unwrap();
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 3);
        f.set_len(6).unwrap();
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 6);
        assert_eq!(&buf[..6], b"hel\0\0\0");
        f.close_idle();
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 6, "reopens on demand");
        drop(f);
        let again = staging.reopen(7).unwrap();
        assert_eq!(again.size(), 6);
        assert_eq!(staging.ids().unwrap(), vec![7]);
        staging.remove(7);
        assert!(staging.ids().unwrap().is_empty());
    }

    /// A create for an id whose file exists truncates that very file (readers holding it,
    /// such as the kernel through passthrough, see the change), whether or not the file
    /// pool has a ready file to offer.
    #[test]
    fn creating_an_existing_id_truncates_the_same_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        for id in 1..=3 {
            let f = staging.create(id).unwrap();
            f.write_at(b"old bytes", 0).unwrap();
        }
        staging.pool.wait_ready(1);
        let before = std::fs::metadata(staging.path(2)).unwrap().ino();
        let again = staging.create(2).unwrap();
        assert_eq!(std::fs::metadata(staging.path(2)).unwrap().ino(), before);
        assert_eq!(again.size(), 0);
        assert_eq!(std::fs::read(staging.path(2)).unwrap(), b"");
        let mut ids = staging.ids().unwrap();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn read_tokens_detect_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = Staging::open(dir.path()).unwrap().create(1).unwrap();
        f.write_at(b"a", 0).unwrap();
        let token = f.begin_read();
        assert!(f.end_read(token));
        let token = f.begin_read();
        f.write_at(b"b", 1).unwrap();
        assert!(!f.end_read(token));
    }
}
