//! Write path through a real mount against a real S3 server: writes land locally at
//! once, reach the bucket whole after the write-back delay (one PUT per quiet file),
//! survive a killed daemon, and `s3files sync` / unmount export what is pending.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{block_on, sync, wait_for, Mount, S3Server};

/// The `user.s3files.status` text of a path.
fn status(path: &Path) -> String {
    common::status_xattr(path, Duration::from_secs(20))
}

#[test]
fn written_file_reaches_the_bucket_after_the_delay_in_one_put() {
    let server = S3Server::start();
    server.create_bucket("lazy");
    // The access point's root directory belongs to it, as S3 Files sets it up.
    server.put(
        "lazy",
        "agent/",
        "",
        &[
            ("file-permissions", "0040755"),
            ("file-owner", "1000"),
            ("file-group", "1000"),
        ],
    );
    let mount = Mount::start(
        &server,
        "s3://lazy/agent",
        &["--write-back-delay", "3s", "--uid", "1000", "--gid", "1000"],
    );
    let path = mount.join("burst.txt");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut expected = Vec::new();
    for i in 0..1000 {
        let line = format!("append {i}\n");
        file.write_all(line.as_bytes()).unwrap();
        expected.extend_from_slice(line.as_bytes());
    }
    drop(file);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    // Local at once (read-your-writes), absent from the bucket before the delay.
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    assert!(
        status(&path).contains("state: pending export"),
        "{}",
        status(&path)
    );
    assert!(
        !server.exists("lazy", "agent/burst.txt"),
        "exported before the delay"
    );
    assert!(
        wait_for(Duration::from_secs(20), || server
            .exists("lazy", "agent/burst.txt")),
        "not exported after the delay:\n{}",
        mount.log()
    );
    assert_eq!(server.get("lazy", "agent/burst.txt"), expected);
    let meta = server.metadata("lazy", "agent/burst.txt");
    assert_eq!(meta["file-permissions"], "0100640");
    assert_eq!(meta["file-owner"], "1000");
    assert_eq!(meta["file-group"], "1000");
    let mtime_ns: u128 = meta["file-mtime"].trim_end_matches("ns").parse().unwrap();
    let local = std::fs::metadata(&path).unwrap();
    assert_eq!(mtime_ns / 1_000_000_000, local.mtime() as u128);
    // A burst of 1,000 appends within the delay is one PUT.
    assert_eq!(
        server.count_requests("PUT", "lazy", "agent/burst.txt"),
        1,
        "{}",
        server.request_log()
    );
    assert!(wait_for(Duration::from_secs(5), || status(&path)
        .contains("state: synced")));
}

