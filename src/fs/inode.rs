//! The inode table: inode numbers for namespace entries, each node's remote state, and the
//! kernel's lookup counts.
//!
//! Invariants (checked by the model test below):
//! - every ino in a listed directory's `children` is in the table, linked, and its key is
//!   the parent's key plus its name (plus `/` for directories);
//! - a node leaves the table once it is unlinked (gone from its parent's listing) and the
//!   kernel has forgotten every lookup of it; never before, so a kernel-held ino resolves;
//! - inode numbers are never reused.
//!
//! Locking (the order for the whole daemon; `crate::lock_order` checks it in debug
//! builds and every test):
//!   1. node states (`Node::state`), a parent's before a child's, never one twice;
//!   2. the table's map (`InodeTable::nodes`), which protects only the map;
//!   3. the export queue's records, then 4. its schedule (`export::queue`);
//!   5. the journal's log file (held only across its own append).
//!
//! Leaf locks, taken last and released before anything else is taken: an open file's
//! io mode, a passthrough backing's description, a staged file's descriptor and stamp,
//! and the data cache's own (each tier's index, its queue of blocks for the disk writer).
//! A passthrough backing's registration lock is held across one ioctl on the FUSE device
//! (registering the file with the kernel), which waits for no request.
//!
//! A thread may only take a lock of a later level than every lock it holds. No lock is
//! held across a request to S3, a kernel notification or a disk write (those call sites
//! assert it). `load_lock` and `stage_lock` are async mutexes that only make concurrent
//! loads (listing, HEAD) or stagings of one node share one request (single flight);
//! they are outside the order because nothing waits on them while holding a lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;

use super::life::SyncLife;
use super::namespace::DirEntries;
use crate::lock_order::{self, Level, OrderedGuard, OrderedMutex};
use crate::posix::PosixMeta;

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

/// What S3 last told us about an object (for a directory: its marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

#[derive(Debug)]
pub struct NodeState {
    pub parent: Ino,
    pub name: String,
    /// Full key for a file; the prefix (ending in `/`, or empty for a bucket root) for a
    /// directory.
    pub key: String,
    pub is_dir: bool,
    /// The object (files) or marker (dirs; None when implicit or not yet checked) at
    /// this node's own key, as this mount last saw or wrote it (see `life`).
    pub remote: Option<RemoteObject>,
    /// Decoded metadata; None until fetched (HEAD), and again after the object changed.
    pub meta: Option<PosixMeta>,
    /// Directory entries by name; None until the directory has been listed.
    pub children: Option<BTreeMap<String, Ino>>,
    /// A symlink's target, once read.
    pub symlink_target: Option<Bytes>,
    /// False once the entry has gone from its parent.
    pub linked: bool,
    /// How the entry stands with S3: remote only, changed here, clean local bytes, or
    /// in lost+found.
    pub sync: SyncLife,
    /// Open file handles (staged data is kept while any is open).
    pub handles: u32,
    /// ETag of the object version whose pages the kernel may still cache from an
    /// earlier open: reopening the same version keeps them (FOPEN_KEEP_CACHE).
    pub page_cache_etag: Option<String>,
    /// Open handles by how the kernel serves them (passthrough or not).
    pub io: super::passthrough::NodeIo,
    /// A directory's entries: when this mount last saw them change (its mtime from then
    /// on, until a utimens sets one), and how many times (a readdir snapshot's version).
    /// The kernel keeps a directory's listing while its mtime is unchanged, so every
    /// change to `children` moves both (`touch_entries`).
    pub entries_changed: Option<SystemTime>,
    pub entries_version: u64,
    /// How many times this file's local bytes lost a conflict: a handle opened before
    /// the last time viewed bytes that are gone, and never reads another version.
    pub conflicts_lost: u32,
}

impl NodeState {
    /// A freshly listed entry: linked, metadata not fetched yet.
    fn new(
        parent: Ino,
        name: &str,
        key: String,
        is_dir: bool,
        remote: Option<RemoteObject>,
    ) -> Self {
        NodeState {
            parent,
            name: name.to_string(),
            key,
            is_dir,
            remote,
            meta: None,
            children: None,
            symlink_target: None,
            linked: true,
            sync: SyncLife::Remote,
            handles: 0,
            page_cache_etag: None,
            io: Default::default(),
            entries_changed: None,
            entries_version: 0,
            conflicts_lost: 0,
        }
    }

