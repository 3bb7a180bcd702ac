//! `user.s3files.status` as S3 Files users read it (`S3Key`, `FilePath`, `ExportError`)
//! and the mapping of every export failure onto S3 Files' export error codes, over the
//! fault-injecting store. tests/status.rs proves the same through a real mount.

use std::sync::Arc;
use std::time::Duration;

use super::access::Identity;
use super::inode::ROOT_INO;
use super::*;
use crate::export::failure::ExportErrorCode;
use crate::store::faulty::{Fault, FaultyStore, RequestKind};
use crate::store::memory::MemoryStore;

pub(super) const ROOT: Identity = Identity::new(0, 0);

/// A core with writes over the fault-injecting store (also used by `limits_tests`).
pub(super) struct Rig {
    pub(super) core: Arc<FsCore>,
    pub(super) mem: Arc<MemoryStore>,
    pub(super) faulty: Arc<FaultyStore<MemoryStore>>,
    _dir: tempfile::TempDir,
}

pub(super) fn rig(mem: Arc<MemoryStore>, prefix: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStore::new(mem.clone()));
    let core = super::sync_tests::writing_core(faulty.clone(), dir.path(), |o| {
        o.root_prefix = prefix.into()
    });
    Rig {
        core,
        mem,
        faulty,
        _dir: dir,
    }
}

impl Rig {
    pub(super) async fn ino(&self, path: &str) -> FsResult<Ino> {
        super::sync_tests::ino_of(&self.core, path).await
    }

    pub(super) async fn write_file(&self, path: &str, data: &[u8]) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = self.ino(dir).await.unwrap();
        let (_, fh) = self
            .core
            .create(ROOT, dir, name.as_bytes(), 0o644)
            .await
            .unwrap();
        self.core.write(fh, 0, data).unwrap();
        self.core.release(fh);
    }

    pub(super) async fn mkdir(&self, path: &str) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = self.ino(dir).await.unwrap();
        self.core
            .mkdir(ROOT, dir, name.as_bytes(), 0o755)
            .await
            .unwrap();
    }

    pub(super) async fn sync(&self) -> FsResult<()> {
        tokio::time::timeout(Duration::from_secs(10), self.core.sync_tree(ROOT_INO))
            .await
            .expect("sync hung")
    }

    /// The status as an S3 Files script asks for it: with a timestamp in the name.
    async fn status(&self, path: &str) -> String {
        let ino = self.ino(path).await.unwrap();
        let text = self
            .core
            .getxattr(ino, b"user.s3files.status;1764442800")
            .await
            .unwrap();
        String::from_utf8(text).unwrap()
    }

    async fn read(&self, path: &str) -> Vec<u8> {
        let ino = self.ino(path).await.unwrap();
        let (fh, _) = self.core.open(ROOT, ino, false, false).await.unwrap();
        let data = self.core.read(fh, 0, 1 << 20).await.unwrap();
        self.core.release(fh);
        data.to_vec()
    }
}

/// The value of field `name` (`Name: value`) in a status text.
fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[test]
fn status_names_with_a_timestamp_are_the_status() {
    assert!(is_status_xattr(b"user.s3files.status"));
    assert!(is_status_xattr(b"user.s3files.status;1764442800"));
    assert!(is_status_xattr(b"user.s3files.status;0"));
    for other in [
        &b"user.s3files.status;"[..],
        b"user.s3files.status;12a",
        b"user.s3files.status;-1",
        b"user.s3files.status;1;2",
        b"user.s3files.status 1",
        b"user.s3files.statusx",
        b"user.s3files.sync",
        b"user.s3files",
    ] {
        assert!(
            !is_status_xattr(other),
            "{}",
            String::from_utf8_lossy(other)
        );
    }
}