#[test]
fn namespace_changes_are_exported() {
    let server = S3Server::start();
    server.create_bucket("names");
    server.put("names", "existing.txt", "0123456789", &[]);
    server.put("names", "gone.txt", "bye", &[]);
    server.put("names", "olddir/", "", &[("file-permissions", "0040755")]);
    let mount = Mount::start(&server, "s3://names", &["--write-back-delay", "1s"]);
    std::fs::create_dir(mount.join("newdir")).unwrap();
    std::fs::set_permissions(mount.join("newdir"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(mount.join("newdir/inner.txt"), "inner").unwrap();
    std::os::unix::fs::symlink("newdir/inner.txt", mount.join("link")).unwrap();
    std::fs::remove_file(mount.join("gone.txt")).unwrap();
    std::fs::remove_dir(mount.join("olddir")).unwrap();
    // Truncate and overwrite part of an existing object.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mount.join("existing.txt"))
        .unwrap();
    f.set_len(6).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"AB", 2).unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(mount.join("existing.txt")).unwrap(),
        b"01AB45"
    );
    assert_eq!(
        std::fs::remove_dir(mount.join("newdir"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    sync(&mount.path, Duration::from_secs(30)).unwrap_or_else(|e| panic!("sync: {e}"));

    let keys = server.list_all("names");
    let mut names: Vec<&str> = keys.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["existing.txt", "link", "newdir/", "newdir/inner.txt"]
    );
    assert_eq!(server.get("names", "existing.txt"), b"01AB45");
    assert_eq!(server.get("names", "newdir/inner.txt"), b"inner");
    assert_eq!(server.get("names", "link"), b"newdir/inner.txt");
    assert_eq!(
        server.metadata("names", "link")["file-permissions"],
        "0120777"
    );
    assert_eq!(
        server.metadata("names", "newdir/")["file-permissions"],
        "0040750"
    );
}

/// Modification times before 1970 (`touch -d 1960-06-01`, an old archive's files), with
/// and without a fraction of a second: shown as set, exported as negative nanoseconds,
/// and read back by a new mount. Before, they became the epoch itself.
#[test]
fn times_before_1970_are_kept() {
    let server = S3Server::start();
    server.create_bucket("old");
    let cases = [
        ("whole", -302_443_200i64, 0i64),
        ("fraction", -302_443_200, 250_000_000),
        ("just-before", -1, 999_999_999),
    ];
    let mut mount = Mount::start(&server, "s3://old", &["--write-back-delay", "60s"]);
    for (name, secs, nanos) in cases {
        let path = mount.join(name);
        std::fs::write(&path, name).unwrap();
        common::set_mtime(&path, secs, nanos).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (secs, nanos), "{name}");
    }
    sync(&mount.join(""), Duration::from_secs(30)).unwrap();
    for (name, secs, nanos) in cases {
        let stored = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        assert_eq!(
            server.metadata("old", name).get("file-mtime"),
            Some(&format!("{stored}ns")),
            "{name}"
        );
    }
    assert!(mount.stop().success());

    let again = Mount::start(&server, "s3://old", &[]);
    for (name, secs, nanos) in cases {
        let meta = std::fs::metadata(again.join(name)).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (secs, nanos), "{name}");
    }
    common::assert_answers(&again.join(""), Duration::from_secs(10));
}

#[test]
fn metadata_only_change_is_a_copy_not_an_upload() {
    let server = S3Server::start();
    server.create_bucket("chmod");
    server.put(
        "chmod",
        "big.bin",
        vec![7u8; 100_000],
        &[("file-permissions", "0100644")],
    );
    // No eager import: the test counts the daemon's GETs of the object (none).
    let mount = Mount::start(
        &server,
        "s3://chmod",
        &["--write-back-delay", "1s", "--import-size-threshold", "0"],
    );
    let path = mount.join("big.bin");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    sync(&path, Duration::from_secs(30)).unwrap_or_else(|e| panic!("sync: {e}"));
    assert_eq!(
        server.metadata("chmod", "big.bin")["file-permissions"],
        "0100600"
    );
    assert_eq!(server.get("chmod", "big.bin"), vec![7u8; 100_000]);
    // One PUT (the seed); the chmod went out as CopyObject, which moto logs as a PUT with
    // a copy source, so count the uploads by body: the daemon never GETs or re-sends it.
    assert_eq!(
        server.count_requests("GET", "chmod", "big.bin"),
        1,
        "only our check reads it"
    );
    assert!(mount.log().contains("kind=Metadata"), "{}", mount.log());
}

#[test]
fn killed_daemon_exports_everything_after_restart() {
    let server = S3Server::start();
    server.create_bucket("crash");
    let cache = tempfile::tempdir().unwrap();
    let mut mount = Mount::start_with_cache(
        &server,
        "s3://crash",
        &["--write-back-delay", "60s"],
        cache.path(),
    );
    std::fs::create_dir(mount.join("files")).unwrap();
    for i in 0..500 {
        std::fs::write(
            mount.join(&format!("files/f{i:03}.txt")),
            format!("content of file {i}\n"),
        )
        .unwrap();
    }
    assert!(
        server.list_all("crash").is_empty(),
        "nothing before the delay"
    );
    mount.kill();
    assert!(server.list_all("crash").is_empty());

    let restarted = Mount::start_with_cache(
        &server,
        "s3://crash",
        &["--write-back-delay", "1s"],
        cache.path(),
    );
    assert!(
        wait_for(Duration::from_secs(120), || server.list_all("crash").len()
            == 501),
        "after restart: {} keys\n{}",
        server.list_all("crash").len(),
        restarted.log()
    );
    for i in (0..500).step_by(37) {
        assert_eq!(
            server.get("crash", &format!("files/f{i:03}.txt")),
            format!("content of file {i}\n").into_bytes()
        );
    }
    // The restarted mount shows them too.
    assert_eq!(
        std::fs::read_dir(restarted.join("files")).unwrap().count(),
        500
    );
}

