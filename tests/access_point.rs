//! S3 Files access points through a real mount against a real S3 server: secondary
//! groups, a root directory (created with its owner and mode, or the mount refused),
//! lost+found not shown below a root directory, and root squash. The tests run as root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{assert_answers, bounded, is_mounted, run_s3files, sync, Mount, S3Server};

/// Every call on a mount gets this long (a hang fails the test, never blocks it).
const LIMIT: Duration = Duration::from_secs(30);

fn read(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    bounded(LIMIT, "read", move || std::fs::read_to_string(path))
}

fn write(path: &Path, data: &'static str) -> std::io::Result<()> {
    let path = path.to_path_buf();
    bounded(LIMIT, "write", move || {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .create(true)
            .open(path)?
            .write_all(data.as_bytes())
    })
}

fn errno(result: std::io::Result<impl std::fmt::Debug>) -> Option<i32> {
    result.expect_err("should be refused").raw_os_error()
}

fn names(dir: &Path) -> Vec<String> {
    let dir = dir.to_path_buf();
    let mut names: Vec<String> = bounded(LIMIT, "readdir", move || {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    });
    names.sort();
    names
}

/// The `user.s3files.status` text of a path.
fn status(path: &Path) -> String {
    common::status_xattr(path, Duration::from_secs(20))
}

/// `cat PATH` run as `uid:gid` with the given supplementary groups: Ok(stdout) or
/// Err(stderr).
fn cat_as(uid: u32, gid: u32, groups: &str, path: &Path) -> Result<String, String> {
    let path = path.to_path_buf();
    let args = [
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        if groups.is_empty() {
            "--clear-groups".into()
        } else {
            format!("--groups={groups}")
        },
    ];
    let out = bounded(LIMIT, "cat as another user", move || {
        Command::new("setpriv")
            .args(args)
            .arg("cat")
            .arg(path)
            .output()
            .unwrap()
    });
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn secondary_groups_grant_group_access() {
    let server = S3Server::start();
    server.create_bucket("groups");
    let group_file = |perm: &'static str| {
        [
            ("file-permissions", perm),
            ("file-owner", "5"),
            ("file-group", "2000"),
        ]
    };
    server.put(
        "groups",
        "read.txt",
        "for group 2000",
        &group_file("0100640"),
    );
    server.put("groups", "write.txt", "before", &group_file("0100660"));
    let ap = ["--uid", "1000", "--gid", "1000", "--write-back-delay", "1s"];
    let member = Mount::start(
        &server,
        "s3://groups",
        &[&ap[..], &["--gids", "1500,2000"]].concat(),
    );
    let outsider = Mount::start(
        &server,
        "s3://groups",
        &[&ap[..], &["--secondary-gids", "3000"]].concat(),
    );

    // 2000 is one of the access point's groups: its group bits apply.
    assert_eq!(read(&member.join("read.txt")).unwrap(), "for group 2000");
    write(&member.join("write.txt"), "after").unwrap();
    sync(&member.path, LIMIT).unwrap();
    assert_eq!(server.get("groups", "write.txt"), b"after");
    // Owner bits still say no for what the group may not do.
    assert_eq!(
        errno(write(&member.join("read.txt"), "x")),
        Some(libc::EACCES)
    );

    // Not in 2000: the other bits (none) apply.
    assert_eq!(errno(read(&outsider.join("read.txt"))), Some(libc::EACCES));
    assert_eq!(
        errno(write(&outsider.join("write.txt"), "x")),
        Some(libc::EACCES)
    );
    assert_eq!(server.get("groups", "write.txt"), b"after");
    assert_answers(&member.path, LIMIT);
    assert_answers(&outsider.path, LIMIT);
}

