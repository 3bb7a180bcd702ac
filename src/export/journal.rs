//! The on-disk journal of pending exports: an append-only log (CACHE_DIR/journal/log) of
//! JSON lines, each either a record's current state or its removal. Appending to one open
//! file costs a single write per change (no file created, renamed or deleted per entry,
//! which on a local disk costs more than the user's own file creation). The journal, not
//! memory, is the truth after a crash: at start-up the log is replayed (a torn last line
//! is ignored), compacted, and every live record is exported again.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::lock_order::{Level, OrderedMutex};

use serde::{Deserialize, Serialize};

use crate::posix::PosixMeta;

use crate::local_state::DIR_MODE;

/// What an export writes to the bucket for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportKind {
    /// The body is the staging file `<id>` (a file, or a symlink whose body is its target).
    Upload,
    /// Only metadata changed: CopyObject onto itself with metadata REPLACE.
    Metadata,
    /// A directory marker `dir/`.
    Marker,
    /// The key is removed.
    Delete,
    /// Server-side copy of `copy_from` to the key with this record's metadata (a rename
    /// of an entry already in S3).
    Copy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingExport {
    pub id: u64,
    pub key: String,
    pub kind: ExportKind,
    /// ETag the local change was based on (If-Match); None for a key that did not exist
    /// (If-None-Match: *) or for deletes.
    pub base_etag: Option<String>,
    /// The attributes the export writes (always with an mtime).
    pub meta: PosixMeta,
    /// For `Copy`: the source key.
    #[serde(default)]
    pub copy_from: Option<String>,
    /// For `Copy`: the source's version (the copy only reads that version). Kept apart
    /// from `base_etag`, which is always about `key` itself: a conflict is only ever
    /// judged against what this mount last saw or wrote at the same key.
    #[serde(default)]
    pub copy_etag: Option<String>,
    /// For `Copy`: the source's size (what the entry shows until the copy is done, also
    /// after a crash).
    #[serde(default)]
    pub copy_size: Option<u64>,
    /// Export only after record `after` has been exported (a rename's delete of the old
    /// key waits for the copy to the new one).
    #[serde(default)]
    pub after: Option<u64>,
}

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
enum Line {
    Put(PendingExport),
    Done(u64),
}

/// Compact the log once it holds this many lines more than there are live records.
const COMPACT_AFTER_LINES: u64 = 200_000;

#[derive(Debug)]
pub struct ExportJournal {
    dir: PathBuf,
    log: OrderedMutex<LogFile>,
}

#[derive(Debug)]
struct LogFile {
    file: File,
    /// Lines appended since the last compaction, and records live now with the
    /// sequence number of their last `record`.
    lines: u64,
    live: BTreeMap<u64, (PendingExport, u64)>,
    next_seq: u64,
}

impl ExportJournal {
    /// Opens the journal, replaying and compacting its log.
    pub fn open(cache_dir: &Path) -> std::io::Result<Self> {
        let dir = cache_dir.join("journal");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)?;
        let (replayed, _) = replay(&dir.join("log"))?;
        let file = write_compacted(&dir, &replayed)?;
        let live: BTreeMap<u64, (PendingExport, u64)> =
            replayed.into_iter().map(|(id, r)| (id, (r, 0))).collect();
        Ok(ExportJournal {
            dir,
            log: OrderedMutex::new(
                Level::Journal,
                LogFile {
                    file,
                    lines: live.len() as u64,
                    live,
                    next_seq: 1,
                },
            ),
        })
    }

    /// Writes (or replaces) a record; returns its sequence number, which `remove_if`
    /// checks. With `durable`, the log is also flushed to the disk, so it survives
    /// power loss, not only a killed daemon. Never compacts: this runs on the FUSE
    /// thread for every change, and compaction (rewrite, fsync, rename) is slow.
    pub fn record(&self, entry: &PendingExport, durable: bool) -> std::io::Result<u64> {
        let mut log = self.log.lock();
        crate::lock_order::assert_only("a journal append", Level::Journal);
        append(&mut log.file, &Line::Put(entry.clone()))?;
        if durable {
            log.file.sync_data()?;
        }
        let seq = log.next_seq;
        log.next_seq += 1;
        log.live.insert(entry.id, (entry.clone(), seq));
        log.lines += 1;
        Ok(seq)
    }

    /// Removes record `id` (exported, or no longer needed).
    pub fn remove(&self, id: u64) -> std::io::Result<()> {
        self.remove_matching(id, None)
    }

    /// Removes record `id` only if it was not recorded again since `seq`: an export
    /// that finished must not erase a change made while it ran.
    pub fn remove_if(&self, id: u64, seq: u64) -> std::io::Result<()> {
        self.remove_matching(id, Some(seq))
    }

    fn remove_matching(&self, id: u64, seq: Option<u64>) -> std::io::Result<()> {
        let mut log = self.log.lock();
        crate::lock_order::assert_only("a journal append", Level::Journal);
        match log.live.get(&id) {
            None => return Ok(()),
            Some((_, current)) if seq.is_some_and(|s| s != *current) => return Ok(()),
            Some(_) => {}
        }
        log.live.remove(&id);
        append(&mut log.file, &Line::Done(id))?;
        log.lines += 1;
        // Removals run on export tasks, never on the FUSE thread: compaction goes here.
        self.maybe_compact(&mut log)
    }

    /// The sequence number of record `id`'s last `record`, if it is live.
    pub fn seq(&self, id: u64) -> Option<u64> {
        self.log.lock().live.get(&id).map(|(_, seq)| *seq)
    }

    /// Every live record, oldest id first.
    pub fn load_all(&self) -> Vec<PendingExport> {
        self.log
            .lock()
            .live
            .values()
            .map(|(r, _)| r.clone())
            .collect()
    }

    fn maybe_compact(&self, log: &mut LogFile) -> std::io::Result<()> {
        if log.lines > log.live.len() as u64 + COMPACT_AFTER_LINES {
            let live: BTreeMap<u64, PendingExport> = log
                .live
                .iter()
                .map(|(id, (r, _))| (*id, r.clone()))
                .collect();
            log.file = write_compacted(&self.dir, &live)?;
            log.lines = log.live.len() as u64;
        }
        Ok(())
    }
}

