//! Export: file system -> S3 (lazy write-back). Local changes are recorded in the
//! journal and staged on disk; each record is exported once it has been quiet for the
//! write-back delay. This module does the S3 side of one export; `queue` keeps the
//! records, timers and the export loop; `crate::fs::sync` ties results to the namespace.

pub mod failure;
mod file_pool;
pub mod journal;
pub mod lost_found;
pub mod queue;
pub mod schedule;
pub mod staging;

use std::sync::Arc;

use bytes::Bytes;

use crate::fs::namespace::MAX_KEY_LEN;
use crate::posix::PosixMeta;
use crate::store::{ObjectStore, StoreError, UserMetadata, WriteCondition};
use failure::ExportFailure;
use journal::{ExportKind, PendingExport};
use staging::StagedFile;

/// Metadata key naming the export that wrote an object version. After a crash between a
/// successful PUT and the journal update, the re-export's conditional write fails; this
/// token tells "our own earlier write" apart from a real conflict.
pub const META_EXPORT_TOKEN: &str = "s3files-export";

/// Bodies up to this size go in one PutObject; larger ones use multipart.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Smallest part we send (S3's minimum is 5 MiB).
pub const MIN_PART_SIZE: u64 = 8 << 20;
/// S3's limit on parts per upload.
pub const MAX_PARTS: u64 = 10_000;

/// Part size for a body of `size` bytes: at least `MIN_PART_SIZE`, and large enough (in
/// whole MiB) that the body fits in `MAX_PARTS` parts, so 48 TiB works.
pub fn part_size(size: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    needed.max(MIN_PART_SIZE)
}

/// The S3 Files metadata for an export, plus our token.
pub fn user_metadata(meta: &PosixMeta, token: &str) -> UserMetadata {
    let mut out = meta.to_user_metadata();
    out.insert(META_EXPORT_TOKEN.into(), token.to_string());
    out
}

/// How one export attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The bucket now holds the exported state; the new ETag (None for deletes).
    Done { etag: Option<String>, size: u64 },
    /// The staged data changed while it was read; try again soon.
    Raced,
    /// The object changed in S3 since the local copy was based on it.
    Conflict,
    /// The key holds an earlier export of this same record (written before a crash, or
    /// before the last changes): ours, not a conflict. Export again on top of `etag`.
    Rebase { etag: Option<String> },
    /// The store refused or failed; `retryable` in the queue decides what next.
    Failed(StoreError),
    /// A fault on this machine (staged bytes missing or unreadable, a record that makes
    /// no sense): retrying cannot fix it, so the record is held and reported.
    LocalFault(String),
    /// S3 would refuse the request as it is (a key over 1,024 bytes, user metadata over
    /// 2 KB): nothing was sent, and the record is held and reported.
    Refused(ExportFailure),
}

/// What went wrong in an upload: the store, or reading the staged bytes.
enum UploadError {
    Store(StoreError),
    Local(String),
}

impl From<StoreError> for UploadError {
    fn from(e: StoreError) -> Self {
        UploadError::Store(e)
    }
}

