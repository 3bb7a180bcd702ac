//! Empty private files made ahead of time by a background thread, so that creating a
//! staging file on a request links a ready inode instead of allocating one. On ext4
//! without a journal (these machines) allocating an inode scans past every inode freed
//! in the last half minute: 0.4-0.8 ms per create after a burst of deletions, against
//! 0.06-0.1 ms otherwise (docs/BENCHMARKS.md, untar). The thread pays that on the other
//! core while requests go on.
//!
//! The files are `O_TMPFILE`s of the staging directory: nameless until taken, so a
//! crash leaves nothing behind, and making one holds no lock the requests need (a
//! named create would hold its directory's lock through the allocation). A file is
//! taken with `linkat`, which never replaces an existing name: the caller then
//! truncates that file in place, as without a pool.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::local_state::FILE_MODE;

/// Files kept ready; the thread fills the pool up again when half of them are gone.
const TARGET: usize = 32;
/// How long the thread waits before trying again after a failed create (a full disk).
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct FilePool {
    shared: Arc<Shared>,
    /// Started by the first `take`: mounts that never create a file make no pool.
    started: OnceLock<()>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    ready: Vec<File>,
    /// The pool is dropped, or cannot work here: the thread ends, `take` gives nothing.
    closed: bool,
}

impl FilePool {
    /// A pool of files for `dir`, the directory they are linked into.
    pub fn new(dir: PathBuf) -> Self {
        FilePool {
            shared: Arc::new(Shared {
                dir,
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
            }),
            started: OnceLock::new(),
        }
    }

