//! Namespace rules: which S3 keys can be files, how a listing becomes directory entries
//! (implicit directories, `dir/` markers, directory-wins collisions) and which keys are
//! skipped as hostile. Pure functions, no I/O.

use std::collections::{BTreeMap, BTreeSet};

/// Longest file name a segment may have (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest key S3 accepts; a path that would make a longer key cannot be exported.
pub const MAX_KEY_LEN: usize = 1024;
/// Deepest a directory may be below the mount root (S3 Files' limit: 1,000 levels).
/// The root is at depth 0, `/a` at 1. New directories cannot reach it (a key of at most
/// 1,024 bytes holds at most 512 levels); a directory rename that moves a deep tree
/// below another can.
pub const MAX_DIR_DEPTH: usize = 1000;

/// Why a key (or one of its path segments) cannot be shown as a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    EmptySegment,
    DotSegment,
    NameTooLong,
    NulByte,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::EmptySegment => "empty path segment",
            SkipReason::DotSegment => "'.' or '..' path segment",
            SkipReason::NameTooLong => "path segment longer than 255 bytes",
            SkipReason::NulByte => "NUL byte in key",
        })
    }
}

/// Checks one path segment (a file or directory name).
pub fn check_segment(name: &str) -> Result<(), SkipReason> {
    if name.is_empty() {
        Err(SkipReason::EmptySegment)
    } else if name == "." || name == ".." {
        Err(SkipReason::DotSegment)
    } else if name.contains('\0') {
        Err(SkipReason::NulByte)
    } else if name.len() > MAX_NAME_LEN {
        Err(SkipReason::NameTooLong)
    } else {
        Ok(())
    }
}

/// The errno for a name given to the mount that cannot be a file's name: too long is
/// `ENAMETOOLONG` as on any Linux file system; `otherwise` (EINVAL for a new name,
/// ENOENT for a lookup) for names that can never exist.
pub fn name_error(reason: SkipReason, otherwise: super::FsError) -> super::FsError {
    match reason {
        SkipReason::NameTooLong => super::FsError::NameTooLong,
        _ => otherwise,
    }
}

/// Checks a mount prefix given without its trailing `/`: every segment must be valid.
pub fn validate_prefix(prefix: &str) -> Result<(), SkipReason> {
    prefix.split('/').try_for_each(check_segment)
}

/// What one listing of a directory prefix holds once the namespace rules are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntries<O> {
    /// Files by name, with whatever the listing said about each object.
    pub files: BTreeMap<String, O>,
    /// Subdirectory names (implicit or with a marker).
    pub dirs: BTreeSet<String>,
    /// Whether the directory's own `prefix/` marker object was in the listing.
    pub has_marker: bool,
    /// Keys (or prefixes, standing for every key below them) that were skipped.
    pub skipped: Vec<(String, SkipReason)>,
    /// Object keys hidden because a directory of the same name exists.
    pub hidden: Vec<String>,
}

impl<O> Default for DirEntries<O> {
    fn default() -> Self {
        DirEntries {
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            has_marker: false,
            skipped: Vec::new(),
            hidden: Vec::new(),
        }
    }
}

