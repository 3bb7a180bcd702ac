//! An entry's sync life: how a node stands with S3, as one type whose variants make
//! the impossible states unrepresentable. `attr`, `read`, `release`, the status xattr
//! and the poller's "keep local state" are each one `match` on it.
//!
//! `NodeState::remote` is, in every variant, what this mount last saw or produced at
//! the node's *own current key* (None: nothing there). A rename moves a node to another
//! key, so it takes that key's version; where the bytes still are in S3 while the
//! rename's copy is pending is `Pending::source`. Conflicts are judged against
//! `remote`, so they are only ever raised for a change someone else made to that key
//! (docs/SEMANTICS.md "Conflicts").

use std::sync::Arc;

use crate::export::staging::StagedFile;
use crate::posix::PosixMeta;

/// An object version in S3 that a node's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub key: String,
    pub etag: Option<String>,
    pub size: u64,
}

/// A change made on this mount, waiting for export.
#[derive(Debug, Clone)]
pub struct Change {
    /// The export record carrying it (also the staging file's name).
    pub id: u64,
    /// The attributes the mount shows, and the export writes.
    pub meta: PosixMeta,
    /// Local bytes, for files and symlinks that were written; None for a metadata-only
    /// change, a rename of an entry already in S3, or a directory.
    pub staged: Option<Arc<StagedFile>>,
    /// Without local bytes: where the entry's bytes are in S3 while a rename's copy is
    /// pending (None: at `remote`, the node's own key).
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default)]
pub enum SyncLife {
    /// As in S3: the node mirrors `remote` and `meta`; nothing local.
    #[default]
    Remote,
    /// Changed here; export record `change.id` will carry it to S3.
    Pending(Change),
    /// Exported; the local bytes stay while handles have the file open (and go with
    /// the last one). `id` names the staging file.
    Clean {
        id: u64,
        meta: PosixMeta,
        staged: Arc<StagedFile>,
    },
    /// Local only and never exported: the lost+found directory (`staged` None) or a
    /// file in it, with the path it had when its change lost a conflict.
    Lost {
        origin: Option<String>,
        meta: PosixMeta,
        staged: Option<Arc<StagedFile>>,
    },
}

impl SyncLife {
    /// The attributes the mount shows for a local entry (None: take S3's).
    pub fn local_meta(&self) -> Option<PosixMeta> {
        match self {
            SyncLife::Remote => None,
            SyncLife::Pending(change) => Some(change.meta),
            SyncLife::Clean { meta, .. } | SyncLife::Lost { meta, .. } => Some(*meta),
        }
    }

    /// Local bytes, which win over S3 for every reader.
    pub fn staged(&self) -> Option<&Arc<StagedFile>> {
        match self {
            SyncLife::Remote => None,
            SyncLife::Pending(change) => change.staged.as_ref(),
            SyncLife::Clean { staged, .. } => Some(staged),
            SyncLife::Lost { staged, .. } => staged.as_ref(),
        }
    }

    /// The pending change, if any.
    pub fn pending(&self) -> Option<&Change> {
        match self {
            SyncLife::Pending(change) => Some(change),
            _ => None,
        }
    }

    /// Whether a listing that disagrees must leave this node alone: it has changes
    /// not exported yet, or exists only here.
    pub fn keeps_local_state(&self) -> bool {
        matches!(self, SyncLife::Pending(_) | SyncLife::Lost { .. })
    }

    pub fn is_lost(&self) -> bool {
        matches!(self, SyncLife::Lost { .. })
    }

    /// Whether the node has any local state (not a plain mirror of S3).
    pub fn is_local(&self) -> bool {
        !matches!(self, SyncLife::Remote)
    }
}
