//! Running a mount: checks that must pass before anything is mounted (cache dir, bucket
//! reachable with these credentials), the FUSE session, signal handling, and the
//! background mode in which `s3files mount` returns only once the mount is live.
//!
//! Background mode re-executes this binary with `--foreground` in a new session; the child
//! reports "ok" or "error: <reason>" on a pipe whose fd it gets in `S3FILES_NOTIFY_FD`,
//! and logs to CACHE_DIR/s3files.log.
//!
//! Everything the daemon creates under CACHE_DIR is private to its user (see
//! `local_state`); at exit it leaves a report there for `s3files unmount`, which waits for
//! it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use tracing::{error, info, warn};

use crate::cache::{CacheOptions, DataCache};
use crate::cli::MountArgs;
use crate::config::{CreationInfo, MountConfig, RootDir};
use crate::fs::access::Identity;
use crate::fs::write::{WriteOptions, Writer};
use crate::fs::{CoreOptions, FsCore};
use crate::fuse::{FuseAdapter, FuseKernelCache, Passthrough};
use crate::local_state::{self, LockBusy, LOG_FILE};
use crate::metrics::Metrics;
use crate::mounts;
use crate::posix::{nanos_since_epoch, PosixMeta, S_IFDIR};
use crate::store::s3::{S3Options, S3Store, Versioning};
use crate::store::{ObjectStore, StoreError, WriteCondition};

const NOTIFY_ENV: &str = "S3FILES_NOTIFY_FD";
/// The bucket check at start-up gives up after this long, so a dead endpoint fails the
/// mount in seconds rather than hanging.
const PROBE_TIMEOUT: Duration = Duration::from_secs(6);
/// At unmount, how long pending exports may take before the daemon exits anyway (the
/// rest stay in the journal for the next mount). `mounts::DAEMON_EXIT_WAIT` covers it.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new daemon waits for the previous daemon on its cache dir to finish
/// exiting (its export at unmount, then its summary) before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(35);
/// How long `s3files mount` waits for the background daemon to report: the wait for
/// the cache dir, then the bucket check and the mount.
const START_TIMEOUT: Duration = Duration::from_secs(30 + LOCK_WAIT.as_secs());
/// After a lazy unmount, how long the daemon keeps serving files still open.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `s3files mount`: the exit code is 0 only once the mount is live (or, in the
/// foreground, once it has been unmounted cleanly).
pub fn mount_command(args: MountArgs) -> ExitCode {
    mount_command_with(args, std::env::args_os().skip(1).collect())
}

/// `mount_command` for arguments that did not come from this process's command line
/// (the `mount.s3files` helper translates mount(8)'s): `argv` is the `mount ...`
/// command line (without the program name) the background daemon is started with.
pub fn mount_command_with(args: MountArgs, argv: Vec<std::ffi::OsString>) -> ExitCode {
    // First, before anything exists: whatever the daemon creates is its user's only.
    local_state::set_private_umask();
    let config = match MountConfig::from_args(&args) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    if let Some(existing) = mounts::find_mount(&config.mountpoint) {
        if existing.is_s3files() {
            return fail(&format!(
                "{} is already an s3files mount ({})",
                config.mountpoint.display(),
                existing.source
            ));
        }
    }
    if let Err(e) = local_state::create(&config.cache_dir) {
        return fail(&e);
    }
    if config.foreground {
        run_foreground(config)
    } else {
        start_background(&config, argv)
    }
}

fn fail(reason: &str) -> ExitCode {
    eprintln!("s3files: error: {reason}");
    ExitCode::FAILURE
}

