//! rename(2): instant on the mount; in S3 a pending change simply goes to its new key,
//! and an entry already in S3 is copied server-side, then deleted at its old key. A
//! moved node takes the version at its new key as its `remote` (docs/SEMANTICS.md
//! "Conflicts": a conflict is only judged at the same key).

use std::collections::HashMap;
use std::sync::Arc;

use super::access::{self, Identity};
use super::change::record;
use super::inode::{Ino, Node, RemoteObject, ROOT_INO};
use super::life::{Change, Source, SyncLife};
use super::namespace::{check_segment, name_error, MAX_DIR_DEPTH, MAX_KEY_LEN};
use super::{FsCore, FsError, FsResult};
use crate::export::journal::{ExportKind, PendingExport};

impl FsCore {
    /// rename(2), of files and whole directories. Instant on the mount; in S3 a pending
    /// upload simply goes to the new key, and an entry already in S3 is copied
    /// server-side to the new key, then deleted at the old one (the delete waits for the
    /// copy). `RENAME_NOREPLACE` is honoured; `RENAME_EXCHANGE` is not supported.
    pub async fn rename(
        &self,
        caller: Identity,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let queue = self.queue()?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::Invalid);
        }
        let from = self.node(parent)?;
        let to = self.node(new_parent)?;
        self.require_dir(&from)?;
        self.require_dir(&to)?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let new_name = std::str::from_utf8(new_name).map_err(|_| FsError::Invalid)?;
        check_segment(new_name).map_err(|r| name_error(r, FsError::Invalid))?;
        self.check(caller, &from, access::WRITE | access::EXEC)
            .await?;
        self.check(caller, &to, access::WRITE | access::EXEC)
            .await?;
        self.load_dir(&from).await?;
        self.load_dir(&to).await?;
        let src = self.inodes.child(&from, name).ok_or(FsError::NotFound)?;
        if self.in_lost_found(&from) || self.in_lost_found(&to) || self.in_lost_found(&src) {
            // lost+found is local only: nothing moves in or out of it.
            return Err(FsError::Perm);
        }
        let target = self.inodes.child(&to, new_name);
        if target.as_ref().is_some_and(|t| self.in_lost_found(t)) {
            // Nor can anything replace lost+found itself.
            return Err(FsError::Perm);
        }
        if target.as_ref().is_some_and(|t| t.ino == src.ino) {
            return Ok(());
        }
        let src_is_dir = src.state().is_dir;
        if let Some(target) = &target {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            let target_is_dir = target.state().is_dir;
            match (src_is_dir, target_is_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => self.require_empty_dir(target).await?,
                (false, false) => {}
            }
        }
        if src_is_dir {
            // A directory cannot move below itself.
            let mut cursor = to.ino;
            loop {
                if cursor == src.ino {
                    return Err(FsError::Invalid);
                }
                if cursor == ROOT_INO {
                    break;
                }
                cursor = self.node(cursor)?.state().parent;
            }
        }
        // The entry's own new key must fit in S3 (fail early, as create does). Keys
        // below a moved directory may grow past 1,024 bytes: S3 Files allows the rename
        // and fails those entries' exports with `PathTooLong` (docs/SEMANTICS.md), and
        // so does s3files; the old objects stay until their new keys are written.
        let own_key_len = to.state().key.len() + new_name.len() + usize::from(src_is_dir);
        if own_key_len > MAX_KEY_LEN {
            return Err(FsError::NameTooLong);
        }
        // Everything that moves must be known: list the whole subtree, and read the
        // metadata a server-side copy has to carry.
        let subtree = self.load_subtree(&src).await?;
        if src_is_dir {
            self.check_moved_depth(&subtree, self.depth_of(&to)?)?;
        }
        for node in &subtree {
            if !node.state().is_dir {
                self.ensure_meta(node).await?;
            }
        }
        // Exports of what moves (or is replaced) must not be running while their
        // records change keys.
        let mut ids: Vec<u64> = subtree
            .iter()
            .chain(target.iter())
            .filter_map(|n| n.state().sync.pending().map(|c| c.id))
            .collect();
        ids.sort_unstable();
        queue.wait_not_running(&ids).await;

        // The replaced target: its pending change is dropped; what is at its key now
        // (`remote`: what this mount last saw or wrote there) is what the source's
        // export replaces, or deletes if the source never reaches S3.
        let mut target_remote = None;
        if let Some(target) = &target {
            let (key, remote, life, open) = {
                let s = target.state();
                (
                    s.key.clone(),
                    s.remote.clone(),
                    s.sync.clone(),
                    s.handles > 0,
                )
            };
            // Open handles of the replaced file keep its bytes until the last closes.
            match &life {
                SyncLife::Pending(change) => {
                    queue.cancel(change.id, !open);
                }
                SyncLife::Clean { id, .. } if !open => queue.staging().remove(*id),
                _ => {}
            }
            let src_reaches_s3 = {
                let s = src.state();
                s.remote.is_some() || s.sync.pending().is_some()
            };
            match remote {
                Some(remote) if src_reaches_s3 => target_remote = Some(remote),
                Some(remote) => {
                    self.record_delete(key, remote.etag, None)?;
                }
                None => {}
            }
        }

        let moved = self.inodes.move_child(&from, name, &to, new_name);
        for (i, (node, old_key)) in moved.iter().enumerate() {
            // The moved node takes the target's place at its key; nodes below it move to
            // keys that hold nothing yet.
            let at_new_key = if i == 0 { target_remote.clone() } else { None };
            self.rekey(node, old_key, at_new_key)?;
        }
        Ok(())
    }

    /// How many levels below the mount root a node is (the root: 0).
    pub(super) fn depth_of(&self, node: &Node) -> FsResult<usize> {
        let mut depth = 0;
        let mut cursor = node.ino;
        while cursor != ROOT_INO {
            depth += 1;
            cursor = self.node(cursor)?.state().parent;
        }
        Ok(depth)
    }

    /// ENAMETOOLONG if a directory of `subtree` (the moved entry first, parents before
    /// children, as `load_subtree` returns it) would end up deeper than
    /// `MAX_DIR_DEPTH` below a new parent at depth `parent_depth`.
    fn check_moved_depth(&self, subtree: &[Arc<Node>], parent_depth: usize) -> FsResult<()> {
        let mut depths: HashMap<Ino, usize> = HashMap::with_capacity(subtree.len());
        for (i, node) in subtree.iter().enumerate() {
            let (parent, is_dir) = {
                let s = node.state();
                (s.parent, s.is_dir)
            };
            if !is_dir {
                continue;
            }
            let depth = if i == 0 {
                parent_depth + 1
            } else {
                depths.get(&parent).copied().unwrap_or(parent_depth + 1) + 1
            };
            if depth > MAX_DIR_DEPTH {
                return Err(FsError::NameTooLong);
            }
            depths.insert(node.ino, depth);
        }
        Ok(())
    }

    /// Lists `node` and every directory below it; returns the subtree, `node` first.
    async fn load_subtree(&self, node: &Arc<Node>) -> FsResult<Vec<Arc<Node>>> {
        let mut out = vec![node.clone()];
        let mut i = 0;
        while i < out.len() {
            let current = out[i].clone();
            i += 1;
            if !current.state().is_dir {
                continue;
            }
            self.load_dir(&current).await?;
            let children: Vec<Ino> = current
                .state()
                .children
                .iter()
                .flatten()
                .map(|(_, c)| *c)
                .collect();
            out.extend(children.into_iter().filter_map(|c| self.inodes.get(c)));
        }
        Ok(out)
    }

    /// After a move, points a node's export at its new key. Its `remote` becomes what is
    /// at the new key (`at_new_key`), the base of every export there; a pending record is
    /// re-keyed; an entry already in S3 is copied from its old key (the bytes' source)
    /// and deleted there once the copy is done.
    fn rekey(
        &self,
        node: &Arc<Node>,
        old_key: &str,
        at_new_key: Option<RemoteObject>,
    ) -> FsResult<()> {
        let queue = self.queue()?;
        let (new_key, is_dir, old_remote, life, meta) = {
            let s = node.state();
            (
                s.key.clone(),
                s.is_dir,
                s.remote.clone(),
                s.sync.clone(),
                self.current_meta(&s),
            )
        };
        if new_key == old_key {
            return Ok(());
        }
        let base = at_new_key.as_ref().and_then(|r| r.etag.clone());
        // Where the bytes are in S3 for a node without local bytes: a pending copy's
        // source, or the object at the old key.
        let old_source = match life.pending().and_then(|c| c.source.clone()) {
            Some(source) => Some(source),
            None => old_remote.as_ref().map(|r| Source {
                key: old_key.to_string(),
                etag: r.etag.clone(),
                size: r.size,
            }),
        };
        if let SyncLife::Pending(change) = &life {
            let Some(queued) = queue.get(change.id) else {
                return Ok(());
            };
            let mut rec = queued.record.clone();
            rec.key = new_key.clone();
            rec.base_etag = base.clone();
            let mut source = None;
            if change.staged.is_none() && !is_dir {
                // No local bytes: the body is copied server-side from where it is.
                if let Some(src) = &old_source {
                    rec.kind = ExportKind::Copy;
                    rec.copy_from = Some(src.key.clone());
                    rec.copy_etag = src.etag.clone();
                    rec.copy_size = Some(src.size);
                    source = Some(src.clone());
                }
            }
            // The old key is deleted once the new one is written, if anything is there:
            // the entry's object, or (a copy still pending from an earlier rename) that
            // rename's own delete covers its source. It waits for the new key's export
            // (copy or upload alike), so S3 never holds neither: if that export fails
            // for good (a key too long for S3), the old object stays.
            let new_key_export = Some(rec.id);
            let old_in_s3 = old_remote.is_some();
            let staged = change.staged.clone();
            self.commit(node, rec, staged, |state| {
                state.remote = at_new_key.clone();
                if let SyncLife::Pending(c) = &mut state.sync {
                    c.source = source.clone();
                }
                true
            })?;
            if old_in_s3 {
                let seen = old_remote.as_ref().and_then(|r| r.etag.clone());
                self.record_delete(old_key.to_string(), seen, new_key_export)?;
            }
            if at_new_key.is_none() {
                self.take_over_key(node, change.id, &new_key)?;
            }
            return Ok(());
        }
        // Clean or remote: nothing local to send but the entry is in S3 at the old key.
        let Some(old) = old_remote else {
            // An implicit directory, or nothing in S3 yet: only its children's keys move.
            node.state().remote = at_new_key;
            return Ok(());
        };
        // Clean bytes (open handles) stay for reading, under the same record id (the
        // staging file's name), so a later write turns the copy into an upload of them.
        let staged = life.staged().cloned();
        let id = match &life {
            SyncLife::Clean { id, .. } => *id,
            _ => queue.new_id(),
        };
        let rec = if is_dir {
            record(id, new_key.clone(), ExportKind::Marker, base, meta)
        } else {
            PendingExport {
                copy_from: Some(old_key.to_string()),
                copy_etag: old.etag.clone(),
                copy_size: Some(old.size),
                ..record(id, new_key.clone(), ExportKind::Copy, base, meta)
            }
        };
        self.commit(node, rec, None, |state| {
            state.remote = at_new_key.clone();
            state.sync = SyncLife::Pending(Change {
                id,
                meta,
                staged,
                source: (!is_dir).then(|| Source {
                    key: old_key.to_string(),
                    etag: old.etag.clone(),
                    size: old.size,
                }),
            });
            true
        })?;
        self.record_delete(old_key.to_string(), old.etag.clone(), Some(id))?;
        if at_new_key.is_none() {
            self.take_over_key(node, id, &new_key)?;
        }
        Ok(())
    }

    /// A node moved to `key` where no entry was: this mount's own pending deletes of the
    /// key (a rename back to a name, a move onto a name just removed) go, since the node
    /// replaces what they would delete, and its record is based on that version.
    fn take_over_key(&self, node: &Node, id: u64, key: &str) -> FsResult<()> {
        let queue = self.queue()?;
        let Some(seen) = queue.supersede_deletes(key) else {
            return Ok(());
        };
        let Some(queued) = queue.get(id) else {
            return Ok(());
        };
        let mut rec = queued.record;
        rec.base_etag = seen.clone();
        self.commit(node, rec, queued.staged, move |state| {
            state.remote = seen.map(|etag| RemoteObject {
                size: 0,
                etag: Some(etag),
                last_modified: None,
            });
            true
        })
    }
}
