//! The write side of the core: local changes (create, write, truncate, setattr, mkdir,
//! rmdir, unlink, symlink) land in the staging area and the export journal at once, and
//! the export loop sends each entry to S3 once it has been quiet for the write-back
//! delay. DESIGN.md section 1 "Export" is the contract.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, Semaphore};
use tracing::{error, info, warn};

use super::access::{self, Identity};
use super::inode::{Ino, LocalFile, Node, RemoteObject};
use super::metadata::{nanos_since_epoch, PosixMeta, S_IFDIR, S_IFLNK, S_IFREG};
use super::namespace::{check_segment, MAX_KEY_LEN};
use super::{Attr, FsCore, FsError, FsResult};
use crate::export::journal::{ExportJournal, ExportKind, ExportMeta, PendingExport};
use crate::export::lost_found::{self, LostFound};
use crate::export::schedule::{Hold, Schedule, SlotState};
use crate::export::staging::{StagedFile, Staging};
use crate::export::{export_once, Outcome};
use crate::store::{ObjectStore, StoreError};

/// Exports running at once (across files; one file's exports stay in order).
const EXPORT_CONCURRENCY: usize = 8;
/// Wait before retrying an export that failed with a retryable error (after the SDK's
/// own retries), doubling up to `MAX_RETRY_DELAY`.
const RETRY_DELAY: Duration = Duration::from_secs(2);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// Chunk size when a file's current object is copied into staging for writing.
const MATERIALIZE_CHUNK: u64 = 8 << 20;

/// Where and how writes are kept until exported.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub cache_dir: std::path::PathBuf,
    pub write_back_delay: Duration,
    pub mount_id: String,
}

/// One pending journal record and what the export loop needs with it.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) record: PendingExport,
    staged: Option<Arc<StagedFile>>,
    /// The node this record belongs to (None for deletes, and for records recovered
    /// after a restart until their directory is listed).
    ino: Option<Ino>,
    /// Bumped on every change to the record, so an export can tell it is stale.
    revision: u64,
    /// The entry went away while this record's export was running: the result is dropped.
    obsolete: bool,
    failures: u32,
    /// When `record.base_etag` was last set: a listing older than this cannot tell
    /// whether the object changed since.
    based_at: SystemTime,
}

pub struct Writer {
    journal: ExportJournal,
    staging: Staging,
    lost: LostFound,
    /// Inode of the lost+found directory once it shows (0 before).
    lost_dir: AtomicU64,
    delay: Duration,
    mount_id: String,
    next_id: AtomicU64,
    /// Lock order: a node's state, then `pending`, then `schedule`.
    pending: Mutex<HashMap<u64, Pending>>,
    schedule: Mutex<Schedule>,
    wake: Notify,
    finished: Notify,
    permits: Arc<Semaphore>,
    /// Records whose export ended in a conflict (the bucket won), so `sync` can say so.
    conflicted: Mutex<std::collections::HashSet<u64>>,
}

