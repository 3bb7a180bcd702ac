//! Reads of one open object version. A read is served, in order of preference, by the
//! data cache; by the streaming prefetcher, once the reader has read sequentially past
//! `STREAM_AFTER` (large sequential reads go straight from S3 without filling the cache);
//! or by fetching the cache blocks it touches (random reads and small files go through the
//! cache). A handle reads one version only: every GET carries the ETag seen at open.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use crate::cache::block_range;
use crate::cache::{blocks_of, Missed};
use crate::store::StoreError;

pub mod fetch;
pub mod stream;

pub use fetch::{BlockFetcher, Version};
use stream::Stream;
pub use stream::StreamBudget;

/// A reader that has read this many bytes sequentially and misses the cache streams.
pub const STREAM_AFTER: u64 = 1 << 20;
/// Reads starting this far behind or ahead of where the last one ended still count as
/// sequential: the kernel issues read-ahead requests concurrently and slightly out of order.
pub const SEQUENTIAL_SLACK: u64 = 1 << 20;

struct State {
    /// Where the sequential run has reached.
    next_offset: u64,
    /// Bytes read sequentially so far.
    run: u64,
    stream: Option<Stream>,
}

pub struct ObjectReader {
    fetcher: Arc<BlockFetcher>,
    budget: Arc<StreamBudget>,
    version: Version,
    state: Mutex<State>,
}

impl ObjectReader {
    pub fn new(fetcher: Arc<BlockFetcher>, budget: Arc<StreamBudget>, version: Version) -> Self {
        ObjectReader {
            fetcher,
            budget,
            version,
            state: Mutex::new(State {
                next_offset: 0,
                run: 0,
                stream: None,
            }),
        }
    }

    /// The read, if the cache has all of it in memory or the page cache, or the stream
    /// has it: never waits on the network or the disk, so the FUSE adapter can answer it
    /// without a task hop.
    pub fn read_cached(&self, offset: u64, len: u32) -> Option<Bytes> {
        self.try_inline(offset, len).ok()
    }

    /// The read from the cache without waiting for the disk, or from arrived read-ahead;
    /// `WouldBlock` if the cache has it on disk only.
    fn try_inline(&self, offset: u64, len: u32) -> Result<Bytes, Missed> {
        let end = self.end(offset, len);
        let cached = match self.version.etag {
            Some(_) => self.fetcher.cache().read_nowait(
                self.version.object,
                self.version.size,
                offset,
                len,
            ),
            None => Err(Missed::Absent),
        };
        match cached {
            Ok(data) => {
                note_sequential(&mut self.lock(), offset, end);
                Ok(data)
            }
            Err(Missed::Absent) => self.read_streamed_ready(offset, end).ok_or(Missed::Absent),
            Err(Missed::WouldBlock) => Err(Missed::WouldBlock),
        }
    }

    /// The read, if this handle is streaming and the chunks covering it have arrived
    /// (the prefetcher is ahead of the reader, as it should be).
    fn read_streamed_ready(&self, offset: u64, end: u64) -> Option<Bytes> {
        let mut state = self.lock();
        let stream = state.stream.as_mut().filter(|s| s.accepts(offset))?;
        let parts = self.plan_in(stream, offset, end);
        let mut ready = Vec::with_capacity(parts.len());
        for (range, data) in parts {
            match data.peek() {
                Some(Ok(data)) => ready.push((range, data.clone())),
                _ => return None,
            }
        }
        note_sequential(&mut state, offset, end);
        drop(state);
        let data = assemble(&ready, offset, end);
        self.fetcher
            .metrics()
            .bytes_streamed
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Some(data)
    }

