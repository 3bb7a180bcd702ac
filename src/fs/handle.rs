//! Open files: opening (read-only inline when possible, for writing through staging),
//! reading (local bytes, then the cache, then S3) and releasing. Each handle owns its
//! data source (docs/SEMANTICS.md "What an open file sees").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tracing::warn;

use super::access::{self, Identity};
use super::inode::{Ino, Node};
use super::life::SyncLife;
use super::passthrough::{Candidate, IoMode};
use super::{sync, FsCore, FsError, FsResult};
use crate::export::staging::StagedFile;
use crate::read::{ObjectReader, Version};
use crate::store::StoreError;

/// An open file handle. It owns its data source: the staged bytes it was opened on, or
/// the object version. Local bytes of the node win over the source for every reader
/// (read-your-writes across handles); a handle whose staged source went away (its
/// change lost a conflict, or S3 changed under clean bytes) fails with EIO.
pub(super) struct OpenFile {
    pub(super) node: Arc<Node>,
    pub(super) source: HandleSource,
    pub(super) writable: bool,
    /// How the kernel serves it (`passthrough`); Direct if its backing was refused.
    pub(super) io: Mutex<IoMode>,
    /// The node's `conflicts_lost` when the handle was opened.
    pub(super) conflicts_lost: u32,
}

pub(super) enum HandleSource {
    /// Local bytes (a file being written, clean bytes, a lost+found file).
    Staged(Arc<StagedFile>),
    /// An object version in S3.
    Object(ObjectReader),
    /// Nothing to read (an entry with no object, e.g. deleted meanwhile).
    Empty,
}

impl OpenFile {
    pub(super) fn mode(&self) -> IoMode {
        self.io.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The staged bytes a write on this handle goes to.
    pub(super) fn write_target(&self) -> FsResult<Arc<StagedFile>> {
        match (&self.source, self.writable) {
            (HandleSource::Staged(staged), true) => Ok(staged.clone()),
            _ => Err(FsError::BadHandle),
        }
    }
}

/// EISDIR for a directory; EINVAL for a FIFO or socket, whose opens the kernel serves
/// itself (only an in-process caller gets here): they have no data to read from S3.
fn refuse_open(state: &super::inode::NodeState) -> FsResult<()> {
    if state.is_dir {
        return Err(FsError::IsDir);
    }
    if !super::kind_of(state).has_body() {
        return Err(FsError::Invalid);
    }
    Ok(())
}

/// Open file handles a mount allows at once: S3 Files' limit per mount. One more is
/// ENFILE (the whole file system's table is full, not the caller's).
pub const MAX_OPEN_FILES: usize = 65_536;

/// One reserved place in the open-file count, taken before an open does any work and
/// handed to the handle it makes; dropped unused (the open failed), it frees the place.
pub(super) struct HandleSlot<'a>(Option<&'a AtomicUsize>);

