//! The daemon's local state directory, CACHE_DIR (the data cache in `cache/` is one part
//! of it): its layout, keeping it private to the daemon's user, the lock that gives it to
//! one daemon at a time, and the report a daemon leaves there at exit for `s3files
//! unmount`.
//!
//! Privacy has two layers (docs/CONFIGURATION.md, "Local state"): `s3files mount` sets
//! its umask to 077 before it creates anything, and the directories are created with
//! mode 0700 (tightened to it if an older version left them looser), which alone closes
//! every file inside them to other users.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A background daemon's stdout and stderr.
pub const LOG_FILE: &str = "s3files.log";
/// Mode of every directory the daemon creates under CACHE_DIR (and of CACHE_DIR).
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the daemon creates under CACHE_DIR.
pub const FILE_MODE: u32 = 0o600;

/// Creates (or truncates) a file under the cache dir, readable and writable by the
/// daemon's user only, whatever the umask.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Held (flock) by the daemon that owns the directory; holds its pid.
const LOCK_FILE: &str = "lock";
/// Written by a daemon just before it releases the lock at exit.
const EXIT_REPORT: &str = "exit-report";
/// Where the components keep their state: the disk tier of the data cache, the staged
/// bytes of unexported files, the export journal, local copies that lost a conflict.
const SUBDIRS: [&str; 4] = ["data", "staging", "journal", "lost+found"];
/// Subdirectories that hold a few known files, tightened file by file. The others may
/// hold millions of files; their 0700 directory already keeps other users out.
const SMALL_SUBDIRS: [&str; 1] = ["journal"];
/// How often a waiter looks at a lock held by another process.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Makes everything this process creates from now on private to its user. Called first
/// thing by `s3files mount`, before any file or directory exists.
pub fn set_private_umask() {
    // SAFETY: umask(2) has no preconditions; it only changes this process's mask.
    unsafe { libc::umask(0o077) };
}

/// Creates CACHE_DIR (with missing parents) and its subdirectories with mode 0700, and
/// proves it writable. Directories that already exist keep their modes here; see
/// `make_private`.
pub fn create(dir: &Path) -> Result<(), String> {
    let unwritable =
        |e: std::io::Error| format!("cache dir {} is not writable: {e}", dir.display());
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(unwritable)?;
    for sub in SUBDIRS {
        match DirBuilder::new().mode(DIR_MODE).create(dir.join(sub)) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(unwritable(e)),
            _ => {}
        }
    }
    let probe = dir.join(".write-test");
    create_private(&probe)
        .and_then(|mut file| file.write_all(b"ok"))
        .map_err(unwritable)?;
    std::fs::remove_file(&probe).map_err(unwritable)?;
    Ok(())
}

/// Takes group and other permissions away from what an older version (or another tool)
/// left readable in CACHE_DIR: the directory itself, every entry directly in it, and the
/// files of its small subdirectories. Returns the paths it tightened. Refuses a CACHE_DIR
/// owned by another user (that user could read it whatever its mode) and anything it
/// cannot chmod, with a one-line reason.
pub fn make_private(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let cannot = |path: &Path, e: std::io::Error| format!("cannot check {}: {e}", path.display());
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let meta = std::fs::metadata(dir).map_err(|e| cannot(dir, e))?;
    if meta.uid() != euid {
        return Err(format!(
            "cache dir {} belongs to uid {}, not to this daemon's user (uid {euid}): its \
             files would not be private; use a cache dir of your own",
            dir.display(),
            meta.uid()
        ));
    }
    let mut tightened = Vec::new();
    tighten(dir, &meta, &mut tightened)?;
    for entry in std::fs::read_dir(dir).map_err(|e| cannot(dir, e))? {
        let path = entry.map_err(|e| cannot(dir, e))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| cannot(&path, e))?;
        if meta.file_type().is_symlink() {
            continue; // the daemon creates none; a chmod would follow it elsewhere
        }
        tighten(&path, &meta, &mut tightened)?;
        let small = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| SMALL_SUBDIRS.contains(&n));
        if meta.is_dir() && small {
            for inner in std::fs::read_dir(&path).map_err(|e| cannot(&path, e))? {
                let inner = inner.map_err(|e| cannot(&path, e))?.path();
                let meta = std::fs::symlink_metadata(&inner).map_err(|e| cannot(&inner, e))?;
                if !meta.file_type().is_symlink() {
                    tighten(&inner, &meta, &mut tightened)?;
                }
            }
        }
    }
    Ok(tightened)
}

