//! Big directories through a real mount: a plain readdir costs the listing only (no
//! request per object, checked in the server's request log), the types a listing cannot
//! tell are reported as DT_UNKNOWN (never a wrong type), and the tools that need them
//! (`find -type`, `ls -l`, lstat) still see symlinks and FIFOs for what they are, with
//! eager import off and on.

mod common;

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{assert_answers, bounded, Mount, S3Server};

const FILES: usize = 300;
const LIMIT: Duration = Duration::from_secs(60);

/// Every entry of a directory with its raw d_type, as getdents gives it (Rust's
/// `DirEntry::file_type` would lstat a DT_UNKNOWN entry and hide it).
fn raw_readdir(dir: &Path) -> Vec<(String, u8)> {
    let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut out = Vec::new();
    // SAFETY: a valid C path; the DIR stream is used only until closedir, and each
    // dirent only before the next readdir.
    unsafe {
        let stream = libc::opendir(path.as_ptr());
        assert!(!stream.is_null(), "opendir {}", dir.display());
        loop {
            let entry = libc::readdir(stream);
            if entry.is_null() {
                break;
            }
            let name = CStr::from_ptr((*entry).d_name.as_ptr())
                .to_string_lossy()
                .into_owned();
            if name != "." && name != ".." {
                out.push((name, (*entry).d_type));
            }
        }
        libc::closedir(stream);
    }
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fill(server: &S3Server, bucket: &str) {
    server.create_bucket(bucket);
    let mut objects: Vec<common::Upload> = (0..FILES)
        .map(|i| (format!("flat/f{i:05}"), b"0123456789".to_vec(), Vec::new()))
        .collect();
    objects.push((
        "flat/link".into(),
        b"f00000".to_vec(),
        vec![("file-permissions".into(), "0120777".into())],
    ));
    objects.push((
        "flat/pipe".into(),
        Vec::new(),
        vec![("file-permissions".into(), "0010644".into())],
    ));
    server.put_many(bucket, objects);
}

/// Requests the server logged since `from` (a length of its log) for objects under
/// `flat/` with `method`: neither the listing (`GET /bucket?list-type=2...`) nor the
/// directory's own marker (`flat/`, looked up once) is one of these.
fn object_requests(server: &S3Server, from: usize, method: &str, bucket: &str) -> usize {
    let needle = format!("{method} /{bucket}/flat/");
    server.request_log()[from..]
        .lines()
        .filter_map(|l| l.split_once(&needle).map(|(_, rest)| rest))
        .filter(|rest| !rest.starts_with([' ', '?']))
        .count()
}

fn check_types(mount: &Mount) {
    let flat = mount.join("flat");
    // find trusts a known d_type and lstats an unknown one.
    let found = bounded(LIMIT, "find -type l", {
        let flat = flat.clone();
        move || run(Command::new("find").arg(&flat).args(["-type", "l"]))
    });
    assert_eq!(found.trim(), flat.join("link").display().to_string());
    let found = bounded(LIMIT, "find -type p", {
        let flat = flat.clone();
        move || run(Command::new("find").arg(&flat).args(["-type", "p"]))
    });
    assert_eq!(found.trim(), flat.join("pipe").display().to_string());
    let regular = bounded(LIMIT, "find -type f", {
        let flat = flat.clone();
        move || run(Command::new("find").arg(&flat).args(["-type", "f"]))
    });
    assert_eq!(regular.lines().count(), FILES);
    assert!(std::fs::symlink_metadata(flat.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_link(flat.join("link")).unwrap(),
        Path::new("f00000")
    );
    assert!(std::fs::symlink_metadata(flat.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    let f = std::fs::symlink_metadata(flat.join("f00042")).unwrap();
    assert!(f.file_type().is_file() && f.len() == 10);
    // `ls -l` shows every type after its lstats.
    let long = bounded(LIMIT, "ls -l", {
        let flat = flat.clone();
        move || run(Command::new("ls").arg("-l").arg(&flat))
    });
    let line = |name: &str| {
        long.lines()
            .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} in ls -l:\n{long}"))
            .to_string()
    };
    assert!(line("link").starts_with('l'), "{}", line("link"));
    assert!(line("pipe").starts_with('p'), "{}", line("pipe"));
    assert!(line("f00299").starts_with('-'), "{}", line("f00299"));
    // Once known, a listing the kernel reads says the exact type. It keeps the listing
    // it has (with DT_UNKNOWN) until the directory changes: a create here.
    std::fs::write(flat.join("new"), b"new").unwrap();
    let listed = raw_readdir(&flat);
    let d_type = |name: &str| listed.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(d_type("link"), libc::DT_LNK);
    assert_eq!(d_type("pipe"), libc::DT_FIFO);
    assert_eq!(d_type("f00007"), libc::DT_REG);
}

#[test]
fn plain_readdir_costs_the_listing_and_types_stay_exact() {
    let server = S3Server::start();
    fill(&server, "bigdir");
    let mount = Mount::start(
        &server,
        "s3://bigdir",
        &["--import-size-threshold", "0", "--poll-interval", "60s"],
    );
    let flat = mount.join("flat");
    let from = server.request_log().len();
    let listed = bounded(LIMIT, "readdir", {
        let flat = flat.clone();
        move || raw_readdir(&flat)
    });
    assert_eq!(listed.len(), FILES + 2);
    // Unknown, never a guess: a small object may be a symlink, FIFO or socket.
    for (name, d_type) in &listed {
        assert_eq!(*d_type, libc::DT_UNKNOWN, "{name}");
    }
    let names = bounded(LIMIT, "ls -f", {
        let flat = flat.clone();
        move || run(Command::new("ls").arg("-f").arg(&flat))
    });
    assert_eq!(names.lines().count(), FILES + 4, "with . and ..");
    assert_eq!(
        object_requests(&server, from, "HEAD", "bigdir"),
        0,
        "no HEAD per object"
    );
    assert_eq!(
        object_requests(&server, from, "GET", "bigdir"),
        0,
        "no GET per object"
    );

    check_types(&mount);
    assert_answers(&mount.path, Duration::from_secs(10));
}

#[test]
fn with_eager_import_readdir_waits_for_no_import() {
    let server = S3Server::start();
    fill(&server, "bigeager");
    let mount = Mount::start(&server, "s3://bigeager", &["--poll-interval", "2s"]);
    let flat = mount.join("flat");
    let from = server.request_log().len();
    let listed = bounded(LIMIT, "readdir", {
        let flat = flat.clone();
        move || raw_readdir(&flat)
    });
    assert_eq!(listed.len(), FILES + 2);
    // readdir does not HEAD; the eager import's GETs (data and metadata in one) run behind it.
    assert_eq!(
        object_requests(&server, from, "HEAD", "bigeager"),
        0,
        "no HEAD per object"
    );
    for (name, d_type) in &listed {
        assert!(
            [libc::DT_UNKNOWN, libc::DT_REG].contains(d_type) || name == "link" || name == "pipe",
            "{name}: {d_type}"
        );
        if name == "link" {
            assert!(
                [libc::DT_UNKNOWN, libc::DT_LNK].contains(d_type),
                "link: {d_type}"
            );
        }
        if name == "pipe" {
            assert!(
                [libc::DT_UNKNOWN, libc::DT_FIFO].contains(d_type),
                "pipe: {d_type}"
            );
        }
    }
    check_types(&mount);
    let body = std::fs::read(flat.join("f00123")).unwrap();
    assert_eq!(body, b"0123456789");
    assert_answers(&mount.path, Duration::from_secs(10));
}
