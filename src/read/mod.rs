//! Reads of one open object: ranged GETs with a read-ahead window that grows while the
//! reader stays sequential, so memory per handle is bounded by the window, never by the
//! object's size. Concurrent reads that fall into a window share its one GET.
//!
//! This is the simple foundation reader; the hot-data cache and the multi-request
//! prefetcher build on it later.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::store::{ObjectStore, StoreError};

/// First sequential window: one GET covers a small file whole, and a random reader that
/// happens to look sequential once wastes at most this much.
pub const INITIAL_WINDOW: u64 = 1 << 20;
/// Largest window: bounds a handle's memory (one window held, one being fetched) while a
/// GET this size amortises per-request latency well on S3 and local stores alike.
pub const MAX_WINDOW: u64 = 8 << 20;
/// A read that is not sequential fetches at least this much, so tiny reads near each
/// other (a parser seeking around a header) still share GETs.
pub const RANDOM_FETCH: u64 = 64 << 10;
/// Reads starting this far behind or ahead of where the last one ended still count as
/// sequential: the kernel issues read-ahead requests concurrently and slightly out of order.
pub const SEQUENTIAL_SLACK: u64 = 1 << 20;

type Fetch = Shared<BoxFuture<'static, Result<Bytes, StoreError>>>;

struct Window {
    range: Range<u64>,
    data: Fetch,
}

struct State {
    /// Where the last read ended.
    next_offset: u64,
    /// Size of the next sequential fetch.
    window: u64,
    current: Option<Window>,
}

/// Reader of one version of one object.
pub struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    key: String,
    etag: Option<String>,
    size: u64,
    state: Mutex<State>,
}

impl ObjectReader {
    pub fn new(store: Arc<dyn ObjectStore>, key: String, etag: Option<String>, size: u64) -> Self {
        ObjectReader {
            store,
            key,
            etag,
            size,
            state: Mutex::new(State {
                next_offset: 0,
                window: INITIAL_WINDOW,
                current: None,
            }),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns `len` bytes at `offset` (fewer only at the end of the object).
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, StoreError> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = self.size.min(offset + u64::from(len));
        let window = self.plan(offset, end);
        match window.data.await {
            Ok(data) => {
                let from = (offset - window.range.start) as usize;
                let to = (end - window.range.start) as usize;
                if to > data.len() {
                    // The store returned less than asked: the object shrank under us.
                    return Err(StoreError::PreconditionFailed);
                }
                Ok(data.slice(from..to))
            }
            Err(e) => {
                self.lock().current = None;
                Err(e)
            }
        }
    }

    /// Picks the window serving [offset, end), starting a GET if none covers it.
    fn plan(&self, offset: u64, end: u64) -> Window {
        let mut state = self.lock();
        let sequential = offset + SEQUENTIAL_SLACK >= state.next_offset
            && offset <= state.next_offset + SEQUENTIAL_SLACK;
        state.next_offset = state.next_offset.max(end);
        if let Some(current) = &state.current {
            if current.range.start <= offset && end <= current.range.end {
                return Window {
                    range: current.range.clone(),
                    data: current.data.clone(),
                };
            }
        }
        let fetch_len = if sequential {
            let len = state.window;
            state.window = (state.window * 2).min(MAX_WINDOW);
            len
        } else {
            state.window = INITIAL_WINDOW;
            state.next_offset = end;
            RANDOM_FETCH
        };
        let range = offset..self.size.min(offset + fetch_len.max(end - offset));
        let store = Arc::clone(&self.store);
        let key = self.key.clone();
        let etag = self.etag.clone();
        let get = range.clone();
        let data = async move { store.get_range(&key, get, etag.as_deref()).await }
            .boxed()
            .shared();
        state.current = Some(Window {
            range: range.clone(),
            data: data.clone(),
        });
        Window { range, data }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // State updates are single assignments; a poisoned lock guards consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::Ordering;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn reader(store: &Arc<MemoryStore>, body: &[u8]) -> ObjectReader {
        store.put("k", body.to_vec(), &[]);
        let head = store.head("k").await.unwrap();
        ObjectReader::new(store.clone(), "k".into(), head.etag, head.size)
    }

    #[tokio::test]
    async fn sequential_read_uses_growing_windows() {
        let store = Arc::new(MemoryStore::new());
        let body = data(40 << 20);
        let r = reader(&store, &body).await;
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < body.len() as u64 {
            let chunk = r.read(offset, 128 << 10).await.unwrap();
            offset += chunk.len() as u64;
            out.extend_from_slice(&chunk);
        }
        assert_eq!(out, body);
        // 1 + 2 + 4 + 8 + 8 + 8 + 8 + 1 MiB: eight GETs, not 320.
        assert_eq!(store.requests.get.load(Ordering::Relaxed), 8);
        assert!(r.read(body.len() as u64, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn random_reads_fetch_small_ranges() {
        let store = Arc::new(MemoryStore::new());
        let body = data(16 << 20);
        let r = reader(&store, &body).await;
        for offset in [10 << 20, 3 << 20, 12 << 20, 1 << 20] {
            let chunk = r.read(offset, 4096).await.unwrap();
            assert_eq!(&chunk[..], &body[offset as usize..offset as usize + 4096]);
        }
        assert_eq!(store.requests.get.load(Ordering::Relaxed), 4);
        // Each random fetch is RANDOM_FETCH long, so a nearby read is served from it.
        r.read((1 << 20) + 8192, 4096).await.unwrap();
        assert_eq!(store.requests.get.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn changed_object_fails_instead_of_mixing_versions() {
        let store = Arc::new(MemoryStore::new());
        let r = reader(&store, &data(1000)).await;
        store.put("k", data(1000), &[]);
        assert_eq!(r.read(0, 10).await, Err(StoreError::PreconditionFailed));
    }

    #[tokio::test]
    async fn concurrent_reads_share_one_get() {
        let store = Arc::new(MemoryStore::new());
        let body = data(1 << 20);
        let r = Arc::new(reader(&store, &body).await);
        let reads = (0..8u64).map(|i| {
            let r = r.clone();
            async move { r.read(i * (128 << 10), 128 << 10).await.unwrap() }
        });
        let chunks = futures::future::join_all(reads).await;
        assert_eq!(chunks.concat(), body);
        assert_eq!(store.requests.get.load(Ordering::Relaxed), 1);
    }
}
