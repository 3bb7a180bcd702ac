//! FIFOs and sockets as S3 Files stores them (zero-byte objects whose permissions carry
//! the type bits), through the core against the in-memory store: create, export,
//! import by another mount, chmod, rename, unlink, conflicts. tests/special_files.rs
//! proves the same through a real mount, errno for errno against a local file system.

use std::sync::Arc;

use super::inode::ROOT_INO;
use super::sync_tests::{rig, rig_with, Rig, ROOT};
use super::write::SetAttr;
use super::*;
use crate::posix::{S_IFIFO, S_IFREG, S_IFSOCK};
use crate::store::memory::MemoryStore;

impl Rig {
    async fn attr_of(&self, path: &str) -> FsResult<Attr> {
        let ino = self.ino(path).await?;
        self.core.getattr(ino).await
    }

    async fn kinds(&self, dir: Ino) -> Vec<(String, Option<EntryKind>)> {
        let fh = self.core.opendir(ROOT, dir).await.unwrap();
        let entries = self.core.readdir(fh, 0).unwrap();
        self.core.releasedir(fh);
        entries
            .iter()
            .skip(2)
            .map(|(e, _)| (e.name.clone(), e.kind))
            .collect()
    }

    fn permissions(&self, key: &str) -> Option<String> {
        self.mem
            .metadata(key)
            .and_then(|m| m.get("file-permissions").cloned())
    }
}

fn chmod(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    }
}

#[tokio::test]
async fn fifos_and_sockets_export_as_zero_byte_objects_and_import_with_their_type() {
    let mem = Arc::new(MemoryStore::new());
    let r = rig(mem.clone());
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    r.core.mkdir(ROOT, ROOT_INO, b"d", 0o755).await.unwrap();
    let p = r
        .core
        .mknod(ROOT, ROOT_INO, b"p", S_IFIFO | 0o640)
        .await
        .unwrap();
    let s = r
        .core
        .mknod(ROOT, ROOT_INO, b"s", S_IFSOCK | 0o755)
        .await
        .unwrap();
    assert_eq!(
        (p.kind, p.perm, p.size, p.nlink),
        (EntryKind::Fifo, 0o640, 0, 1)
    );
    assert_eq!((s.kind, s.perm, s.size), (EntryKind::Socket, 0o755, 0));
    assert_eq!(
        r.kinds(ROOT_INO).await,
        [
            ("d".to_string(), Some(EntryKind::Dir)),
            ("p".into(), Some(EntryKind::Fifo)),
            ("s".into(), Some(EntryKind::Socket))
        ]
    );
    // A path through them is ENOTDIR; they have no data to open or truncate.
    assert_eq!(r.ino("p/x").await, Err(FsError::NotDir));
    assert_eq!(r.ino("s/x").await, Err(FsError::NotDir));
    assert_eq!(
        r.core.open(ROOT, p.ino, false, false).await,
        Err(FsError::Invalid)
    );
    assert_eq!(
        r.core.open_cached(ROOT, s.ino, false, false, false),
        Some(Err(FsError::Invalid))
    );
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        r.core.setattr(ROOT, p.ino, truncate).await,
        Err(FsError::Invalid)
    );
    assert_eq!(r.core.readlink(p.ino).await, Err(FsError::Invalid));

    r.sync().await.unwrap();
    for (key, perms) in [("p", "0010640"), ("s", "0140755")] {
        assert_eq!(r.mem.body(key).as_deref(), Some(&b""[..]), "{key}");
        let meta = r.mem.metadata(key).unwrap();
        assert_eq!(meta["file-permissions"], perms);
        assert_eq!(
            (meta["file-owner"].as_str(), meta["file-group"].as_str()),
            ("0", "0")
        );
        assert!(meta["file-mtime"].ends_with("ns"));
    }
    let status = String::from_utf8(
        r.core
            .getxattr(p.ino, STATUS_XATTR.as_bytes())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(status.contains("state: synced"), "{status}");
    assert!(!status.contains("cached:"), "no data to cache: {status}");

    // Another mount of the bucket sees them with their type, mode and mtime.
    // Its listing alone cannot tell a FIFO or socket (no body) from an empty file: their
    // type is unknown to readdir until a stat reads their metadata, never a wrong one.
    let other = rig(mem.clone());
    assert_eq!(
        other.kinds(ROOT_INO).await,
        [
            ("d".to_string(), Some(EntryKind::Dir)),
            ("p".into(), None),
            ("s".into(), None)
        ]
    );
    let op = other.attr_of("p").await.unwrap();
    other.attr_of("s").await.unwrap();
    assert_eq!(
        other.kinds(ROOT_INO).await,
        [
            ("d".to_string(), Some(EntryKind::Dir)),
            ("p".into(), Some(EntryKind::Fifo)),
            ("s".into(), Some(EntryKind::Socket))
        ]
    );
    assert_eq!(
        (op.kind, op.perm, op.size, op.mtime),
        (EntryKind::Fifo, 0o640, 0, p.mtime)
    );
    let os = other.attr_of("s").await.unwrap();
    assert_eq!(
        (os.kind, os.perm, os.mtime),
        (EntryKind::Socket, 0o755, s.mtime)
    );

    // chmod there keeps the type; so does a rename across directories; unlink deletes.
    let changed = other
        .core
        .setattr(ROOT, op.ino, chmod(0o600))
        .await
        .unwrap();
    assert_eq!((changed.kind, changed.perm), (EntryKind::Fifo, 0o600));
    let other_d = other.ino("d").await.unwrap();
    other
        .core
        .rename(ROOT, ROOT_INO, b"p", other_d, b"q", 0)
        .await
        .unwrap();
    assert_eq!(other.attr_of("d/q").await.unwrap().kind, EntryKind::Fifo);
    other.core.unlink(ROOT, ROOT_INO, b"s").await.unwrap();
    other.sync().await.unwrap();
    assert!(mem.body("p").is_none() && mem.body("s").is_none());
    assert_eq!(mem.body("d/q").as_deref(), Some(&b""[..]));
    assert_eq!(other.permissions("d/q").as_deref(), Some("0010600"));
    // And the first mount picks the rename up at its next poll.
    r.poll().await;
    assert_eq!(r.ino("p").await, Err(FsError::NotFound));
    let q = r.attr_of("d/q").await.unwrap();
    assert_eq!((q.kind, q.perm), (EntryKind::Fifo, 0o600));
}

