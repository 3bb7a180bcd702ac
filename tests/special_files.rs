//! File types through a real mount, against a local file system: regular files,
//! directories, symlinks, FIFOs and Unix sockets. The same operation table (create,
//! chmod, chown, utimens, renames within and across directories and over an entry of
//! each type, unlink/rmdir, a path through each) runs on the mount and on a local
//! directory, and every answer must match, errno for errno. Then the entries are
//! exported (S3 Files stores a FIFO or socket as a zero-byte object whose
//! `file-permissions` carry the type bits), checked in the bucket with an independent
//! client, and seen with type, mode, owner, group and mtime intact by a second mount,
//! which changes them in turn for the first to see.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_answers, bounded, sync, wait_for, Mount, S3Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
}

const KINDS: [Kind; 5] = [
    Kind::File,
    Kind::Dir,
    Kind::Symlink,
    Kind::Fifo,
    Kind::Socket,
];

/// What one step answered: what it observed, or an errno.
type Answer = Result<String, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

/// The result of a libc call returning 0 or -1.
fn check(rc: libc::c_int) -> Result<(), i32> {
    if rc == 0 {
        Ok(())
    } else {
        Err(errno(std::io::Error::last_os_error()))
    }
}

/// Symlinks made by the table point at this regular file (relative, so the same on
/// both sides), so a path through a symlink resolves to a file.
const ANCHOR: &str = "anchor";

fn create(kind: Kind, path: &Path, mode: u32) -> Result<(), i32> {
    match kind {
        Kind::File => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map(drop)
            .map_err(errno),
        Kind::Dir => std::fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .map_err(errno),
        Kind::Symlink => std::os::unix::fs::symlink(ANCHOR, path).map_err(errno),
        // SAFETY: a valid C string.
        Kind::Fifo => check(unsafe { libc::mkfifo(c_path(path).as_ptr(), mode) }),
        // bind(2) makes the socket file (mode 0777 less the umask); the listener itself
        // closes at once, the file stays, as on any file system.
        Kind::Socket => UnixListener::bind(path).map(drop).map_err(errno),
    }
}

/// The name of a file type, as the tables say it.
fn type_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    }
}

/// The kind, permission bits, owner, group and (for non-directories) size of an entry,
/// not following a symlink; with its mtime when `with_mtime` (creation times differ
/// between the two sides, times set by utimens do not).
fn stat(path: &Path, with_mtime: bool) -> Answer {
    let meta = std::fs::symlink_metadata(path).map_err(errno)?;
    let ft = meta.file_type();
    let kind = type_name(ft);
    let size = if ft.is_dir() {
        "-".to_string()
    } else {
        meta.size().to_string()
    };
    let mut out = format!(
        "{kind} {:o} {}:{} size={size}",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
    if with_mtime {
        out.push_str(&format!(" mtime={}.{:09}", meta.mtime(), meta.mtime_nsec()));
    }
    Ok(out)
}

const MTIME: (i64, i64) = (1_600_000_000, 123_456_789);

/// utimensat(2) without following a symlink: mtime = MTIME, atime untouched.
fn set_mtime(path: &Path) -> Result<(), i32> {
    common::set_mtime(path, MTIME.0, MTIME.1).map_err(errno)
}

fn lchown(path: &Path, uid: u32, gid: u32) -> Result<(), i32> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(errno)
}

fn unit(r: Result<(), i32>) -> Answer {
    r.map(|()| String::new())
}

/// Removes whatever is at `path` (a directory with what is in it).
fn remove(path: &Path) -> Result<(), i32> {
    let meta = std::fs::symlink_metadata(path).map_err(errno)?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(errno)
    } else {
        std::fs::remove_file(path).map_err(errno)
    }
}

/// Records each step's answer under a name, in order.
struct Log {
    root: PathBuf,
    answers: Vec<(String, Answer)>,
}

impl Log {
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn step(&mut self, name: String, answer: Answer) {
        self.answers.push((name, answer));
    }
}