#[tokio::test]
async fn status_gives_s3_files_fields_first() {
    let mem = Arc::new(MemoryStore::new());
    mem.put("pre/d/synced.txt", "x", &[]);
    let r = rig(mem, "pre/");
    let synced = r.status("d/synced.txt").await;
    let lines: Vec<&str> = synced.lines().collect();
    assert_eq!(
        lines[..2],
        ["S3Key: pre/d/synced.txt", "FilePath: /d/synced.txt"]
    );
    assert_eq!(field(&synced, "ExportError"), None, "{synced}");
    // s3files' own lines follow, unchanged.
    assert_eq!(field(&synced, "key"), Some("s3://b/pre/d/synced.txt"));
    assert_eq!(field(&synced, "path"), Some("/d/synced.txt"));
    assert_eq!(field(&synced, "state"), Some("synced"));
    assert_eq!(field(&synced, "last-error"), Some("none"));
    // The plain name answers the same fields.
    let ino = r.ino("d/synced.txt").await.unwrap();
    let plain =
        String::from_utf8(r.core.getxattr(ino, STATUS_XATTR.as_bytes()).await.unwrap()).unwrap();
    assert_eq!(plain.lines().take(6).collect::<Vec<_>>(), lines[..6]);

    r.write_file("d/new.txt", b"pending").await;
    let pending = r.status("d/new.txt").await;
    assert_eq!(field(&pending, "S3Key"), Some("pre/d/new.txt"));
    assert_eq!(field(&pending, "FilePath"), Some("/d/new.txt"));
    assert_eq!(field(&pending, "state"), Some("pending export"));
    assert_eq!(field(&pending, "ExportError"), None);
    let dir = r.status("d").await;
    assert_eq!(field(&dir, "S3Key"), Some("pre/d/"));
    assert_eq!(field(&dir, "FilePath"), Some("/d"));
    let root = r.status("").await;
    assert_eq!(field(&root, "S3Key"), Some("pre/"));
    assert_eq!(field(&root, "FilePath"), Some("/"));

    // Other suffixes are unknown user attributes; the list shows the plain name only.
    for other in [&b"user.s3files.status;x"[..], b"user.s3files.status;"] {
        assert_eq!(
            r.core.getxattr(ino, other).await,
            Err(FsError::NotSupported)
        );
    }
    assert_eq!(r.core.listxattr(ino).unwrap(), b"user.s3files.status\0");
}

#[tokio::test]
async fn custom_user_xattrs_are_not_supported() {
    let mem = Arc::new(MemoryStore::new());
    mem.put("f", "x", &[]);
    let r = rig(mem, "");
    let ino = r.ino("f").await.unwrap();
    for name in [
        &b"user.custom"[..],
        b"user.s3files.status",
        b"user.s3files.status;1",
    ] {
        assert_eq!(r.core.setxattr(ino, name).await, Err(FsError::NotSupported));
        assert_eq!(r.core.removexattr(ino, name), Err(FsError::NotSupported));
    }
    assert_eq!(
        r.core.getxattr(ino, b"user.custom").await,
        Err(FsError::NotSupported)
    );
    // The sync trigger stays.
    assert_eq!(r.core.setxattr(ino, SYNC_XATTR.as_bytes()).await, Ok(()));
}

/// S3 answering MetadataTooLarge (our metadata is ~120 bytes, so only a server with a
/// smaller limit, or more metadata than ours, gives it): S3UserMetadataTooLarge, held
/// until a sync tries again.
#[tokio::test]
async fn metadata_too_large_from_s3_is_s3_user_metadata_too_large() {
    let r = rig(Arc::new(MemoryStore::new()), "");
    r.write_file("m.txt", b"data").await;
    r.faulty.fail_next(
        1,
        Some(RequestKind::Put),
        Fault::Error(StoreError::MetadataTooLarge(
            "Your metadata headers exceed the maximum allowed metadata size".into(),
        )),
    );
    assert_eq!(r.sync().await, Err(FsError::Io));
    let status = r.status("m.txt").await;
    assert_eq!(
        field(&status, "ExportError"),
        Some("S3UserMetadataTooLarge"),
        "{status}"
    );
    assert_eq!(field(&status, "state"), Some("export failed"));
    assert!(field(&status, "last-error")
        .unwrap()
        .contains("MetadataTooLarge"));
    assert!(r.mem.body("m.txt").is_none());
    // The next sync tries again; the code goes once the export is done.
    r.sync().await.unwrap();
    let status = r.status("m.txt").await;
    assert_eq!(field(&status, "ExportError"), None, "{status}");
    assert_eq!(field(&status, "state"), Some("synced"));
    assert_eq!(&r.mem.body("m.txt").unwrap()[..], b"data");
}

#[tokio::test]
async fn store_refusals_map_to_their_codes() {
    let cases = [
        (
            StoreError::AccessDenied("Access Denied".into()),
            ExportErrorCode::S3AccessDenied,
        ),
        (
            StoreError::KeyInaccessible("KMS.DisabledException: key disabled".into()),
            ExportErrorCode::EncryptionKeyInaccessible,
        ),
        (
            StoreError::BadCredentials("InvalidAccessKeyId".into()),
            ExportErrorCode::RoleAssumptionFailed,
        ),
        (
            StoreError::Service {
                status: 400,
                code: "InvalidArgument".into(),
                message: "bad".into(),
            },
            ExportErrorCode::InternalError,
        ),
    ];
    for (i, (error, code)) in cases.into_iter().enumerate() {
        let r = rig(Arc::new(MemoryStore::new()), "");
        let name = format!("f{i}");
        r.write_file(&name, b"x").await;
        r.faulty
            .fail_next(1, Some(RequestKind::Put), Fault::Error(error.clone()));
        assert_eq!(r.sync().await, Err(FsError::Io), "{error:?}");
        let status = r.status(&name).await;
        assert_eq!(
            field(&status, "ExportError"),
            Some(code.name()),
            "{error:?}: {status}"
        );
    }
}

