//! The command line as a contract: background mounts that return once live, `unmount`,
//! and every bad configuration failing fast with one clear line and nothing mounted.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::{is_mounted, run_s3files, BackgroundMount, S3Server};

/// Bad configuration must fail within this long (the acceptance limit is 10 s).
const LIMIT: Duration = Duration::from_secs(10);

/// Runs `s3files mount` expecting failure; returns its single stderr line.
fn mount_fails(args: &[&str], env: &[(&str, &str)], mountpoint: &Path) -> String {
    let (out, elapsed) = run_s3files(args, env, LIMIT + Duration::from_secs(5));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "{args:?} succeeded; stderr: {stderr}"
    );
    assert!(elapsed < LIMIT, "{args:?} took {elapsed:?}");
    assert!(!is_mounted(mountpoint), "{args:?} left a mount behind");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {stderr}");
    assert!(lines[0].starts_with("s3files: error: "), "{stderr}");
    lines[0].to_string()
}

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        Case { dir }
    }
    fn mnt(&self) -> String {
        self.dir.path().join("mnt").to_string_lossy().into_owned()
    }
    fn cache(&self) -> String {
        self.dir.path().join("cache").to_string_lossy().into_owned()
    }
}

#[test]
fn bad_configuration_fails_fast_with_one_line() {
    let server = S3Server::start();
    server.create_bucket("exists");
    server.put("exists", "f", "x", &[]);
    let endpoint = server.endpoint.clone();
    let case = Case::new();
    let (mnt, cache) = (case.mnt(), case.cache());
    let base = |source: &str, endpoint: &str| -> Vec<String> {
        vec![
            "mount".into(),
            source.into(),
            mnt.clone(),
            "--endpoint-url".into(),
            endpoint.into(),
            "--force-path-style".into(),
            "--cache-dir".into(),
            cache.clone(),
        ]
    };

    for foreground in [false, true] {
        let with_mode = |mut v: Vec<String>| {
            if foreground {
                v.push("--foreground".into());
            }
            v
        };
        let line = mount_fails(
            &as_refs(&with_mode(base("s3://no-such-bucket", &endpoint))),
            &[],
            Path::new(&mnt),
        );
        assert!(
            line.contains("bucket 'no-such-bucket' does not exist"),
            "{line}"
        );

        // Nothing listens on this port: connection refused.
        let closed = format!("http://127.0.0.1:{}", common::free_port());
        let line = mount_fails(
            &as_refs(&with_mode(base("s3://exists", &closed))),
            &[],
            Path::new(&mnt),
        );
        assert!(
            line.contains("cannot reach") && line.contains("refused"),
            "{line}"
        );

        // Something accepts connections but never answers: must not hang.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_url = format!("http://{}", silent.local_addr().unwrap());
        let line = mount_fails(
            &as_refs(&with_mode(base("s3://exists", &silent_url))),
            &[],
            Path::new(&mnt),
        );
        assert!(line.contains("cannot reach"), "{line}");
        drop(silent);

        let line = mount_fails(
            &as_refs(&with_mode(base("s3://exists/missing-prefix", &endpoint))),
            &[],
            Path::new(&mnt),
        );
        assert!(line.contains("does not exist"), "{line}");
    }

    // Missing mount point, a file as mount point, an unwritable cache dir.
    let missing = case.dir.path().join("nope").to_string_lossy().into_owned();
    let mut args = base("s3://exists", &endpoint);
    args[2] = missing.clone();
    let line = mount_fails(&as_refs(&args), &[], Path::new(&missing));
    assert!(line.contains("does not exist"), "{line}");

    let file = case.dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let mut args = base("s3://exists", &endpoint);
    args[2] = file.to_string_lossy().into_owned();
    let line = mount_fails(&as_refs(&args), &[], &file);
    assert!(line.contains("is not a directory"), "{line}");

    // Even root cannot create a directory below a regular file.
    let mut args = base("s3://exists", &endpoint);
    args[7] = file.join("cache").to_string_lossy().into_owned();
    let line = mount_fails(&as_refs(&args), &[], Path::new(&mnt));
    assert!(
        line.contains("cache dir") && line.contains("not writable"),
        "{line}"
    );

    // Bad URIs.
    for source in ["exists", "s3://", "s3://exists/a//b", "s3://exists/../x"] {
        let line = mount_fails(&as_refs(&base(source, &endpoint)), &[], Path::new(&mnt));
        assert!(line.contains("invalid source"), "{line}");
    }
    let line = mount_fails(
        &as_refs(&base("s3://exists", "localhost:9000")),
        &[],
        Path::new(&mnt),
    );
    assert!(line.contains("invalid endpoint URL"), "{line}");

    // A cache expiry of zero would drop every block as it is written.
    let mut args = base("s3://exists", &endpoint);
    args.extend(["--cache-expiry".to_string(), "0s".to_string()]);
    let line = mount_fails(&as_refs(&args), &[], Path::new(&mnt));
    assert!(
        line.contains("--cache-expiry must be longer than 0s"),
        "{line}"
    );

    let mut args = base("s3://exists", &endpoint);
    args.extend(["--fuse-threads".to_string(), "0".to_string()]);
    let line = mount_fails(&as_refs(&args), &[], Path::new(&mnt));
    assert!(line.contains("--fuse-threads must be at least 1"), "{line}");

    let mut args = base("s3://exists", &endpoint);
    args.extend(["--uid".to_string(), "1000".to_string()]);
    let line = mount_fails(&as_refs(&args), &[], Path::new(&mnt));
    assert!(line.contains("--uid and --gid"), "{line}");
}

