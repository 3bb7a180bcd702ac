//! Unit tests of the core against the in-memory store. The same behaviours are proven
//! through a real mount and a real S3 server in tests/.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::store::memory::MemoryStore;

const ROOT: Identity = Identity::new(0, 0);

fn core_with(store: Arc<MemoryStore>, prefix: &str, access_point: Option<Identity>) -> FsCore {
    read_core(store, |o| {
        o.root_prefix = prefix.into();
        o.access_point = access_point;
    })
}

/// A core without a write path over `store`; `adjust` changes its options first.
pub(super) fn read_core(store: Arc<MemoryStore>, adjust: impl FnOnce(&mut CoreOptions)) -> FsCore {
    core_in(store, &tempfile::tempdir().unwrap().keep(), adjust)
}

/// A core over `store` with its data cache in `dir`, the options every in-process test
/// starts from changed by `adjust`; no write path (`sync_tests::writing_core` adds one).
pub(super) fn core_in(
    store: Arc<dyn ObjectStore>,
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut CoreOptions),
) -> FsCore {
    let metrics = Arc::new(Metrics::default());
    let mut options = CoreOptions {
        bucket: "b".into(),
        root_prefix: String::new(),
        access_point: None,
        secondary_gids: Vec::new(),
        root_squash: false,
        fs_prefix: None,
        import_size_threshold: 0,
        stream_budget: crate::read::stream::DEFAULT_BUDGET,
    };
    adjust(&mut options);
    let cache = crate::cache::DataCache::open(
        &crate::cache::CacheOptions {
            dir: dir.join("data"),
            disk_bytes: 1 << 30,
            memory_bytes: 64 << 20,
            expiry: Duration::from_secs(3600),
        },
        metrics.clone(),
    )
    .unwrap()
    .0;
    FsCore::new(store, options, metrics, Arc::new(cache))
}

pub(super) async fn names(core: &FsCore, ino: Ino) -> Vec<(String, Option<EntryKind>)> {
    let fh = core.opendir(ROOT, ino).await.unwrap();
    let entries = core.readdir(fh, 0).unwrap();
    core.releasedir(fh);
    entries
        .iter()
        .skip(2)
        .map(|(e, _)| (e.name.clone(), e.kind))
        .collect()
}

async fn resolve(core: &FsCore, path: &str) -> FsResult<Attr> {
    let mut attr = core.getattr(ROOT_INO).await?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        attr = core.lookup(ROOT, attr.ino, part.as_bytes()).await?;
    }
    Ok(attr)
}

#[tokio::test]
async fn metadata_and_defaults() {
    let store = Arc::new(MemoryStore::new());
    store.put(
        "meta.txt",
        "hello",
        &[
            ("file-owner", "1000"),
            ("file-group", "100"),
            ("file-permissions", "0100600"),
            ("file-mtime", "1700000000000000001ns"),
        ],
    );
    store.put("plain.txt", "x", &[]);
    store.put(
        "dir/",
        "",
        &[("file-permissions", "0040700"), ("file-owner", "7")],
    );
    store.put("implicit/child", "c", &[]);
    let core = core_with(store, "", None);

    let a = resolve(&core, "meta.txt").await.unwrap();
    assert_eq!(
        (a.uid, a.gid, a.perm, a.size, a.kind),
        (1000, 100, 0o600, 5, EntryKind::File)
    );
    assert_eq!(a.mtime, UNIX_EPOCH + Duration::new(1_700_000_000, 1));

    let p = resolve(&core, "plain.txt").await.unwrap();
    assert_eq!((p.uid, p.gid, p.perm), (0, 0, 0o644));
    assert!(
        p.mtime > UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        "Last-Modified"
    );

    let d = resolve(&core, "dir").await.unwrap();
    assert_eq!((d.kind, d.perm, d.uid), (EntryKind::Dir, 0o700, 7));
    let i = resolve(&core, "implicit").await.unwrap();
    assert_eq!((i.kind, i.perm, i.uid), (EntryKind::Dir, 0o755, 0));
    assert_eq!(resolve(&core, "nope").await, Err(FsError::NotFound));
    assert_eq!(resolve(&core, "plain.txt/x").await, Err(FsError::NotDir));
}