#[test]
fn unmount_exports_pending_changes_first() {
    let server = S3Server::start();
    server.create_bucket("flush");
    let mut mount = Mount::start(&server, "s3://flush", &["--write-back-delay", "60s"]);
    std::fs::write(mount.join("late.txt"), "written just before unmount").unwrap();
    assert!(!server.exists("flush", "late.txt"));
    let status = mount.stop();
    assert!(status.success());
    assert_eq!(
        server.get("flush", "late.txt"),
        b"written just before unmount"
    );
}

/// `tar -x` of an archive made with `tar -C dir -cf - .` into the mount root: the "./"
/// entry sets the root's mode, owner and times. Mounting a whole bucket there is no key
/// to keep them in: they hold on the mount, the files are exported, `s3files sync`
/// succeeds and the daemon exits cleanly (before, the root's export failed forever).
#[test]
fn untar_into_a_whole_bucket_mount_root() {
    let server = S3Server::start();
    server.create_bucket("untar");
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("d")).unwrap();
    std::fs::write(src.path().join("d/a.txt"), "a").unwrap();
    std::fs::write(src.path().join("b.txt"), "bb").unwrap();
    std::fs::set_permissions(src.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    let archive = src.path().join("../untar-test.tar");
    let tar = |args: &[&str]| {
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = common::bounded(Duration::from_secs(60), "tar", move || {
            std::process::Command::new("tar")
                .args(&owned)
                .output()
                .unwrap()
        });
        assert!(out.status.success(), "tar {args:?}: {out:?}");
    };
    let archive_path = archive.to_str().unwrap();
    tar(&["-C", src.path().to_str().unwrap(), "-cf", archive_path, "."]);

    let mut mount = Mount::start(&server, "s3://untar", &["--write-back-delay", "60s"]);
    tar(&["-C", mount.join("").to_str().unwrap(), "-xf", archive_path]);
    std::fs::remove_file(&archive).unwrap();
    let root = std::fs::metadata(mount.join("")).unwrap();
    assert_eq!(root.permissions().mode() & 0o7777, 0o750);
    sync(&mount.join(""), Duration::from_secs(30)).unwrap();
    let mut keys: Vec<String> = server.list_all("untar").into_keys().collect();
    keys.sort();
    assert_eq!(keys, ["b.txt", "d/", "d/a.txt"]);
    assert_eq!(server.get("untar", "d/a.txt"), b"a");
    common::assert_answers(&mount.join(""), Duration::from_secs(10));
    let status = mount.stop();
    assert!(status.success(), "{}", mount.log());
    assert!(!mount.log().contains("export failed"), "{}", mount.log());
}

