//! Import rules (`--import-rule`, S3 Files' ImportDataRule) through a real mount against a
//! real S3 server (moto): each file is imported by the rule with the longest prefix of
//! its path, on its trigger, only below its size bound. The server's request log says
//! which GETs happened; the metrics line of `s3files status` says which trigger did it.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_answers, bounded, run_s3files, wait_for, Mount, S3Server};

/// Time limit of one file-system call on the mount.
const CALL: Duration = Duration::from_secs(10);
/// Time limit for background imports to show in the metrics.
const SETTLE: Duration = Duration::from_secs(20);

const BUCKET: &str = "rules";

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The metrics line of `s3files status PATH`.
fn metrics(path: &Path) -> String {
    let (out, _) = run_s3files(&["status", path.to_str().unwrap()], &[], CALL);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("metrics: "));
    line.unwrap_or_else(|| panic!("no metrics line in:\n{text}"))
        .to_string()
}

/// The number that follows the first `label` in `text`.
fn number_after(text: &str, label: &str) -> u64 {
    let rest = text
        .split_once(label)
        .unwrap_or_else(|| panic!("no '{label}' in {text}"))
        .1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("'{label}' in {text}"))
}

/// Files imported on listing and on open, and the bytes each brought in.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Imports {
    on_listing: u64,
    on_open: u64,
    bytes_on_listing: u64,
    bytes_on_open: u64,
}

fn imports(root: &Path) -> Imports {
    let line = metrics(root);
    // "on open=" is in "imports on open=" too: the bytes are read after their label.
    let (_, bytes) = line
        .split_once("imported bytes")
        .unwrap_or_else(|| panic!("no import bytes in {line}"));
    Imports {
        on_listing: number_after(&line, "eager imports="),
        on_open: number_after(&line, "imports on open="),
        bytes_on_listing: number_after(bytes, " on listing="),
        bytes_on_open: number_after(bytes, " on open="),
    }
}

/// Lists a directory on the mount (bounded); returns its names.
fn list(path: PathBuf) -> Vec<String> {
    let what = format!("ls {}", path.display());
    bounded(CALL, &what, move || {
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    })
}

fn read(path: PathBuf) -> Vec<u8> {
    let what = format!("read {}", path.display());
    bounded(CALL, &what, move || {
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

#[test]
fn each_prefix_imports_on_its_trigger_below_its_bound() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let files: &[(&str, usize)] = &[
        // Root rule: files under 4 KiB, on listing.
        ("top-small.txt", 2000),
        ("top-big.txt", 10_000),
        // lazy/: ON_FILE_ACCESS, under 1 MiB.
        ("lazy/a.txt", 5000),
        ("lazy/b.bin", 600 << 10),
        ("lazy/huge.bin", 2 << 20),
        // wide/: on listing, under 512 KiB, for wide/sub/ too.
        ("wide/s1.bin", 200 << 10),
        ("wide/s2.bin", 400 << 10),
        ("wide/big.bin", 700 << 10),
        ("wide/sub/s3.bin", 300 << 10),
    ];
    for (i, (key, len)) in files.iter().enumerate() {
        server.put(BUCKET, key, body(i as u8, *len), &[]);
    }
    let gets = |key: &str| server.count_requests("GET", BUCKET, key);
    let mut mount = Mount::start(
        &server,
        &format!("s3://{BUCKET}"),
        &[
            "--import-rule",
            "prefix=lazy/,trigger=ON_FILE_ACCESS,size-less-than=1MiB",
            "--import-rule",
            "prefix=wide/,sizeLessThan=524288",
            "--import-rule",
            "prefix=,trigger=ON_DIRECTORY_FIRST_ACCESS,size-less-than=4KiB",
        ],
    );
    let root = mount.path.clone();
    let none = Imports {
        on_listing: 0,
        on_open: 0,
        bytes_on_listing: 0,
        bytes_on_open: 0,
    };

    // The root: its one file under 4 KiB.
    assert_eq!(
        list(root.clone()).len(),
        4,
        "top-small, top-big, lazy, wide"
    );
    assert!(
        wait_for(SETTLE, || imports(&root).on_listing == 1),
        "{:?}",
        imports(&root)
    );
    assert_eq!((gets("top-small.txt"), gets("top-big.txt")), (1, 0));

    // lazy/ is listed first, then wide/: once wide/'s imports are done, anything lazy/'s
    // listing had wrongly started would have shown too.
    assert_eq!(list(mount.join("lazy")).len(), 3);
    assert_eq!(list(mount.join("wide")).len(), 4);
    assert!(
        wait_for(SETTLE, || imports(&root).on_listing == 3),
        "{:?}",
        imports(&root)
    );
    assert_eq!(list(mount.join("wide/sub")), ["s3.bin"]);
    assert!(
        wait_for(SETTLE, || imports(&root).on_listing == 4),
        "{:?}",
        imports(&root)
    );
    let listed = Imports {
        on_listing: 4,
        bytes_on_listing: 2000 + (200 << 10) + (400 << 10) + (300 << 10),
        ..none
    };
    assert_eq!(imports(&root), listed);
    // One GET per imported file (bytes and metadata together), none for the big one.
    for key in ["wide/s1.bin", "wide/s2.bin", "wide/sub/s3.bin"] {
        assert_eq!(gets(key), 1, "{key}");
    }
    assert_eq!(gets("wide/big.bin"), 0);
    for key in ["lazy/a.txt", "lazy/b.bin", "lazy/huge.bin"] {
        assert_eq!(gets(key), 0, "listing lazy/ fetched {key}");
    }

    // Opening a file under lazy/ imports it, without a read.
    let a = mount.join("lazy/a.txt");
    let opened = a.clone();
    let file = bounded(CALL, "open lazy/a.txt", move || {
        std::fs::File::open(&opened).unwrap()
    });
    assert!(
        wait_for(SETTLE, || imports(&root).on_open == 1),
        "{:?}",
        imports(&root)
    );
    assert_eq!(gets("lazy/a.txt"), 1);
    let mut file = file;
    let data = bounded(CALL, "read lazy/a.txt", move || {
        let mut data = Vec::new();
        file.read_to_end(&mut data).unwrap();
        data
    });
    assert_eq!(data, body(2, 5000));
    assert_eq!(read(a.clone()), body(2, 5000));
    assert_eq!(gets("lazy/a.txt"), 1, "reads after the import need no GET");

    // A file of three cache blocks read straight after its open: the reads share the
    // import's GETs (one per block), and it stays cached.
    let b = mount.join("lazy/b.bin");
    assert_eq!(read(b.clone()), body(3, 600 << 10));
    assert!(
        wait_for(SETTLE, || imports(&root).on_open == 2),
        "{:?}",
        imports(&root)
    );
    assert_eq!(gets("lazy/b.bin"), 3);
    assert_eq!(read(b.clone()), body(3, 600 << 10));
    assert_eq!(gets("lazy/b.bin"), 3);

    // At or above the bound: read on demand, never imported.
    assert_eq!(read(mount.join("lazy/huge.bin")), body(4, 2 << 20));
    assert!(gets("lazy/huge.bin") > 0);
    assert_eq!(
        imports(&root),
        Imports {
            on_open: 2,
            bytes_on_open: 5000 + (600 << 10),
            ..listed
        }
    );
    let (out, _) = run_s3files(&["status", a.to_str().unwrap()], &[], CALL);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cached: 5000 of 5000 bytes"), "{text}");

    assert_answers(&root, CALL);
    assert!(mount.stop().success());
}