/// Targets a rename may land on: each kind, and a directory with something in it.
fn targets() -> Vec<(&'static str, Option<Kind>)> {
    let mut out: Vec<(&'static str, Option<Kind>)> =
        KINDS.iter().map(|k| (kind_name(*k), Some(*k))).collect();
    out.push(("full-dir", None));
    out
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

/// The operation table for one kind, under `root` (a mount or a local directory).
fn run_table(log: &mut Log, kind: Kind) {
    let k = kind_name(kind);
    let x = format!("x-{k}");
    let px = log.p(&x);
    log.step(format!("{k}: create"), unit(create(kind, &px, 0o644)));
    log.step(format!("{k}: create again"), unit(create(kind, &px, 0o644)));
    log.step(format!("{k}: stat"), stat(&px, false));
    // chmod follows a symlink (to the anchor); lchown and utimens do not.
    let chmod = std::fs::set_permissions(&px, std::fs::Permissions::from_mode(0o600));
    log.step(format!("{k}: chmod"), unit(chmod.map_err(errno)));
    log.step(format!("{k}: stat after chmod"), stat(&px, false));
    log.step(format!("{k}: lchown"), unit(lchown(&px, 1000, 1001)));
    log.step(format!("{k}: stat after chown"), stat(&px, false));
    // A path through the entry: ENOTDIR unless it is (or leads to) a directory.
    let through = px.join("y");
    log.step(format!("{k}: stat {x}/y"), stat(&through, false));
    log.step(
        format!("{k}: create file {x}/y"),
        unit(create(Kind::File, &through, 0o644)),
    );
    log.step(
        format!("{k}: mkfifo {x}/y"),
        unit(create(Kind::Fifo, &through, 0o644)),
    );
    log.step(
        format!("{k}: mkdir {x}/y"),
        unit(create(Kind::Dir, &through.with_file_name("z"), 0o755)),
    );
    if kind == Kind::Dir {
        // Made inside the directory: empty it again for the renames below.
        for name in ["y", "z"] {
            let _ = remove(&px.join(name));
        }
    }

    // utimens after the steps above: on a local file system, adding and removing a
    // directory's entries moves its mtime, which the mount does not do.
    log.step(format!("{k}: utimens"), unit(set_mtime(&px)));
    log.step(format!("{k}: stat after utimens"), stat(&px, true));

    // Renames within a directory and across directories keep the entry as it was.
    let renamed = log.p(&format!("{x}.renamed"));
    let moved = log.p(&format!("sub/{x}"));
    log.step(
        format!("{k}: rename in dir"),
        unit(std::fs::rename(&px, &renamed).map_err(errno)),
    );
    log.step(format!("{k}: stat renamed"), stat(&renamed, true));
    log.step(format!("{k}: stat old name"), stat(&px, false));
    log.step(
        format!("{k}: rename across dirs"),
        unit(std::fs::rename(&renamed, &moved).map_err(errno)),
    );
    log.step(format!("{k}: stat moved"), stat(&moved, true));
    log.step(
        format!("{k}: rename back"),
        unit(std::fs::rename(&moved, &px).map_err(errno)),
    );
    log.step(format!("{k}: stat back"), stat(&px, true));

    // Over an entry of each type.
    for (t, target_kind) in targets() {
        let target = log.p(&format!("t-{k}-over-{t}"));
        let made = match target_kind {
            Some(tk) => create(tk, &target, 0o644),
            None => create(Kind::Dir, &target, 0o755)
                .and_then(|()| create(Kind::File, &target.join("inside"), 0o644)),
        };
        log.step(format!("{k} over {t}: make target"), unit(made));
        let result = std::fs::rename(&px, &target).map_err(errno);
        log.step(format!("{k} over {t}: rename"), unit(result));
        // Only a renamed entry has a known mtime (a fresh target's differs per side).
        log.step(
            format!("{k} over {t}: stat target"),
            stat(&target, result.is_ok()),
        );
        log.step(format!("{k} over {t}: stat source"), stat(&px, false));
        if result.is_ok() {
            // Put it back under its own name for the next target.
            let back = std::fs::rename(&target, &px).map_err(errno);
            log.step(format!("{k} over {t}: rename back"), unit(back));
        } else {
            log.step(
                format!("{k} over {t}: remove target"),
                unit(remove(&target)),
            );
        }
    }

    // unlink of a directory is EISDIR, rmdir of anything else ENOTDIR.
    log.step(
        format!("{k}: unlink"),
        unit(std::fs::remove_file(&px).map_err(errno)),
    );
    if kind != Kind::Dir {
        create(kind, &px, 0o644).expect("create again after unlink");
    }
    log.step(
        format!("{k}: rmdir"),
        unit(std::fs::remove_dir(&px).map_err(errno)),
    );
    log.step(format!("{k}: remove"), unit(remove(&px)));
    log.step(format!("{k}: stat removed"), stat(&px, false));
}

fn table(root: &Path) -> Vec<(String, Answer)> {
    let mut log = Log {
        root: root.to_path_buf(),
        answers: Vec::new(),
    };
    std::fs::write(root.join(ANCHOR), b"anchor").expect("anchor");
    std::fs::create_dir(root.join("sub")).expect("sub");
    for kind in KINDS {
        run_table(&mut log, kind);
    }
    log.answers
}

/// The entries whose export and import are checked: name, kind, mode to set.
const STAGED: [(&str, Kind, u32); 5] = [
    ("file", Kind::File, 0o640),
    ("dir", Kind::Dir, 0o750),
    ("link", Kind::Symlink, 0o777),
    ("fifo", Kind::Fifo, 0o620),
    ("sock", Kind::Socket, 0o710),
];

/// Creates the STAGED entries under `dir` (a file gets a few bytes, so it has a body).
fn make_staged(dir: &Path) {
    std::fs::create_dir(dir).expect("stage dir");
    for (name, kind, _) in STAGED {
        let path = dir.join(name);
        create(kind, &path, 0o644).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        if kind == Kind::File {
            std::fs::write(&path, b"data").expect("write");
        }
    }
}

/// chmod (not for the symlink: it would follow), chown and utimens of each STAGED entry
/// under `from`, then a rename of each into `to`.
fn change_staged(from: &Path, to: &Path) -> Vec<(String, Answer)> {
    std::fs::create_dir(to).expect("final dir");
    let mut out = Vec::new();
    for (name, kind, mode) in STAGED {
        let path = from.join(name);
        if kind != Kind::Symlink {
            let chmod = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
            out.push((format!("chmod {name}"), unit(chmod.map_err(errno))));
        }
        out.push((format!("chown {name}"), unit(lchown(&path, 1000, 1001))));
        out.push((format!("utimens {name}"), unit(set_mtime(&path))));
        let rename = std::fs::rename(&path, to.join(name)).map_err(errno);
        out.push((format!("rename {name}"), unit(rename)));
    }
    out
}

/// Each STAGED entry under `dir`: its stat (with mtime) and its readdir type.
fn staged_view(dir: &Path) -> BTreeMap<String, (Answer, String)> {
    let mut types = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let t = type_name(entry.file_type().expect("d_type"));
            types.insert(entry.file_name().to_string_lossy().into_owned(), t);
        }
    }
    STAGED
        .iter()
        .map(|(name, _, _)| {
            let t = types.get(*name).copied().unwrap_or("absent");
            (
                name.to_string(),
                (stat(&dir.join(name), true), t.to_string()),
            )
        })
        .collect()
}