/// Performs one export of `record` (whose body, for uploads, is `staged`).
pub async fn export_once(
    store: &Arc<dyn ObjectStore>,
    record: &PendingExport,
    staged: Option<&StagedFile>,
    token: &str,
) -> Outcome {
    if record.key.is_empty() {
        // The bucket root's attributes (journaled by versions before they were kept on
        // the mount only): no key holds them, so there is nothing to write.
        return Outcome::Done {
            etag: None,
            size: 0,
        };
    }
    let metadata = user_metadata(&record.meta, token);
    if record.kind == ExportKind::Delete {
        if record.key.len() > MAX_KEY_LEN {
            // S3 cannot hold such a key, so there is nothing to delete.
            return Outcome::Done {
                etag: None,
                size: 0,
            };
        }
    } else if let Err(refused) = failure::pre_check(&record.key, &metadata) {
        return Outcome::Refused(refused);
    }
    let condition = match &record.base_etag {
        Some(etag) => WriteCondition::IfMatch(etag.clone()),
        None => WriteCondition::IfAbsent,
    };
    if let Some(outcome) = check_destination(store, record, token).await {
        return outcome;
    }
    let result = match record.kind {
        ExportKind::Upload => {
            let Some(staged) = staged else {
                return Outcome::LocalFault("staged data missing".into());
            };
            match upload(store, &record.key, staged, &metadata, &condition).await {
                Ok(done) => Ok(done),
                Err(UploadError::Store(e)) => Err(e),
                Err(UploadError::Local(e)) => return Outcome::LocalFault(e),
            }
        }
        ExportKind::Metadata => store
            .replace_metadata(&record.key, &metadata, record.base_etag.as_deref())
            .await
            .map(|etag| Some((Some(etag), 0))),
        ExportKind::Marker => store
            .put(&record.key, Bytes::new(), &metadata, &WriteCondition::None)
            .await
            .map(|etag| Some((Some(etag), 0))),
        ExportKind::Delete => store.delete(&record.key).await.map(|()| Some((None, 0))),
        ExportKind::Copy => match &record.copy_from {
            Some(from) => store
                .copy_object(from, &record.key, &metadata, record.copy_etag.as_deref())
                .await
                .map(|etag| Some((Some(etag), 0))),
            None => return Outcome::LocalFault("copy without a source".into()),
        },
    };
    match result {
        Ok(Some((etag, size))) => Outcome::Done { etag, size },
        Ok(None) => Outcome::Raced,
        Err(StoreError::PreconditionFailed) => match store.head(&record.key).await {
            Ok(head) => {
                let found = head.metadata.get(META_EXPORT_TOKEN).map(String::as_str);
                if found == Some(token) {
                    // Our own write of this very content, from before a crash: done.
                    Outcome::Done {
                        etag: head.etag,
                        size: head.size,
                    }
                } else if found.is_some_and(|t| same_record(t, token)) {
                    Outcome::Rebase { etag: head.etag }
                } else {
                    Outcome::Conflict
                }
            }
            Err(StoreError::NotFound) => Outcome::Conflict,
            Err(e) => Outcome::Failed(e),
        },
        // The object the change was based on is gone (some stores answer a conditional
        // write on a deleted key with 404 rather than 412): also a conflict. For a copy
        // it is the source that is gone (someone else deleted it): also the bucket's say.
        Err(StoreError::NotFound)
            if record.base_etag.is_some() || record.kind == ExportKind::Copy =>
        {
            Outcome::Conflict
        }
        Err(e) => Outcome::Failed(e),
    }
}

/// Deletes and server-side copies cannot be made conditional on what the key holds, so
/// the key is checked first: it must hold what this mount last saw there (`base_etag`;
/// nothing, for a copy without one) or a version this mount wrote itself. Anything else
/// is someone else's change, and the bucket wins (a conflict). None: go ahead. On a
/// store that does not enforce write conditions, uploads and metadata changes are
/// checked the same way, since their condition would not catch it.
async fn check_destination(
    store: &Arc<dyn ObjectStore>,
    record: &PendingExport,
    token: &str,
) -> Option<Outcome> {
    let guarded = match record.kind {
        ExportKind::Copy => true,
        ExportKind::Delete => record.base_etag.is_some(),
        ExportKind::Upload | ExportKind::Metadata => !store.enforces_write_conditions(),
        ExportKind::Marker => false,
    };
    if !guarded {
        return None;
    }
    match store.head(&record.key).await {
        // Nothing there: a delete is harmless (and goes ahead, so a stale answer cannot
        // leave the object behind); a write onto a version someone deleted is a conflict
        // (as a conditional write answers there).
        Err(StoreError::NotFound)
            if record.kind != ExportKind::Delete && record.base_etag.is_some() =>
        {
            Some(Outcome::Conflict)
        }
        Err(StoreError::NotFound) => None,
        Err(e) => Some(Outcome::Failed(e)),
        Ok(head) if head.etag.is_some() && head.etag == record.base_etag => None,
        // A delete removes exactly the version this mount saw, nothing newer (even of its
        // own: a newer write of ours means a newer intent for the key).
        Ok(_) if record.kind == ExportKind::Delete => Some(Outcome::Conflict),
        Ok(head) => {
            let found = head.metadata.get(META_EXPORT_TOKEN).map(String::as_str);
            if found.is_some_and(|t| same_mount(t, token)) {
                None
            } else {
                Some(Outcome::Conflict)
            }
        }
    }
}

/// Whether two export tokens come from the same mount (`<mount>-r<id>/...`).
fn same_mount(a: &str, b: &str) -> bool {
    let mount = |t: &str| {
        t.split_once('/')
            .and_then(|(record, _)| record.rsplit_once("-r"))
            .map(|(mount, _)| mount.to_string())
    };
    mount(a).is_some() && mount(a) == mount(b)
}

