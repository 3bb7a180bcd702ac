//! Thin fuser adapter: each kernel request becomes one call on `FsCore`, and its result a
//! reply. Requests that may reach S3 run as tokio tasks so a slow GET never blocks a
//! FUSE worker thread; purely in-memory ones are answered inline. No logic lives here.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{debug, debug_span, Instrument, Span};

use crate::fs::access::Identity;
use crate::fs::passthrough::{IoMode, Registration};
use crate::fs::write::SetAttr;
use crate::fs::{Attr, FsCore, FsError};
use crate::metrics::{FuseOp, Metrics};
use crate::posix::EntryKind;

pub struct FuseAdapter {
    core: Arc<FsCore>,
    runtime: Handle,
    passthrough: Passthrough,
}

/// Whether to ask the kernel for passthrough at INIT.
#[derive(Debug, Clone)]
pub enum Passthrough {
    /// Not asked for, for this reason (shown by status).
    Off(String),
    /// Asked for, with the stacking depth of the backing files' file system plus one (2
    /// when the cache dir is itself on a stacked file system such as overlayfs).
    Want { max_stack_depth: u32 },
}

impl FuseAdapter {
    pub fn new(core: Arc<FsCore>, runtime: Handle, passthrough: Passthrough) -> Self {
        FuseAdapter {
            core,
            runtime,
            passthrough,
        }
    }

    fn spawn(&self, span: Span, task: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(task.instrument(span));
    }
}

/// The core's view of the kernel caches, through FUSE notifications.
pub struct FuseKernelCache(pub fuser::Notifier);

impl crate::fs::KernelCache for FuseKernelCache {
    fn invalidate_entry(&self, parent: u64, name: &str) {
        // ENOENT just means the kernel had nothing cached.
        let _ = self.0.inval_entry(INodeNo(parent), OsStr::new(name));
    }

    fn invalidate_inode(&self, ino: u64) {
        let _ = self.0.inval_inode(INodeNo(ino), 0, 0);
    }
}

