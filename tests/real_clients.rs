//! Real clients on a real mount (a whole bucket, and below a prefix; 1 s write-back):
//! `cp -a` of a source tree, SQLite in WAL and rollback-journal modes, a zip archive
//! written, tested and unpacked, atomic saves, sparse files and truncation, a shared
//! mapping, two appenders, a file used after its unlink, symlinks and FIFOs, and git's
//! test of whether directory mtimes move as its untracked cache needs. Each client
//! checks its own results; then `s3files sync` must succeed and every regular file must
//! be in the bucket with the mount's bytes (read with an independent client), and the
//! daemon must exit cleanly with no failed export in its log.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{assert_answers, bounded, sync, Mount, S3Server};

/// Runs `program args` in `dir` (at most two minutes); panics with its output on failure.
fn run(dir: &Path, program: &str, args: &[&str]) {
    let (dir, program) = (dir.to_path_buf(), program.to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let shown = format!("{program} {args:?}");
    let out = bounded(Duration::from_secs(120), &shown, move || {
        Command::new(&program)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("spawn")
    });
    assert!(
        out.status.success(),
        "{shown}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every regular file below `root` (not lost+found), as paths relative to it.
fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(".s3files-lost+found") {
                continue;
            }
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

/// The clients that have no command line of their own, in Python's standard library
/// (sqlite3, zipfile, mmap): each asserts its own results.
const CLIENTS: &str = r#"
import mmap, os, sqlite3, sys, tempfile, zipfile
m = sys.argv[1]

# SQLite, WAL: 20 transactions of 500 rows, then an integrity check from a new connection.
db = sqlite3.connect(os.path.join(m, "wal.db"))
db.execute("pragma journal_mode=wal")
db.execute("create table t(a, b)")
for i in range(20):
    with db:
        db.executemany("insert into t values (?, randomblob(200))", [(i * 500 + j,) for j in range(500)])
db.execute("pragma wal_checkpoint(truncate)")
db.close()
db = sqlite3.connect(os.path.join(m, "wal.db"))
assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
assert db.execute("select count(*), sum(a) from t").fetchone() == (10000, 49995000)
db.close()

# SQLite, rollback journal: updates and a rolled-back transaction.
db = sqlite3.connect(os.path.join(m, "journal.db"))
db.execute("create table t(a)")
with db:
    db.executemany("insert into t values (?)", [(i,) for i in range(1000)])
with db:
    db.execute("update t set a = a + 1")
try:
    with db:
        db.execute("delete from t")
        raise RuntimeError("roll back")
except RuntimeError:
    pass
assert db.execute("select count(*), sum(a) from t").fetchone() == (1000, 500500)
assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
db.close()

# A zip archive of the copied tree: written, tested, unpacked, compared.
src = os.path.join(m, "src-copy")
with zipfile.ZipFile(os.path.join(m, "src.zip"), "w", zipfile.ZIP_DEFLATED) as z:
    for root, _, files in os.walk(src):
        for f in files:
            p = os.path.join(root, f)
            z.write(p, os.path.relpath(p, m))
with zipfile.ZipFile(os.path.join(m, "src.zip")) as z:
    assert z.testzip() is None
    z.extractall(os.path.join(m, "unzipped"))
for root, _, files in os.walk(src):
    for f in files:
        p = os.path.join(root, f)
        q = os.path.join(m, "unzipped", os.path.relpath(p, m))
        assert open(p, "rb").read() == open(q, "rb").read(), q

# Atomic saves: a temporary file renamed over the target, five times.
os.makedirs(os.path.join(m, "py"))
target = os.path.join(m, "py", "settings.json")
for i in range(5):
    fd, tmp = tempfile.mkstemp(dir=os.path.join(m, "py"))
    os.write(fd, b'{"version": %d}' % i)
    os.fsync(fd)
    os.close(fd)
    os.replace(tmp, target)
assert open(target, "rb").read() == b'{"version": 4}'

# A sparse file, cut and extended: holes read as zeros.
p = os.path.join(m, "py", "sparse")
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, b"end", 5 << 20)
os.ftruncate(fd, 3 << 20)
os.ftruncate(fd, 4 << 20)
os.pwrite(fd, b"mid", 1 << 20)
os.close(fd)
data = open(p, "rb").read()
assert len(data) == 4 << 20 and data[1 << 20:(1 << 20) + 3] == b"mid"
assert data.count(0) == len(data) - 3

# A shared mapping written and flushed.
p = os.path.join(m, "py", "mapped")
open(p, "wb").write(bytes(8192))
with open(p, "r+b") as f:
    mm = mmap.mmap(f.fileno(), 8192)
    mm[100:105] = b"hello"
    mm.flush()
    mm.close()
assert open(p, "rb").read()[100:105] == b"hello"

# Two descriptors appending in turn.
p = os.path.join(m, "py", "log")
a = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
b = os.open(p, os.O_WRONLY | os.O_APPEND)
for i in range(100):
    os.write(a if i % 2 else b, b"line %03d\n" % i)
os.close(a)
os.close(b)
assert open(p, "rb").read() == b"".join(b"line %03d\n" % i for i in range(100))

# Read and written after its unlink, through the open descriptor.
p = os.path.join(m, "py", "gone")
with open(p, "w+") as f:
    f.write("still here")
    f.flush()
    os.unlink(p)
    f.seek(0)
    assert f.read() == "still here"
    f.write(" and more")
assert not os.path.exists(p)

# A symlink and a FIFO.
os.symlink("src-copy/lib.rs", os.path.join(m, "link"))
assert open(os.path.join(m, "link"), "rb").read() == open(os.path.join(src, "lib.rs"), "rb").read()
os.mkfifo(os.path.join(m, "fifo"))
print("clients ok")
"#;

/// Runs every client on a mount of `source` (bucket "clients", `prefix` its key prefix),
/// syncs, and checks the bucket and the daemon's exit.
fn clients_leave_the_bucket_equal_to_the_mount(source: &str, prefix: &str) {
    let server = S3Server::start();
    server.create_bucket("clients");
    if !prefix.is_empty() {
        // A prefix mount needs its prefix to exist.
        server.put("clients", prefix, "", &[]);
    }
    let mut mount = Mount::start(&server, source, &["--write-back-delay", "1s"]);
    let root = mount.path.clone();
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");

    let (from, copy) = (tree.to_str().unwrap(), root.join("src-copy"));
    let copy = copy.to_str().unwrap();
    run(&root, "cp", &["-a", from, copy]);
    run(&root, "diff", &["-r", from, copy]);
    run(&root, "python3", &["-c", CLIENTS, root.to_str().unwrap()]);
    // git's untracked cache skips directories whose mtime did not move; it is only
    // usable where adding and removing entries moves it, which this checks.
    run(&root, "git", &["init", "-q", "git-repo"]);
    run(
        &root.join("git-repo"),
        "git",
        &["update-index", "--test-untracked-cache"],
    );

    sync(&root, Duration::from_secs(60)).unwrap();
    let objects = server.list_all("clients");
    let files = regular_files(&root);
    assert!(files.len() > 50, "{files:?}");
    for file in &files {
        let key = format!("{prefix}{}", file.to_str().unwrap());
        assert!(objects.contains_key(&key), "{key} is not in the bucket");
        let local = std::fs::read(root.join(file)).unwrap();
        assert!(
            server.get("clients", &key) == local,
            "{key} differs in the bucket"
        );
    }
    assert!(objects.contains_key(&format!("{prefix}link")));
    assert!(objects.contains_key(&format!("{prefix}fifo")));
    assert!(!objects.keys().any(|k| k.ends_with("gone")), "{objects:?}");
    assert!(objects.keys().all(|k| k.starts_with(prefix)), "{objects:?}");

    assert_answers(&root, Duration::from_secs(10));
    let status = mount.stop();
    assert!(status.success(), "{}", mount.log());
    let log = mount.log();
    assert!(
        !log.contains("export failed") && !log.contains("Not Implemented"),
        "{log}"
    );
}

#[test]
fn real_clients_on_a_whole_bucket() {
    clients_leave_the_bucket_equal_to_the_mount("s3://clients", "");
}

#[test]
fn real_clients_below_a_prefix() {
    clients_leave_the_bucket_equal_to_the_mount("s3://clients/team/work", "team/work/");
}
