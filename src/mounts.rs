//! Reading the kernel's mount table (/proc/self/mountinfo) and unmounting.
//!
//! An s3files mount names its cache dir in its source field
//! (`s3files:BUCKET/PREFIX?cache=CACHE_DIR`), so `s3files unmount MOUNTPOINT` can find the
//! daemon's lock and exit report there and wait for the daemon to finish: the kernel
//! keeps that link exactly as long as the mount exists, and nothing is left behind when a
//! daemon dies.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::local_state;

/// Our mounts' source field in the mount table starts with this (`s3files:BUCKET/PREFIX`).
pub const SOURCE_PREFIX: &str = "s3files:";
/// Separates bucket and prefix from the cache dir in the source field. A `?` in the
/// prefix is written `%3F` there, so the first `?` is always this separator.
const CACHE_MARK: &str = "?cache=";
/// How long `s3files unmount` waits for the daemon to export what is pending and exit:
/// the daemon's own limit for that export, plus time to log its summary and stop.
pub const DAEMON_EXIT_WAIT: Duration = Duration::from_secs(40);
/// How long `s3files unmount` waits quietly before saying that it waits for the daemon.
const QUIET_WAIT: Duration = Duration::from_secs(1);

/// The source field an s3files mount gets: `s3files:BUCKET/PREFIX?cache=CACHE_DIR`.
pub fn source_name(bucket: &str, prefix: &str, cache_dir: &Path) -> String {
    format!(
        "{SOURCE_PREFIX}{bucket}/{}{CACHE_MARK}{}",
        prefix.replace('?', "%3F"),
        cache_dir.display()
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// Whether this is an s3files mount (a FUSE mount whose source we named).
    pub fn is_s3files(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source.starts_with(SOURCE_PREFIX)
    }

    /// The cache dir named in the source field (None for another file system, or a
    /// mount made by an s3files that did not name it).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if !self.is_s3files() {
            return None;
        }
        let (_, dir) = self.source.split_once(CACHE_MARK)?;
        Some(PathBuf::from(dir)).filter(|d| d.is_absolute())
    }
}

/// The live s3files mount using `cache_dir`, if any.
pub fn mount_using_cache_dir(cache_dir: &Path) -> Option<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = std::fs::canonicalize(cache_dir).unwrap_or_else(|_| cache_dir.to_path_buf());
    parse_mountinfo(&table)
        .into_iter()
        .find(|entry| entry.cache_dir().as_deref() == Some(wanted.as_path()))
        .map(|entry| entry.mountpoint)
}

/// The mount table entry for `path`, if something is mounted exactly there.
pub fn find_mount(path: &Path) -> Option<MountEntry> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&table)
        .into_iter()
        .rev() // the last entry for a path is the one on top
        .find(|entry| entry.mountpoint == path)
}

/// Parses mountinfo lines: `id parent major:minor root mountpoint opts... - fstype source`.
pub fn parse_mountinfo(table: &str) -> Vec<MountEntry> {
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mountpoint = fields.nth(4)?;
            let mut rest = fields.skip_while(|f| *f != "-");
            rest.next()?;
            let fstype = rest.next()?;
            let source = rest.next().unwrap_or_default();
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space, etc.).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = (u32::from(d[0] - b'0') << 6)
                    | (u32::from(d[1] - b'0') << 3)
                    | u32::from(d[2] - b'0');
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    #[error("{0} is not mounted")]
    NotMounted(PathBuf),
    #[error("{0} is not an s3files mount (it is {1})")]
    NotOurs(PathBuf, String),
    #[error("{0} is busy: a process has files open there (close them, or use umount -l)")]
    Busy(PathBuf),
    #[error("cannot unmount {0}: {1}")]
    Failed(PathBuf, String),
    #[error("{0} was still mounted after {1:?}")]
    Timeout(PathBuf, Duration),
}

/// How an unmount ended, once the mount was gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmounted {
    /// The daemon exported every pending change, released its cache dir and exited.
    Complete,
    /// The daemon exited with `pending` changes not exported; they wait in the journal
    /// of `cache_dir` for the next mount with that cache dir.
    Pending { pending: usize, cache_dir: PathBuf },
    /// The mount is gone, but whether everything reached S3 is unknown: why.
    Unconfirmed(String),
}

/// Unmounts an s3files mount, then waits (at most `DAEMON_EXIT_WAIT`) until its daemon
/// has exported what it can, released the cache dir and exited. `progress` gets a line
/// to show when the wait is long enough to mention.
pub fn unmount(path: &Path, progress: &mut dyn FnMut(&str)) -> Result<Unmounted, UnmountError> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let entry = find_mount(&path).ok_or_else(|| UnmountError::NotMounted(path.clone()))?;
    if !entry.is_s3files() {
        return Err(UnmountError::NotOurs(path, entry.fstype));
    }
    let cache_dir = entry.cache_dir();
    let pid = cache_dir.as_deref().and_then(local_state::read_pid);
    match umount2(&path, 0) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(UnmountError::Busy(path)),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fusermount_unmount(&path)?,
        Err(e) => return Err(UnmountError::Failed(path, e.to_string())),
    }
    wait_unmounted(&path, Duration::from_secs(10))?;
    let Some(cache_dir) = cache_dir else {
        return Ok(Unmounted::Unconfirmed(
            "its daemon (an older s3files) does not say where its cache dir is; it exports \
             what is pending on its own"
                .into(),
        ));
    };
    Ok(wait_for_daemon(&cache_dir, pid, progress))
}