/// Whether two export tokens (`<mount>-r<id>/<fingerprint>`, see
/// `queue::export_token`) name the same record of the same mount.
fn same_record(a: &str, b: &str) -> bool {
    match (a.split_once('/'), b.split_once('/')) {
        (Some((ra, _)), Some((rb, _))) => ra == rb,
        _ => false,
    }
}

/// Uploads a staged body; Ok(None) when the data changed under the read.
async fn upload(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    staged: &StagedFile,
    metadata: &UserMetadata,
    condition: &WriteCondition,
) -> Result<Option<(Option<String>, u64)>, UploadError> {
    let token = staged.begin_read();
    let size = staged.size();
    if size <= MULTIPART_THRESHOLD {
        let mut body = vec![0u8; size as usize];
        let n = staged
            .read_at(&mut body, 0)
            .map_err(|e| UploadError::Local(format!("reading staged data: {e}")))?;
        body.truncate(n);
        if !staged.end_read(token) {
            return Ok(None);
        }
        let etag = store
            .put(key, Bytes::from(body), metadata, condition)
            .await?;
        return Ok(Some((Some(etag), size)));
    }
    let part = part_size(size);
    let upload_id = store.create_multipart(key, metadata).await?;
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut number = 1;
    let result = async {
        while offset < size {
            let len = part.min(size - offset);
            let mut body = vec![0u8; len as usize];
            staged
                .read_at(&mut body, offset)
                .map_err(|e| UploadError::Local(format!("reading staged data: {e}")))?;
            let etag = store
                .upload_part(key, &upload_id, number, Bytes::from(body))
                .await?;
            parts.push((number, etag));
            offset += len;
            number += 1;
        }
        if !staged.end_read(token) {
            return Ok(None);
        }
        let etag = store
            .complete_multipart(key, &upload_id, std::mem::take(&mut parts), condition)
            .await?;
        Ok(Some((Some(etag), size)))
    }
    .await;
    if !matches!(result, Ok(Some(_))) {
        let _ = store.abort_multipart(key, &upload_id).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn part_sizes_scale_to_48_tib() {
        assert_eq!(part_size(100 << 20), MIN_PART_SIZE);
        let big: u64 = 48 << 40;
        let p = part_size(big);
        assert!(big.div_ceil(p) <= MAX_PARTS);
        assert!(p <= 5 << 30, "S3's largest part is 5 GiB");
        assert_eq!(p % (1 << 20), 0);
    }

    #[test]
    fn metadata_uses_s3_files_names() {
        let meta = PosixMeta {
            uid: 1000,
            gid: 100,
            mode: 0o100640,
            mtime_ns: Some(5),
        };
        let m = user_metadata(&meta, "t");
        assert_eq!(m["file-permissions"], "0100640");
        assert_eq!(m["file-owner"], "1000");
        assert_eq!(m["file-group"], "100");
        assert_eq!(m["file-mtime"], "5ns");
        let dir = PosixMeta {
            mode: 0o040755,
            ..meta
        };
        assert_eq!(user_metadata(&dir, "t")["file-permissions"], "0040755");
    }

    /// A staged file holding `body`, in a staging area under `dir`.
    fn staged(dir: &tempfile::TempDir, body: &[u8]) -> staging::StagedFile {
        let staged = staging::Staging::open(dir.path())
            .unwrap()
            .create(1)
            .unwrap();
        staged.write_at(body, 0).unwrap();
        staged
    }

    fn record(key: &str, kind: ExportKind, base: Option<&str>) -> PendingExport {
        PendingExport {
            id: 1,
            key: key.into(),
            kind,
            base_etag: base.map(String::from),
            meta: PosixMeta {
                uid: 0,
                gid: 0,
                mode: 0o100644,
                mtime_ns: Some(0),
            },
            copy_from: None,
            copy_etag: None,
            copy_size: None,
            after: None,
        }
    }

    #[tokio::test]
    async fn uploads_conditionally_and_recognises_own_writes() {
        let mem = Arc::new(MemoryStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let dir = tempfile::tempdir().unwrap();
        let staged = staged(&dir, b"local bytes");
        let rec = record("f", ExportKind::Upload, None);
        let done = export_once(&store, &rec, Some(&staged), "tok-1").await;
        assert!(matches!(done, Outcome::Done { size: 11, .. }), "{done:?}");
        assert_eq!(&mem.body("f").unwrap()[..], b"local bytes");
        // A replay after a crash: If-None-Match fails, but the token says it was us.
        let again = export_once(&store, &rec, Some(&staged), "tok-1").await;
        assert!(matches!(again, Outcome::Done { .. }), "{again:?}");
        // Someone else wrote the key: a conflict.
        mem.put("f", "theirs", &[]);
        let conflict = export_once(&store, &rec, Some(&staged), "tok-2").await;
        assert_eq!(conflict, Outcome::Conflict);
        assert_eq!(&mem.body("f").unwrap()[..], b"theirs");
    }

    /// On a store that accepts writes whatever their condition (Garage), an upload still
    /// finds another writer's version first and ends as a conflict (the bucket wins):
    /// over a version based on one since replaced or deleted, and a new file over a key
    /// someone else created. One based on what the key holds is written.
    #[tokio::test]
    async fn a_store_ignoring_write_conditions_still_finds_conflicts() {
        let mem = Arc::new(MemoryStore::new());
        mem.ignore_conditions(true);
        let store: Arc<dyn ObjectStore> = mem.clone();
        let dir = tempfile::tempdir().unwrap();
        let staged = staged(&dir, b"local bytes");
        let upload = |key: &str, base: Option<&str>| record(key, ExportKind::Upload, base);

        mem.put("f", "base", &[]);
        let base = mem.head("f").await.unwrap().etag;
        mem.put("f", "theirs", &[]);
        let stale = upload("f", base.as_deref());
        let outcome = export_once(&store, &stale, Some(&staged), "tok").await;
        assert_eq!(outcome, Outcome::Conflict);
        assert_eq!(&mem.body("f").unwrap()[..], b"theirs");

        ObjectStore::delete(mem.as_ref(), "f").await.unwrap();
        let outcome = export_once(&store, &stale, Some(&staged), "tok").await;
        assert_eq!(outcome, Outcome::Conflict);
        assert!(mem.body("f").is_none());

        mem.put("g", "theirs", &[]);
        let outcome = export_once(&store, &upload("g", None), Some(&staged), "tok").await;
        assert_eq!(outcome, Outcome::Conflict);
        assert_eq!(&mem.body("g").unwrap()[..], b"theirs");

        mem.put("h", "base", &[]);
        let base = mem.head("h").await.unwrap().etag;
        let current = upload("h", base.as_deref());
        let outcome = export_once(&store, &current, Some(&staged), "tok").await;
        assert!(
            matches!(outcome, Outcome::Done { size: 11, .. }),
            "{outcome:?}"
        );
        assert_eq!(&mem.body("h").unwrap()[..], b"local bytes");
    }

    #[tokio::test]
    async fn multipart_for_large_bodies() {
        let mem = Arc::new(MemoryStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..(MULTIPART_THRESHOLD + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        let staged = staged(&dir, &body);
        let rec = record("big", ExportKind::Upload, None);
        let done = export_once(&store, &rec, Some(&staged), "t").await;
        assert!(matches!(done, Outcome::Done { .. }), "{done:?}");
        assert_eq!(mem.body("big").unwrap().len(), body.len());
        assert_eq!(&mem.body("big").unwrap()[..], &body[..]);
    }

    #[tokio::test]
    async fn metadata_marker_and_delete() {
        let mem = Arc::new(MemoryStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        mem.put("f", "body", &[]);
        let etag = mem.head("f").await.unwrap().etag;
        let mut rec = record("f", ExportKind::Metadata, etag.as_deref());
        rec.meta.mode = 0o100600;
        assert!(matches!(
            export_once(&store, &rec, None, "t").await,
            Outcome::Done { .. }
        ));
        assert_eq!(mem.metadata("f").unwrap()["file-permissions"], "0100600");
        assert_eq!(&mem.body("f").unwrap()[..], b"body");
        assert_eq!(
            mem.requests.put.load(std::sync::atomic::Ordering::Relaxed),
            0
        );

        let marker = record("d/", ExportKind::Marker, None);
        assert!(matches!(
            export_once(&store, &marker, None, "t").await,
            Outcome::Done { .. }
        ));
        assert!(mem.body("d/").unwrap().is_empty());
        let delete = record("f", ExportKind::Delete, None);
        assert!(matches!(
            export_once(&store, &delete, None, "t").await,
            Outcome::Done { .. }
        ));
        assert!(mem.body("f").is_none());
        // The bucket root (an old journal's record): done, nothing written.
        let root = record("", ExportKind::Marker, None);
        assert!(matches!(
            export_once(&store, &root, None, "t").await,
            Outcome::Done { .. }
        ));
        assert_eq!(mem.keys(), ["d/"]);
    }
}
