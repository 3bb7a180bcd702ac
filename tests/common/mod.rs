//! Test harness: a real S3-compatible server (moto) on a free loopback port, an
//! independent aws-sdk-s3 client to seed and check buckets, and real FUSE mounts of the
//! s3files binary with guards that always unmount and stop the daemon, even when a test
//! panics.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod fault_proxy;

use std::collections::HashMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use tokio::runtime::Runtime;

pub const ACCESS_KEY: &str = "testing";
pub const SECRET_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

/// User metadata pairs (keys without `x-amz-meta-`).
pub type Meta = Vec<(String, String)>;
/// One object to upload: key, body, metadata.
pub type Upload = (String, Vec<u8>, Meta);

pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn s3files_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_s3files"))
}

fn moto_server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("S3FILES_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = repo_root().join(".venv/bin/moto_server");
    assert!(
        venv.exists(),
        "moto_server not found at {}: run scripts/setup.sh first",
        venv.display()
    );
    venv
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Kills the child if the test process dies first (the guard's Drop cannot run then).
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A moto S3 server on 127.0.0.1; stopped on drop. Its request log goes to a file so
/// tests can count requests.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub endpoint: String,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
    client: Client,
}

impl S3Server {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).expect("moto log");
        for _ in 0..5 {
            let port = free_port();
            let mut command = Command::new(moto_server_bin());
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log.try_clone().expect("log fd"));
            die_with_parent(&mut command);
            let mut child = command.spawn().expect("start moto_server");
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut up = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken or crash: try another port
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if up {
                let endpoint = format!("http://127.0.0.1:{port}");
                let client = make_client(&endpoint);
                return S3Server {
                    child,
                    port,
                    endpoint,
                    log_path,
                    _dir: dir,
                    client,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "moto_server did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates a bucket with versioning enabled, as S3 Files requires.
    pub fn create_bucket(&self, bucket: &str) {
        block_on(async {
            self.client
                .create_bucket()
                .bucket(bucket)
                .send()
                .await
                .expect("create bucket");
            self.client
                .put_bucket_versioning()
                .bucket(bucket)
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .expect("enable versioning");
        });
    }

    /// Creates a bucket with one request (for servers that authenticate later ones).
    pub fn create_bucket_unversioned(&self, bucket: &str) {
        block_on(self.client.create_bucket().bucket(bucket).send()).expect("create bucket");
    }

    pub fn put(&self, bucket: &str, key: &str, body: impl Into<Vec<u8>>, meta: &[(&str, &str)]) {
        block_on(put_object(&self.client, bucket, key, body.into(), meta));
    }

    /// Puts many objects with bounded concurrency.
    pub fn put_many(&self, bucket: &str, objects: Vec<Upload>) {
        use futures::stream::{self, StreamExt};
        block_on(async {
            stream::iter(objects)
                .map(|(key, body, meta)| {
                    let client = self.client.clone();
                    let bucket = bucket.to_string();
                    async move {
                        let meta: Vec<(&str, &str)> =
                            meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        put_object(&client, &bucket, &key, body, &meta).await;
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
        });
    }

    /// Every key in the bucket with its size (flat listing, all pages).
    pub fn list_all(&self, bucket: &str) -> HashMap<String, i64> {
        block_on(async {
            let mut out = HashMap::new();
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.expect("list");
                for o in page.contents() {
                    let key = percent_decode(o.key().unwrap_or_default());
                    out.insert(key, o.size().unwrap_or(0));
                }
            }
            out
        })
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("get");
            out.body.collect().await.expect("body").to_vec()
        })
    }

    /// Stops the server now (an outage); the guard's drop is then a no-op.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn request_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// How many requests of `method` on `/bucket/key` the server has logged.
    pub fn count_requests(&self, method: &str, bucket: &str, key: &str) -> usize {
        let needle = format!("{method} /{bucket}/{key}");
        self.request_log()
            .lines()
            .filter(|l| {
                l.match_indices(&needle)
                    .any(|(i, _)| matches!(l.as_bytes().get(i + needle.len()), Some(b' ' | b'?')))
            })
            .count()
    }

    pub fn exists(&self, bucket: &str, key: &str) -> bool {
        block_on(self.client.head_object().bucket(bucket).key(key).send()).is_ok()
    }

    /// User metadata of an object.
    pub fn metadata(&self, bucket: &str, key: &str) -> HashMap<String, String> {
        block_on(self.client.head_object().bucket(bucket).key(key).send())
            .expect("head")
            .metadata()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys of a URL-encoded listing, decoded (independently of the daemon's decoder).
fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let mut rest = text.replace('+', " ").into_bytes().into_iter();
    while let Some(b) = rest.next() {
        if b == b'%' {
            let hex: String = [rest.next().unwrap(), rest.next().unwrap()]
                .iter()
                .map(|c| *c as char)
                .collect();
            out.push(u8::from_str_radix(&hex, 16).unwrap());
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).unwrap()
}

pub fn make_client(endpoint: &str) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .build();
    Client::from_conf(config)
}

async fn put_object(
    client: &Client,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
    meta: &[(&str, &str)],
) {
    let mut request = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body));
    for (k, v) in meta {
        request = request.metadata(*k, *v);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
}

/// The environment the daemon runs with: static test credentials, an explicit region,
/// and no instance-metadata lookups; nothing inherited that could point elsewhere.
pub fn daemon_env(command: &mut Command) -> &mut Command {
    for var in [
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ] {
        command.env_remove(var);
    }
    command
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", REGION)
}

/// Is `path` a mount point right now?
pub fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = path.to_string_lossy().replace(' ', "\\040");
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(target.as_str()))
}

/// How long a live mount may take to answer a stat and a listing of its root.
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(5);

/// Checks that the mount at `path` still answers: a stat and a listing of its root, made
/// on another thread, must come back within `limit`. An error is an answer too (an S3
/// outage gives EIO), except ENOTCONN: a dead mount. A thread stuck in a hung request is
/// left behind: killing the daemon (or `fusermount3 -uz`) fails its request, and a
/// stuck thread never holds up the test process's exit.
pub fn check_live(path: &Path, limit: Duration) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let root = path.to_path_buf();
    std::thread::Builder::new()
        .name("liveness-check".into())
        .spawn(move || {
            let answer = std::fs::metadata(&root)
                .and_then(|_| std::fs::read_dir(&root)?.try_for_each(|e| e.map(drop)));
            let _ = tx.send(answer);
        })
        .expect("spawn the liveness check");
    match rx.recv_timeout(limit) {
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(format!(
            "{} is a dead mount while its daemon runs: {e}",
            path.display()
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "{} did not answer a stat and a listing of its root within {limit:?}: the mount hangs",
            path.display()
        )),
    }
}

