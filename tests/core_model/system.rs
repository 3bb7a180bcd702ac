//! The system under test: a core over a fault-injecting memory store, driven as the
//! kernel and the FUSE adapter would drive it, and read back whole.

use super::*;

/// What is in the bucket before a case starts.
pub(crate) fn seed_bucket(mem: &MemoryStore, model: &mut Model) {
    mem.put("a", "hello", &[("file-permissions", "0100644")]);
    mem.put("d/", "", &[("file-permissions", "0040755")]);
    mem.put("d/a", "world!", &[("file-permissions", "0100600")]);
    model.insert("a", MKind::File(b"hello".to_vec()), 0o644);
    model.insert("d", MKind::Dir, 0o755);
    model.insert("d/a", MKind::File(b"world!".to_vec()), 0o600);
    model.mark_all_synced();
}

pub(crate) struct System {
    pub(crate) cache_dir: tempfile::TempDir,
    pub(crate) store: Arc<FaultyStore<MemoryStore>>,
    pub(crate) runtime: Option<tokio::runtime::Runtime>,
    pub(crate) core: Option<Arc<FsCore>>,
    /// Slot -> file handle.
    pub(crate) handles: BTreeMap<usize, u64>,
}

impl System {
    pub(crate) fn new() -> Self {
        let mut system = System {
            cache_dir: tempfile::tempdir().expect("temp dir"),
            store: Arc::new(FaultyStore::new(Arc::new(MemoryStore::new()))),
            runtime: None,
            core: None,
            handles: BTreeMap::new(),
        };
        system.open();
        system
    }

    pub(crate) fn dyn_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Mounts: a new runtime, cache, writer (replaying the journal) and core.
    pub(crate) fn open(&mut self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = self.cache_dir.path().to_path_buf();
        let metrics = Arc::new(Metrics::default());
        let core = {
            let _guard = runtime.enter();
            let cache = DataCache::open(
                &CacheOptions {
                    dir: dir.join("data"),
                    disk_bytes: 1 << 30,
                    memory_bytes: 64 << 20,
                    expiry: Duration::from_secs(3600),
                },
                metrics.clone(),
            )
            .expect("cache")
            .0;
            let writer = Writer::open(&WriteOptions {
                cache_dir: dir,
                write_back_delay: Duration::from_secs(3600),
                mount_id: MOUNT_ID.into(),
            })
            .expect("writer");
            let core = FsCore::new(
                self.dyn_store(),
                CoreOptions {
                    bucket: "model".into(),
                    root_prefix: String::new(),
                    access_point: None,
                    secondary_gids: Vec::new(),
                    root_squash: false,
                    fs_prefix: None,
                    import_size_threshold: 0,
                    stream_budget: s3files::read::stream::DEFAULT_BUDGET,
                },
                metrics,
                Arc::new(cache),
            )
            .with_writer(writer);
            // As a kernel with FUSE passthrough would have it.
            core.enable_passthrough();
            Arc::new(core)
        };
        runtime.spawn(core.clone().run_exports());
        self.runtime = Some(runtime);
        self.core = Some(core);
    }

    pub(crate) fn core(&self) -> Arc<FsCore> {
        self.core.clone().expect("mounted")
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().expect("mounted").block_on(f)
    }

    /// SIGKILL: nothing is flushed or dropped cleanly; the tasks vanish with the runtime.
    pub(crate) fn crash(&mut self) {
        if let Some(core) = self.core.take() {
            // A crash ends the daemon's threads too; forgetting the core would not.
            core.halt();
            std::mem::forget(core);
        }
        drop(self.runtime.take());
        self.handles.clear();
        self.open();
    }

    /// Clean unmount and mount again; returns how many records the flush left.
    pub(crate) fn remount(&mut self) -> usize {
        let core = self.core();
        for (_, fh) in std::mem::take(&mut self.handles) {
            core.release(fh);
        }
        let left = self.block_on(core.flush_all(Duration::from_secs(30)));
        drop(core);
        self.core = None;
        drop(self.runtime.take());
        self.open();
        left
    }
}

pub(crate) fn errno(e: FsError) -> i32 {
    e.errno()
}

pub(crate) async fn resolve(core: &FsCore, path: &str) -> Result<s3files::fs::Attr, i32> {
    let mut attr = core.getattr(ROOT_INO).await.map_err(errno)?;
    for part in path.split('/') {
        attr = core
            .lookup(ROOT, attr.ino, part.as_bytes())
            .await
            .map_err(errno)?;
    }
    Ok(attr)
}

