//! POSIX attributes, one type for the whole daemon: decoded from the S3 Files user
//! metadata of an object (`x-amz-meta-file-owner`, `-file-group`, `-file-permissions`,
//! and our `-file-mtime`), shown by the mount, kept in the export journal and written
//! back by exports. Objects that carry none of it get the S3 Files defaults
//! (docs/SEMANTICS.md "POSIX metadata").

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const META_OWNER: &str = "file-owner";
pub const META_GROUP: &str = "file-group";
pub const META_PERMISSIONS: &str = "file-permissions";
pub const META_MTIME: &str = "file-mtime";

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFSOCK: u32 = 0o140000;

pub const DEFAULT_FILE_MODE: u32 = 0o644;
pub const DEFAULT_DIR_MODE: u32 = 0o755;
pub const SYMLINK_MODE: u32 = 0o777;

/// The kind of a namespace entry. S3 Files stores FIFOs and sockets as zero-byte
/// objects whose permissions carry their type bits; it has no devices or hard links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
}

impl EntryKind {
    /// Whether entries of this kind have a body in S3 the mount serves (a file's data, a
    /// symlink's target). A FIFO or socket object is only its metadata: the kernel serves
    /// its I/O itself and never asks the daemon for bytes.
    pub fn has_body(self) -> bool {
        matches!(self, EntryKind::File | EntryKind::Symlink)
    }
}

/// POSIX attributes of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixMeta {
    pub uid: u32,
    pub gid: u32,
    /// File type and permission bits, as in `st_mode`.
    pub mode: u32,
    /// Nanoseconds since the epoch (negative before it); None when an object carries no
    /// valid `file-mtime` (the mount then shows its Last-Modified). Every export record
    /// has one.
    pub mtime_ns: Option<i128>,
}

impl PosixMeta {
    /// Defaults for an object with no S3 Files metadata: root:root, 0644 / 0755.
    pub fn default_for(is_dir: bool) -> Self {
        PosixMeta {
            uid: 0,
            gid: 0,
            mode: if is_dir {
                S_IFDIR | DEFAULT_DIR_MODE
            } else {
                S_IFREG | DEFAULT_FILE_MODE
            },
            mtime_ns: None,
        }
    }

    /// Decodes user metadata (keys without the `x-amz-meta-` prefix, any case). A field
    /// that is missing or malformed keeps its default, so one bad value never hides a file.
    /// `is_dir` says whether the object is a directory marker: a marker is always a
    /// directory, and any other object is a regular file unless its permissions say
    /// symlink, FIFO or socket (the types S3 Files stores; a device or directory type on
    /// a plain object is shown as a regular file).
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
            let kind = match (is_dir, mode & S_IFMT) {
                (true, _) => S_IFDIR,
                (false, kind @ (S_IFLNK | S_IFIFO | S_IFSOCK)) => kind,
                (false, _) => S_IFREG,
            };
            out.mode = kind | (mode & 0o7777);
        }
        if let Some(nanos) = get(META_MTIME).and_then(parse_mtime_ns) {
            out.mtime_ns = Some(nanos);
        }
        out
    }

    /// Permission bits (no file-type bits).
    pub fn perm(&self) -> u16 {
        (self.mode & 0o7777) as u16
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }

    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// The entry kind these type bits say (anything unknown is a regular file).
    pub fn kind(&self) -> EntryKind {
        match self.mode & S_IFMT {
            S_IFDIR => EntryKind::Dir,
            S_IFLNK => EntryKind::Symlink,
            S_IFIFO => EntryKind::Fifo,
            S_IFSOCK => EntryKind::Socket,
            _ => EntryKind::File,
        }
    }

    /// The modification time, if these attributes carry one.
    pub fn mtime(&self) -> Option<SystemTime> {
        time_from_nanos(self.mtime_ns?)
    }

    /// These attributes with a modification time for certain (`fallback` when they have
    /// none), as an export writes them.
    pub fn with_mtime_or(self, fallback: SystemTime) -> Self {
        PosixMeta {
            mtime_ns: Some(self.mtime_ns.unwrap_or_else(|| nanos_since_epoch(fallback))),
            ..self
        }
    }

    /// The S3 Files user metadata that stores these attributes.
    pub fn to_user_metadata(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        out.insert(META_OWNER.into(), self.uid.to_string());
        out.insert(META_GROUP.into(), self.gid.to_string());
        out.insert(META_PERMISSIONS.into(), format!("{:07o}", self.mode));
        if let Some(nanos) = self.mtime_ns {
            out.insert(META_MTIME.into(), format!("{nanos}ns"));
        }
        out
    }
}

/// Nanoseconds since the epoch, negative for times before it (`touch -d 1960-01-01`, or
/// an archive's old files).
pub fn nanos_since_epoch(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    }
}

/// The time `nanos` nanoseconds from the epoch, if `SystemTime` can hold it.
pub fn time_from_nanos(nanos: i128) -> Option<SystemTime> {
    let magnitude = nanos.unsigned_abs();
    let secs = u64::try_from(magnitude / 1_000_000_000).ok()?;
    let span = Duration::new(secs, (magnitude % 1_000_000_000) as u32);
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(span)
    } else {
        UNIX_EPOCH.checked_sub(span)
    }
}

