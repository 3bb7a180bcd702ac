//! FUSE passthrough: an open file whose bytes are local (its staged file, or an object
//! version wholly in the disk cache) is handed to the kernel, which then reads and writes
//! that local file itself, with no round trip to the daemon per read or write
//! (docs/SEMANTICS.md "Passthrough").
//!
//! The kernel's rules, which the choice here follows (fs/fuse/iomode.c): while an inode
//! has passthrough opens, every new open of it must be passed through to the same backing
//! file, and while it has opens served through its page cache none may be passed through
//! (either mistake fails the open with EIO). So:
//! - an inode with no passthrough open: a new open is passed through when its bytes are
//!   local and no open uses the page cache, else it uses the page cache;
//! - an inode with passthrough opens: a new open is passed through to the same file. A
//!   writer on a cached object's file first adopts that file as its staged bytes (it is
//!   moved from the cache to staging, so readers see the writes). A reader of an object
//!   version that changed in S3 meanwhile shares the older cached bytes until every
//!   handle on them is closed. An open that would need other bytes (the bucket won a
//!   conflict over the staged bytes the inode is passed through to) fails with EIO, as
//!   reads of those handles do through the daemon.
//!
//! Writes through the kernel bypass the daemon, so the staged file is watched instead:
//! its length and change times are read off the file at getattr, setattr, fsync and
//! release, and once a second while such a writer is open (`watch_external_writes`); a
//! change found there is recorded as a write would have been.

use std::any::Any;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::handle::{HandleSource, OpenFile};
use super::inode::{Node, NodeState};
use super::life::SyncLife;
use super::FsCore;
use crate::cache::{CacheBacking, ObjectId};
use crate::export::staging::StagedFile;

/// Objects up to this size may be verified for passthrough on the FUSE thread itself
/// (reading 1 MiB to check its checksums takes well under a millisecond from the page
/// cache); larger ones are verified on a blocking thread.
pub(super) const INLINE_VERIFY: u64 = 1 << 20;

/// The kernel's registration of a backing file (the adapter's `fuser::BackingId`),
/// opaque to the core.
pub type Registration = Arc<dyn Any + Send + Sync>;

/// A local file the kernel reads (and writes) directly for an inode's passthrough opens.
pub struct Backing {
    file: Arc<File>,
    /// What the file is; a cache file becomes staged bytes when a writer adopts it.
    what: Mutex<BackingOf>,
    /// Made at the first open that needs it; closed when the last handle using this
    /// backing goes (the `Registration` is dropped with it).
    registration: Mutex<Option<Registration>>,
}

enum BackingOf {
    Staged(Arc<StagedFile>),
    /// Holding the `CacheBacking` keeps the cache from changing the file's bytes.
    Cache(ObjectId, #[allow(dead_code)] CacheBacking),
}

impl Backing {
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The kernel's registration of the file, made by `register` for the first open that
    /// needs it. The lock is held across `register`, an ioctl on the FUSE device that
    /// waits for no request, so that two opens never register one file twice.
    pub fn registration<E>(
        &self,
        register: impl FnOnce(&File) -> Result<Registration, E>,
    ) -> Result<Registration, E> {
        let mut slot = self.registration.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = slot.as_ref() {
            return Ok(existing.clone());
        }
        let made = register(&self.file)?;
        *slot = Some(made.clone());
        Ok(made)
    }

    fn what(&self) -> std::sync::MutexGuard<'_, BackingOf> {
        self.what.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is(&self, candidate: &Candidate) -> bool {
        match (&*self.what(), candidate) {
            (BackingOf::Staged(a), Candidate::Staged(b, _)) => Arc::ptr_eq(a, b),
            (BackingOf::Cache(a, _), Candidate::Cache(b, _)) => a == b,
            _ => false,
        }
    }

