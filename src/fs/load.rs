//! Loading what S3 has: directory listings (every page, namespace rules applied, recovered
//! changes overlaid), metadata (HeadObject) and the eager import of small files.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, info, warn};

use dashmap::DashMap;

use super::inode::{Ino, Node, RemoteObject};
use super::namespace::{self, build_entries};
use super::{FsCore, FsResult};
use crate::import_rules::Trigger;
use crate::posix::PosixMeta;
use crate::read::{BlockFetcher, Version};
use crate::store::{ObjectStore, StoreError};

/// Skipped or hidden keys remembered so a re-listing does not report them again.
const MAX_REPORTED_KEYS: usize = 100_000;

/// HeadObject requests of the metadata prefetch in flight at once, per mount. A HEAD is
/// a round trip of a few ms (moto, loopback) to tens of ms (S3) with almost no bytes, so
/// 32 in flight keep a server busy (moto serves a few hundred a second on 2 cores; S3
/// far more per prefix) while leaving room for a stat's own HEAD, which never waits for
/// this budget. The SDK's connection pool has no per-host cap below that.
pub(super) const META_PREFETCH: usize = 32;

/// Counts one piece of background work on a directory (an eager import, a metadata
/// prefetch) while it lives; the poller leaves a directory with work under way alone.
pub(super) struct DirWork {
    work: Arc<DashMap<Ino, usize>>,
    dir: Ino,
}

impl DirWork {
    pub(super) fn start(work: &Arc<DashMap<Ino, usize>>, dir: Ino) -> DirWork {
        *work.entry(dir).or_insert(0) += 1;
        DirWork {
            work: work.clone(),
            dir,
        }
    }
}

