//! `--metrics-addr`: the mount's counters, gauges and latency histograms in the
//! Prometheus text format at `GET /metrics`. The exposition is prometheus-client's (the
//! Prometheus project's Rust client), read from the `Metrics` atomics and `FsCore::gauges`
//! at scrape time by one collector; the HTTP side is a deliberately small handler: one
//! request per connection, a bounded request head, a time limit per client, a few
//! clients at once, rendering on a blocking thread. FUSE requests never wait on it.
//! docs/CONFIGURATION.md "Metrics" lists every metric.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::fs::Gauges;
use crate::metrics::{FuseOp, LatencyHistogram, Metrics, Request};

/// Host a bare `PORT` (or `:PORT`) binds: metrics stay on the machine unless asked.
pub const DEFAULT_HOST: [u8; 4] = [127, 0, 0, 1];
/// A scrape request is one line and a few headers; anything longer is refused.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client gets this long to send its request and take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes answered at once; further connections are closed at once.
const MAX_CLIENTS: usize = 4;

/// Parses `[HOST:]PORT`: `9100` and `:9100` are 127.0.0.1:9100; `0.0.0.0:9100`,
/// `[::1]:9100` and `localhost:9100` are taken as given (a name is resolved now, its
/// first address used).
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) => Err("the port must be 1-65535 (0 would pick one nobody knows)".to_string()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("'{p}' is not a port number (1-65535)")),
    };
    let bare = text.strip_prefix(':').unwrap_or(text);
    if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(SocketAddr::from((DEFAULT_HOST, port(bare)?)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        port(&addr.port().to_string())?;
        return Ok(addr);
    }
    let Some((host, p)) = text.rsplit_once(':') else {
        return Err("expected PORT, :PORT or HOST:PORT, e.g. 9100 or 0.0.0.0:9100".into());
    };
    if host.is_empty() {
        return Err("expected PORT, :PORT or HOST:PORT, e.g. 9100 or 0.0.0.0:9100".into());
    }
    if host.contains(':') || host.starts_with('[') {
        return Err("an IPv6 address goes in brackets, e.g. [::1]:9100".into());
    }
    let port = port(p)?;
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("host '{host}' has no address")),
        Err(e) => Err(format!("cannot resolve host '{host}': {e}")),
    }
}

/// A registry holding the mount's one collector. `gauges` is called once per scrape, on
/// a blocking thread (`FsCore::gauges`); `polling` says whether the import age means
/// anything (it is left out when polling is off).
pub fn registry(
    metrics: Arc<Metrics>,
    gauges: impl Fn() -> Gauges + Send + Sync + 'static,
    polling: bool,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MountCollector {
        metrics,
        gauges: Box::new(gauges),
        polling,
        started: SystemTime::now(),
    }));
    registry
}

/// The exposition: Prometheus text format 0.0.4.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

struct MountCollector {
    metrics: Arc<Metrics>,
    gauges: Box<dyn Fn() -> Gauges + Send + Sync>,
    polling: bool,
    /// Stands in for the last poll round until the first one finishes.
    started: SystemTime,
}

