//! Import: S3 -> the mount. Every `--poll-interval` the directories this mount has listed
//! are listed again and the difference applied: new keys appear, deleted keys disappear,
//! changed objects get new attributes, and the kernel's caches of them are invalidated.
//! Local changes not yet exported win over the listing, except in a conflict (the object
//! changed in S3 since the local copy was based on it), where the bucket wins exactly as
//! at export time (`sync::poll_conflicts`). docs/SEMANTICS.md "Import" and "Conflicts"
//! is the contract.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, info};

use super::inode::Node;
use super::{FsCore, FsResult};
use crate::cache::ObjectId;
use crate::store::ObjectStore;

/// Directories refreshed at once by one poll round.
const POLL_CONCURRENCY: usize = 4;

impl FsCore {
    /// The poll loop: forever, every `interval`, refresh every listed directory. `store`
    /// is the poller's own client: the daemon runs the poller on a low-priority thread
    /// with its own runtime, and connections driven there must never serve file requests.
    pub async fn run_poller(self: Arc<Self>, interval: Duration, store: Arc<dyn ObjectStore>) {
        use futures::stream::{self, StreamExt};
        loop {
            tokio::time::sleep(interval).await;
            let started = SystemTime::now();
            let dirs = self.inodes.listed_dirs();
            stream::iter(dirs)
                .map(|dir| {
                    let core = self.clone();
                    let store = store.clone();
                    async move {
                        // Its last listing's imports or metadata prefetch are still under
                        // way: listing it again now would only compete with them for the
                        // server (a 20-page listing on moto takes longer than a poll
                        // interval). This round skips it; a later round lists it.
                        if core.dir_work.contains_key(&dir.ino) {
                            debug!(ino = dir.ino, "poll: directory still importing; skipped");
                            return;
                        }
                        if let Err(e) = core.refresh_dir(&dir, &store).await {
                            debug!(ino = dir.ino, error = %e, "poll: listing failed; next round retries");
                        }
                    }
                })
                .buffer_unordered(POLL_CONCURRENCY)
                .collect::<Vec<()>>()
                .await;
            // What changed in S3 before `started` is now visible (import age).
            self.metrics.poll_round_done(started);
        }
    }

    /// One poll round, in order of inode number: every listed directory is refreshed once
    /// with `store`. For tests that drive the core step by step (the reference model);
    /// `run_poller` is the same round on a timer. Listing errors are left to the next round.
    pub async fn poll_once(&self, store: &Arc<dyn ObjectStore>) {
        let started = SystemTime::now();
        let mut dirs = self.inodes.listed_dirs();
        dirs.sort_by_key(|d| d.ino);
        for dir in dirs {
            if let Err(e) = self.refresh_dir(&dir, store).await {
                debug!(ino = dir.ino, error = %e, "poll: listing failed; next round retries");
            }
        }
        self.metrics.poll_round_done(started);
    }

    /// Lists a directory again and applies what changed in S3.
    pub async fn refresh_dir(&self, dir: &Arc<Node>, store: &Arc<dyn ObjectStore>) -> FsResult<()> {
        let started = SystemTime::now();
        // `in_lost_found` locks the node's state itself: ask before taking the lock.
        if self.in_lost_found(dir) {
            return Ok(());
        }
        let prefix = {
            let state = dir.state();
            // A prefix longer than any key (a directory moved below a long name, whose
            // exports fail with PathTooLong) has nothing below it in S3 to find.
            if !state.linked
                || state.children.is_none()
                || state.key.len() > super::namespace::MAX_KEY_LEN
            {
                return Ok(());
            }
            state.key.clone()
        };
        let entries = self.list_entries(store, &prefix).await?;
        self.report_skipped(&entries);
        self.poll_conflicts(&prefix, &entries, started, store).await;
        // Computed from the export queue's records before the directory's lock is
        // taken: nothing walks a subtree under that lock.
        let pending = self.pending_in_dir(&prefix);
        let report =
            self.inodes
                .merge_listing(dir, &entries, &pending.hidden, &pending.keep, started);
        if !report.added.is_empty() {
            // New entries have no metadata yet: the next stat that misses prefetches again.
            self.meta_prefetched.remove(&dir.ino);
        }
        if report.changes_listing() {
            // The directory's attributes (its mtime moved), so the kernel drops the
            // listing it keeps before it next uses it.
            self.invalidate_inode(dir.ino);
        }
        for name in &report.added {
            self.invalidate_entry(dir.ino, name);
        }
        for (name, _) in &report.removed {
            self.invalidate_entry(dir.ino, name);
        }
        for ino in &report.changed {
            // The name too: a changed object may have changed type (file <-> symlink),
            // and the kernel only learns a new type from a fresh lookup.
            let name = self.inodes.get(*ino).map(|node| node.state().name.clone());
            if let Some(name) = name {
                self.invalidate_entry(dir.ino, &name);
            }
            self.invalidate_inode(*ino);
        }
        for (key, old) in &report.stale {
            if let Some(etag) = &old.etag {
                self.cache()
                    .forget_object(ObjectId::new(key, etag), old.size);
            }
        }
        if let Some(queue) = self.queue.as_ref() {
            for id in &report.dropped_staged {
                queue.forget_staged(*id);
            }
        }
        if !(report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty()) {
            info!(
                prefix,
                added = report.added.len(),
                removed = report.removed.len(),
                changed = report.changed.len(),
                "imported changes from S3"
            );
        }
        Ok(())
    }
}