#[test]
fn bad_import_rules_fail_before_mounting() {
    // Checked before any request: no server is needed, and nothing may be mounted.
    let case = Case::new();
    let mnt = case.mnt();
    let cache = case.cache();
    let rule = |text: &str| vec!["--import-rule".to_string(), text.to_string()];
    let many: Vec<String> = (0..10)
        .flat_map(|i| rule(&format!("prefix=d{i}/,size-less-than=1KiB")))
        .collect();
    let cases: Vec<(Vec<String>, &str)> =
        vec![
        (rule("prefix=logs/"), "size-less-than is missing"),
        (rule("trigger=ON_FILE_ACCESS,size-less-than=1"), "prefix is missing"),
        (
            rule("prefix=a/,trigger=SOMETIMES,size-less-than=1"),
            "unknown trigger 'SOMETIMES' (expected ON_DIRECTORY_FIRST_ACCESS or ON_FILE_ACCESS)",
        ),
        (rule("prefix=a/,size-less-than=49TiB"), "out of range"),
        (rule("prefix=a/,size-less-than=lots"), "invalid size 'lots'"),
        (rule("prefix=a/,colour=red,size-less-than=1"), "does not end in '/'"),
        (rule("prefix=a/,size-less-than=1,colour=red"), "'colour=red' is not a field"),
        (rule("prefix=/abs/,size-less-than=1"), "starts with '/'"),
        (rule("prefix=a/../b/,size-less-than=1"), "'..' segment"),
        (rule("prefix=a//b/,size-less-than=1"), "contains '//'"),
        (rule("prefix=a,size-less-than=1"), "does not end in '/'"),
        (many, "too many import rules: 11 (at most 10"),
        (
            [
                rule("prefix=a/,size-less-than=1"),
                rule("prefix=a/,trigger=ON_FILE_ACCESS,size-less-than=2"),
            ]
            .concat(),
            "two --import-rule flags have prefix 'a/'",
        ),
        (
            [
                rule("prefix=,size-less-than=1MiB"),
                vec!["--import-size-threshold".into(), "64KiB".into()],
            ]
            .concat(),
            "give one or the other",
        ),
    ];
    for (flags, expect) in cases {
        let mut args: Vec<String> = vec![
            "mount".into(),
            "s3://bucket".into(),
            mnt.clone(),
            "--endpoint-url".into(),
            "http://127.0.0.1:9".into(),
            "--cache-dir".into(),
            cache.clone(),
        ];
        args.extend(flags);
        let line = mount_fails(&as_refs(&args), &[], Path::new(&mnt));
        assert!(line.contains(expect), "{args:?}: {line}");
        assert!(
            line.starts_with("s3files: error: ")
                && (line.contains("--import-rule") || line.contains("import rules")),
            "{line}"
        );
        assert!(
            !Path::new(&cache).exists(),
            "{args:?} created the cache dir"
        );
    }
}

#[test]
fn wrong_credentials_fail_fast() {
    // A moto server that authenticates every request after the first (which creates the
    // bucket): the test credentials are unknown to it, so every later request is refused.
    let server = S3Server::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    server.create_bucket_unversioned("locked");
    let case = Case::new();
    let mnt = case.mnt();
    let args = [
        "mount",
        "s3://locked",
        &mnt,
        "--endpoint-url",
        &server.endpoint,
        "--force-path-style",
        "--cache-dir",
        &case.cache(),
    ];
    let line = mount_fails(&args, &[], Path::new(&mnt));
    assert!(line.contains("credentials rejected"), "{line}");
    let line = mount_fails(
        &args,
        &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")],
        Path::new(&mnt),
    );
    assert!(line.contains("credentials"), "{line}");
}

