//! The in-process reference model of the whole core: random sequences of file operations
//! drive `FsCore` (with its `Writer`, cache and journal in a temp dir) over a
//! fault-injecting store around `MemoryStore`, and every result (Ok or errno, bytes read,
//! sizes, modes, listings), the lost+found directory and the final bucket are compared
//! with a plain-Rust reference model. No FUSE, no root, no S3 server.
//!
//! Determinism without a clock: the write-back delay is an hour, so exports happen only
//! at the `Sync` step (`FsCore::sync_tree`), at `Remount` (`flush_all`), and polls only at
//! the `Poll` step (`FsCore::poll_once`); each case runs on its own current-thread
//! runtime. Besides file operations the model has: injected store faults (5xx,
//! throttling, timeouts, 412, 404, slow answers) around one operation; "another writer"
//! putting or deleting a key behind the mount's back (the bucket wins: after the next sync
//! or poll the path shows the bucket's version, and if the mount had unexported changes
//! to it, the local bytes go to lost+found); a crash (the core and its tasks vanish
//! without flushing, and a new core opens on the same cache dir); a remount (flush,
//! drop, reopen).
//!
//! Cases: `S3FILES_MODEL_CASES` (default 2,000), from the `S3FILES_MODEL_FIRST`th
//! (default 0, for exploring beyond CI's cases); `S3FILES_MODEL_SEED=<n>` replays one
//! case. A failing case prints its seed, the reason and its operation list, shrunk.
//! `S3FILES_MODEL_SKIP=other,fault,...` leaves operation kinds out of the generated cases
//! (for exploring past a known failure; never in CI); the kinds are create, write,
//! truncate, read, stat, rename, unlink, mkdir, rmdir, chmod, symlink, mkfifo, readlink, handle,
//! sync, poll, fault, other, crash, remount and save. `S3FILES_MODEL_KEEP_GOING=1` runs
//! every case and prints one shrunk example of each kind of failure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use s3files::cache::{CacheOptions, DataCache};
use s3files::fs::access::Identity;
use s3files::fs::inode::{Ino, ROOT_INO};
use s3files::fs::passthrough::IoMode;
use s3files::fs::write::{SetAttr, WriteOptions, Writer};
use s3files::fs::{CoreOptions, FsCore, FsError, STATUS_XATTR};
use s3files::metrics::Metrics;
use s3files::posix::EntryKind;
use s3files::store::faulty::{Fault, FaultyStore, RequestKind};
use s3files::store::memory::MemoryStore;
use s3files::store::ObjectStore;

#[path = "core_model/case.rs"]
mod case;
#[path = "core_model/model.rs"]
mod model;
#[path = "core_model/ops.rs"]
mod ops;
#[path = "core_model/system.rs"]
mod system;

use case::*;
use model::*;
use ops::*;
use system::*;

const ROOT: Identity = Identity::new(0, 0);
const MOUNT_ID: &str = "model";
const LOST_DIR: &str = ".s3files-lost+found-model";
/// Names that start as files (or symlinks), and names that start as directories. Mixed
/// renames can move one kind onto the other's names.
const FILES: &[&str] = &["a", "b", "a.tmp", "d/a", "d/b", "d/a.tmp", "d/f/a", "e/a"];
const DIRS: &[&str] = &["d", "e", "d/f", "e/f"];
/// Targets of the atomic-save pattern (`X.tmp` renamed over `X`).
const SAVED: &[&str] = &["a", "d/a"];
const MODES: &[u32] = &[0o644, 0o600, 0o755, 0o640];
/// A case that has not finished after this long hangs (a deadlock in the core).
const HANG_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn random_cases_match_the_model() {
    if std::env::var("S3FILES_MODEL_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("s3files=debug"))
            .with_test_writer()
            .try_init();
    }
    let cases = env_number("S3FILES_MODEL_CASES", 2000);
    let seeds: Vec<u64> = match std::env::var("S3FILES_MODEL_SEED") {
        Ok(seed) => vec![seed.parse().expect("S3FILES_MODEL_SEED is a number")],
        Err(_) => {
            let base = 0x5EED_0000_u64 + env_number("S3FILES_MODEL_FIRST", 0);
            (0..cases).map(|i| base + i).collect()
        }
    };
    let started = Instant::now();
    if std::env::var("S3FILES_MODEL_KEEP_GOING").is_ok() {
        return triage(&seeds);
    }
    for seed in &seeds {
        let ops = gen_case(*seed);
        if let Err(failure) = run_guarded(&ops, HANG_LIMIT) {
            let shrunk = shrink(ops.clone(), &failure, Duration::from_secs(60));
            let again = run_guarded(&shrunk, HANG_LIMIT).err();
            let shown = again.as_ref().unwrap_or(&failure);
            panic!(
                "case failed: replay with S3FILES_MODEL_SEED={seed}\nat step {}: {}\n\
                 operations ({} of {}, shrunk):\n{}",
                shown.step,
                shown.reason,
                shrunk.len(),
                ops.len(),
                print_ops(&shrunk)
            );
        }
    }
    eprintln!(
        "{} model cases passed in {:?}",
        seeds.len(),
        started.elapsed()
    );
}

