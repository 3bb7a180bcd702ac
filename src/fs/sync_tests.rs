//! In-process regression tests of the write/sync core against the in-memory store: each
//! sequence here failed before the sync life became one type (issue "Trust").

use std::sync::Arc;
use std::time::Duration;

use super::access::Identity;
use super::inode::ROOT_INO;
use super::write::{SetAttr, WriteOptions, Writer};
use super::*;
use crate::store::memory::MemoryStore;

pub(super) const ROOT: Identity = Identity::new(0, 0);

pub(super) struct Rig {
    pub(super) core: Arc<FsCore>,
    pub(super) mem: Arc<MemoryStore>,
    store: Arc<dyn ObjectStore>,
    _dir: tempfile::TempDir,
}

pub(super) fn rig(mem: Arc<MemoryStore>) -> Rig {
    rig_with(mem, |_| {})
}

/// A rig whose core options `adjust` changes first (an access point, a root directory).
pub(super) fn rig_with(mem: Arc<MemoryStore>, adjust: impl FnOnce(&mut CoreOptions)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = mem.clone();
    let core = writing_core(store.clone(), dir.path(), adjust);
    Rig {
        core,
        mem,
        store,
        _dir: dir,
    }
}

/// A core with a write path over `store`, its local state in `dir`, exporting only when a
/// test syncs (deterministic without a clock); `adjust` changes its options first.
pub(super) fn writing_core(
    store: Arc<dyn ObjectStore>,
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut CoreOptions),
) -> Arc<FsCore> {
    let writer = Writer::open(&WriteOptions {
        cache_dir: dir.to_path_buf(),
        write_back_delay: Duration::from_secs(3600),
        mount_id: "m".into(),
    })
    .unwrap();
    let core = Arc::new(super::tests::core_in(store, dir, adjust).with_writer(writer));
    tokio::spawn(core.clone().run_exports());
    core
}

/// The inode of `path` below the root, looked up as root.
pub(super) async fn ino_of(core: &FsCore, path: &str) -> FsResult<Ino> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = core.lookup(ROOT, ino, part.as_bytes()).await?.ino;
    }
    Ok(ino)
}

impl Rig {
    pub(super) async fn ino(&self, path: &str) -> FsResult<Ino> {
        ino_of(&self.core, path).await
    }

    pub(super) async fn write_file(&self, dir: Ino, name: &str, data: &[u8]) -> u64 {
        let (_, fh) = self
            .core
            .create(ROOT, dir, name.as_bytes(), 0o644)
            .await
            .unwrap();
        self.core.write(fh, 0, data).unwrap();
        fh
    }

    pub(super) async fn sync(&self) -> FsResult<()> {
        tokio::time::timeout(Duration::from_secs(10), self.core.sync_tree(ROOT_INO))
            .await
            .expect("sync hung")
    }

    pub(super) async fn poll(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.core.poll_once(&self.store))
            .await
            .expect("poll hung");
    }

    pub(super) async fn read_all(&self, path: &str) -> FsResult<Vec<u8>> {
        let ino = self.ino(path).await?;
        let (fh, _) = self.core.open(ROOT, ino, false, false).await?;
        let data = self.core.read(fh, 0, 1 << 20).await;
        self.core.release(fh);
        Ok(data?.to_vec())
    }

    pub(super) fn lost_found_names(&self) -> Vec<String> {
        let root = self.core.inodes.get(ROOT_INO).unwrap();
        let lost = self.core.inodes.child(
            &root,
            &format!("{}m", crate::export::lost_found::DIR_PREFIX),
        );
        lost.map(|d| {
            d.state()
                .children
                .iter()
                .flatten()
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default()
    }
}

/// git's atomic save: `index.lock` is created and exported while still open and empty,
/// then written, closed and renamed over `index` (which exists in S3). Polls land in
/// between. No conflict may be raised: nobody else wrote.
#[tokio::test]
async fn atomic_save_over_an_exported_file_is_not_a_conflict() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let fh = r.write_file(ROOT_INO, "index", b"v1").await;
    r.core.release(fh);
    r.sync().await.unwrap();
    for round in 0..3u8 {
        let (_, lock) = r
            .core
            .create(ROOT, ROOT_INO, b"index.lock", 0o644)
            .await
            .unwrap();
        // Exported empty while git still holds it open.
        r.sync().await.unwrap();
        r.poll().await;
        r.core.write(lock, 0, &[b'a' + round; 100]).unwrap();
        r.core.release(lock);
        r.poll().await;
        r.core
            .rename(ROOT, ROOT_INO, b"index.lock", ROOT_INO, b"index", 0)
            .await
            .unwrap();
        r.poll().await;
        r.sync().await.unwrap();
        r.poll().await;
        assert_eq!(r.mem.body("index").unwrap()[..], [b'a' + round; 100]);
        assert!(r.mem.body("index.lock").is_none());
        assert_eq!(r.read_all("index").await.unwrap(), vec![b'a' + round; 100]);
    }
    assert!(
        r.lost_found_names().is_empty(),
        "{:?}",
        r.lost_found_names()
    );
    assert_eq!(r.core.metrics().conflicts.load(Ordering::Relaxed), 0);
}