/// A rename's server-side copy of an archived object: S3 answers InvalidObjectState.
#[tokio::test]
async fn copying_an_archived_object_is_s3_object_archived() {
    let mem = Arc::new(MemoryStore::new());
    mem.put("cold", "frozen", &[]);
    let r = rig(mem.clone(), "");
    r.ino("cold").await.unwrap();
    r.core
        .rename(ROOT, ROOT_INO, b"cold", ROOT_INO, b"warm", 0)
        .await
        .unwrap();
    r.faulty.fail_next(
        1,
        Some(RequestKind::Copy),
        Fault::Error(StoreError::ObjectArchived(
            "The operation is not valid for the object's storage class".into(),
        )),
    );
    assert_eq!(r.sync().await, Err(FsError::Io));
    let status = r.status("warm").await;
    assert_eq!(
        field(&status, "ExportError"),
        Some("S3ObjectArchived"),
        "{status}"
    );
    // The old key's delete waits for the copy: the object is where it was.
    assert_eq!(&mem.body("cold").unwrap()[..], b"frozen");
}

/// Throttling and 5xx are retried: never an export error, only `last-error`.
#[tokio::test]
async fn retryable_errors_are_not_export_errors() {
    let r = rig(Arc::new(MemoryStore::new()), "");
    r.write_file("busy", b"x").await;
    r.faulty
        .fail_next(1, Some(RequestKind::Put), Fault::Status(503));
    assert_eq!(r.sync().await, Err(FsError::Io));
    let status = r.status("busy").await;
    assert_eq!(field(&status, "ExportError"), None, "{status}");
    assert_eq!(field(&status, "state"), Some("pending export"));
    assert!(
        field(&status, "last-error").unwrap().contains("503"),
        "{status}"
    );
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("busy").unwrap()[..], b"x");
}

/// Staged bytes gone from this machine: nothing S3 Files names, so InternalError.
#[tokio::test]
async fn local_faults_are_internal_errors() {
    let r = rig(Arc::new(MemoryStore::new()), "");
    r.write_file("gone", b"data").await;
    let queue = r.core.export_queue().unwrap().clone();
    let id = queue.ids_under("gone", true)[0];
    std::fs::remove_file(queue.staging().path(id)).unwrap();
    assert_eq!(r.sync().await, Err(FsError::Io));
    let status = r.status("gone").await;
    assert_eq!(
        field(&status, "ExportError"),
        Some("InternalError"),
        "{status}"
    );
}