/// A running s3files daemon with a live mount; on drop the mount must still answer (see
/// `check_live`; skipped when the test already failed), then the daemon is stopped with
/// SIGTERM (then SIGKILL) and the mount point is cleared even if the daemon died or hung.
pub struct Mount {
    child: Option<Child>,
    pub path: PathBuf,
    pub cache_dir: PathBuf,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts `source` (e.g. "s3://bucket") from `server` with extra flags.
    pub fn start(server: &S3Server, source: &str, extra: &[&str]) -> Self {
        Self::try_start(server, source, extra).unwrap_or_else(|log| panic!("mount failed:\n{log}"))
    }

    /// Like `start`, but returns the daemon's log if it exits before mounting.
    pub fn try_start(server: &S3Server, source: &str, extra: &[&str]) -> Result<Self, String> {
        Self::try_start_with_cache(&server.endpoint, source, extra, None)
    }

    /// Mounts through another endpoint in front of the server (e.g. a
    /// `fault_proxy::FaultProxy`).
    pub fn start_via(endpoint: &str, source: &str, extra: &[&str]) -> Self {
        Self::try_start_with_cache(endpoint, source, extra, None)
            .unwrap_or_else(|log| panic!("mount failed:\n{log}"))
    }

    /// Mounts with a given cache dir (to restart a daemon on the same journal).
    pub fn start_with_cache(server: &S3Server, source: &str, extra: &[&str], cache: &Path) -> Self {
        Self::try_start_with_cache(&server.endpoint, source, extra, Some(cache))
            .unwrap_or_else(|log| panic!("mount failed:\n{log}"))
    }

