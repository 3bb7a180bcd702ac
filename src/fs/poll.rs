//! Import: S3 -> the mount. Every `--poll-interval` the directories this mount has listed
//! are listed again and the difference applied: new keys appear, deleted keys disappear,
//! changed objects get new attributes, and the kernel's caches of them are invalidated.
//! Local changes not yet exported win over the listing, except in a conflict (the object
//! changed in S3 since the local copy was based on it), where the bucket wins exactly as
//! at export time. DESIGN.md section 1 "Import" and "Conflicts" is the contract.

use crate::cache::ObjectId;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, info};

use super::inode::{Ino, Node, RemoteObject};
use super::namespace::DirEntries;
use super::{FsCore, FsResult};
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
            let dirs = self.inodes.listed_dirs();
            stream::iter(dirs)
                .map(|dir| {
                    let core = self.clone();
                    let store = store.clone();
                    async move {
                        if let Err(e) = core.refresh_dir(&dir, &store).await {
                            debug!(ino = dir.ino, error = %e, "poll: listing failed; next round retries");
                        }
                    }
                })
                .buffer_unordered(POLL_CONCURRENCY)
                .collect::<Vec<()>>()
                .await;
        }
    }

    /// One poll round, in order of inode number: every listed directory is refreshed once
    /// with `store`. For tests that drive the core step by step (the reference model);
    /// `run_poller` is the same round on a timer. Listing errors are left to the next round.
    pub async fn poll_once(&self, store: &Arc<dyn ObjectStore>) {
        let mut dirs = self.inodes.listed_dirs();
        dirs.sort_by_key(|d| d.ino);
        for dir in dirs {
            if let Err(e) = self.refresh_dir(&dir, store).await {
                debug!(ino = dir.ino, error = %e, "poll: listing failed; next round retries");
            }
        }
    }

    /// Lists a directory again and applies what changed in S3.
    pub async fn refresh_dir(&self, dir: &Arc<Node>, store: &Arc<dyn ObjectStore>) -> FsResult<()> {
        let started = SystemTime::now();
        let prefix = {
            let state = dir.state();
            if !state.linked || state.children.is_none() || self.in_lost_found(dir) {
                return Ok(());
            }
            state.key.clone()
        };
        let entries = self.list_entries(store, &prefix).await?;
        self.report_skipped(&entries);
        self.poll_conflicts(dir, &entries, started, store).await;
        let hidden = self.pending_deletes_in(&prefix);
        let keep = |node: &Node| self.keeps_local_state(node);
        let report = self
            .inodes
            .merge_listing(dir, &entries, &hidden, &keep, started);
        for name in &report.added {
            self.invalidate_entry(dir.ino, name);
        }
        for (name, _) in &report.removed {
            self.invalidate_entry(dir.ino, name);
        }
        for ino in &report.changed {
            self.invalidate_inode(*ino);
        }
        for (key, old) in &report.stale {
            if let Some(etag) = &old.etag {
                self.cache()
                    .forget_object(ObjectId::new(key, etag), old.size);
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

    /// Whether a node's local state must survive a listing that disagrees with it: it
    /// (or something below it) has changes not exported yet, or exists only here.
    fn keeps_local_state(&self, node: &Node) -> bool {
        let mut stack = vec![node.ino];
        while let Some(ino) = stack.pop() {
            let Some(n) = self.inodes.get(ino) else {
                continue;
            };
            let state = n.state();
            if let Some(local) = &state.local {
                if local.dirty || local.lost_from.is_some() {
                    return true;
                }
            }
            stack.extend(state.children.iter().flatten().map(|(_, c)| *c));
        }
        false
    }

    /// Names in directory `prefix` whose deletion (or move away) is still to be exported:
    /// the listing still has them, the mount must not show them again.
    fn pending_deletes_in(&self, prefix: &str) -> HashSet<String> {
        self.writer
            .as_ref()
            .map(|w| w.pending_delete_names(prefix))
            .unwrap_or_default()
    }

    /// Poll-time conflicts: an entry with unexported changes whose object changed (or
    /// was deleted, or created) in S3 since the local copy was based on it.
    async fn poll_conflicts(
        &self,
        dir: &Node,
        entries: &DirEntries<RemoteObject>,
        listed_at: SystemTime,
        store: &Arc<dyn ObjectStore>,
    ) {
        let Some(writer) = self.writer.as_ref() else {
            return;
        };
        let children: Vec<(String, Ino)> = dir
            .state()
            .children
            .iter()
            .flatten()
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        for (name, ino) in children {
            let Some(node) = self.inodes.get(ino) else {
                continue;
            };
            let (is_dir, local) = {
                let s = node.state();
                (s.is_dir, s.local.clone())
            };
            let Some(local) = local.filter(|l| l.dirty && l.lost_from.is_none()) else {
                continue;
            };
            if is_dir {
                continue;
            }
            let remote_etag = entries.files.get(&name).map(|r| r.etag.clone());
            if let Some(entry) = writer.conflict_candidate(local.export_id, remote_etag, listed_at)
            {
                info!(
                    key = entry.record.key,
                    "poll: the object changed in S3 while the local copy has unexported changes"
                );
                self.metrics
                    .conflicts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.resolve_conflict(writer, &entry, store).await;
            }
        }
    }
}
