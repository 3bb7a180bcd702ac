//! Big directories: readdir costs the listing (no request per entry), types it cannot
//! know are reported unknown (never wrong), a stat still tells a symlink or FIFO, and the
//! first stat that misses fetches its siblings' metadata in the background.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::store::memory::MemoryStore;

const ROOT: Identity = Identity::new(0, 0);

fn core_with(store: Arc<MemoryStore>, import_size_threshold: u64) -> FsCore {
    super::tests::read_core(store, |o| o.import_size_threshold = import_size_threshold)
}

/// A flat directory `big/` of `n` ten-byte files, a symlink, a FIFO and one large file.
fn big_dir(n: usize) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    for i in 0..n {
        store.put(&format!("big/f{i:05}"), "0123456789", &[]);
    }
    store.put("big/link", "f00000", &[("file-permissions", "0120777")]);
    store.put("big/pipe", "", &[("file-permissions", "0010644")]);
    store.put("big/large", "x".repeat(10_000), &[]);
    store
}

async fn listing(core: &FsCore, dir: Ino) -> Vec<(String, Option<EntryKind>)> {
    super::tests::names(core, dir).await
}

fn kind_in(listed: &[(String, Option<EntryKind>)], name: &str) -> Option<EntryKind> {
    listed.iter().find(|(n, _)| n == name).unwrap().1
}

#[tokio::test]
async fn readdir_of_many_small_objects_makes_no_request_per_object() {
    let store = big_dir(500);
    let core = core_with(store.clone(), 0);
    let dir = core.lookup(ROOT, ROOT_INO, b"big").await.unwrap();
    let heads_before = store.requests.head.load(Ordering::Relaxed);
    let listed = listing(&core, dir.ino).await;
    assert_eq!(listed.len(), 503);
    assert_eq!(
        store.requests.head.load(Ordering::Relaxed),
        heads_before,
        "no HEAD at readdir"
    );
    assert_eq!(store.requests.get.load(Ordering::Relaxed), 0, "no GET");
    // Small objects: unknown, never a guess; a large one is a file by its size alone.
    assert_eq!(kind_in(&listed, "f00007"), None);
    assert_eq!(kind_in(&listed, "link"), None);
    assert_eq!(kind_in(&listed, "pipe"), None);
    assert_eq!(kind_in(&listed, "large"), Some(EntryKind::File));

    // A stat tells the truth.
    let link = core.lookup(ROOT, dir.ino, b"link").await.unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    let pipe = core.lookup(ROOT, dir.ino, b"pipe").await.unwrap();
    assert_eq!((pipe.kind, pipe.size), (EntryKind::Fifo, 0));
    let listed = listing(&core, dir.ino).await;
    assert_eq!(kind_in(&listed, "link"), Some(EntryKind::Symlink));
    assert_eq!(kind_in(&listed, "pipe"), Some(EntryKind::Fifo));
}

#[tokio::test]
async fn the_first_stat_that_misses_fetches_the_siblings_metadata() {
    let store = big_dir(300);
    let core = core_with(store.clone(), 0);
    let dir = core.lookup(ROOT, ROOT_INO, b"big").await.unwrap();
    listing(&core, dir.ino).await;
    let base = store.requests.head.load(Ordering::Relaxed);
    core.lookup(ROOT, dir.ino, b"f00000").await.unwrap();
    // Every sibling (300 files, the link, the FIFO, the large file) once, in the
    // background; the stat's own entry is not fetched twice.
    let all = base + 303;
    tokio::time::timeout(Duration::from_secs(20), async {
        while store.requests.head.load(Ordering::Relaxed) < all
            || core.dir_work.contains_key(&dir.ino)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("prefetch finished");
    assert_eq!(store.requests.head.load(Ordering::Relaxed), all);
    // The rest of an `ls -l` needs no request, and the types are exact.
    let link = core.lookup(ROOT, dir.ino, b"link").await.unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    for i in 0..300 {
        let a = core
            .lookup(ROOT, dir.ino, format!("f{i:05}").as_bytes())
            .await
            .unwrap();
        assert_eq!((a.kind, a.size), (EntryKind::File, 10));
    }
    assert_eq!(store.requests.head.load(Ordering::Relaxed), all);
    let listed = listing(&core, dir.ino).await;
    assert_eq!(kind_in(&listed, "pipe"), Some(EntryKind::Fifo));
    assert!(listed.iter().all(|(_, kind)| kind.is_some()));
}

#[tokio::test]
async fn with_eager_import_readdir_waits_for_no_import_and_stats_stay_exact() {
    let store = big_dir(200);
    let core = core_with(store.clone(), 128 << 10);
    let dir = core.lookup(ROOT, ROOT_INO, b"big").await.unwrap();
    let listed = listing(&core, dir.ino).await;
    assert_eq!(listed.len(), 203);
    assert_eq!(kind_in(&listed, "link"), None);
    // A stat does not wait for the import queue, and its answer is exact either way.
    let link = core.lookup(ROOT, dir.ino, b"link").await.unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    // The imports bring the metadata (no HEAD prefetch duplicates them), and once they
    // are done the directory has no background work left for the poller to wait on.
    tokio::time::timeout(Duration::from_secs(20), async {
        while core.dir_work.contains_key(&dir.ino) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("imports finished");
    // (MemoryStore's whole-object GET is a HEAD and a ranged GET; S3's is one GET.)
    let heads = store.requests.head.load(Ordering::Relaxed);
    let gets = store.requests.get.load(Ordering::Relaxed);
    assert!(heads <= gets + 3, "{heads} HEADs for {gets} GETs");
    let listed = listing(&core, dir.ino).await;
    assert_eq!(kind_in(&listed, "f00123"), Some(EntryKind::File));
    // The FIFO has no body to import: the stat's prefetch of its siblings learnt it.
    assert_eq!(kind_in(&listed, "pipe"), Some(EntryKind::Fifo));
    assert!(listed.iter().all(|(_, kind)| kind.is_some()));
}