    fn try_start_with_cache(
        endpoint: &str,
        source: &str,
        extra: &[&str],
        cache: Option<&Path>,
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        let cache_dir = cache.map_or_else(|| dir.path().join("cache"), Path::to_path_buf);
        std::fs::create_dir(&path).expect("mountpoint");
        let log_path = dir.path().join("daemon.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let mut command = Command::new(s3files_bin());
        command
            .arg("mount")
            .arg(source)
            .arg(&path)
            .args(["--endpoint-url", endpoint, "--force-path-style"])
            .arg("--cache-dir")
            .arg(&cache_dir)
            .arg("--foreground")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        daemon_env(&mut command);
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("spawn s3files");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&path) {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("daemon exited ({status}):\n{log}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("daemon did not mount within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mount {
            child: Some(child),
            path,
            cache_dir,
            log_path,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Peak resident set size of the daemon so far, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// Checks that the mount still answers, then sends SIGTERM and waits for a clean
    /// exit; returns the exit status. A hung mount fails the test (its daemon killed).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        if let Err(hang) = check_live(&self.path, LIVENESS_LIMIT) {
            self.kill();
            panic!("{hang}\ndaemon log:\n{}", self.log());
        }
        let mut child = self.child.take().expect("daemon already stopped");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                panic!("daemon ignored SIGTERM for 15 s (killed: {status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the daemon (a crash) and clears the dead mount.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        force_unmount(&self.path);
    }

    /// Path inside the mount.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Only for a daemon still running: one that was stopped or killed, or died on its
        // own, has no mount to check.
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        let hang = if running && !std::thread::panicking() {
            check_live(&self.path, LIVENESS_LIMIT).err()
        } else {
            None
        };
        if hang.is_some() {
            // No point in a SIGTERM: a hung daemon cannot unmount itself.
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        force_unmount(&self.path);
        if let Some(hang) = hang {
            panic!("{hang}\ndaemon log:\n{}", self.log());
        }
    }
}

/// A mount made by `s3files mount` without `--foreground`, as a user or a script does:
/// the daemon runs in its own session (not our child) and logs to CACHE_DIR/s3files.log.
/// On drop the mount must still answer (unless the test already failed); then the daemon
/// (found by the pid in its cache dir's lock file) is killed and the mount cleared.
pub struct BackgroundMount {
    pub path: PathBuf,
    pub cache_dir: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl BackgroundMount {
    /// Mounts `source` with extra flags and a cache dir (a fresh one if None); panics
    /// with the command's stderr if the mount fails.
    pub fn start(server: &S3Server, source: &str, extra: &[&str], cache: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mountpoint");
        let cache_dir = cache.map_or_else(|| dir.path().join("cache"), Path::to_path_buf);
        let mut args: Vec<String> = vec![
            "mount".into(),
            source.into(),
            path.to_string_lossy().into_owned(),
            "--endpoint-url".into(),
            server.endpoint.clone(),
            "--force-path-style".into(),
            "--cache-dir".into(),
            cache_dir.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mount = BackgroundMount {
            path,
            cache_dir,
            args,
            _dir: dir,
        };
        let (out, _) = mount.mount_again();
        assert!(
            out.status.success(),
            "s3files mount failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            mount.log()
        );
        mount
    }

    /// Runs the same `s3files mount` command again (at most 90 s).
    pub fn mount_again(&self) -> (Output, Duration) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        run_s3files(&args, &[], Duration::from_secs(90))
    }

    /// `s3files unmount` of this mount (at most 60 s).
    pub fn unmount(&self) -> (Output, Duration) {
        let path = self.path.to_str().expect("utf-8 path");
        run_s3files(&["unmount", path], &[], Duration::from_secs(60))
    }

    /// The pid of the daemon holding (or last holding) the cache dir, if it still runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.cache_dir.join("lock"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // Ours only if its command line names this cache dir (pids get reused).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let wanted = self.cache_dir.to_string_lossy();
        String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|arg| arg == wanted)
            .then_some(pid)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cache_dir.join("s3files.log")).unwrap_or_default()
    }

    /// Path inside the mount.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        let hang = if is_mounted(&self.path) && !std::thread::panicking() {
            check_live(&self.path, LIVENESS_LIMIT).err()
        } else {
            None
        };
        if let Some(pid) = self.daemon_pid() {
            // SAFETY: kill(2) on the daemon this guard started (checked by its cmdline).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        force_unmount(&self.path);
        if let Some(hang) = hang {
            panic!("{hang}\ndaemon log:\n{}", self.log());
        }
    }
}