impl fmt::Debug for MountCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountCollector")
            .field("polling", &self.polling)
            .finish_non_exhaustive()
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    ConstGauge::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One counter with a label, one series per value.
fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*count).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histograms(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, &LatencyHistogram)],
) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (value, histogram) in values {
        let labels = [(label, *value)];
        let (sum, count, buckets) = histogram.snapshot();
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn seconds_since(then: SystemTime) -> f64 {
    SystemTime::now()
        .duration_since(then)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Collector for MountCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &*self.metrics;
        let g = (self.gauges)();
        let e = &mut e;

        // S3 Files' CloudWatch metrics, Prometheus-style.
        gauge(
            e,
            "s3files_pending_exports",
            "Changes not yet exported to S3 (PendingExports).",
            g.pending_exports as f64,
        )?;
        let export_age = g
            .oldest_pending_export
            .map_or(0.0, |since| since.elapsed().as_secs_f64());
        gauge(
            e,
            "s3files_export_age_seconds",
            "Age of the oldest change not yet exported; 0 when none is pending (ExportAge).",
            export_age,
        )?;
        if self.polling {
            let last = m.last_poll_round_ms.load(Relaxed);
            let since = if m.poll_rounds.load(Relaxed) == 0 {
                self.started
            } else {
                SystemTime::UNIX_EPOCH + Duration::from_millis(last)
            };
            gauge(e, "s3files_import_age_seconds", "Time since the start of the last finished poll round: changes made in S3 before it are visible (ImportAge).", seconds_since(since))?;
        }
        counter(
            e,
            "s3files_export_failures",
            "Exports that failed with an error retrying cannot fix (ExportFailures).",
            m.export_failures.load(Relaxed),
        )?;
        counter(
            e,
            "s3files_import_failures",
            "Keys that cannot be files or directories on the mount (ImportFailures).",
            m.keys_skipped.load(Relaxed),
        )?;
        gauge(
            e,
            "s3files_lost_and_found_files",
            "Files in this mount's lost+found (LostAndFoundFiles).",
            g.lost_and_found_files as f64,
        )?;
        counter(e, "s3files_data_read_bytes", "File bytes returned to readers by the daemon; passed-through reads are not seen (DataReadBytes).", m.bytes_read.load(Relaxed))?;
        counter(e, "s3files_data_write_bytes", "File bytes taken in by write requests the daemon served; passed-through writes are not seen, see s3files_export_bytes_total (DataWriteBytes).", m.bytes_written.load(Relaxed))?;
        counter(e, "s3files_metadata_read_bytes", "Metadata read requests (lookup, getattr, readdir) at a nominal 4 KiB each (MetadataReadBytes).", m.metadata_read_bytes.load(Relaxed))?;
        counter(e, "s3files_metadata_write_bytes", "Metadata write requests (setattr, create, mkdir, unlink, rmdir, rename) at a nominal 4 KiB each (MetadataWriteBytes).", m.metadata_write_bytes.load(Relaxed))?;
        gauge(
            e,
            "s3files_inodes",
            "Entries in the inode table (Inodes).",
            g.inodes as f64,
        )?;
        gauge(
            e,
            "s3files_storage_bytes",
            "Bytes on local disk: the data cache plus files staged for export (StorageBytes).",
            (g.cache_disk_bytes + g.staging_bytes) as f64,
        )?;

        // Export.
        counter(
            e,
            "s3files_exports",
            "Exports finished (uploads, metadata updates, copies, deletes).",
            m.exports.load(Relaxed),
        )?;
        counter(
            e,
            "s3files_export_bytes",
            "Object bytes uploaded by exports, however they were written.",
            m.bytes_exported.load(Relaxed),
        )?;
        counter(
            e,
            "s3files_conflicts",
            "Exports refused because the object changed in S3; the bucket won.",
            m.conflicts.load(Relaxed),
        )?;
        gauge(
            e,
            "s3files_staging_bytes",
            "Bytes of files staged for export on disk.",
            g.staging_bytes as f64,
        )?;

        // Import.
        counters(
            e,
            "s3files_imports",
            "Files fetched into the cache ahead of reads, by import trigger.",
            "trigger",
            &[
                ("listing", m.eager_imports.load(Relaxed)),
                ("open", m.open_imports.load(Relaxed)),
            ],
        )?;
        counters(
            e,
            "s3files_import_bytes",
            "Bytes those imports fetched, by import trigger.",
            "trigger",
            &[
                ("listing", m.eager_import_bytes.load(Relaxed)),
                ("open", m.open_import_bytes.load(Relaxed)),
            ],
        )?;
        counter(
            e,
            "s3files_keys_hidden",
            "Objects hidden because a directory of the same name exists.",
            m.keys_hidden.load(Relaxed),
        )?;
        counter(
            e,
            "s3files_poll_rounds",
            "Poll rounds finished (every watched directory listed again).",
            m.poll_rounds.load(Relaxed),
        )?;

        // Cache and reads.
        counters(
            e,
            "s3files_cache_hits",
            "Reads (or parts of reads) served by the data cache, by tier.",
            "tier",
            &[
                ("memory", m.cache_hits_memory.load(Relaxed)),
                ("disk", m.cache_hits_disk.load(Relaxed)),
            ],
        )?;
        counter(
            e,
            "s3files_cache_misses",
            "Cache blocks fetched from S3 because no tier had them.",
            m.cache_misses.load(Relaxed),
        )?;
        counter(
            e,
            "s3files_cache_hit_bytes",
            "Bytes returned to readers from either cache tier.",
            m.bytes_from_cache.load(Relaxed),
        )?;
        counters(
            e,
            "s3files_cache_evictions",
            "Cache blocks dropped to stay under the tier's bound.",
            "tier",
            &[
                ("memory", m.memory_evictions.load(Relaxed)),
                ("disk", m.cache_evictions.load(Relaxed)),
            ],
        )?;
        counter(
            e,
            "s3files_cache_expired_blocks",
            "Disk-cache blocks dropped after going unused for --cache-expiry.",
            m.cache_expired.load(Relaxed),
        )?;
        counter(
            e,
            "s3files_cache_corrupt_blocks",
            "Disk-cache blocks found damaged and dropped (read from S3 instead).",
            m.cache_corrupt_blocks.load(Relaxed),
        )?;
        counter(
            e,
            "s3files_cache_write_errors",
            "Disk-cache writes that failed (the data was served anyway).",
            m.cache_write_errors.load(Relaxed),
        )?;
        {
            let mut cache = e.encode_descriptor(
                "s3files_cache_bytes",
                "Bytes held by the data cache, by tier.",
                None,
                MetricType::Gauge,
            )?;
            for (tier, bytes) in [
                ("memory", g.cache_memory_bytes),
                ("disk", g.cache_disk_bytes),
            ] {
                ConstGauge::new(bytes as f64).encode(cache.encode_family(&[("tier", tier)])?)?;
            }
        }
        gauge(
            e,
            "s3files_cache_disk_bound_bytes",
            "The disk cache's bound (--cache-size).",
            g.cache_disk_bound as f64,
        )?;
        counter(
            e,
            "s3files_streams",
            "Sequential read streams started.",
            m.streams.load(Relaxed),
        )?;
        counter(
            e,
            "s3files_streamed_bytes",
            "Bytes returned to readers by the streaming prefetcher (not cached).",
            m.bytes_streamed.load(Relaxed),
        )?;
        gauge(
            e,
            "s3files_prefetch_window_max_bytes",
            "Largest read-ahead window any stream reached.",
            m.prefetch_window_max.load(Relaxed) as f64,
        )?;
        counter(e, "s3files_passthrough_opens", "Opens handed to the kernel to read and write a local file directly (FUSE passthrough).", m.opens_passthrough.load(Relaxed))?;
        counter(
            e,
            "s3files_events",
            "S3 event notification records received from --events-queue.",
            m.events_received.load(Relaxed),
        )?;
        counter(e, "s3files_direct_io_opens", "Opens served by the daemon without the page cache: read-only O_DIRECT opens, and opens whose backing file the kernel refused.", m.opens_direct.load(Relaxed))?;

        // S3 requests.
        let kinds: Vec<(&str, u64)> = Request::ALL
            .iter()
            .map(|r| {
                let counter = match r {
                    Request::List => &m.s3_list,
                    Request::Head => &m.s3_head,
                    Request::Get => &m.s3_get,
                    Request::Put => &m.s3_put,
                    Request::Copy => &m.s3_copy,
                    Request::Delete => &m.s3_delete,
                };
                (r.name(), counter.load(Relaxed))
            })
            .collect();
        counters(
            e,
            "s3files_s3_requests",
            "S3 requests made, by kind (put includes CompleteMultipartUpload).",
            "kind",
            &kinds,
        )?;
        counter(
            e,
            "s3files_s3_errors",
            "S3 requests made for file-system requests that failed.",
            m.s3_errors.load(Relaxed),
        )?;
        counter(
            e,
            "s3files_s3_fetched_bytes",
            "Object bytes received from S3.",
            m.bytes_fetched.load(Relaxed),
        )?;
        let s3: Vec<(&str, &LatencyHistogram)> = Request::ALL
            .iter()
            .map(|r| (r.name(), &m.s3_latency[*r as usize]))
            .collect();
        histograms(
            e,
            "s3files_s3_request_duration_seconds",
            "Latency of S3 requests, by kind, until the answer (and for a GET its body) arrived.",
            "kind",
            &s3,
        )?;
        let fuse: Vec<(&str, &LatencyHistogram)> = FuseOp::ALL
            .iter()
            .map(|op| (op.name(), &m.fuse_latency[*op as usize]))
            .collect();
        histograms(
            e,
            "s3files_fuse_request_duration_seconds",
            "Latency of FUSE requests the daemon served, by operation, until the reply.",
            "op",
            &fuse,
        )?;
        Ok(())
    }
}

