//! Import through real mounts against a real S3 server: changes made in the bucket show
//! on the mount within the poll interval, cached data is never read stale, several mounts
//! share one bucket like S3 Files clients, and poll-time conflicts end with the bucket's
//! version on the path and the local bytes in lost+found.

mod common;

use std::time::{Duration, Instant};

use common::{
    assert_answers, block_on, free_port, getdents_names, metric_value, metrics_get, wait_for,
    Mount, S3Server,
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

enum Change {
    Create(String, Vec<u8>),
    Overwrite(String, Vec<u8>),
    Delete(String),
}

#[test]
fn remote_changes_show_within_the_poll_interval() {
    let server = S3Server::start();
    server.create_bucket("remote");
    for d in 0..5 {
        for f in 0..6 {
            server.put(
                "remote",
                &format!("d{d}/f{f}.txt"),
                format!("v0 d{d} f{f}"),
                &[],
            );
        }
    }
    let mount = Mount::start(
        &server,
        "s3://remote",
        &["--poll-interval", "1s", "--write-back-delay", "60s"],
    );
    // Access the directories: they are the ones watched.
    for d in 0..5 {
        assert_eq!(
            std::fs::read_dir(mount.join(&format!("d{d}")))
                .unwrap()
                .count(),
            6
        );
    }
    let mut latencies = Vec::new();
    for batch in 0..5 {
        let mut changes = Vec::new();
        for d in 0..5 {
            let n = batch * 5 + d;
            changes.push(Change::Create(
                format!("d{d}/new{batch}.txt"),
                format!("new {n}").into_bytes(),
            ));
            changes.push(match batch % 2 {
                0 => Change::Overwrite(
                    format!("d{d}/f{batch}.txt"),
                    format!("v1 {n} longer").into_bytes(),
                ),
                _ => Change::Delete(format!("d{d}/f{batch}.txt")),
            });
        }
        let started = Instant::now();
        for change in &changes {
            match change {
                Change::Create(key, body) | Change::Overwrite(key, body) => {
                    server.put("remote", key, body.clone(), &[])
                }
                Change::Delete(key) => {
                    block_on(
                        server
                            .client()
                            .delete_object()
                            .bucket("remote")
                            .key(key)
                            .send(),
                    )
                    .unwrap();
                }
            }
        }
        let mut pending: Vec<(usize, Instant)> = Vec::new();
        let mut seen = vec![None; changes.len()];
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, change) in changes.iter().enumerate() {
                if seen[i].is_some() {
                    continue;
                }
                let visible = match change {
                    Change::Create(key, body) | Change::Overwrite(key, body) => {
                        std::fs::read(mount.join(key)).is_ok_and(|b| &b == body)
                    }
                    Change::Delete(key) => !mount.join(key).exists(),
                };
                if visible {
                    seen[i] = Some(started.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        pending.clear();
        for (i, s) in seen.iter().enumerate() {
            let s = s.unwrap_or_else(|| {
                panic!("change {i} of batch {batch} never showed:\n{}", mount.log())
            });
            latencies.push(s);
        }
    }
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    eprintln!(
        "{} remote changes, time until visible: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        p50,
        p99,
        max
    );
    assert_eq!(latencies.len(), 50);
    assert!(
        p99 <= Duration::from_secs(2),
        "p99 {p99:?} > poll interval + 1 s"
    );
}

#[test]
fn cached_file_is_never_read_stale() {
    let server = S3Server::start();
    server.create_bucket("stale");
    let old = vec![b'o'; 10_000];
    let new = vec![b'n'; 12_000];
    server.put("stale", "hot.bin", old.clone(), &[]);
    let mount = Mount::start(&server, "s3://stale", &["--poll-interval", "1s"]);
    let path = mount.join("hot.bin");
    assert_eq!(std::fs::read(&path).unwrap(), old);
    let changed_at = Instant::now() + Duration::from_millis(500);
    let mut saw_new = false;
    let mut reads = 0;
    let mut eio = 0;
    while Instant::now() < changed_at + Duration::from_secs(4) {
        if !saw_new
            && Instant::now() >= changed_at
            && reads > 0
            && server.get("stale", "hot.bin") == old
        {
            server.put("stale", "hot.bin", new.clone(), &[]);
        }
        match std::fs::read(&path) {
            Ok(bytes) if bytes == old => {
                assert!(!saw_new, "old bytes after new ones (read {reads})")
            }
            Ok(bytes) if bytes == new => saw_new = true,
            // A handle opened on the old version whose GET meets the new one: EIO, never
            // a mix of versions.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => eio += 1,
            Ok(bytes) => panic!("mixed or torn read of {} bytes", bytes.len()),
            Err(e) => panic!("read failed: {e}"),
        }
        reads += 1;
    }
    eprintln!("{reads} reads, {eio} EIO during the change");
    assert!(saw_new, "the new version never showed");
}

#[test]
fn poll_time_conflicts_bucket_wins() {
    let server = S3Server::start();
    server.create_bucket("pollclash");
    server.put("pollclash", "modify.txt", "original", &[]);
    server.put("pollclash", "delete.txt", "original", &[]);
    let mount = Mount::start(
        &server,
        "s3://pollclash",
        &["--poll-interval", "1s", "--write-back-delay", "60s"],
    );
    std::fs::write(mount.join("modify.txt"), "local edit").unwrap();
    std::fs::write(mount.join("delete.txt"), "local edit 2").unwrap();
    server.put("pollclash", "modify.txt", "bucket edit", &[]);
    block_on(
        server
            .client()
            .delete_object()
            .bucket("pollclash")
            .key("delete.txt")
            .send(),
    )
    .unwrap();
    // No export is due for a minute: the poller finds both conflicts.
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(
            mount.join("modify.txt")
        )
        .is_ok_and(|t| t == "bucket edit")),
        "{}",
        mount.log()
    );
    assert!(wait_for(Duration::from_secs(5), || !mount
        .join("delete.txt")
        .exists()));
    let lost = common::lost_found_dir(&mount.path);
    let mut kept: Vec<String> = std::fs::read_dir(&lost)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["local edit", "local edit 2"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.get("pollclash", "modify.txt"), b"bucket edit");
    assert!(!server.exists("pollclash", "delete.txt"));
}

/// The S3 Files "code review agents" example: an orchestrator writes a source tree,
/// two agents (own daemons, own cache dirs) read it and each write a findings file,
/// and the orchestrator sees both.
#[test]
fn code_review_agents_share_one_bucket() {
    let server = S3Server::start();
    server.create_bucket("workspace");
    server.put("workspace", "README.md", "shared workspace\n", &[]);
    let opts = ["--poll-interval", "1s", "--write-back-delay", "1s"];
    let orchestrator = Mount::start(&server, "s3://workspace", &opts);
    let agents = [
        Mount::start(&server, "s3://workspace", &opts),
        Mount::start(&server, "s3://workspace", &opts),
    ];
    for agent in &agents {
        assert!(agent.join("README.md").exists()); // the root is watched from now on
    }

    // The orchestrator writes a source tree of 300 files.
    let files: Vec<(String, String)> = (0..300)
        .map(|i| {
            (
                format!("src/mod{}/file{i:03}.rs", i % 10),
                format!("// file {i}\nfn f{i}() {{}}\n"),
            )
        })
        .collect();
    std::fs::create_dir(orchestrator.join("src")).unwrap();
    for m in 0..10 {
        std::fs::create_dir(orchestrator.join(&format!("src/mod{m}"))).unwrap();
    }
    for (path, body) in &files {
        std::fs::write(orchestrator.join(path), body).unwrap();
    }

    // Each agent sees the whole tree appear, reads it, and writes its findings.
    for (n, agent) in agents.iter().enumerate() {
        let appeared = wait_for(Duration::from_secs(30), || {
            (0..10).all(|m| {
                std::fs::read_dir(agent.join(&format!("src/mod{m}"))).is_ok_and(|d| d.count() == 30)
            })
        });
        assert!(appeared, "agent {n} did not see the tree:\n{}", agent.log());
        let mut total = 0;
        for (path, body) in &files {
            assert_eq!(
                &std::fs::read_to_string(agent.join(path)).unwrap(),
                body,
                "agent {n}: {path}"
            );
            total += body.len();
        }
        let findings = format!(
            "{{\"agent\": {n}, \"files\": {}, \"bytes\": {total}}}\n",
            files.len()
        );
        std::fs::write(agent.join(&format!("findings-{n}.json")), findings).unwrap();
    }

    // The orchestrator sees both findings files with the right contents.
    for n in 0..2 {
        let path = orchestrator.join(&format!("findings-{n}.json"));
        let ok = wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&format!("\"agent\": {n}")))
        });
        assert!(
            ok,
            "orchestrator never saw findings-{n}.json:\n{}",
            orchestrator.log()
        );
    }
}