fn append(file: &mut File, line: &Line) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    // One write of a whole line with O_APPEND: a crash can only tear the last line.
    file.write_all(&bytes)
}

/// Reads a log: the live records and how many lines were unreadable (a torn last line
/// after a crash; more is reported in the log).
fn replay(path: &Path) -> std::io::Result<(BTreeMap<u64, PendingExport>, usize)> {
    let mut live = BTreeMap::new();
    let mut bad = 0;
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((live, 0)),
        Err(e) => return Err(e),
    };
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Line>(&line) {
            Ok(Line::Put(mut record)) => {
                if record.kind == ExportKind::Copy && record.copy_etag.is_none() {
                    // Written before copy_etag existed: base_etag was the source's.
                    record.copy_etag = record.base_etag.take();
                }
                live.insert(record.id, record);
            }
            Ok(Line::Done(id)) => {
                live.remove(&id);
            }
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(path = %path.display(), lines = bad, "unreadable export journal lines skipped (a write torn by a crash)");
    }
    Ok((live, bad))
}

/// Writes the live records to a fresh log, durably, and opens it for appending.
fn write_compacted(dir: &Path, live: &BTreeMap<u64, PendingExport>) -> std::io::Result<File> {
    let tmp = dir.join("log.tmp");
    let mut file = crate::local_state::create_private(&tmp)?;
    let mut buf = Vec::new();
    for record in live.values() {
        buf.extend(serde_json::to_vec(&Line::Put(record.clone())).map_err(std::io::Error::other)?);
        buf.push(b'\n');
    }
    file.write_all(&buf)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join("log"))?;
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(dir.join("log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, key: &str) -> PendingExport {
        PendingExport {
            id,
            key: key.into(),
            kind: ExportKind::Upload,
            base_etag: Some("\"e\"".into()),
            meta: PosixMeta {
                uid: 1,
                gid: 2,
                mode: 0o100644,
                mtime_ns: Some(1_700_000_000_000_000_001),
            },
            copy_from: None,
            copy_etag: None,
            copy_size: None,
            after: None,
        }
    }

    #[test]
    fn records_survive_reopen_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let journal = ExportJournal::open(dir.path()).unwrap();
        journal.record(&record(2, "b"), false).unwrap();
        journal.record(&record(1, "a"), true).unwrap();
        let mut changed = record(2, "b2");
        changed.kind = ExportKind::Metadata;
        journal.record(&changed, false).unwrap();
        journal.record(&record(3, "c"), false).unwrap();
        journal.remove(3).unwrap();
        journal.remove(3).unwrap();
        drop(journal);

        let reopened = ExportJournal::open(dir.path()).unwrap();
        let records = reopened.load_all();
        assert_eq!(records, vec![record(1, "a"), changed]);
        reopened.remove(1).unwrap();
        drop(reopened);
        let again = ExportJournal::open(dir.path()).unwrap();
        assert_eq!(again.load_all().len(), 1);
        // Compaction at open leaves one line per live record.
        let log = std::fs::read_to_string(dir.path().join("journal/log")).unwrap();
        assert_eq!(log.lines().count(), 1);
        // A removal conditional on a sequence number spares a record written since.
        let first = again.record(&record(7, "g"), false).unwrap();
        let second = again.record(&record(7, "g"), false).unwrap();
        again.remove_if(7, first).unwrap();
        assert_eq!(again.seq(7), Some(second));
        again.remove_if(7, second).unwrap();
        assert_eq!(again.seq(7), None);
        // Private whatever the process's umask (the test runner's is looser).
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!((mode("journal"), mode("journal/log")), (0o700, 0o600));
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let journal = ExportJournal::open(dir.path()).unwrap();
        journal.record(&record(4, "ok"), false).unwrap();
        drop(journal);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal/log"))
            .unwrap();
        log.write_all(b"{\"Put\":{\"id\":5,\"ke").unwrap();
        drop(log);
        let journal = ExportJournal::open(dir.path()).unwrap();
        let records = journal.load_all();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].key, "ok");
    }
}
