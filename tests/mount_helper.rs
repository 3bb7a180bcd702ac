//! System integration: `mount -t s3files` (and an fstab line) through the
//! `mount.s3files` helper, `umount` that exports what is pending; and `s3files sync`'s
//! progress on a terminal and its summary line elsewhere, read with the root's status
//! summary.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    assert_answers, bounded, daemon_env, force_unmount, is_mounted, run_s3files, s3files_bin,
    status_xattr, wait_for, BackgroundMount, S3Server,
};

/// Time limit of one mount(8) / umount(8) / sync call.
const LIMIT: Duration = Duration::from_secs(60);
/// Where mount(8) looks for the helper of type `s3files`.
const HELPER: &str = "/sbin/mount.s3files";

/// Runs a command with the test's AWS environment, at most `LIMIT`.
fn run(program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    daemon_env(&mut command);
    let what = format!("{program} {args:?}");
    bounded(LIMIT, &what.clone(), move || {
        command.output().unwrap_or_else(|e| panic!("{what}: {e}"))
    })
}

/// The helper link in /sbin (the test machine is a throwaway root VM), removed on drop;
/// a helper someone else installed there is left alone and used as it is only if it is
/// this binary.
struct HelperLink {
    created: bool,
}

impl HelperLink {
    fn install() -> Self {
        let target = s3files_bin();
        match std::fs::read_link(HELPER) {
            Ok(existing) if existing == target => return HelperLink { created: false },
            Ok(existing) => panic!(
                "{HELPER} exists and points to {}; not replacing it",
                existing.display()
            ),
            Err(_) if Path::new(HELPER).exists() => {
                panic!("{HELPER} exists and is not a link; not replacing it")
            }
            Err(_) => {}
        }
        symlink(&target, HELPER).unwrap_or_else(|e| panic!("ln -s {HELPER}: {e}"));
        HelperLink { created: true }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(HELPER);
        }
    }
}

/// Clears the mount and kills its daemon (found by the pid in its cache dir's lock, and
/// only if its command line names that cache dir) should the test stop half-way.
struct MountGuard {
    mnt: PathBuf,
    cache: PathBuf,
}

impl MountGuard {
    fn daemon_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.cache.join("lock"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let wanted = self.cache.to_string_lossy();
        String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|arg| arg == wanted)
            .then_some(pid)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.cache.join("s3files.log")).unwrap_or_default()
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            // SAFETY: kill(2) on the daemon this test started (checked by its cmdline).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        force_unmount(&self.mnt);
    }
}

#[test]
fn mount_t_s3files_and_fstab_mount_through_the_helper_and_umount_exports() {
    let server = S3Server::start();
    server.create_bucket("helper");
    server.put("helper", "seed.txt", "from the bucket", &[]);
    let dir = tempfile::tempdir().unwrap();
    let guard = MountGuard {
        mnt: dir.path().join("mnt"),
        cache: dir.path().join("cache"),
    };
    std::fs::create_dir(&guard.mnt).unwrap();
    let mnt = guard.mnt.to_str().unwrap().to_string();
    let cache = guard.cache.to_str().unwrap().to_string();
    let _link = HelperLink::install();

    // A bad option: a clear error, nothing mounted, no daemon.
    let bad = format!(
        "endpoint-url={},force-path-style,no-such-option=1",
        server.endpoint
    );
    let out = run("mount", &["-t", "s3files", "s3://helper", &mnt, "-o", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad option accepted: {stderr}");
    assert!(
        stderr.contains("mount.s3files: error: unknown option 'no-such-option'"),
        "{stderr}"
    );
    assert!(!is_mounted(&guard.mnt));
    // A value s3files' own parser refuses is named as the flag it maps to.
    let bad = format!("endpoint-url={},write-back-delay=soon", server.endpoint);
    let out = run("mount", &["-t", "s3files", "s3://helper", &mnt, "-o", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad value accepted: {stderr}");
    assert!(stderr.contains("--write-back-delay"), "{stderr}");
    assert!(!is_mounted(&guard.mnt));

    // mount -t s3files: live when mount(8) returns.
    let options = format!(
        "endpoint-url={},force-path-style,write-back-delay=1s,cache-dir={cache},\
         defaults,_netdev,nofail,x-systemd.requires=network-online.target",
        server.endpoint
    );
    let out = run(
        "mount",
        &["-t", "s3files", "s3://helper", &mnt, "-o", &options],
    );
    assert!(
        out.status.success(),
        "mount -t s3files failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        guard.log()
    );
    assert!(is_mounted(&guard.mnt));
    let seed = bounded(LIMIT, "read seed.txt", {
        let path = guard.mnt.join("seed.txt");
        move || std::fs::read_to_string(path)
    })
    .unwrap();
    assert_eq!(seed, "from the bucket");
    let pid = guard.daemon_pid().expect("the daemon runs");
    bounded(LIMIT, "write new.txt", {
        let path = guard.mnt.join("new.txt");
        move || std::fs::write(path, "written through mount(8)")
    })
    .unwrap();
    assert_answers(&guard.mnt, Duration::from_secs(5));

    // umount(8): the daemon exports what is pending and exits.
    let out = run("umount", &[&mnt]);
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&guard.mnt));
    assert!(
        wait_for(Duration::from_secs(40), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z"))),
        "the daemon did not exit after umount; log:\n{}",
        guard.log()
    );
    assert!(server.exists("helper", "new.txt"), "log:\n{}", guard.log());
    assert_eq!(server.get("helper", "new.txt"), b"written through mount(8)");
    assert!(guard.log().contains("s3 requests:"), "no exit summary");

    // An fstab line (mount -T reads another fstab than /etc/fstab): `mount DIR` alone,
    // with a read-only mount this time.
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# s3files test\ns3://helper {mnt} s3files \
             endpoint-url={},force-path-style,ro,cache-dir={cache},noauto 0 0\n",
            server.endpoint
        ),
    )
    .unwrap();
    let out = run("mount", &["-T", fstab.to_str().unwrap(), &mnt]);
    assert!(
        out.status.success(),
        "mount from fstab failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        guard.log()
    );
    let text = bounded(LIMIT, "read new.txt", {
        let path = guard.mnt.join("new.txt");
        move || std::fs::read_to_string(path)
    })
    .unwrap();
    assert_eq!(text, "written through mount(8)");
    let refused = bounded(LIMIT, "write on ro", {
        let path = guard.mnt.join("other.txt");
        move || std::fs::write(path, "x")
    });
    assert_eq!(
        refused.unwrap_err().raw_os_error(),
        Some(libc::EROFS),
        "ro maps to --read-only"
    );
    assert_answers(&guard.mnt, Duration::from_secs(5));
    let out = run("umount", &[&mnt]);
    assert!(out.status.success());
    assert!(!is_mounted(&guard.mnt));
    drop(guard);
}

/// The root's `pending-exports: N (B bytes, ...)` numbers.
fn pending(root: &Path) -> (u64, u64) {
    let status = status_xattr(root, Duration::from_secs(10));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("pending-exports: "))
        .unwrap_or_else(|| panic!("no pending-exports line:\n{status}"));
    let (files, rest) = line.split_once(" (").unwrap();
    let (bytes, _) = rest.split_once(" bytes").unwrap();
    (files.parse().unwrap(), bytes.parse().unwrap())
}