/// A number from the environment, or `default` when unset or not a number.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `S3FILES_MODEL_KEEP_GOING=1`: runs every case, then prints one shrunk example of each
/// kind of failure with how many cases failed that way (for triage, not for CI).
fn triage(seeds: &[u64]) {
    let mut kinds: BTreeMap<String, (usize, u64, Failure)> = BTreeMap::new();
    let started = Instant::now();
    for seed in seeds {
        if let Err(failure) = run_guarded(&gen_case(*seed), HANG_LIMIT) {
            kinds
                .entry(signature(&failure))
                .or_insert((0, *seed, failure))
                .0 += 1;
        }
    }
    let failed: usize = kinds.values().map(|k| k.0).sum();
    eprintln!(
        "{} cases ran in {:?}; {failed} failed",
        seeds.len(),
        started.elapsed()
    );
    for (kind, (count, seed, failure)) in &kinds {
        let ops = gen_case(*seed);
        let shrunk = shrink(ops, failure, Duration::from_secs(30));
        let shown = run_guarded(&shrunk, HANG_LIMIT).err();
        let shown = shown.as_ref().unwrap_or(failure);
        eprintln!(
            "== {count} cases: {kind}\n   seed {seed}, step {}: {}\n{}",
            shown.step,
            shown.reason,
            print_ops(&shrunk)
        );
    }
    assert!(kinds.is_empty(), "{} kinds of failure", kinds.len());
}

// ---------------------------------------------------------------------------------------
// Regressions: minimal cases the model found, replayed forever. Each names the rule it
// checks; docs/ARCHITECTURE.md ("Testing") says how to add one.

/// Replays a case and fails with its first difference from the model.
fn replay(ops: &[Op]) {
    if let Err(f) = run_guarded(ops, HANG_LIMIT) {
        panic!(
            "step {}: {}\noperations:\n{}",
            f.step,
            f.reason,
            print_ops(ops)
        );
    }
}

fn put_then(path: &'static str, data: &str, then: Refresh) -> Op {
    Op::Other {
        path,
        data: Some(data.into()),
        then,
    }
}

/// Issue 9 item 2: once lost+found shows, a poll round locks a directory's state twice
/// and the mount hangs for good.
#[test]
fn a_poll_after_a_conflict_does_not_hang() {
    replay(&[
        Op::Write("a", 0, "mine".into()),
        put_then("a", "theirs", Refresh::Sync),
        Op::Poll,
    ]);
}

/// A rename whose copy is still pending, replayed from the journal after a crash, must
/// still show the file's bytes (not an empty file).
#[test]
fn a_pending_rename_survives_a_crash_with_its_bytes() {
    replay(&[Op::Rename("d/a", "b"), Op::Crash]);
}

/// chmod of a renamed file whose copy is pending must keep the copy's source; without it
/// the copy fails forever and `sync` never returns.
#[test]
fn chmod_after_a_rename_keeps_the_copy_and_sync_returns() {
    replay(&[Op::Rename("d/a", "b"), Op::Chmod("b", 0o755), Op::Sync]);
}

