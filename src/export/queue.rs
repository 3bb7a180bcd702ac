//! The export queue: every local change waiting for S3, behind one narrow interface.
//! It owns the journal (the truth after a crash), the staging area (local bytes), the
//! lost+found store, the schedule (debounce, one key in order) and the export loop with
//! its retry policy. It knows nothing of inodes: results go back to the file-system core
//! through `ExportSink`, and the core is the only place that touches both node state and
//! these records (src/fs/sync.rs).
//!
//! Locks: `records` then `schedule` (levels in `crate::lock_order`); the core may call
//! in while holding node locks (nodes come first in the order). No lock is held across
//! the journal's disk writes or a request to S3.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, Semaphore};
use tracing::{error, info, warn};

use super::failure::{ExportErrorCode, ExportFailure};
use super::journal::{ExportJournal, ExportKind, PendingExport};
use super::lost_found::LostFound;
use super::schedule::{Hold, Schedule, SlotState};
use super::staging::{StagedFile, Staging};
use super::{export_once, Outcome};
use crate::lock_order::{Level, OrderedMutex};
use crate::posix::PosixMeta;
use crate::store::{ObjectStore, StoreError};

/// Exports running at once (across files; one file's exports stay in order).
const EXPORT_CONCURRENCY: usize = 8;
/// Wait before retrying an export that failed with a retryable error (after the SDK's
/// own retries), doubling up to `MAX_RETRY_DELAY`.
const RETRY_DELAY: Duration = Duration::from_secs(2);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// Conflicts remembered for `sync` to report; older ones are forgotten first.
const MAX_REMEMBERED_CONFLICTS: usize = 10_000;

/// Where and how writes are kept until exported.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub cache_dir: PathBuf,
    pub write_back_delay: Duration,
    pub mount_id: String,
}

/// One queued record and what the export loop needs with it.
#[derive(Debug, Clone)]
pub struct Queued {
    pub record: PendingExport,
    pub staged: Option<Arc<StagedFile>>,
    /// The inode this record belongs to (None for deletes, and for records recovered
    /// after a restart until their directory is listed).
    pub ino: Option<u64>,
    /// Bumped on every change to the record, so an export can tell it is stale.
    pub revision: u64,
    /// The entry went away while this record's export was running: the result is dropped.
    pub obsolete: bool,
    failures: u32,
    /// When `record.base_etag` was last set: a listing older than this cannot tell
    /// whether the object changed since.
    pub based_at: SystemTime,
}

/// The records, by id and by key (for "what is pending under this prefix").
#[derive(Debug, Default)]
struct Records {
    by_id: HashMap<u64, Queued>,
    by_key: BTreeMap<String, BTreeSet<u64>>,
}

impl Records {
    fn insert(&mut self, queued: Queued) {
        let id = queued.record.id;
        if let Some(old) = self.by_id.get(&id) {
            if old.record.key != queued.record.key {
                let old_key = old.record.key.clone();
                self.unindex(id, &old_key);
            }
        }
        self.by_key
            .entry(queued.record.key.clone())
            .or_default()
            .insert(id);
        self.by_id.insert(id, queued);
    }

    fn remove(&mut self, id: u64) -> Option<Queued> {
        let queued = self.by_id.remove(&id)?;
        self.unindex(id, &queued.record.key);
        Some(queued)
    }

    fn unindex(&mut self, id: u64, key: &str) {
        if let Some(ids) = self.by_key.get_mut(key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// Records whose key starts with `prefix`, in key order.
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Queued> + 'a {
        self.by_key
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .flat_map(|(_, ids)| ids.iter())
            .filter_map(|id| self.by_id.get(id))
    }
}

/// What the export loop reports to the file-system core.
#[async_trait::async_trait]
pub trait ExportSink: Send + Sync {
    /// An export finished: the bucket holds `etag` (None for a delete) at the record's
    /// key. The sink updates the node (if any) and calls `ExportQueue::settle`.
    fn exported(&self, entry: &Queued, etag: Option<String>, size: u64);
    /// The export met a conflict: the object changed in S3 since the change was based
    /// on it. The sink resolves it (the bucket wins) with `ExportQueue` calls.
    async fn conflict(&self, entry: &Queued);
}

/// A record's part of `user.s3files.status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordStatus {
    /// `pending export`, `exporting`, `conflict` or `export failed`.
    pub state: String,
    /// The last error of an export attempt, retryable ones included.
    pub last_error: Option<String>,
    /// Set when the record failed for good (`export failed`): S3 Files' `ExportError`.
    pub export_error: Option<ExportErrorCode>,
}

