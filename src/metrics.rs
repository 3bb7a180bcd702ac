//! Counters shared by every layer. Lock-free atomics: they sit on hot paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub enum Request {
    List,
    Head,
    Get,
    /// PutObject or CompleteMultipartUpload: one new object version.
    Put,
    Copy,
    Delete,
}

impl Request {
    pub const ALL: [Request; 6] = [
        Request::List,
        Request::Head,
        Request::Get,
        Request::Put,
        Request::Copy,
        Request::Delete,
    ];

    /// The `kind` label of the S3 request metrics.
    pub fn name(self) -> &'static str {
        match self {
            Request::List => "list",
            Request::Head => "head",
            Request::Get => "get",
            Request::Put => "put",
            Request::Copy => "copy",
            Request::Delete => "delete",
        }
    }
}

/// FUSE requests whose latency is measured (the `op` label), and whether each counts as
/// a metadata read or write (`s3files_metadata_*_bytes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Setattr,
    Readdir,
    Open,
    Read,
    Write,
    Create,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Fsync,
}

impl FuseOp {
    pub const ALL: [FuseOp; 13] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Setattr,
        FuseOp::Readdir,
        FuseOp::Open,
        FuseOp::Read,
        FuseOp::Write,
        FuseOp::Create,
        FuseOp::Mkdir,
        FuseOp::Unlink,
        FuseOp::Rmdir,
        FuseOp::Rename,
        FuseOp::Fsync,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Setattr => "setattr",
            FuseOp::Readdir => "readdir",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
            FuseOp::Write => "write",
            FuseOp::Create => "create",
            FuseOp::Mkdir => "mkdir",
            FuseOp::Unlink => "unlink",
            FuseOp::Rmdir => "rmdir",
            FuseOp::Rename => "rename",
            FuseOp::Fsync => "fsync",
        }
    }

    /// Some(false): a metadata read, Some(true): a metadata write, None: data.
    fn metadata_write(self) -> Option<bool> {
        match self {
            FuseOp::Lookup | FuseOp::Getattr | FuseOp::Readdir => Some(false),
            FuseOp::Setattr
            | FuseOp::Create
            | FuseOp::Mkdir
            | FuseOp::Unlink
            | FuseOp::Rmdir
            | FuseOp::Rename => Some(true),
            FuseOp::Open | FuseOp::Read | FuseOp::Write | FuseOp::Fsync => None,
        }
    }
}

/// What one metadata request counts for in `s3files_metadata_*_bytes_total`: a nominal
/// size, as S3 Files meters metadata operations by count, not by bytes on the wire.
pub const METADATA_REQUEST_BYTES: u64 = 4096;

/// Upper bounds of the latency histograms' buckets, in seconds: 10 us (a page-cache-speed
/// FUSE reply) to 10 s (a slow S3 request), about three per decade.
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram of atomics: observing is a few compares and two relaxed
/// increments, never a lock, so it can sit on the inline FUSE paths. (prometheus-client's
/// own `Histogram` takes a mutex per observation.)
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (sum in seconds, count, (upper bound, count) per bucket, not cumulative, +Inf
    /// last), as prometheus-client's encoder takes them. Read bucket by bucket without a
    /// lock: the count is the buckets' total, so `+Inf` and `_count` always agree.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, count) in self.buckets.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, count));
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, total, buckets)
    }
}

/// Measures one request from its creation to its drop (reply sent, or the S3 call
/// returned, error or not).
#[must_use = "the timer measures until it is dropped"]
pub struct Timer<M: std::ops::Deref<Target = Metrics>> {
    metrics: M,
    what: Timed,
    started: Instant,
}

#[derive(Clone, Copy)]
enum Timed {
    S3(Request),
    Fuse(FuseOp),
}

impl Timer<&Metrics> {
    /// The same measurement, carried on by a task that answers the request later.
    pub fn keep(self, metrics: std::sync::Arc<Metrics>) -> Timer<std::sync::Arc<Metrics>> {
        let kept = Timer {
            metrics,
            what: self.what,
            started: self.started,
        };
        // Not this one's drop: the kept timer records the request once it is answered.
        std::mem::forget(self);
        kept
    }
}