/// A sync that failed (the store was down) leaves an error on the record; the next sync,
/// with the store healthy again, must export it rather than fail at once.
#[test]
fn a_sync_after_a_failed_sync_exports() {
    replay(&[
        Op::Mkdir("e", 0o755),
        Op::Faulty(
            FaultSpec {
                kind: Some(RequestKind::Put),
                fault: Fault::Status(503),
                skip: 0,
                count: 1000,
            },
            Box::new(Op::Sync),
        ),
    ]);
}

/// Renaming a file over a key that another writer changed meanwhile is a conflict: the
/// bucket wins, and the renamed bytes go to lost+found, never over the other version.
#[test]
fn a_rename_over_a_key_another_writer_changed_is_a_conflict() {
    replay(&[
        Op::Rename("a", "d/a"),
        put_then("d/a", "theirs", Refresh::Sync),
    ]);
}

/// An unexported delete does not hide (or later delete) an object another writer put
/// at that key since: the bucket wins.
#[test]
fn a_pending_delete_does_not_hide_another_writers_object() {
    replay(&[Op::Unlink("a"), put_then("a", "theirs", Refresh::Poll)]);
}

/// Issue 9 item 1 (git's index): a file exported once, renamed over an existing file and
/// written again is no conflict; the poller must not move it to lost+found.
#[test]
fn writing_a_file_renamed_over_another_is_no_conflict() {
    replay(&[
        Op::Create("a.tmp", 0o644),
        Op::Sync,
        Op::Rename("a.tmp", "a"),
        Op::Write("a", 0, "new index".into()),
        Op::Poll,
        Op::Sync,
    ]);
}

/// Git again (`index.lock` made anew after the last one was renamed away): a name
/// created while the delete of its previous object is still pending is no conflict.
#[test]
fn recreating_a_name_whose_delete_is_pending_is_no_conflict() {
    replay(&[
        Op::Create("d/a.tmp", 0o644),
        Op::Sync,
        Op::Rename("d/a.tmp", "d/a"),
        Op::Create("d/a.tmp", 0o644),
        Op::Poll,
    ]);
}

/// A file replaced by a rename stays gone when the file that replaced it moves on
/// before any export.
#[test]
fn a_replaced_file_stays_deleted_when_its_replacement_moves_on() {
    replay(&[
        Op::Create("d/a.tmp", 0o644),
        Op::Rename("d/a.tmp", "d/a"),
        Op::Rename("d/a", "d/a.tmp"),
        Op::Remount,
    ]);
}

/// Writes through a handle on an unlinked file never reach the bucket.
#[test]
fn writes_to_an_unlinked_file_never_reach_the_bucket() {
    replay(&[
        Op::Open {
            slot: 0,
            path: "d/a",
            write: true,
        },
        Op::Unlink("d/a"),
        Op::HWrite(0, 0, "zombie".into()),
        Op::Sync,
    ]);
}

/// Writes through a handle on a file that a rename replaced are never exported, not
/// even to the path it used to have after a crash and replay.
#[test]
fn writes_to_a_replaced_file_are_never_exported() {
    replay(&[
        Op::Open {
            slot: 1,
            path: "d/a",
            write: true,
        },
        Op::Create("d/a.tmp", 0o644),
        Op::Sync,
        Op::Rename("d/a.tmp", "d/a"),
        Op::Sync,
        Op::HWrite(1, 0, "orphan".into()),
        Op::Crash,
    ]);
}

/// Issue 9 item 6: a conflict found while S3 answers HEAD with an error must not take
/// the error for "deleted in S3": the path never disappears while its object exists.
#[test]
fn a_failed_head_during_a_conflict_is_not_a_delete() {
    replay(&[
        Op::Write("a", 0, "mine".into()),
        // The export's PUT meets 412, its HEAD (ours or not?) passes, and the HEAD of
        // the conflict resolution fails.
        put_then(
            "a",
            "theirs",
            Refresh::FaultySync(FaultSpec {
                kind: Some(RequestKind::Head),
                fault: Fault::Status(500),
                skip: 1,
                count: 1,
            }),
        ),
    ]);
}

/// A file renamed while a handle was open on it stays readable once the rename's copy
/// and the delete of its old key are exported.
#[test]
fn a_renamed_file_stays_readable_after_its_copy_is_exported() {
    replay(&[
        Op::Open {
            slot: 1,
            path: "a",
            write: false,
        },
        Op::Rename("a", "e"),
        Op::Sync,
    ]);
}