/// Answers scrapes on `listener` until the runtime shuts down.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: wait rather than spin.
                debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            debug!("metrics: too many clients; connection closed");
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, registry)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "metrics: client failed"),
                Err(_) => debug!("metrics: client too slow; connection closed"),
            }
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// GET (or HEAD, without the body) /metrics.
    Metrics {
        body: bool,
    },
    NotFound,
    BadMethod,
    Malformed,
}

/// Reads the request line out of a request head.
fn parse_request(head: &[u8]) -> Asked {
    let Some(line) = head.split(|b| *b == b'\n').next() else {
        return Asked::Malformed;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Asked::Malformed;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return Asked::Malformed;
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Asked::BadMethod,
    };
    let path = target.split('?').next().unwrap_or(target);
    if path == "/metrics" {
        Asked::Metrics { body }
    } else {
        Asked::NotFound
    }
}

/// Reads the request head (to the blank line), at most `MAX_REQUEST_BYTES`. None: the
/// head is longer than that.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
    }
}

async fn answer(mut stream: TcpStream, registry: Arc<Registry>) -> std::io::Result<()> {
    let asked = match read_head(&mut stream).await? {
        Some(head) => parse_request(&head),
        None => Asked::Malformed,
    };
    let text = |status: &str, body: &str| {
        (
            status.to_string(),
            "text/plain; charset=utf-8",
            body.to_string(),
            true,
        )
    };
    let (status, content_type, body, send_body) = match asked {
        Asked::Metrics { body } => {
            // Rendering reads directories and the export schedule: off the runtime's
            // workers, which also drive FUSE requests' S3 calls.
            match tokio::task::spawn_blocking(move || render(&registry)).await {
                Ok(Ok(exposition)) => (
                    "200 OK".to_string(),
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    exposition,
                    body,
                ),
                _ => text("500 Internal Server Error", "cannot render the metrics\n"),
            }
        }
        Asked::NotFound => text("404 Not Found", "not found; the metrics are at /metrics\n"),
        Asked::BadMethod => text("405 Method Not Allowed", "only GET and HEAD\n"),
        Asked::Malformed => text("400 Bad Request", "bad request\n"),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await?;
    // Closing with unread request bytes would reset the connection, and the client
    // could lose the answer: take what it still sends, to a bound (and the time limit).
    let mut rest = [0u8; 1024];
    let mut drained = 0;
    while drained < 16 * MAX_REQUEST_BYTES {
        match stream.read(&mut rest).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn addresses() {
        let ok = |text: &str| parse_addr(text).unwrap().to_string();
        assert_eq!(ok("9100"), "127.0.0.1:9100");
        assert_eq!(ok(":9100"), "127.0.0.1:9100");
        assert_eq!(ok("0.0.0.0:9100"), "0.0.0.0:9100");
        assert_eq!(ok("192.168.1.2:80"), "192.168.1.2:80");
        assert_eq!(ok("[::1]:9100"), "[::1]:9100");
        assert_eq!(ok("[::]:9100"), "[::]:9100");
        assert!(parse_addr("localhost:9100").unwrap().ip().is_loopback());
        for (bad, why) in [
            ("", "expected PORT"),
            (":", "expected PORT"),
            ("0", "1-65535"),
            (":0", "1-65535"),
            ("70000", "1-65535"),
            ("127.0.0.1:0", "1-65535"),
            ("host:", "not a port"),
            ("host:port", "not a port"),
            (":abc", "expected PORT"),
            ("::1:9100", "brackets"),
            ("[::1:9100", "brackets"),
            ("nohost", "expected PORT"),
            ("no-such-host.invalid:9100", "cannot resolve"),
        ] {
            let err = parse_addr(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics { body: true }
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Asked::Metrics { body: true }
        );
        assert_eq!(
            parse_request(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Asked::Metrics { body: false }
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(
            parse_request(b"GET /metricsx HTTP/1.1\r\n\r\n"),
            Asked::NotFound
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Asked::BadMethod
        );
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), Asked::Malformed);
        assert_eq!(
            parse_request(b"GET /metrics SPDY/3\r\n\r\n"),
            Asked::Malformed
        );
        assert_eq!(parse_request(b"\xff\xfe\r\n\r\n"), Asked::Malformed);
    }

    /// The value of the series `name` (with its labels, as written) in `text`.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn exposition_names_types_and_values() {
        let metrics = Arc::new(Metrics::default());
        metrics
            .keys_skipped
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        metrics
            .cache_hits_disk
            .fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        metrics
            .bytes_written
            .fetch_add(42, std::sync::atomic::Ordering::Relaxed);
        drop(metrics.count_request(Request::Get));
        drop(metrics.count_request(Request::Get));
        metrics.fuse_latency[FuseOp::Read as usize].observe(Duration::from_micros(30));
        metrics.fuse_latency[FuseOp::Read as usize].observe(Duration::from_secs(20));
        drop(Metrics::time_fuse(metrics.clone(), FuseOp::Lookup));
        drop(metrics.time_fuse_inline(FuseOp::Mkdir));
        let oldest = Instant::now() - Duration::from_secs(30);
        let registry = registry(
            metrics,
            move || Gauges {
                pending_exports: 2,
                oldest_pending_export: Some(oldest),
                lost_and_found_files: 1,
                staging_bytes: 100,
                inodes: 7,
                cache_disk_bytes: 1000,
                cache_memory_bytes: 10,
                cache_disk_bound: 5000,
            },
            true,
        );
        let text = render(&registry).unwrap();
        // Every family has HELP and TYPE, and names follow Prometheus conventions.
        for (name, kind) in [
            ("s3files_pending_exports", "gauge"),
            ("s3files_export_age_seconds", "gauge"),
            ("s3files_import_age_seconds", "gauge"),
            ("s3files_export_failures_total", "counter"),
            ("s3files_import_failures_total", "counter"),
            ("s3files_lost_and_found_files", "gauge"),
            ("s3files_data_read_bytes_total", "counter"),
            ("s3files_data_write_bytes_total", "counter"),
            ("s3files_metadata_read_bytes_total", "counter"),
            ("s3files_metadata_write_bytes_total", "counter"),
            ("s3files_inodes", "gauge"),
            ("s3files_storage_bytes", "gauge"),
            ("s3files_s3_requests_total", "counter"),
            ("s3files_cache_hits_total", "counter"),
            ("s3files_imports_total", "counter"),
            ("s3files_conflicts_total", "counter"),
            ("s3files_s3_request_duration_seconds", "histogram"),
            ("s3files_fuse_request_duration_seconds", "histogram"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}:\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert_eq!(value(&text, "s3files_pending_exports"), 2.0);
        let age = value(&text, "s3files_export_age_seconds");
        assert!((30.0..60.0).contains(&age), "{age}");
        // No poll round yet: the import age counts from the start.
        assert!(value(&text, "s3files_import_age_seconds") < 5.0);
        assert_eq!(value(&text, "s3files_import_failures_total"), 3.0);
        assert_eq!(value(&text, "s3files_lost_and_found_files"), 1.0);
        assert_eq!(value(&text, "s3files_data_write_bytes_total"), 42.0);
        assert_eq!(value(&text, "s3files_metadata_read_bytes_total"), 4096.0);
        assert_eq!(value(&text, "s3files_metadata_write_bytes_total"), 4096.0);
        assert_eq!(value(&text, "s3files_inodes"), 7.0);
        assert_eq!(value(&text, "s3files_storage_bytes"), 1100.0);
        assert_eq!(value(&text, "s3files_cache_hits_total{tier=\"disk\"}"), 5.0);
        assert_eq!(
            value(&text, "s3files_cache_hits_total{tier=\"memory\"}"),
            0.0
        );
        assert_eq!(value(&text, "s3files_s3_requests_total{kind=\"get\"}"), 2.0);
        assert_eq!(value(&text, "s3files_s3_requests_total{kind=\"put\"}"), 0.0);
        assert_eq!(
            value(
                &text,
                "s3files_s3_request_duration_seconds_count{kind=\"get\"}"
            ),
            2.0
        );
        // Buckets are cumulative and end at +Inf with the count.
        let read = |le: &str| {
            value(
                &text,
                &format!("s3files_fuse_request_duration_seconds_bucket{{op=\"read\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(read("1e-05"), 0.0);
        assert_eq!(read("5e-05"), 1.0);
        assert_eq!(read("10"), 1.0);
        assert_eq!(read("+Inf"), 2.0);
        let sum = value(
            &text,
            "s3files_fuse_request_duration_seconds_sum{op=\"read\"}",
        );
        assert!((20.0..20.001).contains(&sum), "{sum}");
        assert_eq!(
            value(
                &text,
                "s3files_fuse_request_duration_seconds_count{op=\"lookup\"}"
            ),
            1.0
        );
        // Polling off: no import age to speak of.
        let quiet = super::registry(Arc::new(Metrics::default()), Gauges::default, false);
        let text = render(&quiet).unwrap();
        assert!(!text.contains("s3files_import_age_seconds"), "{text}");
        assert_eq!(value(&text, "s3files_export_age_seconds"), 0.0);
    }

    #[test]
    fn import_age_counts_from_the_last_round() {
        let metrics = Arc::new(Metrics::default());
        metrics.poll_round_done(SystemTime::now() - Duration::from_secs(100));
        let registry = registry(metrics, Gauges::default, true);
        let text = render(&registry).unwrap();
        let age = value(&text, "s3files_import_age_seconds");
        assert!((100.0..130.0).contains(&age), "{age}");
        assert_eq!(value(&text, "s3files_poll_rounds_total"), 1.0);
    }

    #[tokio::test]
    async fn http_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Arc::new(registry(
            Arc::new(Metrics::default()),
            Gauges::default,
            false,
        ));
        let server = tokio::spawn(serve(listener, registry));
        let ask = |request: Vec<u8>| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
                .await
                .unwrap()
                .unwrap();
            answer
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("\r\n\r\n# HELP s3files_"), "{ok}");
        let head = ask(b"HEAD /metrics HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
        let missing = ask(b"GET /other HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        // An endless request head is cut off, not buffered.
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 3 * MAX_REQUEST_BYTES));
        let refused = ask(huge).await;
        assert!(
            refused.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{refused}"
        );
        server.abort();
    }
}