    /// Records a change to this directory's entries: its mtime moves to now, and always
    /// forward, so it differs from any mtime the kernel saw with the old entries.
    pub fn touch_entries(&mut self) {
        let now = SystemTime::now();
        self.entries_changed = Some(match self.entries_changed {
            Some(last) if now <= last => last + std::time::Duration::from_nanos(1),
            _ => now,
        });
        self.entries_version += 1;
    }
}

#[derive(Debug)]
pub struct Node {
    pub ino: Ino,
    state: OrderedMutex<NodeState>,
    lookups: AtomicU64,
    /// Serialises loads (listing, HEAD) of this node so concurrent requests share one.
    pub load_lock: tokio::sync::Mutex<()>,
    /// Serialises copying the node's object into staging, apart from `load_lock` so a
    /// long download never holds up lookups of the node.
    pub stage_lock: tokio::sync::Mutex<()>,
}

impl Node {
    fn new(ino: Ino, state: NodeState) -> Self {
        Node {
            ino,
            state: OrderedMutex::new(Level::Node, state),
            lookups: AtomicU64::new(0),
            load_lock: tokio::sync::Mutex::new(()),
            stage_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The node's state. Every mutation of it is a plain field assignment that cannot
    /// panic half-way, so a poisoned lock still guards consistent data.
    pub fn state(&self) -> OrderedGuard<'_, NodeState> {
        self.state.lock()
    }

    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Acquire)
    }
}

/// What a re-listing changed in one directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergeReport {
    pub added: Vec<String>,
    pub removed: Vec<(String, Ino)>,
    /// Entries whose object changed (new ETag).
    pub changed: Vec<Ino>,
    /// Object versions no longer on any path (changed or deleted): key and old version,
    /// so their cached data can go.
    pub stale: Vec<(String, RemoteObject)>,
    /// Staging files of clean local copies made stale by a change in S3 (to delete).
    pub dropped_staged: Vec<u64>,
}