impl Writer {
    /// Opens the journal and staging area and reloads every pending record.
    pub fn open(options: &WriteOptions) -> std::io::Result<Self> {
        let journal = ExportJournal::open(&options.cache_dir)?;
        let staging = Staging::open(&options.cache_dir)?;
        let lost = LostFound::open(&options.cache_dir)?;
        let records = journal.load_all();
        let mut max_id = staging.ids()?.into_iter().max().unwrap_or(0);
        let mut pending = HashMap::new();
        let mut schedule = Schedule::default();
        let now = Instant::now();
        for record in records {
            max_id = max_id.max(record.id);
            let staged = if record.kind == ExportKind::Upload {
                match staging.reopen(record.id) {
                    Ok(file) => Some(Arc::new(file)),
                    Err(e) => {
                        error!(key = record.key, error = %e, "staged data of a pending export is missing");
                        continue;
                    }
                }
            } else {
                None
            };
            info!(key = record.key, kind = ?record.kind, "pending export recovered from the journal");
            schedule.touch_after(record.id, &record.key, now, record.after);
            pending.insert(
                record.id,
                Pending {
                    record,
                    staged,
                    ino: None,
                    revision: 0,
                    obsolete: false,
                    failures: 0,
                    based_at: SystemTime::now(),
                },
            );
        }
        // Staging files without a record are clean copies or leftovers of finished
        // exports: nothing to send.
        for id in staging.ids()? {
            if !pending.contains_key(&id) {
                staging.remove(id);
            }
        }
        Ok(Writer {
            journal,
            staging,
            lost,
            lost_dir: AtomicU64::new(0),
            delay: options.write_back_delay,
            mount_id: options.mount_id.clone(),
            next_id: AtomicU64::new(max_id + 1),
            pending: Mutex::new(pending),
            schedule: Mutex::new(schedule),
            wake: Notify::new(),
            finished: Notify::new(),
            permits: Arc::new(Semaphore::new(EXPORT_CONCURRENCY)),
            conflicted: Mutex::new(std::collections::HashSet::new()),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of records not yet exported.
    pub fn backlog(&self) -> usize {
        self.schedule().len()
    }

    /// Writes a record to the journal and (re)starts its timer.
    fn record(
        &self,
        record: PendingExport,
        staged: Option<Arc<StagedFile>>,
        ino: Option<Ino>,
    ) -> FsResult<()> {
        self.journal.record(&record, false).map_err(io_error)?;
        let id = record.id;
        let key = record.key.clone();
        let after = record.after;
        let is_new = {
            let mut pending = self.pending();
            match pending.get_mut(&id) {
                Some(p) => {
                    if p.record.base_etag != record.base_etag {
                        p.based_at = SystemTime::now();
                    }
                    p.record = record;
                    p.staged = staged.or(p.staged.take());
                    p.ino = ino.or(p.ino);
                    p.revision += 1;
                    false
                }
                None => {
                    pending.insert(
                        id,
                        Pending {
                            record,
                            staged,
                            ino,
                            revision: 0,
                            obsolete: false,
                            failures: 0,
                            based_at: SystemTime::now(),
                        },
                    );
                    true
                }
            }
        };
        self.schedule()
            .touch_after(id, &key, Instant::now() + self.delay, after);
        if is_new {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Restarts a record's timer after a change to its staged data.
    fn touch(&self, id: u64) {
        let key = self.pending().get_mut(&id).map(|p| {
            p.revision += 1;
            p.record.key.clone()
        });
        if let Some(key) = key {
            self.schedule().touch(id, &key, Instant::now() + self.delay);
        }
    }

    /// Drops a record that never needs to reach S3 (or whose entry went away). Returns
    /// false if its export is running; it is then marked obsolete.
    fn drop_record(&self, id: u64) -> bool {
        let running = matches!(self.schedule().state(id), Some((SlotState::Exporting, _)));
        if running {
            if let Some(p) = self.pending().get_mut(&id) {
                p.obsolete = true;
            }
            return false;
        }
        self.pending().remove(&id);
        self.schedule().remove(id);
        let _ = self.journal.remove(id);
        self.staging.remove(id);
        true
    }

    /// Links a record to the node it belongs to (once the node exists).
    fn attach(&self, id: u64, ino: Ino) {
        if let Some(p) = self.pending().get_mut(&id) {
            p.ino = Some(ino);
        }
    }

    /// Names directly in directory `prefix` whose removal is still to be exported.
    pub(super) fn pending_delete_names(&self, prefix: &str) -> std::collections::HashSet<String> {
        self.pending()
            .values()
            .filter(|p| p.record.kind == ExportKind::Delete)
            .filter_map(|p| direct_child(prefix, &p.record.key).map(|(n, _)| n.to_string()))
            .collect()
    }

    /// The pending record `id`, if a listing (taken at `listed_at`) that shows the key with
    /// `remote_etag` (None: absent) proves it conflicts: its base object changed, was
    /// deleted, or (for a new key) was created meanwhile. Never a running export.
    pub(super) fn conflict_candidate(
        &self,
        id: u64,
        remote_etag: Option<Option<String>>,
        listed_at: SystemTime,
    ) -> Option<Pending> {
        if matches!(self.schedule().state(id), Some((SlotState::Exporting, _))) {
            return None;
        }
        let pending = self.pending().get(&id).cloned()?;
        if !matches!(
            pending.record.kind,
            ExportKind::Upload | ExportKind::Metadata
        ) || pending.based_at > listed_at
            || pending.obsolete
        {
            return None;
        }
        let conflict = match (&pending.record.base_etag, &remote_etag) {
            (Some(_), None) => true,
            (Some(base), Some(etag)) => etag.as_deref() != Some(base.as_str()),
            (None, Some(_)) => true,
            (None, None) => false,
        };
        conflict.then_some(pending)
    }

    /// Drops the staging file of an exported entry nobody has open any more.
    pub fn forget_staged(&self, id: u64) {
        if !self.pending().contains_key(&id) {
            self.staging.remove(id);
        }
    }

    /// The status line parts for a record: state and last error.
    fn status(&self, id: u64) -> Option<(String, Option<String>)> {
        self.schedule().state(id).map(|(state, err)| {
            let state = match state {
                SlotState::Pending => "pending export".to_string(),
                SlotState::Exporting => "exporting".to_string(),
                SlotState::Held(Hold::Conflict) => "conflict".to_string(),
                SlotState::Held(Hold::Failed(_)) => "export failed".to_string(),
            };
            (state, err)
        })
    }
}

fn io_error(e: std::io::Error) -> FsError {
    match e.raw_os_error() {
        Some(code) => FsError::Os(code),
        None => FsError::Os(libc::EIO),
    }
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

impl FsCore {
    fn writer(&self) -> FsResult<&Writer> {
        self.writer.as_ref().ok_or(FsError::ReadOnly)
    }

    /// The identity new entries are owned by.
    fn owner_for(&self, caller: Identity) -> Identity {
        self.options.access_point.unwrap_or(caller)
    }

    /// Checks a new entry's name and the parent's write permission; returns the name.
    async fn prepare_new_entry<'a>(
        &self,
        caller: Identity,
        dir: &Arc<Node>,
        name: &'a [u8],
        is_dir: bool,
    ) -> FsResult<&'a str> {
        self.writer()?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::Invalid)?;
        check_segment(name).map_err(|_| FsError::Invalid)?;
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
        if self.inodes.child(dir, name).is_some() {
            return Err(FsError::Exists);
        }
        Ok(name)
    }

    fn new_meta(&self, caller: Identity, mode: u32) -> ExportMeta {
        let owner = self.owner_for(caller);
        ExportMeta {
            uid: owner.uid,
            gid: owner.gid,
            mode,
            mtime_ns: nanos_since_epoch(SystemTime::now()),
        }
    }

    /// Adds a new local entry to `dir` with its journal record (an upload for a file or
    /// symlink with `staged` bytes, a marker for a directory) and counts the lookup.
    fn add_local_entry(
        &self,
        writer: &Writer,
        dir: &Arc<Node>,
        name: &str,
        id: u64,
        meta: ExportMeta,
        staged: Option<Arc<StagedFile>>,
    ) -> FsResult<Arc<Node>> {
        let is_dir = meta.mode & super::metadata::S_IFMT == S_IFDIR;
        let prefix = dir.state().key.clone();
        let key = if is_dir {
            format!("{prefix}{name}/")
        } else {
            format!("{prefix}{name}")
        };
        // The journal first: if it cannot be written (a full disk), the entry never
        // shows, rather than showing and never being exported.
        writer.record(
            PendingExport {
                id,
                key,
                kind: if is_dir {
                    ExportKind::Marker
                } else {
                    ExportKind::Upload
                },
                base_etag: None,
                meta,
                copy_from: None,
                after: None,
            },
            staged.clone(),
            None,
        )?;
        let node = self
            .inodes
            .add_child(dir, name, is_dir, LocalFile::pending(id, staged, meta));
        writer.attach(id, node.ino);
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
        let dir = self.node(parent)?;
        let name = self.prepare_new_entry(caller, &dir, name, false).await?;
        let writer = self.writer()?;
        let id = writer.new_id();
        let staged = Arc::new(writer.staging.create(id).map_err(io_error)?);
        let meta = self.new_meta(caller, S_IFREG | (mode & 0o7777));
        let node = self.add_local_entry(writer, &dir, name, id, meta, Some(staged))?;
        let handle = self.add_handle(node.clone(), true);
        Ok((self.attr(&node), handle))
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
        let writer = self.writer()?;
        let meta = self.new_meta(caller, S_IFDIR | (mode & 0o7777));
        let node = self.add_local_entry(writer, &dir, name, writer.new_id(), meta, None)?;
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
        let dir = self.node(parent)?;
        let name = self.prepare_new_entry(caller, &dir, name, false).await?;
        if target.is_empty() || target.len() > 4096 {
            return Err(FsError::Invalid);
        }
        let writer = self.writer()?;
        let id = writer.new_id();
        let staged = Arc::new(writer.staging.create(id).map_err(io_error)?);
        staged.write_at(target, 0).map_err(io_error)?;
        let meta = self.new_meta(caller, S_IFLNK | 0o777);
        let node = self.add_local_entry(writer, &dir, name, id, meta, Some(staged))?;
        Ok(self.attr(&node))
    }

    /// unlink(2) of a file or symlink.
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
        let writer = self.writer()?;
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
        if is_dir {
            self.require_empty_dir(&child).await?;
        }
        if self.in_lost_found(&child) {
            // Local only: delete the kept copy (or the empty lost+found directory).
            if is_dir {
                writer.lost_dir.store(0, Ordering::Relaxed);
            } else {
                writer.lost.remove(name);
            }
            self.inodes.remove_child(&dir, name);
            return Ok(());
        }
        let (key, local, in_s3) = {
            let state = child.state();
            (
                state.key.clone(),
                state.local.clone(),
                state.remote.is_some(),
            )
        };
        // Drop a pending record; if it never reached S3 there is nothing to delete.
        let mut needs_delete = in_s3;
        if let Some(local) = &local {
            let never_exported = writer.pending().get(&local.export_id).is_some_and(|p| {
                p.record.base_etag.is_none() && p.record.kind != ExportKind::Delete
            });
            let dropped = !local.dirty || writer.drop_record(local.export_id);
            if !dropped || !never_exported {
                needs_delete = true;
            }
            if !local.dirty {
                writer.staging.remove(local.export_id);
            }
        }
        // An implicit directory has no marker to delete.
        if is_dir && !in_s3 && local.is_none() {
            needs_delete = false;
        }
        self.inodes.remove_child(&dir, name);
        if needs_delete {
            let id = writer.new_id();
            let meta = child
                .state()
                .local
                .as_ref()
                .map(|l| l.meta)
                .unwrap_or(ExportMeta {
                    uid: 0,
                    gid: 0,
                    mode: 0,
                    mtime_ns: 0,
                });
            writer.record(
                PendingExport {
                    id,
                    key,
                    kind: ExportKind::Delete,
                    base_etag: None,
                    meta,
                    copy_from: None,
                    after: None,
                },
                None,
                None,
            )?;
        }
        Ok(())
    }

    /// rename(2), of files and whole directories. Instant on the mount; in S3 a pending
    /// upload simply goes to the new key, and an entry already in S3 is copied
    /// server-side to the new key, then deleted at the old one (the delete waits for the
    /// copy). `RENAME_NOREPLACE` is honoured; `RENAME_EXCHANGE` is not supported.
    pub async fn rename(
        &self,
        caller: Identity,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let writer = self.writer()?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::Invalid);
        }
        let from = self.node(parent)?;
        let to = self.node(new_parent)?;
        self.require_dir(&from)?;
        self.require_dir(&to)?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let new_name = std::str::from_utf8(new_name).map_err(|_| FsError::Invalid)?;
        check_segment(new_name).map_err(|_| FsError::Invalid)?;
        self.check(caller, &from, access::WRITE | access::EXEC)
            .await?;
        self.check(caller, &to, access::WRITE | access::EXEC)
            .await?;
        self.load_dir(&from).await?;
        self.load_dir(&to).await?;
        let src = self.inodes.child(&from, name).ok_or(FsError::NotFound)?;
        if self.in_lost_found(&from) || self.in_lost_found(&to) || self.in_lost_found(&src) {
            // lost+found is local only: nothing moves in or out of it.
            return Err(FsError::Perm);
        }
        let target = self.inodes.child(&to, new_name);
        if target.as_ref().is_some_and(|t| t.ino == src.ino) {
            return Ok(());
        }
        let src_is_dir = src.state().is_dir;
        if let Some(target) = &target {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            let target_is_dir = target.state().is_dir;
            match (src_is_dir, target_is_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => self.require_empty_dir(target).await?,
                (false, false) => {}
            }
        }
        if src_is_dir {
            // A directory cannot move below itself.
            let mut cursor = to.ino;
            loop {
                if cursor == src.ino {
                    return Err(FsError::Invalid);
                }
                if cursor == super::inode::ROOT_INO {
                    break;
                }
                cursor = self.node(cursor)?.state().parent;
            }
        }
        // Everything that moves must be known: list the whole subtree, and read the
        // metadata a server-side copy has to carry.
        let subtree = self.load_subtree(&src).await?;
        let new_prefix_len = to.state().key.len() + new_name.len() + 1;
        let old_prefix_len = src.state().key.len();
        for node in &subtree {
            let (key_len, is_dir) = {
                let s = node.state();
                (s.key.len(), s.is_dir)
            };
            if key_len - old_prefix_len + new_prefix_len > MAX_KEY_LEN {
                return Err(FsError::NameTooLong);
            }
            if !is_dir {
                self.ensure_meta(node).await?;
            }
        }
        // Exports of what moves (or is replaced) must not be running while their
        // records change keys.
        let mut ids: Vec<u64> = subtree
            .iter()
            .chain(target.iter())
            .filter_map(|n| n.state().local.as_ref().map(|l| l.export_id))
            .collect();
        ids.sort_unstable();
        self.wait_not_running(writer, &ids).await;

        // The replaced target: its pending changes are dropped; its object is
        // overwritten by the source's export (its ETag is the base), or deleted.
        let mut target_base = None;
        if let Some(target) = &target {
            let (key, remote, local) = {
                let s = target.state();
                (s.key.clone(), s.remote.clone(), s.local.clone())
            };
            if let Some(local) = local.filter(|l| l.dirty) {
                writer.drop_record(local.export_id);
            }
            let src_reaches_s3 = {
                let s = src.state();
                s.remote.is_some() || s.local.as_ref().is_some_and(|l| l.dirty)
            };
            match remote {
                Some(remote) if src_reaches_s3 => target_base = remote.etag,
                Some(_) => {
                    self.record_delete(writer, key, None)?;
                }
                None => {}
            }
        }

        let moved = self.inodes.move_child(&from, name, &to, new_name);
        for (i, (node, old_key)) in moved.iter().enumerate() {
            let base = if i == 0 { target_base.clone() } else { None };
            self.rekey(writer, node, old_key, base)?;
        }
        Ok(())
    }