/// How `ExportQueue::settle` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The record left the queue; its journal line had this sequence number.
    Done { journal_seq: Option<u64> },
    /// It changed while it was exported: it stays queued, based on what was written.
    Rebased,
}

/// How waiting for a set of records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// All exported.
    Exported,
    /// Some failed (held) or lost a conflict.
    Failed,
    /// The time limit passed first.
    TimedOut,
}

pub struct ExportQueue {
    journal: ExportJournal,
    staging: Staging,
    lost: LostFound,
    delay: Duration,
    mount_id: String,
    next_id: AtomicU64,
    records: OrderedMutex<Records>,
    schedule: OrderedMutex<Schedule>,
    /// Records whose export ended in a conflict (the bucket won), so `sync` can say so;
    /// bounded, oldest forgotten first.
    conflicted: OrderedMutex<BTreeSet<u64>>,
    wake: Notify,
    finished: Notify,
    permits: Arc<Semaphore>,
}

impl ExportQueue {
    /// Ends the queue's own threads (the staging file pool) without flushing anything.
    pub fn halt(&self) {
        self.staging.stop_pool();
    }

    /// Opens the journal and staging area and reloads every pending record.
    pub fn open(options: &QueueOptions) -> std::io::Result<Self> {
        let journal = ExportJournal::open(&options.cache_dir)?;
        let staging = Staging::open(&options.cache_dir)?;
        let lost = LostFound::open(&options.cache_dir)?;
        let mut max_id = staging.ids()?.into_iter().max().unwrap_or(0);
        let mut records = Records::default();
        let mut schedule = Schedule::default();
        let now = Instant::now();
        for record in journal.load_all() {
            max_id = max_id.max(record.id);
            let staged = if record.kind == ExportKind::Upload {
                match staging.reopen(record.id) {
                    Ok(file) => Some(Arc::new(file)),
                    Err(e) => {
                        error!(key = record.key, error = %e, "staged data of a pending export is missing; the change cannot be exported");
                        let _ = journal.remove(record.id);
                        continue;
                    }
                }
            } else {
                None
            };
            info!(key = record.key, kind = ?record.kind, "pending export recovered from the journal");
            // Like any change, exported once the write-back delay has passed (here:
            // since the restart), or at once by `sync` and unmount.
            schedule.touch_after(
                record.id,
                &record.key,
                now + options.write_back_delay,
                record.after,
            );
            records.insert(Queued {
                record,
                staged,
                ino: None,
                revision: 0,
                obsolete: false,
                failures: 0,
                based_at: SystemTime::now(),
            });
        }
        // Staging files without a record are clean copies or leftovers of finished
        // exports: nothing to send.
        for id in staging.ids()? {
            if !records.by_id.contains_key(&id) {
                staging.remove(id);
            }
        }
        Ok(ExportQueue {
            journal,
            staging,
            lost,
            delay: options.write_back_delay,
            mount_id: options.mount_id.clone(),
            next_id: AtomicU64::new(max_id + 1),
            records: OrderedMutex::new(Level::Records, records),
            schedule: OrderedMutex::new(Level::Schedule, schedule),
            conflicted: OrderedMutex::new(Level::Schedule, BTreeSet::new()),
            wake: Notify::new(),
            finished: Notify::new(),
            permits: Arc::new(Semaphore::new(EXPORT_CONCURRENCY)),
        })
    }

    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn mount_id(&self) -> &str {
        &self.mount_id
    }

    pub fn staging(&self) -> &Staging {
        &self.staging
    }

    pub fn lost(&self) -> &LostFound {
        &self.lost
    }

    /// Number of records not yet exported.
    pub fn backlog(&self) -> usize {
        self.schedule.lock().len()
    }

    /// When the oldest record not yet exported was made (for records recovered from the
    /// journal: when this mount started).
    pub fn oldest_pending(&self) -> Option<Instant> {
        self.schedule.lock().oldest()
    }