/// After the unmount: waits for the daemon's lock to be released, then for the process
/// to be gone, and reads its exit report.
fn wait_for_daemon(
    cache_dir: &Path,
    pid: Option<u32>,
    progress: &mut dyn FnMut(&str),
) -> Unmounted {
    let daemon = pid.map_or_else(
        || "the daemon".to_string(),
        |pid| format!("the daemon (pid {pid})"),
    );
    let mut released = local_state::wait_released(cache_dir, QUIET_WAIT);
    if matches!(released, Ok(false)) {
        progress(&format!(
            "waiting for {daemon} to export pending changes (at most {}s)",
            DAEMON_EXIT_WAIT.as_secs()
        ));
        released = local_state::wait_released(cache_dir, DAEMON_EXIT_WAIT - QUIET_WAIT);
    }
    match released {
        Ok(true) => {}
        Ok(false) => {
            return Unmounted::Unconfirmed(format!(
                "{daemon} was still running after {}s; it goes on exporting in the \
                 background (see {})",
                DAEMON_EXIT_WAIT.as_secs(),
                cache_dir.join(local_state::LOG_FILE).display()
            ))
        }
        Err(e) => {
            return Unmounted::Unconfirmed(format!(
                "cannot watch the lock of {daemon} in {}: {e}",
                cache_dir.display()
            ))
        }
    }
    if let Some(pid) = pid {
        // The lock goes with the process's last steps; the process itself follows at once.
        wait_exited(pid, Duration::from_secs(2));
    }
    match local_state::read_exit_report(cache_dir) {
        Some(report) if report.pending == 0 => Unmounted::Complete,
        Some(report) => Unmounted::Pending {
            pending: report.pending,
            cache_dir: cache_dir.to_path_buf(),
        },
        None => Unmounted::Unconfirmed(format!(
            "{daemon} exited without its final report (was it killed?); changes it had not \
             exported stay in the journal of {} for the next mount",
            cache_dir.display()
        )),
    }
}

/// Polls until process `pid` has exited, at most `limit`.
fn wait_exited(pid: u32, limit: Duration) {
    let start = Instant::now();
    while is_running(pid) && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a process that has not exited. A zombie has exited: the daemon is
/// not our child, and whoever reaps it may take its time.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`; comm may hold spaces and parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x") | None)
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}: {1}")]
    Path(PathBuf, std::io::Error),
    #[error("{0} is not on an s3files mount")]
    NotOurs(PathBuf),
    #[error("some exports under {path} failed ({errno}); {detail}")]
    Failed {
        path: PathBuf,
        errno: std::io::Error,
        detail: String,
    },
}

/// `s3files sync PATH`: asks the daemon (through the virtual `user.s3files.sync`
/// attribute) to export everything pending under PATH, and waits for it.
pub fn sync(path: &Path) -> Result<(), SyncError> {
    // Checked first: anywhere but an s3files mount the sync attribute would just be
    // stored on the file (user xattrs) and nothing exported.
    let (path, c_path, _) = on_mount(path)?;
    sync_checked(path, c_path)
}

/// What the mount has left to export, read from its root's status while a sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pending {
    pub files: u64,
    pub bytes: u64,
}

/// `sync`, reporting progress: the export waits inside the kernel's setxattr, so that
/// runs on a thread while this one reads the mount root's `pending-exports` line every
/// `every` and hands it to `progress` (first before the sync starts). The numbers are
/// the whole mount's; a sync of a subdirectory ends when its own part is out.
pub fn sync_with_progress(
    path: &Path,
    every: Duration,
    progress: &mut dyn FnMut(Pending),
) -> Result<(), SyncError> {
    let (path, c_path, _) = on_mount(path)?;
    let root = mount_root(&path)
        .and_then(|root| CString::new(root.as_os_str().as_bytes()).ok())
        .unwrap_or_else(|| c_path.clone());
    let read_pending = || read_status(&root).as_deref().and_then(parse_pending);
    if let Some(now) = read_pending() {
        progress(now);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sync_checked(path, c_path));
    });
    loop {
        match rx.recv_timeout(every) {
            Ok(result) => {
                if let Some(now) = read_pending() {
                    progress(now);
                }
                return result;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some(now) = read_pending() {
                    progress(now);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The thread ended without a result: it panicked, which it reports.
                return Err(SyncError::Path(
                    PathBuf::from("sync"),
                    std::io::Error::other("the sync thread stopped"),
                ));
            }
        }
    }
}

/// The `pending-exports: N (B bytes, ...)` line of a root's status.
pub fn parse_pending(status: &str) -> Option<Pending> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("pending-exports: "))?;
    let (files, rest) = line.split_once(" (")?;
    let (bytes, _) = rest.split_once(" bytes")?;
    Some(Pending {
        files: files.trim().parse().ok()?,
        bytes: bytes.trim().parse().ok()?,
    })
}

