//! The operations of a case and how random cases are generated (seeded, replayable).

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FaultSpec {
    pub(crate) kind: Option<RequestKind>,
    pub(crate) fault: Fault,
    /// Matching requests that pass before the fault applies.
    pub(crate) skip: u64,
    pub(crate) count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refresh {
    Sync,
    Poll,
    FaultySync(FaultSpec),
    FaultyPoll(FaultSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// create(2) with O_EXCL (the handle is released at once).
    Create(&'static str, u32),
    /// open for writing, pwrite at an offset (sparse if past the end), release.
    Write(&'static str, u64, String),
    Truncate(&'static str, u64),
    /// open read-only, pread, release.
    Read(&'static str, u64, u32),
    /// lookup: kind, size, permission bits.
    Stat(&'static str),
    Rename(&'static str, &'static str),
    Unlink(&'static str),
    Mkdir(&'static str, u32),
    Rmdir(&'static str),
    Chmod(&'static str, u32),
    Symlink(&'static str, String),
    /// mkfifo(2) (a mknod with S_IFIFO): an entry with no data, exported as a zero-byte
    /// object whose permissions carry the type bits.
    Mkfifo(&'static str, u32),
    Readlink(&'static str),
    /// Opens a handle into a slot and keeps it (closing what the slot held).
    Open {
        slot: usize,
        path: &'static str,
        write: bool,
    },
    /// pwrite / pread through a kept handle.
    HWrite(usize, u64, String),
    HRead(usize, u64, u32),
    Close(usize),
    /// `s3files sync` of the whole mount: exports everything now and waits.
    Sync,
    /// One poll round.
    Poll,
    /// An operation run while the store answers the next requests with a fault.
    Faulty(FaultSpec, Box<Op>),
    /// Another writer puts (Some) or deletes (None) a key, then the mount refreshes.
    Other {
        path: &'static str,
        data: Option<String>,
        then: Refresh,
    },
    /// The daemon dies: core and tasks vanish unflushed; a new core opens the cache dir.
    Crash,
    /// Clean unmount (flush) and mount again.
    Remount,
}

/// What an operation answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val {
    Unit,
    Bytes(Vec<u8>),
    Stat(EntryKind, u64, u32),
    /// The kernel would not call the daemon (e.g. it follows a symlink first).
    Skipped,
}

pub(crate) type Res = Result<Val, i32>;

// ---------------------------------------------------------------------------------------
// Random cases

/// splitmix64: small, seedable, and the same on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub(crate) fn text(&mut self, max: u64) -> String {
        let len = 1 + self.below(max);
        let start = self.below(26) as u8;
        (0..len)
            .map(|i| char::from(b'a' + (start + i as u8) % 26))
            .collect()
    }
    pub(crate) fn offset(&mut self) -> u64 {
        match self.below(10) {
            0 => 70_000,  // sparse, within one cache block
            1 => 300_000, // sparse, across a cache block boundary
            2..=5 => 0,
            _ => self.below(80),
        }
    }
}

pub(crate) fn skip_list() -> BTreeSet<String> {
    std::env::var("S3FILES_MODEL_SKIP")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) fn gen_fault(rng: &mut Rng, transient_only: bool) -> FaultSpec {
    let kinds = [
        None,
        Some(RequestKind::List),
        Some(RequestKind::Head),
        Some(RequestKind::Get),
        Some(RequestKind::Put),
        Some(RequestKind::Copy),
        Some(RequestKind::Delete),
    ];
    let count = rng.pick(&[1, 2, 4, 1000]);
    let choice = rng.below(if transient_only { 5 } else { 7 });
    let (kind, fault) = match choice {
        0 => (rng.pick(&kinds), Fault::Status(500)),
        1 => (rng.pick(&kinds), Fault::Status(503)),
        2 => (rng.pick(&kinds), Fault::Throttle),
        3 => (rng.pick(&kinds), Fault::Timeout),
        4 => (
            rng.pick(&kinds),
            Fault::Slow(Duration::from_millis(1 + rng.below(3))),
        ),
        // A store that lies about writes (412/404 on a PUT that nobody raced) would be
        // a conflict by definition; these two stay on reads. A HEAD answering 404 for an
        // object that exists is not a failure S3 has (it is strongly consistent), and the
        // core rightly takes it as the truth (a directory without a marker), so 404s go
        // to GETs only (drawn as before, so seeds replay the same sequences).
        5 => (Some(RequestKind::Get), Fault::PreconditionFailed),
        _ => {
            let _ = rng.pick(&[RequestKind::Head, RequestKind::Get]);
            (Some(RequestKind::Get), Fault::NotFound)
        }
    };
    let skip = rng.pick(&[0, 0, 1, 2]);
    FaultSpec {
        kind,
        fault,
        skip,
        count,
    }
}

/// One step of a case; some steps are short scripted sequences (the atomic save).
pub(crate) fn gen_ops(rng: &mut Rng, skip: &BTreeSet<String>, out: &mut Vec<Op>) {
    let file = |rng: &mut Rng| rng.pick(FILES);
    let dir = |rng: &mut Rng| rng.pick(DIRS);
    loop {
        let roll = rng.below(100);
        let (name, ops): (&str, Vec<Op>) = match roll {
            0..=7 => ("create", vec![Op::Create(file(rng), rng.pick(MODES))]),
            8..=19 => (
                "write",
                vec![Op::Write(file(rng), rng.offset(), rng.text(40))],
            ),
            20..=23 => ("truncate", vec![Op::Truncate(file(rng), rng.below(120))]),
            24..=30 => (
                "read",
                vec![Op::Read(
                    file(rng),
                    rng.below(60),
                    1 + rng.below(400) as u32,
                )],
            ),
            31..=33 => ("stat", vec![Op::Stat(file(rng))]),
            34..=39 => ("rename", vec![Op::Rename(file(rng), file(rng))]),
            40..=41 => ("rename", vec![Op::Rename(dir(rng), dir(rng))]),
            42 => {
                let (a, b) = if rng.chance(50) {
                    (file(rng), dir(rng))
                } else {
                    (dir(rng), file(rng))
                };
                ("rename", vec![Op::Rename(a, b)])
            }
            43..=46 => ("unlink", vec![Op::Unlink(file(rng))]),
            47..=51 => ("mkdir", vec![Op::Mkdir(dir(rng), rng.pick(MODES))]),
            52..=53 => ("rmdir", vec![Op::Rmdir(dir(rng))]),
            54..=56 => {
                let path = if rng.chance(75) { file(rng) } else { dir(rng) };
                ("chmod", vec![Op::Chmod(path, rng.pick(MODES))])
            }
            57 => ("symlink", vec![Op::Symlink(file(rng), rng.text(12))]),
            58 => ("mkfifo", vec![Op::Mkfifo(file(rng), rng.pick(MODES))]),
            59 => ("readlink", vec![Op::Readlink(file(rng))]),
            60..=62 => (
                "handle",
                vec![Op::Open {
                    slot: rng.below(2) as usize,
                    path: file(rng),
                    write: rng.chance(70),
                }],
            ),
            63..=66 => (
                "handle",
                vec![Op::HWrite(
                    rng.below(2) as usize,
                    rng.offset(),
                    rng.text(30),
                )],
            ),
            67..=68 => (
                "handle",
                vec![Op::HRead(
                    rng.below(2) as usize,
                    rng.below(60),
                    1 + rng.below(200) as u32,
                )],
            ),
            69 => ("handle", vec![Op::Close(rng.below(2) as usize)]),
            70..=76 => ("sync", vec![Op::Sync]),
            77..=80 => ("poll", vec![Op::Poll]),
            81..=83 => {
                let inner = match rng.below(6) {
                    0 => Op::Sync,
                    1 => Op::Poll,
                    2 => Op::Read(file(rng), 0, 200),
                    3 => Op::Write(file(rng), rng.offset(), rng.text(20)),
                    4 => Op::Stat(file(rng)),
                    _ => Op::Rename(file(rng), file(rng)),
                };
                (
                    "fault",
                    vec![Op::Faulty(gen_fault(rng, false), Box::new(inner))],
                )
            }
            84..=90 => {
                let then = match rng.below(6) {
                    0 | 1 => Refresh::Sync,
                    2 | 3 => Refresh::Poll,
                    4 => Refresh::FaultySync(gen_fault(rng, true)),
                    _ => Refresh::FaultyPoll(gen_fault(rng, true)),
                };
                let data = if rng.chance(75) {
                    Some(rng.text(30))
                } else {
                    None
                };
                (
                    "other",
                    vec![Op::Other {
                        path: file(rng),
                        data,
                        then,
                    }],
                )
            }
            91..=92 => ("crash", vec![Op::Crash]),
            93 => ("remount", vec![Op::Remount]),
            _ => {
                // The atomic save: X.tmp written and exported (maybe while held open),
                // written more, renamed over X; polls land while the rename waits.
                let target = rng.pick(SAVED);
                let tmp = if target == "a" { "a.tmp" } else { "d/a.tmp" };
                let mut ops = vec![Op::Create(tmp, 0o644)];
                if rng.chance(50) {
                    ops.push(Op::Open {
                        slot: 0,
                        path: tmp,
                        write: true,
                    });
                    ops.push(Op::Sync);
                    ops.push(Op::HWrite(0, 0, rng.text(30)));
                    ops.push(Op::Close(0));
                } else {
                    ops.push(Op::Write(tmp, 0, rng.text(30)));
                    ops.push(Op::Sync);
                    ops.push(Op::Write(tmp, 0, rng.text(30)));
                }
                if rng.chance(50) {
                    ops.push(Op::Poll);
                }
                ops.push(Op::Rename(tmp, target));
                ops.push(Op::Poll);
                ("save", ops)
            }
        };
        if !skip.contains(name) {
            out.extend(ops);
            return;
        }
    }
}

pub(crate) fn gen_case(seed: u64) -> Vec<Op> {
    let mut rng = Rng(seed);
    let skip = skip_list();
    let len = 5 + rng.below(40);
    let mut ops = Vec::new();
    while ops.len() < len as usize {
        gen_ops(&mut rng, &skip, &mut ops);
    }
    ops
}
