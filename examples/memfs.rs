//! The trivial FUSE file system the benchmarks compare s3files against, served by the same
//! fuser version and session setup (one session thread). Its latencies are the floor of
//! any FUSE file system on the machine: kernel round trips plus a memcpy.
//!
//! Two parts:
//! - read-only, as it always was: `data.bin`, a file held in memory, and optionally a flat
//!   directory `tree/` of small text files (mode 0444; writes get EROFS). The pread and
//!   grep floors read these.
//! - writable, everywhere else (new entries in the root and below them): directories and
//!   regular files in memory, with just the operations `tar -xf`, `cp -r` and `rm -r`
//!   need (lookup, getattr, setattr, mkdir, create, open, read, write, flush, release,
//!   fsync, readdir, unlink, rmdir). The untar floor writes here.
//!
//! Both parts answer with 1 s attribute and entry timeouts and keep no page cache across
//! opens, and all state sits behind one mutex: the least a FUSE file system must do.
//!
//!   cargo run --release --example memfs -- MOUNTPOINT SIZE_BYTES [SMALL_FILES]
//!
//! Runs until unmounted (`fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::from_secs(1);
const FILE: INodeNo = INodeNo(2);
const TREE: INodeNo = INodeNo(3);
/// Inode of the first small file.
const FIRST_SMALL: u64 = 4;
/// What changing the read-only part gets.
const READ_ONLY: Errno = Errno::EROFS;

struct MemFs {
    data: Vec<u8>,
    small: Vec<Vec<u8>>,
    mounted: SystemTime,
    /// The writable part, the root included (its entries are the writable ones).
    rw: Mutex<Writable>,
}

struct Writable {
    nodes: HashMap<INodeNo, Node>,
    next: u64,
}

/// A writable file or directory.
struct Node {
    attr: FileAttr,
    /// A file's bytes.
    data: Vec<u8>,
    /// A directory's entries (sorted, so a listing in pieces has a stable order).
    entries: BTreeMap<OsString, INodeNo>,
    /// Entries the kernel holds (lookups minus forgets): an unlinked node stays readable
    /// through open files until the kernel forgets it, as POSIX asks.
    lookups: u64,
}

impl MemFs {
    fn new(data: Vec<u8>, small: Vec<Vec<u8>>) -> MemFs {
        let mounted = SystemTime::now();
        let next = FIRST_SMALL + small.len() as u64;
        let mut fs = MemFs {
            data,
            small,
            mounted,
            rw: Mutex::new(Writable {
                nodes: HashMap::new(),
                next,
            }),
        };
        let mut root = fs.attr(INodeNo::ROOT);
        // `tree/` counts as a subdirectory of the root.
        root.nlink += u32::from(!fs.small.is_empty());
        fs.rw.get_mut().unwrap().nodes.insert(
            INodeNo::ROOT,
            Node {
                attr: root,
                data: Vec::new(),
                entries: BTreeMap::new(),
                // The kernel never forgets the root.
                lookups: 1,
            },
        );
        fs
    }