#[test]
fn malformed_flags_are_usage_errors() {
    for args in [
        vec!["mount", "s3://b", "/tmp", "--cache-size", "lots"],
        vec!["mount", "s3://b", "/tmp", "--cache-expiry", "forever"],
        vec!["mount", "s3://b", "/tmp", "--import-size-threshold", "1XB"],
        vec!["mount", "s3://b", "/tmp", "--memory-cache-size", "-1"],
        vec!["mount", "s3://b", "/tmp", "--write-back-delay", "soon"],
        vec!["mount", "s3://b", "/tmp", "--no-such-flag"],
        vec!["mount", "s3://b"],
        vec!["frobnicate"],
    ] {
        let (out, _) = run_s3files(&args, &[], LIMIT);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
    }
}

#[test]
fn status_and_sync_outside_a_mount_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    for command in ["status", "sync"] {
        let (out, _) = run_s3files(&[command, path], &[], LIMIT);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("s3files: error: ") && stderr.contains("is not on an s3files mount"),
            "{command}: {stderr}"
        );
    }
    let (out, _) = run_s3files(&["status", "/no/such/path"], &[], LIMIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/path"));
}

#[test]
fn background_mount_returns_once_live_and_unmount_stops_it() {
    let server = S3Server::start();
    server.create_bucket("bgmount");
    server.put("bgmount", "hello.txt", "hello from the bucket", &[]);
    let case = Case::new();
    let mnt = case.mnt();
    let guard = UnmountGuard(mnt.clone());
    let (out, elapsed) = run_s3files(
        &[
            "mount",
            "s3://bgmount",
            &mnt,
            "--endpoint-url",
            &server.endpoint,
            "--force-path-style",
            "--cache-dir",
            &case.cache(),
        ],
        &[],
        LIMIT,
    );
    assert!(
        out.status.success(),
        "background mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(elapsed < LIMIT);
    // Live the moment the command returned: no polling needed.
    assert!(is_mounted(Path::new(&mnt)));
    let text = std::fs::read_to_string(Path::new(&mnt).join("hello.txt")).unwrap();
    assert_eq!(text, "hello from the bucket");
    let log = std::fs::read_to_string(Path::new(&case.cache()).join("s3files.log")).unwrap();
    assert!(log.contains("mounted"), "{log}");

    // A second mount on the same mount point is refused.
    let (out, _) = run_s3files(
        &[
            "mount",
            "s3://bgmount",
            &mnt,
            "--endpoint-url",
            &server.endpoint,
            "--force-path-style",
        ],
        &[],
        LIMIT,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already an s3files mount"));

    let (out, _) = run_s3files(&["unmount", &mnt], &[], LIMIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(Path::new(&mnt)));
    // The daemon exits once unmounted and logs its summary.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(Path::new(&case.cache()).join("s3files.log")).unwrap();
        if log.contains("s3 requests:") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit summary: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(guard);

    // Unmounting something that is not an s3files mount is refused.
    let (out, _) = run_s3files(&["unmount", &mnt], &[], LIMIT);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not mounted"));
}

/// Clears a background mount if the test fails half-way (the daemon is not our child).
struct UnmountGuard(String);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        common::force_unmount(Path::new(&self.0));
    }
}

#[test]
fn unmount_returns_once_pending_changes_are_exported_so_a_remount_succeeds() {
    let server = S3Server::start();
    server.create_bucket("remount");
    let mount = BackgroundMount::start(
        &server,
        "s3://remount",
        &["--write-back-delay", "60s"],
        None,
    );
    for i in 0..50 {
        let body = format!("pending change {i}\n");
        std::fs::write(mount.join(&format!("file-{i:02}.txt")), body).unwrap();
    }
    assert!(
        server.list_all("remount").is_empty(),
        "nothing is exported before the unmount"
    );
    let pid = mount.daemon_pid().expect("the daemon's pid");

    let (out, elapsed) = mount.unmount();
    assert!(
        out.status.success(),
        "unmount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mount.path));
    assert!(
        !s3files::mounts::is_running(pid),
        "the daemon exited before unmount returned (after {elapsed:?})"
    );
    // Everything is in the bucket the moment unmount returns.
    let listing = server.list_all("remount");
    assert_eq!(listing.len(), 50, "{listing:?}");
    for i in 0..50 {
        assert_eq!(
            server.get("remount", &format!("file-{i:02}.txt")),
            format!("pending change {i}\n").into_bytes()
        );
    }

    // The same mount again, at once: nothing to wait for.
    let (out, elapsed) = mount.mount_again();
    assert!(
        out.status.success(),
        "remount: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        mount.log()
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "remount took {elapsed:?}"
    );
    assert!(!mount.log().contains("waiting for it"), "{}", mount.log());
    assert_eq!(
        std::fs::read_to_string(mount.join("file-07.txt")).unwrap(),
        "pending change 7\n"
    );
    let (out, _) = mount.unmount();
    assert!(out.status.success());
}

#[test]
fn a_mount_waits_for_the_daemon_still_exiting_from_its_cache_dir() {
    let server = S3Server::start();
    server.create_bucket("handover");
    server.put("handover", "f.txt", "in the bucket", &[]);
    let mount = BackgroundMount::start(
        &server,
        "s3://handover",
        &["--write-back-delay", "60s"],
        None,
    );
    std::fs::write(mount.join("late.txt"), "pending at the handover").unwrap();
    // A lazy unmount frees the mount point at once, but the daemon serves the file held
    // open until it is closed, and only then exports and exits: meanwhile it holds the
    // cache dir with no mount listed for it.
    let held = std::fs::File::open(mount.join("f.txt")).unwrap();
    let detached = std::process::Command::new("umount")
        .arg("-l")
        .arg(&mount.path)
        .status()
        .unwrap();
    assert!(detached.success());
    assert!(!is_mounted(&mount.path));
    assert!(mount.daemon_pid().is_some(), "the old daemon still runs");
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        drop(held);
    });

    let (out, elapsed) = mount.mount_again();
    closer.join().unwrap();
    assert!(
        out.status.success(),
        "mount while the old daemon exits: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        mount.log()
    );
    assert!(elapsed >= Duration::from_millis(1500), "waited {elapsed:?}");
    assert_eq!(
        mount.log().matches("waiting for it").count(),
        1,
        "{}",
        mount.log()
    );
    // The old daemon exported its pending file before it let go.
    assert_eq!(
        server.get("handover", "late.txt"),
        b"pending at the handover"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("late.txt")).unwrap(),
        "pending at the handover"
    );
    let (out, _) = mount.unmount();
    assert!(out.status.success());
}