fn tighten(path: &Path, meta: &std::fs::Metadata, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, Permissions::from_mode(mode & 0o700)).map_err(|e| {
        format!(
            "cannot make {} private (mode {mode:o}, owner uid {}): {e}",
            path.display(),
            meta.uid()
        )
    })?;
    out.push(path.to_path_buf());
    Ok(())
}

/// CACHE_DIR's lock, held for the daemon's whole life: two daemons never share one
/// staging area and journal.
#[derive(Debug)]
pub struct CacheDirLock {
    file: File,
    dir: PathBuf,
}

/// Why `lock` gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockBusy {
    /// A live mount uses the directory.
    Mounted(PathBuf),
    /// Another daemon (pid if known) held it for the whole wait.
    Held(Option<u32>),
}

/// Takes CACHE_DIR's lock and writes this process's pid into it. A daemon that is exiting
/// (its mount gone, its last exports under way) still holds the lock: `lock` waits for it
/// up to `wait`, calling `waiting` once with its pid when it starts to wait. `is_mounted`
/// answers whether a live mount uses the directory; then there is nothing to wait for.
pub fn lock(
    dir: &Path,
    wait: Duration,
    is_mounted: impl Fn(&Path) -> Option<PathBuf>,
    mut waiting: impl FnMut(Option<u32>),
) -> Result<Result<CacheDirLock, LockBusy>, std::io::Error> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(FILE_MODE)
        .open(dir.join(LOCK_FILE))?;
    let start = Instant::now();
    let mut told = false;
    while !try_flock(&file, libc::LOCK_EX)? {
        if let Some(mountpoint) = is_mounted(dir) {
            return Ok(Err(LockBusy::Mounted(mountpoint)));
        }
        let holder = read_pid(dir);
        if start.elapsed() >= wait {
            return Ok(Err(LockBusy::Held(holder)));
        }
        if !told {
            waiting(holder);
            told = true;
        }
        std::thread::sleep(LOCK_POLL);
    }
    file.set_len(0)?;
    file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
    // A report left by the previous daemon must not be taken for this one's.
    match std::fs::remove_file(dir.join(EXIT_REPORT)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(Ok(CacheDirLock {
        file,
        dir: dir.to_path_buf(),
    }))
}

