//! Trust through real clients (issue 9, "Done when"): a git clone, commit and gc on the
//! mount and the atomic-save loop (write `X.tmp`, let it export, write more, rename over
//! `X`) never raise a conflict no one caused and lose nothing, and a mount that went
//! through an export-time and a poll-time conflict keeps answering. The shortest save
//! sequences behind git's false conflicts are tested on their own too. Every call on the
//! mount is bounded, so a hang fails the test instead of stalling it.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{assert_answers, lost_found_files, within, Mount, S3Server};

/// Time limit of one plain file-system call on the mount (a write, a read, a listing).
const CALL: Duration = Duration::from_secs(10);
/// Time limit of one git command.
const GIT_LIMIT: Duration = Duration::from_secs(180);

/// Log lines worth showing when a test fails: warnings, errors, conflicts, every line
/// about a key in conflict (or a key starting with it: `X.lock`, `X.tmp`), and lines
/// naming any of `needles`; the last 300 of them.
fn log_excerpt(log: &str, needles: &[&str]) -> String {
    let conflicted: BTreeSet<String> = conflict_lines(log)
        .iter()
        .filter_map(|l| l.split("key=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(|key| format!("\"{key}"))
        .collect();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("conflict")
                || l.contains("changed in S3")
                || conflicted.iter().any(|k| l.contains(k.as_str()))
                || needles.iter().any(|n| l.contains(n))
        })
        .collect();
    lines[lines.len().saturating_sub(300)..].join("\n")
}

/// Log lines that report a conflict (poll time or export time).
fn conflict_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("conflict") || l.contains("changed in S3"))
        .collect()
}

/// `s3files sync PATH` with a time limit: its exit code and stderr. Unlike
/// `common::run_s3files`, a sync that overruns is killed and not waited for: one blocked
/// in the kernel on a hung mount cannot be reaped until the mount's guard kills the
/// daemon, and waiting for it would hang the test.
fn sync_code(calls: &Calls, path: &Path, limit: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("err");
    let mut command = Command::new(common::s3files_bin());
    command
        .arg("sync")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    common::daemon_env(&mut command);
    let started = Instant::now();
    let mut child = command.spawn().expect("spawn s3files sync");
    loop {
        if let Some(status) = child.try_wait().expect("wait for s3files sync") {
            return (
                status.code(),
                std::fs::read_to_string(&err_path).unwrap_or_default(),
            );
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "s3files sync {} still running after {limit:?}\n{}",
                path.display(),
                calls.report()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small deterministic generator (xorshift64*), so every run builds the same tree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

const WORDS: [&str; 16] = [
    "bucket", "object", "prefix", "export", "import", "staging", "journal", "conflict", "mount",
    "inode", "lookup", "rename", "upload", "listing", "version", "handle",
];

/// A text file of roughly `len` bytes: numbered lines of words.
fn text(rng: &mut Rng, tag: &str, len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 80);
    let mut line = 0;
    while out.len() < len {
        out.push_str(&format!("{tag} {line}:"));
        for _ in 0..8 {
            out.push(' ');
            out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        }
        out.push('\n');
        line += 1;
    }
    out.into_bytes()
}

/// Bounded calls on one mount; a call that hangs fails the test with the daemon's log
/// and the poller's last listings (a poller blocked on a lock lists no more).
struct Calls<'a> {
    mount: &'a Mount,
    server: &'a S3Server,
    bucket: &'a str,
    /// Daemon log lines naming any of these are shown too.
    needles: &'a [&'a str],
}