    /// An empty private file, linked at `dest` (in the pool's directory); `None` if
    /// the pool is empty, `dest` exists, or this file system cannot do it (the caller
    /// then creates the file itself).
    pub fn take(&self, dest: &Path) -> Option<File> {
        self.started.get_or_init(|| self.start());
        let file = {
            let mut state = self.shared.lock();
            let file = state.ready.pop()?;
            if state.ready.len() == TARGET / 2 {
                self.shared.wake.notify_one();
            }
            file
        };
        match link(&file, dest) {
            Ok(()) => Some(file),
            // No /proc, or a file system that cannot link these: the direct way works.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::ENOENT | libc::EXDEV | libc::EPERM | libc::EACCES | libc::EOPNOTSUPP
                    )
                ) =>
            {
                self.shared.turn_off(&e);
                None
            }
            // The name exists (the caller truncates it), or the disk is full: the
            // file waits for the next create.
            Err(_) => {
                self.shared.put(file);
                None
            }
        }
    }

    fn start(&self) {
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("s3files-file-pool".into())
            .spawn(move || shared.refill());
        if let Err(e) = spawned {
            // Creates then make their files themselves, as without a pool.
            warn!("cannot start the staging file pool: {e}");
            self.shared.close();
        }
    }

    /// Ends the thread and closes the ready files now; later takes give nothing.
    pub fn stop(&self) {
        self.shared.close();
    }

    #[cfg(test)]
    pub fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }

    /// Waits (at most 10 s) until the thread has `n` files ready.
    #[cfg(test)]
    #[track_caller]
    pub fn wait_ready(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.ready() < n {
            if std::time::Instant::now() >= deadline {
                let state = self.shared.lock();
                panic!(
                    "the pool never filled: {} ready of {n}, closed: {}",
                    state.ready.len(),
                    state.closed
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FilePool {
    /// Ends the thread; the files it made vanish with their descriptors.
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This file system cannot give files out this way: creates make their own from now
    /// on, which the log says once.
    fn turn_off(&self, why: &std::io::Error) {
        info!("creates make their staging files themselves (no file pool here): {why}");
        self.close();
    }

    /// Adds a ready file, unless the pool is closed or already full (a take gave a file
    /// back while the thread added one); such a file is closed, with no lock held.
    /// Returns whether the pool is still open.
    fn put(&self, file: File) -> bool {
        let (open, extra) = {
            let mut state = self.lock();
            if state.closed || state.ready.len() >= TARGET {
                (!state.closed, Some(file))
            } else {
                state.ready.push(file);
                (true, None)
            }
        };
        drop(extra);
        open
    }

    fn close(&self) {
        let ready = {
            let mut state = self.lock();
            state.closed = true;
            self.wake.notify_all();
            std::mem::take(&mut state.ready)
        };
        drop(ready);
    }

    /// The thread: once the pool is half empty, fills it up again, one file at a time
    /// with no lock held. A failed create (a full disk) waits `RETRY` before the next
    /// try; a file system without `O_TMPFILE` closes the pool.
    fn refill(&self) {
        let mut filling = true;
        loop {
            {
                let mut state = self.lock();
                loop {
                    if state.closed {
                        return;
                    }
                    if state.ready.len() >= TARGET {
                        filling = false;
                    } else if state.ready.len() <= TARGET / 2 {
                        filling = true;
                    }
                    if filling {
                        break;
                    }
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            }
            match OpenOptions::new()
                .read(true)
                .write(true)
                .mode(FILE_MODE)
                .custom_flags(libc::O_TMPFILE)
                .open(&self.dir)
            {
                Ok(file) => {
                    if !self.put(file) {
                        return;
                    }
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                    self.turn_off(&e);
                    return;
                }
                Err(e) => {
                    debug!("cannot make a staging file ahead of time: {e}");
                    let state = self.lock();
                    if state.closed {
                        return;
                    }
                    let _ = self.wake.wait_timeout(state, RETRY);
                }
            }
        }
    }
}

/// Gives the nameless `file` the name `dest`; fails with `EEXIST` if the name is taken.
/// Through /proc, as linking a descriptor directly (`AT_EMPTY_PATH`) needs a privilege.
fn link(file: &File, dest: &Path) -> std::io::Result<()> {
    let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let from =
        CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|_| invalid())?;
    let to = CString::new(dest.as_os_str().as_bytes()).map_err(|_| invalid())?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn takes_private_empty_files_and_never_replaces_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(dir.path().to_path_buf());
        // Started as the first take would, but with nothing taken, so that the thread
        // fills the pool and then idles until takes bring it down to half. (Takes made
        // while it still fills may leave it short of full yet above half, which by
        // design waits for more takes: the steps below do not rely on that.)
        pool.started.get_or_init(|| pool.start());
        pool.wait_ready(TARGET);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "ready files have no name"
        );

        let taken = dir.path().join("taken");
        std::fs::write(&taken, b"theirs").unwrap();
        assert!(pool.take(&taken).is_none(), "an existing name is kept");
        assert_eq!(std::fs::read(&taken).unwrap(), b"theirs");
        assert_eq!(pool.ready(), TARGET, "the file went back to the pool");

        let first = dir.path().join("first");
        let mut file = pool.take(&first).expect("a ready file");
        file.write_all(b"bytes").unwrap();
        let mut read = String::new();
        File::open(&first)
            .unwrap()
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "bytes", "the name is the file handed out");
        let mode = std::fs::metadata(&first).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Taking the pool down to half wakes the thread, which fills it up again.
        let mut taken = 0;
        while pool.ready() > TARGET / 2 {
            assert!(taken < 10 * TARGET, "takes never brought the pool to half");
            let name = dir.path().join(format!("f{taken}"));
            assert_eq!(pool.take(&name).unwrap().metadata().unwrap().len(), 0);
            taken += 1;
        }
        pool.wait_ready(TARGET);
    }

    #[test]
    fn a_stopped_pool_ends_its_thread_and_closes_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(dir.path().to_path_buf());
        pool.take(&dir.path().join("x"));
        pool.wait_ready(1);
        pool.stop();
        assert_eq!(pool.ready(), 0);
        assert!(pool.take(&dir.path().join("y")).is_none());
        // The thread holds the only other reference to the shared state.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&pool.shared) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread did not end"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_pool_that_cannot_link_closes_and_gives_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(dir.path().to_path_buf());
        pool.take(&dir.path().join("x"));
        pool.wait_ready(1);
        // A destination on another file system (or none) cannot be linked.
        assert!(pool.take(Path::new("/nonexistent-dir/x")).is_none());
        assert_eq!(pool.ready(), 0, "closed");
        assert!(pool.take(&dir.path().join("y")).is_none());
    }
}