    /// ENOTEMPTY unless directory `dir` has no entries (listing it first if needed).
    async fn require_empty_dir(&self, dir: &Node) -> FsResult<()> {
        self.load_dir(dir).await?;
        let empty = dir.state().children.as_ref().is_none_or(|c| c.is_empty());
        if empty {
            Ok(())
        } else {
            Err(FsError::NotEmpty)
        }
    }

    /// Lists `node` and every directory below it; returns the subtree, `node` first.
    async fn load_subtree(&self, node: &Arc<Node>) -> FsResult<Vec<Arc<Node>>> {
        let mut out = vec![node.clone()];
        let mut i = 0;
        while i < out.len() {
            let current = out[i].clone();
            i += 1;
            if !current.state().is_dir {
                continue;
            }
            self.load_dir(&current).await?;
            let children: Vec<Ino> = current
                .state()
                .children
                .iter()
                .flatten()
                .map(|(_, c)| *c)
                .collect();
            out.extend(children.into_iter().filter_map(|c| self.inodes.get(c)));
        }
        Ok(out)
    }

    async fn wait_not_running(&self, writer: &Writer, ids: &[u64]) {
        loop {
            let finished = writer.finished.notified();
            let running = {
                let schedule = writer.schedule();
                ids.iter()
                    .any(|id| matches!(schedule.state(*id), Some((SlotState::Exporting, _))))
            };
            if !running {
                return;
            }
            finished.await;
        }
    }