#[test]
fn unmount_says_what_is_still_pending_when_s3_is_gone() {
    let mut server = S3Server::start();
    server.create_bucket("gone");
    let mount = BackgroundMount::start(&server, "s3://gone", &["--write-back-delay", "60s"], None);
    for i in 0..3 {
        std::fs::write(mount.join(&format!("stranded-{i}.txt")), "no S3 to go to").unwrap();
    }
    server.kill();

    let (out, elapsed) = mount.unmount();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "after {elapsed:?}: {stderr}");
    assert!(!is_mounted(&mount.path));
    assert!(mount.daemon_pid().is_none(), "the daemon exited");
    assert!(stderr.contains("waiting for the daemon (pid "), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("s3files: warning: ")
            && last.contains("3 pending change(s)")
            && last.contains(&*mount.cache_dir.to_string_lossy()),
        "{stderr}"
    );
    // They wait in the journal for the next mount.
    let journal = std::fs::read_to_string(mount.cache_dir.join("journal/log")).unwrap();
    for i in 0..3 {
        assert!(journal.contains(&format!("stranded-{i}.txt")), "{journal}");
    }
}

#[test]
fn unversioned_bucket_is_refused_unless_allowed() {
    let server = S3Server::start();
    server.create_bucket_unversioned("plain");
    server.put("plain", "f.txt", "unversioned data", &[]);
    server.create_bucket("paused");
    block_on_suspend(&server, "paused");
    let case = Case::new();
    let (mnt, cache) = (case.mnt(), case.cache());
    let args = |bucket: &str| -> Vec<String> {
        vec![
            "mount".into(),
            format!("s3://{bucket}"),
            mnt.clone(),
            "--endpoint-url".into(),
            server.endpoint.clone(),
            "--force-path-style".into(),
            "--cache-dir".into(),
            cache.clone(),
        ]
    };
    for foreground in [false, true] {
        let mut plain = args("plain");
        if foreground {
            plain.push("--foreground".into());
        }
        let line = mount_fails(&as_refs(&plain), &[], Path::new(&mnt));
        assert!(
            line.contains("does not have versioning enabled")
                && line.contains("put-bucket-versioning")
                && line.contains("--allow-unversioned"),
            "{line}"
        );
    }
    let line = mount_fails(&as_refs(&args("paused")), &[], Path::new(&mnt));
    assert!(line.contains("versioning suspended"), "{line}");

    // With the flag the same bucket mounts and works.
    let _guard = UnmountGuard(mnt.clone());
    let mut allowed = args("plain");
    allowed.push("--allow-unversioned".into());
    let (out, _) = run_s3files(&as_refs(&allowed), &[], LIMIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(Path::new(&mnt).join("f.txt")).unwrap();
    assert_eq!(text, "unversioned data");
    common::assert_answers(Path::new(&mnt), Duration::from_secs(10));
    let (out, _) = run_s3files(&["unmount", &mnt], &[], Duration::from_secs(60));
    assert!(out.status.success());
    assert!(!is_mounted(Path::new(&mnt)));
}

/// Enables then suspends versioning on a bucket.
fn block_on_suspend(server: &S3Server, bucket: &str) {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    common::block_on(
        server
            .client()
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Suspended)
                    .build(),
            )
            .send(),
    )
    .expect("suspend versioning");
}