/// The s3files mount point `path` (absolute, canonical) lies on: the deepest one above
/// it in the mount table.
fn mount_root(path: &Path) -> Option<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&table)
        .into_iter()
        .filter(|entry| entry.is_s3files() && path.starts_with(&entry.mountpoint))
        .map(|entry| entry.mountpoint)
        .max_by_key(|mountpoint| mountpoint.components().count())
}

/// The sync itself, on a path known to be on a mount.
fn sync_checked(path: PathBuf, c_path: CString) -> Result<(), SyncError> {
    let name = c"user.s3files.sync";
    // SAFETY: valid C strings; a one-byte value buffer that outlives the call.
    let rc = unsafe { libc::setxattr(c_path.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    if rc == 0 {
        return Ok(());
    }
    let errno = std::io::Error::last_os_error();
    match errno.raw_os_error() {
        // A read-only mount has nothing to export.
        Some(libc::EROFS) => Ok(()),
        Some(libc::ENOTSUP) => Err(SyncError::NotOurs(path)),
        _ => {
            let detail = read_status(&c_path)
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("last-error:"))
                        .map(str::to_string)
                })
                .filter(|l| l != "last-error: none")
                .unwrap_or_else(|| {
                    "see `user.s3files.status` of the files and the daemon's log".into()
                });
            Err(SyncError::Failed {
                path,
                errno,
                detail,
            })
        }
    }
}

/// `s3files status PATH`: the daemon's `user.s3files.status` text for PATH.
pub fn status(path: &Path) -> Result<String, SyncError> {
    on_mount(path).map(|(_, _, status)| status)
}

/// PATH made absolute, as a C string, with its status text: only an s3files mount
/// answers the status attribute, so getting it proves PATH is on one.
fn on_mount(path: &Path) -> Result<(PathBuf, CString, String), SyncError> {
    let path = std::fs::canonicalize(path).map_err(|e| SyncError::Path(path.to_path_buf(), e))?;
    let c_path =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| SyncError::NotOurs(path.clone()))?;
    match read_status(&c_path) {
        Some(status) => Ok((path, c_path, status)),
        None => Err(SyncError::NotOurs(path)),
    }
}

fn read_status(c_path: &CString) -> Option<String> {
    let mut buf = vec![0u8; 16384];
    // SAFETY: valid C strings and a buffer of the length passed.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c"user.s3files.status".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).ok()
}

/// umount2(2) on a path.
pub fn umount2(path: &Path, flags: libc::c_int) -> std::io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unprivileged users unmount through the setuid helper.
fn fusermount_unmount(path: &Path) -> Result<(), UnmountError> {
    for helper in ["fusermount3", "fusermount"] {
        match std::process::Command::new(helper)
            .arg("-u")
            .arg(path)
            .output()
        {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(UnmountError::Failed(path.to_path_buf(), reason));
            }
            Err(_) => continue,
        }
    }
    Err(UnmountError::Failed(
        path.to_path_buf(),
        "permission denied and no fusermount3 found".into(),
    ))
}

/// Polls the mount table until `path` is gone from it.
pub fn wait_unmounted(path: &Path, limit: Duration) -> Result<(), UnmountError> {
    let start = Instant::now();
    while find_mount(path).is_some_and(|e| e.is_s3files()) {
        if start.elapsed() > limit {
            return Err(UnmountError::Timeout(path.to_path_buf(), limit));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let table = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                     90 22 0:50 / /mnt/with\\040space rw,nosuid shared:1 - fuse s3files:bucket/p rw\n";
        let entries = parse_mountinfo(table);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].mountpoint, PathBuf::from("/mnt/with space"));
        assert!(entries[1].is_s3files());
        assert!(!entries[0].is_s3files());
        assert_eq!(entries[1].source, "s3files:bucket/p");
    }

    #[test]
    fn the_source_names_the_cache_dir() {
        let source = source_name("b", "odd?cache=/x/", Path::new("/var/cache/my dir"));
        assert_eq!(source, "s3files:b/odd%3Fcache=/x/?cache=/var/cache/my dir");
        // As the kernel lists it (spaces escaped), and parsed back.
        let line = format!(
            "90 22 0:50 / /mnt rw - fuse {} rw\n",
            source.replace(' ', "\\040")
        );
        let entry = &parse_mountinfo(&line)[0];
        assert_eq!(entry.cache_dir(), Some(PathBuf::from("/var/cache/my dir")));
        let old = &parse_mountinfo("90 22 0:50 / /mnt rw - fuse s3files:b/p rw\n")[0];
        assert_eq!(old.cache_dir(), None);
    }

    #[test]
    fn unescape_leaves_plain_text() {
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("a\\011b"), "a\tb");
        assert_eq!(unescape("trailing\\"), "trailing\\");
        assert_eq!(unescape("short\\04"), "short\\04");
    }

    #[test]
    fn unmounting_a_plain_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            unmount(dir.path(), &mut |_| {}),
            Err(UnmountError::NotMounted(_))
        ));
    }
}