fn caller(req: &Request) -> Identity {
    Identity {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn errno(error: &FsError) -> Errno {
    Errno::from_i32(error.errno())
}

fn file_attr(attr: &Attr) -> FileAttr {
    let kind = file_type(attr.kind);
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind,
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// A time from a request, undoing fuser 0.18's reading of one before the epoch: the
/// kernel sends whole seconds rounded down plus nanoseconds (-1.25 s is -2 s + 0.75 s),
/// and fuser subtracts both (giving -2.75 s). For a time before the epoch the mapping
/// is one-to-one, so whole seconds minus the fraction is the time that was sent.
/// `tests/write_path.rs::times_before_1970_are_kept` fails if fuser changes this.
fn kernel_time(t: SystemTime) -> SystemTime {
    match UNIX_EPOCH.duration_since(t) {
        Ok(before) if before.subsec_nanos() != 0 => {
            UNIX_EPOCH - Duration::from_secs(before.as_secs())
                + Duration::from_nanos(u64::from(before.subsec_nanos()))
        }
        _ => t,
    }
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
    }
}

/// How to answer an open or create of handle `fh`: its flags, and the kernel's
/// registration of its backing file when it is passed through. `register` makes the
/// registration (the reply's `open_backing`) for the first handle on a backing.
fn open_reply(
    core: &FsCore,
    fh: u64,
    keep_cache: bool,
    register: impl FnOnce(&std::fs::File) -> std::io::Result<fuser::BackingId>,
) -> (FopenFlags, Option<Registration>) {
    match core.io_mode(fh) {
        IoMode::Cached if keep_cache => (FopenFlags::FOPEN_KEEP_CACHE, None),
        IoMode::Cached => (FopenFlags::empty(), None),
        IoMode::Direct => (FopenFlags::FOPEN_DIRECT_IO, None),
        IoMode::Passthrough(backing) => {
            match backing.registration(|file| register(file).map(|id| Arc::new(id) as Registration))
            {
                Ok(registration) => (FopenFlags::empty(), Some(registration)),
                Err(e) => {
                    // Direct I/O is allowed whatever the inode's other opens are.
                    core.passthrough_failed(fh, &format!("the kernel refused a backing file: {e}"));
                    (FopenFlags::FOPEN_DIRECT_IO, None)
                }
            }
        }
    }
}

fn backing_id(registration: &Registration) -> Option<&fuser::BackingId> {
    registration.downcast_ref::<fuser::BackingId>()
}

/// How a directory is opened: the kernel keeps its listing across opens and answers
/// `getdents` from it (`FOPEN_CACHE_DIR` | `FOPEN_KEEP_CACHE`) until the directory's
/// mtime changes, which every change to its entries moves (`NodeState::touch_entries`);
/// the daemon invalidates the directory's attributes whenever it changes the entries
/// behind the kernel's back, and `FUSE_AUTO_INVAL_DATA` makes the kernel refresh them
/// before using the kept listing. Off when the kernel is to keep nothing.
fn dir_open_flags(core: &FsCore) -> FopenFlags {
    if core.keeps_listings() {
        FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

fn reply_opened(core: &FsCore, reply: ReplyOpen, result: Result<(u64, bool), FsError>) {
    match result {
        Ok((fh, keep_cache)) => {
            let (flags, registration) =
                open_reply(core, fh, keep_cache, |file| reply.open_backing(file));
            match registration.as_ref().and_then(backing_id) {
                Some(id) => reply.opened_passthrough(FileHandle(fh), flags, id),
                None => reply.opened(FileHandle(fh), flags),
            }
        }
        Err(e) => reply.error(errno(&e)),
    }
}

/// Replies to getxattr/listxattr: size 0 asks for the length only.
fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, FsError>) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => reply.error(errno(&FsError::Range)),
        Ok(value) => reply.data(&value),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC comes with the OPEN (not as a SETATTR after it), so an open that
        // truncates is a change from the start and its writes may be passed through.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // A kept directory listing is used only while the directory's mtime is the one
        // it was read with; this makes the kernel fetch the directory's attributes (when
        // the daemon has invalidated them) before trusting it. Without it, listings are
        // not kept (`dir_open_flags`).
        if config
            .add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA)
            .is_err()
        {
            self.core.disable_kept_listings();
        }
        match &self.passthrough {
            Passthrough::Off(why) => self.core.disable_passthrough(why),
            Passthrough::Want { max_stack_depth } => {
                match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                    Ok(()) => match config.set_max_stack_depth(*max_stack_depth) {
                        Ok(_) => self.core.enable_passthrough(),
                        Err(_) => self.core.disable_passthrough(
                            "the cache dir's file system is stacked too deep for passthrough",
                        ),
                    },
                    Err(_) => self.core.disable_passthrough(
                        "the kernel does not offer FUSE passthrough (Linux 6.9 or later, \
                         CONFIG_FUSE_PASSTHROUGH)",
                    ),
                }
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let timer = self.core.metrics().time_fuse_inline(FuseOp::Lookup);
        if let Some(result) = self.core.lookup_cached(parent.0, name.as_encoded_bytes()) {
            match result {
                Ok(attr) => reply.entry(&self.core.entry_ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
            return;
        }
        let (core, who, name) = (self.core.clone(), caller(req), name.to_owned());
        let timer = timer.keep(core.metrics_handle());
        let span = debug_span!("lookup", parent = parent.0, name = ?name);
        self.spawn(span, async move {
            let _timer = timer;
            match core.lookup(who, parent.0, name.as_encoded_bytes()).await {
                Ok(attr) => reply.entry(&core.entry_ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let timer = self.core.metrics().time_fuse_inline(FuseOp::Getattr);
        if let Some(result) = self.core.getattr_cached(ino.0) {
            match result {
                Ok(attr) => reply.attr(&self.core.attr_ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            }
            return;
        }
        let core = self.core.clone();
        let timer = timer.keep(core.metrics_handle());
        self.spawn(debug_span!("getattr", ino = ino.0), async move {
            let _timer = timer;
            match core.getattr(ino.0).await {
                Ok(attr) => reply.attr(&core.attr_ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let timer = Metrics::time_fuse(self.core.metrics_handle(), FuseOp::Setattr);
        let (core, who) = (self.core.clone(), caller(req));
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(|t| match t {
                TimeOrNow::SpecificTime(t) => kernel_time(t),
                TimeOrNow::Now => SystemTime::now(),
            }),
        };
        if let Some(result) = core.setattr_cached(ino.0, &change) {
            match result {
                Ok(attr) => reply.attr(&core.attr_ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            }
            return;
        }
        self.spawn(debug_span!("setattr", ino = ino.0), async move {
            let _timer = timer;
            match core.setattr(who, ino.0, change).await {
                Ok(attr) => reply.attr(&core.attr_ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let core = self.core.clone();
        self.spawn(debug_span!("readlink", ino = ino.0), async move {
            match core.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // The type bits go through: the core decides what S3 Files can store.
        let (core, who, name) = (self.core.clone(), caller(req), name.to_owned());
        self.spawn(
            debug_span!("mknod", parent = parent.0, name = ?name),
            async move {
                match core
                    .mknod(who, parent.0, name.as_encoded_bytes(), mode & !umask)
                    .await
                {
                    Ok(attr) => reply.entry(&core.entry_ttl(), &file_attr(&attr), Generation(0)),
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
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
        let timer = Metrics::time_fuse(self.core.metrics_handle(), FuseOp::Mkdir);
        let (core, who, name) = (self.core.clone(), caller(req), name.to_owned());
        self.spawn(
            debug_span!("mkdir", parent = parent.0, name = ?name),
            async move {
                let _timer = timer;
                match core
                    .mkdir(who, parent.0, name.as_encoded_bytes(), mode & !umask)
                    .await
                {
                    Ok(attr) => reply.entry(&core.entry_ttl(), &file_attr(&attr), Generation(0)),
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let timer = Metrics::time_fuse(self.core.metrics_handle(), FuseOp::Unlink);
        let (core, who, name) = (self.core.clone(), caller(req), name.to_owned());
        self.spawn(
            debug_span!("unlink", parent = parent.0, name = ?name),
            async move {
                let _timer = timer;
                match core.unlink(who, parent.0, name.as_encoded_bytes()).await {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let timer = Metrics::time_fuse(self.core.metrics_handle(), FuseOp::Rmdir);
        let (core, who, name) = (self.core.clone(), caller(req), name.to_owned());
        self.spawn(
            debug_span!("rmdir", parent = parent.0, name = ?name),
            async move {
                let _timer = timer;
                match core.rmdir(who, parent.0, name.as_encoded_bytes()).await {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (core, who) = (self.core.clone(), caller(req));
        let (name, target) = (link_name.to_owned(), target.as_os_str().to_owned());
        self.spawn(
            debug_span!("symlink", parent = parent.0, name = ?name),
            async move {
                match core
                    .symlink(
                        who,
                        parent.0,
                        name.as_encoded_bytes(),
                        target.as_encoded_bytes(),
                    )
                    .await
                {
                    Ok(attr) => reply.entry(&core.entry_ttl(), &file_attr(&attr), Generation(0)),
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let timer = Metrics::time_fuse(self.core.metrics_handle(), FuseOp::Rename);
        let (core, who) = (self.core.clone(), caller(req));
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let span = debug_span!("rename", parent = parent.0, name = ?name, newname = ?newname);
        self.spawn(span, async move {
            let _timer = timer;
            let result = core
                .rename(
                    who,
                    parent.0,
                    name.as_encoded_bytes(),
                    newparent.0,
                    newname.as_encoded_bytes(),
                    flags.bits(),
                )
                .await;
            match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // S3 Files has no hard links.
        reply.error(errno(&FsError::Perm));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let timer = self.core.metrics().time_fuse_inline(FuseOp::Open);
        let (core, who) = (self.core.clone(), caller(req));
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let direct = flags.0 & libc::O_DIRECT != 0;
        // A read-only open of an entry whose metadata is known needs no S3 request.
        // (Inside the runtime: the open may start an import in the background.)
        let cached = {
            let _runtime = self.runtime.enter();
            core.open_cached(who, ino.0, write, truncate, direct)
        };
        if let Some(result) = cached {
            reply_opened(&self.core, reply, result);
            return;
        }
        let timer = timer.keep(core.metrics_handle());
        self.spawn(debug_span!("open", ino = ino.0), async move {
            let _timer = timer;
            let result = core.open_with(who, ino.0, write, truncate, direct).await;
            reply_opened(&core, reply, result);
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let timer = self.core.metrics().time_fuse_inline(FuseOp::Read);
        // Local bytes, cache hits and read-ahead that has arrived never wait on the
        // network: answered inline. (Inside the runtime: a stream may start more GETs.)
        let cached = {
            let _runtime = self.runtime.enter();
            self.core.read_cached(fh.0, offset, size)
        };
        if let Some(result) = cached {
            match result {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
            return;
        }
        let core = self.core.clone();
        let timer = timer.keep(core.metrics_handle());
        let span = debug_span!("read", ino = ino.0, offset, size);
        self.spawn(span, async move {
            let _timer = timer;
            match core.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // A local pwrite into the staging file: answered inline, no task hop.
        let _timer = self.core.metrics().time_fuse_inline(FuseOp::Write);
        match self.core.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close (writes are staged as they come; export is lazy):
        // ENOSYS tells the kernel to stop sending FLUSH, one round trip less per close.
        reply.error(errno(&FsError::Unimplemented));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let timer = Metrics::time_fuse(self.core.metrics_handle(), FuseOp::Fsync);
        let core = self.core.clone();
        self.spawn(debug_span!("fsync", ino = ino.0), async move {
            let _timer = timer;
            match core.fsync(ino.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let flags = dir_open_flags(&self.core);
        if let Some(fh) = self.core.opendir_cached(ino.0) {
            reply.opened(FileHandle(fh), flags);
            return;
        }
        let (core, who) = (self.core.clone(), caller(req));
        self.spawn(debug_span!("opendir", ino = ino.0), async move {
            match core.opendir(who, ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), flags),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _timer = self.core.metrics().time_fuse_inline(FuseOp::Readdir);
        match self.core.readdir(fh.0, offset) {
            Ok(page) => {
                for (entry, next) in page.iter() {
                    let full = match entry.kind {
                        Some(kind) => {
                            reply.add(INodeNo(entry.ino), next, file_type(kind), &entry.name)
                        }
                        None => reply.add_unknown_type(INodeNo(entry.ino), next, &entry.name),
                    };
                    if full {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.core.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (core, name) = (self.core.clone(), name.to_owned());
        self.spawn(debug_span!("setxattr", ino = ino.0), async move {
            match core.setxattr(ino.0, name.as_encoded_bytes()).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let Some(result) = self.core.getxattr_now(ino.0, name.as_encoded_bytes()) {
            return reply_xattr(reply, size, result);
        }
        let (core, name, pid) = (self.core.clone(), name.to_owned(), req.pid());
        self.spawn(debug_span!("getxattr", ino = ino.0), async move {
            let result = core
                .getxattr_sized(ino.0, name.as_encoded_bytes(), size, pid)
                .await;
            reply_xattr(reply, size, result);
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.core.listxattr(ino.0));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.core.removexattr(ino.0, name.as_encoded_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // None is supported (file flags, FICLONE, ...). Refused as fuser's default does,
        // without its warning per call: the kernel asks again every time, and tools such
        // as lsattr, cp and sqlite probe them per file.
        debug!(ino = ino.0, cmd, "ioctl refused");
        reply.error(errno(&FsError::Unimplemented));
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (core, who) = (self.core.clone(), caller(req));
        self.spawn(debug_span!("access", ino = ino.0), async move {
            match core.access(who, ino.0, mask.bits() as u32).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
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
        let timer = Metrics::time_fuse(self.core.metrics_handle(), FuseOp::Create);
        let (core, who, name) = (self.core.clone(), caller(req), name.to_owned());
        self.spawn(
            debug_span!("create", parent = parent.0, name = ?name),
            async move {
                let _timer = timer;
                match core
                    .create(who, parent.0, name.as_encoded_bytes(), mode & !umask)
                    .await
                {
                    Ok((attr, fh)) => {
                        let (flags, registration) =
                            open_reply(&core, fh, false, |file| reply.open_backing(file));
                        let (ttl, attr) = (core.entry_ttl(), file_attr(&attr));
                        match registration.as_ref().and_then(backing_id) {
                            Some(id) => reply.created_passthrough(
                                &ttl,
                                &attr,
                                Generation(0),
                                FileHandle(fh),
                                flags,
                                id,
                            ),
                            None => {
                                reply.created(&ttl, &attr, Generation(0), FileHandle(fh), flags)
                            }
                        }
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The kernel falls back to read + write (and stops asking).
        reply.error(errno(&FsError::Unimplemented));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.core.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