pub(crate) async fn resolve_parent(core: &FsCore, path: &str) -> Result<Ino, i32> {
    let parent = parent_of(path);
    if parent.is_empty() {
        return Ok(ROOT_INO);
    }
    let attr = resolve(core, parent).await?;
    if attr.kind != EntryKind::Dir {
        return Err(libc::ENOTDIR);
    }
    Ok(attr.ino)
}

/// The inode of a file the kernel would open (None: a symlink, which it follows, or a
/// FIFO or socket, which it opens itself).
pub(crate) async fn openable(core: &FsCore, path: &str) -> Result<Option<Ino>, i32> {
    let attr = resolve(core, path).await?;
    match attr.kind {
        EntryKind::Symlink | EntryKind::Fifo | EntryKind::Socket => Ok(None),
        _ => Ok(Some(attr.ino)),
    }
}

pub(crate) async fn read_all(core: &FsCore, fh: u64, size: u64) -> Result<Vec<u8>, i32> {
    let mut out = Vec::new();
    loop {
        let chunk = core
            .read(fh, out.len() as u64, 65536)
            .await
            .map_err(errno)?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
        if out.len() as u64 > size + (1 << 20) {
            return Err(2000); // reads past the size it reported: never expected
        }
    }
    Ok(out)
}

/// Runs one plain operation against the core, as the FUSE adapter and the kernel would.
pub(crate) async fn apply_core(core: &FsCore, handles: &mut BTreeMap<usize, u64>, op: &Op) -> Res {
    match op {
        Op::Create(path, mode) => {
            let parent = resolve_parent(core, path).await?;
            let (_, fh) = core
                .create(ROOT, parent, name_of(path).as_bytes(), *mode)
                .await
                .map_err(errno)?;
            core.release(fh);
            Ok(Val::Unit)
        }
        Op::Write(path, offset, data) => {
            let Some(ino) = openable(core, path).await? else {
                return Ok(Val::Skipped);
            };
            let (fh, _) = core.open(ROOT, ino, true, false).await.map_err(errno)?;
            let written = match core.io_mode(fh) {
                // The kernel writes a passed-through file itself; the core finds the
                // change at release.
                IoMode::Passthrough(backing) => {
                    // As the kernel does: the backing file opened anew with the open's
                    // flags (the descriptor given to the kernel may be read-only).
                    use std::os::fd::AsRawFd;
                    use std::os::unix::fs::FileExt;
                    let fd = backing.file().as_raw_fd();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(format!("/proc/self/fd/{fd}"))
                        .and_then(|f| f.write_all_at(data.as_bytes(), *offset))
                        .map(|()| data.len() as u32)
                        .map_err(|_| FsError::Io)
                }
                _ => core.write(fh, *offset, data.as_bytes()),
            };
            core.release(fh);
            match written.map_err(errno)? {
                n if n as usize == data.len() => Ok(Val::Unit),
                n => Err(1000 + n as i32), // a short write: never expected
            }
        }
        Op::Truncate(path, len) => {
            let Some(ino) = openable(core, path).await? else {
                return Ok(Val::Skipped);
            };
            let change = SetAttr {
                size: Some(*len),
                ..Default::default()
            };
            core.setattr(ROOT, ino, change).await.map_err(errno)?;
            Ok(Val::Unit)
        }
        Op::Read(path, offset, len) => {
            let Some(ino) = openable(core, path).await? else {
                return Ok(Val::Skipped);
            };
            let (fh, _) = core.open(ROOT, ino, false, false).await.map_err(errno)?;
            let data = core.read(fh, *offset, *len).await;
            core.release(fh);
            Ok(Val::Bytes(data.map_err(errno)?.to_vec()))
        }
        Op::Stat(path) => {
            let attr = resolve(core, path).await?;
            Ok(Val::Stat(attr.kind, attr.size, u32::from(attr.perm)))
        }
        Op::Rename(from, to) => {
            let src = resolve(core, from).await?;
            let to_parent = resolve_parent(core, to).await?;
            if from == to {
                return Ok(Val::Unit);
            }
            if src.kind == EntryKind::Dir && under(to, from) {
                return Err(libc::EINVAL); // the VFS's check
            }
            if under(from, to) {
                return Err(libc::ENOTEMPTY); // the VFS's check
            }
            let from_parent = resolve_parent(core, from).await?;
            core.rename(
                ROOT,
                from_parent,
                name_of(from).as_bytes(),
                to_parent,
                name_of(to).as_bytes(),
                0,
            )
            .await
            .map_err(errno)?;
            Ok(Val::Unit)
        }
        Op::Unlink(path) => {
            let parent = resolve_parent(core, path).await?;
            core.unlink(ROOT, parent, name_of(path).as_bytes())
                .await
                .map_err(errno)?;
            Ok(Val::Unit)
        }
        Op::Mkdir(path, mode) => {
            let parent = resolve_parent(core, path).await?;
            core.mkdir(ROOT, parent, name_of(path).as_bytes(), *mode)
                .await
                .map_err(errno)?;
            Ok(Val::Unit)
        }
        Op::Rmdir(path) => {
            let parent = resolve_parent(core, path).await?;
            core.rmdir(ROOT, parent, name_of(path).as_bytes())
                .await
                .map_err(errno)?;
            Ok(Val::Unit)
        }
        Op::Chmod(path, mode) => {
            let attr = resolve(core, path).await?;
            if attr.kind == EntryKind::Symlink {
                return Ok(Val::Skipped);
            }
            let change = SetAttr {
                mode: Some(*mode),
                ..Default::default()
            };
            core.setattr(ROOT, attr.ino, change).await.map_err(errno)?;
            Ok(Val::Unit)
        }
        Op::Symlink(path, target) => {
            let parent = resolve_parent(core, path).await?;
            core.symlink(ROOT, parent, name_of(path).as_bytes(), target.as_bytes())
                .await
                .map_err(errno)?;
            Ok(Val::Unit)
        }
        Op::Mkfifo(path, mode) => {
            let parent = resolve_parent(core, path).await?;
            core.mknod(
                ROOT,
                parent,
                name_of(path).as_bytes(),
                s3files::posix::S_IFIFO | *mode,
            )
            .await
            .map_err(errno)?;
            Ok(Val::Unit)
        }
        Op::Readlink(path) => {
            let attr = resolve(core, path).await?;
            let target = core.readlink(attr.ino).await.map_err(errno)?;
            Ok(Val::Bytes(target.to_vec()))
        }
        Op::Open { slot, path, write } => {
            if let Some(fh) = handles.remove(slot) {
                core.release(fh);
            }
            let Some(ino) = openable(core, path).await? else {
                return Ok(Val::Skipped);
            };
            // Slot 1's readers ask for O_DIRECT (served by the daemon, or joining the
            // inode's passed-through handles); which slot does is fixed so seeds replay.
            let direct = !*write && *slot == 1;
            let (fh, _) = core
                .open_with(ROOT, ino, *write, false, direct)
                .await
                .map_err(errno)?;
            handles.insert(*slot, fh);
            Ok(Val::Unit)
        }
        Op::HWrite(slot, offset, data) => {
            let Some(fh) = handles.get(slot) else {
                return Ok(Val::Skipped);
            };
            match core.write(*fh, *offset, data.as_bytes()).map_err(errno)? {
                n if n as usize == data.len() => Ok(Val::Unit),
                n => Err(1000 + n as i32),
            }
        }
        Op::HRead(slot, offset, len) => {
            let Some(fh) = handles.get(slot) else {
                return Ok(Val::Skipped);
            };
            let data = core.read(*fh, *offset, *len).await.map_err(errno)?;
            Ok(Val::Bytes(data.to_vec()))
        }
        Op::Close(slot) => {
            let Some(fh) = handles.remove(slot) else {
                return Ok(Val::Skipped);
            };
            core.release(fh);
            Ok(Val::Unit)
        }
        Op::Sync => {
            core.sync_tree(ROOT_INO).await.map_err(errno)?;
            Ok(Val::Unit)
        }
        Op::Poll => Ok(Val::Unit), // needs the store: see System::step
        Op::Faulty(..) | Op::Other { .. } | Op::Crash | Op::Remount => {
            unreachable!("driven by run_case")
        }
    }
}