/// A directory rename can make keys below it longer than S3 takes (each name within
/// 255 bytes): the rename works, as on S3 Files, and those entries' exports fail with
/// PathTooLong before any request. The old objects stay (their deletes wait for the new
/// keys: DependencyExportFailed), the bytes stay readable, and renaming back fixes it.
#[tokio::test]
async fn descendants_of_a_renamed_directory_can_be_path_too_long() {
    let r = rig(Arc::new(MemoryStore::new()), "");
    let (a, b, c, f) = (
        "a".repeat(250),
        "b".repeat(250),
        "c".repeat(250),
        "f".repeat(250),
    );
    let deep = format!("d/{a}/{b}/{c}");
    r.mkdir("d").await;
    r.mkdir(&format!("d/{a}")).await;
    r.mkdir(&format!("d/{a}/{b}")).await;
    r.mkdir(&deep).await;
    let old_key = format!("{deep}/{f}");
    assert_eq!(old_key.len(), 1005);
    r.write_file(&old_key, b"exported before").await;
    r.sync().await.unwrap();
    let new_name = "n".repeat(100);
    r.write_file(&format!("{deep}/{new_name}"), b"never exported")
        .await;

    // The renamed directory's own key and its directories' fit; the files' do not.
    let long = "L".repeat(255);
    r.core
        .rename(ROOT, ROOT_INO, b"d", ROOT_INO, long.as_bytes(), 0)
        .await
        .unwrap();
    let moved_dir = format!("{long}/{a}/{b}/{c}");
    let moved = format!("{moved_dir}/{f}");
    let moved_new = format!("{moved_dir}/{new_name}");
    assert!(moved.len() > 1024 && moved_new.len() > 1024);
    assert_eq!(r.sync().await, Err(FsError::Io));
    // `sync` answers at the first failure; the other one follows at once.
    for _ in 0..200 {
        if field(&r.status(&moved_new).await, "ExportError").is_some()
            && field(&r.status(&moved).await, "ExportError").is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = r.status(&moved).await;
    assert_eq!(
        field(&status, "ExportError"),
        Some("PathTooLong"),
        "{status}"
    );
    assert_eq!(field(&status, "S3Key"), Some(moved.as_str()));
    assert_eq!(
        field(&status, "FilePath"),
        Some(format!("/{moved}").as_str())
    );
    let new_status = r.status(&moved_new).await;
    assert_eq!(field(&new_status, "ExportError"), Some("PathTooLong"));
    // Nothing too long was sent; the old object stays, and its delete reports the
    // dependency.
    assert!(
        r.mem.keys().iter().all(|k| k.len() <= 1024),
        "{:?}",
        r.mem.keys()
    );
    assert_eq!(&r.mem.body(&old_key).unwrap()[..], b"exported before");
    let queue = r.core.export_queue().unwrap().clone();
    let delete = queue.ids_under(&old_key, true);
    assert_eq!(delete.len(), 1);
    assert_eq!(
        queue.status(delete[0]).unwrap().export_error,
        Some(ExportErrorCode::DependencyExportFailed)
    );
    // A poll round (the old key still listed, its delete pending) changes none of it.
    let store: Arc<dyn ObjectStore> = r.faulty.clone();
    tokio::time::timeout(Duration::from_secs(10), r.core.poll_once(&store))
        .await
        .expect("poll hung");
    let status = r.status(&moved).await;
    assert_eq!(
        field(&status, "ExportError"),
        Some("PathTooLong"),
        "{status}"
    );
    // Every byte is still on the mount.
    assert_eq!(r.read(&moved).await, b"exported before");
    assert_eq!(r.read(&moved_new).await, b"never exported");
    // A new file there whose key would be too long is refused at once, as anywhere.
    let dir = r.ino(&moved_dir).await.unwrap();
    assert_eq!(
        r.core
            .create(ROOT, dir, "m".repeat(50).as_bytes(), 0o644)
            .await
            .map(|_| ()),
        Err(FsError::NameTooLong)
    );

    // Renamed to a shorter name, everything exports and nothing is lost.
    r.core
        .rename(ROOT, ROOT_INO, long.as_bytes(), ROOT_INO, b"e", 0)
        .await
        .unwrap();
    r.sync().await.unwrap();
    let back = format!("e/{a}/{b}/{c}");
    assert_eq!(
        &r.mem.body(&format!("{back}/{f}")).unwrap()[..],
        b"exported before"
    );
    assert_eq!(
        &r.mem.body(&format!("{back}/{new_name}")).unwrap()[..],
        b"never exported"
    );
    assert!(r.mem.body(&old_key).is_none());
    assert!(
        r.mem.keys().iter().all(|k| k.starts_with("e/")),
        "{:?}",
        r.mem.keys()
    );
    let status = r.status(&format!("{back}/{f}")).await;
    assert_eq!(field(&status, "ExportError"), None, "{status}");
    assert_eq!(field(&status, "state"), Some("synced"));
}

/// A core over a bucket holding one 10-byte file "f", which keeps a measured status
/// for `keep`; and f's inode.
async fn one_file_rig(keep: Duration) -> (Rig, Ino) {
    let mem = Arc::new(MemoryStore::new());
    mem.put("f", "0123456789", &[]);
    let r = rig(mem, "");
    r.core.set_status_reread(keep);
    let ino = r.ino("f").await.unwrap();
    (r, ino)
}

/// A status text made after `read` bytes were read: a fresh one, not a measured one.
/// (The cache writer moves other counters in the background, so two texts are never
/// compared whole.)
fn assert_fresh(text: &[u8], read: u64) {
    let text = String::from_utf8_lossy(text);
    assert!(text.contains(&format!(" read={read};")), "{text}");
}

/// getfattr asks for the length first, then for the value: the counters in the status
/// may have moved in between, and the second answer must still fit (no ERANGE).
#[tokio::test]
async fn the_measured_status_is_what_the_next_call_gets() {
    // However slow the machine, the second call comes within the window.
    let (r, ino) = one_file_rig(Duration::from_secs(3600)).await;
    let name = b"user.s3files.status;1764442800";
    let measured = r.core.getxattr_sized(ino, name, 0, 7).await.unwrap();
    // The mount works on: the status's counters grow.
    r.read("f").await;
    let fresh = r.core.getxattr(ino, name).await.unwrap();
    assert_ne!(
        fresh, measured,
        "the counters did not move; the test proves nothing"
    );
    let second = r
        .core
        .getxattr_sized(ino, name, measured.len() as u32, 7)
        .await
        .unwrap();
    assert_eq!(second, measured);
    // Once answered, the next read is fresh again.
    let third = r.core.getxattr_sized(ino, name, 65536, 7).await.unwrap();
    assert_fresh(&third, 10);
}

/// A second call that comes late (a stalled process) gets a fresh text if it fits the
/// buffer, and the text it measured if the fresh one has outgrown it: never ERANGE.
#[tokio::test]
async fn a_late_second_call_gets_a_fresh_text_that_fits_or_the_measured_one() {
    let (r, ino) = one_file_rig(Duration::ZERO).await;
    let name = b"user.s3files.status";
    let measured = r.core.getxattr_sized(ino, name, 0, 7).await.unwrap();
    r.read("f").await;
    let fresh = r.core.getxattr(ino, name).await.unwrap();
    assert!(
        fresh.len() > measured.len(),
        "the status did not grow; the test proves nothing"
    );
    let late = r
        .core
        .getxattr_sized(ino, name, measured.len() as u32, 7)
        .await
        .unwrap();
    assert_eq!(late, measured);
    // With room for the fresh text, the late call gets it.
    r.core.getxattr_sized(ino, name, 0, 7).await.unwrap();
    r.read("f").await;
    let late = r.core.getxattr_sized(ino, name, 65536, 7).await.unwrap();
    assert_fresh(&late, 20);
}

/// Two processes reading one status at once: each gets the text it measured, not the
/// other's (which may be longer than its buffer).
#[tokio::test]
async fn each_caller_gets_the_status_it_measured() {
    let (r, ino) = one_file_rig(Duration::from_secs(3600)).await;
    let name = b"user.s3files.status";
    let first = r.core.getxattr_sized(ino, name, 0, 100).await.unwrap();
    r.read("f").await;
    let other = r.core.getxattr_sized(ino, name, 0, 200).await.unwrap();
    assert_ne!(
        first, other,
        "the counters did not move; the test proves nothing"
    );
    let again = r
        .core
        .getxattr_sized(ino, name, first.len() as u32, 100)
        .await
        .unwrap();
    assert_eq!(again, first);
    let again = r
        .core
        .getxattr_sized(ino, name, other.len() as u32, 200)
        .await
        .unwrap();
    assert_eq!(again, other);
}

#[tokio::test]
async fn the_root_alone_summarises_the_whole_mount() {
    let r = rig(Arc::new(MemoryStore::new()), "");
    let root_status = |core: Arc<FsCore>| async move {
        String::from_utf8(
            core.getxattr(ROOT_INO, STATUS_XATTR.as_bytes())
                .await
                .unwrap(),
        )
        .unwrap()
    };
    let status = root_status(r.core.clone()).await;
    assert!(status.starts_with("S3Key: \nFilePath: /\n"), "{status}");
    for line in [
        "\nsummary (whole mount):\n",
        "\npending-exports: 0 (0 bytes, 0 B)\n",
        "\noldest-pending-change: none\n",
        "\nconflicts: 0 since mount\n",
        "\nlost+found: 0 files\n",
        "\nevents: off (polling off: ",
    ] {
        assert!(status.contains(line), "no {line:?} in:\n{status}");
    }
    r.write_file("a.txt", &[7; 1000]).await;
    r.write_file("b.txt", &[7; 24]).await;
    let status = root_status(r.core.clone()).await;
    assert!(
        status.contains("\npending-exports: 2 (1024 bytes, 1.0 KiB)\n"),
        "{status}"
    );
    assert!(!status.contains("oldest-pending-change: none"), "{status}");
    assert_eq!(
        crate::mounts::parse_pending(&status),
        Some(crate::mounts::Pending {
            files: 2,
            bytes: 1024
        })
    );
    // A file's status has no summary.
    let ino = r.ino("a.txt").await.unwrap();
    let file =
        String::from_utf8(r.core.getxattr(ino, STATUS_XATTR.as_bytes()).await.unwrap()).unwrap();
    assert!(!file.contains("summary"), "{file}");
    r.sync().await.unwrap();
    let status = root_status(r.core.clone()).await;
    assert!(
        status.contains("\npending-exports: 0 (0 bytes, 0 B)\n"),
        "{status}"
    );
}