    /// Returns `len` bytes at `offset` (fewer only at the end of the object).
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, StoreError> {
        let end = self.end(offset, len);
        if offset >= end {
            return Ok(Bytes::new());
        }
        match self.try_inline(offset, len) {
            Ok(data) => return Ok(data),
            Err(Missed::WouldBlock) => {
                // On disk only: read it on a thread that may wait for the device.
                let cache = self.fetcher.cache().clone();
                let (object, size) = (self.version.object, self.version.size);
                let read =
                    tokio::task::spawn_blocking(move || cache.read(object, size, offset, len));
                if let Ok(Some(data)) = read.await {
                    note_sequential(&mut self.lock(), offset, end);
                    return Ok(data);
                }
            }
            Err(Missed::Absent) => {}
        }
        let streamed = self.plan_stream(offset, end);
        let metrics = self.fetcher.metrics();
        match streamed {
            Some(parts) => {
                let mut fetched = Vec::with_capacity(parts.len());
                for (range, data) in parts {
                    match data.await {
                        Ok(data) => fetched.push((range, data)),
                        Err(e) => {
                            self.lock().stream = None;
                            return Err(e);
                        }
                    }
                }
                let data = assemble(&fetched, offset, end);
                metrics
                    .bytes_streamed
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(data)
            }
            None => {
                let blocks = blocks_of(offset, end)
                    .map(|index| {
                        let range = block_range(index, self.version.size);
                        (range, self.fetcher.block(&self.version, index))
                    })
                    .collect::<Vec<_>>();
                let mut fetched = Vec::with_capacity(blocks.len());
                for (range, data) in blocks {
                    fetched.push((range, data.await?));
                }
                Ok(assemble(&fetched, offset, end))
            }
        }
    }

    /// Notes the read in the sequential run and, if it is (or now becomes) a stream, plans
    /// it there; None means "fetch cache blocks".
    fn plan_stream(&self, offset: u64, end: u64) -> Option<Vec<(Range<u64>, fetch::Fetch)>> {
        let mut state = self.lock();
        note_sequential(&mut state, offset, end);
        if let Some(stream) = &state.stream {
            if stream.is_behind(offset) {
                // Still sequential (else the stream would be gone), so a straggler of
                // the kernel's read-ahead, whose reads may be answered out of order:
                // read through cache blocks, and leave the stream to the reads ahead.
                return None;
            }
            if !stream.accepts(offset) {
                state.stream = None;
            }
        }
        if state.stream.is_none() {
            // While an import on open fetches this version into the cache, reading it
            // through cache blocks shares the import's GETs; a stream would repeat them,
            // as it would once the import is done (it may end between this read's look
            // in the cache and here).
            if state.run < STREAM_AFTER
                || self.fetcher.is_importing(&self.version.object)
                || self.fetcher.is_cached(&self.version)
            {
                return None;
            }
            state.stream = Some(Stream::new(offset));
            self.fetcher
                .metrics()
                .streams
                .fetch_add(1, Ordering::Relaxed);
        }
        let stream = state.stream.as_mut()?;
        Some(self.plan_in(stream, offset, end))
    }

    /// Plans [offset, end) in the stream (topping up its read-ahead) and records the
    /// window it has reached.
    fn plan_in(
        &self,
        stream: &mut Stream,
        offset: u64,
        end: u64,
    ) -> Vec<(Range<u64>, fetch::Fetch)> {
        let parts = stream.plan(
            self.fetcher.store(),
            &self.budget,
            &self.version,
            offset,
            end,
        );
        self.fetcher
            .metrics()
            .prefetch_window_max
            .fetch_max(stream.window(), Ordering::Relaxed);
        parts
    }