#[test]
fn conflict_bucket_wins_and_local_copy_goes_to_lost_found() {
    let server = S3Server::start();
    server.create_bucket("clash");
    server.put("clash", "dir/shared.txt", "original", &[]);
    server.put("clash", "dir/doomed.txt", "original", &[]);
    let cache = tempfile::tempdir().unwrap();
    let mut mount = Mount::start_with_cache(
        &server,
        "s3://clash",
        &["--write-back-delay", "1s"],
        cache.path(),
    );
    let path = mount.join("dir/shared.txt");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "original");
    // The mount changes the files; before the export, someone changes one object in S3
    // and deletes the other.
    std::fs::write(&path, "local change").unwrap();
    std::fs::write(mount.join("dir/doomed.txt"), "local change 2").unwrap();
    server.put("clash", "dir/shared.txt", "bucket change", &[]);
    block_on(
        server
            .client()
            .delete_object()
            .bucket("clash")
            .key("dir/doomed.txt")
            .send(),
    )
    .unwrap();
    assert!(
        sync(&mount.path, Duration::from_secs(30)).is_err(),
        "sync reports that the changes did not reach S3"
    );

    // The bucket wins: its bytes stay in S3 and show at the path; the delete wins too.
    assert_eq!(server.get("clash", "dir/shared.txt"), b"bucket change");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "bucket change");
    assert!(!mount.join("dir/doomed.txt").exists());
    assert!(!server.exists("clash", "dir/doomed.txt"));
    // Nothing is lost: both local copies are in lost+found, never exported.
    let lost_dir = common::lost_found_dir(&mount.path);
    let mut kept: Vec<(String, String)> = std::fs::read_dir(&lost_dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    kept.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept[0].0.ends_with("_shared.txt") && kept[0].1 == "local change",
        "{kept:?}"
    );
    assert!(
        kept[1].0.ends_with("_doomed.txt") && kept[1].1 == "local change 2",
        "{kept:?}"
    );
    let st = status(&lost_dir.join(&kept[0].0));
    assert!(
        st.contains("state: conflict") && st.contains("original-path: /dir/shared.txt"),
        "{st}"
    );
    assert!(
        mount.log().contains("local copy is in lost+found"),
        "{}",
        mount.log()
    );
    let keys = server.list_all("clash");
    assert!(keys.keys().all(|k| !k.contains("lost+found")), "{keys:?}");

    // lost+found survives a restart, and its files can be deleted.
    mount.stop();
    let mount = Mount::start_with_cache(
        &server,
        "s3://clash",
        &["--write-back-delay", "1s"],
        cache.path(),
    );
    // (The directory is named after this mount's id, which includes the mount point.)
    let lost_dir = common::lost_found_dir(&mount.path);
    assert_eq!(std::fs::read_dir(&lost_dir).unwrap().count(), 2);
    for (name, _) in &kept {
        std::fs::remove_file(lost_dir.join(name)).unwrap();
    }
    // The directory itself stays (S3 Files does not let it be removed).
    let err = std::fs::remove_dir(&lost_dir).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    sync(&mount.path, Duration::from_secs(30)).unwrap_or_else(|e| panic!("sync: {e}"));
    assert_eq!(server.get("clash", "dir/shared.txt"), b"bucket change");
}

#[test]
fn new_file_over_a_key_created_meanwhile_is_a_conflict() {
    let server = S3Server::start();
    server.create_bucket("race");
    let mount = Mount::start(&server, "s3://race", &["--write-back-delay", "1s"]);
    std::fs::write(mount.join("new.txt"), "mine").unwrap();
    server.put("race", "new.txt", "theirs", &[]);
    assert!(
        sync(&mount.path, Duration::from_secs(30)).is_err(),
        "the change did not reach S3"
    );
    assert_eq!(server.get("race", "new.txt"), b"theirs");
    assert_eq!(
        std::fs::read_to_string(mount.join("new.txt")).unwrap(),
        "theirs"
    );
}

