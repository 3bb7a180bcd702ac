//! Export timers: when each pending record is due, which ones are running, and the rule
//! that keeps one key's exports in order (an export may start only when no older record
//! for the same key is still pending). Pure state, no I/O; the export loop drives it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use super::failure::{ExportErrorCode, ExportFailure};

/// Why a record is not exported automatically any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The object changed in S3; the local copy is kept, never exported.
    Conflict,
    /// An error that retrying will not fix; `sync` tries again.
    Failed(ExportFailure),
}

#[derive(Debug, Clone)]
struct Slot {
    key: String,
    /// Another record that must be exported first.
    after: Option<u64>,
    due: Instant,
    running: bool,
    hold: Option<Hold>,
    last_error: Option<String>,
    /// When the record was first scheduled (its first change not in S3); later changes
    /// restart `due` but not this.
    since: Instant,
}

/// The state of one record, as `user.s3files.status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Pending,
    Exporting,
    Held(Hold),
}

/// Cost: touching, finishing and removing a record are O(log n); starting due records
/// looks only at records already due. (An unpacked tree of thousands of files keeps
/// thousands of records waiting; nothing here may scan them all per operation.)
#[derive(Debug, Default)]
pub struct Schedule {
    slots: BTreeMap<u64, Slot>,
    /// (due, id) of every waiting record: not running, not held.
    dues: BTreeSet<(Instant, u64)>,
    /// Ids of every record by key (the oldest one of a key goes first).
    by_key: HashMap<String, BTreeSet<u64>>,
}

impl Schedule {
    /// Adds a record or pushes its due time to `due` (each change restarts the timer).
    pub fn touch(&mut self, id: u64, key: &str, due: Instant) {
        self.touch_after(id, key, due, None);
    }