/// Makes the cache dir private (logging what had to be tightened) and takes its lock,
/// waiting for a daemon that is still exiting from it.
fn claim_cache_dir(dir: &Path) -> Result<local_state::CacheDirLock, String> {
    let tightened = local_state::make_private(dir)?;
    if let Some(first) = tightened.first() {
        info!(
            cache_dir = %dir.display(),
            count = tightened.len(),
            first = %first.display(),
            "cache dir was readable by other users: made it private (directories 0700, files 0600)"
        );
    }
    let lock = local_state::lock(dir, LOCK_WAIT, mounts::mount_using_cache_dir, |pid| {
        info!(
            pid = ?pid,
            "cache dir is still held by a daemon that is exiting; waiting for it"
        )
    })
    .map_err(|e| format!("cache dir {} is not writable: {e}", dir.display()))?;
    lock.map_err(|busy| match busy {
        LockBusy::Mounted(mountpoint) => format!(
            "cache dir {} is in use by the s3files mount on {}",
            dir.display(),
            mountpoint.display()
        ),
        LockBusy::Held(pid) => format!(
            "cache dir {} is in use by another s3files daemon{} (still there after {}s)",
            dir.display(),
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            LOCK_WAIT.as_secs()
        ),
    })
}

fn start_background(config: &MountConfig, argv: Vec<std::ffi::OsString>) -> ExitCode {
    let log_path = config.cache_dir.join(LOG_FILE);
    let log = match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(local_state::FILE_MODE)
        .open(&log_path)
    {
        Ok(file) => file,
        Err(e) => return fail(&format!("cannot open log {}: {e}", log_path.display())),
    };
    let (read_end, write_end) = match pipe() {
        Ok(ends) => ends,
        Err(e) => return fail(&format!("cannot create a pipe: {e}")),
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(&format!("cannot find own executable: {e}")),
    };
    let stderr = match log.try_clone() {
        Ok(file) => file,
        Err(e) => return fail(&format!("cannot open log {}: {e}", log_path.display())),
    };
    let write_fd = write_end.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .args(argv)
        .arg("--foreground")
        .env(NOTIFY_ENV, write_fd.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    // SAFETY: only async-signal-safe calls (setsid, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            let flags = libc::fcntl(write_fd, libc::F_GETFD);
            libc::fcntl(write_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return fail(&format!("cannot start the daemon: {e}")),
    };
    drop(write_end);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(File::from(read_end)).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) if line.trim() == "ok" => ExitCode::SUCCESS,
        Ok(line) if line.starts_with("error: ") => fail(line["error: ".len()..].trim()),
        Ok(_) => {
            let status = child
                .wait()
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            fail(&format!(
                "the daemon exited before mounting ({status}); see {}",
                log_path.display()
            ))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            fail(&format!(
                "the daemon did not mount within {START_TIMEOUT:?}; see {}",
                log_path.display()
            ))
        }
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Where the foreground daemon reports readiness: the background parent's pipe, if any,
/// or the caller of the library API (`crate::mount_api`).
pub(crate) struct Notifier(Option<File>, Option<std::sync::mpsc::Sender<()>>);

impl Notifier {
    /// Tells `ready` once the mount is live.
    pub(crate) fn channel(ready: std::sync::mpsc::Sender<()>) -> Self {
        Notifier(None, Some(ready))
    }

    fn from_env() -> Self {
        let fd = std::env::var(NOTIFY_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2);
        std::env::remove_var(NOTIFY_ENV);
        // SAFETY: the parent passed this fd to us for exactly this purpose; we take
        // ownership of it once (the variable is removed above).
        Notifier(fd.map(|fd| unsafe { File::from_raw_fd(fd) }), None)
    }

    fn send(&mut self, message: &str) {
        if let Some(mut file) = self.0.take() {
            let _ = writeln!(file, "{message}");
        }
        if let Some(ready) = self.1.take() {
            let _ = ready.send(());
        }
    }
}

fn run_foreground(config: MountConfig) -> ExitCode {
    let mut notifier = Notifier::from_env();
    crate::logging::init(&config.log_level);
    match serve(&config, &mut notifier, Host::Process) {
        Ok(_) => ExitCode::SUCCESS,
        Err(reason) if notifier.0.is_some() => {
            // Background child: the parent prints the reason; the log keeps it too.
            error!("{reason}");
            notifier.send(&format!("error: {reason}"));
            ExitCode::FAILURE
        }
        Err(reason) => fail(&reason),
    }
}

/// What runs the daemon: its own process (which stops on SIGTERM/SIGINT too), or a
/// thread of a program using the library API (which stops it by unmounting; its
/// signals are its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Host {
    Process,
    Embedded,
}

