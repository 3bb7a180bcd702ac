//! The file-system core: what each file-system request means for a bucket, with no fuser
//! types. The FUSE adapter (`crate::fuse`) translates kernel requests into calls here.
//!
//! Directories are listed on first access (every page of ListObjectsV2), file metadata is
//! read with HeadObject on lookup, and file data is read with ranged GETs through
//! `crate::read::ObjectReader`. Local changes are in `change`, their export state in
//! `sync` (the one place that touches both nodes and export records), import in `poll`.

pub mod access;
mod change;
pub mod error;
mod handle;
pub mod inode;
pub mod life;
mod load;
pub mod namespace;
pub mod passthrough;
mod poll;
mod rename;
mod sync;

/// The write side's types under their historic names: `Writer` is the export queue,
/// `WriteOptions` its options.
pub mod write {
    pub use super::change::SetAttr;
    pub use crate::export::queue::{ExportQueue as Writer, QueueOptions as WriteOptions};
}

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use dashmap::DashMap;
use tracing::{info, warn};

use crate::cache::DataCache;
use crate::export::queue::ExportQueue;
use crate::import_rules::ImportRules;
use crate::metrics::Metrics;
use crate::posix::{EntryKind, PosixMeta};
use crate::read::{BlockFetcher, StreamBudget};
use crate::store::{ObjectStore, StoreError};
use access::{Effective, Identity, Owner};
pub use error::{FsError, FsResult};
use inode::{Ino, InodeTable, Node, ROOT_INO};
use namespace::check_segment;

/// The virtual, read-only extended attribute that reports an entry's sync state.
pub const STATUS_XATTR: &str = "user.s3files.status";
/// Setting this virtual attribute on a path exports everything pending under it now and
/// answers once it is in S3 (`s3files sync` uses it).
pub const SYNC_XATTR: &str = "user.s3files.sync";
/// How long a status text measured by a size-0 getxattr is kept for the caller's next
/// call: far longer than the microseconds between a caller's two calls, even on a
/// loaded machine (CI once took over a second), and short enough that a later read
/// rarely sees an old text. Past it, a fresh text is answered if it fits the caller's
/// buffer, and the measured one if it does not, so growth never makes the call fail.
const STATUS_REREAD: std::time::Duration = std::time::Duration::from_secs(10);
/// Objects no larger than this may be symlinks (a target is at most PATH_MAX bytes), and
/// FIFOs and sockets have no body, so a listing alone cannot tell their type: readdir
/// reports it as unknown (DT_UNKNOWN) until their metadata is known.
const MAX_SYMLINK_SIZE: u64 = 4096;
/// Size reported for directories, as most local file systems do.
const DIR_SIZE: u64 = 4096;
/// How long the kernel may keep names and attributes by default. Every change the daemon
/// learns of (its own, the poller's, a conflict's) is pushed to the kernel as an
/// invalidation, so expiry is only a bound should a notification be lost; it is not
/// what makes changes visible. docs/SEMANTICS.md "Kernel caching".
pub const DEFAULT_KERNEL_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Entry timeout when the daemon checks permissions (access point, root squash): a
/// cached name skips the lookup, and with it the daemon's search-permission check on the
/// directory, so names are kept no longer than before this was made configurable.
const CHECKED_ENTRY_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The kernel's caches of names and attributes, which the core must invalidate when an
/// entry changes behind the kernel's back (e.g. the bucket winning a conflict). The FUSE
/// adapter implements it with FUSE notifications.
pub trait KernelCache: Send + Sync {
    fn invalidate_entry(&self, parent: Ino, name: &str);
    fn invalidate_inode(&self, ino: Ino);
}

#[derive(Debug, Clone)]
pub struct CoreOptions {
    pub bucket: String,
    /// Key prefix of the mount root: empty or ending in `/`.
    pub root_prefix: String,
    /// When set, every request acts as this identity and the core checks permissions.
    pub access_point: Option<Identity>,
    /// Secondary groups of the access point's identity (S3 Files `SecondaryGids`).
    pub secondary_gids: Vec<u32>,
    /// Requests that would act as uid 0 act as 65534:65534; the core then checks
    /// permissions for every caller (the kernel would let root through).
    pub root_squash: bool,
    /// With an access point root directory: the key prefix of the file system's root,
    /// where lost+found lives (not shown through this mount). None: the mount root is
    /// the file-system root.
    pub fs_prefix: Option<String>,
    /// Files smaller than this are fetched into the cache when their directory is first
    /// listed; 0 turns eager import off. The root import rule, unless `with_import_rules`
    /// gives the core a rule set.
    pub import_size_threshold: u64,
    /// Memory all read-ahead streams together may hold.
    pub stream_budget: u64,
}

/// Eager imports in flight at once, per mount. A small GET costs tens of ms on S3 (44 ms
/// on Garage), so a tree of thousands of files needs many in flight to be cached before
/// a reader that starts right after the listing gets to it; S3 serves far more.
const EAGER_IMPORTS: usize = 32;

