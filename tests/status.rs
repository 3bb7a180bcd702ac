//! The S3 Files status interface through a real mount, read exactly as S3 Files users
//! script it: `getfattr --only-values -n "user.s3files.status;$(date -u +%s)" PATH`
//! (the timestamp keeps NFS clients from answering from their xattr cache), fields
//! `S3Key`, `FilePath` and `ExportError`; `s3files status PATH` prints the same. Also the
//! PathTooLong export error as a user meets it, the export errors of S3 error answers
//! (injected by a fault proxy in front of moto), unsupported custom xattrs, and S3 Files'
//! limits as a program meets them.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy, KeyMatch};
use common::{assert_answers, run_s3files, sync, wait_for, Mount, S3Server};

/// Runs a shell script with the path as `$1`; (success, stdout, stderr).
fn sh(script: &str, path: &Path) -> (bool, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(path)
        .output()
        .expect("run sh (and getfattr: scripts/setup.sh installs the attr package)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The whole status, as an S3 Files script reads it.
fn status(path: &Path) -> String {
    let (ok, out, err) = sh(
        r#"getfattr --only-values -n "user.s3files.status;$(date -u +%s)" "$1""#,
        path,
    );
    assert!(ok, "getfattr {}: {err}", path.display());
    out
}

/// One field of the status, picked out in the shell as a script would (empty when the
/// field is absent).
fn field(path: &Path, name: &str) -> String {
    let script = format!(
        r#"getfattr --only-values -n "user.s3files.status;$(date -u +%s)" "$1" | sed -n 's/^{name}: //p'"#
    );
    let (ok, out, err) = sh(&script, path);
    assert!(ok, "getfattr {}: {err}", path.display());
    out.trim_end_matches('\n').to_string()
}

/// `s3files status PATH`.
fn s3files_status(path: &Path) -> String {
    let (out, _) = run_s3files(
        &["status", path.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "s3files status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_fields_of_synced_and_pending_files() {
    let server = S3Server::start();
    server.create_bucket("stat");
    server.put("stat", "team/dir/synced.txt", "in the bucket", &[]);
    let mount = Mount::start(&server, "s3://stat/team", &["--write-back-delay", "3600s"]);
    let synced = mount.join("dir/synced.txt");
    let text = status(&synced);
    assert!(
        text.starts_with("S3Key: team/dir/synced.txt\nFilePath: /dir/synced.txt\n"),
        "{text}"
    );
    assert_eq!(field(&synced, "S3Key"), "team/dir/synced.txt");
    assert_eq!(field(&synced, "FilePath"), "/dir/synced.txt");
    assert_eq!(field(&synced, "ExportError"), "");
    // s3files' own lines follow.
    assert!(
        text.contains("\nkey: s3://stat/team/dir/synced.txt\n"),
        "{text}"
    );
    assert!(text.contains("\nstate: synced\n"), "{text}");

    let pending = mount.join("dir/new.txt");
    std::fs::write(&pending, "local only").unwrap();
    assert_eq!(field(&pending, "S3Key"), "team/dir/new.txt");
    assert_eq!(field(&pending, "FilePath"), "/dir/new.txt");
    assert_eq!(field(&pending, "ExportError"), "");
    assert!(status(&pending).contains("\nstate: pending export\n"));
    assert!(!server.exists("stat", "team/dir/new.txt"));

    // The plain name and `s3files status` give the same fields.
    let (ok, plain, _) = sh(
        r#"getfattr --only-values -n user.s3files.status "$1""#,
        &pending,
    );
    assert!(ok);
    assert!(plain.starts_with("S3Key: team/dir/new.txt\nFilePath: /dir/new.txt\n"));
    let cli = s3files_status(&pending);
    assert!(
        cli.starts_with("S3Key: team/dir/new.txt\nFilePath: /dir/new.txt\n"),
        "{cli}"
    );
    let dir = mount.join("dir");
    assert_eq!(field(&dir, "S3Key"), "team/dir/");
    assert_eq!(field(&dir, "FilePath"), "/dir");

    // Once exported, still no error.
    sync(&pending, Duration::from_secs(20)).unwrap();
    assert_eq!(server.get("stat", "team/dir/new.txt"), b"local only");
    assert_eq!(field(&pending, "ExportError"), "");
    assert!(status(&pending).contains("\nstate: synced\n"));
    assert_answers(&mount.path, Duration::from_secs(5));
}

/// A user meets PathTooLong by renaming a directory so that a file below it gets a key
/// over 1,024 bytes (every name within 255): the rename works, the file's export fails
/// with `ExportError: PathTooLong` without a request, nothing is written under the long
/// key, the old object stays until the new one exists, and the mount carries on.
#[test]
fn a_key_too_long_for_s3_is_path_too_long() {
    let server = S3Server::start();
    server.create_bucket("long");
    let mount = Mount::start(&server, "s3://long", &["--write-back-delay", "3600s"]);
    let (a, b, c, f) = (
        "a".repeat(250),
        "b".repeat(250),
        "c".repeat(250),
        "f".repeat(250),
    );
    let deep = format!("d/{a}/{b}/{c}");
    std::fs::create_dir_all(mount.join(&deep)).unwrap();
    let old_key = format!("{deep}/{f}");
    assert_eq!(old_key.len(), 1005);
    std::fs::write(mount.join(&old_key), "every byte counts").unwrap();
    sync(&mount.path, Duration::from_secs(30)).unwrap();
    assert_eq!(server.get("long", &old_key), b"every byte counts");

    let long = "L".repeat(255);
    std::fs::rename(mount.join("d"), mount.join(&long)).unwrap();
    let moved_key = format!("{long}/{a}/{b}/{c}/{f}");
    assert!(moved_key.len() > 1024);
    let moved = mount.join(&moved_key);
    let err = sync(&mount.path, Duration::from_secs(30)).unwrap_err();
    assert!(err.contains("failed"), "{err}");
    assert!(
        wait_for(Duration::from_secs(10), || field(&moved, "ExportError")
            == "PathTooLong"),
        "{}\n{}",
        status(&moved),
        mount.log()
    );
    assert_eq!(field(&moved, "S3Key"), moved_key);
    assert_eq!(field(&moved, "FilePath"), format!("/{moved_key}"));
    let text = status(&moved);
    assert!(text.contains("\nstate: export failed\n"), "{text}");
    assert!(s3files_status(&moved).contains("ExportError: PathTooLong\n"));

    // Nothing went to S3 under a key it cannot hold; the old object is still there (its
    // delete waits for the new key); the bytes are on the mount.
    let keys = server.list_all("long");
    assert!(keys.keys().all(|k| k.len() <= 1024), "{keys:?}");
    assert_eq!(server.get("long", &old_key), b"every byte counts");
    assert_eq!(std::fs::read(&moved).unwrap(), b"every byte counts");
    assert!(
        server.exists("long", &format!("{long}/{a}/{b}/{c}/")),
        "the directories that fit moved: {keys:?}"
    );
    assert_answers(&mount.path, Duration::from_secs(5));

    // The failed exports hold nothing up: a clean stop is quick (the old key's delete,
    // waiting for the failed copy, fails with it instead of being waited for), and the
    // changes stay in the journal.
    let mut mount = mount;
    let started = Instant::now();
    mount.stop();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
    assert_eq!(server.get("long", &old_key), b"every byte counts");

    // The next mount on the same cache dir still has them; renamed back within the
    // limit, they export and the old key goes.
    let again = Mount::start_with_cache(
        &server,
        "s3://long",
        &["--write-back-delay", "3600s"],
        &mount.cache_dir,
    );
    assert_eq!(
        std::fs::read(again.join(&moved_key)).unwrap(),
        b"every byte counts"
    );
    std::fs::rename(again.join(&long), again.join("e")).unwrap();
    let back = format!("e/{a}/{b}/{c}/{f}");
    sync(&again.path, Duration::from_secs(30)).unwrap();
    assert_eq!(server.get("long", &back), b"every byte counts");
    assert!(!server.exists("long", &old_key));
    assert_eq!(field(&again.join(&back), "ExportError"), "");
    assert_answers(&again.path, Duration::from_secs(5));
}

/// The proxy the next test relies on, checked on its own with the independent client and
/// a raw socket: requests pass through whole (a 5 MiB PUT and GET, several requests per
/// keep-alive connection, a chunked request body), a rule answers its canned S3 error to
/// its method and key only (the key matched percent-decoded), counts its hits, and once
/// removed lets requests through again.
#[test]
fn fault_proxy_forwards_and_injects_s3_errors() {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    use std::io::{BufRead, BufReader, Read, Write};

    let server = S3Server::start();
    server.create_bucket("proxied");
    let proxy = FaultProxy::start(server.port);
    let client = common::make_client(&proxy.endpoint);
    let big: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 251) as u8).collect();
    let put = |key: &str, body: Vec<u8>| {
        common::block_on(
            client
                .put_object()
                .bucket("proxied")
                .key(key)
                .body(body.into())
                .send(),
        )
        .map(drop)
        .map_err(Box::new) // SDK errors are large
    };
    put("big.bin", big.clone()).expect("put through the proxy");
    assert_eq!(server.get("proxied", "big.bin"), big);
    for _ in 0..3 {
        let got = common::block_on(async {
            let out = client
                .get_object()
                .bucket("proxied")
                .key("big.bin")
                .send()
                .await?;
            Ok::<_, Box<dyn std::error::Error>>(out.body.collect().await?.to_vec())
        })
        .expect("get through the proxy");
        assert_eq!(common::sha256(&got), common::sha256(&big));
    }

    let odd = "a dir/é x.txt";
    let refused = proxy.add(Fault::new(
        "PUT",
        KeyMatch::Exact(odd.into()),
        400,
        "MetadataTooLarge",
        "Your metadata headers exceed the maximum allowed metadata size",
    ));
    let head_denied = proxy.add(Fault::new(
        "HEAD",
        KeyMatch::Contains("big".into()),
        403,
        "AccessDenied",
        "Access Denied",
    ));
    let err = put(odd, b"x".to_vec()).unwrap_err();
    assert_eq!(err.code(), Some("MetadataTooLarge"), "{err:?}");
    assert_eq!(
        err.message(),
        Some("Your metadata headers exceed the maximum allowed metadata size")
    );
    assert_eq!(refused.hits(), 1);
    assert!(!server.exists("proxied", odd));
    // Other keys and methods pass.
    put("a dir/other.txt", b"y".to_vec()).expect("another key");
    let head = |key: &str| {
        common::block_on(client.head_object().bucket("proxied").key(key).send())
            .map(drop)
            .map_err(Box::new)
    };
    let err = head("big.bin").unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert_eq!(head_denied.hits(), 1);
    assert_eq!(
        common::block_on(client.get_object().bucket("proxied").key("big.bin").send())
            .expect("GET is not HEAD")
            .content_length(),
        Some(5 << 20)
    );
    proxy.remove(&refused);
    proxy.remove(&head_denied);
    put(odd, b"x".to_vec()).expect("the rule is gone");
    head("big.bin").expect("the rule is gone");
    assert_eq!((refused.hits(), head_denied.hits()), (1, 1));
    assert_eq!(server.get("proxied", odd), b"x");

    // A chunked request body, then a second request on the same connection (moto checks
    // no signatures, but treats a request without one as anonymous).
    let port = proxy.endpoint.rsplit(':').next().unwrap();
    let stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let auth =
        "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                SignedHeaders=host, Signature=0000\r\nx-amz-date: 20260101T000000Z\r\n\
                x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n";
    let answer = |reader: &mut BufReader<std::net::TcpStream>| -> (String, Vec<u8>) {
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (status, body)
    };
    writer
        .write_all(
            format!(
                "PUT /proxied/chunked.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\
                 Transfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n7;ext=1\r\nchunked\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let (status, _) = answer(&mut reader);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    writer
        .write_all(
            format!("GET /proxied/chunked.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n")
                .as_bytes(),
        )
        .unwrap();
    let (status, body) = answer(&mut reader);
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "{status}{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(body, b"hello chunked");
    assert_eq!(server.get("proxied", "chunked.txt"), b"hello chunked");
}

/// S3 error answers that moto never gives, injected by the fault proxy between the
/// daemon and moto, become the S3 Files `ExportError` codes a script reads with getfattr:
/// MetadataTooLarge (our own metadata is ~120 bytes, so only S3 can refuse it) is
/// `S3UserMetadataTooLarge`, AccessDenied `S3AccessDenied`, InvalidObjectState on the
/// CopyObject of a chmod `S3ObjectArchived`. Nothing reaches the bucket under those keys,
/// the bytes stay on the mount, other files export meanwhile, and once S3 takes the
/// requests again `s3files sync` exports them.
#[test]
fn s3_error_answers_are_export_errors() {
    let server = S3Server::start();
    server.create_bucket("faults");
    let proxy = FaultProxy::start(server.port);
    // PUT covers PutObject and CopyObject alike.
    let too_large = proxy.add(Fault::new(
        "PUT",
        KeyMatch::Exact("meta/big.txt".into()),
        400,
        "MetadataTooLarge",
        "Your metadata headers exceed the maximum allowed metadata size",
    ));
    let denied = proxy.add(Fault::new(
        "PUT",
        KeyMatch::Exact("top-secret.txt".into()),
        403,
        "AccessDenied",
        "Access Denied",
    ));
    let mount = Mount::start_via(
        &proxy.endpoint,
        "s3://faults",
        &["--write-back-delay", "3600s"],
    );
    std::fs::create_dir(mount.join("meta")).unwrap();
    std::fs::write(mount.join("meta/big.txt"), "held back").unwrap();
    std::fs::write(mount.join("meta/small.txt"), "goes through").unwrap();
    std::fs::write(mount.join("top-secret.txt"), "not for you").unwrap();
    std::fs::write(mount.join("cold.txt"), "archived later").unwrap();
    // A held failure makes `s3files sync` exit 1 with EIO.
    let err = sync(&mount.path, Duration::from_secs(60)).unwrap_err();
    assert!(err.contains("failed (Input/output error"), "{err}");

    let big = mount.join("meta/big.txt");
    assert!(
        wait_for(Duration::from_secs(10), || field(&big, "ExportError")
            == "S3UserMetadataTooLarge"),
        "{}\n{}",
        status(&big),
        mount.log()
    );
    assert_eq!(field(&big, "S3Key"), "meta/big.txt");
    assert_eq!(field(&big, "FilePath"), "/meta/big.txt");
    let text = status(&big);
    assert!(text.contains("\nstate: export failed\n"), "{text}");
    assert!(
        text.contains("exceed the maximum allowed metadata size"),
        "{text}"
    );
    assert!(s3files_status(&big).contains("ExportError: S3UserMetadataTooLarge\n"));
    assert!(too_large.hits() >= 1);
    // A sync of the file asks S3 again, and says why it failed.
    let hits = too_large.hits();
    let err = sync(&big, Duration::from_secs(30)).unwrap_err();
    assert!(
        err.contains(
            "last-error: user metadata too large (MetadataTooLarge): Your metadata headers exceed"
        ),
        "{err}"
    );
    assert!(too_large.hits() > hits);
    assert_eq!(field(&big, "ExportError"), "S3UserMetadataTooLarge");
    assert!(!server.exists("faults", "meta/big.txt"));
    assert_eq!(std::fs::read(&big).unwrap(), b"held back");

    let secret = mount.join("top-secret.txt");
    assert!(
        wait_for(Duration::from_secs(10), || field(&secret, "ExportError")
            == "S3AccessDenied"),
        "{}",
        status(&secret)
    );
    assert_eq!(field(&secret, "S3Key"), "top-secret.txt");
    assert!(denied.hits() >= 1);
    assert!(!server.exists("faults", "top-secret.txt"));
    assert_eq!(std::fs::read(&secret).unwrap(), b"not for you");

    // The other files export meanwhile.
    for (path, bytes) in [
        ("meta/small.txt", "goes through"),
        ("cold.txt", "archived later"),
    ] {
        sync(&mount.join(path), Duration::from_secs(30)).unwrap();
        assert_eq!(server.get("faults", path), bytes.as_bytes());
        assert_eq!(field(&mount.join(path), "ExportError"), "");
    }

    // A chmod of a synced file is a CopyObject onto itself; S3 refuses it for an object
    // in an archive storage class.
    use std::os::unix::fs::PermissionsExt;
    let before = server.metadata("faults", "cold.txt")["file-permissions"].clone();
    let archived = proxy.add(Fault::new(
        "PUT",
        KeyMatch::Exact("cold.txt".into()),
        403,
        "InvalidObjectState",
        "The operation is not valid for the object's storage class",
    ));
    let cold = mount.join("cold.txt");
    std::fs::set_permissions(&cold, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = sync(&cold, Duration::from_secs(30)).unwrap_err();
    assert!(err.contains("(InvalidObjectState)"), "{err}");
    assert_eq!(
        field(&cold, "ExportError"),
        "S3ObjectArchived",
        "{}",
        status(&cold)
    );
    assert!(archived.hits() >= 1);
    assert_eq!(
        server.metadata("faults", "cold.txt")["file-permissions"],
        before
    );
    assert_eq!(std::fs::read(&cold).unwrap(), b"archived later");
    assert_answers(&mount.path, Duration::from_secs(5));

    // S3 takes the requests again: a sync tries the held exports again and they go.
    for rule in [&too_large, &denied, &archived] {
        proxy.remove(rule);
    }
    let hits = (too_large.hits(), denied.hits(), archived.hits());
    sync(&mount.path, Duration::from_secs(60)).unwrap();
    assert_eq!((too_large.hits(), denied.hits(), archived.hits()), hits);
    assert_eq!(server.get("faults", "meta/big.txt"), b"held back");
    assert_eq!(server.get("faults", "top-secret.txt"), b"not for you");
    assert_eq!(
        server.metadata("faults", "cold.txt")["file-permissions"],
        "0100600"
    );
    for path in [&big, &secret, &cold] {
        assert_eq!(field(path, "ExportError"), "");
        assert!(status(path).contains("\nstate: synced\n"));
    }
    assert_answers(&mount.path, Duration::from_secs(5));
    let mut mount = mount;
    let started = Instant::now();
    assert!(mount.stop().success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
}

#[test]
fn custom_user_xattrs_are_not_supported() {
    let server = S3Server::start();
    server.create_bucket("xattrs");
    server.put("xattrs", "f.txt", "x", &[]);
    let mount = Mount::start(&server, "s3://xattrs", &[]);
    let path = mount.join("f.txt");
    for script in [
        r#"setfattr -n user.custom -v 1 "$1""#,
        r#"getfattr -n user.custom "$1""#,
        r#"setfattr -x user.custom "$1""#,
        r#"getfattr -n "user.s3files.status;soon" "$1""#,
        r#"setfattr -n user.s3files.status -v 1 "$1""#,
        r#"setfattr -n "user.s3files.status;$(date -u +%s)" -v 1 "$1""#,
    ] {
        let (ok, _, err) = sh(script, &path);
        assert!(!ok, "{script} succeeded");
        assert!(err.contains("Operation not supported"), "{script}: {err}");
    }
    // Listing shows the status only.
    let (ok, out, _) = sh(r#"getfattr -d -m - "$1""#, &path);
    assert!(ok);
    let names: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split('=').next().unwrap())
        .collect();
    assert_eq!(names, ["user.s3files.status"], "{out}");
    // `s3files sync` still works through its own attribute.
    sync(&path, Duration::from_secs(10)).unwrap();
    assert_answers(&mount.path, Duration::from_secs(5));
}

/// Symlink targets up to 4,080 bytes, files up to 48 TiB, as S3 Files' quotas say.
#[test]
fn symlink_and_file_size_limits() {
    use std::os::unix::fs::FileExt;
    let server = S3Server::start();
    server.create_bucket("limits");
    let mount = Mount::start(&server, "s3://limits", &["--write-back-delay", "3600s"]);
    let longest = "t".repeat(4080);
    std::os::unix::fs::symlink(&longest, mount.join("ok")).unwrap();
    assert_eq!(
        std::fs::read_link(mount.join("ok")).unwrap().to_str(),
        Some(longest.as_str())
    );
    let err = std::os::unix::fs::symlink("t".repeat(4081), mount.join("long")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    assert!(!mount.join("long").exists());

    let file = std::fs::File::create(mount.join("big")).unwrap();
    file.write_all_at(b"head", 0).unwrap();
    let limit: u64 = 48 << 40;
    let err = file.write_at(b"x", limit).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    let err = file.set_len(limit + 1).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    assert_eq!(file.metadata().unwrap().len(), 4);
    drop(file);
    sync(&mount.path, Duration::from_secs(20)).unwrap();
    assert_eq!(server.get("limits", "big"), b"head");
    assert_eq!(server.get("limits", "ok"), longest.as_bytes());
    assert_answers(&mount.path, Duration::from_secs(5));
}
