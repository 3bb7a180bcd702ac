//! In-process tests of access points (secondary groups, root squash, a root directory)
//! and of what may be done with lost+found, against the in-memory store. The same rules
//! through a real mount: tests/access_point.rs.

use std::sync::Arc;

use super::access::{Identity, ANONYMOUS};
use super::inode::ROOT_INO;
use super::sync_tests::{rig_with, Rig};
use super::write::SetAttr;
use super::*;
use crate::export::lost_found::DIR_PREFIX;
use crate::store::memory::MemoryStore;

const ROOT: Identity = Identity::new(0, 0);

/// The rig's lost+found directory name (mount id "m").
fn lost_dir_name() -> String {
    format!("{DIR_PREFIX}m")
}

/// Writes `base` to `dir/name` and exports it; then the mount writes `mine` while another
/// writer puts `theirs` in S3, and a poll finds the conflict.
async fn make_conflict(r: &Rig, dir: Ino, path: &str, key: &str) {
    let name = path.rsplit('/').next().unwrap();
    let fh = r.write_file(dir, name, b"base").await;
    r.core.release(fh);
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body(key).unwrap()[..], b"base");
    let ino = r.ino(path).await.unwrap();
    let (fh, _) = r.core.open(ROOT, ino, true, true).await.unwrap();
    r.core.write(fh, 0, b"mine").unwrap();
    r.core.release(fh);
    r.mem.put(key, "theirs", &[]);
    r.poll().await;
    assert_eq!(
        r.read_all(path).await.unwrap(),
        b"theirs",
        "the bucket wins"
    );
}

/// S3 Files: files in lost+found can be read, copied and deleted, never moved; the
/// directory itself stays; names are cut to 100 characters; the status gives the path.
#[tokio::test]
async fn lost_found_files_are_read_copied_and_deleted_never_moved() {
    let r = rig_with(Arc::new(MemoryStore::new()), |_| {});
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let d = r.core.mkdir(ROOT, ROOT_INO, b"d", 0o755).await.unwrap();
    r.core.opendir(ROOT, d.ino).await.unwrap();
    let long = "n".repeat(150);
    make_conflict(&r, d.ino, &format!("d/{long}"), &format!("d/{long}")).await;

    let lost = r.lost_found_names();
    assert_eq!(lost.len(), 1, "{lost:?}");
    let name = lost[0].clone();
    let (hex, short) = name.split_once('_').unwrap();
    assert!(u64::from_str_radix(hex, 16).is_ok(), "{name}");
    assert_eq!(short, "n".repeat(100), "the name is cut to 100 characters");
    let lf = lost_dir_name();
    let lf_ino = r.ino(&lf).await.unwrap();
    let file = r.ino(&format!("{lf}/{name}")).await.unwrap();

    // Read, and the status says where it came from.
    let bytes = r.read_all(&format!("{lf}/{name}")).await.unwrap();
    assert_eq!(bytes, b"mine");
    let status = r
        .core
        .getxattr(file, STATUS_XATTR.as_bytes())
        .await
        .unwrap();
    let status = String::from_utf8(status).unwrap();
    assert!(status.contains("state: conflict"), "{status}");
    assert!(
        status.contains(&format!("original-path: /d/{long}\n")),
        "{status}"
    );

    // Copied out: a new file with the same bytes, exported like any other.
    let fh = r.write_file(ROOT_INO, "copy", &bytes).await;
    r.core.release(fh);
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("copy").unwrap()[..], b"mine");

    // Never moved: not out, not within, not in; lost+found itself neither renamed nor
    // replaced, nor written.
    let perm = Err(FsError::Perm);
    let n = name.as_bytes();
    assert_eq!(
        r.core.rename(ROOT, lf_ino, n, ROOT_INO, b"out", 0).await,
        perm
    );
    assert_eq!(
        r.core.rename(ROOT, lf_ino, n, d.ino, b"back", 0).await,
        perm
    );
    assert_eq!(r.core.rename(ROOT, lf_ino, n, lf_ino, b"x", 0).await, perm);
    assert_eq!(
        r.core
            .rename(ROOT, ROOT_INO, b"copy", lf_ino, b"in", 0)
            .await,
        perm
    );
    let lfb = lf.as_bytes();
    assert_eq!(
        r.core
            .rename(ROOT, ROOT_INO, lfb, ROOT_INO, b"mine", 0)
            .await,
        perm
    );
    r.core.mkdir(ROOT, ROOT_INO, b"empty", 0o755).await.unwrap();
    assert_eq!(
        r.core
            .rename(ROOT, ROOT_INO, b"empty", ROOT_INO, lfb, 0)
            .await,
        perm
    );
    assert!(matches!(
        r.core.create(ROOT, lf_ino, b"new", 0o644).await,
        Err(FsError::Perm)
    ));
    let chmod = SetAttr {
        mode: Some(0o644),
        ..SetAttr::default()
    };
    assert_eq!(r.core.setattr(ROOT, file, chmod).await, Err(FsError::Perm));
    assert_eq!(r.core.rmdir(ROOT, ROOT_INO, lfb).await, perm, "non-empty");
    assert_eq!(r.read_all(&format!("{lf}/{name}")).await.unwrap(), b"mine");

    // Deleted: gone from the mount and from the cache dir; the directory stays.
    r.core.unlink(ROOT, lf_ino, n).await.unwrap();
    assert!(r.lost_found_names().is_empty());
    let queue = r.core.export_queue().unwrap();
    assert!(queue.lost().entries().unwrap().is_empty());
    assert_eq!(r.core.rmdir(ROOT, ROOT_INO, lfb).await, perm, "empty");
    assert!(r.ino(&lf).await.is_ok());

    // Nothing of lost+found ever reached S3.
    r.sync().await.unwrap();
    assert!(r.mem.body(&format!("{lf}/{name}")).is_none());
    assert!(r.mem.body(&format!("{lf}/")).is_none());
}