#[test]
fn root_directory_is_created_with_its_owner_and_mode() {
    let server = S3Server::start();
    server.create_bucket("rootdir");
    server.put("rootdir", "fs/outside.txt", "not in the access point", &[]);
    let flags = [
        "--root-dir",
        "/team/a",
        "--root-owner",
        "1000:1001",
        "--root-mode",
        "0750",
        "--uid",
        "1000",
        "--gid",
        "1001",
        "--write-back-delay",
        "1s",
    ];
    let mut mount = Mount::start(&server, "s3://rootdir/fs", &flags);

    // The marker carries the creation owner and mode, and so does the missing directory
    // on the way to it (S3 Files sets them on the directories it creates).
    for key in ["fs/team/a/", "fs/team/"] {
        let meta = server.metadata("rootdir", key);
        assert_eq!(meta["file-owner"], "1000", "{key}: {meta:?}");
        assert_eq!(meta["file-group"], "1001", "{key}: {meta:?}");
        assert_eq!(meta["file-permissions"], "0040750", "{key}: {meta:?}");
    }
    let root = std::fs::metadata(&mount.path).unwrap();
    assert_eq!(root.permissions().mode() & 0o7777, 0o750);
    assert_eq!((root.uid(), root.gid()), (1000, 1001));

    // The mount shows that directory as its root; new files land under it in S3.
    assert!(names(&mount.path).is_empty());
    write(&mount.join("new.txt"), "inside").unwrap();
    sync(&mount.path, LIMIT).unwrap();
    assert_eq!(server.get("rootdir", "fs/team/a/new.txt"), b"inside");
    assert_eq!(names(&mount.path), ["new.txt"]);
    assert_answers(&mount.path, LIMIT);
    mount.stop();

    // It exists now: a mount without creation info takes it as it is.
    let mount = Mount::start(&server, "s3://rootdir/fs", &["--root-dir", "team/a/"]);
    assert_eq!(read(&mount.join("new.txt")).unwrap(), "inside");
    assert_eq!(
        server.metadata("rootdir", "fs/team/a/")["file-permissions"],
        "0040750"
    );
    assert_answers(&mount.path, LIMIT);
}

