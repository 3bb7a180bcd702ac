//! A fault-injecting `ObjectStore` for tests: it wraps another store (normally
//! `memory::MemoryStore`) and, on command, fails or slows down the next N requests (of
//! one kind, or of any kind), and counts requests by kind. The in-process reference model
//! (`tests/core_model.rs`) drives the core through it; it lives in the library so tests in
//! `tests/` can use it.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ListPage, ObjectHead, ObjectStore, StoreError, UserMetadata, WriteCondition};

/// The kinds of request a fault can target and the counts are kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    List,
    Head,
    /// Ranged and whole-object GETs.
    Get,
    Put,
    /// Create, upload part, complete and abort of a multipart upload.
    Multipart,
    /// CopyObject, including the metadata-only copy onto itself.
    Copy,
    Delete,
}

impl RequestKind {
    pub const ALL: [RequestKind; 7] = [
        RequestKind::List,
        RequestKind::Head,
        RequestKind::Get,
        RequestKind::Put,
        RequestKind::Multipart,
        RequestKind::Copy,
        RequestKind::Delete,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// What an affected request does instead of (or before) reaching the wrapped store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// An HTTP 5xx answer (`StoreError::Service`), e.g. 500 or 503.
    Status(u16),
    /// Throttling (SlowDown, 429), after the SDK's retries.
    Throttle,
    /// The endpoint did not answer in time (`StoreError::Unreachable`).
    Timeout,
    /// 412: a precondition (If-Match, If-None-Match) failed.
    PreconditionFailed,
    /// 404: no such key.
    NotFound,
    /// Any other answer of the store, as given (e.g. `MetadataTooLarge`, `AccessDenied`).
    Error(StoreError),
    /// The request reaches the wrapped store, after this long (`tokio::time::sleep`, so a
    /// test on a paused clock stays deterministic).
    Slow(Duration),
}

impl Fault {
    fn error(&self) -> Option<StoreError> {
        match self {
            Fault::Status(status) => Some(StoreError::Service {
                status: *status,
                code: if *status == 503 {
                    "ServiceUnavailable".into()
                } else {
                    "InternalError".into()
                },
                message: "injected fault".into(),
            }),
            Fault::Throttle => Some(StoreError::Throttled("SlowDown (injected)".into())),
            Fault::Timeout => Some(StoreError::Unreachable("timed out (injected)".into())),
            Fault::PreconditionFailed => Some(StoreError::PreconditionFailed),
            Fault::NotFound => Some(StoreError::NotFound),
            Fault::Error(error) => Some(error.clone()),
            Fault::Slow(_) => None,
        }
    }
}

/// One armed fault: lets `skip` requests of `kind` (any kind if None) pass, then applies
/// to the next `remaining` ones.
#[derive(Debug, Clone)]
struct Rule {
    kind: Option<RequestKind>,
    fault: Fault,
    skip: u64,
    remaining: u64,
}

/// An `ObjectStore` that forwards to `inner` except where an armed fault says otherwise.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: Arc<S>,
    /// Armed faults, oldest first; a request takes the first rule that matches its kind.
    rules: Mutex<Vec<Rule>>,
    /// Requests seen, by `RequestKind` index (faulted ones included).
    counts: [AtomicU64; 7],
    /// Requests answered with an injected error.
    injected: AtomicU64,
}

impl<S: ObjectStore> FaultyStore<S> {
    pub fn new(inner: Arc<S>) -> Self {
        FaultyStore {
            inner,
            rules: Mutex::new(Vec::new()),
            counts: Default::default(),
            injected: AtomicU64::new(0),
        }
    }

    /// The wrapped store (e.g. to play another writer, or to inspect the bucket).
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Arms `fault` for the next `n` requests of `kind` (of any kind if None).
    pub fn fail_next(&self, n: u64, kind: Option<RequestKind>, fault: Fault) {
        self.fail_after(0, n, kind, fault);
    }