/// An exported (clean) file renamed over another keeps no base of its old key: a later
/// rename over it (dropping its pending copy) and an upload are judged against what is
/// at the new key.
#[tokio::test]
async fn renames_of_clean_files_judge_conflicts_at_the_new_key() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    for (name, data) in [("index", &b"v0"[..]), ("a.lock", b"v1"), ("b.lock", b"v2")] {
        let fh = r.write_file(ROOT_INO, name, data).await;
        r.core.release(fh);
    }
    r.sync().await.unwrap();
    // Clean a.lock over index: a server-side copy, pending.
    r.core
        .rename(ROOT, ROOT_INO, b"a.lock", ROOT_INO, b"index", 0)
        .await
        .unwrap();
    r.poll().await;
    // b.lock over index before that copy ran: the copy is dropped.
    r.core
        .rename(ROOT, ROOT_INO, b"b.lock", ROOT_INO, b"index", 0)
        .await
        .unwrap();
    r.poll().await;
    // A write to the renamed file: an upload based on what is at `index`.
    let ino = r.ino("index").await.unwrap();
    let (fh, _) = r.core.open(ROOT, ino, true, false).await.unwrap();
    r.core.write(fh, 2, b"+").unwrap();
    r.core.release(fh);
    r.poll().await;
    r.sync().await.unwrap();
    r.poll().await;
    assert_eq!(&r.mem.body("index").unwrap()[..], b"v2+");
    assert!(r.mem.body("a.lock").is_none() && r.mem.body("b.lock").is_none());
    assert!(r.lost_found_names().is_empty());
    assert_eq!(r.core.metrics().conflicts.load(Ordering::Relaxed), 0);
}

/// A real conflict: the bucket wins, the local copy is in lost+found, and polls after
/// lost+found was looked up still answer (they used to deadlock on its lock).
#[tokio::test]
async fn conflict_then_polls_keep_answering() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let fh = r.write_file(ROOT_INO, "f.txt", b"base").await;
    r.core.release(fh);
    r.sync().await.unwrap();
    let ino = r.ino("f.txt").await.unwrap();
    let (fh, _) = r.core.open(ROOT, ino, true, true).await.unwrap();
    r.core.write(fh, 0, b"mine").unwrap();
    r.mem.put("f.txt", "theirs", &[]);
    r.poll().await; // poll-time conflict
    assert_eq!(r.read_all("f.txt").await.unwrap(), b"theirs");
    // The handle's bytes went to lost+found: it fails rather than serving another version.
    assert_eq!(r.core.read(fh, 0, 10).await, Err(FsError::Io));
    assert_eq!(r.core.write(fh, 0, b"x"), Err(FsError::Io));
    r.core.release(fh);
    let lost = r.lost_found_names();
    assert_eq!(lost.len(), 1, "{lost:?}");
    let lf = format!("{}m", crate::export::lost_found::DIR_PREFIX);
    assert_eq!(
        r.read_all(&format!("{lf}/{}", lost[0])).await.unwrap(),
        b"mine"
    );
    for _ in 0..3 {
        r.poll().await;
        r.core.getattr(ROOT_INO).await.unwrap();
        r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    }
    assert_eq!(&r.mem.body("f.txt").unwrap()[..], b"theirs");
    // The lost copy is never exported.
    r.sync().await.unwrap();
    assert!(r.mem.body(&format!("{lf}/{}", lost[0])).is_none());
}