    /// Bytes of staged data the records not yet exported would upload (`s3files sync`'s
    /// progress, the root's status). The staged files are collected under the locks and
    /// measured after them: a size may read the file when passthrough writes are open.
    pub fn pending_bytes(&self) -> u64 {
        let staged: Vec<Arc<StagedFile>> = {
            let records = self.records.lock();
            let schedule = self.schedule.lock();
            schedule
                .ids()
                .into_iter()
                .filter_map(|id| records.by_id.get(&id)?.staged.clone())
                .collect()
        };
        staged.iter().map(|file| file.size()).sum()
    }

    /// Step 1 of recording a change: the journal line (disk; call with no lock held).
    /// If it fails (a full disk), the change must be refused: nothing would export it.
    pub fn journal(&self, record: &PendingExport) -> std::io::Result<()> {
        crate::lock_order::assert_unlocked("a journal write");
        self.journal.record(record, false).map(|_| ())
    }

    /// Step 2 of recording a change: the record joins the queue and its timer
    /// (re)starts. Memory only: the core calls it under the node's lock, so a finishing
    /// export sees either the old record or the new one, never a gap.
    pub fn enqueue(
        &self,
        record: PendingExport,
        staged: Option<Arc<StagedFile>>,
        ino: Option<u64>,
    ) {
        let id = record.id;
        let key = record.key.clone();
        let after = record.after;
        let is_new = {
            let mut records = self.records.lock();
            let queued = match records.by_id.get(&id) {
                Some(p) => Queued {
                    based_at: if p.record.base_etag != record.base_etag {
                        SystemTime::now()
                    } else {
                        p.based_at
                    },
                    staged: staged.or(p.staged.clone()),
                    ino: ino.or(p.ino),
                    revision: p.revision + 1,
                    obsolete: p.obsolete,
                    failures: p.failures,
                    record,
                },
                None => Queued {
                    record,
                    staged,
                    ino,
                    revision: 0,
                    obsolete: false,
                    failures: 0,
                    based_at: SystemTime::now(),
                },
            };
            let is_new = queued.revision == 0;
            records.insert(queued);
            is_new
        };
        self.schedule
            .lock()
            .touch_after(id, &key, Instant::now() + self.delay, after);
        if is_new {
            self.wake.notify_one();
        }
    }

    /// Both steps, for records that belong to no node (deletes).
    pub fn record(&self, record: PendingExport) -> std::io::Result<()> {
        self.journal(&record)?;
        self.enqueue(record, None, None);
        Ok(())
    }

    /// Restarts a record's timer after a change to its staged data. False if there is
    /// no such record (it finished meanwhile): the caller records the change anew.
    pub fn touch(&self, id: u64) -> bool {
        let key = {
            let mut records = self.records.lock();
            records.by_id.get_mut(&id).map(|p| {
                p.revision += 1;
                p.record.key.clone()
            })
        };
        match key {
            Some(key) => {
                self.schedule
                    .lock()
                    .touch(id, &key, Instant::now() + self.delay);
                true
            }
            None => false,
        }
    }

    /// After a write to an entry whose record is an upload: restarts its timer and
    /// takes the entry's new attributes (mtime). False if record `id` is not a queued
    /// upload: the caller records the change anew.
    pub fn touch_upload(&self, id: u64, meta: PosixMeta) -> bool {
        let key = {
            let mut records = self.records.lock();
            match records.by_id.get_mut(&id) {
                Some(p) if p.record.kind == ExportKind::Upload => {
                    p.revision += 1;
                    p.record.meta = meta;
                    p.record.key.clone()
                }
                _ => return false,
            }
        };
        self.schedule
            .lock()
            .touch(id, &key, Instant::now() + self.delay);
        true
    }

    /// Drops a record that never needs to reach S3 (or whose entry went away), with its
    /// staged bytes unless open handles still use them (`drop_staged` false: they go
    /// with the last one, `forget_staged`). A running export is marked obsolete instead
    /// (its result is dropped when it ends). Returns false in that case.
    pub fn cancel(&self, id: u64, drop_staged: bool) -> bool {
        let running = matches!(
            self.schedule.lock().state(id),
            Some((SlotState::Exporting, _))
        );
        if running {
            if let Some(p) = self.records.lock().by_id.get_mut(&id) {
                p.obsolete = true;
            }
            return false;
        }
        self.records.lock().remove(id);
        self.schedule.lock().remove(id);
        let _ = self.journal.remove(id);
        if drop_staged {
            self.staging.remove(id);
        }
        true
    }