/// Reads the whole mount back: every entry below the root (lost+found apart) with its
/// kind, size, mode and bytes; and lost+found as (original path, bytes).
pub(crate) async fn snapshot(core: &FsCore) -> (BTreeMap<String, Snap>, Vec<(String, Vec<u8>)>) {
    let mut tree = BTreeMap::new();
    let mut lost = Vec::new();
    let mut dirs = vec![(ROOT_INO, String::new())];
    while let Some((ino, path)) = dirs.pop() {
        let entries = match core.opendir(ROOT, ino).await {
            Ok(fh) => {
                let entries = core.readdir(fh, 0).map(|e| e.to_vec()).unwrap_or_default();
                core.releasedir(fh);
                entries
            }
            Err(e) => {
                tree.insert(
                    format!("{path}/<opendir>"),
                    Snap {
                        kind: EntryKind::Dir,
                        size: 0,
                        perm: 0,
                        content: Err(errno(e)),
                    },
                );
                continue;
            }
        };
        for entry in entries.iter().skip(2) {
            let child = if path.is_empty() {
                entry.name.clone()
            } else {
                format!("{path}/{}", entry.name)
            };
            let attr = match core.lookup(ROOT, ino, entry.name.as_bytes()).await {
                Ok(attr) => attr,
                Err(e) => {
                    tree.insert(
                        child,
                        Snap {
                            // Unknown to readdir (a small object): a file until stat says.
                            kind: entry.kind.unwrap_or(EntryKind::File),
                            size: 0,
                            perm: 0,
                            content: Err(errno(e)),
                        },
                    );
                    continue;
                }
            };
            if path.is_empty() && entry.name == LOST_DIR {
                lost = read_lost(core, attr.ino).await;
                continue;
            }
            let content = match attr.kind {
                EntryKind::Dir => {
                    dirs.push((attr.ino, child.clone()));
                    Ok(String::new())
                }
                EntryKind::Symlink => core
                    .readlink(attr.ino)
                    .await
                    .map(|t| lossy(&t))
                    .map_err(errno),
                EntryKind::File => match core.open(ROOT, attr.ino, false, false).await {
                    Ok((fh, _)) => {
                        let data = read_all(core, fh, attr.size).await;
                        core.release(fh);
                        data.map(|d| lossy(&d))
                    }
                    Err(e) => Err(errno(e)),
                },
                // No data: the kernel serves their I/O itself.
                EntryKind::Fifo | EntryKind::Socket => Ok(String::new()),
            };
            // readdir may not know a type (DT_UNKNOWN) but must never say a wrong one.
            if let Some(listed) = entry.kind.filter(|k| *k != attr.kind) {
                tree.insert(
                    format!("{child}<readdir says {listed:?}>"),
                    Snap {
                        kind: listed,
                        size: 0,
                        perm: 0,
                        content: Ok(String::new()),
                    },
                );
            }
            tree.insert(
                child,
                Snap {
                    kind: attr.kind,
                    size: attr.size,
                    perm: u32::from(attr.perm),
                    content,
                },
            );
        }
    }
    lost.sort();
    (tree, lost)
}

