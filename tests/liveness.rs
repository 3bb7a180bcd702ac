//! The harness's own guarantee: a mount that stops answering fails the test that used it
//! (when the guard is dropped or the daemon stopped) instead of letting it pass, and is
//! still cleared.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use common::{check_live, is_mounted, wait_for, Mount, S3Server, LIVENESS_LIMIT};

/// A daemon that stops answering: SIGSTOP leaves the mount in place, every request on it
/// waiting.
fn hang(mount: &Mount) {
    check_live(&mount.path, LIVENESS_LIMIT).expect("live before");
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(mount.pid() as i32, libc::SIGSTOP) };
    // The stop reaches each thread on its own; until then one may still answer.
    let task_dir = format!("/proc/{}/task", mount.pid());
    let stopped = wait_for(Duration::from_secs(5), || {
        std::fs::read_dir(&task_dir).unwrap().all(|task| {
            let stat =
                std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
            let state = stat.rfind(')').map(|i| stat[i + 1..].trim_start());
            state.is_some_and(|s| s.starts_with('T'))
        })
    });
    assert!(stopped, "the daemon's threads did not all stop");
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn a_hung_mount_fails_the_test_at_drop_and_at_stop() {
    let server = S3Server::start();
    server.create_bucket("hang");
    server.put("hang", "f.txt", "x", &[]);

    let mount = Mount::start(&server, "s3://hang", &[]);
    let path = mount.path.clone();
    hang(&mount);
    let start = Instant::now();
    let message = panic_message(catch_unwind(AssertUnwindSafe(|| drop(mount))).unwrap_err());
    assert!(message.contains("the mount hangs"), "{message}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(!is_mounted(&path), "the hung mount is cleared");

    let mut mount = Mount::start(&server, "s3://hang", &[]);
    let path = mount.path.clone();
    hang(&mount);
    let message = panic_message(catch_unwind(AssertUnwindSafe(|| mount.stop())).unwrap_err());
    assert!(message.contains("the mount hangs"), "{message}");
    drop(mount);
    assert!(!is_mounted(&path), "the hung mount is cleared");
}
