//! POSIX metadata stored on objects as S3 Files user metadata (`x-amz-meta-file-owner`,
//! `-file-group`, `-file-permissions`, and our `-file-mtime`), with the S3 Files defaults
//! for objects that carry none of it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const META_OWNER: &str = "file-owner";
pub const META_GROUP: &str = "file-group";
pub const META_PERMISSIONS: &str = "file-permissions";
pub const META_MTIME: &str = "file-mtime";

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;

pub const DEFAULT_FILE_MODE: u32 = 0o644;
pub const DEFAULT_DIR_MODE: u32 = 0o755;
pub const SYMLINK_MODE: u32 = 0o777;

/// The kind of a namespace entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// POSIX attributes of one object, as decoded from its user metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosixMeta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (no file-type bits).
    pub perm: u16,
    /// `file-mtime` if present and valid; otherwise the caller uses Last-Modified.
    pub mtime: Option<SystemTime>,
    /// True when `file-permissions` says the object is a symlink.
    pub symlink: bool,
}

impl PosixMeta {
    /// Defaults for an object with no S3 Files metadata: root:root, 0644 / 0755.
    pub fn default_for(is_dir: bool) -> Self {
        PosixMeta {
            uid: 0,
            gid: 0,
            perm: if is_dir {
                DEFAULT_DIR_MODE as u16
            } else {
                DEFAULT_FILE_MODE as u16
            },
            mtime: None,
            symlink: false,
        }
    }

    /// Decodes user metadata (keys without the `x-amz-meta-` prefix, any case). A field
    /// that is missing or malformed keeps its default, so one bad value never hides a file.
    /// `is_dir` says whether the object is a directory marker; a marker is never a symlink.
    pub fn from_user_metadata(meta: &HashMap<String, String>, is_dir: bool) -> Self {
        let mut out = Self::default_for(is_dir);
        let get = |name: &str| {
            meta.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        };
        if let Some(uid) = get(META_OWNER).and_then(|v| v.parse().ok()) {
            out.uid = uid;
        }
        if let Some(gid) = get(META_GROUP).and_then(|v| v.parse().ok()) {
            out.gid = gid;
        }
        if let Some(mode) = get(META_PERMISSIONS).and_then(|v| u32::from_str_radix(v, 8).ok()) {
            out.perm = (mode & 0o7777) as u16;
            out.symlink = !is_dir && mode & S_IFMT == S_IFLNK;
        }
        if let Some(mtime) = get(META_MTIME).and_then(parse_mtime) {
            out.mtime = Some(mtime);
        }
        out
    }
}

impl PosixMeta {
    /// The attributes of a local entry, as its export will store them.
    pub fn from_export(meta: &crate::export::journal::ExportMeta) -> Self {
        let secs = (meta.mtime_ns / 1_000_000_000) as u64;
        let nanos = (meta.mtime_ns % 1_000_000_000) as u32;
        PosixMeta {
            uid: meta.uid,
            gid: meta.gid,
            perm: (meta.mode & 0o7777) as u16,
            mtime: UNIX_EPOCH.checked_add(Duration::new(secs, nanos)),
            symlink: meta.mode & S_IFMT == S_IFLNK,
        }
    }

    /// The export form of these attributes, for an entry of the given kind.
    pub fn to_export(
        &self,
        is_dir: bool,
        fallback_mtime: SystemTime,
    ) -> crate::export::journal::ExportMeta {
        let kind = if is_dir {
            S_IFDIR
        } else if self.symlink {
            S_IFLNK
        } else {
            S_IFREG
        };
        crate::export::journal::ExportMeta {
            uid: self.uid,
            gid: self.gid,
            mode: kind | u32::from(self.perm),
            mtime_ns: nanos_since_epoch(self.mtime.unwrap_or(fallback_mtime)),
        }
    }
}

/// Nanoseconds since the epoch (0 for times before it).
pub fn nanos_since_epoch(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Parses `<nanoseconds>ns` since the epoch.
fn parse_mtime(value: &str) -> Option<SystemTime> {
    let nanos: u128 = value.strip_suffix("ns")?.parse().ok()?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = (nanos % 1_000_000_000) as u32;
    UNIX_EPOCH.checked_add(Duration::new(secs, sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_metadata() {
        let m = PosixMeta::from_user_metadata(&HashMap::new(), false);
        assert_eq!(
            (m.uid, m.gid, m.perm, m.mtime, m.symlink),
            (0, 0, 0o644, None, false)
        );
        let d = PosixMeta::from_user_metadata(&HashMap::new(), true);
        assert_eq!(d.perm, 0o755);
    }

    #[test]
    fn decodes_s3_files_keys() {
        let m = PosixMeta::from_user_metadata(
            &meta(&[
                ("file-owner", "1000"),
                ("File-Group", "100"),
                ("file-permissions", "0100600"),
                ("file-mtime", "1700000000123456789ns"),
            ]),
            false,
        );
        assert_eq!((m.uid, m.gid, m.perm, m.symlink), (1000, 100, 0o600, false));
        assert_eq!(
            m.mtime,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
        );
    }

    #[test]
    fn symlink_only_for_objects() {
        let md = meta(&[("file-permissions", "0120777")]);
        assert!(PosixMeta::from_user_metadata(&md, false).symlink);
        assert!(!PosixMeta::from_user_metadata(&md, true).symlink);
    }

    #[test]
    fn malformed_values_keep_defaults() {
        let m = PosixMeta::from_user_metadata(
            &meta(&[
                ("file-owner", "-5"),
                ("file-group", "root"),
                ("file-permissions", "rwxr-xr-x"),
                ("file-mtime", "yesterday"),
            ]),
            false,
        );
        assert_eq!(m, PosixMeta::default_for(false));
        assert_eq!(parse_mtime("12"), None);
        assert_eq!(parse_mtime("99999999999999999999999999999999999ns"), None);
    }
}