    pub(super) fn staged(&self) -> Option<Arc<StagedFile>> {
        match &*self.what() {
            BackingOf::Staged(staged) => Some(staged.clone()),
            BackingOf::Cache(..) => None,
        }
    }

    /// The cached object version this file holds, if it is a cache file.
    pub(super) fn cached_object(&self) -> Option<ObjectId> {
        match &*self.what() {
            BackingOf::Cache(object, _) => Some(*object),
            BackingOf::Staged(_) => None,
        }
    }

    /// The file is now `staged`'s bytes (moved from the cache by a writer).
    pub(super) fn adopted_as(&self, staged: Arc<StagedFile>) {
        *self.what() = BackingOf::Staged(staged);
    }
}

/// Local bytes an open could be passed through to, prepared before the node is locked
/// (opening and verifying files is disk I/O).
pub(super) enum Candidate {
    Staged(Arc<StagedFile>, Arc<File>),
    Cache(ObjectId, CacheBacking),
}

/// How the kernel serves an open file's reads and writes.
#[derive(Clone)]
pub enum IoMode {
    /// Through the daemon and the kernel's page cache.
    Cached,
    /// Through the daemon, bypassing the page cache (FOPEN_DIRECT_IO).
    Direct,
    /// The kernel reads and writes the backing file itself.
    Passthrough(Arc<Backing>),
}

impl IoMode {
    pub fn name(&self) -> &'static str {
        match self {
            IoMode::Cached => "cached",
            IoMode::Direct => "direct",
            IoMode::Passthrough(_) => "passthrough",
        }
    }
}

/// A node's open handles by how the kernel serves them (the kernel's rules above).
#[derive(Default)]
pub struct NodeIo {
    cached: u32,
    passthrough: Option<(Arc<Backing>, u32)>,
}

impl std::fmt::Debug for NodeIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIo")
            .field("cached", &self.cached)
            .field("passthrough", &self.passthrough.as_ref().map(|(_, n)| *n))
            .finish()
    }
}

impl NodeIo {
    /// The backing the node's passthrough handles share, if any.
    pub(super) fn backing(&self) -> Option<&Arc<Backing>> {
        self.passthrough.as_ref().map(|(b, _)| b)
    }

    /// Picks the mode of a new handle and counts it (the kernel's rules, above). `start`:
    /// whether `candidate` may become the node's backing when it has none. `direct`: a
    /// reader that asked for direct I/O (`O_DIRECT`), answered by the daemon from the
    /// cache (memory, or the cache file through the page cache: a hit, not a device
    /// read) unless the node's handles are passed through, which it must then join.
    /// None: the open cannot be served (EIO).
    fn admit(
        &mut self,
        candidate: Option<Candidate>,
        writable: bool,
        start: bool,
        direct: bool,
    ) -> Option<IoMode> {
        if let Some((backing, n)) = &mut self.passthrough {
            // The same bytes, or (a reader) an older version's cached bytes.
            let shareable = candidate.as_ref().is_some_and(|c| backing.is(c))
                || (!writable && backing.cached_object().is_some());
            if !shareable {
                return None;
            }
            *n += 1;
            return Some(IoMode::Passthrough(backing.clone()));
        }
        if direct && !writable {
            // Direct handles are outside the kernel's io modes: not counted.
            return Some(IoMode::Direct);
        }
        Some(match candidate {
            Some(c) if start && self.cached == 0 => {
                let (file, what) = match c {
                    Candidate::Staged(staged, file) => (file, BackingOf::Staged(staged)),
                    Candidate::Cache(object, cache) => {
                        let file = cache.file().try_clone().map(Arc::new);
                        match file {
                            Ok(file) => (file, BackingOf::Cache(object, cache)),
                            Err(_) => {
                                self.cached += 1;
                                return Some(IoMode::Cached);
                            }
                        }
                    }
                };
                let backing = Arc::new(Backing {
                    file,
                    what: Mutex::new(what),
                    registration: Mutex::new(None),
                });
                self.passthrough = Some((backing.clone(), 1));
                IoMode::Passthrough(backing)
            }
            _ => {
                self.cached += 1;
                IoMode::Cached
            }
        })
    }