#[tokio::test]
async fn mknod_makes_regular_files_and_refuses_devices() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        assert_eq!(
            r.core.mknod(ROOT, ROOT_INO, b"dev", kind | 0o600).await,
            Err(FsError::Perm)
        );
    }
    let f = r
        .core
        .mknod(ROOT, ROOT_INO, b"f", S_IFREG | 0o600)
        .await
        .unwrap();
    assert_eq!((f.kind, f.perm, f.size), (EntryKind::File, 0o600, 0));
    // No type bits at all is a regular file, as mknod(2) says.
    let g = r.core.mknod(ROOT, ROOT_INO, b"g", 0o644).await.unwrap();
    assert_eq!(g.kind, EntryKind::File);
    assert_eq!(
        r.core.mknod(ROOT, ROOT_INO, b"f", S_IFIFO | 0o600).await,
        Err(FsError::Exists)
    );
    r.sync().await.unwrap();
    assert_eq!(r.permissions("f").as_deref(), Some("0100600"));
    assert!(r.mem.body("dev").is_none());
}

/// rename(2) over an entry of each kind: any non-directory replaces any non-directory;
/// directories only replace (empty) directories, as on a local file system.
#[tokio::test]
async fn renames_over_each_kind() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let make = |name: &'static str, kind: EntryKind| {
        let core = r.core.clone();
        async move {
            match kind {
                EntryKind::File => {
                    core.mknod(ROOT, ROOT_INO, name.as_bytes(), S_IFREG | 0o644)
                        .await
                }
                EntryKind::Dir => core.mkdir(ROOT, ROOT_INO, name.as_bytes(), 0o755).await,
                EntryKind::Symlink => {
                    core.symlink(ROOT, ROOT_INO, name.as_bytes(), b"target")
                        .await
                }
                EntryKind::Fifo => {
                    core.mknod(ROOT, ROOT_INO, name.as_bytes(), S_IFIFO | 0o644)
                        .await
                }
                EntryKind::Socket => {
                    core.mknod(ROOT, ROOT_INO, name.as_bytes(), S_IFSOCK | 0o644)
                        .await
                }
            }
            .unwrap()
        }
    };
    let kinds = [
        EntryKind::File,
        EntryKind::Dir,
        EntryKind::Symlink,
        EntryKind::Fifo,
        EntryKind::Socket,
    ];
    for src in [EntryKind::Fifo, EntryKind::Socket] {
        for dst in kinds {
            make("src", src).await;
            make("dst", dst).await;
            let result = r
                .core
                .rename(ROOT, ROOT_INO, b"src", ROOT_INO, b"dst", 0)
                .await;
            if dst == EntryKind::Dir {
                assert_eq!(result, Err(FsError::IsDir), "{src:?} over {dst:?}");
                r.core.unlink(ROOT, ROOT_INO, b"src").await.unwrap();
                r.core.rmdir(ROOT, ROOT_INO, b"dst").await.unwrap();
                continue;
            }
            result.unwrap();
            assert_eq!(
                r.attr_of("dst").await.unwrap().kind,
                src,
                "{src:?} over {dst:?}"
            );
            assert_eq!(r.ino("src").await, Err(FsError::NotFound));
            // Exported: the replaced object is gone, the renamed one is at the new key.
            r.sync().await.unwrap();
            let bits = if src == EntryKind::Fifo {
                "0010644"
            } else {
                "0140644"
            };
            assert_eq!(
                r.permissions("dst").as_deref(),
                Some(bits),
                "{src:?} over {dst:?}"
            );
            assert!(r.mem.body("src").is_none());
            r.core.unlink(ROOT, ROOT_INO, b"dst").await.unwrap();
        }
        // A directory (or anything) over a FIFO or socket.
        make("dir", EntryKind::Dir).await;
        make("dst", src).await;
        assert_eq!(
            r.core
                .rename(ROOT, ROOT_INO, b"dir", ROOT_INO, b"dst", 0)
                .await,
            Err(FsError::NotDir)
        );
        make("file", EntryKind::File).await;
        r.core
            .rename(ROOT, ROOT_INO, b"file", ROOT_INO, b"dst", 0)
            .await
            .unwrap();
        assert_eq!(r.attr_of("dst").await.unwrap().kind, EntryKind::File);
        r.core.unlink(ROOT, ROOT_INO, b"dst").await.unwrap();
        r.core.rmdir(ROOT, ROOT_INO, b"dir").await.unwrap();
    }
    r.sync().await.unwrap();
    assert!(r.kinds(ROOT_INO).await.is_empty());
    assert!(r.mem.body("dst").is_none());
}