/// Parses `<nanoseconds>ns` from the epoch, negative before it (a time `SystemTime` can
/// hold).
fn parse_mtime_ns(value: &str) -> Option<i128> {
    let nanos: i128 = value.strip_suffix("ns")?.parse().ok()?;
    time_from_nanos(nanos)?;
    Some(nanos)
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
            (m.uid, m.gid, m.perm(), m.mtime(), m.is_symlink()),
            (0, 0, 0o644, None, false)
        );
        let d = PosixMeta::from_user_metadata(&HashMap::new(), true);
        assert_eq!((d.perm(), d.is_dir()), (0o755, true));
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
        assert_eq!(
            (m.uid, m.gid, m.perm(), m.is_symlink()),
            (1000, 100, 0o600, false)
        );
        assert_eq!(
            m.mtime(),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
        );
        // What is decoded encodes back to the same metadata.
        let back = m.to_user_metadata();
        assert_eq!(back["file-permissions"], "0100600");
        assert_eq!(back["file-mtime"], "1700000000123456789ns");
        assert_eq!(PosixMeta::from_user_metadata(&back, false), m);
    }

    #[test]
    fn symlink_only_for_objects() {
        let md = meta(&[("file-permissions", "0120777")]);
        assert!(PosixMeta::from_user_metadata(&md, false).is_symlink());
        assert!(!PosixMeta::from_user_metadata(&md, true).is_symlink());
    }

    #[test]
    fn fifo_and_socket_types_kept_for_objects_only() {
        for (perms, kind, mode) in [
            ("0010644", EntryKind::Fifo, 0o010644),
            ("0140755", EntryKind::Socket, 0o140755),
            ("0120777", EntryKind::Symlink, 0o120777),
            ("0100600", EntryKind::File, 0o100600),
            // Devices are not S3 Files types; a directory type on a plain object is
            // not a directory: both show as regular files, keeping their mode bits.
            ("0020644", EntryKind::File, 0o100644),
            ("0060644", EntryKind::File, 0o100644),
            ("0040755", EntryKind::File, 0o100755),
            ("0644", EntryKind::File, 0o100644),
        ] {
            let m = PosixMeta::from_user_metadata(&meta(&[("file-permissions", perms)]), false);
            assert_eq!((m.kind(), m.mode), (kind, mode), "{perms}");
            // A FIFO or socket is exported with the same permissions it was read from.
            if matches!(kind, EntryKind::Fifo | EntryKind::Socket) {
                assert_eq!(m.to_user_metadata()["file-permissions"], perms);
            }
            // A directory marker is a directory whatever its permissions say.
            let d = PosixMeta::from_user_metadata(&meta(&[("file-permissions", perms)]), true);
            assert_eq!(d.kind(), EntryKind::Dir, "{perms}");
        }
        assert!(EntryKind::File.has_body() && EntryKind::Symlink.has_body());
        assert!(!EntryKind::Fifo.has_body() && !EntryKind::Socket.has_body());
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
        assert_eq!(parse_mtime_ns("12"), None);
        assert_eq!(
            parse_mtime_ns("99999999999999999999999999999999999ns"),
            None
        );
    }

    /// Times before the epoch (`touch -d 1960-06-01`) are kept, stored as negative
    /// nanoseconds, and read back; so are times to the nanosecond on either side.
    #[test]
    fn times_before_the_epoch_round_trip() {
        let cases = [
            UNIX_EPOCH - Duration::new(302_443_200, 0),
            UNIX_EPOCH - Duration::new(1, 250_000_000),
            UNIX_EPOCH - Duration::new(0, 1),
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_577_836_800, 123_456_789),
        ];
        for t in cases {
            let meta = PosixMeta::default_for(false).with_mtime_or(t);
            assert_eq!(meta.mtime(), Some(t), "{t:?}");
            let stored = meta.to_user_metadata();
            let back = PosixMeta::from_user_metadata(&stored, false);
            assert_eq!(back.mtime(), Some(t), "{stored:?}");
            let json = serde_json::to_string(&meta).unwrap();
            assert_eq!(serde_json::from_str::<PosixMeta>(&json).unwrap(), meta);
        }
        assert_eq!(
            PosixMeta::default_for(false)
                .with_mtime_or(UNIX_EPOCH - Duration::new(302_443_200, 0))
                .to_user_metadata()[META_MTIME],
            "-302443200000000000ns"
        );
        assert_eq!(parse_mtime_ns("-5ns"), Some(-5));
        assert_eq!(
            parse_mtime_ns("-99999999999999999999999999999999999ns"),
            None
        );
    }

    #[test]
    fn journal_records_of_older_versions_still_read() {
        // Before this type was shared, journal lines carried mtime_ns as a plain number.
        let old = r#"{"uid":1,"gid":2,"mode":33188,"mtime_ns":5}"#;
        let m: PosixMeta = serde_json::from_str(old).unwrap();
        assert_eq!(m.mtime_ns, Some(5));
    }
}