impl<M: std::ops::Deref<Target = Metrics>> Drop for Timer<M> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let histogram = match self.what {
            Timed::S3(request) => &self.metrics.s3_latency[request as usize],
            Timed::Fuse(op) => &self.metrics.fuse_latency[op as usize],
        };
        histogram.observe(elapsed);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub s3_list: AtomicU64,
    pub s3_head: AtomicU64,
    pub s3_get: AtomicU64,
    pub s3_put: AtomicU64,
    pub s3_copy: AtomicU64,
    pub s3_delete: AtomicU64,
    /// Exports finished (uploads, metadata updates, markers, deletes).
    pub exports: AtomicU64,
    /// Exports that failed with an error that retrying cannot fix.
    pub export_failures: AtomicU64,
    /// Exports refused because the object changed in S3 (conflicts).
    pub conflicts: AtomicU64,
    /// Object bytes received from S3.
    pub bytes_fetched: AtomicU64,
    /// Bytes returned to readers.
    pub bytes_read: AtomicU64,
    /// Keys (or prefixes) that cannot be files: import failures in S3 Files terms.
    pub keys_skipped: AtomicU64,
    /// Objects hidden because a directory of the same name exists.
    pub keys_hidden: AtomicU64,
    /// Errors returned by S3 operations made on behalf of file-system requests.
    pub s3_errors: AtomicU64,
    /// Reads (or parts of reads) served by the memory tier of the data cache.
    pub cache_hits_memory: AtomicU64,
    /// Reads (or parts of reads) served by the disk tier.
    pub cache_hits_disk: AtomicU64,
    /// Blocks fetched from S3 because no tier had them.
    pub cache_misses: AtomicU64,
    /// Bytes returned to readers from either cache tier.
    pub bytes_from_cache: AtomicU64,
    /// Bytes returned to readers by the streaming prefetcher (not cached).
    pub bytes_streamed: AtomicU64,
    /// Disk-tier blocks dropped to stay under the bound.
    pub cache_evictions: AtomicU64,
    /// Memory-tier blocks dropped to stay under its bound (still on disk).
    pub memory_evictions: AtomicU64,
    /// Disk-tier blocks dropped after going unused for the expiry.
    pub cache_expired: AtomicU64,
    /// Disk-tier blocks found damaged (bytes that do not match their checksums, or a file
    /// cut short or extended) and dropped; their data was read from S3 instead.
    pub cache_corrupt_blocks: AtomicU64,
    /// Disk-tier writes that failed (e.g. a full disk); the data was served anyway.
    pub cache_write_errors: AtomicU64,
    /// Small files fetched ahead of any read when their directory was first listed
    /// (import rules with trigger ON_DIRECTORY_FIRST_ACCESS).
    pub eager_imports: AtomicU64,
    /// Bytes those imports fetched.
    pub eager_import_bytes: AtomicU64,
    /// Files brought into the cache because they were opened (trigger ON_FILE_ACCESS).
    pub open_imports: AtomicU64,
    /// Bytes those files lacked in the cache when they were opened.
    pub open_import_bytes: AtomicU64,
    /// Sequential read streams started.
    pub streams: AtomicU64,
    /// Largest read-ahead window any stream reached, in bytes.
    pub prefetch_window_max: AtomicU64,
    /// S3 event notification records received (`--events-queue`).
    pub events_received: AtomicU64,
    /// Opens handed to the kernel to read and write a local file directly (passthrough).
    pub opens_passthrough: AtomicU64,
    /// Opens served through the daemon without the page cache, because other opens of
    /// the file are passed through to other bytes.
    pub opens_direct: AtomicU64,
    /// Bytes taken in by FUSE write requests the daemon served (not writes the kernel
    /// made itself to a passed-through file).
    pub bytes_written: AtomicU64,
    /// Object bytes uploaded by exports (the size of each new object version written
    /// from local data; copies and metadata updates upload none).
    pub bytes_exported: AtomicU64,
    /// Nominal bytes of metadata requests served (`METADATA_REQUEST_BYTES` each).
    pub metadata_read_bytes: AtomicU64,
    pub metadata_write_bytes: AtomicU64,
    /// Poll rounds finished (every watched directory listed once).
    pub poll_rounds: AtomicU64,
    /// When the last finished poll round started, in ms since the Unix epoch.
    pub last_poll_round_ms: AtomicU64,
    /// Latency of S3 requests, by `Request as usize`.
    pub s3_latency: [LatencyHistogram; Request::ALL.len()],
    /// Latency of FUSE requests, by `FuseOp as usize`.
    pub fuse_latency: [LatencyHistogram; FuseOp::ALL.len()],
}