    /// Like `touch`, for a record that may start only once record `after` is gone.
    pub fn touch_after(&mut self, id: u64, key: &str, due: Instant, after: Option<u64>) {
        self.unindex(id);
        let slot = self.slots.entry(id).or_insert_with(|| Slot {
            after,
            key: key.to_string(),
            due,
            running: false,
            hold: None,
            last_error: None,
            since: Instant::now(),
        });
        if slot.key != key {
            if let Some(ids) = self.by_key.get_mut(&slot.key) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_key.remove(&slot.key);
                }
            }
            slot.key = key.to_string();
        }
        slot.due = due;
        if matches!(slot.hold, Some(Hold::Failed(_))) {
            slot.hold = None; // a new change is a new chance
        }
        self.by_key.entry(key.to_string()).or_default().insert(id);
        self.index(id);
    }

    /// Makes records due now (explicit sync), releasing failed ones for another try.
    pub fn expedite(&mut self, ids: &[u64], now: Instant) {
        for id in ids {
            self.unindex(*id);
            if let Some(slot) = self.slots.get_mut(id) {
                slot.due = slot.due.min(now);
                if matches!(slot.hold, Some(Hold::Failed(_))) {
                    slot.hold = None;
                }
                // A new attempt: an error from an earlier one no longer says how this
                // one ends (a `sync` right after a failed one must try, not fail).
                if !slot.running {
                    slot.last_error = None;
                }
            }
            self.index(*id);
        }
    }

    pub fn remove(&mut self, id: u64) {
        self.unindex(id);
        if let Some(slot) = self.slots.remove(&id) {
            if let Some(ids) = self.by_key.get_mut(&slot.key) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_key.remove(&slot.key);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// When the oldest record still here was first scheduled. Scans every record: for
    /// the metrics scrape, never for a file-system request.
    pub fn oldest(&self) -> Option<Instant> {
        self.slots.values().map(|slot| slot.since).min()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.slots.keys().copied().collect()
    }

    /// Up to `limit` records that may start now; they are marked running. A record may
    /// start when it is due, is its key's oldest record, and what it waits for is gone.
    pub fn take_due(&mut self, now: Instant, limit: usize) -> Vec<u64> {
        let mut ready = Vec::new();
        for &(due, id) in &self.dues {
            if ready.len() >= limit || due > now {
                break;
            }
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            let oldest = self
                .by_key
                .get(&slot.key)
                .and_then(|ids| ids.first())
                .is_some_and(|first| *first == id);
            let waiting = slot.after.is_some_and(|a| self.slots.contains_key(&a));
            if oldest && !waiting {
                ready.push(id);
            }
        }
        for id in &ready {
            self.unindex(*id);
            if let Some(slot) = self.slots.get_mut(id) {
                slot.running = true;
            }
        }
        ready
    }

    /// The next time after `now` a waiting record becomes due. Records already due but
    /// blocked (behind an older record of their key, or a dependency) are started when
    /// that record finishes, which wakes the export loop, so they are not counted here.
    pub fn next_due_after(&self, now: Instant) -> Option<Instant> {
        self.dues
            .range((now, u64::MAX)..)
            .map(|(due, _)| *due)
            .find(|due| *due > now)
    }

    /// An export attempt ended; with `retry_at`, the record waits until then.
    pub fn finish(&mut self, id: u64, retry_at: Option<Instant>, error: Option<String>) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.running = false;
            if let Some(at) = retry_at {
                slot.due = slot.due.max(at);
            }
            slot.last_error = error;
        }
        self.index(id);
    }

    /// Marks a waiting record running without exporting it (a poll-time conflict being
    /// resolved): the export loop will not start it and renames wait for it. False if
    /// it is running, held or gone. `finish`, `hold` or `remove` ends the claim.
    pub fn claim(&mut self, id: u64) -> bool {
        match self.slots.get(&id) {
            Some(slot) if !slot.running && slot.hold.is_none() => {}
            _ => return false,
        }
        self.unindex(id);
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.running = true;
        }
        true
    }

    pub fn hold(&mut self, id: u64, hold: Hold) {
        self.unindex(id);
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.running = false;
            slot.last_error = match &hold {
                Hold::Conflict => Some("the object changed in S3 (conflict)".into()),
                Hold::Failed(failure) => Some(failure.message.clone()),
            };
            slot.hold = Some(hold);
        }
    }

    pub fn state(&self, id: u64) -> Option<(SlotState, Option<String>)> {
        self.slots.get(&id).map(|s| {
            let state = match (&s.hold, s.running) {
                (Some(h), _) => SlotState::Held(h.clone()),
                (None, true) => SlotState::Exporting,
                (None, false) => match self.failed_dependency(s) {
                    Some(failure) => {
                        return (
                            SlotState::Held(Hold::Failed(failure.clone())),
                            Some(failure.message),
                        )
                    }
                    None => SlotState::Pending,
                },
            };
            (state, s.last_error.clone())
        })
    }

    /// A record waiting for one that failed for good cannot export either (until a
    /// `sync` or a new change releases that one): it counts as failed, with S3 Files'
    /// `DependencyExportFailed`, so `sync` and unmount do not wait for it.
    fn failed_dependency(&self, slot: &Slot) -> Option<ExportFailure> {
        let after = self.slots.get(&slot.after?)?;
        match &after.hold {
            Some(Hold::Failed(failure)) => Some(ExportFailure::new(
                ExportErrorCode::DependencyExportFailed,
                format!(
                    "waits for the export of {}, which failed ({}: {})",
                    after.key, failure.code, failure.message
                ),
            )),
            _ => None,
        }
    }

    fn unindex(&mut self, id: u64) {
        if let Some(slot) = self.slots.get(&id) {
            self.dues.remove(&(slot.due, id));
        }
    }

    fn index(&mut self, id: u64) {
        if let Some(slot) = self.slots.get(&id) {
            if !slot.running && slot.hold.is_none() {
                self.dues.insert((slot.due, id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn debounce_and_per_key_order() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.touch(1, "a", t0 + Duration::from_secs(1));
        s.touch(2, "a", t0);
        s.touch(3, "b", t0);
        // 2 waits for 1 (same key, older); 3 may go.
        assert_eq!(s.take_due(t0, 10), vec![3]);
        // Touching 1 again pushes it later.
        s.touch(1, "a", t0 + Duration::from_secs(5));
        assert!(s.take_due(t0 + Duration::from_secs(2), 10).is_empty());
        // 2 is due but blocked behind 1: the next wake-up is 1's due time.
        assert_eq!(
            s.next_due_after(t0 + Duration::from_secs(2)),
            Some(t0 + Duration::from_secs(5))
        );
        assert_eq!(s.take_due(t0 + Duration::from_secs(5), 10), vec![1]);
        s.remove(1);
        assert_eq!(s.take_due(t0 + Duration::from_secs(5), 10), vec![2]);
    }

    #[test]
    fn dependencies_wait() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.touch(1, "new", t0);
        s.touch_after(2, "old", t0, Some(1));
        assert_eq!(s.take_due(t0, 10), vec![1]);
        assert!(
            s.take_due(t0, 10).is_empty(),
            "delete of the old key waits for the copy"
        );
        s.remove(1);
        assert_eq!(s.take_due(t0, 10), vec![2]);
    }

    #[test]
    fn a_record_waiting_for_a_failed_one_fails_with_it() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.touch(1, "new", t0);
        s.touch_after(2, "old", t0, Some(1));
        assert_eq!(s.take_due(t0, 10), vec![1]);
        assert_eq!(s.state(2).unwrap().0, SlotState::Pending);
        s.hold(
            1,
            Hold::Failed(ExportFailure::new(ExportErrorCode::PathTooLong, "long")),
        );
        let (state, error) = s.state(2).unwrap();
        match state {
            SlotState::Held(Hold::Failed(f)) => {
                assert_eq!(f.code, ExportErrorCode::DependencyExportFailed)
            }
            other => panic!("{other:?}"),
        }
        assert!(error.unwrap().contains("PathTooLong"));
        assert!(s.take_due(t0, 10).is_empty(), "it still waits");
        // A sync releases the failed one: the dependent waits again, not failed.
        s.expedite(&[1], t0);
        assert_eq!(s.state(2).unwrap().0, SlotState::Pending);
        // A conflict is no export failure of the dependency.
        assert_eq!(s.take_due(t0, 10), vec![1]);
        s.hold(1, Hold::Conflict);
        assert_eq!(s.state(2).unwrap().0, SlotState::Pending);
    }

    #[test]
    fn holds_and_sync() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.touch(1, "a", t0);
        assert_eq!(s.take_due(t0, 10), vec![1]);
        assert_eq!(s.state(1).unwrap().0, SlotState::Exporting);
        s.hold(1, Hold::Failed(ExportFailure::local("denied")));
        assert!(s.take_due(t0, 10).is_empty());
        assert_eq!(s.state(1).unwrap().1.as_deref(), Some("denied"));
        s.expedite(&[1], t0);
        assert_eq!(s.take_due(t0, 10), vec![1]);
        s.hold(1, Hold::Conflict);
        s.expedite(&[1], t0);
        assert!(
            s.take_due(t0, 10).is_empty(),
            "a conflict is never exported"
        );
    }

    proptest! {
        /// Whatever the sequence of touches, finishes and removals, no two exports of a
        /// key run at once and a key's records start in id order.
        #[test]
        fn one_key_in_order(ops in proptest::collection::vec((0u8..4, 0u64..3, 0usize..8), 1..80)) {
            let t0 = Instant::now();
            let mut s = Schedule::default();
            let mut keys: BTreeMap<u64, String> = BTreeMap::new();
            let mut running: HashSet<u64> = HashSet::new();
            let mut next_id = 1;
            for (action, key, pick) in ops {
                match action {
                    // A new record (ids only grow, as the journal hands them out).
                    0 => {
                        let key = format!("k{key}");
                        s.touch(next_id, &key, t0);
                        keys.insert(next_id, key);
                        next_id += 1;
                    }
                    1 => {
                        for id in s.take_due(t0, 4) {
                            let key = keys[&id].clone();
                            for r in &running {
                                prop_assert_ne!(&keys[r], &key, "two exports of one key");
                            }
                            for older in s.ids().into_iter().filter(|o| *o < id) {
                                prop_assert_ne!(&keys[&older], &key, "started before an older record");
                            }
                            running.insert(id);
                        }
                    }
                    // An export finishes and its record is removed.
                    2 => {
                        let done: Vec<u64> = running.iter().copied().collect();
                        if let Some(id) = done.get(pick % done.len().max(1)) {
                            running.remove(id);
                            s.remove(*id);
                            keys.remove(id);
                        }
                    }
                    // A change to a pending record restarts its timer.
                    _ => {
                        let ids = s.ids();
                        if let Some(id) = ids.get(pick % ids.len().max(1)) {
                            s.touch(*id, &keys[id].clone(), t0);
                        }
                    }
                }
            }
        }
    }
}
