//! lost+found: where a local copy goes when its export meets a conflict (the bucket
//! wins). Files live in CACHE_DIR/lost+found/<hex-id>_<name>, each with a sidecar
//! `.origin` holding the path it had, and show on the mount under
//! `/.s3files-lost+found-<mount-id>/`. They are never exported.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::local_state::DIR_MODE;

/// Name of the mount-root directory showing lost+found, before the mount id.
pub const DIR_PREFIX: &str = ".s3files-lost+found-";
/// File names keep at most this many characters of the original name.
const MAX_NAME_CHARS: usize = 100;
const ORIGIN_SUFFIX: &str = ".origin";

#[derive(Debug)]
pub struct LostFound {
    dir: PathBuf,
}

impl LostFound {
    pub fn open(cache_dir: &Path) -> std::io::Result<Self> {
        let dir = cache_dir.join("lost+found");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)?;
        Ok(LostFound { dir })
    }

    /// `<hex-id>_<name cut to 100 chars>`.
    pub fn file_name(id: u64, name: &str) -> String {
        let short: String = name.chars().take(MAX_NAME_CHARS).collect();
        format!("{id:x}_{short}")
    }

    pub fn path(&self, file_name: &str) -> PathBuf {
        self.dir.join(file_name)
    }

    /// Moves a staged file in; returns its lost+found name. Never replaces a file kept
    /// before: record ids start again after a restart with an empty journal, so
    /// `<hex-id>_<name>` may already be taken, and then `<hex-id>-<n>_<name>` is used.
    pub fn keep(
        &self,
        staged: &Path,
        id: u64,
        name: &str,
        origin: &str,
    ) -> std::io::Result<String> {
        let base = Self::file_name(id, name);
        let (prefix, rest) = base.split_once('_').unwrap_or((&base, ""));
        for n in 0u32.. {
            let file_name = match n {
                0 => base.clone(),
                n => format!("{prefix}-{n}_{rest}"),
            };
            if self.dir.join(&file_name).exists() {
                continue;
            }
            // The sidecar is created exclusively: it claims the name.
            let sidecar = self.dir.join(format!("{file_name}{ORIGIN_SUFFIX}"));
            let mut file = match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(crate::local_state::FILE_MODE)
                .open(&sidecar)
            {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            file.write_all(origin.as_bytes())?;
            fs::rename(staged, self.dir.join(&file_name))?;
            return Ok(file_name);
        }
        unreachable!("a free lost+found name")
    }

    /// Every kept file with the path it came from.
    pub fn entries(&self) -> std::io::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(ORIGIN_SUFFIX) {
                continue;
            }
            let origin = fs::read_to_string(self.dir.join(format!("{name}{ORIGIN_SUFFIX}")))
                .unwrap_or_default();
            out.push((name, origin));
        }
        out.sort();
        Ok(out)
    }

    /// How many files are kept (without reading their origins).
    pub fn count(&self) -> std::io::Result<usize> {
        let mut count = 0;
        for entry in fs::read_dir(&self.dir)? {
            if !entry?
                .file_name()
                .to_string_lossy()
                .ends_with(ORIGIN_SUFFIX)
            {
                count += 1;
            }
        }
        Ok(count)
    }

    pub fn remove(&self, file_name: &str) {
        let _ = fs::remove_file(self.dir.join(file_name));
        let _ = fs::remove_file(self.dir.join(format!("{file_name}{ORIGIN_SUFFIX}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_files_with_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let lost = LostFound::open(dir.path()).unwrap();
        let staged = dir.path().join("staged");
        fs::write(&staged, "local bytes").unwrap();
        let long = "n".repeat(150);
        let name = lost.keep(&staged, 0x2a, &long, "/dir/original").unwrap();
        assert_eq!(name, format!("2a_{}", "n".repeat(100)));
        assert!(!staged.exists());
        assert_eq!(fs::read_to_string(lost.path(&name)).unwrap(), "local bytes");
        // Private whatever the process's umask (the test runner's is looser).
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path().join("lost+found")), 0o700);
        assert_eq!(mode(lost.path(&format!("{name}{ORIGIN_SUFFIX}"))), 0o600);
        assert_eq!(
            lost.entries().unwrap(),
            vec![(name.clone(), "/dir/original".to_string())]
        );
        assert_eq!(
            lost.count().unwrap(),
            1,
            "the sidecar is not a file of its own"
        );
        lost.remove(&name);
        assert!(lost.entries().unwrap().is_empty());
        assert_eq!(lost.count().unwrap(), 0);
    }

    #[test]
    fn never_replaces_a_kept_file() {
        // After a restart with an empty journal, record ids start again: the same id and
        // name can come back.
        let dir = tempfile::tempdir().unwrap();
        let lost = LostFound::open(dir.path()).unwrap();
        let mut names = Vec::new();
        for bytes in ["first", "second", "third"] {
            let staged = dir.path().join("staged");
            fs::write(&staged, bytes).unwrap();
            names.push(lost.keep(&staged, 2, "a", &format!("/{bytes}")).unwrap());
        }
        assert_eq!(names, ["2_a", "2-1_a", "2-2_a"]);
        for (name, bytes) in names.iter().zip(["first", "second", "third"]) {
            assert_eq!(fs::read_to_string(lost.path(name)).unwrap(), bytes);
        }
        assert_eq!(lost.entries().unwrap().len(), 3);
    }
}
