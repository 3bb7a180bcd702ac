//! Local changes: create, write, truncate, setattr, mkdir, rmdir, unlink, symlink,
//! rename, fsync. Each lands in the staging area and the export queue at once (through
//! `sync::commit`), and the queue sends it to S3 once quiet for the write-back delay.
//! docs/SEMANTICS.md "Export" is the contract.

use std::sync::Arc;
use std::time::SystemTime;

use super::access::{self, Identity};
use super::inode::{Ino, Node, NodeState};
use super::life::{Change, Source, SyncLife};
use super::namespace::{check_segment, name_error, MAX_DIR_DEPTH, MAX_KEY_LEN};
use super::sync::io_error;
use super::{Attr, FsCore, FsError, FsResult};
use crate::export::journal::{ExportKind, PendingExport};
use crate::export::staging::StagedFile;
use crate::posix::{
    nanos_since_epoch, PosixMeta, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};
use crate::store::{ObjectStore, StoreError};

/// Chunk size when an object version is copied into a staging file.
const MATERIALIZE_CHUNK: u64 = 8 << 20;

/// Why copying an object version into staging stopped.
pub(super) enum CopyInError {
    Store(StoreError),
    Local(std::io::Error),
}

/// Copies object version `source` into `staged`, in ranged GETs pinned to its ETag (so
/// the bytes are that version's or the copy fails).
pub(super) async fn copy_into_staging(
    store: &Arc<dyn ObjectStore>,
    source: &Source,
    staged: &StagedFile,
) -> Result<(), CopyInError> {
    let mut offset = 0;
    while offset < source.size {
        let end = source.size.min(offset + MATERIALIZE_CHUNK);
        let data = store
            .get_range(&source.key, offset..end, source.etag.as_deref())
            .await
            .map_err(CopyInError::Store)?;
        if data.is_empty() {
            break;
        }
        staged.write_at(&data, offset).map_err(CopyInError::Local)?;
        offset += data.len() as u64;
    }
    Ok(())
}
/// Longest symlink target accepted: S3 Files' limit, 4,080 bytes (a little under
/// Linux's PATH_MAX of 4,096, which the kernel enforces before asking us).
pub const MAX_SYMLINK_TARGET: usize = 4080;
/// Largest file: S3 Files' limit, 48 TiB (what multipart uploads are sized for).
pub const MAX_FILE_SIZE: u64 = 48 << 40;

/// How many of `len` bytes a write at `offset` may write: all of them below the size
/// limit, those up to it when the write crosses it (a short write, as Linux does at a
/// file system's size limit), and EFBIG when it starts at or past it.
pub(super) fn writable_len(offset: u64, len: usize) -> FsResult<usize> {
    if len == 0 {
        return Ok(0);
    }
    if offset >= MAX_FILE_SIZE {
        return Err(FsError::TooBig);
    }
    Ok(len.min((MAX_FILE_SIZE - offset).try_into().unwrap_or(usize::MAX)))
}

/// What a setattr asks to change.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
}

impl SetAttr {
    fn changes_metadata(&self) -> bool {
        self.mode.is_some() || self.uid.is_some() || self.gid.is_some() || self.mtime.is_some()
    }
}

/// A record for `key` of `kind`, based on `base`.
pub(super) fn record(
    id: u64,
    key: String,
    kind: ExportKind,
    base: Option<String>,
    meta: PosixMeta,
) -> PendingExport {
    PendingExport {
        id,
        key,
        kind,
        base_etag: base,
        meta,
        copy_from: None,
        copy_etag: None,
        copy_size: None,
        after: None,
    }
}

impl FsCore {
    /// The identity new entries are owned by (access point and root squash applied).
    pub(super) fn owner_for(&self, caller: Identity) -> Identity {
        self.effective(caller).owner()
    }

    /// The attributes an entry shows now, as an export would write them.
    pub(super) fn current_meta(&self, state: &NodeState) -> PosixMeta {
        if let Some(meta) = state.sync.local_meta() {
            return meta;
        }
        let fallback = state
            .remote
            .as_ref()
            .and_then(|r| r.last_modified)
            .unwrap_or(self.mounted_at);
        state
            .meta
            .unwrap_or_else(|| PosixMeta::default_for(state.is_dir))
            .with_mtime_or(fallback)
    }