/// Writes `count` files of `size` bytes under `dir` (on the mount).
fn write_files(dir: PathBuf, count: usize, size: usize) {
    bounded(LIMIT, "write files", move || {
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..count {
            std::fs::write(dir.join(format!("f{i:04}")), vec![b'x'; size]).unwrap();
        }
    });
}

#[test]
fn root_status_summarises_the_mount_and_sync_shows_progress() {
    let server = S3Server::start();
    server.create_bucket("progress");
    let mount = BackgroundMount::start(
        &server,
        "s3://progress",
        &["--write-back-delay", "600s", "--poll-interval", "7s"],
        None,
    );
    let root = mount.path.clone();

    // The root's summary block: nothing pending yet.
    let status = status_xattr(&root, Duration::from_secs(10));
    for line in [
        "S3Key: ",
        "FilePath: /",
        "state: ",
        "passthrough: ",
        "summary (whole mount):",
        "pending-exports: 0 (0 bytes",
        "oldest-pending-change: none",
        "conflicts: 0 since mount",
        "lost+found: 0 files",
        "cache-use: disk ",
        "events: off (changes made in S3 found by polling watched directories every 7s)",
    ] {
        assert!(status.contains(line), "no {line:?} in:\n{status}");
    }

    // Under a pseudo-terminal (script(1)): a progress bar, then the summary line.
    const FILES: usize = 400;
    const SIZE: usize = 4096;
    write_files(root.join("tty"), FILES, SIZE);
    // One change per file (the new directory may be one more), the files' bytes staged.
    let (changes, bytes) = pending(&root);
    assert!(
        (FILES..=FILES + 1).contains(&(changes as usize)),
        "{changes}"
    );
    assert_eq!(bytes, (FILES * SIZE) as u64);
    let status = status_xattr(&root, Duration::from_secs(10));
    assert!(
        status.contains("oldest-pending-change: ") && !status.contains("change: none"),
        "{status}"
    );
    let file_status = status_xattr(&root.join("tty/f0000"), Duration::from_secs(10));
    assert!(
        !file_status.contains("summary (whole mount)"),
        "the summary is the root's only:\n{file_status}"
    );
    let command = format!("{} sync {}", s3files_bin().display(), root.display());
    let out = run("script", &["-qec", &command, "/dev/null"]);
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sync under a terminal failed: {tty}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tty.contains("syncing [") && tty.contains(&format!("/{changes} changes")),
        "no progress bar on the terminal:\n{tty:?}"
    );
    assert!(tty.contains("left, "), "no bytes left / rate:\n{tty:?}");
    assert!(
        tty.contains(&format!(
            "synced {changes} change(s) ({}) in ",
            s3files::units::format_size(bytes)
        )),
        "no summary:\n{tty:?}"
    );
    assert_eq!(pending(&root), (0, 0));
    for i in [0, FILES / 2, FILES - 1] {
        assert!(server.exists("progress", &format!("tty/f{i:04}")));
    }

    // Not on a terminal: exactly one line, the summary.
    write_files(root.join("pipe"), 150, 1000);
    let (changes, bytes) = pending(&root);
    assert!((150..=151).contains(&changes), "{changes}");
    let (out, _) = run_s3files(&["sync", root.to_str().unwrap()], &[], LIMIT);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "synced {changes} change(s) ({}) in ",
            s3files::units::format_size(bytes)
        )) && lines[0].ends_with(" s"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(server.exists("progress", "pipe/f0149"));
    assert_answers(&root, Duration::from_secs(5));
}
