//! Running a case: each step applied to the model and the core and compared, the
//! time limit that turns a deadlock into a failure, shrinking and failure kinds.

use super::*;

/// Where a case went wrong: the step and what differed.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) step: usize,
    pub(crate) reason: String,
}

pub(crate) fn is_fault_errno(spec: &FaultSpec, e: i32) -> bool {
    e == libc::EIO || (spec.fault == Fault::NotFound && e == libc::ENOENT)
}

pub(crate) struct Case {
    pub(crate) system: System,
    pub(crate) model: Model,
    /// What the case is doing now, for the report of a hang.
    pub(crate) progress: Arc<std::sync::Mutex<(usize, String)>>,
}

impl Case {
    pub(crate) fn new(progress: Arc<std::sync::Mutex<(usize, String)>>) -> Self {
        let system = System::new();
        let mut model = Model::new();
        seed_bucket(system.store.inner(), &mut model);
        Case {
            system,
            model,
            progress,
        }
    }

    pub(crate) fn at(&self, step: Option<usize>, what: &str) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(step) = step {
            p.0 = step;
        }
        p.1 = what.to_string();
    }

    pub(crate) fn core_step(&mut self, op: &Op) -> Res {
        self.at(None, &format!("{op:?}"));
        let core = self.system.core();
        if *op == Op::Poll {
            let store = self.system.dyn_store();
            self.system.block_on(core.poll_once(&store));
            return Ok(Val::Unit);
        }
        let mut handles = std::mem::take(&mut self.system.handles);
        let result = self.system.block_on(apply_core(&core, &mut handles, op));
        self.system.handles = handles;
        result
    }

    pub(crate) fn check_tree(&mut self, what: &str) -> Result<(), String> {
        self.at(None, &format!("reading the mount back {what}"));
        let core = self.system.core();
        let (tree, lost) = self.system.block_on(snapshot(&core));
        let want = self.model.snapshot();
        if tree != want {
            return Err(format!(
                "{what}: the mount differs from the model\n{}",
                diff_maps(&want, &tree)
            ));
        }
        let want_lost = self.model.lost_sorted();
        if lost != want_lost {
            return Err(format!(
                "{what}: lost+found differs\n  model: {:?}\n  mount: {:?}",
                printable(&want_lost),
                printable(&lost)
            ));
        }
        Ok(())
    }

    pub(crate) fn check_bucket(&mut self, what: &str) -> Result<(), String> {
        let got = self.system.block_on(bucket(self.system.store.inner()));
        let want = self.model.bucket();
        if got != want {
            return Err(format!(
                "{what}: the bucket differs from the model\n{}",
                diff_maps(&want, &got)
            ));
        }
        Ok(())
    }

    pub(crate) fn expect(&self, what: &Op, want: &Res, got: &Res) -> Result<(), String> {
        if want == got {
            Ok(())
        } else {
            Err(format!(
                "{what:?}: model says {}, core says {}",
                show(want),
                show(got)
            ))
        }
    }

    pub(crate) fn sync_checked(&mut self, op: &Op, want: Res) -> Result<(), String> {
        let got = self.core_step(&Op::Sync);
        self.expect(op, &want, &got)?;
        self.model.mark_all_synced();
        self.check_tree("after sync")?;
        self.check_bucket("after sync")
    }

    pub(crate) fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Sync => self.sync_checked(op, Ok(Val::Unit)),
            Op::Poll => {
                self.core_step(op).ok();
                self.check_tree("after poll")
            }
            Op::Crash => {
                self.system.crash();
                self.model.close_all();
                self.check_tree("after crash")
            }
            Op::Remount => {
                let left = self.system.remount();
                if left != 0 {
                    return Err(format!("remount: the flush left {left} records"));
                }
                self.model.close_all();
                self.model.mark_all_synced();
                self.check_tree("after remount")?;
                self.check_bucket("after remount")
            }
            Op::Faulty(spec, inner) => {
                let mut model = self.model.clone();
                let want = model.apply(inner);
                self.system
                    .store
                    .fail_after(spec.skip, spec.count, spec.kind, spec.fault.clone());
                let got = self.core_step(inner);
                self.system.store.clear();
                if **inner == Op::Sync {
                    // Under faults a sync may fail; the next one, with the store healthy,
                    // must export everything.
                    if !matches!(got, Ok(Val::Unit) | Err(libc::EIO)) {
                        return Err(format!("{op:?}: sync answered {}", show(&got)));
                    }
                    return self.sync_checked(op, Ok(Val::Unit));
                }
                match &got {
                    g if *g == want => self.model = model,
                    Err(e) if is_fault_errno(spec, *e) => {} // failed: no effect
                    _ => return self.expect(op, &want, &got),
                }
                if **inner == Op::Poll {
                    self.check_tree("after a poll under faults")?;
                }
                Ok(())
            }
            Op::Other { path, data, then } => self.other(op, path, data.as_deref(), then),
            Op::HRead(slot, offset, len)
                if self
                    .model
                    .handles
                    .get(slot)
                    .is_some_and(|h| h.stale && !h.write) =>
            {
                // A read-only handle whose object another writer replaced or deleted reads
                // the version it opened while that needs no request to S3 (cached bytes,
                // past the end), and EIO once it does (docs/SEMANTICS.md "What an open
                // file sees"); never another version.
                let node = self.model.handles[slot].node;
                let old = Ok(Val::Bytes(self.model.read_node(node, *offset, *len)));
                let got = self.core_step(op);
                if got == old || got == Err(libc::EIO) {
                    Ok(())
                } else {
                    self.expect(op, &Err(libc::EIO), &got)
                }
            }
            _ => {
                let mut model = self.model.clone();
                let want = model.apply(op);
                let got = self.core_step(op);
                self.model = model;
                self.expect(op, &want, &got)
            }
        }
    }

    pub(crate) fn other(
        &mut self,
        op: &Op,
        path: &'static str,
        data: Option<&str>,
        then: &Refresh,
    ) -> Result<(), String> {
        // Only where the mount has the parent directory and no directory at or below the
        // key (a key that a directory hides is a different rule).
        let mem = self.system.store.inner().clone();
        let has_below = |p: &str| self.model.tree.keys().any(|k| under(k, p));
        let bucket_below = self
            .system
            .block_on(bucket(&mem))
            .keys()
            .any(|k| k.starts_with(&format!("{path}/")));
        let applicable = self.model.require_dir(parent_of(path)).is_ok()
            && !matches!(
                self.model.node(path),
                Some(MNode {
                    kind: MKind::Dir,
                    ..
                })
            )
            && !has_below(path)
            && !bucket_below
            && !self.model.moved_from.contains(path)
            && (data.is_some() || mem.body(path).is_some());
        let mut conflict = false;
        // What the path shows before the bucket wins (while a refresh has not resolved
        // the conflict yet): the local version.
        let before = self.model.clone().apply(&Op::Stat(path));
        if applicable {
            match data {
                Some(d) => mem.put(path, d.to_string(), &[("file-permissions", "0100640")]),
                None => {
                    delete_key(&self.system, &mem, path);
                }
            }
            conflict = self.model.other_writer(path, data);
        }
        match then {
            Refresh::Sync => {
                let want = if conflict {
                    Err(libc::EIO)
                } else {
                    Ok(Val::Unit)
                };
                let got = self.core_step(&Op::Sync);
                self.expect(op, &want, &got)?;
            }
            Refresh::Poll => {
                self.core_step(&Op::Poll).ok();
            }
            Refresh::FaultySync(spec) | Refresh::FaultyPoll(spec) => {
                let is_sync = matches!(then, Refresh::FaultySync(_));
                let step = if is_sync { Op::Sync } else { Op::Poll };
                self.system
                    .store
                    .fail_after(spec.skip, spec.count, spec.kind, spec.fault.clone());
                let got = self.core_step(&step);
                self.system.store.clear();
                if !matches!(got, Ok(Val::Unit) | Err(libc::EIO)) {
                    return Err(format!(
                        "{op:?}: the faulty refresh answered {}",
                        show(&got)
                    ));
                }
                if conflict {
                    // Half-way, the path shows the local version (not resolved yet) or
                    // the bucket's (resolved); nothing else.
                    let after = self.model.clone().apply(&Op::Stat(path));
                    let now = self.core_step(&Op::Stat(path));
                    if now != before && now != after {
                        return Err(format!(
                            "{op:?}: after the faulty refresh, Stat({path:?}) is {}, \
                             neither the local {} nor the bucket's {}",
                            show(&now),
                            show(&before),
                            show(&after)
                        ));
                    }
                }
                // The same refresh again, healthy: it must settle the conflict.
                let got = self.core_step(&step);
                let fine = match (&got, conflict && is_sync) {
                    (Ok(Val::Unit), _) => true,
                    (Err(libc::EIO), true) => true, // the conflict may be found only now
                    _ => false,
                };
                if !fine {
                    return Err(format!(
                        "{op:?}: the healthy refresh after faults answered {}",
                        show(&got)
                    ));
                }
            }
        }
        if conflict {
            // Resolved by that refresh: the path shows the bucket's version already.
            for probe in [Op::Stat(path), Op::Read(path, 0, 1000)] {
                let want = self.model.clone().apply(&probe);
                let got = self.core_step(&probe);
                self.expect(&probe, &want, &got)
                    .map_err(|e| format!("{op:?} resolved the conflict wrongly: {e}"))?;
            }
        }
        if matches!(then, Refresh::Sync | Refresh::FaultySync(_)) {
            self.model.mark_all_synced();
        }
        // A poll shows the bucket's version wherever the mount had no local change.
        self.core_step(&Op::Poll).ok();
        self.check_tree("after another writer")
    }

    pub(crate) fn finish(&mut self) -> Result<(), String> {
        self.sync_checked(&Op::Sync, Ok(Val::Unit))?;
        self.core_step(&Op::Poll).ok();
        self.check_tree("at the end, after a poll")?;
        self.check_bucket("at the end")?;
        let left = self.system.remount();
        if left != 0 {
            return Err(format!("final remount: the flush left {left} records"));
        }
        self.model.close_all();
        self.check_tree("at the end, after a remount")?;
        self.check_bucket("at the end, after a remount")
    }
}