impl MergeReport {
    /// Whether the directory's listing changed: an entry added or removed, or an
    /// object changed (which may have changed its type, which the listing shows).
    pub fn changes_listing(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

#[derive(Debug)]
pub struct InodeTable {
    nodes: RwLock<HashMap<Ino, Arc<Node>>>,
    next: AtomicU64,
}

impl InodeTable {
    /// A table holding only the root directory, whose prefix is `root_key`.
    pub fn new(root_key: &str) -> Self {
        let root = Node::new(
            ROOT_INO,
            NodeState::new(ROOT_INO, "", root_key.to_string(), true, None),
        );
        let mut nodes = HashMap::new();
        nodes.insert(ROOT_INO, Arc::new(root));
        InodeTable {
            nodes: RwLock::new(nodes),
            next: AtomicU64::new(ROOT_INO + 1),
        }
    }

    pub fn get(&self, ino: Ino) -> Option<Arc<Node>> {
        self.map_read().get(&ino).cloned()
    }

    pub fn len(&self) -> usize {
        self.map_read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The linked child `name` of directory `dir`, if the directory has been listed.
    pub fn child(&self, dir: &Node, name: &str) -> Option<Arc<Node>> {
        let ino = *dir.state().children.as_ref()?.get(name)?;
        self.get(ino)
    }

    /// Counts one kernel lookup of `child`, provided it is still `dir`'s entry `name`
    /// (it may have been replaced while its metadata was being fetched). Returns whether
    /// it was counted; if not, the caller looks the name up again.
    pub fn remember(&self, dir: &Node, name: &str, child: &Node) -> bool {
        let state = dir.state();
        let current = state.children.as_ref().and_then(|c| c.get(name)).copied();
        if current == Some(child.ino) {
            child.lookups.fetch_add(1, Ordering::AcqRel);
            true
        } else {
            false
        }
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        let Some(node) = self.get(ino) else { return };
        let previous = node
            .lookups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or(0);
        if previous <= n && ino != ROOT_INO && !node.state().linked {
            self.map_write().remove(&ino);
        }
    }

    /// Replaces directory `dir`'s entries with a fresh listing. Entries whose name and
    /// kind are unchanged keep their inode; a file whose ETag changed forgets its cached
    /// metadata. Entries that are gone are unlinked (and dropped once forgotten).
    pub fn apply_listing(&self, dir: &Node, listing: &DirEntries<RemoteObject>) {
        let mut state = dir.state();
        let dir_key = state.key.clone();
        if state.children.is_some() {
            state.touch_entries();
        }
        let old = state.children.take().unwrap_or_default();
        let mut children = BTreeMap::new();
        let mut unlinked = Vec::new();
        for (name, remote) in &listing.files {
            let kept = old
                .get(name)
                .and_then(|ino| self.get(*ino))
                .filter(|node| !node.state().is_dir);
            let ino = match kept {
                Some(node) => {
                    let mut child = node.state();
                    if child.remote.as_ref().map(|r| &r.etag) != Some(&remote.etag) {
                        child.meta = None;
                        child.symlink_target = None;
                    }
                    child.remote = Some(remote.clone());
                    node.ino
                }
                None => self.insert(NodeState::new(
                    dir.ino,
                    name,
                    format!("{dir_key}{name}"),
                    false,
                    Some(remote.clone()),
                )),
            };
            children.insert(name.clone(), ino);
        }
        for name in &listing.dirs {
            let kept = old
                .get(name)
                .and_then(|ino| self.get(*ino))
                .filter(|node| node.state().is_dir);
            let ino = match kept {
                Some(node) => node.ino,
                None => self.insert(NodeState::new(
                    dir.ino,
                    name,
                    format!("{dir_key}{name}/"),
                    true,
                    None,
                )),
            };
            children.insert(name.clone(), ino);
        }
        for (name, ino) in old {
            if children.get(&name) != Some(&ino) {
                unlinked.push(ino);
            }
        }
        state.children = Some(children);
        drop(state);
        for ino in unlinked {
            self.unlink_tree(ino);
        }
    }

    /// Every listed, linked directory (what the poller refreshes).
    pub fn listed_dirs(&self) -> Vec<Arc<Node>> {
        let nodes: Vec<Arc<Node>> = self.map_read().values().cloned().collect();
        nodes
            .into_iter()
            .filter(|n| {
                let s = n.state();
                s.is_dir && s.linked && s.children.is_some()
            })
            .collect()
    }

    /// Applies a fresh listing of an already listed directory. Entries with local state
    /// (`SyncLife::keeps_local_state`) or named in `keep` (something below them has
    /// changes not exported yet) are left alone; so are entries whose
    /// last known change is newer than the listing (`listed_at`: our own export may not
    /// be in it yet). Names in `hidden` (deletes still to be exported) do not come back.
    pub fn merge_listing(
        &self,
        dir: &Node,
        listing: &DirEntries<RemoteObject>,
        hidden: &HashSet<String>,
        keep: &HashSet<String>,
        listed_at: SystemTime,
    ) -> MergeReport {
        let mut report = MergeReport::default();
        let mut unlinked = Vec::new();
        let mut state = dir.state();
        let dir_key = state.key.clone();
        let Some(children) = state.children.as_mut() else {
            return report;
        };
        let current: Vec<(String, Ino)> = children.iter().map(|(n, i)| (n.clone(), *i)).collect();
        for (name, ino) in current {
            let Some(node) = self.get(ino) else {
                children.remove(&name);
                continue;
            };
            if keep.contains(&name) {
                continue;
            }
            let mut child = node.state();
            if child.sync.keeps_local_state() {
                continue;
            }
            let newer_than_listing = child
                .remote
                .as_ref()
                .and_then(|r| r.last_modified)
                .is_some_and(|t| t > listed_at);
            match (
                child.is_dir,
                listing.files.get(&name),
                listing.dirs.contains(&name),
            ) {
                (false, Some(remote), _)
                    if newer_than_listing
                        || child.remote.as_ref().map(|r| &r.etag) == Some(&remote.etag) => {}
                // Changed, and no open handle is passed through to the old bytes: the
                // node takes the new version.
                (false, Some(remote), _) if child.io.backing().is_none() => {
                    if let Some(old) = child.remote.replace(remote.clone()) {
                        report.stale.push((child.key.clone(), old));
                    }
                    child.meta = None;
                    child.symlink_target = None;
                    // Clean local bytes (kept for open handles) are now stale:
                    // the handles' source is gone (they fail with EIO).
                    if let SyncLife::Clean { id, .. } = std::mem::take(&mut child.sync) {
                        report.dropped_staged.push(id);
                    }
                    report.changed.push(ino);
                }
                (true, _, true) => {}
                _ if newer_than_listing => {}
                // Gone from the listing; or changed while open handles are passed through
                // to its old bytes, which the kernel keeps them on and would refuse others
                // for: then the new version shows under a new inode (added below), as if
                // another writer had renamed a new file over this one.
                _ => {
                    if let Some(old) = child.remote.clone() {
                        report.stale.push((child.key.clone(), old));
                    }
                    if let SyncLife::Clean { id, .. } = std::mem::take(&mut child.sync) {
                        report.dropped_staged.push(id);
                    }
                    drop(child);
                    children.remove(&name);
                    unlinked.push(ino);
                    report.removed.push((name, ino));
                }
            }
        }
        let mut new_entries: Vec<(String, bool, Option<RemoteObject>)> = Vec::new();
        for (name, remote) in &listing.files {
            if !children.contains_key(name) && !hidden.contains(name) {
                new_entries.push((name.clone(), false, Some(remote.clone())));
            }
        }
        for name in &listing.dirs {
            if !children.contains_key(name) && !hidden.contains(name) {
                new_entries.push((name.clone(), true, None));
            }
        }
        for (name, is_dir, remote) in new_entries {
            let key = if is_dir {
                format!("{dir_key}{name}/")
            } else {
                format!("{dir_key}{name}")
            };
            let ino = self.insert(NodeState::new(dir.ino, &name, key, is_dir, remote));
            children.insert(name.clone(), ino);
            report.added.push(name);
        }
        if report.changes_listing() {
            state.touch_entries();
        }
        drop(state);
        for ino in unlinked {
            self.unlink_tree(ino);
        }
        report
    }

    /// Adds a locally created entry `name` to listed directory `dir`.
    pub fn add_child(&self, dir: &Node, name: &str, is_dir: bool, life: SyncLife) -> Arc<Node> {
        let mut state = dir.state();
        let key = if is_dir {
            format!("{}{name}/", state.key)
        } else {
            format!("{}{name}", state.key)
        };
        let mut child = NodeState::new(dir.ino, name, key, is_dir, None);
        child.meta = life.local_meta();
        child.sync = life;
        if is_dir {
            child.children = Some(BTreeMap::new());
        }
        let ino = self.insert(child);
        let old = state
            .children
            .get_or_insert_with(BTreeMap::new)
            .insert(name.to_string(), ino);
        state.touch_entries();
        drop(state);
        if let Some(old) = old {
            self.unlink_tree(old);
        }
        self.get(ino).expect("just inserted")
    }

    /// Removes entry `name` from `dir`; the node stays resolvable while the kernel
    /// holds it.
    pub fn remove_child(&self, dir: &Node, name: &str) -> Option<Ino> {
        let ino = {
            let mut state = dir.state();
            let ino = state.children.as_mut()?.remove(name)?;
            state.touch_entries();
            ino
        };
        self.unlink_tree(ino);
        Some(ino)
    }

    /// Moves entry `name` of `from` to `to` as `new_name`; an entry already there is
    /// unlinked. Rewrites the keys of the moved node and its listed descendants, and
    /// returns each of them with its old key (the moved node first).
    pub fn move_child(
        &self,
        from: &Node,
        name: &str,
        to: &Node,
        new_name: &str,
    ) -> Vec<(Arc<Node>, String)> {
        let Some(ino) = ({
            let mut state = from.state();
            let ino = state.children.as_mut().and_then(|c| c.remove(name));
            if ino.is_some() {
                state.touch_entries();
            }
            ino
        }) else {
            return Vec::new();
        };
        let root_old_key = self
            .get(ino)
            .map(|n| n.state().key.clone())
            .unwrap_or_default();
        let replaced = {
            let mut to_state = to.state();
            let prefix = to_state.key.clone();
            let replaced = to_state
                .children
                .get_or_insert_with(BTreeMap::new)
                .insert(new_name.to_string(), ino);
            to_state.touch_entries();
            drop(to_state);
            if let Some(node) = self.get(ino) {
                let mut state = node.state();
                state.parent = to.ino;
                state.name = new_name.to_string();
                state.key = if state.is_dir {
                    format!("{prefix}{new_name}/")
                } else {
                    format!("{prefix}{new_name}")
                };
            }
            replaced
        };
        if let Some(old) = replaced.filter(|old| *old != ino) {
            self.unlink_tree(old);
        }
        // Rewrite keys top-down: each node's key is its parent's plus its name.
        let mut moved = Vec::new();
        let mut stack = vec![(ino, None::<String>)];
        while let Some((ino, parent_key)) = stack.pop() {
            let Some(node) = self.get(ino) else { continue };
            let (old_key, key, children) = {
                let mut state = node.state();
                let old_key = match &parent_key {
                    None => root_old_key.clone(),
                    Some(_) => state.key.clone(),
                };
                if let Some(parent_key) = parent_key {
                    state.key = if state.is_dir {
                        format!("{parent_key}{}/", state.name)
                    } else {
                        format!("{parent_key}{}", state.name)
                    };
                }
                let children: Vec<Ino> = state.children.iter().flatten().map(|(_, i)| *i).collect();
                (old_key, state.key.clone(), children)
            };
            moved.push((node, old_key));
            stack.extend(children.into_iter().map(|c| (c, Some(key.clone()))));
        }
        moved
    }

    fn insert(&self, state: NodeState) -> Ino {
        let ino = self.next.fetch_add(1, Ordering::Relaxed);
        self.map_write()
            .insert(ino, Arc::new(Node::new(ino, state)));
        ino
    }

    /// Unlinks `ino` and everything below it; drops each node nobody holds.
    fn unlink_tree(&self, ino: Ino) {
        let mut stack = vec![ino];
        while let Some(ino) = stack.pop() {
            let Some(node) = self.get(ino) else { continue };
            {
                let mut state = node.state();
                state.linked = false;
                if let Some(children) = state.children.take() {
                    stack.extend(children.into_values());
                }
            }
            if node.lookups() == 0 {
                self.map_write().remove(&ino);
            }
        }
    }

    fn map_read(&self) -> MapGuard<std::sync::RwLockReadGuard<'_, HashMap<Ino, Arc<Node>>>> {
        let held = lock_order::acquire(Level::InodeMap, self as *const Self as usize);
        // The map is only ever inserted into or removed from, never left half-updated.
        MapGuard {
            guard: self.nodes.read().unwrap_or_else(|e| e.into_inner()),
            _held: held,
        }
    }

    fn map_write(&self) -> MapGuard<std::sync::RwLockWriteGuard<'_, HashMap<Ino, Arc<Node>>>> {
        let held = lock_order::acquire(Level::InodeMap, self as *const Self as usize);
        MapGuard {
            guard: self.nodes.write().unwrap_or_else(|e| e.into_inner()),
            _held: held,
        }
    }
}

/// A map guard registered with the lock-order checker.
struct MapGuard<G> {
    guard: G,
    _held: lock_order::Held,
}

impl<G: std::ops::Deref> std::ops::Deref for MapGuard<G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: std::ops::DerefMut> std::ops::DerefMut for MapGuard<G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    fn remote(etag: u8) -> RemoteObject {
        RemoteObject {
            size: u64::from(etag),
            etag: Some(format!("e{etag}")),
            last_modified: None,
        }
    }