    /// Arms `fault` for `n` requests of `kind` (any kind if None) once `skip` more of
    /// them have passed: a fault at a chosen moment, e.g. on the second HEAD of an export.
    pub fn fail_after(&self, skip: u64, n: u64, kind: Option<RequestKind>, fault: Fault) {
        if n > 0 {
            self.rules().push(Rule {
                kind,
                fault,
                skip,
                remaining: n,
            });
        }
    }

    /// Disarms every fault.
    pub fn clear(&self) {
        self.rules().clear();
    }

    /// Requests of `kind` seen so far.
    pub fn count(&self, kind: RequestKind) -> u64 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }

    /// Requests of every kind seen so far.
    pub fn total(&self) -> u64 {
        RequestKind::ALL.iter().map(|k| self.count(*k)).sum()
    }

    /// Requests answered with an injected error so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        // Rules are replaced whole under the lock; a poisoned lock still holds valid ones.
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request and applies the first armed fault that matches it: Err is the
    /// injected answer; Ok means "go on to the wrapped store" (after any delay).
    async fn enter(&self, kind: RequestKind) -> Result<(), StoreError> {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
        let fault = {
            let mut rules = self.rules();
            let mut hit = None;
            for (i, rule) in rules.iter_mut().enumerate() {
                if !rule.kind.is_none_or(|k| k == kind) || rule.remaining == 0 {
                    continue;
                }
                if rule.skip > 0 {
                    rule.skip -= 1;
                    continue;
                }
                hit = Some(i);
                break;
            }
            hit.map(|i| {
                rules[i].remaining -= 1;
                let fault = rules[i].fault.clone();
                if rules[i].remaining == 0 {
                    rules.remove(i);
                }
                fault
            })
        };
        match fault {
            None => Ok(()),
            Some(Fault::Slow(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Some(fault) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                Err(fault.error().unwrap_or_else(|| {
                    StoreError::Other("fault without an error (unreachable)".into())
                }))
            }
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FaultyStore<S> {
    async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        self.enter(RequestKind::List).await?;
        self.inner.list_page(prefix, continuation, max_keys).await
    }

    async fn head(&self, key: &str) -> Result<ObjectHead, StoreError> {
        self.enter(RequestKind::Head).await?;
        self.inner.head(key).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes, StoreError> {
        self.enter(RequestKind::Get).await?;
        self.inner.get_range(key, range, if_match).await
    }

    async fn get_whole(
        &self,
        key: &str,
        if_match: Option<&str>,
    ) -> Result<(ObjectHead, Bytes), StoreError> {
        // One GET on the wire, whatever the wrapped store does to answer it.
        self.enter(RequestKind::Get).await?;
        self.inner.get_whole(key, if_match).await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &UserMetadata,
        condition: &WriteCondition,
    ) -> Result<String, StoreError> {
        self.enter(RequestKind::Put).await?;
        self.inner.put(key, body, metadata, condition).await
    }

    async fn create_multipart(
        &self,
        key: &str,
        metadata: &UserMetadata,
    ) -> Result<String, StoreError> {
        self.enter(RequestKind::Multipart).await?;
        self.inner.create_multipart(key, metadata).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.enter(RequestKind::Multipart).await?;
        self.inner
            .upload_part(key, upload_id, part_number, body)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
        condition: &WriteCondition,
    ) -> Result<String, StoreError> {
        self.enter(RequestKind::Multipart).await?;
        self.inner
            .complete_multipart(key, upload_id, parts, condition)
            .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.enter(RequestKind::Multipart).await?;
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn replace_metadata(
        &self,
        key: &str,
        metadata: &UserMetadata,
        if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        self.enter(RequestKind::Copy).await?;
        self.inner.replace_metadata(key, metadata, if_match).await
    }

    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: &UserMetadata,
        if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        self.enter(RequestKind::Copy).await?;
        self.inner.copy_object(from, to, metadata, if_match).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.enter(RequestKind::Delete).await?;
        self.inner.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn store() -> FaultyStore<MemoryStore> {
        let inner = Arc::new(MemoryStore::new());
        inner.put("k", "value", &[]);
        FaultyStore::new(inner)
    }

    #[tokio::test]
    async fn forwards_and_counts_by_kind() {
        let s = store();
        assert_eq!(&s.get_range("k", 0..3, None).await.unwrap()[..], b"val");
        assert_eq!(s.head("k").await.unwrap().size, 5);
        s.put(
            "n",
            Bytes::from_static(b"x"),
            &UserMetadata::new(),
            &WriteCondition::None,
        )
        .await
        .unwrap();
        s.list_page("", None, None).await.unwrap();
        s.copy_object("n", "m", &UserMetadata::new(), None)
            .await
            .unwrap();
        s.delete("n").await.unwrap();
        let id = s
            .create_multipart("big", &UserMetadata::new())
            .await
            .unwrap();
        s.abort_multipart("big", &id).await.unwrap();
        assert_eq!(
            RequestKind::ALL.map(|k| s.count(k)),
            [1, 1, 1, 1, 2, 1, 1],
            "list, head, get, put, multipart, copy, delete"
        );
        assert_eq!(s.total(), 8);
        assert_eq!(s.injected(), 0);
        assert_eq!(s.inner().body("m").as_deref(), Some(&b"x"[..]));
        assert_eq!(s.inner().body("n"), None);
    }

    #[tokio::test]
    async fn fails_the_next_n_requests_of_one_kind() {
        let s = store();
        s.fail_next(2, Some(RequestKind::Head), Fault::Status(503));
        // Other kinds pass.
        assert!(s.get_range("k", 0..1, None).await.is_ok());
        for _ in 0..2 {
            assert!(matches!(
                s.head("k").await,
                Err(StoreError::Service { status: 503, .. })
            ));
        }
        assert!(s.head("k").await.is_ok(), "the fault is used up");
        assert_eq!(s.count(RequestKind::Head), 3);
        assert_eq!(s.injected(), 2);
    }

    #[tokio::test]
    async fn fails_at_a_chosen_moment() {
        let s = store();
        s.fail_after(1, 1, Some(RequestKind::Head), Fault::Timeout);
        assert!(s.get_range("k", 0..1, None).await.is_ok(), "not counted");
        assert!(s.head("k").await.is_ok(), "the first HEAD passes");
        assert!(matches!(s.head("k").await, Err(StoreError::Unreachable(_))));
        assert!(s.head("k").await.is_ok());
        assert_eq!(s.injected(), 1);
    }

    #[tokio::test]
    async fn every_error_fault_and_any_kind() {
        let s = store();
        let cases = [
            (Fault::Status(500), "Service"),
            (Fault::Throttle, "Throttled"),
            (Fault::Timeout, "Unreachable"),
            (Fault::PreconditionFailed, "PreconditionFailed"),
            (Fault::NotFound, "NotFound"),
        ];
        for (fault, want) in cases {
            s.fail_next(1, None, fault);
            let err = s
                .put(
                    "k",
                    Bytes::new(),
                    &UserMetadata::new(),
                    &WriteCondition::None,
                )
                .await
                .unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{err:?}");
        }
        // A failed write never reached the bucket.
        assert_eq!(s.inner().body("k").as_deref(), Some(&b"value"[..]));
        // Faults queue in order; clear disarms the rest.
        s.fail_next(1, None, Fault::NotFound);
        s.fail_next(5, None, Fault::Timeout);
        assert_eq!(s.head("k").await, Err(StoreError::NotFound));
        assert!(matches!(s.head("k").await, Err(StoreError::Unreachable(_))));
        s.clear();
        assert!(s.head("k").await.is_ok());
    }

    #[tokio::test]
    async fn slow_answers_wait_then_pass() {
        let s = store();
        s.fail_next(
            1,
            Some(RequestKind::Get),
            Fault::Slow(Duration::from_millis(30)),
        );
        let start = tokio::time::Instant::now();
        let data = s.get_range("k", 0..5, None).await.unwrap();
        assert_eq!(&data[..], b"value");
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(s.injected(), 0, "a slow answer is not an error");
        assert_eq!(s.count(RequestKind::Get), 1);
    }
}