/// Issue 9 item 6: a handle opened while its file had local bytes reads EOF once a
/// conflict took those bytes away; it must fail with EIO. (Checked before any poll, so
/// the poll deadlock above cannot hide it.)
#[test]
fn a_handle_whose_bytes_lost_a_conflict_fails_with_eio() {
    let mut case = Case::new(Arc::new(std::sync::Mutex::new((0, String::new()))));
    let steps = [
        Op::Write("a", 0, "mine".into()),
        Op::Open {
            slot: 0,
            path: "a",
            write: false,
        },
    ];
    for op in &steps {
        case.step(op).unwrap();
    }
    let mem = case.system.store.inner().clone();
    mem.put("a", "theirs", &[("file-permissions", "0100640")]);
    assert_eq!(case.core_step(&Op::Sync), Err(libc::EIO), "the conflict");
    let read = case.core_step(&Op::HRead(0, 0, 100));
    assert_eq!(
        read,
        Err(libc::EIO),
        "read through the old handle: {}",
        show(&read)
    );
}

/// A FIFO (issue 10) is a zero-byte object whose permissions carry its type: replayed
/// from the journal after a crash with its type, chmod and renames keep it, and opens,
/// reads and writes of it never reach the core.
#[test]
fn a_fifo_keeps_its_type_through_a_crash_chmod_and_renames() {
    replay(&[
        Op::Mkfifo("a.tmp", 0o640),
        Op::Crash,
        Op::Stat("a.tmp"),
        Op::Sync,
        Op::Chmod("a.tmp", 0o600),
        Op::Rename("a.tmp", "d/b"),
        Op::Write("d/b", 0, "never".into()),
        Op::Read("d/b", 0, 10),
        Op::Truncate("d/b", 0),
        Op::Sync,
        Op::Rename("d/b", "a"),
        Op::Remount,
        Op::Stat("a"),
    ]);
}

/// A FIFO that loses a conflict (created here, or renamed onto a key another writer
/// changed) has no bytes to keep: nothing goes to lost+found, and a renamed one's old
/// key is deleted as for a file.
#[test]
fn a_fifo_that_loses_a_conflict_leaves_nothing_in_lost_found() {
    replay(&[
        Op::Mkfifo("b", 0o644),
        put_then("b", "theirs", Refresh::Sync),
        Op::Mkfifo("a.tmp", 0o644),
        Op::Sync,
        Op::Rename("a.tmp", "d/a"),
        put_then("d/a", "theirs", Refresh::Sync),
        Op::Sync,
    ]);
}

/// Two conflicts on either side of a remount: record ids start again after a restart with
/// an empty journal, so the second local copy's lost+found name (`<id>_<name>`) was the
/// first one's, and moving it in replaced the first (found by the 20,000-case run).
#[test]
fn lost_found_never_replaces_a_copy_kept_before_a_remount() {
    replay(&[
        Op::Write("a", 0, "first local copy".into()),
        put_then("a", "theirs", Refresh::Poll),
        Op::Remount,
        Op::Write("d/a", 0, "second local copy".into()),
        put_then("d/a", "theirs", Refresh::Poll),
    ]);
}

/// A directory renamed with an unexported file in it, then that file renamed out to the
/// directory's old name, and a crash (found by the 40,000-case run): after replaying the
/// journal the file was gone.
#[test]
fn a_file_renamed_onto_its_old_directorys_name_survives_a_crash() {
    replay(&[
        Op::Write("d/a", 0, "tuvwxyzabcdefgh".into()),
        Op::Rename("d", "e"),
        Op::Rename("e/a", "d"),
        Op::Crash,
    ]);
}

/// A handle opened on a file in the bucket, which then changed here (a truncate by
/// path) and lost a conflict (found by the 40,000-case run): a read past the old
/// version's end answered "" from that version instead of failing.
#[test]
fn a_handle_opened_before_a_lost_change_fails_with_eio() {
    replay(&[
        Op::Open {
            slot: 1,
            path: "a",
            write: false,
        },
        Op::Truncate("a", 101),
        put_then("a", "wxyza", Refresh::Poll),
        Op::HRead(1, 16, 66),
    ]);
}
