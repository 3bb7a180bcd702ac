//! Cache fills: fetches whole cache blocks from S3, one GET per block however many readers
//! (or eager imports) want it at once, and puts them in the data cache.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{StreamExt, TryStreamExt};

use crate::cache::{block_range, BlockId, DataCache, Missed, ObjectId};
use crate::metrics::Metrics;
use crate::store::{ObjectHead, ObjectStore, StoreError};
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

pub type Fetch = Shared<BoxFuture<'static, Result<Bytes, StoreError>>>;

/// Which object version a fetch is for.
#[derive(Debug, Clone)]
pub struct Version {
    pub key: String,
    /// None when the store gave no ETag: the data is fetched but never cached, since a
    /// later version could not be told apart.
    pub etag: Option<String>,
    pub size: u64,
    pub object: ObjectId,
}

impl Version {
    pub fn new(key: String, etag: Option<String>, size: u64) -> Self {
        let object = ObjectId::new(&key, etag.as_deref().unwrap_or(""));
        Version {
            key,
            etag,
            size,
            object,
        }
    }
}

pub struct BlockFetcher {
    store: Arc<dyn ObjectStore>,
    cache: Arc<DataCache>,
    metrics: Arc<Metrics>,
    in_flight: DashMap<BlockId, Fetch>,
    /// Object versions an import on open is fetching, with how many such imports: their
    /// readers fetch cache blocks (which the import shares) rather than stream.
    importing: DashMap<ObjectId, usize>,
}

/// Blocks one import on open fetches at once.
const IMPORT_BLOCKS_IN_FLIGHT: usize = 4;

/// Marks a version as being imported on open until dropped.
pub struct ImportMark {
    fetcher: Arc<BlockFetcher>,
    object: ObjectId,
}

impl Drop for ImportMark {
    fn drop(&mut self) {
        self.fetcher
            .importing
            .remove_if_mut(&self.object, |_, count| {
                *count -= 1;
                *count == 0
            });
    }
}

impl BlockFetcher {
    pub fn new(store: Arc<dyn ObjectStore>, cache: Arc<DataCache>, metrics: Arc<Metrics>) -> Self {
        BlockFetcher {
            store,
            cache,
            metrics,
            in_flight: DashMap::new(),
            importing: DashMap::new(),
        }
    }