impl CacheDirLock {
    /// Records how many changes were still not exported when this daemon stopped, for
    /// `s3files unmount`. Written before the lock is released, so whoever sees the lock
    /// free finds the report.
    pub fn write_exit_report(&self, pending: usize) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{EXIT_REPORT}.tmp"));
        let mut file = create_private(&tmp)?;
        file.write_all(format!("pending: {pending}\n").as_bytes())?;
        std::fs::rename(&tmp, self.dir.join(EXIT_REPORT))
    }

    /// Releases the lock (also done by dropping it, or by the process's exit).
    pub fn release(self) {
        // SAFETY: flock on an fd we own; no memory is involved.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The pid written by the daemon holding (or last holding) CACHE_DIR's lock.
pub fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(LOCK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Waits until no daemon holds CACHE_DIR's lock: Ok(true) once free (or if there is no
/// lock file at all), Ok(false) if it was still held after `limit`.
pub fn wait_released(dir: &Path, limit: Duration) -> std::io::Result<bool> {
    let file = match File::open(dir.join(LOCK_FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let start = Instant::now();
    // A shared lock, dropped with the file: it only proves the daemon let go.
    while !try_flock(&file, libc::LOCK_SH)? {
        if start.elapsed() >= limit {
            return Ok(false);
        }
        std::thread::sleep(LOCK_POLL);
    }
    Ok(true)
}

/// What the last daemon on CACHE_DIR reported at exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    /// Changes left in the journal, exported by the next mount with this cache dir.
    pub pending: usize,
}

/// The last daemon's exit report; None if it left none (it was killed, or is running).
pub fn read_exit_report(dir: &Path) -> Option<ExitReport> {
    let text = std::fs::read_to_string(dir.join(EXIT_REPORT)).ok()?;
    let pending = text
        .lines()
        .find_map(|l| l.strip_prefix("pending: "))?
        .trim()
        .parse()
        .ok()?;
    Some(ExitReport { pending })
}

/// flock(2) without blocking: Ok(false) if another process holds a conflicting lock.
fn try_flock(file: &File, operation: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on an fd we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(false),
        _ => Err(error),
    }
}

/// The file-system type (statfs `f_type`) of the file system holding `path`.
pub fn fs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_private_directories() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/cache");
        create(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(
            mode(&root.path().join("a")),
            DIR_MODE,
            "created parents too"
        );
        for sub in SUBDIRS {
            assert_eq!(mode(&dir.join(sub)), DIR_MODE, "{sub}");
        }
        assert!(!dir.join(".write-test").exists());
        assert!(make_private(&dir).unwrap().is_empty(), "nothing to tighten");
    }

    #[test]
    fn tightens_what_an_older_version_left_open() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(dir.join("data")).unwrap();
        std::fs::create_dir(dir.join("journal")).unwrap();
        for (path, m) in [
            (dir.clone(), 0o755),
            (dir.join("data"), 0o755),
            (dir.join("journal"), 0o750),
        ] {
            std::fs::set_permissions(&path, Permissions::from_mode(m)).unwrap();
        }
        for file in ["s3files.log", "journal/log", "data/block"] {
            std::fs::write(dir.join(file), "x").unwrap();
            std::fs::set_permissions(dir.join(file), Permissions::from_mode(0o644)).unwrap();
        }
        let mut tightened = make_private(&dir).unwrap();
        tightened.sort();
        let mut expected = vec![
            dir.clone(),
            dir.join("data"),
            dir.join("journal"),
            dir.join("journal/log"),
            dir.join("s3files.log"),
        ];
        expected.sort();
        assert_eq!(tightened, expected);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("journal")), 0o700);
        assert_eq!(mode(&dir.join("journal/log")), 0o600);
        assert_eq!(mode(&dir.join("s3files.log")), 0o600);
        // Not walked: its directory keeps everyone else out.
        assert_eq!(mode(&dir.join("data/block")), 0o644);
    }

    #[test]
    fn a_cache_dir_of_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can give a directory away
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("theirs");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let reason = make_private(&dir).unwrap_err();
        assert!(reason.contains("belongs to uid 65534"), "{reason}");
    }

    #[test]
    fn lock_records_pid_and_exit_report() {
        let dir = tempfile::tempdir().unwrap();
        let lock = lock(dir.path(), Duration::ZERO, |_| None, |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(read_pid(dir.path()), Some(std::process::id()));
        assert_eq!(mode(&dir.path().join(LOCK_FILE)) & 0o077, 0);
        assert_eq!(read_exit_report(dir.path()), None);
        lock.write_exit_report(3).unwrap();
        assert_eq!(
            read_exit_report(dir.path()),
            Some(ExitReport { pending: 3 })
        );
        lock.release();
        assert!(wait_released(dir.path(), Duration::ZERO).unwrap());
        // The next daemon clears the old report.
        let again = super::lock(dir.path(), Duration::ZERO, |_| None, |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(read_exit_report(dir.path()), None);
        drop(again);
    }

    #[test]
    fn a_held_lock_is_waited_for_unless_its_mount_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path(), Duration::ZERO, |_| None, |_| {})
            .unwrap()
            .unwrap();
        assert!(!wait_released(dir.path(), Duration::from_millis(100)).unwrap());
        // Exiting daemon (no live mount): waited for, then given up on.
        let mut told = Vec::new();
        let start = Instant::now();
        let busy = lock(
            dir.path(),
            Duration::from_millis(300),
            |_| None,
            |pid| told.push(pid),
        )
        .unwrap()
        .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(busy, LockBusy::Held(Some(std::process::id())));
        assert_eq!(told, vec![Some(std::process::id())]);
        // Live mount: refused at once.
        let start = Instant::now();
        let busy = lock(
            dir.path(),
            Duration::from_secs(30),
            |_| Some(PathBuf::from("/mnt/x")),
            |_| panic!("no wait for a live mount"),
        )
        .unwrap()
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(busy, LockBusy::Mounted(PathBuf::from("/mnt/x")));
        // Released while a waiter waits: it gets the lock.
        let waiter = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                lock(&dir, Duration::from_secs(10), |_| None, |_| {})
                    .unwrap()
                    .is_ok()
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        held.release();
        assert!(waiter.join().unwrap());
    }
}