pub(crate) fn delete_key(system: &System, mem: &Arc<MemoryStore>, path: &str) {
    system.block_on(mem.delete(path)).expect("memory delete");
}

pub(crate) fn show(res: &Res) -> String {
    match res {
        Ok(Val::Bytes(b)) => format!("Ok({:?})", lossy(b)),
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({})", errno_name(*e)),
    }
}

pub(crate) fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EPERM => "EPERM",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// Bytes as text, with runs of zeros (sparse files) written `<N zeros>`.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let zeros = rest.iter().take_while(|b| **b == 0).count();
        if zeros >= 8 {
            out.push_str(&format!("<{zeros} zeros>"));
            rest = &rest[zeros..];
        } else {
            let text = rest
                .iter()
                .skip(1)
                .position(|b| *b == 0)
                .map_or(rest.len(), |i| i + 1);
            out.push_str(&String::from_utf8_lossy(&rest[..text]));
            rest = &rest[text..];
        }
    }
    out
}

pub(crate) fn printable(lost: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    lost.iter().map(|(o, b)| (o.clone(), lossy(b))).collect()
}

pub(crate) fn diff_maps<V: std::fmt::Debug + PartialEq>(
    want: &BTreeMap<String, V>,
    got: &BTreeMap<String, V>,
) -> String {
    let mut out = String::new();
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for key in keys {
        match (want.get(key), got.get(key)) {
            (Some(w), Some(g)) if w == g => {}
            (w, g) => out.push_str(&format!("  {key}:\n    model: {w:?}\n    core:  {g:?}\n")),
        }
    }
    out
}