    /// Links a record to the node it belongs to (once the node exists).
    pub fn attach(&self, id: u64, ino: u64) {
        if let Some(p) = self.records.lock().by_id.get_mut(&id) {
            p.ino = Some(ino);
        }
    }

    /// A copy of record `id` as queued now.
    pub fn get(&self, id: u64) -> Option<Queued> {
        self.records.lock().by_id.get(&id).cloned()
    }

    /// Claims a waiting record for a poll-time conflict resolution (see
    /// `Schedule::claim`); false if it is running, held or gone.
    pub fn claim(&self, id: u64) -> bool {
        self.schedule.lock().claim(id)
    }

    /// Makes record `id` due now (it was due already: re-recording it restarted its
    /// write-back timer).
    pub fn due_now(&self, id: u64) {
        self.schedule.lock().expedite(&[id], Instant::now());
        self.wake.notify_one();
    }

    /// Ends a claim that decided nothing: the record waits as before.
    pub fn release_claim(&self, id: u64) {
        let mut schedule = self.schedule.lock();
        if matches!(schedule.state(id), Some((SlotState::Exporting, _))) {
            schedule.finish(id, None, None);
        }
        drop(schedule);
        self.finished.notify_waiters();
    }

    pub fn is_running(&self, id: u64) -> bool {
        matches!(
            self.schedule.lock().state(id),
            Some((SlotState::Exporting, _))
        )
    }

    /// Every record whose key starts with `prefix` (a directory's prefix, or a key).
    pub fn under(&self, prefix: &str) -> Vec<Queued> {
        self.records.lock().under(prefix).cloned().collect()
    }

    /// Ids of the records at key `key` exactly, or under it when it is a prefix.
    pub fn ids_under(&self, prefix: &str, exact: bool) -> Vec<u64> {
        self.records
            .lock()
            .under(prefix)
            .filter(|p| !exact || p.record.key == prefix)
            .map(|p| p.record.id)
            .collect()
    }

    /// Ends an exported record, provided nothing changed it while it ran (the same
    /// revision): it leaves the queue, and `after_settle` takes its journal line. If it
    /// changed, it stays queued, rebased on what was just written. Called by the sink
    /// under the node's lock (if the record has a node): while the node still shows the
    /// change, no new journal line for the same id can be written, so the sequence
    /// number taken here is the exported one's.
    pub fn settle(&self, entry: &Queued, etag: Option<String>) -> Settled {
        let id = entry.record.id;
        let journal_seq = self.journal.seq(id);
        let mut records = self.records.lock();
        let Some(current) = records.by_id.get_mut(&id) else {
            // Gone already (cancelled, or lost a conflict): its remover took the line.
            return Settled::Done { journal_seq: None };
        };
        let version = |q: &Queued| q.staged.as_ref().map(|s| s.version());
        let unchanged = current.revision == entry.revision
            && version(current) == version(entry)
            && !current.obsolete;
        if unchanged || current.obsolete {
            let key = current.record.key.clone();
            let wrote = current.record.kind != ExportKind::Delete;
            records.remove(id);
            if wrote {
                // A delete of this key queued meanwhile (the entry was unlinked while
                // its export ran) deletes what this export just wrote.
                let later: Vec<u64> = records
                    .by_key
                    .get(&key)
                    .map(|ids| ids.iter().copied().filter(|i| *i > id).collect())
                    .unwrap_or_default();
                for later in later {
                    if let Some(q) = records.by_id.get_mut(&later) {
                        if q.record.kind == ExportKind::Delete {
                            q.record.base_etag = etag.clone();
                        }
                    }
                }
            }
            drop(records);
            self.schedule.lock().remove(id);
            return Settled::Done { journal_seq };
        }
        // Changed meanwhile: the bucket holds our intermediate version, which is the
        // base of the next export, unless a rename moved the record to another key
        // (the rename set that key's base).
        if current.record.kind != ExportKind::Delete && current.record.key == entry.record.key {
            current.record.base_etag = etag;
            current.based_at = SystemTime::now();
            if current.record.kind == ExportKind::Copy {
                // The copy is done; what changed since is the entry's data or metadata.
                current.record.kind = if current.staged.is_some() {
                    ExportKind::Upload
                } else {
                    ExportKind::Metadata
                };
                current.record.copy_from = None;
                current.record.copy_etag = None;
            }
        }
        Settled::Rebased
    }