#[test]
fn unchanged_file_is_served_from_the_page_cache_until_it_changes() {
    let server = S3Server::start();
    server.create_bucket("pages");
    let v1 = vec![b'1'; 50_000];
    let v2 = vec![b'2'; 60_000];
    server.put("pages", "hot.bin", v1.clone(), &[]);
    let mount = Mount::start(&server, "s3://pages", &["--poll-interval", "1s"]);
    let path = mount.join("hot.bin");
    for _ in 0..5 {
        assert_eq!(std::fs::read(&path).unwrap(), v1);
    }
    // Reopening an unchanged file keeps the kernel's pages: one GET for five reads.
    assert_eq!(
        server.count_requests("GET", "pages", "hot.bin"),
        1,
        "{}",
        server.request_log()
    );
    server.put("pages", "hot.bin", v2.clone(), &[]);
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read(&path)
            .is_ok_and(|b| b == v2)),
        "the new version never showed"
    );
}

/// FUSE READDIR requests the mount has answered so far. A request is counted just
/// after its reply, so this waits until the count holds still for 100 ms.
fn readdirs(port: u16) -> f64 {
    let count = || {
        let (_, _, body) = metrics_get(port, "/metrics");
        metric_value(
            &body,
            "s3files_fuse_request_duration_seconds_count{op=\"readdir\"}",
        )
    };
    let mut last = count();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("READDIR count still moving: {last}");
}

