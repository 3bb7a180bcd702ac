//! `--metrics-addr` on a live mount: the Prometheus endpoint answers on loopback, and its
//! counters and gauges move with the work done through the mount and in the bucket
//! (writes and exports, imports at listing, cache hits, a conflict and lost+found); a
//! busy or bad address fails the mount with one line.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::{
    assert_answers, free_port, is_mounted, metric_value as value, metrics_get as get, run_s3files,
    wait_for, Mount, S3Server,
};

const LIMIT: Duration = Duration::from_secs(10);

/// The exposition at /metrics.
fn scrape(port: u16) -> String {
    let (status, headers, body) = get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{headers}"
    );
    body
}

/// How much `series` moved between two scrapes.
fn moved(before: &str, after: &str, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

fn cache_hits(text: &str) -> f64 {
    value(text, "s3files_cache_hits_total{tier=\"memory\"}")
        + value(text, "s3files_cache_hits_total{tier=\"disk\"}")
}

#[test]
fn counters_move_with_writes_exports_imports_cache_hits_and_conflicts() {
    let server = S3Server::start();
    server.create_bucket("metered");
    server.put("metered", "seed/small.txt", "imported when listed", &[]);
    server.put("metered", "dir/shared.txt", "original", &[]);
    let port = free_port();
    // Passthrough off: with it, reads of cached files and writes go from the kernel to
    // the local files and the daemon's read and write counters do not see them (which
    // docs/CONFIGURATION.md says); this test is about the counters the daemon keeps.
    let mount = Mount::start(
        &server,
        "s3://metered",
        &[
            "--metrics-addr",
            &port.to_string(),
            "--write-back-delay",
            "60s",
            "--poll-interval",
            "1s",
            "--no-passthrough",
        ],
    );
    let start = scrape(port);
    let (status, _, body) = get(port, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "{body}");
    // The S3 Files metrics are all there from the start.
    for name in [
        "s3files_pending_exports",
        "s3files_export_age_seconds",
        "s3files_import_age_seconds",
        "s3files_export_failures_total",
        "s3files_import_failures_total",
        "s3files_lost_and_found_files",
        "s3files_data_read_bytes_total",
        "s3files_data_write_bytes_total",
        "s3files_metadata_read_bytes_total",
        "s3files_metadata_write_bytes_total",
        "s3files_inodes",
        "s3files_storage_bytes",
    ] {
        assert!(start.contains(&format!("\n{name} ")), "{name}:\n{start}");
    }
    assert_eq!(value(&start, "s3files_pending_exports"), 0.0);
    assert_eq!(value(&start, "s3files_lost_and_found_files"), 0.0);

    // A write: counted as it comes, pending (with an age) until synced, then exported.
    let data = vec![b'w'; 10_000];
    std::fs::write(mount.join("new.bin"), &data).unwrap();
    assert!(wait_for(Duration::from_secs(5), || {
        value(&scrape(port), "s3files_export_age_seconds") >= 1.0
    }));
    let written = scrape(port);
    assert_eq!(
        moved(&start, &written, "s3files_data_write_bytes_total"),
        10_000.0
    );
    assert_eq!(value(&written, "s3files_pending_exports"), 1.0);
    assert!(moved(&start, &written, "s3files_metadata_write_bytes_total") >= 4096.0);
    assert!(
        moved(
            &start,
            &written,
            "s3files_fuse_request_duration_seconds_count{op=\"write\"}"
        ) >= 1.0
    );
    common::sync(&mount.path, Duration::from_secs(30)).unwrap_or_else(|e| panic!("sync: {e}"));
    assert_eq!(server.get("metered", "new.bin"), data);
    let synced = scrape(port);
    assert_eq!(moved(&written, &synced, "s3files_exports_total"), 1.0);
    assert_eq!(
        moved(&written, &synced, "s3files_export_bytes_total"),
        10_000.0
    );
    assert_eq!(
        moved(&written, &synced, "s3files_s3_requests_total{kind=\"put\"}"),
        1.0
    );
    assert!(
        moved(
            &written,
            &synced,
            "s3files_s3_request_duration_seconds_count{kind=\"put\"}"
        ) >= 1.0
    );
    assert_eq!(value(&synced, "s3files_pending_exports"), 0.0);
    assert_eq!(value(&synced, "s3files_export_age_seconds"), 0.0);
    assert_eq!(value(&synced, "s3files_export_failures_total"), 0.0);

    // Listing a directory imports its small file; reading it then hits the cache.
    let names: Vec<_> = std::fs::read_dir(mount.join("seed")).unwrap().collect();
    assert_eq!(names.len(), 1);
    assert!(
        wait_for(Duration::from_secs(20), || {
            moved(
                &synced,
                &scrape(port),
                "s3files_imports_total{trigger=\"listing\"}",
            ) >= 1.0
        }),
        "no import at listing:\n{}",
        scrape(port)
    );
    let imported = scrape(port);
    assert_eq!(
        moved(
            &synced,
            &imported,
            "s3files_import_bytes_total{trigger=\"listing\"}"
        ),
        20.0
    );
    assert!(value(&imported, "s3files_storage_bytes") > 0.0);
    assert!(
        moved(&start, &imported, "s3files_inodes") >= 3.0,
        "new.bin, seed, small.txt"
    );
    let text = std::fs::read(mount.join("seed/small.txt")).unwrap();
    assert_eq!(text, b"imported when listed");
    let read = scrape(port);
    assert!(cache_hits(&read) > cache_hits(&imported), "{read}");
    assert_eq!(moved(&imported, &read, "s3files_cache_misses_total"), 0.0);
    assert_eq!(
        moved(&imported, &read, "s3files_data_read_bytes_total"),
        20.0
    );
    assert!(
        moved(&start, &read, "s3files_metadata_read_bytes_total") >= 4096.0,
        "lookups and readdir are metadata reads"
    );
    assert!(
        moved(
            &start,
            &read,
            "s3files_fuse_request_duration_seconds_count{op=\"lookup\"}"
        ) >= 1.0
    );

    // Polling runs: the import age stays around the poll interval.
    assert!(wait_for(Duration::from_secs(20), || {
        value(&scrape(port), "s3files_poll_rounds_total") >= 2.0
    }));
    let age = value(&scrape(port), "s3files_import_age_seconds");
    assert!(age < 15.0, "import age {age}");

    // A conflict: the mount changes a file, the bucket changes it first. The bucket wins
    // (at the poll or the export, whichever comes first) and the local copy goes to
    // lost+found.
    let shared = mount.join("dir/shared.txt");
    assert_eq!(std::fs::read_to_string(&shared).unwrap(), "original");
    let before = scrape(port);
    std::fs::write(&shared, "local change").unwrap();
    server.put("metered", "dir/shared.txt", "bucket change", &[]);
    let _ = common::sync(&mount.path, Duration::from_secs(30));
    assert!(
        wait_for(Duration::from_secs(30), || {
            value(&scrape(port), "s3files_lost_and_found_files") == 1.0
        }),
        "{}",
        scrape(port)
    );
    let after = scrape(port);
    assert_eq!(moved(&before, &after, "s3files_conflicts_total"), 1.0);
    assert_eq!(moved(&before, &after, "s3files_exports_total"), 0.0);
    assert_eq!(server.get("metered", "dir/shared.txt"), b"bucket change");
    assert_eq!(common::lost_found_files(&mount.path).len(), 1);
    assert_eq!(value(&after, "s3files_pending_exports"), 0.0);

    assert_answers(&mount.path, LIMIT);
}

/// Runs `s3files mount` (background mode: the reason comes back through the daemon's
/// readiness pipe) expecting it to fail; returns its one stderr line.
fn mount_fails(server: &S3Server, metrics_addr: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache = dir.path().join("cache");
    let args = [
        "mount",
        "s3://metered",
        mnt.to_str().unwrap(),
        "--endpoint-url",
        &server.endpoint,
        "--force-path-style",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--metrics-addr",
        metrics_addr,
    ];
    let (out, elapsed) = run_s3files(&args, &[], LIMIT + Duration::from_secs(5));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{metrics_addr}: mounted; {stderr}");
    assert!(elapsed < LIMIT, "{metrics_addr}: took {elapsed:?}");
    assert!(!is_mounted(Path::new(&mnt)), "{metrics_addr}: left a mount");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{metrics_addr}: {stderr}");
    assert!(lines[0].starts_with("s3files: error: "), "{stderr}");
    lines[0].to_string()
}

#[test]
fn busy_or_bad_metrics_address_fails_the_mount_with_one_line() {
    let server = S3Server::start();
    server.create_bucket("metered");
    server.put("metered", "f", "x", &[]);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for addr in [
        port.to_string(),
        format!(":{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let line = mount_fails(&server, &addr);
        assert!(
            line.contains(&format!(
                "cannot serve metrics on 127.0.0.1:{port} (--metrics-addr)"
            )) && line.contains("in use"),
            "{addr}: {line}"
        );
    }
    for (addr, why) in [
        ("nine", "invalid --metrics-addr 'nine': expected PORT"),
        ("0", "invalid --metrics-addr '0': the port must be 1-65535"),
        ("::1:9100", "an IPv6 address goes in brackets"),
    ] {
        let line = mount_fails(&server, addr);
        assert!(line.contains(why), "{addr}: {line}");
    }
    drop(taken);
    // The same flags with a free port mount, and the endpoint answers at once.
    let port = free_port();
    let mount = Mount::start(
        &server,
        "s3://metered",
        &["--metrics-addr", &port.to_string()],
    );
    let before = scrape(port);
    assert!(before.contains("# TYPE s3files_inodes gauge"));
    // With passthrough (the default) the kernel writes a new file's staged bytes itself:
    // the daemon's write counter sees them only if the open was not passed through, and
    // the export counts them either way (docs/CONFIGURATION.md "Metrics").
    let data = vec![b'p'; 5_000];
    std::fs::write(mount.join("passed.bin"), &data).unwrap();
    common::sync(&mount.path, Duration::from_secs(30)).unwrap_or_else(|e| panic!("sync: {e}"));
    assert_eq!(server.get("metered", "passed.bin"), data);
    let after = scrape(port);
    assert_eq!(
        moved(&before, &after, "s3files_export_bytes_total"),
        5_000.0
    );
    let written = moved(&before, &after, "s3files_data_write_bytes_total");
    if moved(&before, &after, "s3files_passthrough_opens_total") > 0.0 {
        assert_eq!(
            written, 0.0,
            "passed-through writes do not reach the daemon"
        );
    } else {
        assert_eq!(written, 5_000.0);
    }
    assert_answers(&mount.path, LIMIT);
}