    fn record_delete(&self, writer: &Writer, key: String, after: Option<u64>) -> FsResult<u64> {
        let id = writer.new_id();
        writer.record(
            PendingExport {
                id,
                key,
                kind: ExportKind::Delete,
                base_etag: None,
                meta: ExportMeta {
                    uid: 0,
                    gid: 0,
                    mode: 0,
                    mtime_ns: 0,
                },
                copy_from: None,
                after,
            },
            None,
            None,
        )?;
        Ok(id)
    }

    /// After a move, points a node's export at its new key: a pending record is
    /// re-keyed; an entry already in S3 is copied there and deleted at `old_key`.
    fn rekey(
        &self,
        writer: &Writer,
        node: &Arc<Node>,
        old_key: &str,
        base: Option<String>,
    ) -> FsResult<()> {
        let (new_key, is_dir, remote, local, meta) = {
            let s = node.state();
            let fallback = s
                .remote
                .as_ref()
                .and_then(|r| r.last_modified)
                .unwrap_or(self.mounted_at);
            let meta = match &s.local {
                Some(local) => local.meta,
                None => s
                    .meta
                    .unwrap_or_else(|| PosixMeta::default_for(s.is_dir))
                    .to_export(s.is_dir, fallback),
            };
            (
                s.key.clone(),
                s.is_dir,
                s.remote.clone(),
                s.local.clone(),
                meta,
            )
        };
        if new_key == old_key {
            return Ok(());
        }
        let in_s3 = remote.is_some();
        if let Some(local) = local.filter(|l| l.dirty) {
            let record = writer
                .pending()
                .get(&local.export_id)
                .map(|p| p.record.clone());
            if let Some(mut record) = record {
                record.key = new_key.clone();
                match record.kind {
                    ExportKind::Metadata | ExportKind::Copy
                        if in_s3 && record.copy_from.is_none() =>
                    {
                        // Only metadata changed: copy with the new metadata.
                        record.kind = ExportKind::Copy;
                        record.copy_from = Some(old_key.to_string());
                        record.base_etag = remote.as_ref().and_then(|r| r.etag.clone());
                    }
                    ExportKind::Copy => {} // still copying from the original source
                    _ => record.base_etag = base,
                }
                let copy_id = (record.kind == ExportKind::Copy).then_some(record.id);
                let copies_from_old = record.copy_from.as_deref() == Some(old_key);
                if copies_from_old {
                    if let Some(local) = node.state().local.as_mut() {
                        local.source_key = Some(old_key.to_string());
                    }
                }
                writer.record(record, None, Some(node.ino))?;
                if in_s3 || copies_from_old {
                    self.record_delete(writer, old_key.to_string(), copy_id)?;
                }
            }
            return Ok(());
        }
        let Some(remote) = remote else {
            // An implicit directory, or nothing in S3 yet: only its children's keys move.
            return Ok(());
        };
        let id = writer.new_id();
        let record = if is_dir {
            PendingExport {
                id,
                key: new_key,
                kind: ExportKind::Marker,
                base_etag: None,
                meta,
                copy_from: None,
                after: None,
            }
        } else {
            PendingExport {
                id,
                key: new_key,
                kind: ExportKind::Copy,
                base_etag: remote.etag.clone(),
                meta,
                copy_from: Some(old_key.to_string()),
                after: None,
            }
        };
        node.state().local = Some(LocalFile {
            export_id: id,
            staged: None,
            meta,
            dirty: true,
            source_key: (!is_dir).then(|| old_key.to_string()),
            lost_from: None,
        });
        writer.record(record, None, Some(node.ino))?;
        self.record_delete(writer, old_key.to_string(), Some(id))?;
        Ok(())
    }

    /// Makes sure a file has local bytes to write to: the current object is copied into
    /// staging (unless `truncate`), and a pending upload is recorded.
    pub(super) async fn ensure_staged(
        &self,
        node: &Arc<Node>,
        truncate: bool,
    ) -> FsResult<Arc<StagedFile>> {
        let writer = self.writer()?;
        if let Some(staged) = self.staged_of(node) {
            if truncate && staged.size() > 0 {
                staged.set_len(0).map_err(io_error)?;
            }
            self.mark_data_dirty(node)?;
            return Ok(staged);
        }
        let _loading = node.load_lock.lock().await;
        if let Some(staged) = self.staged_of(node) {
            return Ok(staged);
        }
        let (key, source, remote, meta, existing_id) = {
            let state = node.state();
            let meta = state.local.as_ref().map(|l| l.meta).unwrap_or_else(|| {
                state
                    .meta
                    .unwrap_or_else(|| PosixMeta::default_for(false))
                    .to_export(
                        false,
                        state
                            .remote
                            .as_ref()
                            .and_then(|r| r.last_modified)
                            .unwrap_or(self.mounted_at),
                    )
            });
            // While a rename's copy is pending, the bytes are still at the old key.
            let source = state.local.as_ref().and_then(|l| l.source_key.clone());
            (
                state.key.clone(),
                source,
                state.remote.clone(),
                meta,
                state.local.as_ref().map(|l| l.export_id),
            )
        };
        let id = existing_id.unwrap_or_else(|| writer.new_id());
        let staged = Arc::new(writer.staging.create(id).map_err(io_error)?);
        if let (false, Some(remote)) = (truncate, &remote) {
            let mut offset = 0;
            while offset < remote.size {
                let end = remote.size.min(offset + MATERIALIZE_CHUNK);
                let from = source.as_deref().unwrap_or(&key);
                let data = self
                    .store
                    .get_range(from, offset..end, remote.etag.as_deref())
                    .await
                    .map_err(|e| self.store_error(from, e))?;
                if data.is_empty() {
                    break;
                }
                staged.write_at(&data, offset).map_err(io_error)?;
                offset += data.len() as u64;
            }
        }
        // The journal first, then the node: a record that could not be written (a full
        // disk) fails the open instead of leaving local bytes nothing will export.
        writer.record(
            PendingExport {
                id,
                key,
                kind: ExportKind::Upload,
                // Renamed with its copy still pending: the new key is not in S3 yet.
                base_etag: if source.is_some() {
                    None
                } else {
                    remote.and_then(|r| r.etag)
                },
                meta,
                copy_from: None,
                after: None,
            },
            Some(staged.clone()),
            Some(node.ino),
        )?;
        node.state().local = Some(LocalFile::pending(id, Some(staged.clone()), meta));
        Ok(staged)
    }