    pub fn cache(&self) -> &Arc<DataCache> {
        &self.cache
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Block `index` of `version`: from the cache, or from the GET already in flight for
    /// it, or from a new GET (spawned, so it completes and fills the cache even if the
    /// reader that started it goes away).
    pub fn block(self: &Arc<Self>, version: &Version, index: u32) -> Fetch {
        if version.etag.is_some() {
            let id = BlockId {
                object: version.object,
                index,
            };
            match self.cache.get_block_mode(id, version.size, false) {
                Ok(data) => return futures::future::ready(Ok(data)).boxed().shared(),
                Err(Missed::WouldBlock) => {
                    // Cached, but on disk only: read it on a thread that may wait.
                    let (this, version) = (Arc::clone(self), version.clone());
                    return async move {
                        let cache = this.cache.clone();
                        let size = version.size;
                        let read = tokio::task::spawn_blocking(move || cache.get_block(id, size));
                        match read.await {
                            Ok(Some(data)) => Ok(data),
                            _ => this.shared_fetch(&version, index, None).0.await,
                        }
                    }
                    .boxed()
                    .shared();
                }
                Err(Missed::Absent) => {}
            }
        }
        self.shared_fetch(version, index, None).0
    }

    /// The fetch in flight for a block, starting one if there is none (then `true`): a
    /// ranged GET, or, given `headers`, a whole-object GET (the object is this one block)
    /// whose headers are sent there.
    fn shared_fetch(
        self: &Arc<Self>,
        version: &Version,
        index: u32,
        headers: Option<oneshot::Sender<ObjectHead>>,
    ) -> (Fetch, bool) {
        let id = BlockId {
            object: version.object,
            index,
        };
        let slot = match self.in_flight.entry(id) {
            Entry::Occupied(fetch) => return (fetch.get().clone(), false),
            Entry::Vacant(slot) => slot,
        };
        // A fetch that ended after the caller looked in the cache left the block there
        // (it fills the cache before it leaves `in_flight`): no second GET for it. A
        // caller that wants the headers needs the GET.
        if headers.is_none() && version.etag.is_some() {
            if let Ok(data) = self.cache.get_block_mode(id, version.size, false) {
                return (futures::future::ready(Ok(data)).boxed().shared(), false);
            }
        }
        self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(self);
        let version = version.clone();
        let task = tokio::spawn(async move {
            let range = block_range(index, version.size);
            let etag = version.etag.as_deref();
            let result = match headers {
                Some(tx) => this
                    .store
                    .get_whole(&version.key, etag)
                    .await
                    .map(|(head, data)| {
                        let _ = tx.send(head);
                        data
                    }),
                None => {
                    this.store
                        .get_range(&version.key, range.clone(), etag)
                        .await
                }
            }
            .and_then(|data| {
                // Less than asked: the object shrank under us.
                if data.len() as u64 == range.end - range.start {
                    Ok(data)
                } else {
                    Err(StoreError::PreconditionFailed)
                }
            });
            if let (Ok(data), Some(_)) = (&result, &version.etag) {
                this.cache.insert_waiting(id, data.clone()).await;
            }
            this.in_flight.remove(&id);
            result
        });
        let fetch: Fetch = async move {
            task.await
                .unwrap_or_else(|e| Err(StoreError::Other(format!("fetch task failed: {e}"))))
        }
        .boxed()
        .shared();
        slot.insert(fetch.clone());
        (fetch, true)
    }

    /// Whether every block of `version` is cached.
    pub fn is_cached(&self, version: &Version) -> bool {
        self.cache.cached_bytes(version.object, version.size) == version.size
    }

    /// Marks `version` as being imported on open (see `importing`) until the mark drops.
    pub fn mark_importing(self: &Arc<Self>, version: &Version) -> ImportMark {
        *self.importing.entry(version.object).or_insert(0) += 1;
        ImportMark {
            fetcher: Arc::clone(self),
            object: version.object,
        }
    }

    /// Whether an import on open is fetching this version.
    pub fn is_importing(&self, object: &ObjectId) -> bool {
        self.importing.contains_key(object)
    }

    /// Import on open: every block of `version` into the cache, through the fetches
    /// readers use, so a block a reader wants meanwhile is fetched once for both. Ranged
    /// GETs, a few at a time, rather than one GET of the whole object: a reader that
    /// started first must be able to join them block by block.
    pub async fn import_blocks(self: &Arc<Self>, version: &Version) -> Result<(), StoreError> {
        futures::stream::iter(crate::cache::blocks_of(0, version.size))
            .map(|index| async move {
                let id = BlockId {
                    object: version.object,
                    index,
                };
                if self.cache.contains(&id) {
                    return Ok(());
                }
                self.shared_fetch(version, index, None).0.await.map(drop)
            })
            .buffer_unordered(IMPORT_BLOCKS_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    /// Eager import of a small file: its bytes into the cache and its headers (the POSIX
    /// metadata its inode needs) in one GET; if the bytes are cached already, a HEAD for
    /// the headers only. Returns the headers, if this import got them, and whether bytes
    /// were fetched.
    pub async fn import(
        self: &Arc<Self>,
        version: &Version,
    ) -> Result<(Option<ObjectHead>, bool), StoreError> {
        if self.is_cached(version) {
            return Ok((Some(self.store.head(&version.key).await?), false));
        }
        let blocks = crate::cache::blocks_of(0, version.size);
        if blocks.len() == 1 {
            // Shared with any reader that wants the block meanwhile: one GET in all.
            let (tx, rx) = oneshot::channel();
            let (fetch, started) = self.shared_fetch(version, 0, Some(tx));
            fetch.await?;
            return Ok((rx.await.ok(), started));
        }
        let (head, data) = self
            .store
            .get_whole(&version.key, version.etag.as_deref())
            .await?;
        if data.len() as u64 != version.size {
            return Err(StoreError::PreconditionFailed);
        }
        self.metrics
            .cache_misses
            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
        self.cache.insert_object(version.object, data);
        Ok((Some(head), true))
    }
}