impl Calls<'_> {
    fn root(&self) -> &Path {
        &self.mount.path
    }

    fn run<T: Send + 'static>(
        &self,
        limit: Duration,
        what: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        within(limit, f)
            .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}\n{}", self.report()))
    }

    fn report(&self) -> String {
        let needle = format!("GET /{}/?", self.bucket);
        let log = self.server.request_log();
        let lists: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("list-type=2"))
            .collect();
        format!(
            "now: {}\nmoto's last listings:\n{}\ndaemon log:\n{}",
            utc_now(),
            lists[lists.len().saturating_sub(5)..].join("\n"),
            log_excerpt(&self.mount.log(), self.needles)
        )
    }

    /// Writes `body` to `rel` (create or truncate).
    fn write(&self, rel: &str, body: &'static [u8]) {
        let path = self.root().join(rel);
        self.run(CALL, &format!("write {rel}"), move || {
            std::fs::write(&path, body)
        })
        .unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }

    fn read(&self, rel: &str, limit: Duration) -> Vec<u8> {
        let path = self.root().join(rel);
        self.run(limit, &format!("read {rel}"), move || std::fs::read(&path))
            .unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// The bytes of the files in lost+found whose name ends in `_{name}`.
    fn lost_copies(&self, name: &str) -> Vec<Vec<u8>> {
        let root = self.root().to_path_buf();
        let suffix = format!("_{name}");
        self.run(CALL, "read lost+found", move || {
            let Some(dir) = std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".s3files-lost+found-"))
                })
            else {
                return Vec::new();
            };
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
                .map(|e| std::fs::read(e.path()).unwrap())
                .collect()
        })
    }

    /// How many listings of the bucket moto has answered.
    fn listings(&self) -> usize {
        let needle = format!("GET /{}/?", self.bucket);
        self.server
            .request_log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("list-type=2"))
            .count()
    }

    fn logged(&self, what: &str, key: &str) -> bool {
        self.mount
            .log()
            .lines()
            .any(|l| l.contains(what) && l.contains(key))
    }
}

/// Wall-clock time of day (UTC), to line a hang up with the logs.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let day = secs % 86_400.0;
    format!(
        "{:02}:{:02}:{:06.3} UTC",
        (day / 3600.0) as u32,
        (day % 3600.0 / 60.0) as u32,
        day % 60.0
    )
}

// ---------------------------------------------------------------------------------------
// 1. git clone, commit, gc

/// Source tree size: DIRS leaf directories of FILES_PER_DIR text files, plus a few large
/// binary files, scripts and a symlink.
const DIRS: usize = 100;
const FILES_PER_DIR: usize = 30;
const LARGE_SIZES: [usize; 4] = [100 << 10, 400 << 10, 1 << 20, 2 << 20];

