//! In-process tests of passthrough's rules in the core: writes made to the backing file
//! (as the kernel makes them) are found and exported, handles of one inode always share
//! one backing, and an open that would need other bytes fails rather than mixing.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::inode::ROOT_INO;
use super::passthrough::IoMode;
use super::sync_tests::{rig, ROOT};
use super::*;
use crate::store::memory::MemoryStore;

fn backing_of(core: &FsCore, fh: u64) -> Arc<passthrough::Backing> {
    match core.io_mode(fh) {
        IoMode::Passthrough(backing) => backing,
        other => panic!("handle {fh} is {}", other.name()),
    }
}

/// Lets the clock move past the file's last timestamps (they are coarse: a clock tick).
async fn tick() {
    tokio::time::sleep(Duration::from_millis(60)).await;
}

#[tokio::test]
async fn writes_through_the_kernel_are_found_and_exported() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.enable_passthrough();
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let (attr, fh) = r.core.create(ROOT, ROOT_INO, b"f", 0o644).await.unwrap();
    let backing = backing_of(&r.core, fh);
    // The kernel writes the backing file; the daemon hears nothing.
    backing.file().write_all_at(b"hello world", 0).unwrap();
    let seen = r.core.getattr(attr.ino).await.unwrap();
    assert_eq!(seen.size, 11, "size from the file itself");
    assert!(seen.mtime >= attr.mtime);
    tick().await;
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("f").unwrap()[..], b"hello world");

    // Still open: a later write is found by the once-a-second watch, and exported.
    tick().await;
    backing.file().write_all_at(b"HELLO", 0).unwrap();
    r.core.watch_external_writes();
    tick().await;
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("f").unwrap()[..], b"HELLO world");

    // The last write before close is found at release.
    tick().await;
    backing.file().set_len(5).unwrap();
    r.core.release(fh);
    tick().await;
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("f").unwrap()[..], b"HELLO");
}

#[tokio::test]
async fn handles_of_one_inode_share_one_backing() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    // Off until the kernel accepts it at INIT.
    let fh = r.write_file(ROOT_INO, "off", b"x").await;
    assert!(matches!(r.core.io_mode(fh), IoMode::Cached));
    r.core.release(fh);

    r.core.enable_passthrough();
    let (attr, writer) = r.core.create(ROOT, ROOT_INO, b"f", 0o644).await.unwrap();
    let (reader, _) = r.core.open(ROOT, attr.ino, false, false).await.unwrap();
    let (second, _) = r.core.open(ROOT, attr.ino, true, false).await.unwrap();
    let b = backing_of(&r.core, writer);
    assert!(Arc::ptr_eq(&b, &backing_of(&r.core, reader)));
    assert!(Arc::ptr_eq(&b, &backing_of(&r.core, second)));
    for fh in [writer, reader, second] {
        r.core.release(fh);
    }

    // A clean file's writer goes through the daemon (its first write is recorded before
    // it returns), and then every other open of the inode uses the page cache too.
    r.sync().await.unwrap();
    let (w, _) = r.core.open(ROOT, attr.ino, true, false).await.unwrap();
    assert!(matches!(r.core.io_mode(w), IoMode::Cached));
    let (rd, _) = r.core.open(ROOT, attr.ino, false, false).await.unwrap();
    assert!(matches!(r.core.io_mode(rd), IoMode::Cached));
    r.core.write(w, 0, b"changed").unwrap();
    r.core.release(w);
    r.core.release(rd);
    // Pending now, and nothing open: passed through again.
    let (rd, _) = r.core.open(ROOT, attr.ino, false, false).await.unwrap();
    backing_of(&r.core, rd);
    r.core.release(rd);
}