/// Serves the mount until it is unmounted (or, in its own process, signalled); returns
/// how many changes were still pending when it stopped (kept in the journal).
pub(crate) fn serve(
    config: &MountConfig,
    notifier: &mut Notifier,
    host: Host,
) -> Result<usize, String> {
    let lock = claim_cache_dir(&config.cache_dir)?;
    raise_fd_limit();
    // Bound first, before anything slow: a busy port fails the mount at once.
    let metrics_listener = config.metrics_addr.map(bind_metrics).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3files-io")
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    let metrics = Arc::new(Metrics::default());
    let store = runtime.block_on(connect_and_probe(config, metrics.clone()))?;
    runtime.block_on(prepare_root_dir(config, &store))?;
    let cache = open_cache(config, metrics.clone())?;
    let mut core = FsCore::new(
        store,
        CoreOptions {
            bucket: config.location.bucket.clone(),
            root_prefix: config.root_prefix(),
            access_point: config
                .access_point
                .as_ref()
                .map(|ap| Identity::new(ap.uid, ap.gid)),
            secondary_gids: config
                .access_point
                .as_ref()
                .map(|ap| ap.secondary_gids.clone())
                .unwrap_or_default(),
            root_squash: config.root_squash,
            fs_prefix: config
                .root_dir
                .as_ref()
                .map(|_| config.location.prefix.clone()),
            import_size_threshold: config.import_size_threshold,
            stream_budget: crate::read::stream::DEFAULT_BUDGET,
        },
        metrics,
        cache.clone(),
    )
    .with_import_rules(config.import_rules.clone())
    .with_kernel_ttl(config.kernel_cache_ttl)
    .with_poll_interval(config.poll_interval);
    if let Some(queue) = &config.events_queue {
        core = core.with_events(format!("sqs {queue}"));
    }
    if !config.read_only {
        let writer = Writer::open(&WriteOptions {
            cache_dir: config.cache_dir.clone(),
            write_back_delay: config.write_back_delay,
            mount_id: config.mount_id.clone(),
        })
        .map_err(|e| {
            format!(
                "cannot open the export journal in {}: {e}",
                config.cache_dir.display()
            )
        })?;
        if writer.backlog() > 0 {
            info!(
                pending = writer.backlog(),
                "exporting changes left from a previous run"
            );
        }
        core = core.with_writer(writer);
    }
    let core = Arc::new(core);
    runtime.spawn(core.clone().run_exports());
    runtime.spawn(sweep_cache(cache, config.cache_expiry));
    if !config.poll_interval.is_zero() {
        spawn_poller(config, core.clone());
    }
    if let Some(queue) = &config.events_queue {
        spawn_events(config, queue.clone(), core.clone());
    }
    runtime.spawn(watch_external_writes(core.clone()));
    if let Some(listener) = metrics_listener {
        serve_metrics(&runtime, listener, config, core.clone())?;
    }
    let adapter = FuseAdapter::new(
        core.clone(),
        runtime.handle().clone(),
        passthrough_request(config),
    );
    let session = fuser::spawn_mount(adapter, &config.mountpoint, &fuse_config(config))
        .map_err(|e| format!("cannot mount on {}: {e}", config.mountpoint.display()))?;
    core.set_kernel_cache(Box::new(FuseKernelCache(session.notifier())));
    info!(
        source = %format!("s3://{}/{}", config.location.bucket, config.root_prefix()),
        mountpoint = %config.mountpoint.display(),
        mount_id = %config.mount_id,
        cache_dir = %config.cache_dir.display(),
        import_rules = %config.import_rules,
        fuse_threads = config.fuse_threads,
        "mounted"
    );
    notifier.send("ok");

    let stop = runtime.block_on(wait_for_stop(&session, host));
    match stop {
        Stop::Signal(name) => {
            info!(signal = name, "unmounting");
            unmount_self(&config.mountpoint);
            wait_session_end(&session, DRAIN_TIMEOUT);
        }
        Stop::Unmounted => info!("unmounted"),
    }
    let left = runtime.block_on(core.flush_all(FLUSH_TIMEOUT));
    if left > 0 {
        warn!(
            left,
            "exports still pending at exit; they stay in the journal and go out at the next mount"
        );
    }
    core.log_summary();
    // The mount is gone already; this only joins the session thread (the second
    // unmount it attempts fails quietly, where a plain drop would log a warning).
    let _ = session.umount_and_join();
    runtime.shutdown_timeout(Duration::from_secs(1));
    // Last: `s3files unmount` reads the report as soon as the lock is free.
    if let Err(e) = lock.write_exit_report(left) {
        warn!(error = %e, "cannot write the exit report for `s3files unmount`");
    }
    lock.release();
    Ok(left)
}