/// A conflict whose bucket version cannot be read (a 5xx) decides nothing: the entry is
/// not unlinked as if deleted in S3, and the conflict resolves once S3 answers.
#[tokio::test]
async fn a_failing_head_during_a_conflict_is_not_a_delete() {
    let mem = Arc::new(MemoryStore::new());
    let r = rig(mem.clone());
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let fh = r.write_file(ROOT_INO, "g", b"base").await;
    r.core.release(fh);
    r.sync().await.unwrap();
    let ino = r.ino("g").await.unwrap();
    let (fh, _) = r.core.open(ROOT, ino, true, false).await.unwrap();
    r.core.write(fh, 0, b"MINE").unwrap();
    r.core.release(fh);
    mem.put("g", "theirs", &[]);
    mem.fail_heads(true);
    r.poll().await;
    assert_eq!(
        r.read_all("g").await.unwrap(),
        b"MINE",
        "kept while S3 cannot say"
    );
    assert!(r.lost_found_names().is_empty());
    mem.fail_heads(false);
    r.poll().await;
    assert_eq!(r.read_all("g").await.unwrap(), b"theirs");
    assert_eq!(r.lost_found_names().len(), 1);
}

/// An open with O_TRUNC that finds the file staged by another open still truncates.
#[tokio::test]
async fn truncating_open_of_a_staged_file_truncates() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let first = r.write_file(ROOT_INO, "t", b"0123456789").await;
    let ino = r.ino("t").await.unwrap();
    let (second, _) = r.core.open(ROOT, ino, true, true).await.unwrap();
    assert_eq!(r.core.getattr(ino).await.unwrap().size, 0);
    r.core.write(second, 0, b"ab").unwrap();
    r.core.release(first);
    r.core.release(second);
    r.sync().await.unwrap();
    assert_eq!(&r.mem.body("t").unwrap()[..], b"ab");
}

/// Local faults are held and reported, not retried forever: a record whose staged bytes
/// vanished makes `sync` fail at once.
#[tokio::test]
async fn missing_staged_bytes_fail_sync_instead_of_retrying_forever() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let fh = r.write_file(ROOT_INO, "gone", b"data").await;
    r.core.release(fh);
    let queue = r.core.export_queue().unwrap().clone();
    let id = queue.ids_under("gone", true)[0];
    std::fs::remove_file(queue.staging().path(id)).unwrap();
    assert_eq!(r.sync().await, Err(FsError::Io));
    let (state, _) = r
        .core
        .sync_state(&r.core.inodes.get(r.ino("gone").await.unwrap()).unwrap());
    assert_eq!(state, "export failed");
}

/// A file created where this mount's own delete of the old object is still pending (the
/// next `index.lock`, the next `X.tmp` of a save loop) is judged after that delete: the
/// old object still in the listing is no conflict.
#[tokio::test]
async fn a_new_file_over_a_pending_delete_is_not_a_conflict() {
    let r = rig(Arc::new(MemoryStore::new()));
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    for round in 0..3u8 {
        let fh = r.write_file(ROOT_INO, "f.tmp", &[b'0' + round; 10]).await;
        r.core.release(fh);
        r.sync().await.unwrap();
        let ino = r.ino("f.tmp").await.unwrap();
        let (fh, _) = r.core.open(ROOT, ino, true, false).await.unwrap();
        r.core.write(fh, 10, b"+more").unwrap();
        r.core.release(fh);
        r.core
            .rename(ROOT, ROOT_INO, b"f.tmp", ROOT_INO, b"f", 0)
            .await
            .unwrap();
        // The next save starts before the delete of the old f.tmp is exported.
        let fh = r.write_file(ROOT_INO, "f.tmp", b"next").await;
        r.core.release(fh);
        r.poll().await;
        assert!(r.lost_found_names().is_empty(), "round {round}");
        r.core.unlink(ROOT, ROOT_INO, b"f.tmp").await.unwrap();
    }
    r.sync().await.unwrap();
    r.poll().await;
    assert_eq!(r.core.metrics().conflicts.load(Ordering::Relaxed), 0);
    assert_eq!(&r.mem.body("f").unwrap()[..], b"2222222222+more");
    assert!(r.mem.body("f.tmp").is_none());
}