/// The bucket wins a conflict over bytes that open handles are passed through to: the
/// kernel would refuse any other bytes for that inode, so the bucket's version shows
/// under a new inode (as if renamed over the old file) while the old handles keep theirs.
#[tokio::test]
async fn the_bucket_version_shows_under_a_new_inode_beside_passed_through_handles() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.enable_passthrough();
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let fh = r.write_file(ROOT_INO, "f", b"base").await;
    r.core.release(fh);
    r.sync().await.unwrap();
    let ino = super::sync_tests::ino_of(&r.core, "f").await.unwrap();
    let (mine, _) = r.core.open(ROOT, ino, true, true).await.unwrap();
    r.core.write(mine, 0, b"mine").unwrap();
    let (reader, _) = r.core.open(ROOT, ino, false, false).await.unwrap();
    backing_of(&r.core, reader);
    r.mem.put("f", "theirs", &[]);
    r.poll().await; // poll-time conflict: the bucket wins
    let fresh = super::sync_tests::ino_of(&r.core, "f").await.unwrap();
    assert_ne!(fresh, ino, "a new inode for the bucket's version");
    assert_eq!(r.read_all("f").await.unwrap(), b"theirs");
    // The old inode is unlinked; its handles never see the bucket's bytes, and an open
    // of it by a descriptor path (/proc/PID/fd) would need other bytes: refused.
    assert_eq!(
        r.core.open(ROOT, ino, false, false).await.err(),
        Some(FsError::Io)
    );
    r.core.release(mine);
    r.core.release(reader);
    assert_eq!(r.lost_found_names().len(), 1);
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("f").unwrap()[..], b"theirs");
}

/// The same when S3 changes a file whose clean bytes (or cached copy) open handles are
/// passed through to: the poller shows the new version under a new inode.
#[tokio::test]
async fn a_changed_object_shows_under_a_new_inode_beside_passed_through_handles() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.enable_passthrough();
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let fh = r.write_file(ROOT_INO, "f", b"base").await;
    r.sync().await.unwrap(); // clean bytes, kept while the handle is open
    let ino = super::sync_tests::ino_of(&r.core, "f").await.unwrap();
    let (reader, _) = r.core.open(ROOT, ino, false, false).await.unwrap();
    backing_of(&r.core, reader);
    r.mem.put("f", "newer", &[]);
    r.poll().await;
    let fresh = super::sync_tests::ino_of(&r.core, "f").await.unwrap();
    assert_ne!(fresh, ino);
    assert_eq!(r.read_all("f").await.unwrap(), b"newer");
    r.core.release(fh);
    r.core.release(reader);
}

/// A read-only `O_DIRECT` open is answered by the daemon (its reads are cache hits, not
/// device reads), unless the inode's handles are passed through: the kernel then allows
/// only passthrough beside them, so it joins them. A direct handle never keeps a later
/// open from being passed through.
#[tokio::test]
async fn direct_readers_are_served_by_the_daemon_unless_the_inode_is_passed_through() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.enable_passthrough();
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let (attr, writer) = r.core.create(ROOT, ROOT_INO, b"f", 0o644).await.unwrap();
    backing_of(&r.core, writer)
        .file()
        .write_all_at(b"hello", 0)
        .unwrap();
    // Beside a passed-through writer: joins its backing, and sees its bytes.
    let (joined, _) = r
        .core
        .open_with(ROOT, attr.ino, false, false, true)
        .await
        .unwrap();
    assert!(Arc::ptr_eq(
        &backing_of(&r.core, writer),
        &backing_of(&r.core, joined)
    ));
    r.core.release(joined);
    r.core.release(writer);

    // Alone: served by the daemon, with the file's bytes.
    let direct_before = r.core.metrics().opens_direct.load(Ordering::Relaxed);
    let (direct, _) = r
        .core
        .open_with(ROOT, attr.ino, false, false, true)
        .await
        .unwrap();
    assert!(matches!(r.core.io_mode(direct), IoMode::Direct));
    assert_eq!(&r.core.read(direct, 0, 100).await.unwrap()[..], b"hello");
    assert_eq!(
        r.core.metrics().opens_direct.load(Ordering::Relaxed),
        direct_before + 1
    );
    // A plain open beside it is still passed through, and a direct one then joins it.
    let (plain, _) = r.core.open(ROOT, attr.ino, false, false).await.unwrap();
    let backing = backing_of(&r.core, plain);
    let (second, _) = r
        .core
        .open_with(ROOT, attr.ino, false, false, true)
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&backing, &backing_of(&r.core, second)));
    // A direct writer is a writer like any other (here: passed through with the rest).
    let (rw, _) = r
        .core
        .open_with(ROOT, attr.ino, true, false, true)
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&backing, &backing_of(&r.core, rw)));
    for fh in [direct, plain, second, rw] {
        r.core.release(fh);
    }
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("f").unwrap()[..], b"hello");
}