#[test]
fn bad_names_fail_early() {
    let server = S3Server::start();
    server.create_bucket("badnames");
    let mount = Mount::start(&server, "s3://badnames", &["--write-back-delay", "1s"]);
    // A key over 1,024 bytes cannot be exported: refused at create time.
    let mut deep = mount.path.clone();
    for _ in 0..5 {
        deep.push("d".repeat(200));
        std::fs::create_dir(&deep).unwrap();
    }
    let err = std::fs::write(deep.join("x".repeat(100)), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    // Renaming into a path whose key is too long is refused as well.
    std::fs::write(mount.join("a"), "a").unwrap();
    let err = std::fs::rename(mount.join("a"), deep.join("y".repeat(100))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    // Hard links are not part of S3 Files.
    let err = std::fs::hard_link(mount.join("a"), mount.join("b")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(from.as_os_str().as_bytes()).unwrap();
    let b = CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings; AT_FDCWD with absolute paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn renames_of_files_and_directories_are_exported() {
    let server = S3Server::start();
    server.create_bucket("moves");
    let big = vec![5u8; 300_000];
    server.put(
        "moves",
        "exported.bin",
        big.clone(),
        &[("file-permissions", "0100600")],
    );
    server.put("moves", "tree/a.txt", "a", &[]);
    server.put("moves", "tree/sub/b.txt", "b", &[]);
    server.put("moves", "tree/sub/", "", &[("file-permissions", "0040700")]);
    server.put("moves", "victim.txt", "to be replaced", &[]);
    let mount = Mount::start(&server, "s3://moves", &["--write-back-delay", "1s"]);

    // A file already in S3: server-side copy, then delete; no body goes through us.
    std::fs::rename(mount.join("exported.bin"), mount.join("renamed.bin")).unwrap();
    // A file not exported yet: simply uploaded under its new name.
    std::fs::write(mount.join("fresh.txt"), "fresh").unwrap();
    std::fs::rename(mount.join("fresh.txt"), mount.join("fresh-renamed.txt")).unwrap();
    // A whole directory, with a local change inside it.
    std::fs::write(mount.join("tree/sub/new.txt"), "new").unwrap();
    std::fs::rename(mount.join("tree"), mount.join("moved")).unwrap();
    // Replacing an existing file.
    std::fs::write(mount.join("replacement.txt"), "replacement").unwrap();
    std::fs::rename(mount.join("replacement.txt"), mount.join("victim.txt")).unwrap();
    // RENAME_NOREPLACE, and a directory into itself.
    std::fs::write(mount.join("keep.txt"), "keep").unwrap();
    let err = renameat2(
        &mount.join("keep.txt"),
        &mount.join("victim.txt"),
        libc::RENAME_NOREPLACE,
    )
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    let err = std::fs::rename(mount.join("moved"), mount.join("moved/sub/inside")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));

    // Instant on the mount.
    assert_eq!(std::fs::read(mount.join("renamed.bin")).unwrap(), big);
    assert!(!mount.join("exported.bin").exists());
    assert_eq!(
        std::fs::read_to_string(mount.join("moved/sub/b.txt")).unwrap(),
        "b"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("moved/sub/new.txt")).unwrap(),
        "new"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("victim.txt")).unwrap(),
        "replacement"
    );

    sync(&mount.path, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("sync: {e}\n{}", mount.log()));
    let keys = server.list_all("moves");
    let mut names: Vec<&str> = keys.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "fresh-renamed.txt",
            "keep.txt",
            "moved/a.txt",
            "moved/sub/",
            "moved/sub/b.txt",
            "moved/sub/new.txt",
            "renamed.bin",
            "victim.txt",
        ]
    );
    assert_eq!(server.get("moves", "renamed.bin"), big);
    assert_eq!(
        server.metadata("moves", "renamed.bin")["file-permissions"],
        "0100600"
    );
    assert_eq!(
        server.metadata("moves", "moved/sub/")["file-permissions"],
        "0040700"
    );
    assert_eq!(server.get("moves", "victim.txt"), b"replacement");
    assert_eq!(server.get("moves", "moved/sub/new.txt"), b"new");
    // The renamed object went by server-side copy (one PUT with a copy source, no body
    // sent), never a re-upload; the old name was deleted.
    assert_eq!(
        server.count_requests("PUT", "moves", "renamed.bin"),
        1,
        "one copy"
    );
    assert!(
        mount.log().contains("key=\"renamed.bin\" kind=Copy"),
        "{}",
        mount.log()
    );
    assert_eq!(
        server.count_requests("PUT", "moves", "fresh.txt"),
        0,
        "never uploaded under the old name"
    );
}

