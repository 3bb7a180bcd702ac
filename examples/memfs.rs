//! The trivial FUSE file system the benchmarks compare s3files against: a read-only
//! file, `data.bin`, held in memory, and optionally a flat directory `tree/` of small text
//! files, served by the same fuser version and session setup (one session thread). Its
//! latencies are the floor of any FUSE file system on the machine: kernel round trips
//! plus a memcpy.
//!
//!   cargo run --release --example memfs -- MOUNTPOINT SIZE_BYTES [SMALL_FILES]
//!
//! Runs until unmounted (`fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`).

use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

const TTL: Duration = Duration::from_secs(1);
const FILE: INodeNo = INodeNo(2);
const TREE: INodeNo = INodeNo(3);
/// Inode of the first small file.
const FIRST_SMALL: u64 = 4;

struct MemFs {
    data: Vec<u8>,
    small: Vec<Vec<u8>>,
    mounted: SystemTime,
}

impl MemFs {
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
}

impl Filesystem for MemFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_str().unwrap_or("");
        let found = match (parent, name) {
            (INodeNo::ROOT, "data.bin") => Some(FILE),
            (INodeNo::ROOT, "tree") if !self.small.is_empty() => Some(TREE),
            (TREE, _) => small_index(name)
                .filter(|&i| i < self.small.len())
                .map(|i| INodeNo(FIRST_SMALL + i as u64)),
            _ => None,
        };
        match found {
            Some(ino) => reply.entry(&TTL, &self.attr(ino), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT || ino == TREE || self.content(ino).is_some() {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
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
        let data = self.content(ino).unwrap_or(&[]);
        let start = (offset as usize).min(data.len());
        let end = (start + size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut entries = vec![
            (INodeNo::ROOT, FileType::Directory, ".".to_string()),
            (INodeNo::ROOT, FileType::Directory, "..".to_string()),
        ];
        if ino == TREE {
            for i in 0..self.small.len() {
                let ino = INodeNo(FIRST_SMALL + i as u64);
                entries.push((ino, FileType::RegularFile, small_name(i)));
            }
        } else {
            entries.push((FILE, FileType::RegularFile, "data.bin".into()));
            if !self.small.is_empty() {
                entries.push((TREE, FileType::Directory, "tree".into()));
            }
        }
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
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
    let fs = MemFs {
        data: (0..size).map(|i| (i % 251) as u8).collect(),
        small: (0..files).map(small_file).collect(),
        mounted: SystemTime::now(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![MountOption::FSName("memfs".into()), MountOption::RO];
    if let Err(e) = fuser::mount(fs, mountpoint, &config) {
        eprintln!("memfs: {e}");
        std::process::exit(1);
    }
}