/// Takes the `--metrics-addr` port (in use, or not ours to take: the mount fails).
fn bind_metrics(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot serve metrics on {addr} (--metrics-addr): {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot serve metrics on {addr} (--metrics-addr): {e}"))?;
    Ok(listener)
}

/// Answers scrapes on the I/O runtime; rendering runs on its blocking threads.
fn serve_metrics(
    runtime: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    config: &MountConfig,
    core: Arc<FsCore>,
) -> Result<(), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let listener = {
        let _runtime = runtime.enter();
        tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("cannot serve metrics on {addr} (--metrics-addr): {e}"))?
    };
    let registry = crate::metrics_endpoint::registry(
        core.metrics_handle(),
        move || core.gauges(),
        !config.poll_interval.is_zero(),
    );
    runtime.spawn(crate::metrics_endpoint::serve(listener, Arc::new(registry)));
    info!(url = %format!("http://{addr}/metrics"), "serving metrics");
    Ok(())
}

/// Opens the data cache under CACHE_DIR/data, picking up what an earlier run left.
fn open_cache(config: &MountConfig, metrics: Arc<Metrics>) -> Result<Arc<DataCache>, String> {
    let options = CacheOptions {
        dir: config.cache_dir.join("data"),
        disk_bytes: config.cache_size,
        memory_bytes: config.memory_cache_size,
        expiry: config.cache_expiry,
    };
    let (cache, report) = DataCache::open(&options, metrics).map_err(|e| {
        format!(
            "cannot open the data cache in {}: {e}",
            options.dir.display()
        )
    })?;
    info!(
        blocks = report.blocks,
        bytes = report.bytes,
        expired = report.expired,
        removed = report.removed,
        "data cache opened"
    );
    Ok(Arc::new(cache))
}

/// Drops cached data that went unused for the expiry, a few times per expiry period.
/// What to ask the kernel for at INIT: passthrough unless turned off, with the stacking
/// depth the cache dir's file system needs (overlayfs, e.g. a container's own file
/// system, is itself stacked once).
fn passthrough_request(config: &MountConfig) -> Passthrough {
    if !config.passthrough {
        return Passthrough::Off("turned off with --no-passthrough".into());
    }
    const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
    const ECRYPTFS_MAGIC: i64 = 0xf15f;
    let stacked = crate::local_state::fs_type(&config.cache_dir)
        .is_some_and(|t| t == OVERLAYFS_MAGIC || t == ECRYPTFS_MAGIC);
    Passthrough::Want {
        max_stack_depth: if stacked { 2 } else { 1 },
    }
}

/// Writes made through the kernel (passthrough) are found by looking at the files, once
/// a second while such a writer is open.
async fn watch_external_writes(core: Arc<FsCore>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        core.watch_external_writes();
    }
}

async fn sweep_cache(cache: Arc<DataCache>, expiry: Duration) {
    let every = (expiry / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(every).await;
        let cache = cache.clone();
        let _ = tokio::task::spawn_blocking(move || cache.sweep_expired()).await;
    }
}