fn assert_same(what: &str, mount: &[(String, Answer)], local: &[(String, Answer)]) {
    let mismatches: Vec<String> = mount
        .iter()
        .zip(local)
        .filter(|(m, l)| m != l)
        .map(|((step, m), (_, l))| format!("  {step}: mount {m:?}, local {l:?}"))
        .collect();
    assert!(
        mismatches.is_empty() && mount.len() == local.len(),
        "{what}: the mount differs from a local file system:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn special_files_behave_as_on_a_local_file_system_and_survive_export() {
    let server = S3Server::start();
    server.create_bucket("types");
    let a = Mount::start(
        &server,
        "s3://types",
        &["--write-back-delay", "600s", "--poll-interval", "1s"],
    );
    let local = tempfile::tempdir().expect("local dir");

    // 1. The operation table, errno for errno.
    let on_mount = bounded(Duration::from_secs(120), "operation table", {
        let root = a.path.clone();
        move || table(&root)
    });
    let on_local = table(local.path());
    assert!(on_local.len() > 200, "{} steps", on_local.len());
    assert_same("operation table", &on_mount, &on_local);
    // The expected refusals really happened (a table that only ever succeeded, or only
    // failed, on both sides would prove little).
    let errnos: Vec<i32> = on_mount
        .iter()
        .filter_map(|(_, a)| a.clone().err())
        .collect();
    for e in [
        libc::EEXIST,
        libc::ENOTDIR,
        libc::EISDIR,
        libc::ENOTEMPTY,
        libc::ENOENT,
    ] {
        assert!(errnos.contains(&e), "no step answered errno {e}");
    }

    // What S3 Files does not have: device nodes and hard links.
    let dev = a.join("dev");
    // SAFETY: a valid C string.
    let rc = unsafe { libc::mknod(c_path(&dev).as_ptr(), libc::S_IFCHR | 0o600, 0) };
    assert_eq!(check(rc), Err(libc::EPERM), "mknod of a character device");
    create(Kind::Fifo, &a.join("linked-fifo"), 0o644).unwrap();
    assert_eq!(
        std::fs::hard_link(a.join("linked-fifo"), a.join("hard")).map_err(errno),
        Err(libc::EPERM)
    );

    // 2. A socket bound on the mount accepts connections; a FIFO passes bytes.
    let sock = a.join("live.sock");
    let listener = UnixListener::bind(&sock).expect("bind on the mount");
    let server_side = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read from client");
        conn.write_all(b"pong!").expect("reply");
        buf
    });
    let reply = bounded(Duration::from_secs(10), "socket round trip", {
        let sock = sock.clone();
        move || {
            let mut client = UnixStream::connect(&sock).expect("connect on the mount");
            client.write_all(b"ping!").expect("send");
            let mut buf = [0u8; 5];
            client.read_exact(&mut buf).expect("reply");
            buf
        }
    });
    assert_eq!(&reply, b"pong!");
    assert_eq!(&server_side.join().expect("server thread"), b"ping!");
    let fifo = a.join("live.fifo");
    create(Kind::Fifo, &fifo, 0o600).unwrap();
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open FIFO for writing");
            for i in 0..100u32 {
                w.write_all(format!("line {i}\n").as_bytes())
                    .expect("write");
            }
        }
    });
    let read = bounded(Duration::from_secs(10), "FIFO read", {
        let fifo = fifo.clone();
        move || std::fs::read_to_string(&fifo).expect("read FIFO")
    });
    writer.join().expect("writer thread");
    let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
    assert_eq!(read, expected);

    // 3. Export: each type becomes one object; a FIFO or socket has no bytes and its
    // permissions carry the type bits.
    make_staged(&a.join("stage"));
    make_staged(&local.path().join("stage"));
    // A socket with a live listener on this mount, exported like any other.
    let shared = UnixListener::bind(a.join("shared.sock")).expect("bind shared.sock");
    let created = staged_view(&a.join("stage"));
    sync(&a.path, Duration::from_secs(60)).expect("sync");
    let objects = server.list_all("types");
    for (key, size) in [
        ("stage/file", 4),
        ("stage/dir/", 0),
        ("stage/link", ANCHOR.len() as i64),
        ("stage/fifo", 0),
        ("stage/sock", 0),
    ] {
        assert_eq!(objects.get(key), Some(&size), "{key} in {objects:?}");
        // Type and mode as a local file system gives them (the umask applies).
        let local_mode = std::fs::symlink_metadata(local.path().join(key.trim_end_matches('/')))
            .expect("local entry")
            .mode();
        let meta = server.metadata("types", key);
        assert_eq!(
            meta.get("file-permissions"),
            Some(&format!("{local_mode:07o}")),
            "{key}"
        );
        assert_eq!(
            meta.get("file-owner").map(String::as_str),
            Some("0"),
            "{key}"
        );
        assert!(meta.contains_key("file-mtime"), "{key}: {meta:?}");
    }
    assert_eq!(server.get("types", "stage/link"), ANCHOR.as_bytes());
    assert!(!objects.contains_key("dev") && !objects.contains_key("hard"));

    // 4. A second mount (its own cache) imports them with type, mode, owner and mtime.
    let b = Mount::start(&server, "s3://types", &["--write-back-delay", "600s"]);
    assert_eq!(staged_view(&b.join("stage")), created, "second mount");
    // A socket file is only a name: the listener bound through the first mount is not
    // reachable through the second (as with a socket file on another machine's disk).
    let meta = std::fs::symlink_metadata(b.join("shared.sock")).expect("shared.sock");
    assert!(meta.file_type().is_socket());
    let refused = UnixStream::connect(b.join("shared.sock")).map_err(errno);
    assert_eq!(refused.map(drop), Err(libc::ECONNREFUSED));
    UnixStream::connect(a.join("shared.sock")).expect("connect through the first mount");
    drop(shared);

    // 5. It changes them (metadata copies of exported objects, renames across
    // directories as server-side copies), as a local file system does...
    let on_b = change_staged(&b.join("stage"), &b.join("final"));
    let on_local = change_staged(&local.path().join("stage"), &local.path().join("final"));
    assert_same("changes on the second mount", &on_b, &on_local);
    let changed = staged_view(&b.join("final"));
    let local_view = staged_view(&local.path().join("final"));
    assert_eq!(changed, local_view);
    sync(&b.path, Duration::from_secs(60)).expect("sync");
    let objects = server.list_all("types");
    let mtime = format!("{}{:09}ns", MTIME.0, MTIME.1);
    for (name, kind, mode) in STAGED {
        let type_bits = match kind {
            Kind::File => 0o100000,
            Kind::Dir => 0o040000,
            Kind::Symlink => 0o120000,
            Kind::Fifo => 0o010000,
            Kind::Socket => 0o140000,
        };
        let key = if kind == Kind::Dir {
            format!("final/{name}/")
        } else {
            format!("final/{name}")
        };
        assert!(
            !objects.contains_key(&key.replace("final/", "stage/")),
            "{key}"
        );
        let meta = server.metadata("types", &key);
        let want = [
            ("file-permissions", format!("{:07o}", type_bits | mode)),
            ("file-owner", "1000".to_string()),
            ("file-group", "1001".to_string()),
            ("file-mtime", mtime.clone()),
        ];
        for (field, value) in want {
            assert_eq!(meta.get(field), Some(&value), "{key} {field}");
        }
        if matches!(kind, Kind::Fifo | Kind::Socket) {
            assert_eq!(objects.get(&key), Some(&0), "{key}");
        }
    }

    // 6. ...and the first mount sees the changes at its next poll.
    let seen = wait_for(Duration::from_secs(15), || {
        staged_view(&a.join("final")) == changed
    });
    assert!(
        seen,
        "first mount: {:?}\nsecond mount: {changed:?}",
        staged_view(&a.join("final"))
    );
    assert_eq!(
        staged_view(&a.join("final"))["fifo"].0,
        Ok(format!(
            "fifo 620 1000:1001 size=0 mtime={}.{:09}",
            MTIME.0, MTIME.1
        ))
    );
    let gone = std::fs::symlink_metadata(a.join("stage/fifo")).map_err(errno);
    assert_eq!(gone.map(|_| ()), Err(libc::ENOENT));

    assert_answers(&a.path, Duration::from_secs(5));
    assert_answers(&b.path, Duration::from_secs(5));
}

/// ioctls (lsattr's FS_IOC_GETFLAGS here) are refused, every time the same way, and the
/// daemon does not log a warning per call (the kernel asks again on every call, and
/// tools probe them on each file).
#[test]
fn ioctls_are_refused_quietly() {
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    let server = S3Server::start();
    server.create_bucket("ioctl");
    let mount = Mount::start(&server, "s3://ioctl", &[]);
    let path = mount.join("f");
    std::fs::write(&path, "x").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let refusals: Vec<i32> = (0..3)
        .map(|_| {
            let mut flags: libc::c_long = 0;
            // SAFETY: an ioctl that writes one long into `flags`, on an open descriptor.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) };
            assert_eq!(rc, -1);
            errno(std::io::Error::last_os_error())
        })
        .collect();
    assert!(
        refusals.iter().all(|&e| e == refusals[0] && e != 0),
        "{refusals:?}"
    );
    drop(file);
    assert_answers(&mount.path, Duration::from_secs(5));
    assert!(!mount.log().contains("Not Implemented"), "{}", mount.log());
}