    fn end(&self, offset: u64, len: u32) -> u64 {
        self.version.size.min(offset.saturating_add(u64::from(len)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // State updates are single assignments; a poisoned lock guards consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Extends the sequential run with a read of [offset, end), or restarts it.
fn note_sequential(state: &mut State, offset: u64, end: u64) {
    let sequential = offset + SEQUENTIAL_SLACK >= state.next_offset
        && offset <= state.next_offset + SEQUENTIAL_SLACK;
    if sequential {
        if end > state.next_offset {
            state.run += end - state.next_offset.max(offset);
            state.next_offset = end;
        }
    } else {
        state.run = end - offset;
        state.next_offset = end;
        state.stream = None;
    }
}

/// [offset, end) out of fetched pieces that cover it, in order.
fn assemble(parts: &[(Range<u64>, Bytes)], offset: u64, end: u64) -> Bytes {
    let slice = |(range, data): &(Range<u64>, Bytes)| {
        let from = (offset.max(range.start) - range.start) as usize;
        let to = (end.min(range.end) - range.start) as usize;
        data.slice(from..to)
    };
    if let [one] = parts {
        return slice(one);
    }
    let mut out = BytesMut::with_capacity((end - offset) as usize);
    for part in parts {
        out.extend_from_slice(&slice(part));
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheOptions, DataCache, BLOCK_SIZE};
    use crate::metrics::Metrics;
    use crate::store::memory::MemoryStore;
    use crate::store::ObjectStore;
    use std::time::Duration;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    struct Setup {
        store: Arc<MemoryStore>,
        fetcher: Arc<BlockFetcher>,
        budget: Arc<StreamBudget>,
        _dir: tempfile::TempDir,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let metrics = Arc::new(Metrics::default());
        let options = CacheOptions {
            dir: dir.path().to_path_buf(),
            disk_bytes: 1 << 30,
            memory_bytes: 64 << 20,
            expiry: Duration::from_secs(3600),
        };
        let cache = Arc::new(DataCache::open(&options, metrics.clone()).unwrap().0);
        let fetcher = Arc::new(BlockFetcher::new(store.clone(), cache, metrics));
        Setup {
            store,
            fetcher,
            budget: StreamBudget::new(stream::DEFAULT_BUDGET),
            _dir: dir,
        }
    }

    impl Setup {
        async fn reader(&self, body: &[u8]) -> ObjectReader {
            self.store.put("k", body.to_vec(), &[]);
            let head = self.store.head("k").await.unwrap();
            let version = Version::new("k".into(), head.etag, head.size);
            ObjectReader::new(self.fetcher.clone(), self.budget.clone(), version)
        }

        fn gets(&self) -> u64 {
            self.store.requests.get.load(Ordering::Relaxed)
        }

        fn metric(&self, f: impl Fn(&Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
            f(self.fetcher.metrics()).load(Ordering::Relaxed)
        }
    }

    async fn read_all(r: &ObjectReader, chunk: u32) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let part = r.read(out.len() as u64, chunk).await.unwrap();
            if part.is_empty() {
                return out;
            }
            out.extend_from_slice(&part);
        }
    }

    #[tokio::test]
    async fn sequential_read_streams_with_a_growing_window_and_skips_the_cache() {
        let s = setup();
        let body = data(48 << 20);
        let r = s.reader(&body).await;
        assert_eq!(read_all(&r, 128 << 10).await, body);
        // The first MiB goes through cache blocks, the rest is streamed in chunks that
        // grow to MAX_CHUNK: far fewer GETs than 128 KiB reads (384).
        let gets = s.gets();
        assert!(gets < 40, "{gets} GETs");
        assert_eq!(s.metric(|m| &m.streams), 1);
        assert!(s.metric(|m| &m.bytes_streamed) >= (47 << 20));
        assert!(s.metric(|m| &m.prefetch_window_max) >= 32 << 20);
        // Streamed data was not cached: only the first MiB is.
        let (bytes, _, _) = s.fetcher.cache().usage();
        assert!(bytes <= STREAM_AFTER + BLOCK_SIZE, "{bytes} cached");
        drop(r);
        assert_eq!(s.budget.used(), 0, "budget released with the stream");
    }

    /// The kernel's read-ahead sends several reads at once and they may be answered out
    /// of order: a read just behind where the stream started is served from cache blocks
    /// and leaves the stream alone (it used to end it and start a second one, fetching
    /// again what the first had requested).
    #[tokio::test]
    async fn a_read_arriving_behind_the_streams_start_keeps_the_stream() {
        let s = setup();
        let body = data(24 << 20);
        let r = s.reader(&body).await;
        let piece = 128u32 << 10;
        let check = |offset: u64, got: Bytes| {
            let at = offset as usize;
            assert_eq!(&got[..], &body[at..at + got.len()], "bytes at {offset}");
        };
        let mut offset = 0;
        while offset < STREAM_AFTER {
            check(offset, r.read(offset, piece).await.unwrap());
            offset += u64::from(piece);
        }
        // The next two reads, answered in the wrong order.
        let (behind, ahead) = (offset, offset + u64::from(piece));
        check(ahead, r.read(ahead, piece).await.unwrap());
        assert_eq!(s.metric(|m| &m.streams), 1, "the stream started");
        check(behind, r.read(behind, piece).await.unwrap());
        let mut offset = ahead + u64::from(piece);
        while offset < body.len() as u64 {
            check(offset, r.read(offset, piece).await.unwrap());
            offset += u64::from(piece);
        }
        assert_eq!(s.metric(|m| &m.streams), 1, "one stream for one pass");
        let fetched = s.metric(|m| &m.bytes_fetched);
        assert!(
            fetched <= (24 << 20) + BLOCK_SIZE,
            "{fetched} bytes fetched"
        );
    }

    #[tokio::test]
    async fn random_reads_fill_the_cache_and_hit_it_next_time() {
        let s = setup();
        let body = data(16 << 20);
        let r = s.reader(&body).await;
        let offsets = [10 << 20, 3 << 20, 12 << 20, 1 << 20];
        for offset in offsets {
            let chunk = r.read(offset, 4096).await.unwrap();
            assert_eq!(&chunk[..], &body[offset as usize..offset as usize + 4096]);
        }
        assert_eq!(s.gets(), 4);
        assert_eq!(s.metric(|m| &m.streams), 0);
        // Another handle on the same version: served from the cache, no GET.
        let head = s.store.head("k").await.unwrap();
        let version = Version::new("k".into(), head.etag, head.size);
        let again = ObjectReader::new(s.fetcher.clone(), s.budget.clone(), version);
        for offset in offsets {
            let chunk = again.read_cached(offset + 100, 4096).unwrap();
            assert_eq!(
                &chunk[..],
                &body[offset as usize + 100..offset as usize + 4196]
            );
        }
        assert_eq!(s.gets(), 4);
    }

    /// A sequential reader whose look in the cache missed just before an import on open
    /// finished (the import's mark gone, every block cached) does not start a stream,
    /// which would fetch again what the import just did.
    #[tokio::test]
    async fn a_read_racing_a_finished_import_does_not_stream() {
        let s = setup();
        let body = data(3 << 20);
        let r = s.reader(&body).await;
        {
            let _mark = s.fetcher.mark_importing(&r.version);
            s.fetcher.import_blocks(&r.version).await.unwrap();
        }
        let gets = s.gets();
        r.lock().run = STREAM_AFTER;
        assert!(r
            .plan_stream(STREAM_AFTER, STREAM_AFTER + (128 << 10))
            .is_none());
        assert_eq!(s.metric(|m| &m.streams), 0);
        assert_eq!(
            &r.read(STREAM_AFTER, 128 << 10).await.unwrap()[..],
            &body[1 << 20..(1 << 20) + (128 << 10)]
        );
        assert_eq!(s.gets(), gets, "nothing fetched again");
    }

    #[tokio::test]
    async fn changed_object_fails_instead_of_mixing_versions() {
        let s = setup();
        let r = s.reader(&data(1000)).await;
        s.store.put("k", data(1000), &[]);
        assert_eq!(r.read(0, 10).await, Err(StoreError::PreconditionFailed));
    }

    #[tokio::test]
    async fn concurrent_reads_share_one_get() {
        let s = setup();
        let body = data(BLOCK_SIZE as usize);
        let r = Arc::new(s.reader(&body).await);
        let reads = (0..8u64).map(|i| {
            let r = r.clone();
            async move { r.read(i * (32 << 10), 32 << 10).await.unwrap() }
        });
        let chunks = futures::future::join_all(reads).await;
        assert_eq!(chunks.concat(), body);
        assert_eq!(s.gets(), 1);
    }

    #[tokio::test]
    async fn streams_stay_within_the_memory_budget() {
        let mut s = setup();
        s.budget = StreamBudget::new(4 << 20);
        let body = data(40 << 20);
        let r = Arc::new(s.reader(&body).await);
        let budget = s.budget.clone();
        let mut out = Vec::new();
        let mut peak = 0;
        loop {
            let part = r.read(out.len() as u64, 128 << 10).await.unwrap();
            peak = peak.max(budget.used());
            if part.is_empty() {
                break;
            }
            out.extend_from_slice(&part);
        }
        assert_eq!(out, body);
        // Small chunks may be forced past the budget so that the reader always progresses.
        assert!(peak <= (4 << 20) + 2 * stream::MIN_CHUNK, "peak {peak}");
    }

    #[tokio::test]
    async fn a_seek_far_away_ends_the_stream_and_small_ones_do_not() {
        let s = setup();
        let body = data(32 << 20);
        let r = s.reader(&body).await;
        let mut offset = 0;
        while offset < (4 << 20) {
            offset += r.read(offset, 128 << 10).await.unwrap().len() as u64;
        }
        assert_eq!(s.metric(|m| &m.streams), 1);
        // A little back and forth (kernel read-ahead order) stays in the stream.
        let back = r.read(offset - (256 << 10), 4096).await.unwrap();
        assert_eq!(&back[..], &body[(offset - (256 << 10)) as usize..][..4096]);
        assert_eq!(s.metric(|m| &m.streams), 1);
        // A jump to the far end is a random read, served through the cache.
        let far = 30 << 20;
        let tail = r.read(far, 4096).await.unwrap();
        assert_eq!(&tail[..], &body[far as usize..far as usize + 4096]);
        assert!(s.fetcher.cache().contains(&crate::cache::BlockId {
            object: r.version.object,
            index: (far / BLOCK_SIZE) as u32,
        }));
    }
}
