//! The library API (`s3files::Mount::builder`), used exactly as a user's test suite would:
//! start a mount in-process against a real S3 server (moto), write, sync, check the
//! bucket with an independent client, and drop the guard: nothing is left mounted, also
//! when the test body panics.

mod common;

use std::time::Duration;

use common::{is_mounted, S3Server};

/// What a test suite sets once: static credentials, an explicit region, no metadata.
fn test_env() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_ACCESS_KEY_ID", common::ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY);
    std::env::set_var("AWS_REGION", common::REGION);
}

#[test]
fn a_test_suite_mounts_writes_syncs_and_drops() {
    test_env();
    let server = S3Server::start();
    server.create_bucket("lib");
    server.put("lib", "work/input.txt", "from the bucket", &[]);
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mount = s3files::Mount::builder("s3://lib/work", dir.path())
        .endpoint(&server.endpoint)
        .force_path_style(true)
        .cache_dir(cache.path())
        .write_back_delay(Duration::from_secs(3600))
        .poll_interval(Duration::from_secs(1))
        .start()
        .expect("mount");
    assert!(is_mounted(dir.path()));
    assert_eq!(
        std::fs::read_to_string(mount.path().join("input.txt")).unwrap(),
        "from the bucket"
    );
    std::fs::write(mount.path().join("result.txt"), "42").unwrap();
    assert!(!server.exists("lib", "work/result.txt"), "lazy: not yet");
    mount.sync().expect("sync");
    assert_eq!(server.get("lib", "work/result.txt"), b"42");
    let status = mount.status("result.txt").expect("status");
    assert!(status.contains("S3Key: work/result.txt"), "{status}");

    // A change still pending at drop is exported by the unmount.
    std::fs::write(mount.path().join("late.txt"), "late").unwrap();
    let left = mount.unmount().expect("unmount");
    assert_eq!(left, 0);
    assert!(!is_mounted(dir.path()));
    assert_eq!(server.get("lib", "work/late.txt"), b"late");
}

#[test]
fn a_panicking_test_leaves_no_mount_behind() {
    test_env();
    let server = S3Server::start();
    server.create_bucket("lib");
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let endpoint = server.endpoint.clone();
    let cache_path = cache.path().to_path_buf();
    let outcome = std::panic::catch_unwind(move || {
        let mount = s3files::Mount::builder("s3://lib", &path)
            .endpoint(endpoint)
            .force_path_style(true)
            .cache_dir(&cache_path)
            .start()
            .expect("mount");
        std::fs::write(mount.path().join("x.txt"), "x").unwrap();
        panic!("the test body fails");
    });
    assert!(outcome.is_err());
    assert!(
        !is_mounted(dir.path()),
        "the guard unmounted during the unwind"
    );
    // And its change was exported on the way out.
    assert_eq!(server.get("lib", "x.txt"), b"x");
}

#[test]
fn bad_options_and_unreachable_endpoints_are_errors_not_panics() {
    test_env();
    let dir = tempfile::tempdir().unwrap();
    let err = s3files::Mount::builder("not-a-uri", dir.path())
        .start()
        .expect_err("a bad source");
    assert!(err.to_string().contains("s3://"), "{err}");
    let err = s3files::Mount::builder("s3://lib", dir.path())
        .flag("--poll-interval", "soon")
        .start()
        .expect_err("a bad flag value");
    assert!(matches!(err, s3files::MountError::Options(_)), "{err}");
    let port = common::free_port();
    let cache = tempfile::tempdir().unwrap();
    let err = s3files::Mount::builder("s3://lib", dir.path())
        .endpoint(format!("http://127.0.0.1:{port}"))
        .force_path_style(true)
        .cache_dir(cache.path())
        .start()
        .expect_err("nothing listens there");
    assert!(matches!(err, s3files::MountError::Start(_)), "{err}");
    assert!(!is_mounted(dir.path()));
}
