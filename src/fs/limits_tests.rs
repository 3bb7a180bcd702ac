//! S3 Files' limits (its quotas page): symlink targets up to 4,080 bytes, directories up
//! to 1,000 levels deep, files up to 48 TiB, 65,536 open files per mount.

use std::sync::Arc;

use super::change::{writable_len, MAX_FILE_SIZE, MAX_SYMLINK_TARGET};
use super::handle::MAX_OPEN_FILES;
use super::inode::ROOT_INO;
use super::namespace::MAX_DIR_DEPTH;
use super::status_tests::{rig, ROOT};
use super::write::SetAttr;
use super::*;
use crate::store::memory::MemoryStore;

#[tokio::test]
async fn symlink_targets_up_to_4080_bytes_and_not_empty() {
    let r = rig(Arc::new(MemoryStore::new()), "");
    let longest = vec![b't'; MAX_SYMLINK_TARGET];
    let link = r
        .core
        .symlink(ROOT, ROOT_INO, b"ok", &longest)
        .await
        .unwrap();
    assert_eq!(&r.core.readlink(link.ino).await.unwrap()[..], &longest[..]);
    let too_long = vec![b't'; MAX_SYMLINK_TARGET + 1];
    let refused = r.core.symlink(ROOT, ROOT_INO, b"long", &too_long).await;
    assert_eq!(refused.map(|_| ()), Err(FsError::NameTooLong));
    assert_eq!(FsError::NameTooLong.errno(), libc::ENAMETOOLONG);
    // An empty target is ENOENT, as Linux answers it, even for a name that exists.
    for name in [&b"empty"[..], b"ok"] {
        let empty = r.core.symlink(ROOT, ROOT_INO, name, b"").await;
        assert_eq!(empty.map(|_| ()), Err(FsError::NotFound));
    }
    // Refused links leave nothing behind.
    assert_eq!(r.ino("long").await, Err(FsError::NotFound));
    assert_eq!(r.ino("empty").await, Err(FsError::NotFound));
    r.sync().await.unwrap();
    assert_eq!(r.mem.keys(), ["ok"]);
}

#[test]
fn writes_stop_at_48_tib() {
    assert_eq!(MAX_FILE_SIZE, 48 << 40);
    assert_eq!(writable_len(0, 4096), Ok(4096));
    assert_eq!(writable_len(MAX_FILE_SIZE - 4096, 4096), Ok(4096));
    // Crossing the limit is a short write up to it; starting at it, EFBIG.
    assert_eq!(writable_len(MAX_FILE_SIZE - 10, 4096), Ok(10));
    assert_eq!(writable_len(MAX_FILE_SIZE, 1), Err(FsError::TooBig));
    assert_eq!(writable_len(u64::MAX, 1), Err(FsError::TooBig));
    assert_eq!(writable_len(MAX_FILE_SIZE, 0), Ok(0));
    assert_eq!(FsError::TooBig.errno(), libc::EFBIG);
}

#[tokio::test]
async fn write_truncate_and_fallocate_past_48_tib_are_efbig() {
    let r = rig(Arc::new(MemoryStore::new()), "");
    let (attr, fh) = r.core.create(ROOT, ROOT_INO, b"big", 0o644).await.unwrap();
    r.core.write(fh, 0, b"head").unwrap();
    assert_eq!(r.core.write(fh, MAX_FILE_SIZE, b"x"), Err(FsError::TooBig));
    assert_eq!(
        r.core.fallocate(fh, MAX_FILE_SIZE - 1, 2, 0),
        Err(FsError::TooBig)
    );
    let truncate = SetAttr {
        size: Some(MAX_FILE_SIZE + 1),
        ..SetAttr::default()
    };
    assert_eq!(
        r.core.setattr(ROOT, attr.ino, truncate).await.map(|_| ()),
        Err(FsError::TooBig)
    );
    // None of them changed the file.
    assert_eq!(r.core.getattr(attr.ino).await.unwrap().size, 4);
    r.core.release(fh);
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("big").unwrap()[..], b"head");
}