/// Runs the poller on its own thread, runtime and S3 client, at a lower CPU priority:
/// re-listing a directory of 100,000 keys every few seconds is real work, and it must
/// not delay the file requests that share the machine's cores.
fn spawn_poller(config: &MountConfig, core: Arc<FsCore>) {
    let options = s3_options(config);
    let interval = config.poll_interval;
    let spawned = std::thread::Builder::new()
        .name("s3files-poll".into())
        .spawn(move || {
            // SAFETY: setpriority on this thread's own id; no memory is involved.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, POLL_NICENESS);
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    error!(error = %e, "cannot start the poller; remote changes will not show");
                    return;
                }
            };
            runtime.block_on(async move {
                match S3Store::connect(&options, core.metrics_handle()).await {
                    Ok(store) => core.run_poller(interval, Arc::new(store)).await,
                    Err(e) => {
                        error!(error = %e, "cannot start the poller; remote changes will not show")
                    }
                }
            });
        });
    if let Err(e) = spawned {
        error!(error = %e, "cannot start the poller; remote changes will not show");
    }
}

/// Runs the S3 event loop (`--events-queue`) on its own thread, runtime and S3 client,
/// as the poller runs, at normal priority: events are what makes changes show fast.
fn spawn_events(config: &MountConfig, queue: String, core: Arc<FsCore>) {
    let options = s3_options(config);
    let region = config.region.clone();
    let spawned = std::thread::Builder::new()
        .name("s3files-events".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    error!(error = %e, "cannot start the event loop; polling still runs");
                    return;
                }
            };
            runtime.block_on(async move {
                let source =
                    crate::events::SqsSource::connect(&queue, region, &options.bucket).await;
                match (
                    source,
                    S3Store::connect(&options, core.metrics_handle()).await,
                ) {
                    (Ok(source), Ok(store)) => {
                        core.run_events(Arc::new(source), Arc::new(store)).await
                    }
                    (Err(e), _) => {
                        error!(error = %e, "cannot start the event loop; polling still runs")
                    }
                    (_, Err(e)) => {
                        error!(error = %e, "cannot start the event loop; polling still runs")
                    }
                }
            });
        });
    if let Err(e) = spawned {
        error!(error = %e, "cannot start the event loop; polling still runs");
    }
}

/// Nice value of the poller thread (higher is lower priority).
const POLL_NICENESS: libc::c_int = 10;

/// A file system daemon serves many open files at once: use the hard limit on open
/// descriptors rather than the (often 1,024) soft one.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

enum Stop {
    Signal(&'static str),
    Unmounted,
}

async fn wait_for_stop(session: &fuser::BackgroundSession, host: Host) -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = match host {
        Host::Process => (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ),
        Host::Embedded => (
            Err(std::io::Error::other("embedded")),
            Err(std::io::Error::other("embedded")),
        ),
    };
    let (Ok(mut term), Ok(mut int)) = handlers else {
        if host == Host::Process {
            warn!("cannot install signal handlers; stop with `s3files unmount`");
        }
        loop {
            if session.guard.is_finished() {
                return Stop::Unmounted;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => return Stop::Signal("SIGTERM"),
            _ = int.recv() => return Stop::Signal("SIGINT"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if session.guard.is_finished() {
                    return Stop::Unmounted;
                }
            }
        }
    }
}

/// Unmounts our own mount point; if files are still open there, detaches it lazily so
/// the name is free at once and the open files drain.
fn unmount_self(mountpoint: &Path) {
    match mounts::umount2(mountpoint, 0) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            warn!("mount point busy; detaching lazily");
            if let Err(e) = mounts::umount2(mountpoint, libc::MNT_DETACH) {
                warn!(error = %e, "lazy unmount failed");
            }
        }
        Err(e) => warn!(error = %e, "unmount failed"),
    }
}

