//! Read path through a real FUSE mount against a real S3 server (moto): what `find`,
//! `stat` and `sha256sum` show must be exactly what the bucket holds, under the
//! namespace and metadata rules of docs/SEMANTICS.md.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{block_on, sha256, Meta, Mount, S3Server};

/// The test's own record of the bucket: key -> (body, metadata).
type Objects = BTreeMap<String, (Vec<u8>, Meta)>;

/// What the mount should show for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        sha: String,
        size: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: Option<i64>,
    },
    Symlink {
        target: String,
    },
}

fn segments_ok(segments: &[&str]) -> bool {
    segments
        .iter()
        .all(|s| !s.is_empty() && *s != "." && *s != ".." && s.len() <= 255 && !s.contains('\0'))
}

/// Applies the namespace rules to a bucket's keys, independently of the daemon's code.
fn expected_tree(objects: &Objects) -> BTreeMap<String, Expect> {
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut files = BTreeMap::new();
    for (key, (body, meta)) in objects {
        let segments: Vec<&str> = key.split('/').collect();
        let (is_marker, path_segments) = if key.ends_with('/') {
            (true, &segments[..segments.len() - 1])
        } else {
            (false, &segments[..])
        };
        // Every leading run of valid segments is a directory that shows.
        for depth in 1..path_segments.len() {
            if !segments_ok(&path_segments[..depth]) {
                break;
            }
            dirs.insert(path_segments[..depth].join("/"));
        }
        if !segments_ok(path_segments) {
            continue;
        }
        let path = path_segments.join("/");
        if is_marker {
            dirs.insert(path);
        } else {
            files.insert(path, (body.clone(), meta.clone()));
        }
    }
    let meta_of = |meta: &[(String, String)], name: &str| {
        meta.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    let mut out = BTreeMap::new();
    for dir in &dirs {
        let marker = objects.get(&format!("{dir}/"));
        let meta = marker.map(|(_, m)| m.clone()).unwrap_or_default();
        let mode = meta_of(&meta, "file-permissions")
            .map(|p| u32::from_str_radix(&p, 8).unwrap() & 0o7777)
            .unwrap_or(0o755);
        let uid = meta_of(&meta, "file-owner").map_or(0, |v| v.parse().unwrap());
        let gid = meta_of(&meta, "file-group").map_or(0, |v| v.parse().unwrap());
        out.insert(dir.clone(), Expect::Dir { mode, uid, gid });
    }
    for (path, (body, meta)) in files {
        if dirs.contains(&path) {
            continue; // directory wins
        }
        let perms = meta_of(&meta, "file-permissions").map(|p| u32::from_str_radix(&p, 8).unwrap());
        if perms.is_some_and(|p| p & 0o170000 == 0o120000) {
            out.insert(
                path,
                Expect::Symlink {
                    target: String::from_utf8(body).unwrap(),
                },
            );
            continue;
        }
        out.insert(
            path,
            Expect::File {
                sha: sha256(&body),
                size: body.len() as u64,
                mode: perms.map_or(0o644, |p| p & 0o7777),
                uid: meta_of(&meta, "file-owner").map_or(0, |v| v.parse().unwrap()),
                gid: meta_of(&meta, "file-group").map_or(0, |v| v.parse().unwrap()),
                mtime: meta_of(&meta, "file-mtime")
                    .map(|v| v.trim_end_matches("ns").parse::<i64>().unwrap() / 1_000_000_000),
            },
        );
    }
    out
}

/// Deterministic pseudo-random bytes.
fn body(seed: usize, len: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn meta(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn large_tree_matches_bucket_exactly() {
    let server = S3Server::start();
    server.create_bucket("tree");
    let mut objects: Objects = BTreeMap::new();
    let mut n = 0;
    for d in 0..10 {
        for s in 0..10 {
            for f in 0..20 {
                n += 1;
                objects.insert(
                    format!("data/d{d}/s{s}/f{f:02}.txt"),
                    (body(n, n * 7 % 3000), vec![]),
                );
            }
        }
    }
    // Hostile keys: each is skipped and counted, never shown.
    let long = "n".repeat(256);
    for key in [
        "hostile//empty-segment".to_string(),
        "./dot-first".into(),
        "../dotdot-first".into(),
        "hostile/./dot".into(),
        "hostile/../dotdot".into(),
        format!("hostile/{long}"),
        "hostile/nul\0byte".into(),
    ] {
        objects.insert(key, (b"hostile".to_vec(), vec![]));
    }
    objects.insert("hostile/fine.txt".into(), (b"fine".to_vec(), vec![]));
    // A marker-only empty directory with metadata.
    objects.insert(
        "empty-dir/".into(),
        (
            vec![],
            meta(&[
                ("file-permissions", "0040750"),
                ("file-owner", "1234"),
                ("file-group", "99"),
            ]),
        ),
    );
    // Directory wins over an object of the same name.
    objects.insert("clash".into(), (b"hidden".to_vec(), vec![]));
    objects.insert("clash/child".into(), (b"visible".to_vec(), vec![]));
    // S3 Files metadata.
    objects.insert(
        "meta/owned.bin".into(),
        (
            body(99, 5000),
            meta(&[
                ("file-owner", "1000"),
                ("file-group", "1000"),
                ("file-permissions", "0100640"),
                ("file-mtime", "1600000000123456789ns"),
            ]),
        ),
    );
    objects.insert(
        "meta/link".into(),
        (
            b"owned.bin".to_vec(),
            meta(&[("file-permissions", "0120777")]),
        ),
    );
    objects.insert(
        "meta/".into(),
        (vec![], meta(&[("file-permissions", "0040711")])),
    );
    assert!(objects.len() >= 2000);

    let uploads = objects
        .iter()
        .map(|(k, (b, m))| (k.clone(), b.clone(), m.clone()))
        .collect();
    server.put_many("tree", uploads);
    // The independent client sees every key we put.
    let in_bucket = server.list_all("tree");
    assert_eq!(in_bucket.len(), objects.len(), "bucket holds every object");

    let expected = expected_tree(&objects);
    let mount = Mount::start(&server, "s3://tree", &[]);

    // `find` with stat fields, run by the real tool.
    let out = Command::new("find")
        .arg(&mount.path)
        .arg("-mindepth")
        .arg("1")
        .args(["-printf", "%y %m %U %G %s %P\\0"])
        .output()
        .expect("find");
    assert!(
        out.status.success(),
        "find failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = BTreeMap::new();
    for record in out.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let record = String::from_utf8(record.to_vec()).unwrap();
        let mut parts = record.splitn(6, ' ');
        let kind = parts.next().unwrap().to_string();
        let mode = u32::from_str_radix(parts.next().unwrap(), 8).unwrap();
        let uid: u32 = parts.next().unwrap().parse().unwrap();
        let gid: u32 = parts.next().unwrap().parse().unwrap();
        let size: u64 = parts.next().unwrap().parse().unwrap();
        let path = parts.next().unwrap().to_string();
        seen.insert(path, (kind, mode, uid, gid, size));
    }
    let seen_paths: BTreeSet<&String> = seen.keys().collect();
    let want_paths: BTreeSet<&String> = expected.keys().collect();
    assert_eq!(
        seen_paths, want_paths,
        "find lists exactly the expected paths"
    );

    // sha256sum over every regular file, by the real tool.
    let files: Vec<&String> = expected
        .iter()
        .filter(|(_, e)| matches!(e, Expect::File { .. }))
        .map(|(p, _)| p)
        .collect();
    let mut sums = BTreeMap::new();
    for chunk in files.chunks(500) {
        let out = Command::new("sha256sum")
            .current_dir(&mount.path)
            .args(chunk.iter().map(|p| p.as_str()))
            .output()
            .expect("sha256sum");
        assert!(
            out.status.success(),
            "sha256sum: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let (sum, path) = line.split_once("  ").unwrap();
            sums.insert(path.to_string(), sum.to_string());
        }
    }

    for (path, want) in &expected {
        let (kind, mode, uid, gid, size) = &seen[path];
        match want {
            Expect::Dir {
                mode: m,
                uid: u,
                gid: g,
            } => {
                assert_eq!((kind.as_str(), mode, uid, gid), ("d", m, u, g), "{path}");
            }
            Expect::Symlink { target } => {
                assert_eq!(kind, "l", "{path}");
                let link = std::fs::read_link(mount.join(path)).unwrap();
                assert_eq!(link.to_str().unwrap(), target, "{path}");
            }
            Expect::File {
                sha,
                size: s,
                mode: m,
                uid: u,
                gid: g,
                mtime,
            } => {
                assert_eq!(
                    (kind.as_str(), mode, uid, gid, size),
                    ("f", m, u, g, s),
                    "{path}"
                );
                assert_eq!(&sums[path], sha, "{path} content");
                let stat = std::fs::metadata(mount.join(path)).unwrap();
                match mtime {
                    Some(secs) => assert_eq!(stat.mtime(), *secs, "{path} file-mtime"),
                    None => {
                        // Last-Modified, as the independent client reports it.
                        let head = block_on(
                            server
                                .client()
                                .head_object()
                                .bucket("tree")
                                .key(path)
                                .send(),
                        )
                        .unwrap();
                        assert_eq!(stat.mtime(), head.last_modified().unwrap().secs(), "{path}");
                    }
                }
            }
        }
    }
    // The nanosecond part of file-mtime survives too.
    let owned = std::fs::metadata(mount.join("meta/owned.bin")).unwrap();
    assert_eq!(owned.mtime_nsec(), 123_456_789);

    // Hostile keys and the hidden object are counted in the log, once each.
    let log = mount.log();
    let skipped = log.matches("import failure").count();
    assert_eq!(skipped, 7, "skipped keys logged once each:\n{log}");
    assert_eq!(log.matches("object hidden").count(), 1, "{log}");
    assert!(log.contains("key=\"clash\""), "{log}");
}

#[test]
fn large_object_reads_back_with_bounded_memory() {
    // 1 GiB by default (the foundation's acceptance size); S3FILES_LARGE_OBJECT_MIB
    // changes it for quicker local runs.
    let mib: usize = std::env::var("S3FILES_LARGE_OBJECT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let server = S3Server::start();
    server.create_bucket("big");
    let part = 64 << 20;
    let expected_sha = block_on(upload_multipart(
        &server,
        "big",
        "large.bin",
        mib << 20,
        part,
    ));
    let mount = Mount::start(&server, "s3://big", &[]);
    let started = SystemTime::now();
    let sha = common::sha256_file(&mount.join("large.bin"));
    let elapsed = started.elapsed().unwrap_or(Duration::ZERO);
    let peak = mount.peak_rss();
    eprintln!(
        "read {mib} MiB in {:.1} s ({:.1} MiB/s), daemon peak RSS {:.1} MiB",
        elapsed.as_secs_f64(),
        mib as f64 / elapsed.as_secs_f64(),
        peak as f64 / (1 << 20) as f64
    );
    assert_eq!(sha, expected_sha);
    assert!(peak > 0, "VmHWM readable");
    assert!(peak < 200 << 20, "daemon peak RSS {peak} bytes >= 200 MiB");
}

/// Uploads `size` bytes of deterministic data in parts; returns its sha256.
async fn upload_multipart(
    server: &S3Server,
    bucket: &str,
    key: &str,
    size: usize,
    part: usize,
) -> String {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    use sha2::Digest;
    let client = server.client();
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap().to_string();
    let mut hasher = sha2::Sha256::new();
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut number = 1;
    while offset < size {
        let len = part.min(size - offset);
        let data = body(number as usize, len);
        hasher.update(&data);
        let out = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(number)
            .body(ByteStream::from(data))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(String::from))
                .build(),
        );
        offset += len;
        number += 1;
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn prefix_mount_shows_only_the_prefix() {
    let server = S3Server::start();
    server.create_bucket("pfx");
    server.put("pfx", "team/a/notes.txt", "inside", &[]);
    server.put("pfx", "team/top.txt", "top", &[]);
    server.put("pfx", "teamwork.txt", "sibling", &[]);
    server.put("pfx", "other/secret.txt", "outside", &[]);
    let mount = Mount::start(&server, "s3://pfx/team", &[]);
    let mut names: Vec<String> = std::fs::read_dir(&mount.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "top.txt"]);
    assert_eq!(
        std::fs::read_to_string(mount.join("a/notes.txt")).unwrap(),
        "inside"
    );
    // `..` at the mount root is the kernel's parent directory, never a key outside.
    assert!(!mount.join("../other").exists() || !mount.join("../other/secret.txt").exists());
    assert!(std::fs::metadata(mount.join("teamwork.txt")).is_err());
}

#[test]
fn read_only_mount_refuses_every_write() {
    let server = S3Server::start();
    server.create_bucket("rodata");
    server.put("rodata", "f.txt", "data", &[]);
    let mount = Mount::start(
        &server,
        "s3://rodata",
        &["--read-only", "--write-back-delay", "1s"],
    );
    let erofs = Some(libc::EROFS);
    let err = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(err(std::fs::write(mount.join("new.txt"), "x")), erofs);
    assert_eq!(err(std::fs::write(mount.join("f.txt"), "x")), erofs);
    assert_eq!(err(std::fs::create_dir(mount.join("d"))), erofs);
    assert_eq!(err(std::fs::remove_file(mount.join("f.txt"))), erofs);
    assert_eq!(
        err(std::fs::rename(mount.join("f.txt"), mount.join("g.txt"))),
        erofs
    );
    assert_eq!(
        err(std::fs::set_permissions(
            mount.join("f.txt"),
            std::fs::Permissions::from_mode(0o600)
        )),
        erofs
    );
    assert_eq!(
        err(std::os::unix::fs::symlink("f.txt", mount.join("l"))),
        erofs
    );
    assert_eq!(
        err(std::fs::hard_link(mount.join("f.txt"), mount.join("h"))),
        erofs
    );
    let out = Command::new("findmnt")
        .arg("-no")
        .arg("OPTIONS")
        .arg(&mount.path)
        .output();
    if let Ok(out) = out {
        let options = String::from_utf8_lossy(&out.stdout);
        assert!(
            options.trim().split(',').any(|o| o == "ro"),
            "mount options: {options}"
        );
    }
    // The bucket is untouched and the file still reads.
    assert_eq!(
        std::fs::read_to_string(mount.join("f.txt")).unwrap(),
        "data"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(server.list_all("rodata").len(), 1);
    assert_eq!(server.get("rodata", "f.txt"), b"data");
}

#[test]
fn status_xattr_and_unsupported_xattrs() {
    let server = S3Server::start();
    server.create_bucket("xattr");
    server.put("xattr", "dir/f.txt", "data", &[]);
    let mount = Mount::start(&server, "s3://xattr", &[]);
    let status = xattr_get(&mount.join("dir/f.txt"), "user.s3files.status").unwrap();
    let status = String::from_utf8(status).unwrap();
    assert!(status.contains("key: s3://xattr/dir/f.txt"), "{status}");
    assert!(status.contains("path: /dir/f.txt"), "{status}");
    assert!(status.contains("state: synced"), "{status}");
    assert_eq!(
        xattr_get(&mount.join("dir/f.txt"), "user.other").unwrap_err(),
        libc::ENOTSUP
    );
}

fn xattr_get(path: &std::path::Path, name: &str) -> Result<Vec<u8>, i32> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the length passed.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(len as usize);
    Ok(buf)
}

#[test]
fn access_point_identity_is_enforced() {
    let server = S3Server::start();
    server.create_bucket("apoint");
    server.put("apoint", "public.txt", "everyone", &[]);
    server.put(
        "apoint",
        "private.txt",
        "root only",
        &[("file-permissions", "0100600")],
    );
    server.put(
        "apoint",
        "mine.txt",
        "agent's",
        &[
            ("file-permissions", "0100600"),
            ("file-owner", "1000"),
            ("file-group", "1000"),
        ],
    );
    let mount = Mount::start(&server, "s3://apoint", &["--uid", "1000", "--gid", "1000"]);
    // The test runs as root, but every request acts as uid 1000.
    assert_eq!(
        std::fs::read_to_string(mount.join("public.txt")).unwrap(),
        "everyone"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("mine.txt")).unwrap(),
        "agent's"
    );
    let err = std::fs::read_to_string(mount.join("private.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
}

#[test]
fn directory_paging_beyond_one_listing_page() {
    let server = S3Server::start();
    server.create_bucket("paged");
    let objects = (0..2500)
        .map(|i| (format!("many/f{i:05}"), i.to_string().into_bytes(), vec![]))
        .collect();
    server.put_many("paged", objects);
    let mount = Mount::start(&server, "s3://paged", &[]);
    let count = std::fs::read_dir(mount.join("many")).unwrap().count();
    assert_eq!(count, 2500);
    assert_eq!(
        std::fs::read_to_string(mount.join("many/f02499")).unwrap(),
        "2499"
    );
}

#[test]
fn sigterm_unmounts_cleanly() {
    let server = S3Server::start();
    server.create_bucket("term");
    server.put("term", "f", "x", &[]);
    let mut mount = Mount::start(&server, "s3://term", &[]);
    assert_eq!(std::fs::read_to_string(mount.join("f")).unwrap(), "x");
    let status = mount.stop();
    assert!(status.success(), "daemon exit status {status}");
    assert!(
        !common::is_mounted(&mount.path),
        "still mounted after SIGTERM"
    );
    let log = mount.log();
    assert!(log.contains("unmounting"), "{log}");
    assert!(
        log.contains("s3 requests:"),
        "metrics summary at exit: {log}"
    );
}

#[test]
fn files_keep_their_object_timestamps() {
    let server = S3Server::start();
    server.create_bucket("times");
    server.put(
        "times",
        "f",
        "x",
        &[("file-mtime", "1500000000000000000ns")],
    );
    let mount = Mount::start(&server, "s3://times", &[]);
    let modified = std::fs::metadata(mount.join("f"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(modified, UNIX_EPOCH + Duration::from_secs(1_500_000_000));
}

#[test]
fn store_outage_gives_eio_not_a_hang() {
    let mut server = S3Server::start();
    server.create_bucket("outage");
    server.put("outage", "listed/a.txt", "a", &[]);
    // Above the eager-import threshold, and never read: not cached.
    server.put("outage", "listed/big.bin", vec![7u8; 200 << 10], &[]);
    server.put("outage", "unlisted/b.txt", "b", &[]);
    let mount = Mount::start(&server, "s3://outage", &[]);
    assert_eq!(
        std::fs::read_to_string(mount.join("listed/a.txt")).unwrap(),
        "a"
    );
    assert!(mount.join("listed/big.bin").exists());
    server.kill();
    // Known metadata and cached data are still served; anything that needs S3 fails with
    // EIO, promptly.
    let started = std::time::Instant::now();
    assert_eq!(
        std::fs::read_to_string(mount.join("listed/a.txt")).unwrap(),
        "a"
    );
    let err = std::fs::read(mount.join("listed/big.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = std::fs::read_dir(mount.join("unlisted")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "outage answered after {elapsed:?}"
    );
    assert!(mount.log().contains("S3 request failed"), "{}", mount.log());
}

#[test]
fn statfs_reports_a_large_free_file_system() {
    let server = S3Server::start();
    server.create_bucket("statfs");
    server.put("statfs", "f", "x", &[]);
    let mount = Mount::start(&server, "s3://statfs", &[]);
    let path = std::ffi::CString::new(mount.path.to_str().unwrap()).unwrap();
    // SAFETY: a valid path and a zeroed statvfs for the call to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
    assert_eq!(stat.f_namemax, 255);
    assert!(
        stat.f_blocks as u128 * stat.f_frsize as u128 >= 1 << 50,
        "capacity"
    );
    assert_eq!(stat.f_bfree, stat.f_blocks);
}
