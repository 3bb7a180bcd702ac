//! A library API to mount a bucket from Rust code, e.g. in an integration test suite: the
//! same daemon as `s3files mount --foreground`, configured by the same command-line
//! parser (so every flag of docs/CONFIGURATION.md is available and checked the same way),
//! served on a thread of the calling process, and unmounted when the guard is dropped.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! // Static test credentials and a local endpoint; never instance metadata.
//! std::env::set_var("AWS_ACCESS_KEY_ID", "test");
//! std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
//! std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
//! let dir = tempfile::tempdir()?;
//! let mount = s3files::Mount::builder("s3://my-bucket/work", dir.path())
//!     .endpoint("http://127.0.0.1:9000")
//!     .region("us-east-1")
//!     .force_path_style(true)
//!     .write_back_delay(Duration::from_millis(500))
//!     .poll_interval(Duration::from_secs(1))
//!     .start()?;
//! std::fs::write(mount.path().join("result.txt"), "42")?;
//! mount.sync()?; // in S3 now
//! println!("{}", mount.status("result.txt")?);
//! drop(mount); // unmounts, after exporting what is still pending
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The daemon logs through `tracing`: install a subscriber in the calling program to see
//! its lines (none is installed for it). It needs what a mount needs: root or FUSE
//! permissions, `/dev/fuse`, and a reachable endpoint.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::MountConfig;
use crate::daemon::{self, Host, Notifier};
use crate::{local_state, mounts};

/// How long `start` waits for the mount to go live (the bucket check has its own,
/// shorter limit; a cache dir still held by an exiting daemon is waited for).
const START_LIMIT: Duration = Duration::from_secs(90);

/// Entry point of the library API: `Mount::builder(source, mountpoint)`.
pub struct Mount;

impl Mount {
    /// A mount of `source` (`s3://BUCKET[/PREFIX]`) on the existing directory `mountpoint`.
    pub fn builder(source: impl Into<String>, mountpoint: impl AsRef<Path>) -> MountBuilder {
        MountBuilder {
            source: source.into(),
            mountpoint: mountpoint.as_ref().to_path_buf(),
            flags: Vec::new(),
        }
    }
}

/// The options of a mount, as the command line's flags.
#[derive(Debug, Clone)]
pub struct MountBuilder {
    source: String,
    mountpoint: PathBuf,
    flags: Vec<OsString>,
}

/// Why a mount did not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// An option was refused (the message is the command line's).
    #[error("invalid option: {0}")]
    Options(String),
    /// The daemon could not mount (the bucket check failed, the mount point is busy...).
    #[error("{0}")]
    Start(String),
    /// The daemon thread ended without saying why (it panicked).
    #[error("the daemon thread ended unexpectedly")]
    Crashed,
}