    fn staged_of(&self, node: &Node) -> Option<Arc<StagedFile>> {
        node.state().local.as_ref().and_then(|l| l.staged.clone())
    }

    /// After a change to staged bytes: mtime now, the record is an upload, timer restarts.
    fn mark_data_dirty(&self, node: &Node) -> FsResult<()> {
        let writer = self.writer()?;
        let now = nanos_since_epoch(SystemTime::now());
        let (record, staged) = {
            let mut state = node.state();
            let key = state.key.clone();
            let base = state.remote.as_ref().and_then(|r| r.etag.clone());
            let Some(local) = state.local.as_mut() else {
                return Err(FsError::BadHandle);
            };
            local.meta.mtime_ns = now;
            if local.dirty {
                let id = local.export_id;
                let is_upload = writer
                    .pending()
                    .get(&id)
                    .is_some_and(|p| p.record.kind == ExportKind::Upload);
                if is_upload {
                    drop(state);
                    writer.touch(id);
                    return Ok(());
                }
            }
            local.dirty = true;
            (
                PendingExport {
                    id: local.export_id,
                    key,
                    kind: ExportKind::Upload,
                    base_etag: base,
                    meta: local.meta,
                    copy_from: None,
                    after: None,
                },
                local.staged.clone(),
            )
        };
        writer.record(record, staged, Some(node.ino))
    }

    /// write(2) to an open handle: straight into the staging file.
    pub fn write(&self, handle: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let file = self.handle(handle)?;
        if !file.writable {
            return Err(FsError::BadHandle);
        }
        let staged = self.staged_of(&file.node).ok_or(FsError::BadHandle)?;
        staged.write_at(data, offset).map_err(io_error)?;
        self.mark_data_dirty(&file.node)?;
        Ok(data.len() as u32)
    }

    /// fallocate(2) mode 0 (extend with zeros); other modes are not supported.
    pub fn fallocate(&self, handle: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        if mode != 0 {
            return Err(FsError::Os(libc::EOPNOTSUPP));
        }
        let file = self.handle(handle)?;
        if !file.writable {
            return Err(FsError::BadHandle);
        }
        let staged = self.staged_of(&file.node).ok_or(FsError::BadHandle)?;
        let end = offset.saturating_add(length);
        if end > staged.size() {
            staged.set_len(end).map_err(io_error)?;
            self.mark_data_dirty(&file.node)?;
        }
        Ok(())
    }

    /// `setattr` when it needs no I/O: a metadata change without an access point to
    /// check. None means "use `setattr`".
    pub fn setattr_cached(&self, ino: Ino, change: &SetAttr) -> Option<FsResult<Attr>> {
        if change.size.is_some() || self.options.access_point.is_some() || self.writer.is_none() {
            return None;
        }
        let node = self.inodes.get(ino)?;
        Some(
            self.change_metadata(&node, change)
                .map(|()| self.attr(&node)),
        )
    }

    /// setattr: truncate, chmod, chown, utimens.
    pub async fn setattr(&self, caller: Identity, ino: Ino, change: SetAttr) -> FsResult<Attr> {
        let node = self.node(ino)?;
        self.writer()?;
        if let Some(who) = self.options.access_point {
            let meta = self.attr(&node);
            let owner = who.uid == 0 || who.uid == meta.uid;
            if (change.mode.is_some() || change.mtime.is_some()) && !owner {
                return Err(FsError::Perm);
            }
            if change.uid.is_some_and(|u| u != meta.uid) && who.uid != 0 {
                return Err(FsError::Perm);
            }
            if change.size.is_some() {
                self.check(caller, &node, access::WRITE).await?;
            }
        }
        let is_dir = node.state().is_dir;
        if let Some(size) = change.size {
            if is_dir {
                return Err(FsError::IsDir);
            }
            let staged = self.ensure_staged(&node, size == 0).await?;
            staged.set_len(size).map_err(io_error)?;
            self.mark_data_dirty(&node)?;
        }
        if change.mode.is_some()
            || change.uid.is_some()
            || change.gid.is_some()
            || change.mtime.is_some()
        {
            self.change_metadata(&node, &change)?;
        }
        Ok(self.attr(&node))
    }

    fn change_metadata(&self, node: &Arc<Node>, change: &SetAttr) -> FsResult<()> {
        let writer = self.writer()?;
        let record = {
            let mut state = node.state();
            let is_dir = state.is_dir;
            let fallback = state
                .remote
                .as_ref()
                .and_then(|r| r.last_modified)
                .unwrap_or(self.mounted_at);
            let mut meta = match &state.local {
                Some(local) => local.meta,
                None => state
                    .meta
                    .unwrap_or_else(|| PosixMeta::default_for(is_dir))
                    .to_export(is_dir, fallback),
            };
            if let Some(mode) = change.mode {
                meta.mode = (meta.mode & !0o7777) | (mode & 0o7777);
            }
            meta.uid = change.uid.unwrap_or(meta.uid);
            meta.gid = change.gid.unwrap_or(meta.gid);
            if let Some(mtime) = change.mtime {
                meta.mtime_ns = nanos_since_epoch(mtime);
            }
            state.meta = Some(PosixMeta::from_export(&meta));
            let key = state.key.clone();
            let base = state.remote.as_ref().and_then(|r| r.etag.clone());
            let local = state.local.get_or_insert_with(|| LocalFile {
                export_id: writer.new_id(),
                staged: None,
                meta,
                dirty: false,
                source_key: None,
                lost_from: None,
            });
            local.meta = meta;
            let id = local.export_id;
            let existing_kind = if local.dirty {
                writer
                    .pending()
                    .get(&id)
                    .map(|p| (p.record.kind, p.record.base_etag.clone()))
            } else {
                None
            };
            local.dirty = true;
            let (kind, base_etag) = match existing_kind {
                Some((kind, base)) => (kind, base),
                None if is_dir => (ExportKind::Marker, None),
                None => (ExportKind::Metadata, base),
            };
            PendingExport {
                id,
                key,
                kind,
                base_etag,
                meta,
                copy_from: None,
                after: None,
            }
        };
        writer.record(record, None, Some(node.ino))
    }