#[tokio::test]
async fn open_files_are_limited_to_65536_per_mount() {
    let mem = Arc::new(MemoryStore::new());
    mem.put("f", "data", &[]);
    let r = rig(mem, "");
    let f = r.ino("f").await.unwrap();
    let (_, first) = r.core.create(ROOT, ROOT_INO, b"w", 0o644).await.unwrap();
    let mut handles = vec![first];
    while handles.len() < MAX_OPEN_FILES {
        let open = match r.core.open_cached(ROOT, f, false, false, false) {
            Some(result) => result,
            None => r.core.open(ROOT, f, false, false).await,
        };
        handles.push(open.unwrap().0);
    }
    assert_eq!(r.core.open_files(), MAX_OPEN_FILES);
    // Every kind of open is refused now, and a create leaves no entry behind.
    let cached = r.core.open_cached(ROOT, f, false, false, false).unwrap();
    assert_eq!(cached.map(|_| ()), Err(FsError::TooManyOpenFiles));
    let read = r.core.open(ROOT, f, false, false).await;
    assert_eq!(read.map(|_| ()), Err(FsError::TooManyOpenFiles));
    let write = r.core.open(ROOT, f, true, false).await;
    assert_eq!(write.map(|_| ()), Err(FsError::TooManyOpenFiles));
    let create = r.core.create(ROOT, ROOT_INO, b"more", 0o644).await;
    assert_eq!(create.map(|_| ()), Err(FsError::TooManyOpenFiles));
    assert_eq!(r.ino("more").await, Err(FsError::NotFound));
    assert_eq!(FsError::TooManyOpenFiles.errno(), libc::ENFILE);
    assert_eq!(r.core.open_files(), MAX_OPEN_FILES);
    // A release frees a place; a failed open holds none.
    r.core.release(handles.pop().unwrap());
    let (again, _) = r.core.open(ROOT, f, true, false).await.unwrap();
    handles.push(again);
    assert_eq!(r.core.open_files(), MAX_OPEN_FILES);
    for fh in handles {
        r.core.release(fh);
    }
    assert_eq!(r.core.open_files(), 0);
    // Releasing a handle twice does not free someone else's place.
    let (fh, _) = r.core.open(ROOT, f, false, false).await.unwrap();
    r.core.release(fh);
    r.core.release(fh);
    assert_eq!(r.core.open_files(), 0);
}

/// A chain of `levels` one-letter directories `name/name/...` under the root; returns
/// the deepest one's inode.
async fn chain(r: &super::status_tests::Rig, name: &str, levels: usize) -> Ino {
    let mut ino = ROOT_INO;
    for _ in 0..levels {
        ino = r
            .core
            .mkdir(ROOT, ino, name.as_bytes(), 0o755)
            .await
            .unwrap()
            .ino;
    }
    ino
}

/// New directories cannot get that deep (a 1,024-byte key holds at most 512 levels),
/// but a rename can move a deep tree below another: past 1,000 levels it is refused
/// with ENAMETOOLONG, at 1,000 it works.
#[tokio::test]
async fn directories_nest_at_most_1000_deep() {
    let r = rig(Arc::new(MemoryStore::new()), "");
    let half = MAX_DIR_DEPTH / 2;
    let a_bottom = chain(&r, "a", half).await;
    chain(&r, "b", half + 1).await;
    // b's 501 levels below a's 500 would reach 1,001.
    assert_eq!(
        r.core.rename(ROOT, ROOT_INO, b"b", a_bottom, b"b", 0).await,
        Err(FsError::NameTooLong)
    );
    let mut path = vec!["b"; half];
    let parent = r.ino(&path.join("/")).await.unwrap();
    r.core.rmdir(ROOT, parent, b"b").await.unwrap();
    // Now 500 + 500 = 1,000: allowed (the keys below grow past 1,024 bytes, which
    // only makes their exports fail with PathTooLong).
    r.core
        .rename(ROOT, ROOT_INO, b"b", a_bottom, b"b", 0)
        .await
        .unwrap();
    path = vec!["a"; half];
    path.extend(vec!["b"; half]);
    let bottom = r.ino(&path.join("/")).await.unwrap();
    assert_eq!(r.core.depth_of(&r.core.node(bottom).unwrap()), Ok(1000));
}
