//! Where node state meets export records: the only module of the core that touches
//! both. Recording a change (journal first, then the record and the node's life under
//! the node's lock), an export's result (the node mirrors the new object), conflicts
//! (the bucket wins; local bytes go to lost+found), the lost+found directory, recovered
//! records overlaid on listings, what the poller must keep, poll-time conflicts, the
//! status xattr's state, and `sync`. docs/SEMANTICS.md "Export" and "Conflicts" is the
//! contract.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use super::change::{copy_into_staging, CopyInError};
use super::inode::{Ino, Node, NodeState, RemoteObject, ROOT_INO};
use super::life::{Change, Source, SyncLife};
use super::namespace::DirEntries;
use super::{FsCore, FsError, FsResult};
use crate::export::failure::ExportErrorCode;
use crate::export::journal::{ExportKind, PendingExport};
use crate::export::lost_found;
use crate::export::queue::{ExportQueue, ExportSink, Queued, Settled, WaitOutcome};
use crate::export::schedule::Hold;
use crate::export::staging::StagedFile;
use crate::posix::{nanos_since_epoch, PosixMeta, S_IFDIR, S_IFREG};
use crate::store::{ObjectStore, StoreError};

/// A local I/O error as the core reports it.
pub(super) fn io_error(e: std::io::Error) -> FsError {
    FsError::from_io(&e)
}

/// What a directory's pending records say about its entries.
#[derive(Debug, Default)]
pub(super) struct PendingInDir {
    /// Direct children with changes not exported yet at or below them.
    pub keep: HashSet<String>,
    /// Direct children whose removal (or move away) is still to be exported, or with
    /// such removals below them: the listing still has them, the mount must not show
    /// them again (a directory that another writer filled shows once they are done).
    pub hidden: HashSet<String>,
}

impl FsCore {
    pub(super) fn queue(&self) -> FsResult<&Arc<ExportQueue>> {
        self.queue.as_ref().ok_or(FsError::ReadOnly)
    }

    /// Records a change of `node`: the journal line first, with no lock held (if it
    /// cannot be written, e.g. a full disk, the change is refused rather than left
    /// unexported); then, under the node's lock, `apply` updates the node and the record
    /// joins the queue, so a finishing export sees the node and the record agree.
    /// `apply` returns false if the node moved on meanwhile (its bytes went to
    /// lost+found): the change is then dropped and the caller gets EIO.
    pub(super) fn commit(
        &self,
        node: &Node,
        record: PendingExport,
        staged: Option<Arc<StagedFile>>,
        apply: impl FnOnce(&mut NodeState) -> bool,
    ) -> FsResult<()> {
        let queue = self.queue()?;
        queue.journal(&record).map_err(io_error)?;
        let id = record.id;
        let applied = {
            let mut state = node.state();
            let applied = apply(&mut state);
            if applied {
                queue.enqueue(record, staged, Some(node.ino));
            }
            applied
        };
        if applied {
            Ok(())
        } else {
            if queue.get(id).is_none() {
                let _ = queue.cancel(id, true);
            }
            Err(FsError::Io)
        }
    }

    /// Records a change that belongs to no node: the delete of `key`, which held `base`
    /// when this mount last saw it (None: unknown; the delete is then unconditional).
    pub(super) fn record_delete(
        &self,
        key: String,
        base: Option<String>,
        after: Option<u64>,
    ) -> FsResult<u64> {
        let queue = self.queue()?;
        let id = queue.new_id();
        queue
            .record(PendingExport {
                id,
                key,
                kind: ExportKind::Delete,
                base_etag: base,
                meta: PosixMeta {
                    uid: 0,
                    gid: 0,
                    mode: 0,
                    mtime_ns: Some(0),
                },
                copy_from: None,
                copy_etag: None,
                copy_size: None,
                after,
            })
            .map_err(io_error)?;
        Ok(id)
    }

