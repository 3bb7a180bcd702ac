//! Reading the kernel's mount table (/proc/self/mountinfo) and unmounting.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Our mounts' source field in the mount table starts with this (`s3files:BUCKET/PREFIX`).
pub const SOURCE_PREFIX: &str = "s3files:";

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

/// Unmounts an s3files mount and waits until the kernel no longer lists it.
pub fn unmount(path: &Path) -> Result<(), UnmountError> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let entry = find_mount(&path).ok_or_else(|| UnmountError::NotMounted(path.clone()))?;
    if !entry.is_s3files() {
        return Err(UnmountError::NotOurs(path, entry.fstype));
    }
    match umount2(&path, 0) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(UnmountError::Busy(path)),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fusermount_unmount(&path)?,
        Err(e) => return Err(UnmountError::Failed(path, e.to_string())),
    }
    wait_unmounted(&path, Duration::from_secs(10))
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
            unmount(dir.path()),
            Err(UnmountError::NotMounted(_))
        ));
    }
}