    fn rw(&self) -> MutexGuard<'_, Writable> {
        // A panic while holding the lock is a bug in this example: carry on with the data.
        self.rw.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ino` is in the read-only part (the root is not: it takes new entries).
    fn read_only(&self, ino: INodeNo) -> bool {
        ino == FILE
            || ino == TREE
            || (FIRST_SMALL..FIRST_SMALL + self.small.len() as u64).contains(&ino.0)
    }

    fn content(&self, ino: INodeNo) -> Option<&[u8]> {
        match ino {
            FILE => Some(&self.data),
            INodeNo(n) if n >= FIRST_SMALL => self
                .small
                .get((n - FIRST_SMALL) as usize)
                .map(Vec::as_slice),
            _ => None,
        }
    }

    fn attr(&self, ino: INodeNo) -> FileAttr {
        let dir = ino == INodeNo::ROOT || ino == TREE;
        let len = self.content(ino).map_or(0, <[u8]>::len) as u64;
        FileAttr {
            ino,
            size: len,
            blocks: len.div_ceil(512),
            atime: self.mounted,
            mtime: self.mounted,
            ctime: self.mounted,
            crtime: self.mounted,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o755 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Makes `name` in the writable directory `parent`: a file, or a directory.
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: FileType,
        perm: u32,
    ) -> Result<FileAttr, Errno> {
        if parent == TREE {
            return Err(READ_ONLY);
        }
        if parent == INodeNo::ROOT && self.fixed_entry(name).is_some() {
            return Err(Errno::EEXIST);
        }
        let mut rw = self.rw();
        let ino = INodeNo(rw.next);
        let now = SystemTime::now();
        let dir = rw.dir(parent)?;
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        dir.entries.insert(name.to_owned(), ino);
        dir.attr.mtime = now;
        dir.attr.ctime = now;
        let is_dir = kind == FileType::Directory;
        dir.attr.nlink += u32::from(is_dir);
        let attr = FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm: (perm & 0o7777) as u16,
            nlink: if is_dir { 2 } else { 1 },
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        rw.next += 1;
        rw.nodes.insert(
            ino,
            Node {
                attr,
                data: Vec::new(),
                entries: BTreeMap::new(),
                // The entry the reply gives the kernel.
                lookups: 1,
            },
        );
        Ok(attr)
    }

    /// Removes `name` from the writable directory `parent`: a file (`dir` false) or an
    /// empty directory.
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        if parent == TREE || (parent == INodeNo::ROOT && self.fixed_entry(name).is_some()) {
            return Err(READ_ONLY);
        }
        let mut rw = self.rw();
        let ino = *rw.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        let node = rw.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        match (dir, node.attr.kind == FileType::Directory) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            (true, true) if !node.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let now = SystemTime::now();
        node.attr.nlink = 0;
        node.attr.ctime = now;
        if node.lookups == 0 {
            rw.nodes.remove(&ino);
        }
        let parent = rw.dir(parent)?;
        parent.entries.remove(name);
        parent.attr.mtime = now;
        parent.attr.ctime = now;
        parent.attr.nlink -= u32::from(dir);
        Ok(())
    }

    /// The read-only entry of the root called `name`, if any.
    fn fixed_entry(&self, name: &OsStr) -> Option<INodeNo> {
        match name.to_str()? {
            "data.bin" => Some(FILE),
            "tree" if !self.small.is_empty() => Some(TREE),
            _ => None,
        }
    }
}

impl Writable {
    fn dir(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        match self.nodes.get_mut(&ino) {
            Some(node) if node.attr.kind == FileType::Directory => Ok(node),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }
}

fn time(t: TimeOrNow, now: SystemTime) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => now,
    }
}

impl Filesystem for MemFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == TREE {
            let found = small_index(name.to_str().unwrap_or(""))
                .filter(|&i| i < self.small.len())
                .map(|i| INodeNo(FIRST_SMALL + i as u64));
            return match found {
                Some(ino) => reply.entry(&TTL, &self.attr(ino), Generation(0)),
                None => reply.error(Errno::ENOENT),
            };
        }
        if parent == INodeNo::ROOT {
            if let Some(ino) = self.fixed_entry(name) {
                return reply.entry(&TTL, &self.attr(ino), Generation(0));
            }
        }
        let mut rw = self.rw();
        let ino = match rw.dir(parent).map(|d| d.entries.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        match rw.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups += 1;
                reply.entry(&TTL, &node.attr, Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut rw = self.rw();
        if let Some(node) = rw.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(nlookup);
            if node.lookups == 0 && node.attr.nlink == 0 {
                rw.nodes.remove(&ino);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if self.read_only(ino) {
            return reply.attr(&TTL, &self.attr(ino));
        }
        match self.rw().nodes.get(&ino) {
            Some(node) => reply.attr(&TTL, &node.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if self.read_only(ino) {
            return reply.error(READ_ONLY);
        }
        let mut rw = self.rw();
        let Some(node) = rw.nodes.get_mut(&ino) else {
            return reply.error(Errno::ENOENT);
        };
        let now = SystemTime::now();
        if let Some(size) = size {
            if node.attr.kind == FileType::Directory {
                return reply.error(Errno::EISDIR);
            }
            node.data.resize(size as usize, 0);
            node.attr.size = size;
            node.attr.blocks = size.div_ceil(512);
            node.attr.mtime = now;
        }
        if let Some(mode) = mode {
            node.attr.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = uid {
            node.attr.uid = uid;
        }
        if let Some(gid) = gid {
            node.attr.gid = gid;
        }
        if let Some(t) = atime {
            node.attr.atime = time(t, now);
        }
        if let Some(t) = mtime {
            node.attr.mtime = time(t, now);
        }
        node.attr.ctime = now;
        reply.attr(&TTL, &node.attr);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.make(req, parent, name, FileType::Directory, mode & !umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // The kernel sends create for regular files only (other kinds come as mknod).
        match self.make(req, parent, name, FileType::RegularFile, mode & !umask) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(1),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.read_only(ino) && flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(READ_ONLY);
        }
        // No FOPEN_KEEP_CACHE: the kernel drops the file's pages at each open.
        reply.opened(FileHandle(1), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let slice = |data: &[u8]| -> std::ops::Range<usize> {
            let start = (offset as usize).min(data.len());
            start..(start + size as usize).min(data.len())
        };
        if self.read_only(ino) {
            let data = self.content(ino).unwrap_or(&[]);
            return reply.data(&data[slice(data)]);
        }
        match self.rw().nodes.get(&ino) {
            Some(node) => reply.data(&node.data[slice(&node.data)]),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.read_only(ino) {
            return reply.error(READ_ONLY);
        }
        let mut rw = self.rw();
        let Some(node) = rw.nodes.get_mut(&ino) else {
            return reply.error(Errno::ENOENT);
        };
        let start = offset as usize;
        let end = start + data.len();
        if node.data.len() < end {
            node.data.resize(end, 0);
        }
        node.data[start..end].copy_from_slice(data);
        let now = SystemTime::now();
        node.attr.size = node.data.len() as u64;
        node.attr.blocks = node.attr.size.div_ceil(512);
        node.attr.mtime = now;
        node.attr.ctime = now;
        reply.written(data.len() as u32);
    }

    // flush, release and fsync: the data already is where it lives (memory), so there is
    // nothing to push; they answer at once (the kernel still sends flush and release).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // ".." of any directory says the root: the kernel answers ".." itself.
        let mut entries = vec![
            (INodeNo::ROOT, FileType::Directory, OsString::from(".")),
            (INodeNo::ROOT, FileType::Directory, OsString::from("..")),
        ];
        if ino == TREE {
            for i in 0..self.small.len() {
                let ino = INodeNo(FIRST_SMALL + i as u64);
                entries.push((ino, FileType::RegularFile, small_name(i).into()));
            }
        } else {
            if ino == INodeNo::ROOT {
                entries.push((FILE, FileType::RegularFile, "data.bin".into()));
                if !self.small.is_empty() {
                    entries.push((TREE, FileType::Directory, "tree".into()));
                }
            }
            let rw = self.rw();
            let Some(dir) = rw.nodes.get(&ino) else {
                return reply.error(Errno::ENOENT);
            };
            entries.extend(dir.entries.iter().map(|(name, &ino)| {
                let kind = rw
                    .nodes
                    .get(&ino)
                    .map_or(FileType::RegularFile, |n| n.attr.kind);
                (ino, kind, name.clone())
            }));
        }
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
fn small_name(i: usize) -> String {
    format!("f{i:05}.txt")
}

fn small_index(name: &str) -> Option<usize> {
    name.strip_prefix('f')?.strip_suffix(".txt")?.parse().ok()
}

/// About 4 KiB of text; every 50th file has the word the benchmark greps for.
fn small_file(i: usize) -> Vec<u8> {
    let mut text = String::new();
    for line in 0..70 {
        text.push_str(&format!(
            "line {line} of file {i}: alpha beta gamma delta\n"
        ));
    }
    if i % 50 == 0 {
        text.push_str("needle found here\n");
    }
    text.into_bytes()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mountpoint), Some(size)) = (args.get(1), args.get(2).and_then(|s| s.parse().ok()))
    else {
        eprintln!("usage: memfs MOUNTPOINT SIZE_BYTES [SMALL_FILES]");
        std::process::exit(2);
    };
    let size: usize = size;
    let files: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
    let fs = MemFs::new(
        (0..size).map(|i| (i % 251) as u8).collect(),
        (0..files).map(small_file).collect(),
    );
    let mut config = fuser::Config::default();
    // Not RO any more (the untar floor writes); the read-only part refuses writes itself.
    config.mount_options = vec![MountOption::FSName("memfs".into())];
    if let Err(e) = fuser::mount(fs, mountpoint, &config) {
        eprintln!("memfs: {e}");
        std::process::exit(1);
    }
}