    /// Uncounts a released handle; returns the backing when it was the last to use it,
    /// for the caller to drop once the node is unlocked (dropping closes the kernel's
    /// registration).
    fn release(&mut self, mode: &IoMode) -> Option<Arc<Backing>> {
        match mode {
            IoMode::Cached => {
                self.cached = self.cached.saturating_sub(1);
                None
            }
            IoMode::Direct => None,
            IoMode::Passthrough(backing) => match &mut self.passthrough {
                Some((ours, n)) if Arc::ptr_eq(ours, backing) => {
                    *n -= 1;
                    if *n == 0 {
                        self.passthrough.take().map(|(b, _)| b)
                    } else {
                        None
                    }
                }
                _ => None,
            },
        }
    }
}

/// Whether this mount passes files through, and if not, why.
pub struct PassthroughState {
    on: AtomicBool,
    why_off: Mutex<String>,
}

impl Default for PassthroughState {
    fn default() -> Self {
        PassthroughState {
            on: AtomicBool::new(false),
            why_off: Mutex::new("not negotiated with the kernel".into()),
        }
    }
}

impl PassthroughState {
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// "on", or "off (why)".
    pub fn describe(&self) -> String {
        if self.is_on() {
            "on".into()
        } else {
            let why = self.why_off.lock().unwrap_or_else(|e| e.into_inner());
            format!("off ({why})")
        }
    }
}

impl FsCore {
    /// The kernel accepted passthrough at INIT: open files with local bytes are handed
    /// to it from now on.
    pub fn enable_passthrough(&self) {
        self.passthrough.on.store(true, Ordering::Release);
        info!("passthrough on: local bytes are read and written by the kernel directly");
    }

    /// Passthrough is not used, for `why` (logged once, shown by `s3files status`).
    pub fn disable_passthrough(&self, why: &str) {
        let was_on = self.passthrough.on.swap(false, Ordering::AcqRel);
        let mut slot = self
            .passthrough
            .why_off
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if was_on || *slot != why {
            *slot = why.to_string();
            drop(slot);
            warn!("passthrough off: {why}; every read and write goes through the daemon");
        }
    }

    /// "on" or "off (why)", for status.
    pub fn passthrough_mode(&self) -> String {
        self.passthrough.describe()
    }

