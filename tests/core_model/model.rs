//! The reference model: plain maps of paths, nodes and open handles, and what the
//! mount, lost+found and the bucket must show for them.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MKind {
    File(Vec<u8>),
    Dir,
    Link(Vec<u8>),
    /// A FIFO: no data; the kernel serves its opens and I/O without the daemon.
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MNode {
    pub(crate) kind: MKind,
    pub(crate) mode: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct MHandle {
    pub(crate) node: u64,
    pub(crate) write: bool,
    /// The bucket won over this file: its handles fail with EIO.
    pub(crate) stale: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Model {
    pub(crate) nodes: HashMap<u64, MNode>,
    /// Path (no leading `/`) -> node.
    pub(crate) tree: BTreeMap<String, u64>,
    pub(crate) next: u64,
    /// What the bucket holds for each path, as of the last export of it (or the last
    /// remote change the mount took in): a path whose entry differs has unexported
    /// changes.
    pub(crate) synced: BTreeMap<String, MNode>,
    /// lost+found: (original path, bytes).
    pub(crate) lost: Vec<(String, Vec<u8>)>,
    pub(crate) handles: BTreeMap<usize, MHandle>,
    /// Paths renamed away since the last sync while their bytes were only in the bucket:
    /// until the rename's server-side copy runs, the bytes are read from there. Another
    /// writer changing such a path before that is a documented limitation
    /// (docs/SEMANTICS.md "Writes and export"), so the model does not generate it.
    pub(crate) moved_from: BTreeSet<String>,
    /// Nodes written since the last sync: a write is a change even when it leaves the
    /// bytes as they were (it moves the mtime, and the mount exports it).
    pub(crate) written: BTreeSet<u64>,
}

pub(crate) fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

pub(crate) fn name_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

pub(crate) fn under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dirty {
    No,
    /// Only the mode differs from the bucket.
    Meta,
    Data,
}

impl Model {
    pub(crate) fn new() -> Self {
        Model {
            next: 1,
            ..Default::default()
        }
    }

    pub(crate) fn insert(&mut self, path: &str, kind: MKind, mode: u32) -> u64 {
        let id = self.next;
        self.next += 1;
        self.nodes.insert(id, MNode { kind, mode });
        self.tree.insert(path.to_string(), id);
        id
    }

    pub(crate) fn node(&self, path: &str) -> Option<&MNode> {
        self.tree.get(path).and_then(|id| self.nodes.get(id))
    }

    /// Resolves a path as the kernel's lookups would: ENOENT, or ENOTDIR through a file.
    pub(crate) fn resolve(&self, path: &str) -> Result<u64, i32> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            let id = *self.tree.get(&prefix).ok_or(libc::ENOENT)?;
            if i + 1 < parts.len() && self.nodes[&id].kind != MKind::Dir {
                return Err(libc::ENOTDIR);
            }
            if i + 1 == parts.len() {
                return Ok(id);
            }
        }
        Err(libc::ENOENT)
    }

    pub(crate) fn require_dir(&self, path: &str) -> Result<(), i32> {
        if path.is_empty() {
            return Ok(());
        }
        let id = self.resolve(path)?;
        if self.nodes[&id].kind == MKind::Dir {
            Ok(())
        } else {
            Err(libc::ENOTDIR)
        }
    }

    pub(crate) fn children(&self, dir: &str) -> Vec<String> {
        self.tree
            .keys()
            .filter(|p| parent_of(p) == dir)
            .cloned()
            .collect()
    }

    pub(crate) fn dirty(&self, path: &str) -> Dirty {
        if self
            .tree
            .get(path)
            .is_some_and(|id| self.written.contains(id))
        {
            return Dirty::Data;
        }
        match (self.node(path), self.synced.get(path)) {
            (None, None) => Dirty::No,
            (Some(a), Some(b)) if a == b => Dirty::No,
            (Some(a), Some(b)) if a.kind == b.kind => Dirty::Meta,
            _ => Dirty::Data,
        }
    }

    pub(crate) fn mark_all_synced(&mut self) {
        self.moved_from.clear();
        self.written.clear();
        self.synced = self
            .tree
            .iter()
            .map(|(p, id)| (p.clone(), self.nodes[id].clone()))
            .collect();
    }

    pub(crate) fn file_mut(&mut self, id: u64) -> &mut Vec<u8> {
        match &mut self.nodes.get_mut(&id).expect("node").kind {
            MKind::File(data) => data,
            _ => unreachable!("checked by the caller"),
        }
    }

    /// An entry new in `dir`: the parent must be a directory and the name free.
    pub(crate) fn check_new(&self, path: &str) -> Result<(), i32> {
        self.require_dir(parent_of(path))?;
        if self.tree.contains_key(path) {
            return Err(libc::EEXIST);
        }
        Ok(())
    }

    pub(crate) fn write_node(&mut self, id: u64, offset: u64, data: &[u8]) {
        self.written.insert(id);
        let file = self.file_mut(id);
        let end = offset as usize + data.len();
        if file.len() < end {
            file.resize(end, 0);
        }
        file[offset as usize..end].copy_from_slice(data);
    }

    /// An open that reaches the daemon: a file (not a directory, a symlink, which the
    /// kernel follows, or a FIFO, which the kernel opens itself).
    pub(crate) fn openable(&self, path: &str) -> Result<Option<u64>, i32> {
        let id = self.resolve(path)?;
        match self.nodes[&id].kind {
            MKind::Dir => Err(libc::EISDIR),
            MKind::Link(_) | MKind::Fifo => Ok(None),
            MKind::File(_) => Ok(Some(id)),
        }
    }

    pub(crate) fn read_node(&self, id: u64, offset: u64, len: u32) -> Vec<u8> {
        match &self.nodes[&id].kind {
            MKind::File(data) => {
                let start = (offset as usize).min(data.len());
                let end = (offset as usize + len as usize).min(data.len());
                data[start..end].to_vec()
            }
            _ => unreachable!("checked by the caller"),
        }
    }

    pub(crate) fn close_all(&mut self) {
        self.handles.clear();
    }

    /// Applies an operation that involves no refresh; returns what it answers.
    pub(crate) fn apply(&mut self, op: &Op) -> Res {
        match op {
            Op::Create(path, mode) => {
                self.check_new(path)?;
                self.insert(path, MKind::File(Vec::new()), *mode);
                Ok(Val::Unit)
            }
            Op::Write(path, offset, data) => {
                let Some(id) = self.openable(path)? else {
                    return Ok(Val::Skipped);
                };
                self.write_node(id, *offset, data.as_bytes());
                Ok(Val::Unit)
            }
            Op::Truncate(path, len) => {
                let Some(id) = self.openable(path)? else {
                    return Ok(Val::Skipped);
                };
                self.file_mut(id).resize(*len as usize, 0);
                Ok(Val::Unit)
            }
            Op::Read(path, offset, len) => {
                let Some(id) = self.openable(path)? else {
                    return Ok(Val::Skipped);
                };
                Ok(Val::Bytes(self.read_node(id, *offset, *len)))
            }
            Op::Stat(path) => {
                let id = self.resolve(path)?;
                Ok(stat_of(&self.nodes[&id]))
            }
            Op::Rename(from, to) => self.rename(from, to),
            Op::Unlink(path) => {
                let id = self.resolve(path)?;
                if self.nodes[&id].kind == MKind::Dir {
                    return Err(libc::EISDIR);
                }
                self.tree.remove(*path);
                Ok(Val::Unit)
            }
            Op::Mkdir(path, mode) => {
                self.check_new(path)?;
                self.insert(path, MKind::Dir, *mode);
                Ok(Val::Unit)
            }
            Op::Rmdir(path) => {
                let id = self.resolve(path)?;
                if self.nodes[&id].kind != MKind::Dir {
                    return Err(libc::ENOTDIR);
                }
                if !self.children(path).is_empty() {
                    return Err(libc::ENOTEMPTY);
                }
                self.tree.remove(*path);
                Ok(Val::Unit)
            }
            Op::Chmod(path, mode) => {
                let id = self.resolve(path)?;
                let node = self.nodes.get_mut(&id).expect("node");
                if matches!(node.kind, MKind::Link(_)) {
                    return Ok(Val::Skipped); // chmod follows the link
                }
                node.mode = *mode;
                Ok(Val::Unit)
            }
            Op::Symlink(path, target) => {
                self.check_new(path)?;
                self.insert(path, MKind::Link(target.as_bytes().to_vec()), 0o777);
                Ok(Val::Unit)
            }
            Op::Mkfifo(path, mode) => {
                self.check_new(path)?;
                self.insert(path, MKind::Fifo, *mode);
                Ok(Val::Unit)
            }
            Op::Readlink(path) => {
                let id = self.resolve(path)?;
                match &self.nodes[&id].kind {
                    MKind::Link(target) => Ok(Val::Bytes(target.clone())),
                    _ => Err(libc::EINVAL),
                }
            }
            Op::Open { slot, path, write } => {
                self.handles.remove(slot);
                let Some(id) = self.openable(path)? else {
                    return Ok(Val::Skipped);
                };
                self.handles.insert(
                    *slot,
                    MHandle {
                        node: id,
                        write: *write,
                        stale: false,
                    },
                );
                Ok(Val::Unit)
            }
            Op::HWrite(slot, offset, data) => {
                let Some(h) = self.handles.get(slot).cloned() else {
                    return Ok(Val::Skipped);
                };
                // The kernel refuses a write on a read-only descriptor before the file
                // system sees it.
                if !h.write {
                    return Err(libc::EBADF);
                }
                if h.stale {
                    return Err(libc::EIO);
                }
                self.write_node(h.node, *offset, data.as_bytes());
                Ok(Val::Unit)
            }
            Op::HRead(slot, offset, len) => {
                let Some(h) = self.handles.get(slot).cloned() else {
                    return Ok(Val::Skipped);
                };
                if h.stale {
                    return Err(libc::EIO);
                }
                Ok(Val::Bytes(self.read_node(h.node, *offset, *len)))
            }
            Op::Close(slot) => {
                if self.handles.remove(slot).is_none() {
                    return Ok(Val::Skipped);
                }
                Ok(Val::Unit)
            }
            Op::Poll => Ok(Val::Unit),
            Op::Sync => {
                self.mark_all_synced();
                Ok(Val::Unit)
            }
            Op::Faulty(..) | Op::Other { .. } | Op::Crash | Op::Remount => {
                unreachable!("driven by run_case")
            }
        }
    }

    pub(crate) fn rename(&mut self, from: &str, to: &str) -> Res {
        let src = self.resolve(from)?;
        self.require_dir(parent_of(to))?;
        if from == to {
            return Ok(Val::Unit);
        }
        let src_is_dir = self.nodes[&src].kind == MKind::Dir;
        // The VFS refuses these before the file system sees them.
        if src_is_dir && under(to, from) {
            return Err(libc::EINVAL);
        }
        if under(from, to) {
            return Err(libc::ENOTEMPTY);
        }
        if let Some(&dst) = self.tree.get(to) {
            let dst_is_dir = self.nodes[&dst].kind == MKind::Dir;
            match (src_is_dir, dst_is_dir) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.children(to).is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            self.tree.remove(to);
        }
        let moved: Vec<(String, u64)> = self
            .tree
            .iter()
            .filter(|(p, _)| *p == from || under(p, from))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (path, id) in moved {
            if self.synced.contains_key(&path) {
                self.moved_from.insert(path.clone());
            }
            // A file renamed onto a name is a change there even if its bytes happen to
            // equal what the name held (the mount exports the rename).
            if !matches!(self.nodes[&id].kind, MKind::Dir) {
                self.written.insert(id);
            }
            self.tree.remove(&path);
            self.tree.insert(format!("{to}{}", &path[from.len()..]), id);
        }
        Ok(Val::Unit)
    }

    /// Another writer changed `path` in the bucket and the mount refreshed: the bucket
    /// wins. Returns whether it was a conflict (the mount had unexported changes there).
    pub(crate) fn other_writer(&mut self, path: &str, data: Option<&str>) -> bool {
        if data.is_none() && !self.synced.contains_key(path) {
            // Deleting a key the bucket does not hold changes nothing a mount can see
            // (a listing is the same before and after): no conflict, nothing removed.
            return false;
        }
        let mut dirty = self.dirty(path);
        if data.is_none() && !self.tree.contains_key(path) {
            // Both sides removed it: they agree, nothing to resolve.
            dirty = Dirty::No;
        }
        let old = self.tree.remove(path);
        if dirty == Dirty::Data {
            if let Some(id) = old {
                match &self.nodes[&id].kind {
                    MKind::File(bytes) | MKind::Link(bytes) => {
                        self.lost.push((format!("/{path}"), bytes.clone()));
                    }
                    // No bytes to keep: it is simply dropped.
                    MKind::Fifo => {}
                    MKind::Dir => unreachable!("other writers never touch directories"),
                }
            }
        }
        if let Some(id) = old {
            for h in self.handles.values_mut() {
                if h.node == id {
                    h.stale = true;
                }
            }
        }
        match data {
            Some(data) => {
                let id = self.insert(path, MKind::File(data.as_bytes().to_vec()), 0o640);
                self.synced
                    .insert(path.to_string(), self.nodes[&id].clone());
            }
            None => {
                self.synced.remove(path);
            }
        }
        dirty != Dirty::No
    }

    /// The mount as `snapshot` reads it.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, Snap> {
        self.tree
            .iter()
            .map(|(p, id)| {
                let node = &self.nodes[id];
                let content = match &node.kind {
                    MKind::File(d) | MKind::Link(d) => Ok(lossy(d)),
                    MKind::Dir | MKind::Fifo => Ok(String::new()),
                };
                let (kind, size, perm) = match stat_of(node) {
                    Val::Stat(k, s, p) => (k, s, p),
                    _ => unreachable!(),
                };
                (
                    p.clone(),
                    Snap {
                        kind,
                        size,
                        perm,
                        content,
                    },
                )
            })
            .collect()
    }

    /// The bucket once everything is exported: key -> (body, file-permissions).
    pub(crate) fn bucket(&self) -> BTreeMap<String, (Vec<u8>, Option<String>)> {
        self.tree
            .iter()
            .map(|(p, id)| {
                let node = &self.nodes[id];
                match &node.kind {
                    MKind::File(d) => (
                        p.clone(),
                        (d.clone(), Some(format!("{:07o}", 0o100000 | node.mode))),
                    ),
                    MKind::Link(d) => (p.clone(), (d.clone(), Some("0120777".to_string()))),
                    MKind::Fifo => (
                        p.clone(),
                        (Vec::new(), Some(format!("{:07o}", 0o010000 | node.mode))),
                    ),
                    MKind::Dir => (
                        format!("{p}/"),
                        (Vec::new(), Some(format!("{:07o}", 0o040000 | node.mode))),
                    ),
                }
            })
            .collect()
    }

    pub(crate) fn lost_sorted(&self) -> Vec<(String, Vec<u8>)> {
        let mut lost = self.lost.clone();
        lost.sort();
        lost
    }
}

pub(crate) fn stat_of(node: &MNode) -> Val {
    match &node.kind {
        MKind::File(d) => Val::Stat(EntryKind::File, d.len() as u64, node.mode),
        MKind::Dir => Val::Stat(EntryKind::Dir, 4096, node.mode),
        MKind::Link(t) => Val::Stat(EntryKind::Symlink, t.len() as u64, 0o777),
        MKind::Fifo => Val::Stat(EntryKind::Fifo, 0, node.mode),
    }
}

/// One entry of the mount as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snap {
    pub(crate) kind: EntryKind,
    pub(crate) size: u64,
    pub(crate) perm: u32,
    /// File bytes or symlink target (empty for directories), or the errno reading failed.
    pub(crate) content: Result<String, i32>,
}