#[test]
fn large_file_exports_by_multipart_and_appends_work() {
    let server = S3Server::start();
    server.create_bucket("multi");
    let mount = Mount::start(&server, "s3://multi", &["--write-back-delay", "1s"]);
    let path = mount.join("big.bin");
    // 40 MiB: above the 16 MiB single-PUT limit, so three 16 MiB-or-smaller parts.
    let chunk: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    {
        let mut file = std::fs::File::create(&path).unwrap();
        for _ in 0..40 {
            file.write_all(&chunk).unwrap();
        }
    }
    // O_APPEND lands at the end whatever the offset the writer thinks it is at.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(b"tail").unwrap();
    drop(file);
    sync(&path, Duration::from_secs(120)).unwrap_or_else(|e| panic!("sync: {e}\n{}", mount.log()));
    let body = server.get("multi", "big.bin");
    assert_eq!(body.len(), 40 * (1 << 20) + 4);
    assert_eq!(&body[body.len() - 4..], b"tail");
    assert_eq!(&body[..1 << 20], &chunk[..]);
    assert!(
        server.request_log().contains("uploadId="),
        "multipart upload used"
    );
}

#[test]
fn full_cache_disk_is_a_clear_error_not_lost_data() {
    let server = S3Server::start();
    server.create_bucket("fulldisk");
    let disk = common::SmallDisk::new("1m");
    let cache = disk.0.path().join("cache");
    let mount = Mount::start_with_cache(
        &server,
        "s3://fulldisk",
        &["--write-back-delay", "1s"],
        &cache,
    );
    std::fs::write(mount.join("small.txt"), "fits").unwrap();
    let big = vec![7u8; 4 << 20];
    let err = std::fs::write(mount.join("big.bin"), &big).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // What was accepted is exported; the daemon is still healthy.
    sync(&mount.path, Duration::from_secs(60)).unwrap_or_else(|e| panic!("sync: {e}"));
    assert_eq!(server.get("fulldisk", "small.txt"), b"fits");
    std::fs::remove_file(mount.join("big.bin")).unwrap();
    std::fs::write(mount.join("after.txt"), "space again").unwrap();
    sync(&mount.path, Duration::from_secs(60)).unwrap_or_else(|e| panic!("sync: {e}"));
    assert_eq!(server.get("fulldisk", "after.txt"), b"space again");
    drop(mount);
}

/// S3 Files locks are advisory and local: flock and fcntl locks held by one process on a
/// file of the mount are seen by another process of the same mount (the kernel keeps
/// them; the daemon never advertises lock support, so none of this reaches S3).
#[test]
fn advisory_locks_work_between_processes() {
    use std::os::fd::AsRawFd;
    let server = S3Server::start();
    server.create_bucket("locks");
    let mount = Mount::start(&server, "s3://locks", &[]);
    let path = mount.join("shared.lock");
    std::fs::write(&path, "x").unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fd = file.as_raw_fd();
    let other_flock = || {
        let out = common::bounded(Duration::from_secs(20), "flock(1)", {
            let path = path.clone();
            move || {
                std::process::Command::new("flock")
                    .args(["--nonblock", "--conflict-exit-code", "7"])
                    .arg(&path)
                    .arg("true")
                    .status()
                    .unwrap()
            }
        });
        out.code()
    };
    assert_eq!(other_flock(), Some(0), "free lock is taken");
    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }, 0);
    assert_eq!(
        other_flock(),
        Some(7),
        "held flock is seen by another process"
    );
    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_UN) }, 0);
    assert_eq!(other_flock(), Some(0), "released flock is free again");

    // POSIX record locks (fcntl), checked by a Python child with lockf.
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let other_lockf = || {
        let (python, path) = (python.clone(), path.clone());
        common::bounded(Duration::from_secs(20), "python lockf", move || {
            std::process::Command::new(python)
                .args([
                    "-c",
                    "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(7)",
                ])
                .arg(path)
                .status()
                .unwrap()
                .code()
        })
    };
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETLK, &lock) }, 0);
    assert_eq!(
        other_lockf(),
        Some(7),
        "held fcntl lock is seen by another process"
    );
    lock.l_type = libc::F_UNLCK as i16;
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETLK, &lock) }, 0);
    assert_eq!(other_lockf(), Some(0), "released fcntl lock is free again");
    drop(file);
    common::assert_answers(&mount.join(""), Duration::from_secs(10));
}