    /// The disk side of a finished export, after `settle` (call with no lock held): the
    /// exported journal line goes (a line written for the same id since stays), and so
    /// do staged bytes no one needs (`drop_staged`); a rebased record is journaled again
    /// and waits for its next turn.
    pub fn after_settle(&self, id: u64, settled: &Settled, drop_staged: bool) {
        match settled {
            Settled::Done { journal_seq } => {
                if let Some(seq) = journal_seq {
                    let _ = self.journal.remove_if(id, *seq);
                }
                if drop_staged && self.get(id).is_none() {
                    self.staging.remove(id);
                }
            }
            Settled::Rebased => {
                if let Some(p) = self.get(id) {
                    let _ = self.journal.record(&p.record, false);
                    self.schedule.lock().finish(id, None, None);
                }
            }
        }
    }

    /// Drops the staged bytes of an exported entry nobody has open any more.
    pub fn forget_staged(&self, id: u64) {
        if self.get(id).is_none() {
            self.staging.remove(id);
        }
    }

    /// Removes a record whose entry went away while it was claimed or exported, with
    /// its staged bytes.
    pub fn remove_obsolete(&self, id: u64) {
        self.records.lock().remove(id);
        self.schedule.lock().remove(id);
        let _ = self.journal.remove(id);
        self.staging.remove(id);
        self.finished.notify_waiters();
    }

    /// Takes back this mount's pending deletes of `key` when a new record is about to
    /// write the key again (a file created where one was removed, a rename back to a
    /// name): they were recorded before, and the new record replaces what they would
    /// delete. Returns the version they would have deleted (the new record's base: what
    /// this mount last saw at the key), if there was one. Running ones stay (the new
    /// record waits for them: one key, in order) and give no base. Call after the new
    /// record is journaled, so a crash never loses both.
    pub fn supersede_deletes(&self, key: &str) -> Option<Option<String>> {
        let superseded: Vec<(u64, Option<String>)> = {
            let records = self.records.lock();
            let schedule = self.schedule.lock();
            records
                .by_key
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(|id| records.by_id.get(id))
                .filter(|q| q.record.kind == ExportKind::Delete)
                .filter(|q| !matches!(schedule.state(q.record.id), Some((SlotState::Exporting, _))))
                .map(|q| (q.record.id, q.record.base_etag.clone()))
                .collect()
        };
        let mut base = None;
        for (id, seen) in superseded {
            self.remove_obsolete(id);
            base = Some(seen);
        }
        base
    }

    /// Drops the records waiting for record `id` (a rename's delete of its old key, when
    /// the copy to the new key lost a conflict).
    pub fn cancel_dependents(&self, id: u64) {
        let dependents: Vec<u64> = self
            .records
            .lock()
            .by_id
            .values()
            .filter(|q| q.record.after == Some(id))
            .map(|q| q.record.id)
            .collect();
        for dependent in dependents {
            self.remove_obsolete(dependent);
        }
    }

    /// Removes a record whose change lost a conflict (the bucket won), remembering it
    /// for `sync`. Its staged bytes stay for the caller to keep in lost+found.
    pub fn remove_conflicted(&self, id: u64) {
        self.records.lock().remove(id);
        self.schedule.lock().remove(id);
        {
            let mut conflicted = self.conflicted.lock();
            conflicted.insert(id);
            while conflicted.len() > MAX_REMEMBERED_CONFLICTS {
                conflicted.pop_first();
            }
        }
        let _ = self.journal.remove(id);
    }

    /// Ends an attempt that could not decide (e.g. a conflict whose bucket version could
    /// not be read): the record waits `delay` and is tried again.
    pub fn retry_later(&self, id: u64, delay: Duration, error: String) {
        self.schedule
            .lock()
            .finish(id, Some(Instant::now() + delay), Some(error));
    }

    /// Holds a record: it is not exported again until `sync` (or a new change).
    pub fn hold(&self, id: u64, hold: Hold) {
        self.schedule.lock().hold(id, hold);
        self.finished.notify_waiters();
    }