/// A FIFO whose key another writer took before it was exported loses like any change,
/// but it has no bytes: nothing goes to lost+found.
#[tokio::test]
async fn a_conflicting_fifo_is_dropped_not_kept_in_lost_found() {
    let mem = Arc::new(MemoryStore::new());
    let r = rig(mem.clone());
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    r.core
        .mknod(ROOT, ROOT_INO, b"p", S_IFIFO | 0o644)
        .await
        .unwrap();
    mem.put("p", "theirs", &[]);
    r.poll().await;
    let p = r.attr_of("p").await.unwrap();
    assert_eq!((p.kind, p.size), (EntryKind::File, 6));
    assert!(
        r.lost_found_names().is_empty(),
        "{:?}",
        r.lost_found_names()
    );
    r.sync().await.unwrap();
    assert_eq!(&mem.body("p").unwrap()[..], b"theirs");
}

/// Objects another tool wrote with FIFO type bits and a body: still a FIFO, size 0,
/// nothing of the body served.
#[tokio::test]
async fn a_fifo_object_with_a_body_shows_no_data() {
    let mem = Arc::new(MemoryStore::new());
    mem.put("odd", "some bytes", &[("file-permissions", "0010600")]);
    let r = rig(mem);
    assert_eq!(r.kinds(ROOT_INO).await, [("odd".to_string(), None)]);
    let a = r.attr_of("odd").await.unwrap();
    assert_eq!(
        r.kinds(ROOT_INO).await,
        [("odd".to_string(), Some(EntryKind::Fifo))]
    );
    assert_eq!((a.kind, a.size, a.perm), (EntryKind::Fifo, 0, 0o600));
    assert_eq!(
        r.core.open(ROOT, a.ino, false, false).await,
        Err(FsError::Invalid)
    );
}

/// On an access-point mount a FIFO or socket belongs to the access point's identity, as
/// a file does, and making one needs write permission on the directory as that identity.
#[tokio::test]
async fn fifos_on_an_access_point_belong_to_it() {
    let agent = Identity::new(1000, 1001);
    let mem = Arc::new(MemoryStore::new());
    // Its home directory, as S3 Files sets one up for an access point.
    mem.put(
        "home/",
        "",
        &[
            ("file-permissions", "0040755"),
            ("file-owner", "1000"),
            ("file-group", "1001"),
        ],
    );
    let r = rig_with(mem, |o| o.access_point = Some(agent));
    // Whoever calls, the access point's identity acts: the bucket root (root's 0755)
    // is not its to write.
    let caller = Identity::new(5, 5);
    assert_eq!(
        r.core.mknod(caller, ROOT_INO, b"p", S_IFIFO | 0o600).await,
        Err(FsError::Access)
    );
    let home = r.ino("home").await.unwrap();
    let p = r
        .core
        .mknod(caller, home, b"p", S_IFIFO | 0o600)
        .await
        .unwrap();
    assert_eq!(
        (p.kind, p.uid, p.gid, p.perm),
        (EntryKind::Fifo, 1000, 1001, 0o600)
    );
    let s = r
        .core
        .mknod(caller, home, b"s", S_IFSOCK | 0o700)
        .await
        .unwrap();
    assert_eq!((s.kind, s.uid, s.gid), (EntryKind::Socket, 1000, 1001));
    r.sync().await.unwrap();
    let meta = r.mem.metadata("home/p").unwrap();
    assert_eq!(
        (
            meta["file-owner"].as_str(),
            meta["file-group"].as_str(),
            meta["file-permissions"].as_str()
        ),
        ("1000", "1001", "0010600")
    );
}