impl Drop for DirWork {
    fn drop(&mut self) {
        self.work.remove_if_mut(&self.dir, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl FsCore {
    /// Lists a directory (all pages) the first time it is needed.
    pub(super) async fn load_dir(&self, dir: &Node) -> FsResult<()> {
        if dir.state().children.is_some() {
            return Ok(());
        }
        let _loading = dir.load_lock.lock().await;
        if dir.state().children.is_some() {
            return Ok(());
        }
        let prefix = dir.state().key.clone();
        let entries = self.list_entries(&self.store, &prefix).await?;
        info!(
            prefix,
            files = entries.files.len(),
            dirs = entries.dirs.len(),
            skipped = entries.skipped.len(),
            "imported directory listing"
        );
        self.report_skipped(&entries);
        self.inodes.apply_listing(dir, &entries);
        self.overlay_pending(dir);
        self.eager_import(dir, &entries);
        if !entries.has_marker && !prefix.is_empty() {
            // No `dir/` marker in its own listing: an implicit directory, no HEAD needed.
            let mut state = dir.state();
            if state.meta.is_none() {
                state.meta = Some(PosixMeta::default_for(true));
                state.remote = None;
            }
        }
        Ok(())
    }

    /// Fetches, in the background, the data of a new listing's small files that the cache
    /// does not have, with their metadata, so that looking them up and reading them right
    /// after `ls` or `find` needs no request to S3.
    pub(super) fn eager_import(&self, dir: &Node, entries: &namespace::DirEntries<RemoteObject>) {
        if !self.import_rules.any(Trigger::OnDirectoryFirstAccess) {
            return;
        }
        // A directory of many small files imports at most a quarter of the cache's bound,
        // so one listing cannot wash out everything else that is cached.
        let mut budget = self.cache().disk_bound() / 4;
        let imports: Vec<(Arc<Node>, Version)> = entries
            .files
            .keys()
            .filter_map(|name| {
                let node = self.inodes.child(dir, name)?;
                let version = self.import_version(&node)?;
                Some((node, version))
            })
            .take_while(|(_, version)| match budget.checked_sub(version.size) {
                Some(left) => {
                    budget = left;
                    true
                }
                None => false,
            })
            .collect();
        if imports.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for (node, version) in imports {
            let (fetcher, eager) = (self.fetcher.clone(), self.eager.clone());
            let work = DirWork::start(&self.dir_work, dir.ino);
            runtime.spawn(async move {
                let _work = work;
                let Ok(_permit) = eager.acquire().await else {
                    return;
                };
                // Only a head start: a read fetches it again and reports any error.
                if let Err(e) = import_node(&fetcher, &node, &version).await {
                    debug!(key = version.key, error = %e, "eager import failed");
                }
            });
        }
    }

    /// The version an eager import of this node would fetch, if its import rule imports
    /// it on listing.
    pub(super) fn import_version(&self, node: &Node) -> Option<Version> {
        self.version_to_import(node, Trigger::OnDirectoryFirstAccess)
    }

    /// The version of this node an import on `trigger` would fetch, if its import rule
    /// (the one with the longest prefix of its path) says so. Local bytes are never
    /// replaced by an import, and a version without an ETag cannot be cached.
    pub(super) fn version_to_import(&self, node: &Node, trigger: Trigger) -> Option<Version> {
        let state = node.state();
        let remote = state.remote.as_ref()?;
        // A FIFO or socket has no data to serve (S3 Files stores them with none).
        let no_body = state.meta.is_some_and(|m| !m.kind().has_body());
        if state.is_dir || state.sync.is_local() || no_body {
            return None;
        }
        let path = state
            .key
            .strip_prefix(self.options.root_prefix.as_str())
            .unwrap_or(&state.key);
        if !self
            .import_rules
            .for_path(path)
            .imports(trigger, remote.size)
        {
            return None;
        }
        Some(Version::new(
            state.key.clone(),
            Some(remote.etag.clone()?),
            remote.size,
        ))
    }

    /// Import on open (trigger ON_FILE_ACCESS): a file its rule covers that the cache
    /// lacks is fetched into the cache in the background. The open does not wait; reads
    /// meanwhile share the import's GETs, so each byte is fetched once and later opens
    /// read from the cache.
    pub(super) fn import_on_open(&self, node: &Node) {
        let Some(version) = self.version_to_import(node, Trigger::OnFileAccess) else {
            return;
        };
        // As for a listing: one file may not wash out more than a quarter of the cache.
        if version.size > self.cache().disk_bound() / 4
            || self.fetcher.is_importing(&version.object)
        {
            return;
        }
        let missing = version.size - self.cache().cached_bytes(version.object, version.size);
        if missing == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Marked before the task starts, so the reads right after this open already
        // share the import's fetches instead of streaming.
        let mark = self.fetcher.mark_importing(&version);
        let (fetcher, eager) = (self.fetcher.clone(), self.eager.clone());
        runtime.spawn(async move {
            let _mark = mark;
            let Ok(_permit) = eager.acquire().await else {
                return;
            };
            match fetcher.import_blocks(&version).await {
                Ok(()) => {
                    let metrics = fetcher.metrics();
                    metrics.open_imports.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .open_import_bytes
                        .fetch_add(missing, Ordering::Relaxed);
                }
                // Only a head start: a read fetches it again and reports any error.
                Err(e) => debug!(key = version.key, error = %e, "import on open failed"),
            }
        });
    }

    /// Lists a directory prefix (every page) and applies the namespace rules.
    pub(super) async fn list_entries(
        &self,
        store: &Arc<dyn ObjectStore>,
        prefix: &str,
    ) -> FsResult<namespace::DirEntries<RemoteObject>> {
        let mut objects = Vec::new();
        let mut common = Vec::new();
        let mut token = None;
        loop {
            let page = store
                .list_page(prefix, token, None)
                .await
                .map_err(|e| self.store_error(prefix, e))?;
            objects.extend(page.objects.into_iter().map(|o| {
                let remote = RemoteObject {
                    size: o.size,
                    etag: o.etag,
                    last_modified: o.last_modified,
                };
                (o.key, remote)
            }));
            common.extend(page.common_prefixes);
            match page.next_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(build_entries(prefix, objects, common))
    }

    /// Logs (once per key) and counts keys the namespace rules left out.
    pub(super) fn report_skipped(&self, entries: &namespace::DirEntries<RemoteObject>) {
        if entries.skipped.is_empty() && entries.hidden.is_empty() {
            return;
        }
        let (skipped, hidden): (Vec<_>, Vec<_>) = {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            if reported.len() > MAX_REPORTED_KEYS {
                // Bounded: a bucket full of hostile keys cannot grow this forever; the
                // price is that such keys may be logged and counted once more.
                reported.clear();
            }
            (
                entries
                    .skipped
                    .iter()
                    .filter(|(key, _)| reported.insert(key.clone()))
                    .collect(),
                entries
                    .hidden
                    .iter()
                    .filter(|key| reported.insert((*key).clone()))
                    .collect(),
            )
        };
        // Logged after the lock is released: logging writes to the log file.
        for (key, reason) in skipped {
            self.metrics.keys_skipped.fetch_add(1, Ordering::Relaxed);
            warn!(key = key.escape_debug().to_string(), %reason, "import failure: S3 key cannot be a file; skipped");
        }
        for key in hidden {
            self.metrics.keys_hidden.fetch_add(1, Ordering::Relaxed);
            warn!(
                key = key.escape_debug().to_string(),
                "object hidden: a directory of the same name exists"
            );
        }
    }

    /// Fetches a node's metadata (HeadObject) if it is not known.
    pub(super) async fn ensure_meta(&self, node: &Node) -> FsResult<()> {
        load_meta(&self.store, node)
            .await
            .map_err(|(key, e)| self.store_error(&key, e))
    }

    /// Fetches in the background, in name order, the metadata of a listed directory's
    /// entries that have none and that no eager import is about to bring, so a `ls -l`
    /// or `find -type` that stats them one after the other finds it known. Started by
    /// the first stat that misses, never by readdir, so a plain listing costs only the
    /// listing. A stat's own HEAD does not wait for this budget, and an entry is fetched
    /// once either way (the node's load lock serialises both).
    pub(super) fn prefetch_meta(&self, dir: &Node) {
        if self.meta_prefetched.insert(dir.ino, ()).is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let children: Vec<Arc<Node>> = {
            let state = dir.state();
            state
                .children
                .iter()
                .flatten()
                .filter_map(|(_, ino)| self.inodes.get(*ino))
                .collect()
        };
        let todo: Vec<Arc<Node>> = children
            .into_iter()
            .filter(|node| {
                {
                    let state = node.state();
                    if state.is_dir || state.meta.is_some() || state.sync.is_local() {
                        return false;
                    }
                }
                self.import_version(node).is_none()
            })
            .collect();
        if todo.is_empty() {
            return;
        }
        let work = DirWork::start(&self.dir_work, dir.ino);
        let (store, budget) = (self.store.clone(), self.prefetch.clone());
        runtime.spawn(async move {
            let _work = work;
            let mut tasks = tokio::task::JoinSet::new();
            for node in todo {
                let Ok(permit) = budget.clone().acquire_owned().await else {
                    return;
                };
                let store = store.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    // Only a head start: a stat fetches it again and reports any error.
                    if let Err((key, e)) = load_meta(&store, &node).await {
                        debug!(key, error = %e, "metadata prefetch failed");
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        });
    }
}

/// Fetches a node's metadata (HeadObject) if it is not known; on error, the key with it.
async fn load_meta(store: &Arc<dyn ObjectStore>, node: &Node) -> Result<(), (String, StoreError)> {
    if node.state().meta.is_some() {
        return Ok(());
    }
    let _loading = node.load_lock.lock().await;
    let (key, is_dir) = {
        let state = node.state();
        if state.meta.is_some() {
            return Ok(());
        }
        (state.key.clone(), state.is_dir)
    };
    if is_dir && key.is_empty() {
        // The bucket root has no marker object.
        node.state().meta = Some(PosixMeta::default_for(true));
        return Ok(());
    }
    let head = match store.head(&key).await {
        Ok(head) => Some(head),
        // A directory without a marker is implicit: it takes the defaults.
        Err(StoreError::NotFound) if is_dir => None,
        Err(e) => return Err((key, e)),
    };
    let mut state = node.state();
    match head {
        Some(head) => {
            state.meta = Some(PosixMeta::from_user_metadata(&head.metadata, is_dir));
            let changed = state.remote.as_ref().map(|r| &r.etag) != Some(&head.etag);
            if changed {
                state.symlink_target = None;
            }
            state.remote = Some(RemoteObject {
                size: head.size,
                etag: head.etag,
                last_modified: head.last_modified,
            });
        }
        None => {
            state.meta = Some(PosixMeta::default_for(true));
            state.remote = None;
        }
    }
    Ok(())
}

/// Eager import of one small file: its bytes into the cache and its POSIX metadata onto
/// the node, with one GET (or a HEAD if the bytes are cached already, nothing if both are
/// known). Serialised per node with metadata loads, so a listing's background import and a
/// readdir that needs the same metadata share one request.
pub(super) async fn import_node(
    fetcher: &Arc<BlockFetcher>,
    node: &Node,
    version: &Version,
) -> Result<(), StoreError> {
    let _loading = node.load_lock.lock().await;
    let known = node.state().meta.is_some();
    if known && fetcher.is_cached(version) {
        return Ok(());
    }
    let (head, fetched) = fetcher.import(version).await?;
    if let Some(head) = head {
        let mut state = node.state();
        let same = state.remote.as_ref().map(|r| &r.etag) == Some(&head.etag);
        if same && state.meta.is_none() && !state.sync.is_local() {
            state.meta = Some(PosixMeta::from_user_metadata(&head.metadata, false));
        }
    }
    if fetched {
        let metrics = fetcher.metrics();
        metrics.eager_imports.fetch_add(1, Ordering::Relaxed);
        metrics
            .eager_import_bytes
            .fetch_add(version.size, Ordering::Relaxed);
    }
    Ok(())
}