    /// Puts the bytes of a small file just exported into the data cache under its new
    /// version, so reading back what was written costs no GET once the staged copy goes.
    /// Larger files are left to the cache's usual fills: copying them here would hold up
    /// the export loop.
    fn cache_exported(&self, key: &str, etag: &str, staged: &StagedFile) {
        const MAX: u64 = 1 << 20;
        let size = staged.size();
        if size == 0 || size > MAX {
            return;
        }
        let token = staged.begin_read();
        let mut data = vec![0u8; size as usize];
        if !matches!(staged.read_at(&mut data, 0), Ok(n) if n as u64 == size) {
            return;
        }
        // Written again meanwhile: these bytes are not the exported version's.
        if !staged.end_read(token) {
            return;
        }
        self.cache().insert_object(
            crate::cache::ObjectId::new(key, etag),
            bytes::Bytes::from(data),
        );
    }

    /// The bucket wins a conflict: a local copy with bytes goes to lost+found, and the
    /// path shows the bucket's version (or disappears, if the object was deleted).
    /// Conflicts without local bytes (a metadata change, a FIFO or socket) just give
    /// way; a conflicting rename copy is held, so its old key is never deleted.
    pub(super) async fn resolve_conflict(&self, entry: &Queued, store: &Arc<dyn ObjectStore>) {
        let Ok(queue) = self.queue() else { return };
        let record = &entry.record;
        let id = record.id;
        self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
        if entry.obsolete || queue.get(id).is_some_and(|c| c.obsolete) {
            // The entry went away meanwhile: there is nothing left to keep or show.
            queue.remove_obsolete(id);
            return;
        }
        match record.kind {
            ExportKind::Delete => {
                // Someone else wrote the key after this mount removed it: their object
                // stays, and shows again at once.
                let head = match store.head(&record.key).await {
                    Ok(head) => Some(head),
                    Err(StoreError::NotFound) => None,
                    Err(e) => {
                        queue.retry_later(id, Duration::from_secs(2), e.to_string());
                        return;
                    }
                };
                queue.remove_conflicted(id);
                error!(
                    key = record.key,
                    "conflict: the object changed in S3 after it was removed here; the bucket wins and it stays"
                );
                if let Some(head) = head {
                    self.show_remote(&record.key, &head);
                }
                return;
            }
            ExportKind::Marker => {
                error!(
                    key = record.key,
                    "export refused: the object changed in S3; the change is held"
                );
                queue.hold(id, Hold::Conflict);
                return;
            }
            ExportKind::Copy => {
                // The renamed file's bytes were to be copied from its old key, which
                // someone has since overwritten or removed. If this mount still has
                // those bytes (an empty file, or cached), the rename stands as an upload
                // of them; the old key's delete then meets the other writer's object and
                // gives way.
                let source_there = match &record.copy_from {
                    Some(from) => match store.head(from).await {
                        Ok(head) => record.copy_etag.is_none() || head.etag == record.copy_etag,
                        Err(StoreError::NotFound) => false,
                        Err(e) => {
                            warn!(key = record.key, error = %e, "conflict: cannot read the renamed file's source; will retry");
                            queue.retry_later(id, Duration::from_secs(2), e.to_string());
                            return;
                        }
                    },
                    None => false,
                };
                if !source_there && self.upload_cached_source(queue, entry) {
                    return;
                }
            }
            ExportKind::Upload | ExportKind::Metadata => {}
        }
        // What S3 holds now decides what the path shows. Only "no such key" means the
        // object was deleted; any other answer (a 5xx, a timeout) decides nothing, so
        // the record waits and the conflict is looked at again later.
        let head = match store.head(&record.key).await {
            Ok(head) => Some(head),
            Err(StoreError::NotFound) => None,
            Err(e) => {
                warn!(key = record.key, error = %e, "conflict: cannot read the bucket's version; will retry");
                queue.retry_later(id, Duration::from_secs(2), e.to_string());
                return;
            }
        };
        // Unlinked (or replaced) while S3 was asked: nothing is left to keep.
        if queue.get(id).is_some_and(|c| c.obsolete) {
            queue.remove_obsolete(id);
            return;
        }
        // The path in the file system (lost+found is at the file-system root, which an
        // access point's root directory may be below).
        let fs_root = self
            .options
            .fs_prefix
            .as_deref()
            .unwrap_or(&self.options.root_prefix);
        let origin = format!(
            "/{}",
            record.key.strip_prefix(fs_root).unwrap_or(&record.key)
        );
        let name = record
            .key
            .rsplit('/')
            .next()
            .unwrap_or(&record.key)
            .to_string();
        // Local bytes to keep: a written file's staged bytes, or, for a rename that lost,
        // its bytes fetched from the old key (whose delete then goes ahead).
        let has_bytes = match (&record.kind, &entry.staged) {
            // A FIFO or socket is only metadata: nothing of it to keep.
            (ExportKind::Upload | ExportKind::Copy, _) if !record.meta.kind().has_body() => false,
            (ExportKind::Upload, Some(_)) => true,
            (ExportKind::Copy, _) => match self.fetch_source(queue, id, record, store).await {
                Ok(true) => true,
                Ok(false) => {
                    // Someone changed or removed the old key too: the bucket wins
                    // there as well, and its delete is dropped.
                    queue.cancel_dependents(id);
                    false
                }
                Err(e) => {
                    warn!(key = record.key, error = %e, "conflict: cannot read the renamed file's bytes; will retry");
                    queue.retry_later(id, Duration::from_secs(2), e.to_string());
                    return;
                }
            },
            _ => false,
        };
        let kept = if has_bytes {
            match queue
                .lost()
                .keep(&queue.staging().path(id), id, &name, &origin)
            {
                Ok(file_name) => Some(file_name),
                Err(e) => {
                    error!(key = record.key, error = %e, "cannot move a conflicting local copy to lost+found; held");
                    queue.hold(id, Hold::Conflict);
                    return;
                }
            }
        } else {
            None
        };
        queue.remove_conflicted(id);
        // The path now shows the bucket's version, if the node still carries this change
        // (a node that moved on has its own record).
        let node = entry.ino.and_then(|ino| self.inodes.get(ino));
        let mut unlink = None;
        let mut replace = None;
        if let Some(node) = &node {
            let mut state = node.state();
            if state.sync.pending().map(|c| c.id) == Some(id) {
                state.sync = SyncLife::Remote;
                state.symlink_target = None;
                state.conflicts_lost += 1;
                match &head {
                    // The kernel keeps this inode's open handles passed through to the
                    // bytes just kept in lost+found, and would refuse any other bytes for
                    // it: the bucket's version shows under a new inode, as if another
                    // writer had renamed a new file over this one.
                    Some(_) if state.io.backing().is_some() => {
                        replace = Some((state.parent, state.name.clone()));
                    }
                    Some(head) => {
                        state.meta = Some(PosixMeta::from_user_metadata(&head.metadata, false));
                        state.remote = Some(RemoteObject {
                            size: head.size,
                            etag: head.etag.clone(),
                            last_modified: head.last_modified,
                        });
                    }
                    None => unlink = Some((state.parent, state.name.clone())),
                }
            }
        }
        if let (Some(node), Some((parent, node_name)), Some(head)) = (&node, &replace, &head) {
            if let Some(dir) = self.inodes.get(*parent) {
                if self
                    .inodes
                    .child(&dir, node_name)
                    .is_some_and(|c| c.ino == node.ino)
                {
                    self.inodes.remove_child(&dir, node_name);
                    self.invalidate_entry_in_listing(*parent, node_name);
                    self.show_remote(&record.key, head);
                }
            }
        }
        if let (Some(node), None) = (&node, &replace) {
            match unlink {
                // Deleted in S3: the delete wins.
                Some((parent, node_name)) => {
                    if let Some(dir) = self.inodes.get(parent) {
                        if self
                            .inodes
                            .child(&dir, &node_name)
                            .is_some_and(|c| c.ino == node.ino)
                        {
                            self.inodes.remove_child(&dir, &node_name);
                            self.invalidate_entry_in_listing(parent, &node_name);
                        }
                    }
                }
                None => self.invalidate_inode(node.ino),
            }
        }
        match kept {
            Some(file_name) if self.options.fs_prefix.is_some() => error!(
                key = record.key,
                kept = %queue.lost().path(&file_name).display(),
                "conflict: the object changed in S3; the bucket wins and the local copy is in lost+found (at the file-system root, not shown through this access point's root directory)"
            ),
            Some(file_name) => {
                error!(
                    key = record.key,
                    lost_found = %format!("/{}{}/{file_name}", lost_found::DIR_PREFIX, queue.mount_id()),
                    "conflict: the object changed in S3; the bucket wins and the local copy is in lost+found"
                );
                self.show_lost(queue, &file_name, &origin, record.meta);
            }
            None if !record.meta.kind().has_body() => error!(
                key = record.key,
                "conflict: the object changed in S3; the bucket wins and the local FIFO or socket (which has no bytes to keep) is dropped"
            ),
            None if record.kind == ExportKind::Copy => error!(
                key = record.key,
                from = record.copy_from.as_deref().unwrap_or_default(),
                "conflict: the object changed in S3; the bucket wins and the renamed file stays at its old name"
            ),
            None => error!(
                key = record.key,
                "conflict: the object changed in S3; the local metadata change is dropped"
            ),
        }
    }

