//! Permission checks against an effective identity. With an access point (`--uid/--gid`,
//! optional secondary groups) or root squash the daemon checks every request itself, as
//! S3 Files does; otherwise the kernel checks (`default_permissions`) against the caller,
//! supplementary groups included.

use super::error::{FsError, FsResult};

pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const EXEC: u32 = 1;

/// The anonymous user and group that uid 0 becomes under root squash (S3 Files, for
/// clients without `s3files:ClientRootAccess`).
pub const ANONYMOUS: u32 = 65534;

/// Who sent a request (the kernel's view), or an access point's configured identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// The calling thread (0: unknown). When the daemon checks a caller that no access
    /// point overrides, that thread's supplementary groups count for group permissions.
    pub pid: u32,
}

impl Identity {
    pub const fn new(uid: u32, gid: u32) -> Self {
        Identity { uid, gid, pid: 0 }
    }
}

/// The groups, besides the primary one, that an effective identity belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Groups<'a> {
    /// An access point's secondary gids.
    Listed(&'a [u32]),
    /// The supplementary groups of the calling thread, read from /proc only when a check
    /// depends on them.
    OfThread(u32),
    /// None (the anonymous identity of root squash).
    None,
}

/// The identity a request acts as once the mount's rules (access point, root squash)
/// are applied: permission checks use it, and new entries are owned by it.
#[derive(Debug, Clone, Copy)]
pub struct Effective<'a> {
    pub uid: u32,
    pub gid: u32,
    pub groups: Groups<'a>,
}

impl Effective<'_> {
    /// Applies the mount's rules to a caller: an access point replaces the caller's
    /// identity (and groups) by its own; then, with root squash, an identity that would
    /// act as uid 0 acts as 65534:65534 with no other groups.
    pub fn resolve(
        caller: Identity,
        access_point: Option<Identity>,
        secondary_gids: &[u32],
        root_squash: bool,
    ) -> Effective<'_> {
        let who = match access_point {
            Some(ap) => Effective {
                uid: ap.uid,
                gid: ap.gid,
                groups: Groups::Listed(secondary_gids),
            },
            None => Effective {
                uid: caller.uid,
                gid: caller.gid,
                groups: Groups::OfThread(caller.pid),
            },
        };
        if root_squash && who.uid == 0 {
            Effective {
                uid: ANONYMOUS,
                gid: ANONYMOUS,
                groups: Groups::None,
            }
        } else {
            who
        }
    }

    /// Whether the identity is in group `gid` (primary or secondary).
    pub fn in_group(&self, gid: u32) -> bool {
        if gid == self.gid {
            return true;
        }
        match self.groups {
            Groups::Listed(gids) => gids.contains(&gid),
            Groups::OfThread(pid) => thread_groups(pid).contains(&gid),
            Groups::None => false,
        }
    }

    /// Owner of the entries this identity creates.
    pub fn owner(&self) -> Identity {
        Identity::new(self.uid, self.gid)
    }
}

/// The supplementary groups of thread `pid`, from the `Groups:` line of
/// /proc/PID/status; none if it cannot be read (the thread is gone): group permissions
/// are then not granted, never granted wrongly.
fn thread_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    parse_groups(&status)
}

fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|list| {
            list.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
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
pub fn check(who: &Effective, entry: Owner, want: u32) -> FsResult<()> {
    let perm = u32::from(entry.perm);
    let allowed = if who.uid == 0 {
        let any_exec = entry.is_dir || perm & 0o111 != 0;
        READ | WRITE | if any_exec { EXEC } else { 0 }
    } else if who.uid == entry.uid {
        (perm >> 6) & 7
    } else {
        let (group, other) = ((perm >> 3) & 7, perm & 7);
        // Group membership is asked only when the answer depends on it (it may cost a
        // read of /proc).
        if group != other && who.in_group(entry.gid) {
            group
        } else {
            other
        }
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

    const ME: Effective<'static> = Effective {
        uid: 1000,
        gid: 100,
        groups: Groups::None,
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
        assert!(check(&ME, entry(1000, 0, 0o600), READ | WRITE).is_ok());
        assert!(check(&ME, entry(1000, 0, 0o400), WRITE).is_err());
        // Owner bits apply even when group bits would allow more.
        assert!(check(&ME, entry(1000, 100, 0o070), READ).is_err());
        assert!(check(&ME, entry(0, 100, 0o040), READ).is_ok());
        assert!(check(&ME, entry(0, 0, 0o644), READ).is_ok());
        assert!(check(&ME, entry(0, 0, 0o640), READ).is_err());
        assert!(check(&ME, entry(0, 0, 0o755), EXEC).is_ok());
        assert_eq!(check(&ME, entry(0, 0, 0o644), EXEC), Err(FsError::Access));
    }

    #[test]
    fn root_reads_all_but_executes_only_executables() {
        let root = Effective {
            uid: 0,
            gid: 0,
            groups: Groups::None,
        };
        assert!(check(&root, entry(5, 5, 0o000), READ | WRITE).is_ok());
        assert!(check(&root, entry(5, 5, 0o644), EXEC).is_err());
        assert!(check(&root, entry(5, 5, 0o010), EXEC).is_ok());
        let dir = Owner {
            is_dir: true,
            ..entry(5, 5, 0o000)
        };
        assert!(check(&root, dir, EXEC).is_ok());
    }

    #[test]
    fn secondary_groups_grant_group_bits() {
        let gids = [2000, 3000];
        let who = Effective::resolve(Identity::new(1000, 1000), None, &[], false);
        assert!(matches!(who.groups, Groups::OfThread(0)));
        let ap = Effective::resolve(
            Identity::new(0, 0),
            Some(Identity::new(1000, 1000)),
            &gids,
            false,
        );
        assert_eq!((ap.uid, ap.gid), (1000, 1000));
        assert!(check(&ap, entry(5, 2000, 0o640), READ).is_ok());
        assert!(check(&ap, entry(5, 3000, 0o660), READ | WRITE).is_ok());
        assert!(check(&ap, entry(5, 1000, 0o640), READ).is_ok());
        assert_eq!(
            check(&ap, entry(5, 4000, 0o640), READ),
            Err(FsError::Access)
        );
        assert_eq!(
            check(&ap, entry(5, 2000, 0o640), WRITE),
            Err(FsError::Access)
        );
    }

    #[test]
    fn root_squash_makes_uid_0_anonymous() {
        let root = Identity::new(0, 0);
        let squashed = Effective::resolve(root, None, &[], true);
        assert_eq!((squashed.uid, squashed.gid), (ANONYMOUS, ANONYMOUS));
        assert_eq!(
            check(&squashed, entry(1000, 1000, 0o600), READ),
            Err(FsError::Access)
        );
        assert!(check(&squashed, entry(1000, 1000, 0o604), READ).is_ok());
        // An access point acting as root is squashed too, and loses its groups.
        let gids = [7];
        let ap = Effective::resolve(root, Some(root), &gids, true);
        assert_eq!((ap.uid, ap.gid), (ANONYMOUS, ANONYMOUS));
        assert!(!ap.in_group(7));
        // Other users are not touched.
        let user = Effective::resolve(Identity::new(1000, 100), None, &[], true);
        assert_eq!((user.uid, user.gid), (1000, 100));
        // Without root squash root stays root.
        assert_eq!(Effective::resolve(root, None, &[], false).uid, 0);
    }

    #[test]
    fn thread_groups_come_from_proc() {
        let status = "Name:\tx\nUid:\t0\t0\t0\t0\nGroups:\t4 24 1000 \nNgid:\t0\n";
        assert_eq!(parse_groups(status), vec![4, 24, 1000]);
        assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Name:\tx\n"), Vec::<u32>::new());
        // This thread's own groups, as the kernel reports them.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        let mut ours = vec![0 as libc::gid_t; 256];
        // SAFETY: the buffer holds as many gids as the length passed.
        let n = unsafe { libc::getgroups(ours.len() as i32, ours.as_mut_ptr()) };
        assert!(n >= 0);
        ours.truncate(n as usize);
        let mut read = thread_groups(tid);
        read.sort_unstable();
        ours.sort_unstable();
        assert_eq!(read, ours);
        assert!(thread_groups(0).is_empty());
    }
}