/// Runs one case; Err names the failing step and what differed.
pub(crate) fn run_ops(
    ops: &[Op],
    progress: Arc<std::sync::Mutex<(usize, String)>>,
) -> Result<(), Failure> {
    let mut case = Case::new(progress);
    for (i, op) in ops.iter().enumerate() {
        case.at(Some(i), &format!("{op:?}"));
        case.step(op)
            .map_err(|reason| Failure { step: i, reason })?;
    }
    case.at(Some(ops.len()), "the final sync, poll and remount");
    case.finish().map_err(|reason| Failure {
        step: ops.len(),
        reason,
    })
}

/// Runs a case on its own thread, so a deadlock in the core fails the case instead of
/// hanging the test. A panic counts as a failure too.
pub(crate) fn run_guarded(ops: &[Op], limit: Duration) -> Result<(), Failure> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = ops.to_vec();
    let progress = Arc::new(std::sync::Mutex::new((0, String::new())));
    let shared = progress.clone();
    std::thread::Builder::new()
        .name("model-case".into())
        .spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_ops(&owned, shared)));
            let _ = tx.send(result);
        })
        .expect("thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(Failure {
            step: progress.lock().unwrap_or_else(|e| e.into_inner()).0,
            reason: format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        }),
        // The thread is left hanging; the process ends it.
        Err(_) => {
            let (step, doing) = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Err(Failure {
                step,
                reason: format!("hung: no answer within {limit:?} while running {doing}"),
            })
        }
    }
}

/// The kind of a failure: its first line without the operation's arguments ("Op...:
/// model says X, core says Y", "after sync: the mount differs", "hung ... running Sync").
pub(crate) fn signature(f: &Failure) -> String {
    let line = f.reason.lines().next().unwrap_or("");
    let kind: String = line
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == ' ')
        .collect();
    let tail = line.rsplit_once(": ").map_or("", |(_, t)| t);
    let tail: String = tail.chars().filter(|c| !c.is_numeric()).collect();
    format!("{kind}|{tail}")
}

/// Drops operations while the case still fails the same way (same signature).
pub(crate) fn shrink(ops: Vec<Op>, failure: &Failure, budget: Duration) -> Vec<Op> {
    let started = Instant::now();
    let want = signature(failure);
    let hang = failure.reason.starts_with("hung");
    let limit = if hang {
        Duration::from_secs(3)
    } else {
        HANG_LIMIT
    };
    let mut ops = ops;
    // Nothing after the failing step matters (unless it failed in the final checks).
    if failure.step + 1 < ops.len() {
        let candidate = ops[..=failure.step].to_vec();
        if run_guarded(&candidate, limit).is_err_and(|f| signature(&f) == want) {
            ops = candidate;
        }
    }
    let mut i = ops.len();
    while i > 0 && started.elapsed() < budget {
        i -= 1;
        let mut candidate = ops.clone();
        candidate.remove(i);
        if let Err(f) = run_guarded(&candidate, limit) {
            if signature(&f) == want {
                ops = candidate;
                i = i.min(ops.len());
            }
        }
    }
    ops
}

pub(crate) fn print_ops(ops: &[Op]) -> String {
    ops.iter()
        .enumerate()
        .map(|(i, op)| format!("  {i:3}: {op:?},\n"))
        .collect()
}