    /// Turns a rename's copy whose source version is gone from S3 into an upload of the
    /// same bytes from this mount's data cache (or of nothing, for an empty file). False
    /// if the bytes are not all here.
    fn upload_cached_source(&self, queue: &ExportQueue, entry: &Queued) -> bool {
        const CHUNK: u64 = 4 << 20;
        let record = &entry.record;
        let (Some(from), Some(size)) = (&record.copy_from, record.copy_size) else {
            return false;
        };
        let object = match (&record.copy_etag, size) {
            (_, 0) => None,
            (Some(etag), _) => Some(crate::cache::ObjectId::new(from, etag)),
            (None, _) => return false,
        };
        let Ok(staged) = queue.staging().create(record.id) else {
            return false;
        };
        let staged = Arc::new(staged);
        let mut offset = 0;
        while let Some(object) = object {
            if offset >= size {
                break;
            }
            let len = (size - offset).min(CHUNK) as u32;
            let Some(data) = self.cache().read(object, size, offset, len) else {
                queue.staging().remove(record.id);
                return false;
            };
            if data.is_empty() || staged.write_at(&data, offset).is_err() {
                queue.staging().remove(record.id);
                return false;
            }
            offset += data.len() as u64;
        }
        let mut upload = record.clone();
        upload.kind = ExportKind::Upload;
        upload.copy_from = None;
        upload.copy_etag = None;
        upload.copy_size = None;
        info!(key = record.key, "the renamed file's old key changed in S3; exporting its bytes from this mount instead of copying");
        let id = record.id;
        let node = entry.ino.and_then(|ino| self.inodes.get(ino));
        let committed = match &node {
            Some(node) => {
                let ours = staged.clone();
                self.commit(node, upload, Some(staged), move |state| {
                    if let SyncLife::Pending(change) = &mut state.sync {
                        if change.id == id {
                            change.staged.get_or_insert(ours);
                            change.source = None;
                        }
                    }
                    true
                })
                .is_ok()
            }
            None => queue
                .journal(&upload)
                .map(|()| queue.enqueue(upload, Some(staged), None))
                .is_ok(),
        };
        queue.release_claim(id);
        queue.due_now(id);
        committed
    }