/// Through an access point's root directory lost+found is not shown (it is at the
/// file-system root, above the mount's root); the local copy is kept all the same, with
/// its path in the file system.
#[tokio::test]
async fn root_directory_hides_lost_found_and_keeps_its_bytes() {
    let mem = Arc::new(MemoryStore::new());
    mem.put("fs/ap/", "", &[]);
    let r = rig_with(mem, |o| {
        o.root_prefix = "fs/ap/".into();
        o.fs_prefix = Some("fs/".into());
    });
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    make_conflict(&r, ROOT_INO, "f.txt", "fs/ap/f.txt").await;
    assert_eq!(r.core.metrics().conflicts.load(Ordering::Relaxed), 1);

    let handle = r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let names: Vec<String> = r
        .core
        .readdir(handle, 0)
        .unwrap()
        .iter()
        .map(|(e, _)| e.name.clone())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(DIR_PREFIX)),
        "{names:?}"
    );
    assert_eq!(
        r.core
            .lookup(ROOT, ROOT_INO, lost_dir_name().as_bytes())
            .await,
        Err(FsError::NotFound)
    );
    let queue = r.core.export_queue().unwrap();
    let kept = queue.lost().entries().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].0.ends_with("_f.txt"), "{kept:?}");
    assert_eq!(kept[0].1, "/ap/f.txt", "the path in the file system");
    assert_eq!(
        std::fs::read(queue.lost().path(&kept[0].0)).unwrap(),
        b"mine"
    );
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("fs/ap/f.txt").unwrap()[..], b"theirs");
    assert!(r.mem.body(&format!("fs/{}/", lost_dir_name())).is_none());
}