/// Attributes of one entry, as `stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub size: u64,
    pub kind: EntryKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub nlink: u32,
}

/// A directory handle's entries, as of one version of the directory's listing.
#[derive(Clone)]
struct DirSnapshot {
    dir: Ino,
    version: u64,
    entries: Arc<Vec<DirEntry>>,
}

/// A readdir offset: the entry's index in its snapshot (low 32 bits) and the snapshot's
/// version (31 bits above them, so the offset stays positive as a signed `loff_t`).
const DIR_INDEX_MASK: u64 = 0xFFFF_FFFF;
const DIR_VERSION_MASK: u64 = 0x7FFF_FFFF;

/// Entries of a directory handle from an offset on (see `FsCore::readdir`).
pub struct DirPage {
    start: usize,
    tag: u64,
    entries: Arc<Vec<DirEntry>>,
}

impl DirPage {
    /// The entries from the offset asked for.
    pub fn to_vec(&self) -> Vec<DirEntry> {
        self.entries.iter().skip(self.start).cloned().collect()
    }

    /// Each entry from the offset asked for, with the offset of the entry after it.
    pub fn iter(&self) -> impl Iterator<Item = (&DirEntry, u64)> {
        let tag = self.tag;
        self.entries
            .iter()
            .enumerate()
            .skip(self.start)
            .map(move |(i, entry)| (entry, tag | (i as u64 + 1)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    /// None: not known without a request for the object's metadata (a small object that
    /// may be a symlink, FIFO or socket); readdir says DT_UNKNOWN and a stat tells.
    pub kind: Option<EntryKind>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// Status texts measured by a size-0 getxattr, by (inode, attribute name), with when.
/// Keyed by the calling process too: two processes reading one status at once (FUSE
/// requests are served in parallel) each get the text they measured.
type MeasuredStatus = std::collections::HashMap<(Ino, Vec<u8>, u32), (std::time::Instant, Vec<u8>)>;

pub struct FsCore {
    store: Arc<dyn ObjectStore>,
    inodes: InodeTable,
    files: DashMap<u64, Arc<handle::OpenFile>>,
    /// Status texts whose length a size-0 getxattr just reported, by (inode, name), for
    /// the caller's next call (`getxattr_sized`).
    measured_status: Mutex<MeasuredStatus>,
    /// `STATUS_REREAD`, which tests change to take the clock out of their outcome.
    status_reread_ms: AtomicU64,
    /// Entries in `files` plus places reserved by opens under way (`reserve_handle`).
    open_files: std::sync::atomic::AtomicUsize,
    dirs: DashMap<u64, DirSnapshot>,
    /// Set when the kernel cannot be told to keep directory listings safely (see
    /// `keeps_listings`).
    listings_unkept: std::sync::atomic::AtomicBool,
    next_handle: AtomicU64,
    options: CoreOptions,
    metrics: Arc<Metrics>,
    /// Used as the mtime of directories that have no marker object.
    mounted_at: SystemTime,
    /// Keys already reported as skipped or hidden, so a re-listing does not count twice.
    reported: Mutex<HashSet<String>>,
    /// The export queue; None on a read-only mount (every write is EROFS).
    queue: Option<Arc<ExportQueue>>,
    /// Set once the mount is live.
    kernel: std::sync::OnceLock<Box<dyn KernelCache>>,
    /// Cache fills (and through it the data cache).
    fetcher: Arc<BlockFetcher>,
    budget: Arc<StreamBudget>,
    eager: Arc<tokio::sync::Semaphore>,
    /// Which files' data is imported, and when (listing or open).
    import_rules: ImportRules,
    /// How long the kernel may cache names and attributes (`entry_ttl`, `attr_ttl`).
    kernel_ttl: std::time::Duration,
    /// Background work (eager imports, metadata prefetch) still running per directory,
    /// by its inode: the poller does not re-list a directory while this is above zero.
    dir_work: Arc<DashMap<Ino, usize>>,
    /// Directories whose metadata prefetch has been started since their listing.
    meta_prefetched: DashMap<Ino, ()>,
    /// Budget of the metadata prefetch's HeadObject requests, apart from `eager`'s GETs.
    prefetch: Arc<tokio::sync::Semaphore>,
    /// Whether open files with local bytes are handed to the kernel (`passthrough`).
    passthrough: passthrough::PassthroughState,
    /// How often watched directories are re-listed (zero: never), for the root's status.
    poll_interval: std::time::Duration,
    /// The event source, when changes are imported from S3 events.
    events: Option<String>,
}

impl FsCore {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        options: CoreOptions,
        metrics: Arc<Metrics>,
        cache: Arc<DataCache>,
    ) -> Self {
        FsCore {
            fetcher: Arc::new(BlockFetcher::new(store.clone(), cache, metrics.clone())),
            budget: StreamBudget::new(options.stream_budget),
            eager: Arc::new(tokio::sync::Semaphore::new(EAGER_IMPORTS)),
            import_rules: ImportRules::root_only(options.import_size_threshold),
            dir_work: Arc::new(DashMap::new()),
            meta_prefetched: DashMap::new(),
            prefetch: Arc::new(tokio::sync::Semaphore::new(load::META_PREFETCH)),
            store,
            inodes: InodeTable::new(&options.root_prefix),
            files: DashMap::new(),
            open_files: std::sync::atomic::AtomicUsize::new(0),
            measured_status: Mutex::new(std::collections::HashMap::new()),
            status_reread_ms: AtomicU64::new(STATUS_REREAD.as_millis() as u64),
            dirs: DashMap::new(),
            listings_unkept: Default::default(),
            next_handle: AtomicU64::new(1),
            options,
            metrics,
            mounted_at: SystemTime::now(),
            reported: Mutex::new(HashSet::new()),
            queue: None,
            kernel: std::sync::OnceLock::new(),
            kernel_ttl: DEFAULT_KERNEL_TTL,
            passthrough: Default::default(),
            poll_interval: std::time::Duration::ZERO,
            events: None,
        }
    }

    /// Connects the core to the kernel's caches (once the mount is live).
    pub fn set_kernel_cache(&self, cache: Box<dyn KernelCache>) {
        let _ = self.kernel.set(cache);
    }

    fn invalidate_entry(&self, parent: Ino, name: &str) {
        crate::lock_order::assert_unlocked("a kernel notification");
        if let Some(kernel) = self.kernel.get() {
            kernel.invalidate_entry(parent, name);
        }
    }

    /// An entry of `dir` changed behind the kernel's back: its name, and the directory's
    /// attributes (its mtime moved), so the kernel drops the listing it keeps too.
    fn invalidate_entry_in_listing(&self, dir: Ino, name: &str) {
        self.invalidate_entry(dir, name);
        self.invalidate_inode(dir);
    }

    fn invalidate_inode(&self, ino: Ino) {
        crate::lock_order::assert_unlocked("a kernel notification");
        if let Some(kernel) = self.kernel.get() {
            kernel.invalidate_inode(ino);
        }
    }

    /// Enables writes: local changes go through the export queue to S3.
    pub fn with_writer(mut self, queue: write::Writer) -> Self {
        self.queue = Some(Arc::new(queue));
        self
    }

    /// Replaces the root-only rule made from `import_size_threshold` with a rule set.
    pub fn with_import_rules(mut self, rules: ImportRules) -> Self {
        self.import_rules = rules;
        self
    }

    /// The poller's interval, as the root's status reports it (the daemon runs the
    /// poller; the core only describes it).
    pub fn with_poll_interval(mut self, interval: std::time::Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The event source importing changes (`--events-queue`), as status reports it.
    pub fn with_events(mut self, source: String) -> Self {
        self.events = Some(source);
        self
    }

    /// Sets how long the kernel may cache names and attributes (`--kernel-cache-ttl`).
    pub fn with_kernel_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.kernel_ttl = ttl;
        self
    }

    /// How long the kernel may keep a name -> inode answer (lookup, create, mkdir...).
    /// Negative answers are never cached (ENOENT is a plain error reply), so a new key
    /// shows as soon as the daemon knows of it.
    pub fn entry_ttl(&self) -> std::time::Duration {
        if self.daemon_checks() {
            self.kernel_ttl.min(CHECKED_ENTRY_TTL)
        } else {
            self.kernel_ttl
        }
    }

    /// How long the kernel may keep an inode's attributes.
    pub fn attr_ttl(&self) -> std::time::Duration {
        self.kernel_ttl
    }

    /// Whether the kernel may keep directory listings across opens. It drops one when
    /// the directory's mtime moves, which needs it to refresh attributes before using
    /// one (FUSE_AUTO_INVAL_DATA); and not at all with a zero `--kernel-cache-ttl`.
    pub fn keeps_listings(&self) -> bool {
        !self.kernel_ttl.is_zero() && !self.listings_unkept.load(Ordering::Relaxed)
    }

    /// The kernel lacks what keeping listings safely needs.
    pub fn disable_kept_listings(&self) {
        self.listings_unkept.store(true, Ordering::Relaxed);
    }

    /// The export queue, if writes are enabled.
    pub fn export_queue(&self) -> Option<&Arc<ExportQueue>> {
        self.queue.as_ref()
    }

    /// Key prefix of the mount root (empty or ending in `/`).
    pub(crate) fn root_prefix(&self) -> &str {
        &self.options.root_prefix
    }

    /// A node of the inode table, if present.
    pub(crate) fn inode(&self, ino: Ino) -> Option<Arc<Node>> {
        self.inodes.get(ino)
    }

    /// A listed directory's entry `name`, if present (no listing is made).
    pub(crate) fn child_of(&self, dir: &Node, name: &str) -> Option<Arc<Node>> {
        self.inodes.child(dir, name)
    }

    pub fn cache(&self) -> &Arc<DataCache> {
        self.fetcher.cache()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The shared counters, for another S3 client of this mount (the poller's).
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub async fn lookup(&self, caller: Identity, parent: Ino, name: &[u8]) -> FsResult<Attr> {
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        check_segment(name).map_err(|r| namespace::name_error(r, FsError::NotFound))?;
        let dir = self.node(parent)?;
        self.require_dir(&dir)?;
        self.check(caller, &dir, access::EXEC).await?;
        self.load_dir(&dir).await?;
        // The entry can be replaced while its metadata is fetched; a few tries settle it.
        for _ in 0..3 {
            let child = self.inodes.child(&dir, name).ok_or(FsError::NotFound)?;
            if child.state().meta.is_none() {
                // One stat of an unknown entry (`ls -l`, `find -type`, `ls --color`)
                // usually means its siblings come next: fetch theirs in the background.
                self.prefetch_meta(&dir);
            }
            self.ensure_meta(&child).await?;
            if self.inodes.remember(&dir, name, &child) {
                return Ok(self.attr(&child));
            }
        }
        Err(FsError::Store(StoreError::Other(
            "entry kept changing during lookup".into(),
        )))
    }

    /// `lookup` when it needs no I/O (the directory is listed and the entry's metadata
    /// known, or the name is absent); None means "use `lookup`". Answering inline saves
    /// the hop to a runtime thread on the hot path of tools that stat or create many
    /// files.
    pub fn lookup_cached(&self, parent: Ino, name: &[u8]) -> Option<FsResult<Attr>> {
        if self.daemon_checks() {
            return None; // the permission check may need metadata
        }
        let name = match std::str::from_utf8(name) {
            Ok(name) => match check_segment(name) {
                Ok(()) => name,
                Err(r) => return Some(Err(namespace::name_error(r, FsError::NotFound))),
            },
            Err(_) => return Some(Err(FsError::NotFound)),
        };
        let dir = self.listed_dir(parent)?;
        match self.inodes.child(&dir, name) {
            None => Some(Err(FsError::NotFound)),
            Some(child) => {
                child.state().meta?;
                if self.inodes.remember(&dir, name, &child) {
                    Some(Ok(self.attr(&child)))
                } else {
                    None
                }
            }
        }
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// `getattr` when the metadata is known (no I/O); None means "use `getattr`".
    pub fn getattr_cached(&self, ino: Ino) -> Option<FsResult<Attr>> {
        let node = self.inodes.get(ino)?;
        node.state().meta?;
        self.notice_external_writes(&node);
        Some(Ok(self.attr(&node)))
    }

    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let node = self.node(ino)?;
        self.ensure_meta(&node).await?;
        self.notice_external_writes(&node);
        Ok(self.attr(&node))
    }

    pub async fn readlink(&self, ino: Ino) -> FsResult<Bytes> {
        let node = self.node(ino)?;
        self.ensure_meta(&node).await?;
        let (key, etag, size) = {
            let state = node.state();
            if kind_of(&state) != EntryKind::Symlink {
                return Err(FsError::Invalid);
            }
            if let Some(target) = &state.symlink_target {
                return Ok(target.clone());
            }
            if let Some(staged) = state.sync.staged() {
                let mut buf = vec![0u8; staged.size().min(MAX_SYMLINK_SIZE) as usize];
                let n = staged.read_at(&mut buf, 0).map_err(sync::io_error)?;
                buf.truncate(n);
                return Ok(Bytes::from(buf));
            }
            match state.sync.pending().and_then(|c| c.source.clone()) {
                Some(source) => (source.key, source.etag, source.size),
                None => {
                    let remote = state.remote.clone().ok_or(FsError::NotFound)?;
                    (state.key.clone(), remote.etag, remote.size)
                }
            }
        };
        let target = self
            .store
            .get_range(&key, 0..size.min(MAX_SYMLINK_SIZE), etag.as_deref())
            .await
            .map_err(|e| self.store_error(&key, e))?;
        node.state().symlink_target = Some(target.clone());
        Ok(target)
    }

    pub async fn opendir(&self, caller: Identity, ino: Ino) -> FsResult<u64> {
        let dir = self.node(ino)?;
        self.require_dir(&dir)?;
        self.check(caller, &dir, access::READ).await?;
        self.load_dir(&dir).await?;
        Ok(self.open_listing(&dir))
    }

    /// `opendir` answered without waiting, when that needs no request: a directory
    /// already listed, on a mount where the kernel checks permissions. A walk over a
    /// tree seen before (`git status`, `find`) then opens each directory on the FUSE
    /// thread instead of through the runtime.
    pub fn opendir_cached(&self, ino: Ino) -> Option<u64> {
        if self.daemon_checks() {
            return None; // the permission check may need metadata
        }
        let dir = self.listed_dir(ino)?;
        Some(self.open_listing(&dir))
    }

    /// The directory `ino`, if its listing is loaded (what answering without waiting
    /// needs).
    fn listed_dir(&self, ino: Ino) -> Option<Arc<Node>> {
        let dir = self.inodes.get(ino)?;
        let listed = {
            let state = dir.state();
            state.is_dir && state.children.is_some()
        };
        listed.then_some(dir)
    }

    /// A handle on a snapshot of a listed directory's entries.
    fn open_listing(&self, dir: &Node) -> u64 {
        let snapshot = self.snapshot(dir);
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.dirs.insert(handle, snapshot);
        handle
    }

    /// Directory `dir`'s entries now, with the version of its listing they are.
    fn snapshot(&self, dir: &Node) -> DirSnapshot {
        let (children, parent, version) = {
            let state = dir.state();
            let children: Vec<(String, Ino)> = state
                .children
                .iter()
                .flatten()
                .map(|(name, ino)| (name.clone(), *ino))
                .collect();
            (children, state.parent, state.entries_version)
        };
        let mut entries = Vec::with_capacity(children.len() + 2);
        entries.push(DirEntry {
            ino: dir.ino,
            kind: Some(EntryKind::Dir),
            name: ".".into(),
        });
        entries.push(DirEntry {
            ino: parent,
            kind: Some(EntryKind::Dir),
            name: "..".into(),
        });
        // No request per entry: readdir costs the listing, and an entry whose type needs
        // its metadata is reported as unknown.
        for (name, ino) in children {
            let Some(node) = self.inodes.get(ino) else {
                continue;
            };
            let kind = listed_kind(&node.state());
            entries.push(DirEntry {
                ino: node.ino,
                kind,
                name,
            });
        }
        DirSnapshot {
            dir: dir.ino,
            version,
            entries: Arc::new(entries),
        }
    }

    /// The entries of directory handle `handle` from `offset` on, each with the offset
    /// of the entry after it. Paging through a handle is stable (a snapshot); reading
    /// from the start again (`rewinddir`, or the first read) takes a new snapshot if the
    /// directory changed since. Offsets carry the snapshot's version, so the kernel,
    /// which keeps a directory's listing (`FOPEN_CACHE_DIR`) and may continue one
    /// handle's listing with another's pages, never joins two versions.
    pub fn readdir(&self, handle: u64, offset: u64) -> FsResult<DirPage> {
        let mut snapshot = self
            .dirs
            .get(&handle)
            .map(|e| e.value().clone())
            .ok_or(FsError::BadHandle)?;
        // From the start, the directory as it is now. Further on, an offset of another
        // version than the handle's is another handle's, met in the kernel's kept
        // listing: continue that version's pages if it is the current one.
        let tag_of = |version: u64| version & DIR_VERSION_MASK;
        let other = offset >> 32 != tag_of(snapshot.version);
        if offset == 0 || other {
            if let Some(dir) = self.inodes.get(snapshot.dir) {
                let version = dir.state().entries_version;
                let wanted = offset == 0 || offset >> 32 == tag_of(version);
                if version != snapshot.version && wanted {
                    snapshot = self.snapshot(&dir);
                    self.dirs.insert(handle, snapshot.clone());
                }
            }
        }
        Ok(DirPage {
            start: (offset & DIR_INDEX_MASK) as usize,
            tag: tag_of(snapshot.version) << 32,
            entries: snapshot.entries,
        })
    }

    pub fn releasedir(&self, handle: u64) {
        self.dirs.remove(&handle);
    }

    pub fn statfs(&self) -> StatFs {
        // A bucket has no capacity limit: report a large, constant, mostly-free space so
        // tools that check free space before writing go ahead.
        const BLOCKS: u64 = 1 << 40;
        StatFs {
            blocks: BLOCKS,
            bfree: BLOCKS,
            files: 1 << 40,
            ffree: (1 << 40) - self.inodes.len() as u64,
            bsize: 4096,
            namelen: namespace::MAX_NAME_LEN as u32,
        }
    }

    /// `access(2)`: with an access point the core decides; otherwise the kernel already
    /// checked the mode bits and only the read-only refusal is left.
    pub async fn access(&self, caller: Identity, ino: Ino, mask: u32) -> FsResult<()> {
        let node = self.node(ino)?;
        if mask & access::WRITE != 0 && self.queue.is_none() {
            return Err(self.refuse_write());
        }
        self.check(caller, &node, mask).await
    }

    pub async fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        if let Some(answer) = self.getxattr_now(ino, name) {
            return answer;
        }
        let node = self.node(ino)?;
        Ok(self.status(&node).into_bytes())
    }

    /// The answer to a `getxattr` of any name but the status: there is no other
    /// attribute, so it needs no work and the adapter gives it on the FUSE thread. `ls -l`
    /// asks two of them (`security.selinux`, `system.posix_acl_access`) of every file it
    /// lists, so this is one of its three round trips per file.
    pub fn getxattr_now(&self, ino: Ino, name: &[u8]) -> Option<FsResult<Vec<u8>>> {
        if is_status_xattr(name) {
            return None;
        }
        Some(self.node(ino).and_then(|_| {
            if name.starts_with(b"user.") {
                Err(FsError::NotSupported)
            } else {
                Err(FsError::NoAttr)
            }
        }))
    }

    /// `getxattr` as the kernel asks: size 0 asks for the value's length, and callers
    /// (getfattr, every libattr user) then ask again with a buffer that long. The status
    /// changes as the mount works (its counters), so the text measured is kept for that
    /// second call (for `STATUS_REREAD` at most), which would otherwise find it grown and
    /// fail with ERANGE. A call with a buffer and nothing measured gets a fresh text.
    /// `pid` is the caller's: what one process measured is for that process's next call.
    pub async fn getxattr_sized(
        &self,
        ino: Ino,
        name: &[u8],
        size: u32,
        pid: u32,
    ) -> FsResult<Vec<u8>> {
        if !is_status_xattr(name) {
            return self.getxattr(ino, name).await;
        }
        let key = (ino, name.to_vec(), pid);
        if size > 0 {
            let measured = self
                .measured_status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key)
                .filter(|(_, text)| text.len() <= size as usize);
            return match measured {
                Some((at, text)) if at.elapsed() < self.status_reread() => Ok(text),
                Some((_, text)) => {
                    let fresh = self.getxattr(ino, name).await?;
                    Ok(if fresh.len() <= size as usize {
                        fresh
                    } else {
                        text
                    })
                }
                None => self.getxattr(ino, name).await,
            };
        }
        let text = self.getxattr(ino, name).await?;
        let mut measured = self
            .measured_status
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let keep = self.status_reread();
        measured.retain(|_, (at, _)| at.elapsed() < keep);
        measured.insert(key, (std::time::Instant::now(), text.clone()));
        Ok(text)
    }

    /// Tests set how long a measured status is kept (`STATUS_REREAD`).
    #[cfg(test)]
    pub(crate) fn set_status_reread(&self, keep: std::time::Duration) {
        self.status_reread_ms
            .store(keep.as_millis() as u64, Ordering::Relaxed);
    }

    fn status_reread(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.status_reread_ms.load(Ordering::Relaxed))
    }

    pub async fn setxattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.node(ino)?;
        if name == SYNC_XATTR.as_bytes() {
            return self.sync_tree(ino).await;
        }
        // The status is virtual and read-only. ENOTSUP (not EPERM) lets `cp -a` and `mv`
        // carry on quietly when they copy attributes between files of this mount.
        if self.queue.is_none() && !is_status_xattr(name) {
            return Err(self.refuse_write());
        }
        Err(FsError::NotSupported)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.node(ino)?;
        if self.queue.is_none() && !is_status_xattr(name) {
            return Err(self.refuse_write());
        }
        Err(FsError::NotSupported)
    }

    /// Ends the core's own threads (the staging file pool) without flushing or writing
    /// anything, as a crash would; the core still answers (creates make their files
    /// directly). For in-process crash simulations, which then forget the core rather
    /// than drop it: without this each would leave a thread and its files open.
    pub fn halt(&self) {
        if let Some(queue) = &self.queue {
            queue.halt();
        }
    }

    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<u8>> {
        self.node(ino)?;
        let mut names = STATUS_XATTR.as_bytes().to_vec();
        names.push(0);
        Ok(names)
    }

    /// The answer to every write-side request until the write path lands.
    pub fn refuse_write(&self) -> FsError {
        FsError::ReadOnly
    }

    /// The `user.s3files.status` text of a node: S3 Files' fields first (`S3Key`,
    /// `FilePath`, `ExportError` when the export failed for good), so scripts written
    /// for S3 Files read it unchanged; then s3files' own lines.
    fn status(&self, node: &Node) -> String {
        let key = node.state().key.clone();
        let path = self.path_of(node);
        let (state, last_error, export_error) = self.sync_status(node);
        let mut status = format!("S3Key: {key}\nFilePath: {path}\n");
        if let Some(code) = export_error {
            status.push_str(&format!("ExportError: {code}\n"));
        }
        status.push_str(&format!(
            "key: s3://{}/{key}\npath: {path}\nstate: {state}\nlast-error: {last_error}\n",
            self.options.bucket,
        ));
        if let Some((cached, size)) = self.cached_bytes(node) {
            status.push_str(&format!("cached: {cached} of {size} bytes\n"));
        }
        let open = self.open_modes(node);
        if !open.is_empty() {
            status.push_str(&format!("open: {open}\n"));
        }
        status.push_str(&format!(
            "passthrough: {}\n{}\nmetrics: {}\n",
            self.passthrough_mode(),
            self.cache().summary(),
            self.metrics.summary()
        ));
        if node.ino == ROOT_INO {
            status.push_str(&self.mount_summary());
        }
        status
    }

    /// The root's summary of the whole mount, after the root's own lines: what is left
    /// to export (`s3files sync` reads its progress from `pending-exports`), what went
    /// wrong, and how changes in S3 are found. Reads the staging and lost+found
    /// directories: the root only, never per file.
    fn mount_summary(&self) -> String {
        let queue = self.queue.as_ref();
        let pending = queue.map_or(0, |q| q.backlog());
        let pending_bytes = queue.map_or(0, |q| q.pending_bytes());
        let oldest = match queue.and_then(|q| q.oldest_pending()) {
            Some(at) => format!("{:.1}s ago", at.elapsed().as_secs_f64()),
            None => "none".into(),
        };
        let lost = match queue.map(|q| q.lost().count()) {
            None => "0 files".to_string(),
            Some(Ok(n)) => format!("{n} files"),
            Some(Err(e)) => format!("unknown ({e})"),
        };
        let staging = queue.map_or(0, |q| q.staging().disk_bytes().unwrap_or(0));
        let (disk, _, memory) = self.cache().usage();
        let events = if let Some(source) = &self.events {
            format!(
                "on ({source}; changes made in S3 show within a second, polling every {:?} \
                 as the safety net)",
                self.poll_interval
            )
        } else if self.poll_interval.is_zero() {
            "off (polling off: changes made in S3 show when a directory is first listed)"
                .to_string()
        } else {
            format!(
                "off (changes made in S3 found by polling watched directories every {:?})",
                self.poll_interval
            )
        };
        let size = crate::units::format_size;
        format!(
            "summary (whole mount):\n\
             pending-exports: {pending} ({pending_bytes} bytes, {})\n\
             oldest-pending-change: {oldest}\n\
             conflicts: {} since mount\n\
             lost+found: {lost}\n\
             staging: {} on disk\n\
             cache-use: disk {} of {}, memory {}\n\
             events: {events}\n",
            size(pending_bytes),
            self.metrics
                .conflicts
                .load(std::sync::atomic::Ordering::Relaxed),
            size(staging),
            size(disk),
            size(self.cache().disk_bound()),
            size(memory),
        )
    }

    /// How much of a file's current S3 version the data cache holds.
    fn cached_bytes(&self, node: &Node) -> Option<(u64, u64)> {
        let (key, remote) = {
            let state = node.state();
            if state.is_dir || state.sync.is_local() || !kind_of(&state).has_body() {
                return None;
            }
            (state.key.clone(), state.remote.clone()?)
        };
        let object = crate::cache::ObjectId::new(&key, remote.etag.as_deref()?);
        Some((self.cache().cached_bytes(object, remote.size), remote.size))
    }

    /// The mount-relative path of a node, from its chain of parents.
    fn path_of(&self, node: &Node) -> String {
        let mut parts = Vec::new();
        let (mut parent, name) = {
            let s = node.state();
            (s.parent, s.name.clone())
        };
        if node.ino == ROOT_INO {
            return "/".into();
        }
        parts.push(name);
        while parent != ROOT_INO {
            let Some(p) = self.inodes.get(parent) else {
                break;
            };
            let s = p.state();
            parts.push(s.name.clone());
            parent = s.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    fn node(&self, ino: Ino) -> FsResult<Arc<Node>> {
        self.inodes.get(ino).ok_or(FsError::NotFound)
    }

    fn require_dir(&self, node: &Node) -> FsResult<()> {
        if node.state().is_dir {
            Ok(())
        } else {
            Err(FsError::NotDir)
        }
    }

    /// Whether the core checks permissions (access point or root squash); otherwise the
    /// kernel does (`default_permissions`).
    pub(super) fn daemon_checks(&self) -> bool {
        self.options.access_point.is_some() || self.options.root_squash
    }

    /// The identity a caller's request acts as (access point, root squash applied).
    pub(super) fn effective(&self, caller: Identity) -> Effective<'_> {
        Effective::resolve(
            caller,
            self.options.access_point,
            &self.options.secondary_gids,
            self.options.root_squash,
        )
    }

    /// Permission check when the core checks (see `daemon_checks`).
    async fn check(&self, caller: Identity, node: &Node, want: u32) -> FsResult<()> {
        if !self.daemon_checks() {
            return Ok(()); // the kernel checked the caller (default_permissions)
        }
        // Local entries (new, changed, lost+found) carry their attributes; others may
        // need S3's.
        if node.state().sync.local_meta().is_none() {
            self.ensure_meta(node).await?;
        }
        let (meta, is_dir) = {
            let state = node.state();
            // What the entry shows now: a local change's attributes first.
            let meta = state.sync.local_meta().unwrap_or_else(|| {
                state
                    .meta
                    .unwrap_or_else(|| PosixMeta::default_for(state.is_dir))
            });
            (meta, state.is_dir)
        };
        self.check_known(caller, meta, is_dir, want)
    }

    /// The core's permission check against metadata already known.
    fn check_known(
        &self,
        caller: Identity,
        meta: PosixMeta,
        is_dir: bool,
        want: u32,
    ) -> FsResult<()> {
        if !self.daemon_checks() {
            return Ok(());
        }
        let owner = Owner {
            uid: meta.uid,
            gid: meta.gid,
            perm: meta.perm(),
            is_dir,
        };
        access::check(&self.effective(caller), owner, want)
    }

    fn attr(&self, node: &Node) -> Attr {
        let state = node.state();
        let meta = match state.sync.local_meta() {
            Some(meta) => meta,
            None => state
                .meta
                .unwrap_or_else(|| PosixMeta::default_for(state.is_dir)),
        };
        let kind = kind_of(&state);
        let last_modified = state.remote.as_ref().and_then(|r| r.last_modified);
        // Local bytes, else where the bytes are in S3 while a rename's copy is pending.
        let staged_size = match state.sync.staged() {
            Some(staged) => Some(staged.size()),
            None => state
                .sync
                .pending()
                .and_then(|c| c.source.as_ref())
                .map(|s| s.size),
        };
        Attr {
            ino: node.ino,
            size: if state.is_dir {
                DIR_SIZE
            } else if !kind.has_body() {
                // A FIFO or socket has no data on the mount, whatever its object holds.
                0
            } else {
                staged_size.unwrap_or_else(|| state.remote.as_ref().map_or(0, |r| r.size))
            },
            kind,
            perm: meta.perm(),
            uid: meta.uid,
            gid: meta.gid,
            mtime: state
                .entries_changed
                .or(meta.mtime())
                .or(last_modified)
                .unwrap_or(self.mounted_at),
            nlink: if state.is_dir { 2 } else { 1 },
        }
    }

    /// Logs and counts a store error met while serving a request, and converts it.
    fn store_error(&self, key: &str, error: StoreError) -> FsError {
        if error != StoreError::NotFound {
            self.metrics.s3_errors.fetch_add(1, Ordering::Relaxed);
            warn!(key, %error, "S3 request failed");
        }
        FsError::Store(error)
    }

    /// Logs the metrics summary; called once at unmount.
    pub fn log_summary(&self) {
        info!("{}", self.metrics.summary());
        info!("{}", self.cache().summary());
    }

    /// The mount's state now, for a metrics scrape. Reads the staging and lost+found
    /// directories and scans the export schedule: call it off the FUSE threads, on a
    /// blocking thread.
    pub fn gauges(&self) -> Gauges {
        let (cache_disk_bytes, _, cache_memory_bytes) = self.cache().usage();
        let queue = self.queue.as_ref();
        Gauges {
            pending_exports: queue.map_or(0, |q| q.backlog() as u64),
            oldest_pending_export: queue.and_then(|q| q.oldest_pending()),
            // An unreadable directory is reported in the log by the code that writes
            // it; the scrape shows what it can count.
            lost_and_found_files: queue.map_or(0, |q| q.lost().count().unwrap_or(0) as u64),
            staging_bytes: queue.map_or(0, |q| q.staging().disk_bytes().unwrap_or(0)),
            inodes: self.inodes.len() as u64,
            cache_disk_bytes,
            cache_memory_bytes,
            cache_disk_bound: self.cache().disk_bound(),
        }
    }
}

/// What `FsCore::gauges` reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Changes not yet exported (held ones included).
    pub pending_exports: u64,
    /// When the oldest of them was made.
    pub oldest_pending_export: Option<std::time::Instant>,
    /// Files in this mount's lost+found.
    pub lost_and_found_files: u64,
    /// Bytes staged for export on disk.
    pub staging_bytes: u64,
    /// Entries in the inode table.
    pub inodes: u64,
    pub cache_disk_bytes: u64,
    pub cache_memory_bytes: u64,
    pub cache_disk_bound: u64,
}

/// Whether `name` asks for the status: `user.s3files.status`, or S3 Files' form with a
/// timestamp, `user.s3files.status;<digits>` (a name no NFS client has cached, so every
/// read reaches the server; scripts pass `$(date -u +%s)`).
pub fn is_status_xattr(name: &[u8]) -> bool {
    match name.strip_prefix(STATUS_XATTR.as_bytes()) {
        Some([]) => true,
        Some([b';', digits @ ..]) => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// An entry's kind as readdir reports it: None while it needs metadata not known yet (a
/// small object may be a symlink, a FIFO or a socket; a larger one is a file).
fn listed_kind(state: &inode::NodeState) -> Option<EntryKind> {
    let unknown = !state.is_dir
        && state.meta.is_none()
        && state.sync.local_meta().is_none()
        && state
            .remote
            .as_ref()
            .is_some_and(|r| r.size <= MAX_SYMLINK_SIZE);
    (!unknown).then(|| kind_of(state))
}

/// An entry's kind: a directory by its node, anything else by the type bits of the
/// metadata it shows (local first); a file until its metadata is known.
fn kind_of(state: &inode::NodeState) -> EntryKind {
    if state.is_dir {
        return EntryKind::Dir;
    }
    match state.sync.local_meta().or(state.meta).map(|m| m.kind()) {
        Some(EntryKind::Dir) | None => EntryKind::File,
        Some(kind) => kind,
    }
}

#[cfg(test)]
mod access_tests;
#[cfg(test)]
mod bigdir_tests;
#[cfg(test)]
mod limits_tests;
#[cfg(test)]
mod passthrough_tests;
#[cfg(test)]
mod special_tests;
#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