/// A rename whose source another writer overwrote before the copy ran (bytes not
/// cached): the sync answers (EIO: the bucket won), nothing hangs, the other writer's
/// object stays.
#[tokio::test]
async fn a_rename_whose_source_was_overwritten_does_not_hang_sync() {
    let mem = Arc::new(MemoryStore::new());
    mem.put("a", "hello", &[]);
    let r = rig(mem.clone());
    r.core.opendir(ROOT, ROOT_INO).await.unwrap();
    let d = r.core.mkdir(ROOT, ROOT_INO, b"d", 0o755).await.unwrap();
    r.ino("a").await.unwrap();
    r.core
        .rename(ROOT, ROOT_INO, b"a", d.ino, b"a", 0)
        .await
        .unwrap();
    mem.put("a", "defg", &[]);
    assert_eq!(r.sync().await, Err(FsError::Io));
    assert_eq!(&mem.body("a").unwrap()[..], b"defg");
    r.poll().await;
    r.core.getattr(ROOT_INO).await.unwrap();
}

/// chmod, chown and utimes of the mount root (what `tar -x` of an archive holding "./"
/// does): mounting a whole bucket, they hold on the mount and nothing is exported (the
/// bucket root has no key; an export of "" failed forever); below a prefix, they go to
/// the prefix's marker and a new mount reads them back.
#[tokio::test]
async fn the_mount_roots_own_attributes() {
    let change = SetAttr {
        mode: Some(0o750),
        uid: Some(7),
        gid: Some(8),
        mtime: Some(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000)),
        ..SetAttr::default()
    };
    let shown = |a: &Attr| (a.perm, a.uid, a.gid, a.mtime);
    let want = (
        0o750,
        7,
        8,
        std::time::UNIX_EPOCH + Duration::from_secs(1_000_000),
    );

    let mem = Arc::new(MemoryStore::new());
    let r = rig(mem.clone());
    let attr = r
        .core
        .setattr(ROOT, ROOT_INO, change.clone())
        .await
        .unwrap();
    assert_eq!(shown(&attr), want);
    assert_eq!(shown(&r.core.getattr(ROOT_INO).await.unwrap()), want);
    r.sync().await.unwrap();
    assert_eq!(r.core.flush_all(Duration::from_secs(5)).await, 0);
    assert!(mem.keys().is_empty(), "{:?}", mem.keys());

    let mem = Arc::new(MemoryStore::new());
    let r = rig_with(mem.clone(), |o| o.root_prefix = "p/".into());
    r.core.setattr(ROOT, ROOT_INO, change).await.unwrap();
    r.sync().await.unwrap();
    assert_eq!(mem.keys(), ["p/"]);
    let again = rig_with(mem.clone(), |o| o.root_prefix = "p/".into());
    assert_eq!(shown(&again.core.getattr(ROOT_INO).await.unwrap()), want);
}

/// The kernel keeps a directory's listing while the directory's mtime stays the one it
/// read the listing with: every change to the entries moves the mtime forward (here a
/// poll's, a local create's, a local unlink's), a time set with utimens wins until the
/// next change, and a poll that finds nothing new moves nothing.
#[tokio::test]
async fn a_directorys_mtime_moves_with_its_entries() {
    let mem = Arc::new(MemoryStore::new());
    mem.put("d/a", "1", &[]);
    let r = rig(mem);
    let dir = r.ino("d").await.unwrap();
    let mtime = || async { r.core.getattr(dir).await.unwrap().mtime };
    r.ino("d/a").await.unwrap();
    let listed = mtime().await;
    r.poll().await;
    assert_eq!(mtime().await, listed, "nothing changed, nothing moves");

    r.mem.put("d/b", "1", &[]);
    r.poll().await;
    let added = mtime().await;
    assert!(added > listed, "{added:?} after {listed:?}");

    let set = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let change = SetAttr {
        mtime: Some(set),
        ..Default::default()
    };
    assert_eq!(r.core.setattr(ROOT, dir, change).await.unwrap().mtime, set);
    assert_eq!(mtime().await, set);

    let fh = r.write_file(dir, "c", b"c").await;
    r.core.release(fh);
    let created = mtime().await;
    assert!(created > added, "{created:?} after {added:?}");

    r.core.unlink(ROOT, dir, b"c").await.unwrap();
    let unlinked = mtime().await;
    assert!(unlinked > created, "{unlinked:?} after {created:?}");
}