pub(crate) async fn read_lost(core: &FsCore, dir: Ino) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(fh) = core.opendir(ROOT, dir).await else {
        return vec![("<lost+found opendir failed>".into(), Vec::new())];
    };
    let entries = core.readdir(fh, 0).map(|e| e.to_vec()).unwrap_or_default();
    core.releasedir(fh);
    for entry in entries.iter().skip(2) {
        let Ok(attr) = core.lookup(ROOT, dir, entry.name.as_bytes()).await else {
            out.push((format!("<lookup failed: {}>", entry.name), Vec::new()));
            continue;
        };
        let status = core
            .getxattr(attr.ino, STATUS_XATTR.as_bytes())
            .await
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default();
        let origin = status
            .lines()
            .find_map(|l| l.strip_prefix("original-path: "))
            .unwrap_or("<no original-path>")
            .to_string();
        let data = match core.open(ROOT, attr.ino, false, false).await {
            Ok((fh, _)) => {
                let data = read_all(core, fh, attr.size).await;
                core.release(fh);
                data.unwrap_or_else(|e| format!("<read failed: {e}>").into_bytes())
            }
            Err(e) => format!("<open failed: {e}>").into_bytes(),
        };
        out.push((origin, data));
    }
    out
}

/// Every key in the bucket with its body and file-permissions.
pub(crate) async fn bucket(mem: &MemoryStore) -> BTreeMap<String, (Vec<u8>, Option<String>)> {
    let mut out = BTreeMap::new();
    let mut prefixes = vec![String::new()];
    while let Some(prefix) = prefixes.pop() {
        let mut token = None;
        loop {
            let page = mem
                .list_page(&prefix, token, None)
                .await
                .expect("memory list");
            for o in page.objects {
                let body = mem.body(&o.key).map(|b| b.to_vec()).unwrap_or_default();
                let perms = mem
                    .metadata(&o.key)
                    .and_then(|m| m.get("file-permissions").cloned());
                out.insert(o.key, (body, perms));
            }
            prefixes.extend(page.common_prefixes);
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
    }
    out
}
