//! The on-disk journal of pending exports: one small JSON record per locally changed
//! entry, in CACHE_DIR/journal/<id>.json, rewritten atomically (temp file + rename) on
//! every change of what must be exported. The journal, not memory, is the truth after a
//! crash: at start-up every record is exported again.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// POSIX attributes as exported in S3 Files metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportMeta {
    pub uid: u32,
    pub gid: u32,
    /// File type and permission bits, as in `st_mode`.
    pub mode: u32,
    /// Nanoseconds since the epoch.
    pub mtime_ns: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingExport {
    pub id: u64,
    pub key: String,
    pub kind: ExportKind,
    /// ETag the local change was based on (If-Match); None for a key that did not exist
    /// (If-None-Match: *) or for deletes.
    pub base_etag: Option<String>,
    pub meta: ExportMeta,
    /// For `Copy`: the source key.
    #[serde(default)]
    pub copy_from: Option<String>,
    /// Export only after record `after` has been exported (a rename's delete of the old
    /// key waits for the copy to the new one).
    #[serde(default)]
    pub after: Option<u64>,
}

#[derive(Debug)]
pub struct ExportJournal {
    dir: PathBuf,
}

impl ExportJournal {
    pub fn open(cache_dir: &Path) -> std::io::Result<Self> {
        let dir = cache_dir.join("journal");
        fs::create_dir_all(&dir)?;
        Ok(ExportJournal { dir })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.json"))
    }

    /// Writes (or replaces) a record atomically. With `durable`, also fsyncs the record
    /// and the directory, so it survives power loss, not only a killed daemon.
    pub fn record(&self, entry: &PendingExport, durable: bool) -> std::io::Result<()> {
        let path = self.path(entry.id);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let mut file = File::create(&tmp)?;
        file.write_all(&body)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        if durable {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn remove(&self, id: u64) -> std::io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record, oldest id first. A record that cannot be parsed (a torn write of a
    /// temp file never is one: only complete files are renamed into place) is reported.
    pub fn load_all(&self) -> std::io::Result<(Vec<PendingExport>, Vec<PathBuf>)> {
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {}
                Some("tmp") => {
                    // An interrupted rewrite: the previous record (if any) is intact.
                    let _ = fs::remove_file(&path);
                    continue;
                }
                _ => continue,
            }
            match fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<PendingExport>(&b).ok())
            {
                Some(record) => records.push(record),
                None => unreadable.push(path),
            }
        }
        records.sort_by_key(|r| r.id);
        Ok((records, unreadable))
    }
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
            meta: ExportMeta {
                uid: 1,
                gid: 2,
                mode: 0o100644,
                mtime_ns: 1_700_000_000_000_000_001,
            },
            copy_from: None,
            after: None,
        }
    }

    #[test]
    fn records_survive_reopen_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let journal = ExportJournal::open(dir.path()).unwrap();
        journal.record(&record(2, "b"), false).unwrap();
        journal.record(&record(1, "a"), true).unwrap();
        let mut changed = record(2, "b2");
        changed.kind = ExportKind::Metadata;
        journal.record(&changed, false).unwrap();
        std::fs::write(dir.path().join("journal/0000000000000009.tmp"), "{partial").unwrap();

        let reopened = ExportJournal::open(dir.path()).unwrap();
        let (records, bad) = reopened.load_all().unwrap();
        assert!(bad.is_empty());
        assert_eq!(records, vec![record(1, "a"), changed]);
        reopened.remove(1).unwrap();
        reopened.remove(1).unwrap();
        assert_eq!(reopened.load_all().unwrap().0.len(), 1);
    }

    #[test]
    fn corrupt_records_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let journal = ExportJournal::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("journal/0000000000000003.json"), "not json").unwrap();
        journal.record(&record(4, "ok"), false).unwrap();
        let (records, bad) = journal.load_all().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(bad.len(), 1);
    }
}
