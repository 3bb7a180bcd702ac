//! Counters shared by every layer. Lock-free atomics: they sit on hot paths.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Opens handed to the kernel to read and write a local file directly (passthrough).
    pub opens_passthrough: AtomicU64,
    /// Opens served through the daemon without the page cache, because other opens of
    /// the file are passed through to other bytes.
    pub opens_direct: AtomicU64,
}

impl Metrics {
    pub fn count_request(&self, request: Request) {
        let counter = match request {
            Request::List => &self.s3_list,
            Request::Head => &self.s3_head,
            Request::Get => &self.s3_get,
            Request::Put => &self.s3_put,
            Request::Copy => &self.s3_copy,
            Request::Delete => &self.s3_delete,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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
             streams={} max prefetch window={}; opens passthrough={} direct={}",
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
        )
    }
}