    /// How the node's open handles are served, e.g. "2 passthrough, 1 direct" (empty
    /// when none is open).
    pub(super) fn open_modes(&self, node: &Node) -> String {
        let (mut pass, mut direct, mut cached) = (0, 0, 0);
        for file in self.files.iter().filter(|f| f.node.ino == node.ino) {
            match file.mode() {
                IoMode::Passthrough(_) => pass += 1,
                IoMode::Direct => direct += 1,
                IoMode::Cached => cached += 1,
            }
        }
        [
            (pass, "passthrough"),
            (direct, "direct"),
            (cached, "through the daemon"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
    }

    /// How the kernel is to serve a new handle (chosen and counted when it was made).
    pub fn io_mode(&self, handle: u64) -> IoMode {
        match self.files.get(&handle) {
            Some(file) => file.io.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            None => IoMode::Cached,
        }
    }

    /// The kernel refused the backing of a handle that was to be passed through (the
    /// adapter then answers the open with direct I/O, which the kernel always allows):
    /// the handle is uncounted from its backing and passthrough is turned off.
    pub fn passthrough_failed(&self, handle: u64, why: &str) {
        self.disable_passthrough(why);
        let Some(file) = self.files.get(&handle).map(|f| f.value().clone()) else {
            return;
        };
        let old = std::mem::replace(
            &mut *file.io.lock().unwrap_or_else(|e| e.into_inner()),
            IoMode::Direct,
        );
        self.forget_io(&file, &old);
    }

    /// When the node's passthrough handles read a cached copy of its current object
    /// version: moves that file to `dest` as the node's staged bytes (before the node's
    /// state says so; the caller then records them and calls `adopted_as`).
    pub(super) fn adopt_backing(
        &self,
        node: &Node,
        dest: std::path::PathBuf,
    ) -> Option<(Arc<StagedFile>, Arc<Backing>)> {
        let (backing, object, size) = {
            let state = node.state();
            let backing = state.io.backing()?.clone();
            let object = backing.cached_object()?;
            let remote = state.remote.as_ref()?;
            let current = ObjectId::new(&state.key, remote.etag.as_deref()?);
            if !matches!(state.sync, SyncLife::Remote) || current != object {
                return None;
            }
            (backing, object, remote.size)
        };
        if let Err(e) = self.cache().adopt(object, size, &dest) {
            warn!(ino = node.ino, "cannot move a cached file to staging: {e}");
            return None;
        }
        match StagedFile::open_path(&dest) {
            Ok(staged) => Some((Arc::new(staged), backing)),
            Err(e) => {
                warn!(ino = node.ino, "cannot open a staged file: {e}");
                None
            }
        }
    }

    /// Local bytes a new handle on `source` could be passed through to, and whether they
    /// may become the node's backing. A writer starts passthrough only on a pending
    /// change's bytes: a clean file's first write is best seen by the daemon, which
    /// records the change before the write returns (a writer that joins other
    /// passthrough handles has its writes found by `watch_external_writes`).
    fn staged_candidate(
        &self,
        state: &NodeState,
        source: &HandleSource,
        writable: bool,
    ) -> Option<(Arc<StagedFile>, bool)> {
        let HandleSource::Staged(staged) = source else {
            return None;
        };
        // The node's own bytes only (not those of a handle the bucket's change orphaned).
        if !state.sync.staged().is_some_and(|s| Arc::ptr_eq(s, staged)) {
            return None;
        }
        let pending = state.sync.pending().and_then(|c| c.staged.as_ref());
        let start = self.passthrough.is_on()
            && (!writable || pending.is_some_and(|p| Arc::ptr_eq(p, staged)));
        Some((staged.clone(), start))
    }

    /// The node's object version, when it is wholly in the disk cache: a file the
    /// kernel can read. `inline` false allows verifying any size (a blocking thread).
    pub(super) fn cache_candidate(&self, node: &Node, inline: bool) -> Option<Candidate> {
        if !self.passthrough.is_on() {
            return None;
        }
        let (object, size) = {
            let state = node.state();
            let remote = state.remote.as_ref()?;
            match (&state.sync, &remote.etag) {
                (SyncLife::Remote, Some(etag)) => (ObjectId::new(&state.key, etag), remote.size),
                _ => return None,
            }
        };
        if inline && size > INLINE_VERIFY {
            return None;
        }
        let backing = self.cache().backing(object, size)?;
        Some(Candidate::Cache(object, backing))
    }

    /// Whether a read-only open of `node` should go to a blocking thread to verify its
    /// cached bytes for passthrough (large and wholly cached).
    pub(super) fn wants_offline_verify(&self, node: &Node) -> bool {
        if !self.passthrough.is_on() {
            return false;
        }
        let state = node.state();
        match (&state.sync, &state.remote) {
            (SyncLife::Remote, Some(remote)) if remote.size > INLINE_VERIFY => {
                remote.etag.as_ref().is_some_and(|etag| {
                    let object = ObjectId::new(&state.key, etag);
                    self.cache().cached_bytes(object, remote.size) == remote.size
                })
            }
            _ => false,
        }
    }

    /// Chooses and counts a new handle's mode. `cache` is a prepared cache candidate
    /// (object sources); staged sources are prepared here.
    pub(super) fn admit_io(
        &self,
        node: &Node,
        source: &HandleSource,
        writable: bool,
        cache: Option<Candidate>,
        direct: bool,
    ) -> super::FsResult<IoMode> {
        let staged = {
            let state = node.state();
            self.staged_candidate(&state, source, writable)
        };
        // Opening the descriptor is disk I/O: before the node is locked.
        let (candidate, start) = match staged {
            Some((staged, start)) => match staged.file() {
                Ok(file) => (Some(Candidate::Staged(staged, file)), start),
                Err(_) => (None, false),
            },
            None => (cache, self.passthrough.is_on()),
        };
        let Some(mode) = node.state().io.admit(candidate, writable, start, direct) else {
            warn!(
                ino = node.ino,
                "cannot open: the file's earlier handles read and write bytes the bucket \
                 has replaced; open it again once they are closed"
            );
            return Err(super::FsError::Io);
        };
        if let (IoMode::Passthrough(backing), true) = (&mode, writable) {
            match backing.staged() {
                Some(staged) if staged.add_external_writer().is_ok() => {}
                _ => {
                    // A writer whose writes would go unseen: refused.
                    let last = node.state().io.release(&mode);
                    drop(last);
                    return Err(super::FsError::Io);
                }
            }
        }
        match &mode {
            IoMode::Passthrough(_) => self
                .metrics
                .opens_passthrough
                .fetch_add(1, Ordering::Relaxed),
            IoMode::Direct => self.metrics.opens_direct.fetch_add(1, Ordering::Relaxed),
            IoMode::Cached => 0,
        };
        Ok(mode)
    }

    /// Uncounts a handle's mode from its node (at release, or when its backing failed).
    pub(super) fn forget_io(&self, file: &OpenFile, mode: &IoMode) {
        if let (IoMode::Passthrough(backing), true) = (mode, file.writable) {
            if let Some(staged) = backing.staged() {
                // Its last writes first, then it stops counting as a writer.
                self.notice_external_writes_of(&file.node, &staged);
                staged.remove_external_writer();
            }
        }
        let last = file.node.state().io.release(mode);
        // Dropped unlocked: the last reference closes the kernel's registration.
        drop(last);
    }

    /// Records writes made to `node`'s staged file through the kernel, if any.
    pub(super) fn notice_external_writes(&self, node: &Node) {
        let staged = node.state().sync.staged().cloned();
        if let Some(staged) = staged {
            self.notice_external_writes_of(node, &staged);
        }
    }

    fn notice_external_writes_of(&self, node: &Node, staged: &Arc<StagedFile>) {
        match staged.external_changes() {
            Ok(Some(mtime)) => {
                // The file's times come from the kernel's coarse clock, a tick behind the
                // daemon's: a write never moves the recorded mtime back.
                let recorded = node.state().sync.local_meta().and_then(|m| m.mtime_ns);
                let when = match recorded {
                    Some(ns) => {
                        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
                        mtime.max(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
                    }
                    None => mtime,
                };
                // Fails only if the bytes are no longer the node's (a conflict moved
                // them to lost+found, or the file was replaced): nothing to record.
                let _ = self.mark_data_dirty_at(node, staged, when);
            }
            Ok(None) => {}
            Err(e) => warn!(ino = node.ino, "cannot stat a passthrough file: {e}"),
        }
    }

    /// Once a second: records the writes made through the kernel to files still open
    /// (so a long-open writer's changes are exported after the write-back delay, as the
    /// daemon's own writes are).
    pub fn watch_external_writes(&self) {
        let files: Vec<Arc<OpenFile>> = self
            .files
            .iter()
            .filter(|f| f.writable && matches!(f.mode(), IoMode::Passthrough(_)))
            .map(|f| f.value().clone())
            .collect();
        for file in files {
            if let IoMode::Passthrough(backing) = file.mode() {
                if let Some(staged) = backing.staged() {
                    self.notice_external_writes_of(&file.node, &staged);
                }
            }
        }
    }
}
