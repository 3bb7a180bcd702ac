//! Streaming prefetcher for large sequential reads: ranged GETs ahead of the reader in a
//! window that starts at 8 MiB and doubles while the reader stays sequential, up to a cap,
//! several GETs in flight. Streamed data does not go into the cache (a one-pass read of a
//! big file would only evict hot data), and all streams together stay within one memory
//! budget.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::FutureExt;

use super::fetch::{Fetch, Version};
use crate::store::{ObjectStore, StoreError};

/// Smallest chunk, and what a stream past its memory budget fetches at a time.
pub const MIN_CHUNK: u64 = 1 << 20;
/// A stream's first read-ahead window: it starts only after `STREAM_AFTER` bytes read in
/// order, so the reader is already known to be sequential; four GETs in flight at once.
pub const START_WINDOW: u64 = 8 << 20;
/// Largest read-ahead window of one stream.
pub const MAX_WINDOW: u64 = 64 << 20;
/// Largest single GET: big enough to amortise a request, small enough that several are in
/// flight within the window (S3 serves parallel ranged GETs faster than one long one).
pub const MAX_CHUNK: u64 = 8 << 20;
/// Bytes kept behind the reader, for small backward seeks and the kernel's out-of-order
/// read-ahead requests.
pub const KEEP_BEHIND: u64 = 1 << 20;
/// A read this far past what the stream has requested is a jump, not sequential.
pub const FORWARD_SLACK: u64 = 2 << 20;
/// Default memory budget of all streams of a mount together.
pub const DEFAULT_BUDGET: u64 = 160 << 20;

/// Memory shared by all streams: bytes of chunks requested and not yet dropped.
pub struct StreamBudget {
    limit: u64,
    used: AtomicU64,
}

impl StreamBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(StreamBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Reserves `n` bytes if they fit (or unconditionally with `force`, so that every
    /// stream can always make progress with one chunk).
    fn reserve(self: &Arc<Self>, n: u64, force: bool) -> Option<Reservation> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if !force && used + n > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        budget: Arc::clone(self),
                        bytes: n,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

struct Reservation {
    budget: Arc<StreamBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

struct Chunk {
    range: Range<u64>,
    data: Fetch,
    abort: tokio::task::AbortHandle,
    /// Whether a reader has been given this chunk (and may still be waiting for it).
    handed_out: bool,
    _reservation: Reservation,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // A GET nobody will read is stopped rather than left to hold memory and bandwidth.
        if !self.handed_out {
            self.abort.abort();
        }
    }
}

/// One sequential stream over one object version.
pub struct Stream {
    chunks: VecDeque<Chunk>,
    /// End of the last chunk requested.
    requested: u64,
    window: u64,
}

impl Stream {
    pub fn new(start: u64) -> Self {
        Stream {
            chunks: VecDeque::new(),
            requested: start,
            window: START_WINDOW,
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// Whether a read at `offset` continues this stream (within what it keeps behind and
    /// not too far past what it has requested).
    pub fn accepts(&self, offset: u64) -> bool {
        offset >= self.start() && offset <= self.requested + FORWARD_SLACK
    }

    /// Whether `offset` lies before everything this stream holds or has requested.
    pub fn is_behind(&self, offset: u64) -> bool {
        offset < self.start()
    }

    fn start(&self) -> u64 {
        self.chunks
            .front()
            .map_or(self.requested, |c| c.range.start)
    }

    /// The chunk fetches covering [offset, end), after topping the window up ahead of
    /// `offset` and dropping chunks far behind it.
    pub fn plan(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        budget: &Arc<StreamBudget>,
        version: &Version,
        offset: u64,
        end: u64,
    ) -> Vec<(Range<u64>, Fetch)> {
        while self
            .chunks
            .front()
            .is_some_and(|c| c.range.end + KEEP_BEHIND <= offset)
        {
            self.chunks.pop_front();
            // The reader finished a chunk while staying sequential: widen the window.
            self.window = (self.window * 2).min(MAX_WINDOW);
        }
        if self.requested < offset {
            // A forward skip within the slack: the gap is never read, so do not fetch it.
            self.chunks.clear();
            self.requested = offset;
        }
        let target = version.size.min(offset + self.window).max(end);
        while self.requested < target {
            let len = (self.window / 4).clamp(MIN_CHUNK, MAX_CHUNK);
            let mut range = self.requested..version.size.min(self.requested + len);
            let reservation = match budget.reserve(range.end - range.start, false) {
                Some(reservation) => reservation,
                // Past the budget, only what this read needs is fetched, in small chunks.
                None if range.start < end => {
                    range.end = version.size.min(range.start + MIN_CHUNK);
                    match budget.reserve(range.end - range.start, true) {
                        Some(reservation) => reservation,
                        None => break,
                    }
                }
                None => break,
            };
            self.chunks
                .push_back(spawn_chunk(store, version, range, reservation));
            self.requested = self.chunks.back().map_or(self.requested, |c| c.range.end);
        }
        self.chunks
            .iter_mut()
            .filter(|c| c.range.start < end && offset < c.range.end)
            .map(|c| {
                c.handed_out = true;
                (c.range.clone(), c.data.clone())
            })
            .collect()
    }
}

fn spawn_chunk(
    store: &Arc<dyn ObjectStore>,
    version: &Version,
    range: Range<u64>,
    reservation: Reservation,
) -> Chunk {
    let store = Arc::clone(store);
    let key = version.key.clone();
    let etag = version.etag.clone();
    let get = range.clone();
    let task = tokio::spawn(async move {
        let want = get.end - get.start;
        let data = store.get_range(&key, get, etag.as_deref()).await?;
        if data.len() as u64 == want {
            Ok(data)
        } else {
            Err(StoreError::PreconditionFailed)
        }
    });
    let abort = task.abort_handle();
    let data = async move {
        task.await
            .unwrap_or_else(|e| Err(StoreError::Other(format!("read-ahead task failed: {e}"))))
    }
    .boxed()
    .shared();
    Chunk {
        range,
        data,
        abort,
        handed_out: false,
        _reservation: reservation,
    }
}