/// Runs git in `dir` with a time limit, a fixed identity and dates and no user or system
/// configuration; fails the test (with git's output and the daemon log) unless it
/// succeeds. Returns stdout. Its output goes to files, not pipes, and a git that
/// overruns is killed but not waited for: one blocked on a hung mount cannot be reaped
/// until the mount's guard kills the daemon.
fn git(dir: &Path, home: &Path, args: &[&str], calls: Option<&Calls>) -> String {
    let date = "2026-01-01T00:00:00 +0000";
    let out_dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (out_dir.path().join("out"), out_dir.path().join("err"));
    let started = Instant::now();
    let mut child = Command::new("git")
        .args(["-c", "safe.directory=*", "-c", "gc.auto=0"])
        .args(["-c", "maintenance.auto=false", "-c", "core.autocrlf=false"])
        .args(["-c", "init.defaultBranch=main"])
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Trust Test")
        .env("GIT_AUTHOR_EMAIL", "trust@example.com")
        .env("GIT_COMMITTER_NAME", "Trust Test")
        .env("GIT_COMMITTER_EMAIL", "trust@example.com")
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run git");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for git") {
            break Some(status);
        }
        if started.elapsed() > GIT_LIMIT {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    eprintln!("git {args:?}: {:.1?}", started.elapsed());
    if !status.is_some_and(|s| s.success()) {
        let outcome = status.map_or_else(
            || format!("still running after {GIT_LIMIT:?} (killed)"),
            |s| s.to_string(),
        );
        panic!(
            "git {args:?} in {} failed: {outcome}\nstdout:\n{}\nstderr:\n{}\n{}",
            dir.display(),
            tail(&stdout, 4000),
            tail(
                &std::fs::read_to_string(&err_path).unwrap_or_default(),
                4000
            ),
            calls.map_or_else(String::new, Calls::report),
        );
    }
    stdout
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Path of leaf directory `d`: two levels, like a source tree of packages.
fn leaf_dir(d: usize) -> String {
    format!("src/mod{:02}/pkg{d:03}", d / 10)
}

/// Builds the source repository in `repo` (local disk, no network): three commits of a
/// tree of DIRS x FILES_PER_DIR small text files, large binaries, scripts and a symlink.
fn build_source_repo(repo: &Path, home: &Path) {
    let mut rng = Rng(0x005e_ed0f_7275_7374);
    std::fs::create_dir_all(repo).unwrap();
    git(repo, home, &["init", "--quiet"], None);
    for d in 0..DIRS {
        let dir = repo.join(leaf_dir(d));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            let len = 200 + rng.below(2800) as usize;
            let body = text(&mut rng, &format!("pkg{d} file{f}"), len);
            std::fs::write(dir.join(format!("file{f:02}.txt")), body).unwrap();
        }
    }
    std::fs::create_dir_all(repo.join("assets")).unwrap();
    for (i, size) in LARGE_SIZES.iter().enumerate() {
        std::fs::write(repo.join(format!("assets/blob{i}.bin")), rng.bytes(*size)).unwrap();
    }
    std::fs::create_dir_all(repo.join("bin")).unwrap();
    for i in 0..3 {
        let path = repo.join(format!("bin/tool{i}.sh"));
        std::fs::write(&path, format!("#!/bin/sh\necho tool {i}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(repo.join("README.md"), "# source tree for the trust test\n").unwrap();
    std::os::unix::fs::symlink("README.md", repo.join("readme-link")).unwrap();
    git(repo, home, &["add", "-A"], None);
    git(repo, home, &["commit", "--quiet", "-m", "first"], None);

    // Second commit: every 10th file changes, 100 new files, one large file rewritten.
    for d in 0..DIRS {
        for f in (d % 10..FILES_PER_DIR).step_by(10) {
            let path = repo.join(leaf_dir(d)).join(format!("file{f:02}.txt"));
            let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            file.write_all(&text(&mut rng, "second", 120)).unwrap();
        }
    }
    std::fs::create_dir_all(repo.join("src/extra")).unwrap();
    for f in 0..100 {
        let len = 300 + rng.below(700) as usize;
        let body = text(&mut rng, &format!("extra {f}"), len);
        std::fs::write(repo.join(format!("src/extra/new{f:03}.txt")), body).unwrap();
    }
    std::fs::write(repo.join("assets/blob0.bin"), rng.bytes(LARGE_SIZES[0])).unwrap();
    git(repo, home, &["add", "-A"], None);
    git(repo, home, &["commit", "--quiet", "-m", "second"], None);

    // Third commit: some files deleted, some renamed.
    for d in (0..DIRS).step_by(2) {
        let dir = repo.join(leaf_dir(d));
        std::fs::remove_file(dir.join("file29.txt")).unwrap();
        std::fs::rename(dir.join("file28.txt"), dir.join("renamed28.txt")).unwrap();
    }
    git(repo, home, &["add", "-A"], None);
    git(repo, home, &["commit", "--quiet", "-m", "third"], None);
}

#[test]
fn git_clone_commit_gc_is_clean() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let source = work.path().join("source");
    build_source_repo(&source, &home);
    eprintln!("source repository built: {:.1?}", started.elapsed());

    let server = S3Server::start();
    server.create_bucket("gitrepo");
    let flags = ["--write-back-delay", "1s", "--poll-interval", "1s"];
    let needles = [".git/index", ".git/HEAD", ".git/refs", "packed-refs"];
    let mut mount = Mount::start(&server, "s3://gitrepo", &flags);
    let head = {
        let calls = Calls {
            mount: &mount,
            server: &server,
            bucket: "gitrepo",
            needles: &needles,
        };
        let on = Some(&calls);
        let url = format!("file://{}", source.display());
        git(&mount.path, &home, &["clone", "--quiet", &url, "repo"], on);
        let repo = mount.join("repo");
        // What a user or an orchestrator does next, while the clone's thousands of
        // exports are still queued: each rewrites .git/index or .git/config through a
        // lock file renamed over it.
        let status = git(&repo, &home, &["status", "--porcelain"], on);
        assert!(status.is_empty(), "git status after the clone:\n{status}");
        git(&repo, &home, &["config", "user.name", "Trust Test"], on);

        // A commit made on the mount: a third of the files changed (so `git add` holds
        // its index.lock for seconds), one new, one deleted.
        let tree = repo.clone();
        calls
            .run(
                Duration::from_secs(120),
                "edit files on the mount",
                move || {
                    let mut rng = Rng(7);
                    for d in 0..DIRS {
                        for f in (d % 3..FILES_PER_DIR - 2).step_by(3) {
                            let name = format!("file{f:02}.txt");
                            let path = tree.join(leaf_dir(d)).join(name);
                            let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
                            file.write_all(&text(&mut rng, "on the mount", 200))?;
                        }
                    }
                    std::fs::write(tree.join("NEW.md"), "written on the mount\n")?;
                    std::fs::remove_file(tree.join("src/extra/new000.txt"))
                },
            )
            .unwrap_or_else(|e| panic!("edit files on the mount: {e}\n{}", calls.report()));
        git(&repo, &home, &["add", "-A"], on);
        git(
            &repo,
            &home,
            &["commit", "--quiet", "-m", "on the mount"],
            on,
        );
        git(&repo, &home, &["gc", "--quiet"], on);
        eprintln!("clone, commit, gc done: {:.1?}", started.elapsed());

        let (code, stderr) = sync_code(&calls, &mount.path, Duration::from_secs(180));
        eprintln!("sync done: {:.1?}", started.elapsed());
        let lost = calls.run(CALL, "list lost+found", {
            let root = mount.path.clone();
            move || lost_found_files(&root)
        });
        assert!(
            code == Some(0) && lost.is_empty(),
            "sync exit {code:?} ({stderr}); lost+found: {lost:?}\n{}",
            calls.report()
        );
        git(&repo, &home, &["fsck", "--full", "--no-progress"], on);
        let status = git(&repo, &home, &["status", "--porcelain"], on);
        assert!(status.is_empty(), "git status on the mount:\n{status}");
        let count = git(&repo, &home, &["rev-list", "--count", "HEAD"], on);
        assert_eq!(
            count.trim(),
            "4",
            "three source commits and one on the mount"
        );
        let log = mount.log();
        let conflicts = conflict_lines(&log);
        assert!(conflicts.is_empty(), "conflicts logged: {conflicts:#?}");
        assert_answers(&mount.path, Duration::from_secs(5));
        git(&repo, &home, &["rev-parse", "HEAD"], on)
    };
    mount.stop();

    // A second mount of the bucket (its own cache dir) sees the same clean repository.
    let second = Mount::start(&server, "s3://gitrepo", &flags);
    let calls = Calls {
        mount: &second,
        server: &server,
        bucket: "gitrepo",
        needles: &needles,
    };
    let on = Some(&calls);
    let repo = second.join("repo");
    git(&repo, &home, &["fsck", "--full", "--no-progress"], on);
    let status = git(&repo, &home, &["status", "--porcelain"], on);
    assert!(
        status.is_empty(),
        "git status on the second mount:\n{status}"
    );
    assert_eq!(git(&repo, &home, &["rev-parse", "HEAD"], on), head);
    assert_answers(&second.path, Duration::from_secs(5));
    eprintln!("total: {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 2. The atomic-save loop while thousands of other exports are queued

const BULK: usize = 2000;
const SAVERS: usize = 10;
const ROUNDS: usize = 20;

fn bulk_body(n: usize, version: u32) -> Vec<u8> {
    format!("bulk file {n} version {version}\n")
        .repeat(4)
        .into_bytes()
}

fn save_part(saver: usize, round: usize, part: u8) -> Vec<u8> {
    format!("saver {saver} round {round} part {part}\n")
        .repeat(64)
        .into_bytes()
}

/// Where saver `i`'s round `r` ends: over `f{i}` on even rounds, on a new name
/// `g{i}_{r}` on odd ones.
fn save_target(saver: usize, round: usize) -> String {
    if round % 2 == 0 {
        format!("f{saver}")
    } else {
        format!("g{saver}_{round}")
    }
}

/// One saver: ROUNDS times write `f{i}.tmp`, pause past the write-back delay, append,
/// rename over the round's target.
fn save_loop(dir: &Path, saver: usize) -> Result<(), String> {
    let tmp = dir.join(format!("f{saver}.tmp"));
    for round in 0..ROUNDS {
        let at =
            |what: &str, e: std::io::Error| format!("saver {saver} round {round}: {what}: {e}");
        std::fs::write(&tmp, save_part(saver, round, 1)).map_err(|e| at("write tmp", e))?;
        std::thread::sleep(Duration::from_millis(1500));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&tmp)
            .map_err(|e| at("open tmp", e))?;
        file.write_all(&save_part(saver, round, 2))
            .map_err(|e| at("append tmp", e))?;
        drop(file);
        std::fs::rename(&tmp, dir.join(save_target(saver, round))).map_err(|e| at("rename", e))?;
    }
    Ok(())
}

#[test]
fn save_loop_with_queued_exports() {
    let started = Instant::now();
    let server = S3Server::start();
    server.create_bucket("saves");
    let mount = Mount::start(
        &server,
        "s3://saves",
        &["--write-back-delay", "1s", "--poll-interval", "1s"],
    );
    let calls = Calls {
        mount: &mount,
        server: &server,
        bucket: "saves",
        needles: &["save/"],
    };
    let root = mount.path.clone();

    // Thousands of exports queued first...
    let bulk_dir = root.join("bulk");
    let save_dir = root.join("save");
    {
        let (bulk_dir, save_dir) = (bulk_dir.clone(), save_dir.clone());
        calls
            .run(Duration::from_secs(120), "write bulk files", move || {
                std::fs::create_dir(&bulk_dir)?;
                std::fs::create_dir(&save_dir)?;
                for n in 0..BULK {
                    std::fs::write(bulk_dir.join(format!("{n:04}")), bulk_body(n, 0))?;
                }
                Ok::<(), std::io::Error>(())
            })
            .unwrap_or_else(|e| panic!("write bulk files: {e}"));
    }
    eprintln!("bulk written: {:.1?}", started.elapsed());
    // ...and kept busy during the loop: 40 rewrites a second.
    let stop = Arc::new(AtomicBool::new(false));
    let (churn_tx, churn_rx) = mpsc::channel();
    {
        let (stop, bulk_dir) = (stop.clone(), bulk_dir.clone());
        std::thread::spawn(move || {
            let mut versions = vec![0u32; BULK];
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    versions[next] += 1;
                    let path = bulk_dir.join(format!("{next:04}"));
                    if let Err(e) = std::fs::write(&path, bulk_body(next, versions[next])) {
                        let _ = churn_tx.send(Err(format!("rewrite {}: {e}", path.display())));
                        return;
                    }
                    next = (next + 1) % BULK;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            let _ = churn_tx.send(Ok(versions));
        });
    }

    let (tx, rx) = mpsc::channel();
    for saver in 0..SAVERS {
        let (tx, save_dir) = (tx.clone(), save_dir.clone());
        std::thread::spawn(move || {
            let _ = tx.send(save_loop(&save_dir, saver));
        });
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    for _ in 0..SAVERS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}\n{}", calls.report()),
            Err(_) => panic!(
                "save loops still running after 180 s (the mount hangs?)\n{}",
                calls.report()
            ),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let versions = match churn_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(versions)) => versions,
        Ok(Err(e)) => panic!("{e}\n{}", calls.report()),
        Err(_) => panic!(
            "bulk rewrites did not stop within 30 s (the mount hangs?)\n{}",
            calls.report()
        ),
    };
    eprintln!(
        "save loops done: {:.1?}, {} bulk rewrites",
        started.elapsed(),
        versions.iter().map(|v| *v as usize).sum::<usize>()
    );

    let (code, stderr) = sync_code(&calls, &root, Duration::from_secs(300));
    eprintln!("sync done: {:.1?}", started.elapsed());
    let lost = calls.run(CALL, "list lost+found", {
        let root = root.clone();
        move || lost_found_files(&root)
    });
    assert!(
        code == Some(0) && lost.is_empty(),
        "sync exit {code:?} ({stderr}); lost+found: {lost:?}\n{}",
        calls.report()
    );
    let log = mount.log();
    let conflicts = conflict_lines(&log);
    assert!(conflicts.is_empty(), "conflicts logged: {conflicts:#?}");

    // The bucket, read by an independent client: exactly the expected keys and bytes.
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for saver in 0..SAVERS {
        for round in 0..ROUNDS {
            if round % 2 == 1 || round == ROUNDS - 2 {
                let mut body = save_part(saver, round, 1);
                body.extend(save_part(saver, round, 2));
                expected.push((format!("save/{}", save_target(saver, round)), body));
            }
        }
    }
    for (n, version) in versions.iter().enumerate() {
        expected.push((format!("bulk/{n:04}"), bulk_body(n, *version)));
    }
    let keys: BTreeSet<String> = server.list_all("saves").into_keys().collect();
    let tmp_keys: Vec<&String> = keys.iter().filter(|k| k.ends_with(".tmp")).collect();
    assert!(
        tmp_keys.is_empty(),
        "temporary keys left in S3: {tmp_keys:?}"
    );
    let mut want: BTreeSet<String> = expected.iter().map(|(k, _)| k.clone()).collect();
    want.insert("bulk/".into());
    want.insert("save/".into());
    assert_eq!(
        keys.difference(&want).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "unexpected keys in the bucket"
    );
    assert_eq!(
        want.difference(&keys).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "keys missing from the bucket"
    );
    for (key, body) in &expected {
        assert!(
            server.get("saves", key) == *body,
            "wrong bytes in S3 for {key}"
        );
    }
    // The mount shows the same bytes.
    let saved: Vec<(String, Vec<u8>)> = expected
        .iter()
        .filter(|(k, _)| k.starts_with("save/"))
        .cloned()
        .collect();
    let wrong = calls.run(Duration::from_secs(30), "read saved files", {
        let root = root.clone();
        move || {
            saved
                .iter()
                .filter(|(key, body)| std::fs::read(root.join(key)).ok().as_ref() != Some(body))
                .map(|(key, _)| key.clone())
                .collect::<Vec<_>>()
        }
    });
    assert!(wrong.is_empty(), "wrong bytes on the mount: {wrong:?}");
    assert_answers(&root, Duration::from_secs(5));
    eprintln!("total: {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 2b. The shortest sequences behind the git failures, each on its own

/// Saves `body` to `name` on the mount the way git and editors do: write `name.lock`,
/// rename it over `name`. With `export_lock`, the lock file is exported under its own
/// name first (as git's `index.lock` is while it stays open through a checkout).
fn atomic_save(calls: &Calls, name: &str, body: &'static [u8], export_lock: bool) {
    let root = calls.root().to_path_buf();
    let lock = root.join(format!("{name}.lock"));
    if export_lock {
        let path = lock.clone();
        calls
            .run(CALL, "create the lock", move || std::fs::write(&path, b""))
            .unwrap();
        let (code, stderr) = sync_code(calls, &lock, Duration::from_secs(30));
        assert_eq!(
            code,
            Some(0),
            "sync of {name}.lock: {stderr}\n{}",
            calls.report()
        );
    }
    let target = root.join(name);
    calls
        .run(CALL, &format!("save {name}"), move || {
            std::fs::write(&lock, body)?;
            std::fs::rename(&lock, &target)
        })
        .unwrap_or_else(|e| panic!("save {name}: {e}"));
}

#[test]
fn repeated_atomic_saves_before_export_are_no_conflict() {
    let server = S3Server::start();
    server.create_bucket("saves2");
    // A long write-back delay: only the explicit syncs export, the poller (1 s) looks on.
    let mount = Mount::start(
        &server,
        "s3://saves2",
        &["--write-back-delay", "60s", "--poll-interval", "1s"],
    );
    let calls = Calls {
        mount: &mount,
        server: &server,
        bucket: "saves2",
        needles: &["cfg", "idx"],
    };
    let root = mount.path.clone();
    let settle_and_sync = |what: &str| {
        // Several poll rounds see the pending records first.
        std::thread::sleep(Duration::from_millis(2500));
        let (code, stderr) = sync_code(&calls, &root, Duration::from_secs(30));
        assert_eq!(code, Some(0), "{what}: sync: {stderr}\n{}", calls.report());
        assert!(
            conflict_lines(&mount.log()).is_empty(),
            "{what}: a conflict no one caused\n{}",
            calls.report()
        );
    };

    // git's config: saved, exported, then saved twice before the next export.
    atomic_save(&calls, "cfg", b"cfg v1\n", false);
    settle_and_sync("cfg v1");
    atomic_save(&calls, "cfg", b"cfg v2\n", false);
    atomic_save(&calls, "cfg", b"cfg v3\n", false);
    settle_and_sync("cfg v3 saved over an unexported save");
    assert_eq!(server.get("saves2", "cfg"), b"cfg v3\n");

    // git's index: the lock exported empty under its own name, then written and
    // renamed; the next save lands on the renamed entry before it is exported.
    atomic_save(&calls, "idx", b"idx v1\n", true);
    settle_and_sync("idx v1");
    atomic_save(&calls, "idx", b"idx v2\n", true);
    atomic_save(&calls, "idx", b"idx v3\n", false);
    settle_and_sync("idx v3 saved over a renamed, unexported lock");
    assert_eq!(server.get("saves2", "idx"), b"idx v3\n");

    let lost = calls.run(CALL, "list lost+found", {
        let root = root.clone();
        move || lost_found_files(&root)
    });
    assert!(lost.is_empty(), "lost+found: {lost:?}\n{}", calls.report());
    let log = mount.log();
    let conflicts = conflict_lines(&log);
    assert!(conflicts.is_empty(), "conflicts logged: {conflicts:#?}");
    let keys: BTreeSet<String> = server.list_all("saves2").into_keys().collect();
    assert_eq!(
        keys,
        BTreeSet::from(["cfg".to_string(), "idx".to_string()]),
        "no lock file is left in S3"
    );
    assert_answers(&root, Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------
// 3. Conflicts leave the mount answering

/// The poll-time conflict line of the daemon log.
const POLL_CONFLICT: &str = "changed in S3 while";

#[test]
fn conflicts_leave_the_mount_answering() {
    let server = S3Server::start();
    server.create_bucket("clash");
    let mount = Mount::start(
        &server,
        "s3://clash",
        &["--poll-interval", "1s", "--write-back-delay", "5s"],
    );
    let calls = Calls {
        mount: &mount,
        server: &server,
        bucket: "clash",
        needles: &[],
    };
    let root = mount.path.clone();
    let in_s3 =
        |key: &str, body: &[u8]| server.exists("clash", key) && server.get("clash", key) == body;

    // (a) Export-time conflict: a.txt exported, changed again on the mount, overwritten
    // in S3, then `s3files sync` exports it at once and meets the bucket's version.
    calls.write("a.txt", b"a: first local version\n");
    assert!(
        common::wait_for(Duration::from_secs(30), || in_s3(
            "a.txt",
            b"a: first local version\n"
        )),
        "a.txt not exported:\n{}",
        calls.report()
    );
    calls.write("a.txt", b"a: second local version\n");
    // Right after a poll round, so the next one (1 s away) cannot see the change first.
    let polled = calls.listings();
    assert!(
        common::wait_for(Duration::from_secs(10), || calls.listings() > polled),
        "no poll listing within 10 s\n{}",
        calls.report()
    );
    server.put("clash", "a.txt", "a: the bucket's version\n", &[]);
    let (code, stderr) = sync_code(&calls, &root, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(1),
        "sync must fail on the conflict ({stderr})\n{}",
        calls.report()
    );
    assert!(
        !calls.logged(POLL_CONFLICT, "a.txt"),
        "the poller, not the export, found a.txt's conflict:\n{}",
        calls.report()
    );
    assert_eq!(calls.read("a.txt", CALL), b"a: the bucket's version\n");
    assert_eq!(
        calls.lost_copies("a.txt"),
        [b"a: second local version\n".to_vec()]
    );
    assert_eq!(server.get("clash", "a.txt"), b"a: the bucket's version\n");
    eprintln!("{}: export-time conflict resolved", utc_now());

    // (b) Poll-time conflict: b.txt exported, changed on the mount, overwritten in S3
    // well before the 5 s write-back delay ends: the poller resolves it.
    calls.write("b.txt", b"b: first local version\n");
    assert!(
        common::wait_for(Duration::from_secs(30), || in_s3(
            "b.txt",
            b"b: first local version\n"
        )),
        "b.txt not exported:\n{}",
        calls.report()
    );
    calls.write("b.txt", b"b: second local version\n");
    server.put("clash", "b.txt", "b: the bucket's version\n", &[]);
    let resolved = common::wait_for(Duration::from_secs(15), || {
        calls.logged(POLL_CONFLICT, "b.txt")
            && calls.lost_copies("b.txt") == [b"b: second local version\n".to_vec()]
    });
    assert!(
        resolved,
        "the poller did not resolve b.txt's conflict within 15 s:\n{}",
        calls.report()
    );
    assert_eq!(calls.read("b.txt", CALL), b"b: the bucket's version\n");
    assert_eq!(server.get("clash", "b.txt"), b"b: the bucket's version\n");
    eprintln!("{}: poll-time conflict resolved", utc_now());

    // `ls -l` of the root looks lost+found up.
    let dir = root.clone();
    let names = calls.run(CALL, "ls -l the root", move || {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            std::fs::symlink_metadata(entry.path()).unwrap();
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names
    });
    assert!(
        names.iter().any(|n| n.starts_with(".s3files-lost+found-")),
        "{names:?}"
    );

    // For 60 s (many poll rounds), stat, ls and read each answer within 1 s.
    let probe = Duration::from_secs(1);
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(60) {
        let at = format!("{:.1} s into the 60 s", start.elapsed().as_secs_f64());
        let dir = root.clone();
        calls.run(probe, &format!("stat of the root, {at}"), move || {
            std::fs::metadata(&dir).unwrap()
        });
        let dir = root.clone();
        calls.run(probe, &format!("ls of the root, {at}"), move || {
            std::fs::read_dir(&dir).unwrap().count()
        });
        assert_eq!(calls.read("a.txt", probe), b"a: the bucket's version\n");
        rounds += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{rounds} probe rounds answered");

    // And it still exports new work.
    calls.write("c.txt", b"c: after the conflicts\n");
    let (code, stderr) = sync_code(&calls, &root, Duration::from_secs(60));
    assert_eq!(code, Some(0), "sync after the conflicts: {stderr}");
    assert_eq!(server.get("clash", "c.txt"), b"c: after the conflicts\n");
    assert_answers(&root, Duration::from_secs(5));
}