    /// fsync(2): the staged bytes and the journal record reach the disk.
    pub async fn fsync(&self, ino: Ino) -> FsResult<()> {
        let Some(writer) = self.writer.as_ref() else {
            return Ok(());
        };
        let node = self.node(ino)?;
        let local = node.state().local.clone();
        if let Some(local) = local {
            if let Some(staged) = &local.staged {
                staged.sync().map_err(io_error)?;
            }
            let record = writer
                .pending()
                .get(&local.export_id)
                .map(|p| p.record.clone());
            if let Some(record) = record {
                writer.journal.record(&record, true).map_err(io_error)?;
            }
        }
        Ok(())
    }

    /// The state part of `user.s3files.status` for a node.
    pub(super) fn sync_state(&self, node: &Node) -> (String, String) {
        let local = node.state().local.clone();
        if let Some(origin) = local.as_ref().and_then(|l| l.lost_from.clone()) {
            if !origin.is_empty() {
                return (
                    "conflict".into(),
                    format!("the object changed in S3; this local copy of {origin} is never exported\noriginal-path: {origin}"),
                );
            }
        }
        let Some(local) = local.filter(|l| l.dirty) else {
            return ("synced".into(), "none".into());
        };
        match self.writer.as_ref().and_then(|w| w.status(local.export_id)) {
            Some((state, err)) => (state, err.unwrap_or_else(|| "none".into())),
            None => ("synced".into(), "none".into()),
        }
    }

    /// `s3files sync`: exports every pending record at or under `ino` now and waits for
    /// them. Fails with EIO if any of them failed or is in conflict.
    pub async fn sync_tree(&self, ino: Ino) -> FsResult<()> {
        let Some(writer) = self.writer.as_ref() else {
            return Ok(());
        };
        let node = self.node(ino)?;
        let (prefix, is_dir) = {
            let s = node.state();
            (s.key.clone(), s.is_dir)
        };
        let ids: Vec<u64> = writer
            .pending()
            .iter()
            .filter(|(_, p)| {
                if is_dir {
                    p.record.key.starts_with(&prefix)
                } else {
                    p.record.key == prefix
                }
            })
            .map(|(id, _)| *id)
            .collect();
        self.wait_exported(writer, &ids, None).await
    }

    /// Exports everything pending now; waits at most `limit`. Returns how many records
    /// are left in the journal.
    pub async fn flush_all(&self, limit: Duration) -> usize {
        let Some(writer) = self.writer.as_ref() else {
            return 0;
        };
        let ids = writer.schedule().ids();
        let _ = self.wait_exported(writer, &ids, Some(limit)).await;
        writer.backlog()
    }

