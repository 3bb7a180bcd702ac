//! Permission checks against an effective identity. With an access point (`--uid/--gid`)
//! the daemon checks every request itself, as S3 Files does; without one, the kernel
//! checks (`default_permissions`) against the caller, supplementary groups included.

use super::error::{FsError, FsResult};

pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const EXEC: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// The owner and mode an entry is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub perm: u16,
    pub is_dir: bool,
}

/// POSIX rules: root may read and write anything, and execute what anyone may execute
/// (directories always); everyone else gets the owner, group or other bits, first match.
pub fn check(who: Identity, entry: Owner, want: u32) -> FsResult<()> {
    let perm = u32::from(entry.perm);
    let allowed = if who.uid == 0 {
        let any_exec = entry.is_dir || perm & 0o111 != 0;
        READ | WRITE | if any_exec { EXEC } else { 0 }
    } else if who.uid == entry.uid {
        (perm >> 6) & 7
    } else if who.gid == entry.gid {
        (perm >> 3) & 7
    } else {
        perm & 7
    };
    if want & !allowed == 0 {
        Ok(())
    } else {
        Err(FsError::Access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Identity = Identity {
        uid: 1000,
        gid: 100,
    };

    fn entry(uid: u32, gid: u32, perm: u16) -> Owner {
        Owner {
            uid,
            gid,
            perm,
            is_dir: false,
        }
    }

    #[test]
    fn owner_group_other() {
        assert!(check(ME, entry(1000, 0, 0o600), READ | WRITE).is_ok());
        assert!(check(ME, entry(1000, 0, 0o400), WRITE).is_err());
        // Owner bits apply even when group bits would allow more.
        assert!(check(ME, entry(1000, 100, 0o070), READ).is_err());
        assert!(check(ME, entry(0, 100, 0o040), READ).is_ok());
        assert!(check(ME, entry(0, 0, 0o644), READ).is_ok());
        assert!(check(ME, entry(0, 0, 0o640), READ).is_err());
        assert!(check(ME, entry(0, 0, 0o755), EXEC).is_ok());
        assert_eq!(check(ME, entry(0, 0, 0o644), EXEC), Err(FsError::Access));
    }

    #[test]
    fn root_reads_all_but_executes_only_executables() {
        let root = Identity { uid: 0, gid: 0 };
        assert!(check(root, entry(5, 5, 0o000), READ | WRITE).is_ok());
        assert!(check(root, entry(5, 5, 0o644), EXEC).is_err());
        assert!(check(root, entry(5, 5, 0o010), EXEC).is_ok());
        let dir = Owner {
            is_dir: true,
            ..entry(5, 5, 0o000)
        };
        assert!(check(root, dir, EXEC).is_ok());
    }
}