#[test]
fn missing_root_directory_without_creation_info_fails_the_mount() {
    let server = S3Server::start();
    server.create_bucket("noroot");
    server.put("noroot", "afile", "a file, not a directory", &[]);
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache = dir.path().join("cache");
    let fails = |extra: &[&str]| -> String {
        let mut args = vec![
            "mount",
            "s3://noroot",
            mnt.to_str().unwrap(),
            "--endpoint-url",
            &server.endpoint,
            "--force-path-style",
            "--cache-dir",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (out, elapsed) = run_s3files(&args, &[], LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{extra:?} mounted; {stderr}");
        assert!(
            elapsed < Duration::from_secs(10),
            "{extra:?} took {elapsed:?}"
        );
        assert!(!is_mounted(&mnt), "{extra:?} left a mount behind");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{extra:?}: {stderr}");
        assert!(lines[0].starts_with("s3files: error: "), "{stderr}");
        lines[0].to_string()
    };
    for foreground in [false, true] {
        let mode: &[&str] = if foreground { &["--foreground"] } else { &[] };
        let line = fails(&[mode, &["--root-dir", "/team/missing"]].concat());
        assert!(
            line.contains("root directory /team/missing does not exist")
                && line.contains("--root-owner and --root-mode"),
            "{line}"
        );
    }
    // Nothing was created.
    assert!(server.list_all("noroot").keys().all(|k| k == "afile"));
    // A file is not a directory to mount, even with creation info.
    let line = fails(&[
        "--root-dir",
        "afile",
        "--root-owner",
        "0:0",
        "--root-mode",
        "0755",
    ]);
    assert!(line.contains("is a file"), "{line}");
    assert!(!server.exists("noroot", "afile/"));
    // Malformed flags fail before S3 is asked.
    for (extra, expected) in [
        (&["--root-dir", "a/../b"][..], "invalid --root-dir"),
        (&["--root-dir", "a//b"], "invalid --root-dir"),
        (&["--root-dir", "/a/b/c/d/e"], "more than 4 directories"),
        (
            &["--root-dir", "a", "--root-mode", "0755"],
            "given together",
        ),
        (
            &[
                "--root-dir",
                "a",
                "--root-owner",
                "x",
                "--root-mode",
                "0755",
            ],
            "invalid --root-owner",
        ),
        (
            &[
                "--root-dir",
                "a",
                "--root-owner",
                "1:1",
                "--root-mode",
                "999",
            ],
            "invalid --root-mode",
        ),
        (&["--gids", "5"], "needs --uid and --gid"),
    ] {
        let line = fails(extra);
        assert!(line.contains(expected), "{extra:?}: {line}");
    }
}

#[test]
fn lost_found_is_not_shown_below_a_root_directory() {
    let server = S3Server::start();
    server.create_bucket("hidden");
    server.put("hidden", "ap/shared.txt", "original", &[]);
    let cache = tempfile::tempdir().unwrap();
    let mut mount = Mount::start_with_cache(
        &server,
        "s3://hidden",
        &["--root-dir", "/ap", "--write-back-delay", "1s"],
        cache.path(),
    );
    let path = mount.join("shared.txt");
    assert_eq!(read(&path).unwrap(), "original");
    // A conflict: the mount changes the file, someone else changes the object first.
    write(&path, "local change").unwrap();
    server.put("hidden", "ap/shared.txt", "bucket change", &[]);
    assert!(
        sync(&mount.path, LIMIT).is_err(),
        "the conflict is reported"
    );
    assert_eq!(read(&path).unwrap(), "bucket change");

    // lost+found is at the file-system root, above this mount's root: not shown.
    assert_eq!(names(&mount.path), ["shared.txt"]);
    assert!(mount.log().contains("not shown through this access point"));
    // The bytes are kept in the cache dir, with the path they had in the file system.
    let kept: Vec<_> = std::fs::read_dir(cache.path().join("lost+found"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "origin"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), "local change");
    let mut origin = kept[0].clone().into_os_string();
    origin.push(".origin");
    assert_eq!(std::fs::read_to_string(origin).unwrap(), "/ap/shared.txt");
    assert!(server
        .list_all("hidden")
        .keys()
        .all(|k| !k.contains("lost+found")));
    assert_answers(&mount.path, LIMIT);
    mount.stop();

    // A mount of the file-system root with the same cache dir shows them.
    let mount = Mount::start_with_cache(&server, "s3://hidden", &[], cache.path());
    let lost = common::lost_found_dir(&mount.path);
    let files = names(&lost);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("_shared.txt"), "{files:?}");
    assert_eq!(read(&lost.join(&files[0])).unwrap(), "local change");
    let st = status(&lost.join(&files[0]));
    assert!(st.contains("original-path: /ap/shared.txt"), "{st}");
    assert_answers(&mount.path, LIMIT);
}

#[test]
fn root_squash_makes_root_the_anonymous_user() {
    let server = S3Server::start();
    server.create_bucket("squash");
    let owned = |perm: &'static str, gid: &'static str| {
        [
            ("file-permissions", perm),
            ("file-owner", "1000"),
            ("file-group", gid),
        ]
    };
    server.put("squash", "private.txt", "secret", &owned("0100600", "1000"));
    server.put("squash", "group.txt", "for 2000", &owned("0100640", "2000"));
    server.put("squash", "shared/", "", &[("file-permissions", "0040777")]);
    let mount = Mount::start(
        &server,
        "s3://squash",
        &["--root-squash", "--write-back-delay", "1s"],
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the test runs as root");

    // Root reads a 0600 file of uid 1000 as nobody would: refused, access(2) too.
    let private = mount.join("private.txt");
    assert_eq!(errno(read(&private)), Some(libc::EACCES));
    let c_path = std::ffi::CString::new(private.to_str().unwrap()).unwrap();
    let p = c_path.clone();
    let answer = bounded(LIMIT, "access", move || {
        // SAFETY: a valid C string.
        let rc = unsafe { libc::access(p.as_ptr(), libc::R_OK) };
        (rc, std::io::Error::last_os_error().raw_os_error())
    });
    assert_eq!(answer, (-1, Some(libc::EACCES)));
    // Its owner, and members of its group, are themselves (the daemon reads the
    // caller's supplementary groups).
    assert_eq!(cat_as(1000, 1000, "", &private).unwrap(), "secret");
    let group = mount.join("group.txt");
    assert_eq!(cat_as(1500, 1500, "2000", &group).unwrap(), "for 2000");
    assert!(cat_as(1500, 1500, "", &group).is_err());

    // New files are the anonymous user's, on the mount and in S3.
    assert_eq!(
        errno(write(&mount.join("top.txt"), "x")),
        Some(libc::EACCES),
        "the root directory is root's: nobody may write there"
    );
    let new = mount.join("shared/new.txt");
    write(&new, "made by root").unwrap();
    let st = std::fs::metadata(&new).unwrap();
    assert_eq!((st.uid(), st.gid()), (65534, 65534));
    sync(&mount.path, LIMIT).unwrap();
    let meta = server.metadata("squash", "shared/new.txt");
    assert_eq!(meta["file-owner"], "65534", "{meta:?}");
    assert_eq!(meta["file-group"], "65534", "{meta:?}");
    assert_eq!(server.get("squash", "shared/new.txt"), b"made by root");
    assert_answers(&mount.path, LIMIT);
}
