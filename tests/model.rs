//! Reference-model test: random sequences of file operations applied to a real mount and
//! to a plain local directory must leave the same tree (names, kinds, bytes, modes) and
//! the same results; after `s3files sync` the bucket must hold exactly the expected keys
//! and bytes; after unmount and remount the mount must show the same tree again.
//! Cases: S3FILES_MODEL_CASES (default 32). Failing seeds are kept in
//! tests/model.proptest-regressions and run first forever after.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Mount, S3Server};
use proptest::prelude::*;

const FILES: &[&str] = &["a", "b", "d/a", "d/b", "e/a", "d/f/a", "d/f/b"];
const DIRS: &[&str] = &["d", "e", "d/f", "e/f"];

#[derive(Debug, Clone)]
enum Op {
    Create(usize, Vec<u8>),
    WriteAt(usize, u16, Vec<u8>),
    Truncate(usize, u16),
    Rename(usize, usize),
    RenameDir(usize, usize),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Chmod(usize, u32),
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES.len();
    let dir = 0..DIRS.len();
    let bytes = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        3 => (file.clone(), bytes.clone()).prop_map(|(f, b)| Op::Create(f, b)),
        2 => (file.clone(), 0u16..200, bytes).prop_map(|(f, o, b)| Op::WriteAt(f, o, b)),
        1 => (file.clone(), 0u16..100).prop_map(|(f, l)| Op::Truncate(f, l)),
        2 => (file.clone(), file.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (dir.clone(), dir.clone()).prop_map(|(a, b)| Op::RenameDir(a, b)),
        1 => file.clone().prop_map(Op::Unlink),
        3 => dir.clone().prop_map(Op::Mkdir),
        1 => dir.prop_map(Op::Rmdir),
        1 => (file, prop_oneof![Just(0o600u32), Just(0o644), Just(0o755)]).prop_map(|(f, m)| Op::Chmod(f, m)),
    ]
}

/// Applies one operation under `root`; returns the errno on failure.
fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let f = |i: usize| root.join(FILES[i]);
    let d = |i: usize| root.join(DIRS[i]);
    let result = match op {
        Op::Create(i, data) => std::fs::write(f(*i), data),
        Op::WriteAt(i, offset, data) => std::fs::OpenOptions::new()
            .write(true)
            .open(f(*i))
            .and_then(|file| file.write_all_at(data, u64::from(*offset))),
        Op::Truncate(i, len) => std::fs::OpenOptions::new()
            .write(true)
            .open(f(*i))
            .and_then(|file| file.set_len(u64::from(*len))),
        Op::Rename(a, b) => std::fs::rename(f(*a), f(*b)),
        Op::RenameDir(a, b) => std::fs::rename(d(*a), d(*b)),
        Op::Unlink(i) => std::fs::remove_file(f(*i)),
        Op::Mkdir(i) => std::fs::create_dir(d(*i)),
        Op::Rmdir(i) => std::fs::remove_dir(d(*i)),
        Op::Chmod(i, mode) => {
            std::fs::set_permissions(f(*i), std::fs::Permissions::from_mode(*mode))
        }
    };
    result.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
}

/// Everything below `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if name.starts_with(".s3files-lost+found-") {
                continue;
            }
            let path = rel.join(&name);
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let key = path.to_string_lossy().into_owned();
            if meta.is_dir() {
                out.insert(key, Entry::Dir);
                stack.push(path);
            } else {
                let data = std::fs::read(entry.path()).unwrap();
                out.insert(
                    key,
                    Entry::File {
                        data,
                        mode: meta.permissions().mode() & 0o777,
                    },
                );
            }
        }
    }
    out
}

struct World {
    server: S3Server,
    buckets: AtomicUsize,
}

fn world() -> &'static World {
    static WORLD: std::sync::OnceLock<World> = std::sync::OnceLock::new();
    WORLD.get_or_init(|| World {
        server: S3Server::start(),
        buckets: AtomicUsize::new(0),
    })
}

fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let world = world();
    let server = &world.server;
    let bucket = format!("model-{}", world.buckets.fetch_add(1, Ordering::Relaxed));
    server.create_bucket(&bucket);
    let source = format!("s3://{bucket}");
    let local = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut mount = Mount::start_with_cache(
        server,
        &source,
        &["--write-back-delay", "60s"],
        cache.path(),
    );

    // A common starting tree, so that most random operations find their targets.
    let setup = [
        Op::Mkdir(0),
        Op::Mkdir(1),
        Op::Mkdir(2),
        Op::Create(0, b"top".to_vec()),
        Op::Create(2, b"in d".to_vec()),
        Op::Create(5, b"in d/f".to_vec()),
    ];
    for (i, op) in setup.iter().chain(ops).enumerate() {
        let want = apply(local.path(), op);
        let got = apply(&mount.path, op);
        if std::env::var_os("S3FILES_MODEL_TRACE").is_some() {
            eprintln!("op {i} {op:?} -> {got:?}");
        }
        prop_assert_eq!(got, want, "op {} {:?} differs", i, op);
    }
    let expected = snapshot(local.path());
    prop_assert_eq!(
        &snapshot(&mount.path),
        &expected,
        "tree after the operations"
    );

    // After sync, the bucket holds exactly the tree: a marker per directory, an object
    // per file, with the same bytes and modes.
    let synced = common::sync(&mount.path, Duration::from_secs(60));
    prop_assert!(synced.is_ok(), "sync: {:?}\n{}", synced, mount.log());
    let keys = server.list_all(&bucket);
    let mut want_keys: Vec<String> = expected
        .iter()
        .map(|(path, e)| match e {
            Entry::Dir => format!("{path}/"),
            Entry::File { .. } => path.clone(),
        })
        .collect();
    want_keys.sort();
    let mut got_keys: Vec<String> = keys.keys().cloned().collect();
    got_keys.sort();
    prop_assert_eq!(&got_keys, &want_keys, "bucket keys after sync");
    for (path, entry) in &expected {
        if let Entry::File { data, mode } = entry {
            prop_assert_eq!(&server.get(&bucket, path), data, "bytes of {}", path);
            let perms = server.metadata(&bucket, path)["file-permissions"].clone();
            prop_assert_eq!(
                perms,
                format!("{:07o}", 0o100000 | mode),
                "mode of {}",
                path
            );
        }
    }

    // After unmount and remount (same cache dir), the mount shows the same tree.
    let status = mount.stop();
    prop_assert!(status.success());
    let mount = Mount::start_with_cache(
        server,
        &source,
        &["--write-back-delay", "60s"],
        cache.path(),
    );
    prop_assert_eq!(&snapshot(&mount.path), &expected, "tree after remount");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("S3FILES_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        max_shrink_iters: 200,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions")
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mount_behaves_like_a_local_directory(ops in proptest::collection::vec(op(), 1..30)) {
        run_case(&ops)?;
    }
}