/// Builds a directory's entries from the objects and common prefixes of a delimiter
/// listing of `prefix` (which is empty or ends in `/`). `objects` yields (key, payload).
pub fn build_entries<O>(
    prefix: &str,
    objects: impl IntoIterator<Item = (String, O)>,
    common_prefixes: impl IntoIterator<Item = String>,
) -> DirEntries<O> {
    let mut out = DirEntries::default();
    for common in common_prefixes {
        let Some(name) = common
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix('/'))
        else {
            continue;
        };
        match check_segment(name) {
            Ok(()) => {
                out.dirs.insert(name.to_string());
            }
            Err(reason) => out.skipped.push((common.clone(), reason)),
        }
    }
    for (key, payload) in objects {
        let Some(name) = key.strip_prefix(prefix) else {
            continue;
        };
        if name.is_empty() {
            out.has_marker = true;
            continue;
        }
        if name.contains('/') {
            // A delimiter listing never returns these; a store that ignores the delimiter
            // might. The part before the slash is a directory.
            let dir = name.split('/').next().unwrap_or_default();
            match check_segment(dir) {
                Ok(()) => {
                    out.dirs.insert(dir.to_string());
                }
                Err(reason) => out.skipped.push((key.clone(), reason)),
            }
            continue;
        }
        match check_segment(name) {
            Ok(()) => {
                out.files.insert(name.to_string(), payload);
            }
            Err(reason) => out.skipped.push((key.clone(), reason)),
        }
    }
    // Directory wins: an object `a` next to keys under `a/` is hidden.
    let collisions: Vec<String> = out
        .files
        .keys()
        .filter(|name| out.dirs.contains(*name))
        .cloned()
        .collect();
    for name in collisions {
        out.files.remove(&name);
        out.hidden.push(format!("{prefix}{name}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objs(keys: &[&str]) -> Vec<(String, ())> {
        keys.iter().map(|k| (k.to_string(), ())).collect()
    }

    fn strs(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn segments() {
        assert_eq!(check_segment("a"), Ok(()));
        assert_eq!(check_segment("..."), Ok(()));
        assert_eq!(check_segment(".hidden"), Ok(()));
        assert_eq!(check_segment(""), Err(SkipReason::EmptySegment));
        assert_eq!(check_segment("."), Err(SkipReason::DotSegment));
        assert_eq!(check_segment(".."), Err(SkipReason::DotSegment));
        assert_eq!(check_segment("a\0b"), Err(SkipReason::NulByte));
        assert_eq!(check_segment(&"x".repeat(255)), Ok(()));
        assert_eq!(
            check_segment(&"x".repeat(256)),
            Err(SkipReason::NameTooLong)
        );
        // 255 bytes is the limit, not 255 characters.
        assert_eq!(
            check_segment(&"é".repeat(128)),
            Err(SkipReason::NameTooLong)
        );
    }

    #[test]
    fn files_dirs_and_marker() {
        let e = build_entries(
            "p/",
            objs(&["p/", "p/a.txt", "p/b"]),
            strs(&["p/sub/", "p/other/"]),
        );
        assert!(e.has_marker);
        assert_eq!(e.files.keys().collect::<Vec<_>>(), ["a.txt", "b"]);
        assert_eq!(e.dirs.iter().collect::<Vec<_>>(), ["other", "sub"]);
        assert!(e.skipped.is_empty() && e.hidden.is_empty());
    }

    #[test]
    fn directory_wins_collision() {
        let e = build_entries("", objs(&["file", "x"]), strs(&["file/"]));
        assert_eq!(e.files.keys().collect::<Vec<_>>(), ["x"]);
        assert_eq!(e.dirs.iter().collect::<Vec<_>>(), ["file"]);
        assert_eq!(e.hidden, ["file"]);
    }

    #[test]
    fn hostile_keys_skipped() {
        let long = format!("d/{}", "n".repeat(256));
        let e = build_entries(
            "d/",
            objs(&["d/.", "d/..", &long, "d/ok", "d/nul\0"]),
            strs(&["d//", "d/../", "d/./"]),
        );
        assert_eq!(e.files.keys().collect::<Vec<_>>(), ["ok"]);
        assert!(e.dirs.is_empty());
        let reasons: Vec<SkipReason> = e.skipped.iter().map(|(_, r)| *r).collect();
        assert_eq!(
            reasons,
            [
                SkipReason::EmptySegment,
                SkipReason::DotSegment,
                SkipReason::DotSegment,
                SkipReason::DotSegment,
                SkipReason::DotSegment,
                SkipReason::NameTooLong,
                SkipReason::NulByte,
            ]
        );
    }

    #[test]
    fn objects_outside_prefix_are_ignored() {
        let e = build_entries("p/", objs(&["q/a", "p/a"]), strs(&["q/b/"]));
        assert_eq!(e.files.keys().collect::<Vec<_>>(), ["a"]);
        assert!(e.dirs.is_empty());
    }

    #[test]
    fn nested_object_without_delimiter_becomes_dir() {
        let e = build_entries("", objs(&["a/b/c"]), Vec::<String>::new());
        assert_eq!(e.dirs.iter().collect::<Vec<_>>(), ["a"]);
        assert!(e.files.is_empty());
    }
}