    fn listing(files: &[(&str, u8)], dirs: &[&str]) -> DirEntries<RemoteObject> {
        DirEntries {
            files: files
                .iter()
                .map(|(n, e)| (n.to_string(), remote(*e)))
                .collect(),
            dirs: dirs.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn listing_keeps_inodes_and_resets_changed_metadata() {
        let table = InodeTable::new("p/");
        let root = table.get(ROOT_INO).unwrap();
        table.apply_listing(&root, &listing(&[("a", 1), ("b", 1)], &["d"]));
        let a = table.child(&root, "a").unwrap();
        let d = table.child(&root, "d").unwrap();
        assert_eq!(a.state().key, "p/a");
        assert_eq!(d.state().key, "p/d/");
        a.state().meta = Some(PosixMeta::default_for(false));
        table.child(&root, "b").unwrap().state().meta = Some(PosixMeta::default_for(false));

        table.apply_listing(&root, &listing(&[("a", 2), ("b", 1)], &["d"]));
        assert_eq!(table.child(&root, "a").unwrap().ino, a.ino);
        assert!(a.state().meta.is_none(), "changed ETag drops metadata");
        assert!(table.child(&root, "b").unwrap().state().meta.is_some());
        assert_eq!(table.child(&root, "d").unwrap().ino, d.ino);
    }

    #[test]
    fn kind_change_gets_new_inode_and_forget_drops_unlinked() {
        let table = InodeTable::new("");
        let root = table.get(ROOT_INO).unwrap();
        table.apply_listing(&root, &listing(&[("x", 1)], &[]));
        let x = table.child(&root, "x").unwrap();
        assert!(table.remember(&root, "x", &x));
        table.apply_listing(&root, &listing(&[], &["x"]));
        let new_x = table.child(&root, "x").unwrap();
        assert_ne!(new_x.ino, x.ino);
        assert!(new_x.state().is_dir);
        // The kernel still holds the old file inode: it stays resolvable until forgotten.
        assert!(table.get(x.ino).is_some());
        assert!(!table.remember(&root, "x", &x));
        table.forget(x.ino, 1);
        assert!(table.get(x.ino).is_none());
    }

    #[test]
    fn move_rewrites_keys_of_the_subtree() {
        let table = InodeTable::new("");
        let root = table.get(ROOT_INO).unwrap();
        table.apply_listing(&root, &listing(&[("f", 1)], &["a", "b"]));
        let a = table.child(&root, "a").unwrap();
        table.apply_listing(&a, &listing(&[("x", 1)], &["sub"]));
        let sub = table.child(&a, "sub").unwrap();
        table.apply_listing(&sub, &listing(&[("y", 1)], &[]));
        let b = table.child(&root, "b").unwrap();
        table.apply_listing(&b, &listing(&[], &[]));

        let moved = table.move_child(&root, "a", &b, "moved");
        let keys: Vec<(String, String)> = moved
            .iter()
            .map(|(n, old)| (old.clone(), n.state().key.clone()))
            .collect();
        assert_eq!(keys[0], ("a/".to_string(), "b/moved/".to_string()));
        assert!(keys.contains(&("a/x".into(), "b/moved/x".into())));
        assert!(keys.contains(&("a/sub/y".into(), "b/moved/sub/y".into())));
        assert!(table.child(&root, "a").is_none());
        assert_eq!(table.child(&b, "moved").unwrap().ino, a.ino);
        reachable(&table);

        // A file over a file: the target is unlinked, the source keeps its inode.
        let f = table.child(&root, "f").unwrap();
        table.apply_listing(&root, &listing(&[("f", 1), ("g", 1)], &["b"]));
        let g = table.child(&root, "g").unwrap();
        table.move_child(&root, "f", &root, "g");
        assert_eq!(table.child(&root, "g").unwrap().ino, f.ino);
        assert!(
            table.get(g.ino).is_none(),
            "replaced target dropped (no lookups)"
        );
        reachable(&table);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// List the directory at this index of the known-directory list.
        List {
            dir: usize,
            files: Vec<(u8, u8)>,
            dirs: Vec<u8>,
        },
        Lookup {
            dir: usize,
            name: u8,
        },
        Forget {
            pick: usize,
            n: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0usize..8,
                proptest::collection::vec((0u8..6, 0u8..3), 0..5),
                proptest::collection::vec(0u8..6, 0..3)
            )
                .prop_map(|(dir, files, dirs)| Op::List { dir, files, dirs }),
            (0usize..8, 0u8..6).prop_map(|(dir, name)| Op::Lookup { dir, name }),
            (0usize..16, 1u64..3).prop_map(|(pick, n)| Op::Forget { pick, n }),
        ]
    }

    /// Walks the linked tree from the root, checking parent/key consistency.
    fn reachable(table: &InodeTable) -> HashSet<Ino> {
        let mut seen = HashSet::new();
        let mut stack = vec![ROOT_INO];
        while let Some(ino) = stack.pop() {
            let node = table.get(ino).expect("linked node missing from table");
            assert!(seen.insert(ino), "ino {ino} reachable twice");
            let state = node.state();
            assert!(state.linked);
            if let Some(children) = &state.children {
                for (name, child_ino) in children {
                    let child = table.get(*child_ino).expect("child missing");
                    let cs = child.state();
                    assert_eq!(&cs.name, name);
                    assert_eq!(cs.parent, ino);
                    let want = if cs.is_dir {
                        format!("{}{name}/", state.key)
                    } else {
                        format!("{}{name}", state.key)
                    };
                    assert_eq!(cs.key, want);
                    stack.push(*child_ino);
                }
            }
        }
        seen
    }

    proptest! {
        #[test]
        fn table_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
            let table = InodeTable::new("");
            // Model: kernel lookup counts per ino, and every ino ever handed out.
            let mut held: BTreeMap<Ino, u64> = BTreeMap::new();
            let mut ever: BTreeSet<Ino> = BTreeSet::from([ROOT_INO]);
            for op in ops {
                let dirs: Vec<Ino> = {
                    let mut v: Vec<Ino> = reachable(&table)
                        .into_iter()
                        .filter(|i| table.get(*i).unwrap().state().is_dir)
                        .collect();
                    v.sort();
                    v
                };
                match op {
                    Op::List { dir, files, dirs: subdirs } => {
                        let node = table.get(dirs[dir % dirs.len()]).unwrap();
                        let mut l = DirEntries::default();
                        for (name, etag) in files {
                            l.files.insert(format!("n{name}"), remote(etag));
                        }
                        for name in subdirs {
                            // Directory wins, as build_entries guarantees.
                            l.files.remove(&format!("n{name}"));
                            l.dirs.insert(format!("n{name}"));
                        }
                        let before: BTreeSet<Ino> = table.map_read().keys().copied().collect();
                        table.apply_listing(&node, &l);
                        let children = node.state().children.clone().unwrap();
                        let names: BTreeSet<String> = children.keys().cloned().collect();
                        let want: BTreeSet<String> =
                            l.files.keys().chain(l.dirs.iter()).cloned().collect();
                        prop_assert_eq!(names, want);
                        for ino in children.values() {
                            if !before.contains(ino) {
                                prop_assert!(ever.insert(*ino), "ino {} reused", ino);
                            }
                        }
                    }
                    Op::Lookup { dir, name } => {
                        let node = table.get(dirs[dir % dirs.len()]).unwrap();
                        let name = format!("n{name}");
                        if let Some(child) = table.child(&node, &name) {
                            prop_assert!(table.remember(&node, &name, &child));
                            *held.entry(child.ino).or_default() += 1;
                        }
                    }
                    Op::Forget { pick, n } => {
                        let keys: Vec<Ino> = held.keys().copied().collect();
                        if keys.is_empty() { continue; }
                        let ino = keys[pick % keys.len()];
                        let count = held.get_mut(&ino).unwrap();
                        let n = n.min(*count);
                        *count -= n;
                        if *count == 0 { held.remove(&ino); }
                        table.forget(ino, n);
                    }
                }
                // The table holds exactly the reachable nodes plus unlinked ones the
                // kernel still holds, and lookup counts agree with the model.
                let live = reachable(&table);
                let in_table: BTreeSet<Ino> = table.map_read().keys().copied().collect();
                let mut expected: BTreeSet<Ino> = live.iter().copied().collect();
                expected.extend(held.keys().copied());
                prop_assert_eq!(&in_table, &expected);
                for (ino, count) in &held {
                    prop_assert_eq!(table.get(*ino).unwrap().lookups(), *count);
                }
            }
        }
    }
}