fn wait_session_end(session: &fuser::BackgroundSession, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while !session.guard.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fuse_config(config: &MountConfig) -> fuser::Config {
    // The source names the cache dir, so `s3files unmount` finds the daemon's lock.
    let cache_dir =
        std::fs::canonicalize(&config.cache_dir).unwrap_or_else(|_| config.cache_dir.clone());
    let mut options = vec![
        MountOption::FSName(mounts::source_name(
            &config.location.bucket,
            &config.root_prefix(),
            &cache_dir,
        )),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    if config.access_point.is_none() && !config.root_squash {
        // Without an access point the kernel checks mode bits against the caller (with
        // root squash the daemon must: the kernel would let root through).
        options.push(MountOption::DefaultPermissions);
    }
    if config.read_only {
        options.push(MountOption::RO);
    }
    let mut fuse = fuser::Config::default();
    fuse.mount_options = options;
    fuse.n_threads = Some(config.fuse_threads);
    // Each event loop gets its own device fd (its own reply queue in the kernel), as
    // libfuse's clone_fd does. Cloning opens /dev/fuse again; where that is not allowed
    // the loops share the one fd, which still serves requests in parallel.
    fuse.clone_fd = config.fuse_threads > 1
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_ok();
    // Root mounts serve every user (the agents of a shared workspace run as anyone);
    // an unprivileged mount keeps FUSE's owner-only default.
    // SAFETY: geteuid has no preconditions.
    fuse.acl = if unsafe { libc::geteuid() } == 0 {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse
}

/// Builds the S3 client and checks, before mounting, that the bucket answers a listing
/// with these credentials and that the prefix exists.
async fn connect_and_probe(
    config: &MountConfig,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn ObjectStore>, String> {
    let options = s3_options(config);
    let store = S3Store::connect(&options, metrics)
        .await
        .map_err(|e| e.to_string())?;
    let bucket = &config.location.bucket;
    let prefix = &config.location.prefix;
    let endpoint = config.endpoint_url.as_deref().unwrap_or("the AWS endpoint");
    let probe = store.probe(prefix);
    let page = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Err(_) => {
            return Err(format!(
                "cannot reach {endpoint}: no answer within {PROBE_TIMEOUT:?}"
            ))
        }
        Ok(Err(e)) => return Err(describe_probe_error(e, bucket, endpoint)),
        Ok(Ok(page)) => page,
    };
    if !prefix.is_empty() && page.objects.is_empty() && page.common_prefixes.is_empty() {
        return Err(format!(
            "s3://{bucket}/{prefix} does not exist (no objects under that prefix)"
        ));
    }
    if !config.allow_unversioned {
        check_versioning(&store, bucket, endpoint).await?;
    }
    Ok(Arc::new(store))
}

/// S3 Files requires bucket versioning, so that what the mount overwrites or deletes (an
/// export, a conflict the bucket wins, a delete) stays recoverable in S3.
async fn check_versioning(store: &S3Store, bucket: &str, endpoint: &str) -> Result<(), String> {
    const HOW: &str = "enable it (aws s3api put-bucket-versioning --bucket BUCKET \
                       --versioning-configuration Status=Enabled) or pass --allow-unversioned";
    let state = match tokio::time::timeout(PROBE_TIMEOUT, store.versioning()).await {
        Err(_) => {
            return Err(format!(
                "cannot reach {endpoint}: no answer within {PROBE_TIMEOUT:?}"
            ))
        }
        Ok(Err(e)) => {
            return Err(format!(
                "cannot read the versioning state of bucket '{bucket}' ({e}); S3 Files needs \
                 versioning: {HOW}"
            ))
        }
        Ok(Ok(state)) => state,
    };
    match state {
        Versioning::Enabled => Ok(()),
        Versioning::Suspended => Err(format!(
            "bucket '{bucket}' has versioning suspended; S3 Files needs it enabled: {HOW}"
        )),
        Versioning::Never => Err(format!(
            "bucket '{bucket}' does not have versioning enabled, which S3 Files needs: {HOW}"
        )),
    }
}

/// Makes sure the access point's root directory exists before mounting (see
/// `ensure_root_dir`), within the start-up check's time limit.
async fn prepare_root_dir(
    config: &MountConfig,
    store: &Arc<dyn ObjectStore>,
) -> Result<(), String> {
    let Some(root) = &config.root_dir else {
        return Ok(());
    };
    let key = config.root_prefix();
    let shown = format!("s3://{}/{key}", config.location.bucket);
    let fs_prefix = &config.location.prefix;
    match tokio::time::timeout(PROBE_TIMEOUT, ensure_root_dir(root, fs_prefix, store)).await {
        Err(_) => Err(format!(
            "cannot check the root directory {shown}: no answer within {PROBE_TIMEOUT:?}"
        )),
        Ok(Err(RootDirError::Missing)) => Err(format!(
            "root directory /{} does not exist ({shown}); give --root-owner and --root-mode to create it",
            root.path
        )),
        Ok(Err(RootDirError::IsFile(path))) => Err(format!(
            "cannot create the root directory /{}: {path} is a file in the bucket (s3://{}/{fs_prefix}{}), not a directory",
            root.path,
            config.location.bucket,
            path.trim_start_matches('/')
        )),
        Ok(Err(RootDirError::Store(e))) => Err(format!(
            "cannot check or create the root directory {shown}: {e}"
        )),
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(create))) => {
            info!(
                root_dir = %shown,
                uid = create.uid,
                gid = create.gid,
                mode = %format!("{:04o}", create.mode),
                "created the access point's root directory"
            );
            Ok(())
        }
    }
}

enum RootDirError {
    Missing,
    /// This directory on the way (`/a/b`) is a file.
    IsFile(String),
    Store(StoreError),
}

impl From<StoreError> for RootDirError {
    fn from(e: StoreError) -> Self {
        RootDirError::Store(e)
    }
}

/// The root directory `root.path` below `fs_prefix` exists if it has a marker or keys
/// below it. A missing one is created when the creation info says how, with every
/// missing directory on the way to it (S3 Files sets its creation permissions on the
/// directories it creates): a marker with that owner and mode each. Directories that
/// exist are left as they are. Returns the creation info used, if anything was created.
async fn ensure_root_dir(
    root: &RootDir,
    fs_prefix: &str,
    store: &Arc<dyn ObjectStore>,
) -> Result<Option<CreationInfo>, RootDirError> {
    let key = format!("{fs_prefix}{}/", root.path);
    if dir_exists(store, &key).await? {
        return Ok(None);
    }
    let create = root.create.ok_or(RootDirError::Missing)?;
    let meta = PosixMeta {
        uid: create.uid,
        gid: create.gid,
        mode: S_IFDIR | create.mode,
        mtime_ns: Some(nanos_since_epoch(std::time::SystemTime::now())),
    }
    .to_user_metadata();
    let mut created = false;
    let mut path = String::new();
    for segment in root.path.split('/') {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(segment);
        let dir = format!("{fs_prefix}{path}/");
        if dir != key && dir_exists(store, &dir).await? {
            continue;
        }
        // An object of that name is a file: making a directory of it would hide it.
        match store.head(dir.trim_end_matches('/')).await {
            Ok(_) => return Err(RootDirError::IsFile(format!("/{path}"))),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        // If-None-Match: a mount creating it at the same moment keeps its marker.
        let put = store
            .put(&dir, bytes::Bytes::new(), &meta, &WriteCondition::IfAbsent)
            .await;
        match put {
            Ok(_) => created = true,
            Err(StoreError::PreconditionFailed) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(created.then_some(create))
}

/// Whether directory `key` (ending in `/`) exists: a marker or keys below it.
async fn dir_exists(store: &Arc<dyn ObjectStore>, key: &str) -> Result<bool, StoreError> {
    let page = store.list_page(key, None, Some(1)).await?;
    Ok(!page.objects.is_empty() || !page.common_prefixes.is_empty())
}

fn s3_options(config: &MountConfig) -> S3Options {
    S3Options {
        bucket: config.location.bucket.clone(),
        endpoint_url: config.endpoint_url.clone(),
        region: config.region.clone(),
        force_path_style: config.force_path_style,
        // Stores S3 Files cannot use (no versioning) may also ignore conditional writes
        // (Garage): exports there check the key first (`export::check_destination`).
        enforces_write_conditions: !config.allow_unversioned,
    }
}

fn describe_probe_error(error: StoreError, bucket: &str, endpoint: &str) -> String {
    match error {
        StoreError::NoSuchBucket => format!("bucket '{bucket}' does not exist"),
        StoreError::BadCredentials(code) => {
            format!("credentials rejected by {endpoint} ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile")
        }
        StoreError::AccessDenied(_) => {
            format!("access denied to bucket '{bucket}': check the credentials and the bucket policy")
        }
        StoreError::NoCredentials(_) => {
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE".into()
        }
        StoreError::Unreachable(reason) => format!("cannot reach {endpoint}: {reason}"),
        other => format!("cannot list bucket '{bucket}': {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn root(path: &str, create: Option<CreationInfo>) -> RootDir {
        RootDir {
            path: path.into(),
            create,
        }
    }

    const INFO: CreationInfo = CreationInfo {
        uid: 1000,
        gid: 2000,
        mode: 0o750,
    };

    #[tokio::test]
    async fn root_dir_exists_is_created_or_refused() {
        let mem = Arc::new(MemoryStore::new());
        mem.put("fs/marked/", "", &[]);
        mem.put("fs/implicit/deep/file", "x", &[]);
        mem.put("fs/file", "x", &[]);
        mem.put("fs/half/other", "x", &[]);
        let store: Arc<dyn ObjectStore> = mem.clone();
        let puts = || mem.requests.put.load(std::sync::atomic::Ordering::Relaxed);
        let before = puts();
        // A marker, or keys below it: there, nothing written.
        for path in ["marked", "implicit", "implicit/deep"] {
            let got = ensure_root_dir(&root(path, Some(INFO)), "fs/", &store).await;
            assert!(matches!(got, Ok(None)), "{path}");
        }
        // Missing without creation info: refused.
        let got = ensure_root_dir(&root("new", None), "fs/", &store).await;
        assert!(matches!(got, Err(RootDirError::Missing)));
        // A file is not a directory, at the end or on the way.
        for (path, file) in [("file", "/file"), ("file/below", "/file")] {
            let got = ensure_root_dir(&root(path, Some(INFO)), "fs/", &store).await;
            assert!(
                matches!(got, Err(RootDirError::IsFile(f)) if f == file),
                "{path}"
            );
        }
        assert_eq!(puts(), before, "nothing written");
        // Missing with creation info: every missing directory on the way gets a marker
        // with that owner and mode; one that exists (implicitly) is left alone.
        let got = ensure_root_dir(&root("half/a/b", Some(INFO)), "fs/", &store).await;
        assert!(matches!(got, Ok(Some(INFO))));
        for key in ["fs/half/a/", "fs/half/a/b/"] {
            let meta = mem.metadata(key).unwrap();
            let posix = PosixMeta::from_user_metadata(&meta, true);
            assert_eq!(
                (posix.uid, posix.gid, posix.mode),
                (1000, 2000, S_IFDIR | 0o750)
            );
            assert!(posix.mtime_ns.is_some());
            assert_eq!(mem.body(key).unwrap().len(), 0);
        }
        assert!(
            mem.body("fs/half/").is_none(),
            "an implicit directory stays so"
        );
        assert_eq!(puts(), before + 2);
        // An existing marker is left as it is, creation info or not.
        mem.put("fs/race/", "", &[("file-owner", "7")]);
        let got = ensure_root_dir(&root("race", Some(INFO)), "fs/", &store).await;
        assert!(matches!(got, Ok(None)));
        assert_eq!(mem.metadata("fs/race/").unwrap()["file-owner"], "7");
    }
}
