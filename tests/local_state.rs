//! The daemon's local state is its user's only: after a session of writes (of a private
//! and a public file), reads that fill the cache, a conflict and an unmount, nothing under
//! the cache dir is readable by group or others; a cache dir left looser by an older
//! version is tightened at mount, and one owned by another user is refused.

mod common;

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{lost_found_dir, run_s3files, sync, wait_for, BackgroundMount, S3Server};

/// Every path under `dir` (itself included) whose mode lets group or others in, and how
/// many files and directories were looked at.
fn readable_by_others(dir: &Path) -> (Vec<(PathBuf, u32)>, usize) {
    let mut open = Vec::new();
    let mut seen = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        seen += 1;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            open.push((path.clone(), mode));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    (open, seen)
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn assert_private(cache: &Path, when: &str) {
    let (open, seen) = readable_by_others(cache);
    let listed: Vec<String> = open
        .iter()
        .map(|(path, mode)| format!("{} {mode:o}", path.display()))
        .collect();
    assert!(
        open.is_empty(),
        "{when}: readable by others under {}: {listed:?}",
        cache.display()
    );
    assert!(seen > 5, "{when}: only {seen} entries under the cache dir");
}

#[test]
fn nothing_under_the_cache_dir_is_readable_by_other_users() {
    let server = S3Server::start();
    server.create_bucket("private");
    for name in ["a", "b", "c"] {
        server.put(
            "private",
            &format!("seeded/{name}.txt"),
            vec![b'r'; 10_000],
            &[],
        );
    }
    server.put("private", "shared.txt", "original", &[]);
    let mount = BackgroundMount::start(
        &server,
        "s3://private",
        &["--write-back-delay", "60s", "--poll-interval", "0s"],
        None,
    );
    let cache = mount.cache_dir.clone();

    // Writes: a private file and a public one (their bytes wait in staging/).
    for (name, mode) in [("secret.txt", 0o600), ("public.txt", 0o644)] {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(mount.join(name))
            .unwrap();
        std::io::Write::write_all(&mut file, format!("bytes of {name}").as_bytes()).unwrap();
        drop(file);
        std::fs::set_permissions(mount.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            std::fs::metadata(mount.join(name)).unwrap().mode() & 0o777,
            mode
        );
    }
    // Reads: the cache fills.
    for name in ["a", "b", "c"] {
        let bytes = std::fs::read(mount.join(&format!("seeded/{name}.txt"))).unwrap();
        assert_eq!(bytes, vec![b'r'; 10_000]);
    }
    assert!(
        wait_for(Duration::from_secs(10), || count_files(&cache.join("data"))
            >= 3),
        "cache blocks: {}",
        count_files(&cache.join("data"))
    );
    // A conflict: a local change to a file someone changes in S3 before it is exported.
    let shared = mount.join("shared.txt");
    assert_eq!(std::fs::read_to_string(&shared).unwrap(), "original");
    std::fs::write(&shared, "local change").unwrap();
    server.put("private", "shared.txt", "bucket change", &[]);
    assert!(
        sync(&shared, Duration::from_secs(30)).is_err(),
        "a conflict"
    );
    let lost = lost_found_dir(&mount.path);
    assert_eq!(count_files(&lost), 1);
    assert_eq!(std::fs::read_to_string(&shared).unwrap(), "bucket change");

    // Mid-session, every part of the local state exists, and is private.
    assert!(count_files(&cache.join("staging")) >= 2, "staged writes");
    assert!(
        count_files(&cache.join("lost+found")) >= 1,
        "the conflict's copy"
    );
    for file in ["lock", "s3files.log", "journal/log"] {
        assert!(cache.join(file).exists(), "{file}");
    }
    assert_private(&cache, "while mounted");

    let (out, _) = mount.unmount();
    assert!(
        out.status.success(),
        "unmount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.get("private", "secret.txt"), b"bytes of secret.txt");
    assert!(cache.join("exit-report").exists());
    assert_private(&cache, "after unmount");
}

#[test]
fn a_loose_cache_dir_from_an_older_version_is_made_private() {
    let server = S3Server::start();
    server.create_bucket("loose");
    server.put("loose", "f.txt", "x", &[]);
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    // What an older s3files left: 0755 directories, 0644 files.
    for dir in ["", "data", "staging", "journal", "lost+found"] {
        std::fs::create_dir_all(cache.join(dir)).unwrap();
        std::fs::set_permissions(cache.join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for file in ["s3files.log", "lock", "journal/log", "lost+found/1_old"] {
        std::fs::write(cache.join(file), "").unwrap();
        std::fs::set_permissions(cache.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mount = BackgroundMount::start(&server, "s3://loose", &[], Some(&cache));
    assert_eq!(std::fs::read_to_string(mount.join("f.txt")).unwrap(), "x");
    let mode = |rel: &str| std::fs::metadata(cache.join(rel)).unwrap().mode() & 0o7777;
    for dir in ["", "data", "staging", "journal", "lost+found"] {
        assert_eq!(mode(dir), 0o700, "{dir}/");
    }
    for file in ["s3files.log", "lock", "journal/log"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    // Files inside the big subdirectories are not walked; their 0700 directory is
    // enough: another user cannot read them.
    assert_eq!(mode("lost+found/1_old"), 0o644);
    let other = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(cache.join("lost+found/1_old"))
        .output()
        .unwrap();
    assert!(!other.status.success(), "another user read it");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let log = mount.log();
    assert_eq!(
        log.matches("made it private").count(),
        1,
        "one line says so: {log}"
    );
    let (out, _) = mount.unmount();
    assert!(out.status.success());
    // Everything else, old or new, is private.
    assert_eq!(
        readable_by_others(&cache).0,
        vec![(cache.join("lost+found/1_old"), 0o644)]
    );
}

#[test]
fn a_cache_dir_owned_by_another_user_is_refused() {
    let server = S3Server::start();
    server.create_bucket("theirs");
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).unwrap();
    let mnt = root.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (out, _) = run_s3files(
        &[
            "mount",
            "s3://theirs",
            mnt.to_str().unwrap(),
            "--endpoint-url",
            &server.endpoint,
            "--force-path-style",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(60),
    );
    common::force_unmount(&mnt);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("belongs to uid 65534") && stderr.contains("cache dir"),
        "{stderr}"
    );
    assert!(!common::is_mounted(&mnt));
}