impl Metrics {
    /// Counts one S3 request and times it until the returned guard is dropped.
    pub fn count_request(&self, request: Request) -> Timer<&Metrics> {
        let counter = match request {
            Request::List => &self.s3_list,
            Request::Head => &self.s3_head,
            Request::Get => &self.s3_get,
            Request::Put => &self.s3_put,
            Request::Copy => &self.s3_copy,
            Request::Delete => &self.s3_delete,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Timer {
            metrics: self,
            what: Timed::S3(request),
            started: Instant::now(),
        }
    }

    /// Counts one FUSE request (as metadata bytes, if it is a metadata request) and times
    /// it until the returned guard is dropped. Takes the `Arc` so the guard can move into
    /// the task that answers the request.
    pub fn time_fuse(
        metrics: std::sync::Arc<Metrics>,
        op: FuseOp,
    ) -> Timer<std::sync::Arc<Metrics>> {
        metrics.count_metadata(op);
        Timer {
            metrics,
            what: Timed::Fuse(op),
            started: Instant::now(),
        }
    }

    /// Like `time_fuse`, for requests answered inline (no Arc clone).
    pub fn time_fuse_inline(&self, op: FuseOp) -> Timer<&Metrics> {
        self.count_metadata(op);
        Timer {
            metrics: self,
            what: Timed::Fuse(op),
            started: Instant::now(),
        }
    }

    fn count_metadata(&self, op: FuseOp) {
        match op.metadata_write() {
            Some(false) => &self.metadata_read_bytes,
            Some(true) => &self.metadata_write_bytes,
            None => return,
        }
        .fetch_add(METADATA_REQUEST_BYTES, Ordering::Relaxed);
    }

    /// A poll round that started at `started` has listed every watched directory.
    pub fn poll_round_done(&self, started: std::time::SystemTime) {
        let ms = started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_poll_round_ms.store(ms, Ordering::Relaxed);
        self.poll_rounds.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_bytes_fetched(&self, n: u64) {
        self.bytes_fetched.fetch_add(n, Ordering::Relaxed);
    }

    /// One line for the log, e.g. at unmount.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "s3 requests: list={} head={} get={} put={} copy={} delete={} errors={}; \
             exports={} failed={} conflicts={}; bytes fetched={} read={}; \
             keys skipped={} hidden={}; \
             cache hits memory={} disk={} misses={} evictions={} (memory {}) expired={} \
             corrupt={} write-errors={}; eager imports={}; imports on open={}; \
             imported bytes on listing={} on open={}; bytes from cache={} streamed={}; \
             streams={} max prefetch window={}; opens passthrough={} direct={}; events={}",
            get(&self.s3_list),
            get(&self.s3_head),
            get(&self.s3_get),
            get(&self.s3_put),
            get(&self.s3_copy),
            get(&self.s3_delete),
            get(&self.s3_errors),
            get(&self.exports),
            get(&self.export_failures),
            get(&self.conflicts),
            get(&self.bytes_fetched),
            get(&self.bytes_read),
            get(&self.keys_skipped),
            get(&self.keys_hidden),
            get(&self.cache_hits_memory),
            get(&self.cache_hits_disk),
            get(&self.cache_misses),
            get(&self.cache_evictions),
            get(&self.memory_evictions),
            get(&self.cache_expired),
            get(&self.cache_corrupt_blocks),
            get(&self.cache_write_errors),
            get(&self.eager_imports),
            get(&self.open_imports),
            get(&self.eager_import_bytes),
            get(&self.open_import_bytes),
            get(&self.bytes_from_cache),
            get(&self.bytes_streamed),
            get(&self.streams),
            get(&self.prefetch_window_max),
            get(&self.opens_passthrough),
            get(&self.opens_direct),
            get(&self.events_received),
        )
    }
}