impl Drop for HandleSlot<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl FsCore {
    /// Reserves a place for one more open file; ENFILE at `MAX_OPEN_FILES`.
    pub(super) fn reserve_handle(&self) -> FsResult<HandleSlot<'_>> {
        self.open_files
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_OPEN_FILES).then_some(n + 1)
            })
            .map_err(|_| FsError::TooManyOpenFiles)?;
        Ok(HandleSlot(Some(&self.open_files)))
    }

    /// Open file handles now.
    pub fn open_files(&self) -> usize {
        self.open_files.load(Ordering::Acquire)
    }

    /// Opens a file. `write` and `truncate` say what the open asked for; a file opened
    /// for writing gets local bytes in the staging area.
    /// Returns the handle and whether the kernel may keep the pages it cached from an
    /// earlier open (the same object version, no local bytes in between).
    pub async fn open(
        &self,
        caller: Identity,
        ino: Ino,
        write: bool,
        truncate: bool,
    ) -> FsResult<(u64, bool)> {
        self.open_with(caller, ino, write, truncate, false).await
    }

    /// `open`, for an open that may ask for direct I/O (`O_DIRECT`): a read-only one is
    /// then answered by the daemon from its cache rather than passed through to the
    /// cache disk (see `NodeIo::admit`).
    pub async fn open_with(
        &self,
        caller: Identity,
        ino: Ino,
        write: bool,
        truncate: bool,
        direct: bool,
    ) -> FsResult<(u64, bool)> {
        let node = self.node(ino)?;
        refuse_open(&node.state())?;
        let slot = self.reserve_handle()?;
        if write || truncate {
            if self.queue.is_none() {
                return Err(self.refuse_write());
            }
            self.check(caller, &node, access::WRITE).await?;
            if !write {
                self.check(caller, &node, access::READ).await?;
            }
            let staged = self.open_for_write(&node, truncate).await?;
            node.state().page_cache_etag = None;
            return Ok((self.add_write_handle(node, staged, write, slot)?, false));
        }
        self.check(caller, &node, access::READ).await?;
        self.ensure_meta(&node).await?;
        let cache = if direct {
            None
        } else {
            self.prepare_cache_candidate(&node).await
        };
        self.open_for_read(node, slot, cache, direct)
    }

    /// The node's wholly cached object as a passthrough candidate, verified on a blocking
    /// thread when it is large (reading a big file to check it must not hold up others).
    async fn prepare_cache_candidate(&self, node: &Arc<Node>) -> Option<Candidate> {
        if !self.wants_offline_verify(node) {
            return self.cache_candidate(node, true);
        }
        let cache = self.cache().clone();
        let (object, size) = {
            let state = node.state();
            let remote = state.remote.as_ref()?;
            (
                crate::cache::ObjectId::new(&state.key, remote.etag.as_deref()?),
                remote.size,
            )
        };
        let backing = tokio::task::spawn_blocking(move || cache.backing(object, size))
            .await
            .ok()??;
        Some(Candidate::Cache(object, backing))
    }

    /// A read-only open answered without waiting: the node's metadata is known, so the
    /// permission check and the handle need no request to S3. None: use `open`.
    pub fn open_cached(
        &self,
        caller: Identity,
        ino: Ino,
        write: bool,
        truncate: bool,
        direct: bool,
    ) -> Option<FsResult<(u64, bool)>> {
        if write || truncate {
            return None;
        }
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(e) => return Some(Err(e)),
        };
        let meta = {
            let state = node.state();
            if let Err(e) = refuse_open(&state) {
                return Some(Err(e));
            }
            if state.sync.is_local() {
                return None;
            }
            state.meta?
        };
        // A large wholly cached object is verified off the FUSE thread.
        if !direct && self.wants_offline_verify(&node) {
            return None;
        }
        if let Err(e) = self.check_known(caller, meta, false, access::READ) {
            return Some(Err(e));
        }
        let slot = match self.reserve_handle() {
            Ok(slot) => slot,
            Err(e) => return Some(Err(e)),
        };
        let cache = if direct {
            None
        } else {
            self.cache_candidate(&node, true)
        };
        Some(self.open_for_read(node, slot, cache, direct))
    }

    /// Registers a read-only handle; says whether the kernel may keep cached pages.
    pub(super) fn open_for_read(
        &self,
        node: Arc<Node>,
        slot: HandleSlot<'_>,
        cache: Option<Candidate>,
        direct: bool,
    ) -> FsResult<(u64, bool)> {
        let keep_cache = {
            let mut state = node.state();
            let etag = match (&state.sync, &state.remote) {
                (SyncLife::Remote, Some(remote)) => remote.etag.clone(),
                _ => None,
            };
            let keep = etag.is_some() && state.page_cache_etag == etag;
            state.page_cache_etag = etag;
            keep
        };
        self.import_on_open(&node);
        Ok((self.add_handle(node, slot, cache, direct)?, keep_cache))
    }

    /// Registers a handle on a node, reading from the node's local bytes if it has
    /// them, else from its object version (a pending copy's source, or `remote`).
    pub(super) fn add_handle(
        &self,
        node: Arc<Node>,
        slot: HandleSlot<'_>,
        cache: Option<Candidate>,
        direct: bool,
    ) -> FsResult<u64> {
        let source = {
            let mut state = node.state();
            state.handles += 1;
            if let Some(staged) = state.sync.staged() {
                HandleSource::Staged(staged.clone())
            } else {
                let version = match state.sync.pending().and_then(|c| c.source.clone()) {
                    Some(source) => Some(Version::new(source.key, source.etag, source.size)),
                    None => state
                        .remote
                        .as_ref()
                        .map(|r| Version::new(state.key.clone(), r.etag.clone(), r.size)),
                };
                match version {
                    Some(version) => HandleSource::Object(ObjectReader::new(
                        self.fetcher.clone(),
                        self.budget.clone(),
                        version,
                    )),
                    None => HandleSource::Empty,
                }
            }
        };
        self.insert_handle(node, source, false, slot, cache, direct)
    }

    /// Registers a handle that writes to (and reads from) `staged`.
    pub(super) fn add_write_handle(
        &self,
        node: Arc<Node>,
        staged: Arc<StagedFile>,
        writable: bool,
        slot: HandleSlot<'_>,
    ) -> FsResult<u64> {
        node.state().handles += 1;
        self.insert_handle(
            node,
            HandleSource::Staged(staged),
            writable,
            slot,
            None,
            false,
        )
    }

    pub(super) fn insert_handle(
        &self,
        node: Arc<Node>,
        source: HandleSource,
        writable: bool,
        mut slot: HandleSlot<'_>,
        cache: Option<Candidate>,
        direct: bool,
    ) -> FsResult<u64> {
        // A cache candidate only for a handle that reads the object it is a copy of.
        let cache = cache.filter(|_| matches!(source, HandleSource::Object(_)));
        // The caller counted the handle on the node (with its choice of source).
        let io = match self.admit_io(&node, &source, writable, cache, direct) {
            Ok(io) => io,
            Err(e) => {
                let mut state = node.state();
                state.handles = state.handles.saturating_sub(1);
                return Err(e);
            }
        };
        // The handle holds the place now; `release` frees it.
        slot.0 = None;
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let conflicts_lost = node.state().conflicts_lost;
        self.files.insert(
            handle,
            Arc::new(OpenFile {
                node,
                source,
                writable,
                io: Mutex::new(io),
                conflicts_lost,
            }),
        );
        Ok(handle)
    }

    pub(super) fn handle(&self, handle: u64) -> FsResult<Arc<OpenFile>> {
        self.files
            .get(&handle)
            .map(|f| f.value().clone())
            .ok_or(FsError::BadHandle)
    }

    /// The read, if it can be answered without waiting on the network (local bytes, or
    /// every block in the cache): the FUSE adapter answers these inline.
    pub fn read_cached(&self, handle: u64, offset: u64, len: u32) -> Option<FsResult<Bytes>> {
        let file = match self.handle(handle) {
            Ok(file) => file,
            Err(e) => return Some(Err(e)),
        };
        if let Some(result) = self.read_local(&file, offset, len) {
            return Some(result);
        }
        let HandleSource::Object(reader) = &file.source else {
            return None;
        };
        let data = reader.read_cached(offset, len)?;
        self.metrics
            .bytes_read
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Some(Ok(data))
    }

    /// Reads local bytes, if the file has them: they win over S3 (read-your-writes, across
    /// handles too). A handle opened on staged bytes that are gone gets EIO.
    pub(super) fn read_local(
        &self,
        file: &OpenFile,
        offset: u64,
        len: u32,
    ) -> Option<FsResult<Bytes>> {
        let (current, lost) = {
            let state = file.node.state();
            (state.sync.staged().cloned(), state.conflicts_lost)
        };
        if lost != file.conflicts_lost {
            // Opened on the object, the handle then saw the local bytes of a change made
            // here (as on a local disk: one file), and those lost a conflict: it must not
            // go back to an older version, nor on to the bucket's.
            return Some(Err(FsError::Io));
        }
        let staged = match (current, &file.source) {
            // A handle opened on local bytes reads only those: if the node now has
            // others, its own went away (the bucket won) and it must not switch.
            (Some(staged), HandleSource::Staged(own)) if !Arc::ptr_eq(&staged, own) => {
                return Some(Err(FsError::Io));
            }
            (Some(staged), _) => staged,
            (None, HandleSource::Staged(_)) => {
                // The bytes this handle read and wrote lost a conflict or were replaced
                // (or removed) by a change in S3: never serve another version through
                // it. (A file unlinked here keeps its bytes on the node.)
                return Some(Err(FsError::Io));
            }
            (None, _) => return None,
        };
        let mut buf = vec![0u8; len as usize];
        let n = match staged.read_at(&mut buf, offset) {
            Ok(n) => n,
            Err(e) => return Some(Err(sync::io_error(e))),
        };
        buf.truncate(n);
        self.metrics
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        Some(Ok(Bytes::from(buf)))
    }

    pub async fn read(&self, handle: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        let file = self.handle(handle)?;
        if let Some(result) = self.read_local(&file, offset, len) {
            return result;
        }
        let HandleSource::Object(reader) = &file.source else {
            return Ok(Bytes::new());
        };
        match reader.read(offset, len).await {
            Ok(data) => {
                self.metrics
                    .bytes_read
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(data)
            }
            Err(StoreError::PreconditionFailed) => {
                let key = file.node.state().key.clone();
                warn!(
                    key,
                    "object changed in S3 while open; reopen to read the new version"
                );
                // The next lookup or getattr fetches the new version's metadata.
                file.node.state().meta = None;
                Err(self.store_error(&key, StoreError::PreconditionFailed))
            }
            Err(e) => {
                let key = file.node.state().key.clone();
                Err(self.store_error(&key, e))
            }
        }
    }

    pub fn release(&self, handle: u64) {
        let Some((_, file)) = self.files.remove(&handle) else {
            return;
        };
        self.open_files.fetch_sub(1, Ordering::AcqRel);
        // Writes made through the kernel are recorded before the node may go clean.
        let mode = file.mode();
        self.forget_io(&file, &mode);
        let forget = {
            let mut state = file.node.state();
            state.handles = state.handles.saturating_sub(1);
            if state.handles > 0 {
                None
            } else {
                match &state.sync {
                    // Clean local bytes (already exported) go with the last handle.
                    SyncLife::Clean { id, .. } => {
                        let id = *id;
                        state.sync = SyncLife::Remote;
                        Some(id)
                    }
                    // Unlinked or replaced while open: its bytes go with the last handle
                    // (its record was dropped, so nothing exports them).
                    SyncLife::Pending(change) if !state.linked && change.staged.is_some() => {
                        let id = change.id;
                        state.sync = SyncLife::Remote;
                        Some(id)
                    }
                    _ => {
                        // Waiting for export: keep the bytes, not the descriptor.
                        if let Some(staged) = state.sync.staged() {
                            staged.close_idle();
                        }
                        None
                    }
                }
            }
        };
        if let (Some(id), Some(queue)) = (forget, self.queue.as_ref()) {
            queue.forget_staged(id);
        }
    }
}