    /// Copies a rename's source version (`copy_from` at `copy_etag`) into staging file
    /// `id`, in chunks. Ok(false) when that version is gone (changed or deleted).
    async fn fetch_source(
        &self,
        queue: &ExportQueue,
        id: u64,
        record: &PendingExport,
        store: &Arc<dyn ObjectStore>,
    ) -> Result<bool, StoreError> {
        let Some(from) = &record.copy_from else {
            return Ok(false);
        };
        let head = match store.head(from).await {
            Ok(head) => head,
            Err(StoreError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        if record.copy_etag.is_some() && head.etag != record.copy_etag {
            return Ok(false);
        }
        let staged = queue
            .staging()
            .create(id)
            .map_err(|e| StoreError::Other(format!("staging: {e}")))?;
        let source = Source {
            key: from.clone(),
            etag: head.etag,
            size: head.size,
        };
        match copy_into_staging(store, &source, &staged).await {
            Ok(()) => Ok(true),
            Err(CopyInError::Store(StoreError::NotFound | StoreError::PreconditionFailed)) => {
                Ok(false)
            }
            Err(CopyInError::Store(e)) => Err(e),
            Err(CopyInError::Local(e)) => Err(StoreError::Other(format!("staging: {e}"))),
        }
    }

    /// Shows the object at `key` (the bucket's version, after a conflict) in its directory,
    /// if that directory is listed and has no entry of that name.
    fn show_remote(&self, key: &str, head: &crate::store::ObjectHead) {
        let Some(rel) = key.strip_prefix(&self.options.root_prefix) else {
            return;
        };
        let mut dir = match self.inodes.get(ROOT_INO) {
            Some(root) => root,
            None => return,
        };
        let mut parts: Vec<&str> = rel.split('/').collect();
        let Some(name) = parts.pop().filter(|n| !n.is_empty()) else {
            return;
        };
        for part in parts {
            match self.inodes.child(&dir, part) {
                Some(next) if next.state().is_dir => dir = next,
                _ => return,
            }
        }
        if dir.state().children.is_none() || self.inodes.child(&dir, name).is_some() {
            return;
        }
        let node = self.inodes.add_child(&dir, name, false, SyncLife::Remote);
        {
            let mut state = node.state();
            state.meta = Some(PosixMeta::from_user_metadata(&head.metadata, false));
            state.remote = Some(RemoteObject {
                size: head.size,
                etag: head.etag.clone(),
                last_modified: head.last_modified,
            });
        }
        self.invalidate_entry_in_listing(dir.ino, name);
    }

    /// The lost+found directory's node, created at the mount root if needed (None until
    /// the root is listed: it shows then).
    fn lost_dir(&self, queue: &ExportQueue) -> Option<Arc<Node>> {
        if self.options.fs_prefix.is_some() {
            // lost+found is at the file-system root, above this mount's root directory.
            return None;
        }
        let root = self.inodes.get(ROOT_INO)?;
        // Shown only once the root is listed (listing it shows lost+found too).
        root.state().children.as_ref()?;
        let dir_name = format!("{}{}", lost_found::DIR_PREFIX, queue.mount_id());
        if let Some(dir) = self.inodes.child(&root, &dir_name) {
            return Some(dir);
        }
        let owner = self.lost_found_owner();
        let dir = self.inodes.add_child(
            &root,
            &dir_name,
            true,
            SyncLife::Lost {
                origin: None,
                meta: PosixMeta {
                    uid: owner.uid,
                    gid: owner.gid,
                    mode: S_IFDIR | 0o700,
                    mtime_ns: Some(nanos_since_epoch(SystemTime::now())),
                },
                staged: None,
            },
        );
        self.invalidate_inode(ROOT_INO);
        Some(dir)
    }

    /// Adds a kept file to the lost+found directory.
    fn show_lost(&self, queue: &ExportQueue, file_name: &str, origin: &str, meta: PosixMeta) {
        let Some(dir) = self.lost_dir(queue) else {
            return;
        };
        let staged = match StagedFile::open_path(&queue.lost().path(file_name)) {
            Ok(file) => Arc::new(file),
            Err(e) => {
                error!(file_name, error = %e, "cannot open a lost+found file");
                return;
            }
        };
        self.inodes.add_child(
            &dir,
            file_name,
            false,
            SyncLife::Lost {
                origin: Some(origin.to_string()),
                meta,
                staged: Some(staged),
            },
        );
        self.invalidate_entry_in_listing(dir.ino, file_name);
    }

    /// Who owns lost+found and its files: the mount's own identity (the access point's,
    /// else root), root squash applied, so the mount can read and delete them.
    fn lost_found_owner(&self) -> super::access::Identity {
        self.owner_for(super::access::Identity::new(0, 0))
    }

    /// Whether a node is the lost+found directory or inside it. Takes the node's lock:
    /// never call it while holding it.
    pub(super) fn in_lost_found(&self, node: &Node) -> bool {
        node.state().sync.is_lost()
    }

    /// Deletes a file kept in lost+found (local only: nothing goes to S3).
    pub(super) fn remove_lost(&self, dir: &Node, name: &str) {
        if let Ok(queue) = self.queue() {
            queue.lost().remove(name);
        }
        self.inodes.remove_child(dir, name);
    }

    /// What the pending records say about directory `prefix`'s direct entries.
    pub(super) fn pending_in_dir(&self, prefix: &str) -> PendingInDir {
        let mut out = PendingInDir::default();
        let Some(queue) = self.queue.as_ref() else {
            return out;
        };
        for queued in queue.under(prefix) {
            let rest = &queued.record.key[prefix.len()..];
            let Some(name) = rest.split('/').next().filter(|n| !n.is_empty()) else {
                continue;
            };
            if queued.record.kind == ExportKind::Delete {
                // The key itself, or (a directory this mount removed or moved away) a
                // key below it: until the delete is exported the listing still shows it.
                out.hidden.insert(name.to_string());
            } else {
                out.keep.insert(name.to_string());
            }
        }
        out
    }

    /// Attaches recovered records (after a restart) to the entries of a directory just
    /// listed: pending uploads and markers show with their local state, pending deletes
    /// hide. The root also shows lost+found.
    pub(super) fn overlay_pending(&self, dir: &Node) {
        let Some(queue) = self.queue.as_ref() else {
            return;
        };
        if dir.ino == ROOT_INO && self.options.fs_prefix.is_none() {
            let owner = self.lost_found_owner();
            for (file_name, origin) in queue.lost().entries().unwrap_or_default() {
                let mtime_ns = std::fs::metadata(queue.lost().path(&file_name))
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .map_or(0, nanos_since_epoch);
                let meta = PosixMeta {
                    uid: owner.uid,
                    gid: owner.gid,
                    mode: S_IFREG | 0o600,
                    mtime_ns: Some(mtime_ns),
                };
                self.show_lost(queue, &file_name, &origin, meta);
            }
        }
        let prefix = dir.state().key.clone();
        let queued = queue.under(&prefix);
        // Names a change of this mount puts something at: a pending delete there (of
        // either kind: a file moved onto the name of a directory moved away) does not
        // hide them, whatever order the records came in.
        let written: HashSet<String> = queued
            .iter()
            .filter(|p| p.record.kind != ExportKind::Delete)
            .filter_map(|p| direct_child(&prefix, &p.record.key))
            .map(|(name, _)| name.to_string())
            .collect();
        let mut mine: Vec<Queued> = queued
            .into_iter()
            .filter(|p| p.ino.is_none() && direct_child(&prefix, &p.record.key).is_some())
            .collect();
        mine.sort_by_key(|p| p.record.id);
        for p in mine {
            let Some((name, is_dir)) = direct_child(&prefix, &p.record.key) else {
                continue;
            };
            if p.record.kind == ExportKind::Delete {
                if !written.contains(name) {
                    self.inodes.remove_child(dir, name);
                }
                continue;
            }
            let change = Change {
                id: p.record.id,
                meta: p.record.meta,
                staged: p.staged.clone(),
                source: None,
            };
            // The listed entry of the other kind (the bucket still has the directory
            // this file's name was taken from) gives way to a new node.
            let listed = self
                .inodes
                .child(dir, name)
                .filter(|node| node.state().key == p.record.key);
            let node = match listed {
                Some(node) => {
                    let mut state = node.state();
                    state.meta = Some(change.meta);
                    state.sync = SyncLife::Pending(change);
                    drop(state);
                    node
                }
                None => {
                    let node = self
                        .inodes
                        .add_child(dir, name, is_dir, SyncLife::Pending(change));
                    if is_dir {
                        // Not listed yet: its own recovered entries show when it is.
                        node.state().children = None;
                    }
                    node
                }
            };
            if let Some(from) = &p.record.copy_from {
                // A recovered rename copy: until it runs, the bytes are at the old key.
                let mut state = node.state();
                if let SyncLife::Pending(change) = &mut state.sync {
                    change.source = Some(super::life::Source {
                        key: from.clone(),
                        etag: p.record.copy_etag.clone(),
                        size: p.record.copy_size.unwrap_or(0),
                    });
                }
            }
            queue.attach(p.record.id, node.ino);
        }
    }

    /// Poll-time conflicts in one directory: an entry with unexported changes whose
    /// object changed (or was deleted, or created) in S3 since the change was based on
    /// it. Judged against the record's base, which is always about the record's own key.
    pub(super) async fn poll_conflicts(
        &self,
        prefix: &str,
        entries: &DirEntries<RemoteObject>,
        listed_at: SystemTime,
        store: &Arc<dyn ObjectStore>,
    ) {
        let Some(queue) = self.queue.as_ref() else {
            return;
        };
        let queued = queue.under(prefix);
        // A key's records export in id order, so only its oldest pending record can be
        // judged against a listing: a newer one (a file created where this mount's own
        // delete of the old object is still pending, as git's `index.lock` and every
        // `X.tmp` save loop do) is based on the state after the older records.
        let mut oldest: HashMap<&str, u64> = HashMap::new();
        for p in &queued {
            let id = oldest.entry(p.record.key.as_str()).or_insert(p.record.id);
            *id = (*id).min(p.record.id);
        }
        let candidates: Vec<Queued> = queued
            .iter()
            .filter(|p| oldest.get(p.record.key.as_str()) == Some(&p.record.id))
            .filter(|p| {
                p.record.kind != ExportKind::Marker
                    && !p.obsolete
                    && p.based_at <= listed_at
                    && direct_child(prefix, &p.record.key).is_some_and(|(_, dir)| !dir)
            })
            .cloned()
            .collect();
        for entry in candidates {
            let Some((name, _)) = direct_child(prefix, &entry.record.key) else {
                continue;
            };
            let remote = entries.files.get(name).map(|r| r.etag.clone());
            // Uploads and metadata changes are conditional on the key as last seen; a
            // copy or a delete only minds another writer's object at the key (one that
            // is gone already leaves nothing to overwrite or delete).
            let gone_is_fine = entry.record.kind == ExportKind::Delete;
            let conflict = match (&entry.record.base_etag, &remote) {
                (Some(_), None) => !gone_is_fine,
                (Some(base), Some(etag)) => etag.as_deref() != Some(base.as_str()),
                (None, Some(_)) => entry.record.kind != ExportKind::Delete,
                (None, None) => false,
            };
            if entry.record.kind == ExportKind::Delete && remote.is_none() {
                // The key is gone already: this mount's delete has nothing left to do
                // (a file created there later must not be based on the old version).
                if queue.claim(entry.record.id) {
                    queue.remove_obsolete(entry.record.id);
                }
                continue;
            }
            if !conflict {
                continue;
            }
            // Claimed, the record cannot be exported, re-keyed by a rename or dropped
            // while the conflict is resolved; judge it as it is now (a rename may have
            // re-keyed or rebased it since `under` copied it).
            if !queue.claim(entry.record.id) {
                continue;
            }
            let current = queue.get(entry.record.id).filter(|c| {
                c.record.key == entry.record.key
                    && c.record.base_etag == entry.record.base_etag
                    && c.based_at <= listed_at
                    && !c.obsolete
            });
            match current {
                Some(current) => {
                    info!(
                        key = entry.record.key,
                        "poll: the object changed in S3 while the local copy has unexported changes"
                    );
                    self.resolve_conflict(&current, store).await;
                }
                None => queue.release_claim(entry.record.id),
            }
        }
    }

    /// The state part of `user.s3files.status` for a node.
    #[cfg(test)]
    pub(super) fn sync_state(&self, node: &Node) -> (String, String) {
        let (state, last_error, _) = self.sync_status(node);
        (state, last_error)
    }

    /// State, last error and (for an export that failed for good) its S3 Files code, as
    /// one snapshot.
    pub(super) fn sync_status(&self, node: &Node) -> (String, String, Option<ExportErrorCode>) {
        let life = node.state().sync.clone();
        match life {
            SyncLife::Lost {
                origin: Some(origin),
                ..
            } => (
                "conflict".into(),
                format!("the object changed in S3; this local copy of {origin} is never exported\noriginal-path: {origin}"),
                None,
            ),
            SyncLife::Pending(change) => {
                match self.queue.as_ref().and_then(|q| q.status(change.id)) {
                    Some(status) => (
                        status.state,
                        status.last_error.unwrap_or_else(|| "none".into()),
                        status.export_error,
                    ),
                    None => ("synced".into(), "none".into(), None),
                }
            }
            _ => ("synced".into(), "none".into(), None),
        }
    }

    /// `s3files sync`: exports every pending record at or under `ino` now and waits for
    /// them. Fails with EIO if any of them failed or is in conflict.
    pub async fn sync_tree(&self, ino: Ino) -> FsResult<()> {
        let Some(queue) = self.queue.as_ref() else {
            return Ok(());
        };
        let node = self.node(ino)?;
        let (prefix, is_dir) = {
            let s = node.state();
            (s.key.clone(), s.is_dir)
        };
        let ids = queue.ids_under(&prefix, !is_dir);
        match queue.wait(&ids, None, true).await {
            WaitOutcome::Exported => Ok(()),
            WaitOutcome::Failed | WaitOutcome::TimedOut => Err(FsError::Io),
        }
    }

    /// Exports everything pending now; waits at most `limit`. Returns how many records
    /// are left in the journal.
    pub async fn flush_all(&self, limit: Duration) -> usize {
        let Some(queue) = self.queue.as_ref() else {
            return 0;
        };
        let ids = queue.all_ids();
        let _ = queue.wait(&ids, Some(limit), false).await;
        queue.backlog()
    }

    /// The export loop: starts due exports (bounded), forever. Spawn once per mount.
    pub async fn run_exports(self: Arc<Self>) {
        let Some(queue) = self.queue.clone() else {
            return;
        };
        let store = self.store.clone();
        queue.run(store, self).await;
    }
}

#[async_trait::async_trait]
impl ExportSink for FsCore {
    /// Applies a finished export: the node (if it is still at that key) mirrors the
    /// new object, and the record settles unless the entry changed while it ran.
    fn exported(&self, entry: &Queued, etag: Option<String>, size: u64) {
        self.metrics.exports.fetch_add(1, Ordering::Relaxed);
        if entry.record.kind == ExportKind::Upload {
            self.metrics
                .bytes_exported
                .fetch_add(size, Ordering::Relaxed);
        }
        let Ok(queue) = self.queue() else { return };
        let id = entry.record.id;
        let node = entry.ino.and_then(|ino| self.inodes.get(ino));
        let mut drop_staged = true;
        let settled = match &node {
            Some(node) => {
                let mut state = node.state();
                if entry.record.kind != ExportKind::Delete && state.key == entry.record.key {
                    // Uploads set the body; a copy brings its source's; metadata
                    // updates and markers keep what is there.
                    let source = state.sync.pending().and_then(|c| c.source.as_ref());
                    let size = match (&entry.record.kind, source, &state.remote) {
                        (ExportKind::Upload, _, _) => size,
                        (ExportKind::Copy, Some(source), _) => source.size,
                        (_, _, Some(remote)) => remote.size,
                        (_, _, None) => size,
                    };
                    state.remote = Some(RemoteObject {
                        size,
                        etag: etag.clone(),
                        last_modified: Some(SystemTime::now()),
                    });
                }
                let settled = queue.settle(entry, etag.clone());
                let done = matches!(settled, Settled::Done { .. });
                if done && state.sync.pending().map(|c| c.id) == Some(id) {
                    state.meta = Some(entry.record.meta);
                    state.symlink_target = None;
                    let life = std::mem::take(&mut state.sync);
                    state.sync = match life {
                        SyncLife::Pending(Change {
                            id,
                            meta,
                            staged: Some(staged),
                            ..
                        }) if state.handles > 0 => {
                            drop_staged = false;
                            SyncLife::Clean { id, meta, staged }
                        }
                        _ => SyncLife::Remote,
                    };
                } else if !done {
                    drop_staged = false;
                }
                settled
            }
            None => queue.settle(entry, etag.clone()),
        };
        if matches!(settled, Settled::Done { .. }) && entry.record.kind == ExportKind::Upload {
            if let (Some(etag), Some(staged)) = (&etag, &entry.staged) {
                self.cache_exported(&entry.record.key, etag, staged);
            }
        }
        queue.after_settle(id, &settled, drop_staged);
    }

    async fn conflict(&self, entry: &Queued) {
        let store = self.store.clone();
        self.resolve_conflict(entry, &store).await;
    }
}

/// `(name, is_dir)` when `key` is an entry directly inside directory `prefix`.
pub(super) fn direct_child<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, bool)> {
    let rest = key.strip_prefix(prefix)?;
    match rest.strip_suffix('/') {
        Some(dir) if !dir.is_empty() && !dir.contains('/') => Some((dir, true)),
        _ if !rest.is_empty() && !rest.contains('/') => Some((rest, false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_children() {
        assert_eq!(direct_child("", "a"), Some(("a", false)));
        assert_eq!(direct_child("", "d/"), Some(("d", true)));
        assert_eq!(direct_child("p/", "p/a"), Some(("a", false)));
        assert_eq!(direct_child("p/", "p/a/b"), None);
        assert_eq!(direct_child("p/", "p/"), None);
        assert_eq!(direct_child("p/", "q/a"), None);
    }
}