    /// Checks a new entry's name and the parent's write permission; returns the name.
    async fn prepare_new_entry<'a>(
        &self,
        caller: Identity,
        dir: &Arc<Node>,
        name: &'a [u8],
        is_dir: bool,
    ) -> FsResult<&'a str> {
        self.queue()?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::Invalid)?;
        check_segment(name).map_err(|r| name_error(r, FsError::Invalid))?;
        self.require_dir(dir)?;
        if self.in_lost_found(dir) {
            return Err(FsError::Perm);
        }
        self.check(caller, dir, access::WRITE | access::EXEC)
            .await?;
        self.load_dir(dir).await?;
        let key_len = dir.state().key.len() + name.len() + usize::from(is_dir);
        if key_len > MAX_KEY_LEN {
            // S3 cannot hold the key: refuse now, not minutes later at export.
            return Err(FsError::NameTooLong);
        }
        if is_dir && self.depth_of(dir)? + 1 > MAX_DIR_DEPTH {
            // S3 Files' depth limit; the key limit above keeps new directories well
            // within it, so this guards the rule rather than a case met today.
            return Err(FsError::NameTooLong);
        }
        if self.inodes.child(dir, name).is_some() {
            return Err(FsError::Exists);
        }
        Ok(name)
    }

    fn new_meta(&self, caller: Identity, mode: u32) -> PosixMeta {
        let owner = self.owner_for(caller);
        PosixMeta {
            uid: owner.uid,
            gid: owner.gid,
            mode,
            mtime_ns: Some(nanos_since_epoch(SystemTime::now())),
        }
    }

    /// Adds a new local entry to `dir` with its record (an upload for a file or symlink
    /// with `staged` bytes, a marker for a directory) and counts the lookup. The journal
    /// line comes first: if it cannot be written, the entry never shows.
    fn add_local_entry(
        &self,
        dir: &Arc<Node>,
        name: &str,
        meta: PosixMeta,
        staged: Option<Arc<StagedFile>>,
        id: u64,
    ) -> FsResult<Arc<Node>> {
        let queue = self.queue()?;
        let is_dir = meta.mode & S_IFMT == S_IFDIR;
        let prefix = dir.state().key.clone();
        let (key, kind) = if is_dir {
            (format!("{prefix}{name}/"), ExportKind::Marker)
        } else {
            (format!("{prefix}{name}"), ExportKind::Upload)
        };
        let mut rec = record(id, key.clone(), kind, None, meta);
        queue.journal(&rec).map_err(io_error)?;
        if !is_dir {
            // Created where this mount removed a file whose delete is still pending: the
            // new file replaces that version instead.
            if let Some(seen) = queue.supersede_deletes(&key) {
                rec.base_etag = seen;
                queue.journal(&rec).map_err(io_error)?;
            }
        }
        let change = Change {
            id,
            meta,
            staged: staged.clone(),
            source: None,
        };
        let node = self
            .inodes
            .add_child(dir, name, is_dir, SyncLife::Pending(change));
        if let Some(etag) = &rec.base_etag {
            // What this mount last saw at the key, as for any node.
            node.state().remote = Some(super::inode::RemoteObject {
                size: 0,
                etag: Some(etag.clone()),
                last_modified: None,
            });
        }
        queue.enqueue(rec, staged, Some(node.ino));
        self.inodes.remember(dir, name, &node);
        Ok(node)
    }

    /// create(2): a new, empty, staged file; returns its attributes and an open handle.
    pub async fn create(
        &self,
        caller: Identity,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> FsResult<(Attr, u64)> {
        // The open-file limit first: a create that cannot open leaves no entry behind.
        let slot = self.reserve_handle()?;
        let (node, staged) = self
            .add_staged_entry(caller, parent, name, S_IFREG | (mode & 0o7777), b"")
            .await?;
        let handle = self.add_write_handle(node.clone(), staged, true, slot)?;
        Ok((self.attr(&node), handle))
    }

    /// A new local entry that is exported as an upload of `body` (a file, a symlink, a
    /// FIFO or socket): its staged bytes and its record.
    async fn add_staged_entry(
        &self,
        caller: Identity,
        parent: Ino,
        name: &[u8],
        mode: u32,
        body: &[u8],
    ) -> FsResult<(Arc<Node>, Arc<StagedFile>)> {
        let dir = self.node(parent)?;
        let name = self.prepare_new_entry(caller, &dir, name, false).await?;
        let queue = self.queue()?;
        let id = queue.new_id();
        let staged = Arc::new(queue.staging().create(id).map_err(io_error)?);
        if !body.is_empty() {
            staged.write_at(body, 0).map_err(io_error)?;
        }
        let meta = self.new_meta(caller, mode);
        let node = self.add_local_entry(&dir, name, meta, Some(staged.clone()), id)?;
        Ok((node, staged))
    }

    /// mkdir(2): a local directory, exported as a `dir/` marker with its metadata.
    pub async fn mkdir(
        &self,
        caller: Identity,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> FsResult<Attr> {
        let dir = self.node(parent)?;
        let name = self.prepare_new_entry(caller, &dir, name, true).await?;
        let id = self.queue()?.new_id();
        let meta = self.new_meta(caller, S_IFDIR | (mode & 0o7777));
        let node = self.add_local_entry(&dir, name, meta, None, id)?;
        Ok(self.attr(&node))
    }

    /// symlink(2): an object whose body is the target, mode 0120777.
    pub async fn symlink(
        &self,
        caller: Identity,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Attr> {
        // The target first, as Linux does: an empty one is ENOENT, a long one
        // ENAMETOOLONG, whatever the name.
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() > MAX_SYMLINK_TARGET {
            return Err(FsError::NameTooLong);
        }
        let (node, _) = self
            .add_staged_entry(caller, parent, name, S_IFLNK | 0o777, target)
            .await?;
        Ok(self.attr(&node))
    }

    /// mknod(2), also what bind(2) of a Unix socket asks for: a regular file (as
    /// `create`, closed at once), a FIFO or a socket. S3 Files stores a FIFO or socket
    /// as a zero-byte object whose permissions carry its type bits, so it is exported as
    /// an upload of no bytes; its I/O never reaches the daemon (the kernel serves FIFOs
    /// and sockets itself). Devices do not exist in S3 Files: EPERM.
    pub async fn mknod(
        &self,
        caller: Identity,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> FsResult<Attr> {
        let kind = mode & S_IFMT;
        match kind {
            0 | S_IFREG => {
                let (attr, handle) = self.create(caller, parent, name, mode).await?;
                self.release(handle);
                Ok(attr)
            }
            S_IFIFO | S_IFSOCK => {
                // An empty staged body: the export (and crash recovery) treat it as any
                // upload, of zero bytes.
                let (node, _) = self
                    .add_staged_entry(caller, parent, name, kind | (mode & 0o7777), b"")
                    .await?;
                Ok(self.attr(&node))
            }
            _ => Err(FsError::Perm),
        }
    }

    /// unlink(2) of a file, symlink, FIFO or socket.
    pub async fn unlink(&self, caller: Identity, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.remove_entry(caller, parent, name, false).await
    }

    /// rmdir(2): only an empty directory.
    pub async fn rmdir(&self, caller: Identity, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.remove_entry(caller, parent, name, true).await
    }

    async fn remove_entry(
        &self,
        caller: Identity,
        parent: Ino,
        name: &[u8],
        want_dir: bool,
    ) -> FsResult<()> {
        let queue = self.queue()?;
        let dir = self.node(parent)?;
        self.require_dir(&dir)?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        self.check(caller, &dir, access::WRITE | access::EXEC)
            .await?;
        self.load_dir(&dir).await?;
        let child = self.inodes.child(&dir, name).ok_or(FsError::NotFound)?;
        let is_dir = child.state().is_dir;
        match (want_dir, is_dir) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            _ => {}
        }
        if self.in_lost_found(&child) {
            if is_dir {
                // The lost+found directory itself stays, as on S3 Files.
                return Err(FsError::Perm);
            }
            // Local only: delete the kept copy.
            self.remove_lost(&dir, name);
            return Ok(());
        }
        if is_dir {
            self.require_empty_dir(&child).await?;
        }
        let (key, life, in_s3, seen, open) = {
            let state = child.state();
            (
                state.key.clone(),
                state.sync.clone(),
                state.remote.is_some(),
                state.remote.as_ref().and_then(|r| r.etag.clone()),
                state.handles > 0,
            )
        };
        // Drop a pending change; if it never reached S3 (nor is on its way) there is
        // nothing to delete. A pending rename copy has its own delete of the old key.
        let mut needs_delete = in_s3;
        match &life {
            SyncLife::Pending(change) => {
                // Based on nothing at this key: nothing of this mount's is there (a copy
                // that has not run, an upload never exported).
                let never_exported = queue
                    .get(change.id)
                    .is_some_and(|p| p.record.base_etag.is_none());
                // Open handles keep reading and writing the bytes until the last closes.
                let dropped = queue.cancel(change.id, !open);
                if !dropped || !never_exported {
                    needs_delete = true;
                }
            }
            SyncLife::Clean { id, .. } if !open => queue.staging().remove(*id),
            _ => {}
        }
        // An implicit directory has no marker to delete.
        if is_dir && !in_s3 && !life.is_local() {
            needs_delete = false;
        }
        self.inodes.remove_child(&dir, name);
        if needs_delete {
            self.record_delete(key, seen, None)?;
        }
        Ok(())
    }

    /// ENOTEMPTY unless directory `dir` has no entries (listing it first if needed).
    pub(super) async fn require_empty_dir(&self, dir: &Node) -> FsResult<()> {
        self.load_dir(dir).await?;
        let empty = dir.state().children.as_ref().is_none_or(|c| c.is_empty());
        if empty {
            Ok(())
        } else {
            Err(FsError::NotEmpty)
        }
    }

    /// Makes sure a file has local bytes to write to: the current object is copied into
    /// staging (unless `truncate`), and a pending upload is recorded. Returns the staged
    /// file, which the caller's handle owns as its data source.
    pub(super) async fn ensure_staged(
        &self,
        node: &Arc<Node>,
        truncate: bool,
    ) -> FsResult<Arc<StagedFile>> {
        if let Some(staged) = self.staged_for_write(node)? {
            if truncate {
                staged.set_len(0).map_err(io_error)?;
                self.mark_data_dirty(node, &staged)?;
            }
            return Ok(staged);
        }
        // One download per node at a time, apart from `load_lock` so lookups of the
        // node are not held up by it.
        let _staging = node.stage_lock.lock().await;
        if let Some(staged) = self.staged_for_write(node)? {
            // Another open staged it meanwhile: this open's O_TRUNC still applies.
            if truncate {
                staged.set_len(0).map_err(io_error)?;
                self.mark_data_dirty(node, &staged)?;
            }
            return Ok(staged);
        }
        let queue = self.queue()?;
        let (key, source, meta, existing_id) = {
            let state = node.state();
            // While a rename's copy is pending, the bytes are still at the old key.
            let source = match state.sync.pending().and_then(|c| c.source.clone()) {
                Some(source) => Some(source),
                None => state.remote.as_ref().map(|r| Source {
                    key: state.key.clone(),
                    etag: r.etag.clone(),
                    size: r.size,
                }),
            };
            (
                state.key.clone(),
                source,
                self.current_meta(&state),
                state.sync.pending().map(|c| c.id),
            )
        };
        let id = existing_id.unwrap_or_else(|| queue.new_id());
        // The kernel reads a cached copy of the object for this node's open handles
        // (passthrough): that very file becomes the staged bytes, so they see the writes.
        let adopted = self.adopt_backing(node, queue.staging().path(id));
        let staged = match &adopted {
            Some((staged, _)) => {
                if truncate {
                    staged.set_len(0).map_err(io_error)?;
                }
                staged.clone()
            }
            None => Arc::new(queue.staging().create(id).map_err(io_error)?),
        };
        if let (false, None, Some(source)) = (truncate, &adopted, &source) {
            copy_into_staging(&self.store, source, &staged)
                .await
                .map_err(|e| match e {
                    CopyInError::Store(e) => self.store_error(&source.key, e),
                    CopyInError::Local(e) => io_error(e),
                })?;
        }
        if !truncate {
            // The bytes as they are in S3: opening for writing is not a change; the first
            // write (or truncate) records one. A pending change keeps its record.
            let mut state = node.state();
            match &mut state.sync {
                SyncLife::Pending(change) if change.id == id => {
                    change.staged = Some(staged.clone());
                }
                SyncLife::Remote => {
                    state.sync = SyncLife::Clean {
                        id,
                        meta,
                        staged: staged.clone(),
                    };
                }
                // Changed meanwhile (a conflict, a poll): this open's bytes are stale.
                _ => {
                    drop(state);
                    queue.forget_staged(id);
                    return Err(FsError::Io);
                }
            }
            drop(state);
            if let Some((staged, backing)) = adopted {
                backing.adopted_as(staged);
            }
            return Ok(staged);
        }
        let base = node.state().remote.as_ref().and_then(|r| r.etag.clone());
        let rec = record(id, key, ExportKind::Upload, base, meta);
        // A pending copy (an earlier rename) becomes this upload: same id, so the
        // delete of the old key still waits for it.
        let for_node = staged.clone();
        self.commit(node, rec, Some(staged.clone()), move |state| {
            state.sync = SyncLife::Pending(Change {
                id,
                meta,
                staged: Some(for_node),
                source: None,
            });
            true
        })?;
        if let Some((staged, backing)) = adopted {
            backing.adopted_as(staged);
        }
        Ok(staged)
    }

    /// The staged bytes a write may go to; EPERM for lost+found files (read and delete
    /// only).
    fn staged_for_write(&self, node: &Node) -> FsResult<Option<Arc<StagedFile>>> {
        let state = node.state();
        if state.sync.is_lost() {
            return Err(FsError::Perm);
        }
        Ok(state.sync.staged().cloned())
    }

    /// After a change to staged bytes `staged`: mtime now, the record is an upload, its
    /// timer restarts. EIO if the node's bytes are no longer `staged` (a conflict moved
    /// them to lost+found, or a change in S3 replaced them).
    fn mark_data_dirty(&self, node: &Node, staged: &Arc<StagedFile>) -> FsResult<()> {
        self.mark_data_dirty_at(node, staged, SystemTime::now())
    }

    /// `mark_data_dirty` for a write made at `when` (through the kernel, found later).
    pub(super) fn mark_data_dirty_at(
        &self,
        node: &Node,
        staged: &Arc<StagedFile>,
        when: SystemTime,
    ) -> FsResult<()> {
        let queue = self.queue()?;
        let now = nanos_since_epoch(when);
        let rec = {
            let mut state = node.state();
            if !state.linked {
                // Unlinked while open: writes still land in the bytes the handles
                // share, and nothing is exported.
                return Ok(());
            }
            if !state.sync.staged().is_some_and(|s| Arc::ptr_eq(s, staged)) {
                return Err(FsError::Io);
            }
            let key = state.key.clone();
            let base = state.remote.as_ref().and_then(|r| r.etag.clone());
            let (id, meta) = match &mut state.sync {
                SyncLife::Pending(change) => {
                    change.meta.mtime_ns = Some(now);
                    if queue.touch_upload(change.id, change.meta) {
                        return Ok(());
                    }
                    (change.id, change.meta)
                }
                SyncLife::Clean { id, meta, .. } => {
                    meta.mtime_ns = Some(now);
                    (*id, *meta)
                }
                SyncLife::Remote | SyncLife::Lost { .. } => return Err(FsError::Io),
            };
            record(id, key, ExportKind::Upload, base, meta)
        };
        let (id, meta) = (rec.id, rec.meta);
        let ours = staged.clone();
        self.commit(node, rec, Some(staged.clone()), move |state| {
            if !state.sync.staged().is_some_and(|s| Arc::ptr_eq(s, &ours)) {
                return false;
            }
            state.sync = SyncLife::Pending(Change {
                id,
                meta,
                staged: Some(ours),
                source: None,
            });
            true
        })
    }

    /// The bytes a write on `file` goes to, if they are still the node's (EIO once a
    /// conflict moved them to lost+found or S3 replaced them).
    fn live_write_target(&self, file: &super::handle::OpenFile) -> FsResult<Arc<StagedFile>> {
        let staged = file.write_target()?;
        let state = file.node.state();
        // A file unlinked here keeps its bytes on the node; a node whose bytes S3 took
        // away (a conflict, a change or removal by another writer) has none.
        if !state.sync.staged().is_some_and(|s| Arc::ptr_eq(s, &staged)) {
            return Err(FsError::Io);
        }
        Ok(staged)
    }

    /// write(2) to an open handle: straight into the staging file the handle owns.
    pub fn write(&self, handle: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let file = self.handle(handle)?;
        let staged = self.live_write_target(&file)?;
        let data = &data[..writable_len(offset, data.len())?];
        staged.write_at(data, offset).map_err(io_error)?;
        self.mark_data_dirty(&file.node, &staged)?;
        self.metrics
            .bytes_written
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(data.len() as u32)
    }

    /// fallocate(2) mode 0 (extend with zeros); other modes are not supported.
    pub fn fallocate(&self, handle: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        if mode != 0 {
            return Err(FsError::NotSupported);
        }
        let file = self.handle(handle)?;
        let staged = self.live_write_target(&file)?;
        let end = offset.saturating_add(length);
        if end > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        if end > staged.size() {
            staged.set_len(end).map_err(io_error)?;
            self.mark_data_dirty(&file.node, &staged)?;
        }
        Ok(())
    }

    /// `setattr` when it needs no I/O: a metadata change without an access point to
    /// check. None means "use `setattr`".
    pub fn setattr_cached(&self, ino: Ino, change: &SetAttr) -> Option<FsResult<Attr>> {
        if change.size.is_some() || self.daemon_checks() || self.queue.is_none() {
            return None;
        }
        let node = self.inodes.get(ino)?;
        // Writes made through the kernel come before this change (cp -p, tar).
        self.notice_external_writes(&node);
        Some(
            self.change_metadata(&node, change)
                .map(|()| self.attr(&node)),
        )
    }

    /// setattr: truncate, chmod, chown, utimens.
    pub async fn setattr(&self, caller: Identity, ino: Ino, change: SetAttr) -> FsResult<Attr> {
        let node = self.node(ino)?;
        self.queue()?;
        self.notice_external_writes(&node);
        if self.daemon_checks() {
            let who = self.effective(caller);
            let meta = self.attr(&node);
            let owner = who.uid == 0 || who.uid == meta.uid;
            if (change.mode.is_some() || change.mtime.is_some()) && !owner {
                return Err(FsError::Perm);
            }
            if change.uid.is_some_and(|u| u != meta.uid) && who.uid != 0 {
                return Err(FsError::Perm);
            }
            // chgrp: root to any group, the owner only to a group it is in (primary or
            // secondary), as POSIX has it.
            let new_group = change.gid.filter(|g| *g != meta.gid);
            if new_group.is_some_and(|g| who.uid != 0 && !(owner && who.in_group(g))) {
                return Err(FsError::Perm);
            }
            if change.size.is_some() {
                self.check(caller, &node, access::WRITE).await?;
            }
        }
        let (is_dir, has_body) = {
            let state = node.state();
            (state.is_dir, super::kind_of(&state).has_body())
        };
        if let Some(size) = change.size {
            if is_dir {
                return Err(FsError::IsDir);
            }
            if !has_body {
                // As truncate(2) of a FIFO or socket on a local file system (the kernel
                // refuses it before asking the daemon).
                return Err(FsError::Invalid);
            }
            if size > MAX_FILE_SIZE {
                return Err(FsError::TooBig);
            }
            // A truncate to the size the file has changes nothing (POSIX leaves even its
            // mtime alone), so it is not a change to export.
            if size != self.attr(&node).size {
                let staged = self.ensure_staged(&node, size == 0).await?;
                staged.set_len(size).map_err(io_error)?;
                self.mark_data_dirty(&node, &staged)?;
            }
        }
        if change.changes_metadata() {
            self.change_metadata(&node, &change)?;
        }
        Ok(self.attr(&node))
    }

    fn change_metadata(&self, node: &Arc<Node>, change: &SetAttr) -> FsResult<()> {
        let queue = self.queue()?;
        let (rec, staged) = {
            let mut state = node.state();
            if state.sync.is_lost() {
                return Err(FsError::Perm);
            }
            let mut meta = self.current_meta(&state);
            if let Some(mode) = change.mode {
                meta.mode = (meta.mode & !0o7777) | (mode & 0o7777);
            }
            meta.uid = change.uid.unwrap_or(meta.uid);
            meta.gid = change.gid.unwrap_or(meta.gid);
            if let Some(mtime) = change.mtime {
                meta.mtime_ns = Some(nanos_since_epoch(mtime));
                // A time set wins over the one the entries' last change gave.
                state.entries_changed = None;
            }
            if meta == self.current_meta(&state) {
                // chmod/chown to what it already is: nothing to export (and nothing for
                // another writer's change to conflict with).
                return Ok(());
            }
            if state.is_dir && state.key.is_empty() {
                // A whole bucket's root has no object to keep attributes in: they hold on
                // this mount only (`tar -x` of an archive with "./" sets them, so refusing
                // would fail the whole extraction).
                state.meta = Some(meta);
                return Ok(());
            }
            let key = state.key.clone();
            let base = state.remote.as_ref().and_then(|r| r.etag.clone());
            match &state.sync {
                SyncLife::Pending(c) => {
                    let kind = match (&c.staged, state.is_dir) {
                        (Some(_), _) => ExportKind::Upload,
                        (None, true) => ExportKind::Marker,
                        (None, false) => ExportKind::Metadata,
                    };
                    let mut rec = queue
                        .get(c.id)
                        .map(|q| q.record)
                        .unwrap_or_else(|| record(c.id, key, kind, base, meta));
                    rec.meta = meta;
                    (rec, c.staged.clone())
                }
                SyncLife::Clean { id, staged, .. } => (
                    record(*id, key, ExportKind::Metadata, base, meta),
                    Some(staged.clone()),
                ),
                _ if state.is_dir => (
                    record(queue.new_id(), key, ExportKind::Marker, None, meta),
                    None,
                ),
                _ => (
                    record(queue.new_id(), key, ExportKind::Metadata, base, meta),
                    None,
                ),
            }
        };
        let (id, meta) = (rec.id, rec.meta);
        let source = node.state().sync.pending().and_then(|c| c.source.clone());
        self.commit(node, rec, staged.clone(), move |state| {
            state.meta = Some(meta);
            state.sync = SyncLife::Pending(Change {
                id,
                meta,
                staged,
                source,
            });
            true
        })
    }

    /// fsync(2): the staged bytes and the journal record reach the disk.
    pub async fn fsync(&self, ino: Ino) -> FsResult<()> {
        let Some(queue) = self.queue.as_ref() else {
            return Ok(());
        };
        let node = self.node(ino)?;
        self.notice_external_writes(&node);
        let pending = node.state().sync.pending().cloned();
        if let Some(change) = pending {
            if let Some(staged) = &change.staged {
                staged.sync().map_err(io_error)?;
            }
            queue.make_durable(change.id).map_err(io_error)?;
        }
        Ok(())
    }

    /// Opened for writing: `open` calls this for O_WRONLY/O_RDWR/O_TRUNC.
    pub(super) async fn open_for_write(
        &self,
        node: &Arc<Node>,
        truncate: bool,
    ) -> FsResult<Arc<StagedFile>> {
        if node.state().is_dir {
            return Err(FsError::IsDir);
        }
        self.ensure_staged(node, truncate).await
    }
}