/// Secondary gids: group permissions apply to files of any of them; chgrp to them only.
#[tokio::test]
async fn secondary_groups_grant_group_permissions() {
    let mem = Arc::new(MemoryStore::new());
    let file = |perm: &'static str, gid: &'static str| {
        [
            ("file-permissions", perm),
            ("file-owner", "5"),
            ("file-group", gid),
        ]
    };
    mem.put("r2000", "a", &file("0100640", "2000"));
    mem.put("rw2000", "b", &file("0100660", "2000"));
    mem.put("r3000", "c", &file("0100640", "3000"));
    mem.put(
        "home/",
        "",
        &[("file-permissions", "0040755"), ("file-owner", "1000")],
    );
    let r = rig_with(mem, |o| {
        o.access_point = Some(Identity::new(1000, 1000));
        o.secondary_gids = vec![2000, 2500];
    });
    // The caller is root; the access point's identity is what counts.
    let open = |name: &'static str, write: bool| {
        let core = r.core.clone();
        async move {
            let ino = core.lookup(ROOT, ROOT_INO, name.as_bytes()).await?.ino;
            let (fh, _) = core.open(ROOT, ino, write, false).await?;
            core.release(fh);
            Ok::<(), FsError>(())
        }
    };
    assert_eq!(open("r2000", false).await, Ok(()));
    assert_eq!(open("r2000", true).await, Err(FsError::Access));
    assert_eq!(open("rw2000", true).await, Ok(()));
    assert_eq!(open("r3000", false).await, Err(FsError::Access));

    // New files are the access point's; its owner may give them to its groups only.
    let home = r.core.lookup(ROOT, ROOT_INO, b"home").await.unwrap();
    let (attr, fh) = r.core.create(ROOT, home.ino, b"f", 0o640).await.unwrap();
    r.core.release(fh);
    assert_eq!((attr.uid, attr.gid), (1000, 1000));
    let chgrp = |gid| SetAttr {
        gid: Some(gid),
        ..SetAttr::default()
    };
    assert_eq!(
        r.core
            .setattr(ROOT, attr.ino, chgrp(2500))
            .await
            .unwrap()
            .gid,
        2500
    );
    assert_eq!(
        r.core.setattr(ROOT, attr.ino, chgrp(4000)).await,
        Err(FsError::Perm)
    );
    r.sync().await.unwrap();
    assert_eq!(r.mem.metadata("home/f").unwrap()["file-group"], "2500");
}

/// Root squash: uid 0 is the anonymous user for permission checks and as new owners;
/// other callers are themselves.
#[tokio::test]
async fn root_squash_makes_root_anonymous() {
    let mem = Arc::new(MemoryStore::new());
    mem.put(
        "private",
        "secret",
        &[
            ("file-permissions", "0100600"),
            ("file-owner", "1000"),
            ("file-group", "1000"),
        ],
    );
    mem.put("shared/", "", &[("file-permissions", "0040777")]);
    let r = rig_with(mem, |o| o.root_squash = true);
    let private = r.core.lookup(ROOT, ROOT_INO, b"private").await.unwrap();
    assert_eq!(
        r.core.open(ROOT, private.ino, false, false).await,
        Err(FsError::Access),
        "root reads a 0600 file of uid 1000 as nobody"
    );
    let owner = Identity::new(1000, 1000);
    let (fh, _) = r.core.open(owner, private.ino, false, false).await.unwrap();
    r.core.release(fh);
    // Writing where only root could: refused.
    assert!(matches!(
        r.core.create(ROOT, ROOT_INO, b"top", 0o644).await,
        Err(FsError::Access)
    ));
    let shared = r.core.lookup(ROOT, ROOT_INO, b"shared").await.unwrap();
    let (attr, fh) = r
        .core
        .create(ROOT, shared.ino, b"new", 0o644)
        .await
        .unwrap();
    r.core.release(fh);
    assert_eq!((attr.uid, attr.gid), (ANONYMOUS, ANONYMOUS));
    // Nor may squashed root give files away.
    let chown = SetAttr {
        uid: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        r.core.setattr(ROOT, attr.ino, chown).await,
        Err(FsError::Perm)
    );
    r.sync().await.unwrap();
    let meta = r.mem.metadata("shared/new").unwrap();
    assert_eq!(meta["file-owner"], "65534");
    assert_eq!(meta["file-group"], "65534");
}

/// An access point acting as root is squashed too.
#[tokio::test]
async fn root_squash_applies_to_an_access_point_acting_as_root() {
    let mem = Arc::new(MemoryStore::new());
    mem.put("shared/", "", &[("file-permissions", "0040777")]);
    let r = rig_with(mem, |o| {
        o.access_point = Some(ROOT);
        o.root_squash = true;
    });
    let caller = Identity::new(1000, 1000);
    let shared = r.core.lookup(caller, ROOT_INO, b"shared").await.unwrap();
    let (attr, fh) = r
        .core
        .create(caller, shared.ino, b"x", 0o600)
        .await
        .unwrap();
    r.core.release(fh);
    assert_eq!((attr.uid, attr.gid), (ANONYMOUS, ANONYMOUS));
}