    async fn wait_exported(
        &self,
        writer: &Writer,
        ids: &[u64],
        limit: Option<Duration>,
    ) -> FsResult<()> {
        writer.schedule().expedite(ids, Instant::now());
        writer.wake.notify_one();
        let deadline = limit.map(|l| Instant::now() + l);
        loop {
            let finished = writer.finished.notified();
            let mut failed = false;
            let mut waiting = false;
            {
                let schedule = writer.schedule();
                for id in ids {
                    match schedule.state(*id) {
                        None => {}
                        Some((SlotState::Held(_), _)) => failed = true,
                        Some((SlotState::Pending, Some(_))) => failed = true,
                        Some(_) => waiting = true,
                    }
                }
            }
            if !waiting {
                let conflicts = {
                    let conflicted = writer.conflicted.lock().unwrap_or_else(|e| e.into_inner());
                    ids.iter().any(|id| conflicted.contains(id))
                };
                return if failed || conflicts {
                    Err(FsError::Os(libc::EIO))
                } else {
                    Ok(())
                };
            }
            match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() || tokio::time::timeout(left, finished).await.is_err() {
                        return Err(FsError::Os(libc::ETIMEDOUT));
                    }
                }
                None => finished.await,
            }
        }
    }

    /// The export loop: starts due exports (bounded), forever. Spawn once per mount.
    pub async fn run_exports(self: Arc<Self>) {
        let Some(writer) = self.writer.as_ref() else {
            return;
        };
        loop {
            let wake = writer.wake.notified();
            let free = writer.permits.available_permits();
            let (ready, next) = {
                let mut schedule = writer.schedule();
                {
                    let now = Instant::now();
                    (schedule.take_due(now, free), schedule.next_due_after(now))
                }
            };
            for id in ready {
                let Ok(permit) = writer.permits.clone().acquire_owned().await else {
                    return;
                };
                let core = self.clone();
                tokio::spawn(async move {
                    core.export_one(id).await;
                    drop(permit);
                    if let Some(w) = core.writer.as_ref() {
                        w.wake.notify_one();
                        w.finished.notify_waiters();
                    }
                });
            }
            match next {
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    tokio::select! {
                        _ = wake => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    async fn export_one(&self, id: u64) {
        let Some(writer) = self.writer.as_ref() else {
            return;
        };
        let Some(entry) = writer.pending().get(&id).cloned() else {
            writer.schedule().remove(id);
            return;
        };
        let version = entry.staged.as_ref().map(|s| s.version());
        let token = export_token(&writer.mount_id, &entry.record, entry.staged.as_deref());
        let outcome =
            export_once(&self.store, &entry.record, entry.staged.as_deref(), &token).await;
        if let Some(staged) = &entry.staged {
            // Reopened by the next write if the file is still in use.
            staged.close_idle();
        }
        let record = &entry.record;
        match outcome {
            Outcome::Done { etag, size } => {
                self.metrics
                    .exports
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(key = record.key, kind = ?record.kind, size, "exported");
                self.export_done(writer, &entry, etag, size, version);
            }
            Outcome::Raced => {
                writer
                    .schedule()
                    .finish(id, Some(Instant::now() + Duration::from_millis(50)), None)
            }
            Outcome::Conflict => {
                self.metrics
                    .conflicts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.resolve_conflict(writer, &entry, &self.store).await;
            }
            Outcome::Failed(e) => {
                self.metrics
                    .s3_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let failures = {
                    let mut pending = writer.pending();
                    pending.get_mut(&id).map_or(1, |p| {
                        p.failures += 1;
                        p.failures
                    })
                };
                if retryable(&e) {
                    let delay = RETRY_DELAY
                        .saturating_mul(1 << failures.min(5))
                        .min(MAX_RETRY_DELAY);
                    warn!(key = record.key, error = %e, retry_in = ?delay, "export failed; will retry");
                    writer
                        .schedule()
                        .finish(id, Some(Instant::now() + delay), Some(e.to_string()));
                } else {
                    self.metrics
                        .export_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    error!(key = record.key, error = %e, "export failed; kept in the journal until `s3files sync`");
                    writer.schedule().hold(id, Hold::Failed(e.to_string()));
                }
            }
        }
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

    /// Applies a finished export: the record leaves the journal unless the entry changed
    /// while it ran, and the node now matches the new object.
    fn export_done(
        &self,
        writer: &Writer,
        entry: &Pending,
        etag: Option<String>,
        size: u64,
        version: Option<u64>,
    ) {
        let id = entry.record.id;
        let current = writer.pending().get(&id).cloned();
        let Some(current) = current else { return };
        let unchanged = current.revision == entry.revision
            && version == current.staged.as_ref().map(|s| s.version())
            && !current.obsolete;
        if current.obsolete {
            writer.pending().remove(&id);
            writer.schedule().remove(id);
            let _ = writer.journal.remove(id);
            writer.staging.remove(id);
            return;
        }
        // The node, if any, now mirrors the exported object.
        if let Some(node) = current.ino.and_then(|ino| self.inodes.get(ino)) {
            let mut state = node.state();
            if entry.record.kind != ExportKind::Delete {
                // Only uploads change the body; copies and metadata updates keep its size.
                let size = match (&entry.record.kind, &state.remote) {
                    (ExportKind::Upload, _) | (_, None) => size,
                    (_, Some(remote)) => remote.size,
                };
                state.remote = Some(RemoteObject {
                    size,
                    etag: etag.clone(),
                    last_modified: Some(SystemTime::now()),
                });
            }
            if unchanged {
                let keep_bytes = state.handles > 0;
                if let Some(local) = state.local.as_mut() {
                    local.dirty = false;
                }
                state.meta = Some(PosixMeta::from_export(&entry.record.meta));
                if !keep_bytes {
                    state.local = None;
                }
            }
        }
        if unchanged && entry.record.kind == ExportKind::Upload {
            if let (Some(etag), Some(staged)) = (&etag, &current.staged) {
                self.cache_exported(&entry.record.key, etag, staged);
            }
        }
        if unchanged {
            writer.pending().remove(&id);
            writer.schedule().remove(id);
            let _ = writer.journal.remove(id);
            let clean_unused = current
                .ino
                .and_then(|ino| self.inodes.get(ino))
                .is_none_or(|n| n.state().local.is_none());
            if clean_unused {
                writer.staging.remove(id);
            }
        } else {
            // Changed meanwhile: the bucket holds our intermediate version, which is the
            // new base of the next export.
            let mut record = current.record.clone();
            // If a rename moved the record to another key meanwhile, its base is that
            // key's, already set by the rename.
            if record.kind != ExportKind::Delete && record.key == entry.record.key {
                record.base_etag = etag;
                if record.kind == ExportKind::Copy {
                    // The copy is done; what changed since is the entry's data or metadata.
                    record.kind = if current.staged.is_some() {
                        ExportKind::Upload
                    } else {
                        ExportKind::Metadata
                    };
                    record.copy_from = None;
                }
            }
            let _ = writer.journal.record(&record, false);
            if let Some(p) = writer.pending().get_mut(&id) {
                p.record.base_etag = record.base_etag;
                p.based_at = SystemTime::now();
            }
            writer.schedule().finish(id, None, None);
        }
    }

    /// The bucket wins a conflict: a local copy with bytes goes to lost+found, and the
    /// path shows the bucket's version (or disappears, if the object was deleted).
    /// Conflicts without local bytes (a metadata change) just give way; a conflicting
    /// rename copy is held, so its old key is never deleted.
    pub(super) async fn resolve_conflict(
        &self,
        writer: &Writer,
        entry: &Pending,
        store: &Arc<dyn ObjectStore>,
    ) {
        let record = &entry.record;
        let id = record.id;
        let movable = matches!(record.kind, ExportKind::Upload | ExportKind::Metadata);
        if !movable || entry.obsolete {
            error!(
                key = record.key,
                "export refused: the object changed in S3; the change is held"
            );
            writer.schedule().hold(id, Hold::Conflict);
            return;
        }
        let origin = format!(
            "/{}",
            record
                .key
                .strip_prefix(&self.options.root_prefix)
                .unwrap_or(&record.key)
        );
        let name = record
            .key
            .rsplit('/')
            .next()
            .unwrap_or(&record.key)
            .to_string();
        let kept = match (&record.kind, &entry.staged) {
            (ExportKind::Upload, Some(_)) => {
                match writer
                    .lost
                    .keep(&writer.staging.path(id), id, &name, &origin)
                {
                    Ok(file_name) => Some(file_name),
                    Err(e) => {
                        error!(key = record.key, error = %e, "cannot move a conflicting local copy to lost+found; held");
                        writer.schedule().hold(id, Hold::Conflict);
                        return;
                    }
                }
            }
            _ => None,
        };
        writer
            .conflicted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        writer.pending().remove(&id);
        writer.schedule().remove(id);
        let _ = writer.journal.remove(id);
        // The path now shows the bucket's version.
        let head = store.head(&record.key).await;
        if let Some(node) = entry.ino.and_then(|ino| self.inodes.get(ino)) {
            match head {
                Ok(head) => {
                    let mut state = node.state();
                    state.meta = Some(PosixMeta::from_user_metadata(&head.metadata, false));
                    state.remote = Some(RemoteObject {
                        size: head.size,
                        etag: head.etag,
                        last_modified: head.last_modified,
                    });
                    state.local = None;
                    state.symlink_target = None;
                    drop(state);
                    self.invalidate_inode(node.ino);
                }
                Err(_) => {
                    // Deleted in S3: the delete wins.
                    let (parent, node_name) = {
                        let s = node.state();
                        (s.parent, s.name.clone())
                    };
                    if let Some(dir) = self.inodes.get(parent) {
                        if self
                            .inodes
                            .child(&dir, &node_name)
                            .is_some_and(|c| c.ino == node.ino)
                        {
                            self.inodes.remove_child(&dir, &node_name);
                            self.invalidate_entry(parent, &node_name);
                        }
                    }
                    node.state().local = None;
                }
            }
        }
        match kept {
            Some(file_name) => {
                error!(
                    key = record.key,
                    lost_found = %format!("/{}{}/{file_name}", lost_found::DIR_PREFIX, writer.mount_id),
                    "conflict: the object changed in S3; the bucket wins and the local copy is in lost+found"
                );
                self.show_lost(writer, &file_name, &origin, record.meta);
            }
            None => error!(
                key = record.key,
                "conflict: the object changed in S3; the local metadata change is dropped"
            ),
        }
    }

    /// Adds a kept file to the lost+found directory (created at the mount root if needed).
    fn show_lost(&self, writer: &Writer, file_name: &str, origin: &str, meta: ExportMeta) {
        let Some(root) = self.inodes.get(super::inode::ROOT_INO) else {
            return;
        };
        if root.state().children.is_none() {
            return; // shown when the root is listed
        }
        let dir_name = format!("{}{}", lost_found::DIR_PREFIX, writer.mount_id);
        let dir = match self.inodes.child(&root, &dir_name) {
            Some(dir) => dir,
            None => {
                let owner = self.options.access_point.map_or((0, 0), |a| (a.uid, a.gid));
                let dir = self.inodes.add_child(
                    &root,
                    &dir_name,
                    true,
                    LocalFile {
                        export_id: 0,
                        staged: None,
                        meta: ExportMeta {
                            uid: owner.0,
                            gid: owner.1,
                            mode: S_IFDIR | 0o700,
                            mtime_ns: nanos_since_epoch(SystemTime::now()),
                        },
                        dirty: false,
                        source_key: None,
                        lost_from: Some(String::new()),
                    },
                );
                writer.lost_dir.store(dir.ino, Ordering::Relaxed);
                dir
            }
        };
        let staged = match StagedFile::open_path(&writer.lost.path(file_name)) {
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
            LocalFile {
                export_id: 0,
                staged: Some(staged),
                meta,
                dirty: false,
                source_key: None,
                lost_from: Some(origin.to_string()),
            },
        );
    }

    /// Whether a node is the lost+found directory or inside it.
    pub(super) fn in_lost_found(&self, node: &Node) -> bool {
        let Some(writer) = self.writer.as_ref() else {
            return false;
        };
        let lost = writer.lost_dir.load(Ordering::Relaxed);
        lost != 0 && (node.ino == lost || node.state().parent == lost)
    }

    /// Attaches recovered records to the entries of a directory just listed: pending
    /// uploads and markers show (with their local state), pending deletes hide.
    pub(super) fn overlay_pending(&self, dir: &Node) {
        let Some(writer) = self.writer.as_ref() else {
            return;
        };
        if dir.ino == super::inode::ROOT_INO {
            let owner = self.options.access_point.map_or((0, 0), |a| (a.uid, a.gid));
            for (file_name, origin) in writer.lost.entries().unwrap_or_default() {
                let mtime_ns = std::fs::metadata(writer.lost.path(&file_name))
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .map_or(0, nanos_since_epoch);
                let meta = ExportMeta {
                    uid: owner.0,
                    gid: owner.1,
                    mode: S_IFREG | 0o600,
                    mtime_ns,
                };
                self.show_lost(writer, &file_name, &origin, meta);
            }
        }
        let prefix = dir.state().key.clone();
        let mine: Vec<(u64, Pending)> = writer
            .pending()
            .iter()
            .filter(|(_, p)| p.ino.is_none() && direct_child(&prefix, &p.record.key).is_some())
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        let mut mine = mine;
        mine.sort_by_key(|(id, _)| *id);
        for (id, p) in mine {
            let Some((name, is_dir)) = direct_child(&prefix, &p.record.key) else {
                continue;
            };
            if p.record.kind == ExportKind::Delete {
                self.inodes.remove_child(dir, name);
                continue;
            }
            let local = LocalFile::pending(id, p.staged.clone(), p.record.meta);
            let node = match self.inodes.child(dir, name) {
                Some(node) => {
                    let mut state = node.state();
                    state.meta = Some(PosixMeta::from_export(&local.meta));
                    state.local = Some(local);
                    drop(state);
                    node
                }
                None => self.inodes.add_child(dir, name, is_dir, local),
            };
            if let Some(pending) = writer.pending().get_mut(&id) {
                pending.ino = Some(node.ino);
            }
        }
    }

    /// Opened for writing: `open` calls this for O_WRONLY/O_RDWR/O_TRUNC.
    pub(super) async fn open_for_write(&self, node: &Arc<Node>, truncate: bool) -> FsResult<()> {
        if node.state().is_dir {
            return Err(FsError::IsDir);
        }
        self.ensure_staged(node, truncate).await?;
        Ok(())
    }
}

/// `(name, is_dir)` when `key` is an entry directly inside directory `prefix`.
fn direct_child<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, bool)> {
    let rest = key.strip_prefix(prefix)?;
    match rest.strip_suffix('/') {
        Some(dir) if !dir.is_empty() && !dir.contains('/') => Some((dir, true)),
        _ if !rest.is_empty() && !rest.contains('/') => Some((rest, false)),
        _ => None,
    }
}

/// A token naming this export of this record's content: `<mount>-<id>-<fingerprint>`.
fn export_token(mount_id: &str, record: &PendingExport, staged: Option<&StagedFile>) -> String {
    let fingerprint = match staged {
        Some(s) => format!("{:x}-{:x}", s.size(), record.meta.mtime_ns),
        None => format!("{:x}", record.meta.mtime_ns),
    };
    format!("{mount_id}-{:x}-{fingerprint}", record.id)
}

/// Errors worth another try later (the SDK already retried each request a few times).
fn retryable(error: &StoreError) -> bool {
    match error {
        StoreError::Throttled(_) | StoreError::Unreachable(_) | StoreError::Other(_) => true,
        StoreError::Service { status, .. } => *status >= 500,
        _ => false,
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