/// Clears a mount point whatever state its daemon is in.
pub fn force_unmount(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(path)
            .stderr(Stdio::null())
            .status();
    }
    if is_mounted(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// Runs the s3files binary to completion with a time limit (a hang fails the test).
pub fn run_s3files(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (Output, Duration) {
    let mut command = Command::new(s3files_bin());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    daemon_env(&mut command);
    command.envs(env.iter().copied());
    die_with_parent(&mut command);
    let start = Instant::now();
    let mut child = command.spawn().expect("spawn s3files");
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "s3files {args:?} still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_end(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_end(&mut stderr);
    }
    let status = child.wait().expect("wait");
    (
        Output {
            status,
            stdout,
            stderr,
        },
        elapsed,
    )
}

/// utimensat(2) without following a symlink: mtime = `secs` + `nanos` from the epoch
/// (negative before it), atime untouched.
pub fn set_mtime(path: &Path, secs: i64, nanos: i64) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
    ];
    // SAFETY: a valid C path and two timespecs, as utimensat(2) takes them.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `cond` until it holds or `limit` passes; returns its last answer.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The mount's lost+found directory (its name carries the mount id).
pub fn lost_found_dir(root: &Path) -> PathBuf {
    std::fs::read_dir(root)
        .expect("read mount root")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".s3files-lost+found-"))
        })
        .expect("lost+found directory")
}

/// `s3files sync PATH` (at most `limit`): Ok, or Err with its stderr.
pub fn sync(path: &Path, limit: Duration) -> Result<(), String> {
    let path = path.to_str().expect("utf-8 path");
    let (out, _) = run_s3files(&["sync", path], &[], limit);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
pub struct SmallDisk(pub tempfile::TempDir);

impl SmallDisk {
    pub fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

// ---- Bounded calls on a mount that may hang (used by tests/trust.rs) ----

/// A call that did not answer within its time limit.
#[derive(Debug)]
pub struct Hung(pub Duration);

/// Runs `f` on its own thread and waits at most `limit` for its answer. A call blocked
/// on a hung mount is left behind on its thread (it returns once the mount's guard kills
/// the daemon); a panic in `f` is re-raised here.
pub fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Hung> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err(Hung(limit)),
    }
}

/// `within`, failing the test with `what` when the call hangs.
pub fn bounded<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    within(limit, f).unwrap_or_else(|Hung(limit)| panic!("{what}: no answer within {limit:?}"))
}

/// Liveness: the mount at `root` answers `stat` within `limit`.
pub fn assert_answers(root: &Path, limit: Duration) {
    let root = root.to_path_buf();
    let shown = root.display().to_string();
    bounded(limit, &format!("stat {shown}"), move || {
        std::fs::metadata(&root)
    })
    .unwrap_or_else(|e| panic!("stat {shown}: {e}"));
}

/// Names of the files in the mount's lost+found directory, sorted (none if the directory
/// does not exist). Unbounded: wrap it in `bounded` on a mount that may hang.
pub fn lost_found_files(root: &Path) -> Vec<String> {
    let Some(dir) = std::fs::read_dir(root)
        .expect("read mount root")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".s3files-lost+found-"))
        })
    else {
        return Vec::new();
    };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read lost+found")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The `user.s3files.status` text of a path, read with getxattr(2) (getfattr is not
/// always installed), within `limit`.
pub fn status_xattr(path: &Path, limit: Duration) -> String {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    bounded(limit, "getxattr user.s3files.status", move || {
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
        assert!(n >= 0, "getxattr: {}", std::io::Error::last_os_error());
        buf.truncate(n as usize);
        String::from_utf8(buf).unwrap()
    })
}

/// One HTTP/1.1 GET of `path` from a mount's `--metrics-addr` port, with a plain socket:
/// (status line, headers, body).
pub fn metrics_get(port: u16, path: &str) -> (String, String, String) {
    use std::io::Write;
    const LIMIT: Duration = Duration::from_secs(10);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, LIMIT).expect("connect to metrics");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.set_write_timeout(Some(LIMIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header block");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// The value of one series (name with labels, as written) in an exposition.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

/// The names in directory `dir` (without "." and ".."), read with bare `getdents64`
/// calls: unlike `opendir(3)`, nothing asks for the directory's attributes first, so
/// this sees only what the kernel's readdir itself does.
pub fn getdents_names(dir: &Path) -> std::io::Result<Vec<String>> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::{FromRawFd, OwnedFd};
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; the descriptor is owned (closed) below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut names = Vec::new();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        use std::os::unix::io::AsRawFd;
        // SAFETY: the buffer is valid for its length for the call's duration.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
        let mut at = 0usize;
        while at < n as usize {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                names.push(String::from_utf8_lossy(name).into_owned());
            }
            at += reclen;
        }
    }
    names.sort();
    Ok(names)
}
