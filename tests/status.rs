//! The S3 Files status interface through a real mount, read exactly as S3 Files users
//! script it: `getfattr --only-values -n "user.s3files.status;$(date -u +%s)" PATH`
//! (the timestamp keeps NFS clients from answering from their xattr cache), fields
//! `S3Key`, `FilePath` and `ExportError`; `s3files status PATH` prints the same. Also the
//! PathTooLong export error as a user meets it, unsupported custom xattrs, and S3 Files'
//! limits as a program meets them.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_answers, run_s3files, sync, Mount, S3Server};

/// Runs a shell script with the path as `$1`; (success, stdout, stderr).
fn sh(script: &str, path: &Path) -> (bool, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(path)
        .output()
        .expect("run sh (and getfattr: scripts/setup.sh installs the attr package)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The whole status, as an S3 Files script reads it.
fn status(path: &Path) -> String {
    let (ok, out, err) = sh(
        r#"getfattr --only-values -n "user.s3files.status;$(date -u +%s)" "$1""#,
        path,
    );
    assert!(ok, "getfattr {}: {err}", path.display());
    out
}

/// One field of the status, picked out in the shell as a script would (empty when the
/// field is absent).
fn field(path: &Path, name: &str) -> String {
    let script = format!(
        r#"getfattr --only-values -n "user.s3files.status;$(date -u +%s)" "$1" | sed -n 's/^{name}: //p'"#
    );
    let (ok, out, err) = sh(&script, path);
    assert!(ok, "getfattr {}: {err}", path.display());
    out.trim_end_matches('\n').to_string()
}

/// `s3files status PATH`.
fn s3files_status(path: &Path) -> String {
    let (out, _) = run_s3files(
        &["status", path.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "s3files status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_fields_of_synced_and_pending_files() {
    let server = S3Server::start();
    server.create_bucket("stat");
    server.put("stat", "team/dir/synced.txt", "in the bucket", &[]);
    let mount = Mount::start(&server, "s3://stat/team", &["--write-back-delay", "3600s"]);
    let synced = mount.join("dir/synced.txt");
    let text = status(&synced);
    assert!(
        text.starts_with("S3Key: team/dir/synced.txt\nFilePath: /dir/synced.txt\n"),
        "{text}"
    );
    assert_eq!(field(&synced, "S3Key"), "team/dir/synced.txt");
    assert_eq!(field(&synced, "FilePath"), "/dir/synced.txt");
    assert_eq!(field(&synced, "ExportError"), "");
    // s3files' own lines follow.
    assert!(
        text.contains("\nkey: s3://stat/team/dir/synced.txt\n"),
        "{text}"
    );
    assert!(text.contains("\nstate: synced\n"), "{text}");

    let pending = mount.join("dir/new.txt");
    std::fs::write(&pending, "local only").unwrap();
    assert_eq!(field(&pending, "S3Key"), "team/dir/new.txt");
    assert_eq!(field(&pending, "FilePath"), "/dir/new.txt");
    assert_eq!(field(&pending, "ExportError"), "");
    assert!(status(&pending).contains("\nstate: pending export\n"));
    assert!(!server.exists("stat", "team/dir/new.txt"));

    // The plain name and `s3files status` give the same fields.
    let (ok, plain, _) = sh(
        r#"getfattr --only-values -n user.s3files.status "$1""#,
        &pending,
    );
    assert!(ok);
    assert!(plain.starts_with("S3Key: team/dir/new.txt\nFilePath: /dir/new.txt\n"));
    let cli = s3files_status(&pending);
    assert!(
        cli.starts_with("S3Key: team/dir/new.txt\nFilePath: /dir/new.txt\n"),
        "{cli}"
    );
    let dir = mount.join("dir");
    assert_eq!(field(&dir, "S3Key"), "team/dir/");
    assert_eq!(field(&dir, "FilePath"), "/dir");

    // Once exported, still no error.
    sync(&pending, Duration::from_secs(20)).unwrap();
    assert_eq!(server.get("stat", "team/dir/new.txt"), b"local only");
    assert_eq!(field(&pending, "ExportError"), "");
    assert!(status(&pending).contains("\nstate: synced\n"));
    assert_answers(&mount.path, Duration::from_secs(5));
}

/// A user meets PathTooLong by renaming a directory so that a file below it gets a key
/// over 1,024 bytes (every name within 255): the rename works, the file's export fails
/// with `ExportError: PathTooLong` without a request, nothing is written under the long
/// key, the old object stays until the new one exists, and the mount carries on.
#[test]
fn a_key_too_long_for_s3_is_path_too_long() {
    let server = S3Server::start();
    server.create_bucket("long");
    let mount = Mount::start(&server, "s3://long", &["--write-back-delay", "3600s"]);
    let (a, b, c, f) = (
        "a".repeat(250),
        "b".repeat(250),
        "c".repeat(250),
        "f".repeat(250),
    );
    let deep = format!("d/{a}/{b}/{c}");
    std::fs::create_dir_all(mount.join(&deep)).unwrap();
    let old_key = format!("{deep}/{f}");
    assert_eq!(old_key.len(), 1005);
    std::fs::write(mount.join(&old_key), "every byte counts").unwrap();
    sync(&mount.path, Duration::from_secs(30)).unwrap();
    assert_eq!(server.get("long", &old_key), b"every byte counts");

    let long = "L".repeat(255);
    std::fs::rename(mount.join("d"), mount.join(&long)).unwrap();
    let moved_key = format!("{long}/{a}/{b}/{c}/{f}");
    assert!(moved_key.len() > 1024);
    let moved = mount.join(&moved_key);
    let err = sync(&mount.path, Duration::from_secs(30)).unwrap_err();
    assert!(err.contains("failed"), "{err}");
    assert!(
        common::wait_for(Duration::from_secs(10), || field(&moved, "ExportError")
            == "PathTooLong"),
        "{}\n{}",
        status(&moved),
        mount.log()
    );
    assert_eq!(field(&moved, "S3Key"), moved_key);
    assert_eq!(field(&moved, "FilePath"), format!("/{moved_key}"));
    let text = status(&moved);
    assert!(text.contains("\nstate: export failed\n"), "{text}");
    assert!(s3files_status(&moved).contains("ExportError: PathTooLong\n"));

    // Nothing went to S3 under a key it cannot hold; the old object is still there (its
    // delete waits for the new key); the bytes are on the mount.
    let keys = server.list_all("long");
    assert!(keys.keys().all(|k| k.len() <= 1024), "{keys:?}");
    assert_eq!(server.get("long", &old_key), b"every byte counts");
    assert_eq!(std::fs::read(&moved).unwrap(), b"every byte counts");
    assert!(
        server.exists("long", &format!("{long}/{a}/{b}/{c}/")),
        "the directories that fit moved: {keys:?}"
    );
    assert_answers(&mount.path, Duration::from_secs(5));

    // The failed exports hold nothing up: a clean stop is quick (the old key's delete,
    // waiting for the failed copy, fails with it instead of being waited for), and the
    // changes stay in the journal.
    let mut mount = mount;
    let started = Instant::now();
    mount.stop();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
    assert_eq!(server.get("long", &old_key), b"every byte counts");

    // The next mount on the same cache dir still has them; renamed back within the
    // limit, they export and the old key goes.
    let again = Mount::start_with_cache(
        &server,
        "s3://long",
        &["--write-back-delay", "3600s"],
        &mount.cache_dir,
    );
    assert_eq!(
        std::fs::read(again.join(&moved_key)).unwrap(),
        b"every byte counts"
    );
    std::fs::rename(again.join(&long), again.join("e")).unwrap();
    let back = format!("e/{a}/{b}/{c}/{f}");
    sync(&again.path, Duration::from_secs(30)).unwrap();
    assert_eq!(server.get("long", &back), b"every byte counts");
    assert!(!server.exists("long", &old_key));
    assert_eq!(field(&again.join(&back), "ExportError"), "");
    assert_answers(&again.path, Duration::from_secs(5));
}

#[test]
fn custom_user_xattrs_are_not_supported() {
    let server = S3Server::start();
    server.create_bucket("xattrs");
    server.put("xattrs", "f.txt", "x", &[]);
    let mount = Mount::start(&server, "s3://xattrs", &[]);
    let path = mount.join("f.txt");
    for script in [
        r#"setfattr -n user.custom -v 1 "$1""#,
        r#"getfattr -n user.custom "$1""#,
        r#"setfattr -x user.custom "$1""#,
        r#"getfattr -n "user.s3files.status;soon" "$1""#,
        r#"setfattr -n user.s3files.status -v 1 "$1""#,
        r#"setfattr -n "user.s3files.status;$(date -u +%s)" -v 1 "$1""#,
    ] {
        let (ok, _, err) = sh(script, &path);
        assert!(!ok, "{script} succeeded");
        assert!(err.contains("Operation not supported"), "{script}: {err}");
    }
    // Listing shows the status only.
    let (ok, out, _) = sh(r#"getfattr -d -m - "$1""#, &path);
    assert!(ok);
    let names: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split('=').next().unwrap())
        .collect();
    assert_eq!(names, ["user.s3files.status"], "{out}");
    // `s3files sync` still works through its own attribute.
    sync(&path, Duration::from_secs(10)).unwrap();
    assert_answers(&mount.path, Duration::from_secs(5));
}

/// Symlink targets up to 4,080 bytes, files up to 48 TiB, as S3 Files' quotas say.
#[test]
fn symlink_and_file_size_limits() {
    use std::os::unix::fs::FileExt;
    let server = S3Server::start();
    server.create_bucket("limits");
    let mount = Mount::start(&server, "s3://limits", &["--write-back-delay", "3600s"]);
    let longest = "t".repeat(4080);
    std::os::unix::fs::symlink(&longest, mount.join("ok")).unwrap();
    assert_eq!(
        std::fs::read_link(mount.join("ok")).unwrap().to_str(),
        Some(longest.as_str())
    );
    let err = std::os::unix::fs::symlink("t".repeat(4081), mount.join("long")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    assert!(!mount.join("long").exists());

    let file = std::fs::File::create(mount.join("big")).unwrap();
    file.write_all_at(b"head", 0).unwrap();
    let limit: u64 = 48 << 40;
    let err = file.write_at(b"x", limit).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    let err = file.set_len(limit + 1).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    assert_eq!(file.metadata().unwrap().len(), 4);
    drop(file);
    sync(&mount.path, Duration::from_secs(20)).unwrap();
    assert_eq!(server.get("limits", "big"), b"head");
    assert_eq!(server.get("limits", "ok"), longest.as_bytes());
    assert_answers(&mount.path, Duration::from_secs(5));
}