fn duration_flag(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl MountBuilder {
    /// `--endpoint-url`: the S3 endpoint, e.g. `http://127.0.0.1:9000`.
    pub fn endpoint(self, url: impl Into<String>) -> Self {
        self.flag("--endpoint-url", url.into())
    }

    /// `--region`.
    pub fn region(self, region: impl Into<String>) -> Self {
        self.flag("--region", region.into())
    }

    /// `--force-path-style` (most S3-compatible servers need it).
    pub fn force_path_style(self, on: bool) -> Self {
        if on {
            self.switch("--force-path-style")
        } else {
            self
        }
    }

    /// `--write-back-delay`: quiet time before a change is exported.
    pub fn write_back_delay(self, delay: Duration) -> Self {
        self.flag("--write-back-delay", duration_flag(delay))
    }

    /// `--poll-interval`: how often listed directories are listed again (zero: never).
    pub fn poll_interval(self, interval: Duration) -> Self {
        self.flag("--poll-interval", duration_flag(interval))
    }

    /// `--cache-dir`: the daemon's local state (default: per mount, under ~/.cache).
    pub fn cache_dir(self, dir: impl AsRef<Path>) -> Self {
        self.flag("--cache-dir", dir.as_ref().as_os_str())
    }

    /// `--allow-unversioned`: mount a bucket without versioning (e.g. a plain MinIO).
    pub fn allow_unversioned(self) -> Self {
        self.switch("--allow-unversioned")
    }

    /// `--read-only`.
    pub fn read_only(self) -> Self {
        self.switch("--read-only")
    }

    /// Any other flag of `s3files mount` with its value (docs/CONFIGURATION.md).
    pub fn flag(mut self, name: &str, value: impl Into<OsString>) -> Self {
        self.flags.push(name.into());
        self.flags.push(value.into());
        self
    }

    /// Any other flag of `s3files mount` that takes no value.
    pub fn switch(mut self, name: &str) -> Self {
        self.flags.push(name.into());
        self
    }

    /// The configuration, checked as the command line checks it.
    fn config(&self) -> Result<MountConfig, MountError> {
        let mut argv: Vec<OsString> = vec![
            "s3files".into(),
            "mount".into(),
            self.source.clone().into(),
            self.mountpoint.clone().into(),
        ];
        argv.extend(self.flags.iter().cloned());
        argv.push("--foreground".into());
        let cli = Cli::try_parse_from(argv)
            .map_err(|e| MountError::Options(e.render().to_string().trim().to_string()))?;
        let Command::Mount(args) = cli.command else {
            return Err(MountError::Options("not a mount".into()));
        };
        MountConfig::from_args(&args).map_err(|e| MountError::Options(e.to_string()))
    }

    /// Mounts, and returns once the mount is live. The daemon runs on a thread of this
    /// process until the guard is dropped (or `unmount` is called).
    pub fn start(self) -> Result<MountGuard, MountError> {
        let config = self.config()?;
        if mounts::find_mount(&config.mountpoint).is_some_and(|m| m.is_s3files()) {
            return Err(MountError::Start(format!(
                "{} is already an s3files mount",
                config.mountpoint.display()
            )));
        }
        local_state::create(&config.cache_dir).map_err(MountError::Start)?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let mountpoint = config.mountpoint.clone();
        let thread = std::thread::Builder::new()
            .name("s3files-daemon".into())
            .spawn(move || daemon::serve(&config, &mut Notifier::channel(ready_tx), Host::Embedded))
            .map_err(|e| MountError::Start(format!("cannot start the daemon thread: {e}")))?;
        match ready_rx.recv_timeout(START_LIMIT) {
            Ok(()) => Ok(MountGuard {
                mountpoint,
                thread: Some(thread),
            }),
            // The daemon gave up before mounting: its reason.
            Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
                Ok(Err(reason)) => Err(MountError::Start(reason)),
                Ok(Ok(_)) => Err(MountError::Start(
                    "the daemon stopped before mounting".into(),
                )),
                Err(_) => Err(MountError::Crashed),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => Err(MountError::Start(format!(
                "the mount did not go live within {START_LIMIT:?} (the daemon thread is left \
                 running; see its log lines)"
            ))),
        }
    }
}

/// A live mount. Dropping it unmounts, after the daemon has exported what is pending (at
/// most `daemon::FLUSH_TIMEOUT`); a change still pending then is reported on stderr and
/// stays in the cache dir's journal for the next mount.
#[derive(Debug)]
pub struct MountGuard {
    mountpoint: PathBuf,
    thread: Option<JoinHandle<Result<usize, String>>>,
}

impl MountGuard {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Exports every pending change now (as `s3files sync`) and returns once it is in S3.
    pub fn sync(&self) -> Result<(), mounts::SyncError> {
        mounts::sync(&self.mountpoint)
    }

    /// The status text of `path` (relative to the mount point; "" for the root), as
    /// `s3files status` prints it.
    pub fn status(&self, path: impl AsRef<Path>) -> Result<String, mounts::SyncError> {
        mounts::status(&self.mountpoint.join(path))
    }

    /// Unmounts and waits for the daemon to stop: the number of changes still pending
    /// (not in S3; kept in the journal for the next mount with the same cache dir).
    pub fn unmount(mut self) -> Result<usize, MountError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<usize, MountError> {
        let Some(thread) = self.thread.take() else {
            return Ok(0);
        };
        // Busy (files still open here): detach, so the daemon drains them and stops.
        if mounts::umount2(&self.mountpoint, 0).is_err() {
            let _ = mounts::umount2(&self.mountpoint, libc::MNT_DETACH);
        }
        match thread.join() {
            Ok(Ok(left)) => Ok(left),
            Ok(Err(reason)) => Err(MountError::Start(reason)),
            Err(_) => Err(MountError::Crashed),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        match self.stop() {
            Ok(0) => {}
            Ok(left) => eprintln!(
                "s3files: {} unmounted with {left} change(s) not yet in S3; they stay in the \
                 journal and are exported at the next mount with the same cache dir",
                self.mountpoint.display()
            ),
            Err(e) => eprintln!("s3files: unmounting {}: {e}", self.mountpoint.display()),
        }
    }
}