/// The kernel keeps directory listings (`FOPEN_CACHE_DIR`): reading a directory again
/// costs no READDIR. Changes behind the kernel's back still show in a bare `getdents`
/// (nothing stats the directory first) within the poll interval: a key added and one
/// deleted in the bucket, and a conflict's file in lost+found; the mount's own changes
/// show at once.
#[test]
fn kept_listings_show_every_change() {
    const LIMIT: Duration = Duration::from_secs(10);
    let server = S3Server::start();
    server.create_bucket("kept");
    server.put("kept", "d/a", "a", &[]);
    server.put("kept", "d/b", "b", &[]);
    let port = free_port();
    let mount = Mount::start(
        &server,
        "s3://kept",
        &[
            "--poll-interval",
            "1s",
            "--write-back-delay",
            "60s",
            "--metrics-addr",
            &port.to_string(),
        ],
    );
    let dir = mount.join("d");
    let names = || getdents_names(&dir).unwrap();
    let shows = |want: &[&str]| wait_for(LIMIT, || names() == want);
    let kept = |when: &str| {
        names();
        let before = readdirs(port);
        let again = names();
        assert_eq!(readdirs(port), before, "{when}: listed again: {again:?}");
    };
    assert_eq!(names(), ["a", "b"]);
    kept("first listing");

    server.put("kept", "d/c", "c", &[]);
    assert!(shows(&["a", "b", "c"]), "{:?}\n{}", names(), mount.log());
    block_on(
        server
            .client()
            .delete_object()
            .bucket("kept")
            .key("d/b")
            .send(),
    )
    .unwrap();
    assert!(shows(&["a", "c"]), "{:?}\n{}", names(), mount.log());
    kept("after the bucket's changes");

    std::fs::write(dir.join("e"), "local").unwrap();
    assert_eq!(names(), ["a", "c", "e"]);
    std::fs::remove_file(dir.join("c")).unwrap();
    assert_eq!(names(), ["a", "e"]);
    kept("after the mount's changes");

    // A conflict: the bucket's version stays at the path, the local one goes to
    // lost+found, which shows in the root's kept listing and its own.
    getdents_names(&mount.path).unwrap();
    std::fs::write(dir.join("a"), "local edit").unwrap();
    server.put("kept", "d/a", "bucket edit", &[]);
    assert!(
        wait_for(LIMIT, || std::fs::read(dir.join("a"))
            .is_ok_and(|b| b == b"bucket edit")),
        "{}",
        mount.log()
    );
    let lost_name = || {
        getdents_names(&mount.path)
            .unwrap()
            .into_iter()
            .find(|n| n.starts_with(".s3files-lost+found-"))
    };
    assert!(wait_for(LIMIT, || lost_name().is_some()), "{}", mount.log());
    let lost = mount.path.join(lost_name().unwrap());
    assert_eq!(getdents_names(&lost).unwrap().len(), 1);
    assert_eq!(names(), ["a", "e"]);
    assert_answers(&mount.path, LIMIT);
}