    /// Makes record `id` durable (fsync): its journal line reaches the disk.
    pub fn make_durable(&self, id: u64) -> std::io::Result<()> {
        crate::lock_order::assert_unlocked("a journal fsync");
        match self.get(id) {
            Some(p) => self.journal.record(&p.record, true).map(|_| ()),
            None => Ok(()),
        }
    }

    /// What `user.s3files.status` says about a record.
    pub fn status(&self, id: u64) -> Option<RecordStatus> {
        self.schedule.lock().state(id).map(|(state, last_error)| {
            let (state, export_error) = match state {
                SlotState::Pending => ("pending export", None),
                SlotState::Exporting => ("exporting", None),
                SlotState::Held(Hold::Conflict) => ("conflict", None),
                SlotState::Held(Hold::Failed(failure)) => ("export failed", Some(failure.code)),
            };
            RecordStatus {
                state: state.to_string(),
                last_error,
                export_error,
            }
        })
    }

    /// Waits until none of `ids` is being exported (a rename re-keys them).
    pub async fn wait_not_running(&self, ids: &[u64]) {
        loop {
            let finished = self.finished.notified();
            let running = {
                let schedule = self.schedule.lock();
                ids.iter()
                    .any(|id| matches!(schedule.state(*id), Some((SlotState::Exporting, _))))
            };
            if !running {
                return;
            }
            finished.await;
        }
    }