#[tokio::test]
async fn hostile_keys_are_skipped_and_counted_once() {
    let store = Arc::new(MemoryStore::new());
    for key in ["ok", "a//b", "./x", "../y", "d/./e", &"n".repeat(256)] {
        store.put(key, "x", &[]);
    }
    store.put("d/fine", "x", &[]);
    let core = core_with(store, "", None);
    assert_eq!(
        names(&core, ROOT_INO).await,
        [
            ("a".to_string(), Some(EntryKind::Dir)),
            ("d".into(), Some(EntryKind::Dir)),
            ("ok".into(), None)
        ]
    );
    let d = resolve(&core, "d").await.unwrap();
    assert_eq!(names(&core, d.ino).await, [("fine".to_string(), None)]);
    let a = resolve(&core, "a").await.unwrap();
    assert!(names(&core, a.ino).await.is_empty());
    // ".", "..", the long name, "a//" and "d/./": five skipped prefixes or keys.
    assert_eq!(core.metrics().keys_skipped.load(Ordering::Relaxed), 5);
    names(&core, ROOT_INO).await;
    assert_eq!(core.metrics().keys_skipped.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn directory_wins_and_symlinks_are_typed() {
    let store = Arc::new(MemoryStore::new());
    store.put("file", "hidden", &[]);
    store.put("file/child", "c", &[]);
    store.put("link", "target/path", &[("file-permissions", "0120777")]);
    let core = core_with(store, "", None);
    // A small object may be a symlink: unknown to readdir until its metadata is read.
    assert_eq!(
        names(&core, ROOT_INO).await,
        [
            ("file".to_string(), Some(EntryKind::Dir)),
            ("link".into(), None)
        ]
    );
    assert_eq!(core.metrics().keys_hidden.load(Ordering::Relaxed), 1);
    let link = resolve(&core, "link").await.unwrap();
    assert_eq!((link.kind, link.perm), (EntryKind::Symlink, 0o777));
    assert_eq!(
        names(&core, ROOT_INO).await,
        [
            ("file".to_string(), Some(EntryKind::Dir)),
            ("link".into(), Some(EntryKind::Symlink))
        ]
    );
    assert_eq!(&core.readlink(link.ino).await.unwrap()[..], b"target/path");
    let file = resolve(&core, "file/child").await.unwrap();
    assert_eq!(core.readlink(file.ino).await, Err(FsError::Invalid));
}

#[tokio::test]
async fn prefix_mount_and_paged_listing() {
    let mut store = MemoryStore::new();
    store.default_page_size = 7;
    let store = Arc::new(store);
    for i in 0..50 {
        store.put(&format!("root/p/f{i:03}"), "x", &[]);
    }
    store.put("root/outside", "x", &[]);
    store.put("other/f", "x", &[]);
    let core = core_with(store.clone(), "root/p/", None);
    let listed = names(&core, ROOT_INO).await;
    assert_eq!(listed.len(), 50);
    assert_eq!(listed[0].0, "f000");
    assert!(store.requests.list.load(Ordering::Relaxed) >= 8, "paged");
    // No name reaches outside the prefix.
    assert_eq!(resolve(&core, "..").await, Err(FsError::NotFound));
    assert_eq!(resolve(&core, "outside").await, Err(FsError::NotFound));
}

#[tokio::test]
async fn listing_happens_once_per_directory() {
    let store = Arc::new(MemoryStore::new());
    store.put("d/a", "1", &[]);
    store.put("d/b", "2", &[]);
    let core = core_with(store.clone(), "", None);
    resolve(&core, "d/a").await.unwrap();
    resolve(&core, "d/b").await.unwrap();
    names(&core, resolve(&core, "d").await.unwrap().ino).await;
    assert_eq!(store.requests.list.load(Ordering::Relaxed), 2, "root and d");
}

#[tokio::test]
async fn reads_and_write_refusal() {
    let store = Arc::new(MemoryStore::new());
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    store.put("f", body.clone(), &[]);
    let core = core_with(store, "", None);
    let f = resolve(&core, "f").await.unwrap();
    assert_eq!(
        core.open(ROOT, f.ino, true, false).await,
        Err(FsError::ReadOnly)
    );
    assert_eq!(
        core.open(ROOT, f.ino, false, true).await,
        Err(FsError::ReadOnly)
    );
    assert_eq!(
        core.open(ROOT, ROOT_INO, false, false).await,
        Err(FsError::IsDir)
    );
    let (fh, _) = core.open(ROOT, f.ino, false, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = core.read(fh, out.len() as u64, 65536).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    assert_eq!(out, body);
    core.release(fh);
    assert_eq!(core.read(fh, 0, 1).await, Err(FsError::BadHandle));
    assert_eq!(
        core.access(ROOT, f.ino, access::WRITE).await,
        Err(FsError::ReadOnly)
    );
}

#[tokio::test]
async fn access_point_checks_permissions() {
    let store = Arc::new(MemoryStore::new());
    store.put("secret", "s", &[("file-permissions", "0100600")]);
    store.put(
        "mine",
        "m",
        &[("file-permissions", "0100600"), ("file-owner", "1000")],
    );
    store.put("locked/", "", &[("file-permissions", "0040700")]);
    store.put("locked/inner", "i", &[]);
    let me = Identity::new(1000, 1000);
    let core = core_with(store, "", Some(me));
    let secret = core.lookup(me, ROOT_INO, b"secret").await.unwrap();
    assert_eq!(
        core.open(me, secret.ino, false, false).await,
        Err(FsError::Access)
    );
    let mine = core.lookup(me, ROOT_INO, b"mine").await.unwrap();
    assert!(core.open(me, mine.ino, false, false).await.is_ok());
    let locked = core.lookup(me, ROOT_INO, b"locked").await.unwrap();
    assert_eq!(
        core.lookup(me, locked.ino, b"inner").await,
        Err(FsError::Access)
    );
    assert_eq!(core.opendir(me, locked.ino).await, Err(FsError::Access));
}

/// A directory already listed opens without waiting, with what `opendir` would give;
/// one not yet listed, a file, and any directory where the daemon checks permissions
/// take the waiting path.
#[tokio::test]
async fn listed_directories_open_without_waiting() {
    let store = Arc::new(MemoryStore::new());
    store.put("d/a", "a", &[]);
    store.put("d/e/f", "f", &[]);
    let core = core_with(store.clone(), "", None);
    let d = core.lookup(ROOT, ROOT_INO, b"d").await.unwrap();
    assert_eq!(core.opendir_cached(d.ino), None, "not listed yet");
    let listed = names(&core, d.ino).await;
    let fh = core.opendir_cached(d.ino).expect("listed");
    let entries = core.readdir(fh, 0).unwrap();
    core.releasedir(fh);
    let cached: Vec<_> = entries
        .iter()
        .skip(2)
        .map(|(e, _)| (e.name.clone(), e.kind))
        .collect();
    assert_eq!(cached, listed);
    let a = core.lookup(ROOT, d.ino, b"a").await.unwrap();
    assert_eq!(core.opendir_cached(a.ino), None, "a file");

    let checked = core_with(store, "", Some(Identity::new(1000, 1000)));
    names(&checked, ROOT_INO).await;
    assert_eq!(checked.opendir_cached(ROOT_INO), None, "the daemon checks");
}

#[tokio::test]
async fn status_xattr() {
    let store = Arc::new(MemoryStore::new());
    store.put("pre/d/f.txt", "x", &[]);
    let core = core_with(store, "pre/", None);
    let f = resolve(&core, "d/f.txt").await.unwrap();
    let status =
        String::from_utf8(core.getxattr(f.ino, STATUS_XATTR.as_bytes()).await.unwrap()).unwrap();
    assert!(status.contains("key: s3://b/pre/d/f.txt\n"), "{status}");
    assert!(status.contains("path: /d/f.txt\n"), "{status}");
    assert!(status.contains("state: synced\n"), "{status}");
    assert_eq!(
        core.getxattr(f.ino, b"user.other").await,
        Err(FsError::NotSupported)
    );
    assert_eq!(
        core.getxattr(f.ino, b"security.selinux").await,
        Err(FsError::NoAttr)
    );
    assert_eq!(core.listxattr(f.ino).unwrap(), b"user.s3files.status\0");
}

#[tokio::test]
async fn page_cache_is_kept_only_for_the_same_version() {
    let store = Arc::new(MemoryStore::new());
    store.put("f", "v1", &[]);
    let core = core_with(store.clone(), "", None);
    let f = resolve(&core, "f").await.unwrap();
    let (fh, keep) = core.open(ROOT, f.ino, false, false).await.unwrap();
    assert!(!keep, "first open: nothing cached yet");
    core.release(fh);
    let (fh, keep) = core.open(ROOT, f.ino, false, false).await.unwrap();
    assert!(keep, "same version: keep the kernel's pages");
    core.release(fh);
    // A new version (seen by a fresh HEAD) drops them.
    store.put("f", "v2", &[]);
    let (fh, _) = core.open(ROOT, f.ino, false, false).await.unwrap();
    assert!(
        core.read(fh, 0, 10).await.is_err(),
        "the old handle's version is gone"
    );
    let f = core.getattr(f.ino).await.unwrap();
    let (_, keep) = core.open(ROOT, f.ino, false, false).await.unwrap();
    assert!(!keep, "changed version: the kernel must drop its pages");
}

#[tokio::test]
async fn changed_object_under_open_handle_is_eio_then_refreshed() {
    let store = Arc::new(MemoryStore::new());
    store.put("f", "old", &[]);
    let core = core_with(store.clone(), "", None);
    let f = resolve(&core, "f").await.unwrap();
    let (fh, _) = core.open(ROOT, f.ino, false, false).await.unwrap();
    store.put("f", "newer", &[]);
    let err = core.read(fh, 0, 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    // The next open sees the new version.
    assert_eq!(core.getattr(f.ino).await.unwrap().size, 5);
    let (fh, _) = core.open(ROOT, f.ino, false, false).await.unwrap();
    assert_eq!(&core.read(fh, 0, 10).await.unwrap()[..], b"newer");
}

/// Waits (at most 10 s) for a background import to show in a counter.
async fn settle(counter: &std::sync::atomic::AtomicU64, want: u64) {
    for _ in 0..1000 {
        if counter.load(Ordering::Relaxed) >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "counter stuck at {} (want {want})",
        counter.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_rules_choose_what_is_imported_and_when() {
    use crate::import_rules::{ImportRule, ImportRules, Trigger};
    let store = Arc::new(MemoryStore::new());
    let body = |len: usize| vec![b'x'; len];
    store.put("m/root.txt", body(5000), &[]);
    store.put("m/eager/small.txt", body(5000), &[]);
    store.put("m/eager/deep/small.txt", body(6000), &[]);
    store.put("m/eager/big.txt", body(20_000), &[]);
    store.put("m/lazy/small.txt", body(5000), &[]);
    store.put("m/lazy/big.txt", body(20_000), &[]);
    store.put("m/lazy/multi.bin", body(3 << 20), &[]);
    let rule = |prefix: &str, trigger, size_less_than| ImportRule {
        prefix: String::from(prefix),
        trigger,
        size_less_than,
    };
    let rules = ImportRules::new(vec![
        ImportRule::root(0),
        rule("eager/", Trigger::OnDirectoryFirstAccess, 10_000),
        rule("lazy/", Trigger::OnFileAccess, 4 << 20),
    ])
    .unwrap();
    let core = core_with(store.clone(), "m/", None).with_import_rules(rules);
    let gets = || store.requests.get.load(Ordering::Relaxed);
    let metrics = core.metrics_handle();

    // The root's rule (0) imports nothing; eager/ imports its small files, one GET each,
    // and a deeper directory under it takes its rule too.
    names(&core, ROOT_INO).await;
    names(&core, resolve(&core, "eager").await.unwrap().ino).await;
    settle(&metrics.eager_imports, 1).await;
    names(&core, resolve(&core, "eager/deep").await.unwrap().ino).await;
    settle(&metrics.eager_imports, 2).await;
    assert_eq!(gets(), 2, "eager/small.txt and eager/deep/small.txt only");
    assert_eq!(metrics.eager_import_bytes.load(Ordering::Relaxed), 11_000);

    // Listing lazy/ fetches nothing.
    names(&core, resolve(&core, "lazy").await.unwrap().ino).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gets(), 2);
    assert_eq!(metrics.eager_imports.load(Ordering::Relaxed), 2);

    // Opening a file under lazy/ imports it; the open does not wait, and reads after it
    // are served from the cache.
    let small = resolve(&core, "lazy/small.txt").await.unwrap();
    let (fh, _) = core.open(ROOT, small.ino, false, false).await.unwrap();
    settle(&metrics.open_imports, 1).await;
    assert_eq!(gets(), 3);
    assert_eq!(core.read(fh, 0, 8192).await.unwrap().len(), 5000);
    core.release(fh);
    let (fh, _) = core.open(ROOT, small.ino, false, false).await.unwrap();
    assert_eq!(core.read(fh, 0, 8192).await.unwrap().len(), 5000);
    core.release(fh);
    assert_eq!(gets(), 3, "the second open and both reads needed no GET");
    assert_eq!(metrics.open_imports.load(Ordering::Relaxed), 1);

    // A multi-block file read straight after its open: the reader and the import share
    // every block's GET, and the reader does not stream what the import fetches.
    let multi = resolve(&core, "lazy/multi.bin").await.unwrap();
    let (fh, _) = core.open(ROOT, multi.ino, false, false).await.unwrap();
    let mut offset = 0u64;
    while offset < 3 << 20 {
        offset += core.read(fh, offset, 128 << 10).await.unwrap().len() as u64;
    }
    core.release(fh);
    settle(&metrics.open_imports, 2).await;
    assert_eq!(gets(), 3 + 12, "one GET per 256 KiB block, none twice");
    assert_eq!(metrics.streams.load(Ordering::Relaxed), 0);
    assert_eq!(
        metrics.open_import_bytes.load(Ordering::Relaxed),
        5000 + (3 << 20)
    );
    let node = core.node(multi.ino).unwrap();
    assert_eq!(core.cached_bytes(&node), Some((3 << 20, 3 << 20)));
}

/// A sequential reader that opened a file while its import on open ran, and reads on
/// once the import is done, is served from the cache: no stream repeats the import's
/// GETs. (Under load a reader can fall that far behind; this makes sure it has.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_a_finished_import_reads_the_cache() {
    use crate::import_rules::{ImportRule, ImportRules, Trigger};
    let store = Arc::new(MemoryStore::new());
    store.put("lazy/multi.bin", vec![b'x'; 3 << 20], &[]);
    let rules = ImportRules::new(vec![
        ImportRule::root(0),
        ImportRule {
            prefix: "lazy/".into(),
            trigger: Trigger::OnFileAccess,
            size_less_than: 4 << 20,
        },
    ])
    .unwrap();
    let core = core_with(store.clone(), "", None).with_import_rules(rules);
    let gets = || store.requests.get.load(Ordering::Relaxed);
    let metrics = core.metrics_handle();
    let multi = resolve(&core, "lazy/multi.bin").await.unwrap();
    let (fh, _) = core.open(ROOT, multi.ino, false, false).await.unwrap();
    settle(&metrics.open_imports, 1).await;
    assert_eq!(gets(), 12, "one GET per 256 KiB block");
    let mut offset = 0u64;
    while offset < 3 << 20 {
        offset += core.read(fh, offset, 128 << 10).await.unwrap().len() as u64;
    }
    core.release(fh);
    assert_eq!(gets(), 12, "the reader fetched nothing");
    assert_eq!(metrics.streams.load(Ordering::Relaxed), 0);
}

/// A name longer than 255 bytes is ENAMETOOLONG, for a new entry and for a lookup, as a
/// local file system answers (the kernel passes FUSE names up to 1,024 bytes on).
#[tokio::test]
async fn names_over_255_bytes_are_too_long() {
    let core = core_with(Arc::new(MemoryStore::new()), "", None);
    let long = "n".repeat(256);
    assert_eq!(
        resolve(&core, &long).await.map(|a| a.ino),
        Err(FsError::NameTooLong)
    );
}

/// What the core told the kernel to forget, in order.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<String>>);

impl KernelCache for Arc<Recorded> {
    fn invalidate_entry(&self, parent: Ino, name: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("entry {parent} {name}"));
    }
    fn invalidate_inode(&self, ino: Ino) {
        self.0.lock().unwrap().push(format!("inode {ino}"));
    }
}

/// The kernel keeps names and attributes long (`DEFAULT_KERNEL_TTL`) because every change
/// a poll finds is pushed to it: new and deleted keys drop the name, a changed object its
/// name (its type may have changed) and its attributes, and the directory its attributes
/// (its mtime moved, so the kernel drops the listing it keeps).
#[tokio::test]
async fn a_poll_invalidates_every_name_and_attribute_it_changes() {
    let store = Arc::new(MemoryStore::new());
    store.put("d/same", "1", &[]);
    store.put("d/changed", "1", &[]);
    store.put("d/gone", "1", &[]);
    let core = core_with(store.clone(), "", None);
    let recorded = Arc::new(Recorded::default());
    core.set_kernel_cache(Box::new(recorded.clone()));
    let dir = resolve(&core, "d").await.unwrap().ino;
    let changed = resolve(&core, "d/changed").await.unwrap().ino;
    resolve(&core, "d/gone").await.unwrap();
    resolve(&core, "d/same").await.unwrap();
    store.put("d/changed", "22", &[]);
    crate::store::ObjectStore::delete(store.as_ref(), "d/gone")
        .await
        .unwrap();
    store.put("d/new", "1", &[]);
    let poller: Arc<dyn crate::store::ObjectStore> = store.clone();
    core.poll_once(&poller).await;
    let mut seen = recorded.0.lock().unwrap().clone();
    seen.sort();
    let mut expected = vec![
        format!("inode {dir}"),
        format!("entry {dir} new"),
        format!("entry {dir} gone"),
        format!("entry {dir} changed"),
        format!("inode {changed}"),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    // Nothing unchanged was dropped, and the new state is what the kernel asks for next.
    assert_eq!(resolve(&core, "d/changed").await.unwrap().size, 2);
    assert_eq!(
        resolve(&core, "d/gone").await.unwrap_err(),
        FsError::NotFound
    );
}

#[test]
fn names_are_kept_briefly_only_when_the_daemon_checks_permissions() {
    let store = Arc::new(MemoryStore::new());
    let core = core_with(store.clone(), "", None);
    assert_eq!(core.entry_ttl(), DEFAULT_KERNEL_TTL);
    assert_eq!(core.attr_ttl(), DEFAULT_KERNEL_TTL);
    let core = core_with(store.clone(), "", None).with_kernel_ttl(Duration::from_millis(500));
    assert_eq!(core.entry_ttl(), Duration::from_millis(500));
    let checked = core_with(store, "", Some(Identity::new(1000, 1000)));
    assert_eq!(checked.entry_ttl(), Duration::from_secs(1));
    assert_eq!(checked.attr_ttl(), DEFAULT_KERNEL_TTL);
}

/// A directory handle pages through one snapshot, so entries that did not change are
/// each read once however the directory changes meanwhile; reading from the start again
/// takes the directory as it is now. Offsets carry the snapshot's version.
#[tokio::test]
async fn readdir_rereads_a_changed_directory_only_from_the_start() {
    let store = Arc::new(MemoryStore::new());
    for name in ["a", "b", "c"] {
        store.put(&format!("d/{name}"), "1", &[]);
    }
    let core = core_with(store.clone(), "", None);
    let dir = resolve(&core, "d").await.unwrap().ino;
    let fh = core.opendir(ROOT, dir).await.unwrap();
    let page = |offset| -> Vec<(String, u64)> {
        core.readdir(fh, offset)
            .unwrap()
            .iter()
            .map(|(e, next)| (e.name.clone(), next))
            .collect()
    };
    let first = page(0);
    let listed: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(listed, [".", "..", "a", "b", "c"]);

    let other = core.opendir(ROOT, dir).await.unwrap();
    store.put("d/0", "1", &[]);
    let poller: Arc<dyn crate::store::ObjectStore> = store.clone();
    core.poll_once(&poller).await;
    // Paging on from "a" (the offset after ".."): the snapshot, so nothing is skipped.
    let rest: Vec<String> = page(first[1].1).into_iter().map(|(n, _)| n).collect();
    assert_eq!(rest, ["a", "b", "c"]);

    let again = page(0);
    let relisted: Vec<&str> = again.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(relisted, [".", "..", "0", "a", "b", "c"]);
    let (old_offsets, new_offsets): (HashSet<u64>, HashSet<u64>) = (
        first.iter().map(|(_, o)| *o).collect(),
        again.iter().map(|(_, o)| *o).collect(),
    );
    assert!(
        old_offsets.is_disjoint(&new_offsets),
        "{old_offsets:?} {new_offsets:?}"
    );
    // A handle opened before the change, asked to continue the new version's pages
    // after "0" (as the kernel does from a listing it keeps): the new version, so "a"
    // is not skipped.
    let continued: Vec<String> = core
        .readdir(other, again[2].1)
        .unwrap()
        .iter()
        .map(|(e, _)| e.name.clone())
        .collect();
    assert_eq!(continued, ["a", "b", "c"]);
    core.releasedir(other);
    core.releasedir(fh);
}