    /// Exports `ids` now and waits until each is exported, failed or lost a conflict,
    /// or `limit` passes. With `first_failure`, it answers as soon as one has failed
    /// (`sync`: the answer is EIO whatever the rest do, and records waiting behind a
    /// failing one would only wait for its retries).
    pub async fn wait(
        &self,
        ids: &[u64],
        limit: Option<Duration>,
        first_failure: bool,
    ) -> WaitOutcome {
        self.schedule.lock().expedite(ids, Instant::now());
        self.wake.notify_one();
        let deadline = limit.map(|l| Instant::now() + l);
        loop {
            let finished = self.finished.notified();
            let mut failed = false;
            let mut waiting = false;
            {
                let schedule = self.schedule.lock();
                for id in ids {
                    match schedule.state(*id) {
                        None => {}
                        Some((SlotState::Held(_), _)) => failed = true,
                        Some((SlotState::Pending, Some(_))) => failed = true,
                        Some(_) => waiting = true,
                    }
                }
            }
            if failed && first_failure {
                return WaitOutcome::Failed;
            }
            if !waiting {
                let conflicts = {
                    let conflicted = self.conflicted.lock();
                    ids.iter().any(|id| conflicted.contains(id))
                };
                return if failed || conflicts {
                    WaitOutcome::Failed
                } else {
                    WaitOutcome::Exported
                };
            }
            match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() || tokio::time::timeout(left, finished).await.is_err() {
                        return WaitOutcome::TimedOut;
                    }
                }
                None => finished.await,
            }
        }
    }

    /// Every record id, for a flush of everything.
    pub fn all_ids(&self) -> Vec<u64> {
        self.schedule.lock().ids()
    }

    /// The export loop: starts due exports (bounded), forever. Spawn once per mount.
    pub async fn run(self: Arc<Self>, store: Arc<dyn ObjectStore>, sink: Arc<dyn ExportSink>) {
        loop {
            let wake = self.wake.notified();
            let free = self.permits.available_permits();
            let (ready, next) = {
                let mut schedule = self.schedule.lock();
                let now = Instant::now();
                (schedule.take_due(now, free), schedule.next_due_after(now))
            };
            for id in ready {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return;
                };
                let queue = self.clone();
                let store = store.clone();
                let sink = sink.clone();
                tokio::spawn(async move {
                    queue.export_one(id, &store, sink.as_ref()).await;
                    drop(permit);
                    queue.wake.notify_one();
                    queue.finished.notify_waiters();
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

    async fn export_one(&self, id: u64, store: &Arc<dyn ObjectStore>, sink: &dyn ExportSink) {
        let Some(entry) = self.get(id) else {
            self.schedule.lock().remove(id);
            return;
        };
        // The journal gets the record as exported (writes since it was journaled may have
        // changed its attributes in memory only), so a replay after a crash exports the
        // same thing and recognises this export's token.
        if entry.revision > 0 {
            let _ = self.journal.record(&entry.record, false);
        }
        let token = export_token(&self.mount_id, &entry.record, entry.staged.as_deref());
        let outcome = export_once(store, &entry.record, entry.staged.as_deref(), &token).await;
        if let Some(staged) = &entry.staged {
            // Reopened by the next write if the file is still in use.
            staged.close_idle();
        }
        let record = &entry.record;
        match outcome {
            Outcome::Done { etag, size } => {
                info!(key = record.key, kind = ?record.kind, size, "exported");
                sink.exported(&entry, etag, size);
            }
            Outcome::Raced => self.schedule.lock().finish(
                id,
                Some(Instant::now() + Duration::from_millis(50)),
                None,
            ),
            Outcome::Conflict => sink.conflict(&entry).await,
            Outcome::Rebase { etag } => {
                info!(
                    key = record.key,
                    "an earlier export of this change is in S3; exporting again on top of it"
                );
                let rebased = {
                    let mut records = self.records.lock();
                    records.by_id.get_mut(&id).map(|p| {
                        p.record.base_etag = etag;
                        p.based_at = SystemTime::now();
                        p.record.clone()
                    })
                };
                if let Some(record) = rebased {
                    let _ = self.journal.record(&record, false);
                }
                self.schedule.lock().finish(id, Some(Instant::now()), None);
            }
            Outcome::Failed(e) if retryable(&e) => {
                let failures = {
                    let mut records = self.records.lock();
                    records.by_id.get_mut(&id).map_or(1, |p| {
                        p.failures += 1;
                        p.failures
                    })
                };
                let delay = RETRY_DELAY
                    .saturating_mul(1 << failures.min(5))
                    .min(MAX_RETRY_DELAY);
                warn!(key = record.key, error = %e, retry_in = ?delay, "export failed; will retry");
                self.schedule
                    .lock()
                    .finish(id, Some(Instant::now() + delay), Some(e.to_string()));
            }
            Outcome::Failed(e) => {
                let failure = ExportFailure::store(&e);
                error!(key = record.key, error = %e, code = %failure.code, "export failed; kept in the journal until `s3files sync`");
                self.hold(id, Hold::Failed(failure));
            }
            Outcome::LocalFault(e) => {
                error!(key = record.key, error = %e, code = %ExportErrorCode::InternalError, "export failed on this machine; kept in the journal until `s3files sync`");
                self.hold(id, Hold::Failed(ExportFailure::local(e)));
            }
            Outcome::Refused(failure) => {
                error!(key = record.key, error = %failure, code = %failure.code, "export refused before sending: S3 would not take it; kept in the journal until `s3files sync`");
                self.hold(id, Hold::Failed(failure));
            }
        }
    }
}

/// A token naming this export of this record's content: `<mount>-r<id>/<fingerprint>`.
/// The part before `/` names the record: a key holding a token with the same record
/// part holds an earlier export of ours (`Outcome::Rebase`), not someone else's write.
fn export_token(mount_id: &str, record: &PendingExport, staged: Option<&StagedFile>) -> String {
    let fingerprint = match staged {
        Some(s) => format!("{:x}-{:x}", s.size(), record.meta.mtime_ns.unwrap_or(0)),
        None => format!("{:x}", record.meta.mtime_ns.unwrap_or(0)),
    };
    format!("{mount_id}-r{:x}/{fingerprint}", record.id)
}

/// Errors worth another try later (the SDK already retried each request a few times):
/// throttling, 5xx and an unreachable endpoint. Everything else (access denied, a bad
/// request, a fault on this machine) would fail the same way again.
pub fn retryable(error: &StoreError) -> bool {
    match error {
        StoreError::Throttled(_) | StoreError::Unreachable(_) => true,
        StoreError::Service { status, .. } => *status >= 500,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_store_errors_are_retried() {
        assert!(retryable(&StoreError::Throttled(String::new())));
        assert!(retryable(&StoreError::Unreachable(String::new())));
        assert!(retryable(&StoreError::Service {
            status: 503,
            code: "SlowDown".into(),
            message: String::new()
        }));
        assert!(!retryable(&StoreError::Service {
            status: 400,
            code: "InvalidRequest".into(),
            message: String::new()
        }));
        assert!(!retryable(&StoreError::Other("staged data missing".into())));
        assert!(!retryable(&StoreError::AccessDenied(String::new())));
    }
}
