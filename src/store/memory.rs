//! An in-memory `ObjectStore` for unit tests and benches of the layers above the store.
//! It follows S3's listing rules (lexicographic order, `/` delimiter, paging) closely
//! enough for the core's tests; it is never the only proof of a behaviour: the
//! integration tests run against a real S3-compatible server.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ListPage, ObjectHead, ObjectStore, ObjectSummary, StoreError, UserMetadata, WriteCondition,
};

#[derive(Debug, Clone)]
struct MemObject {
    data: Bytes,
    etag: String,
    last_modified: SystemTime,
    metadata: HashMap<String, String>,
}

/// Counts of requests served, so tests can assert how much traffic an operation costs.
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub list: AtomicU64,
    pub head: AtomicU64,
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub copy: AtomicU64,
    pub delete: AtomicU64,
}

/// A multipart upload in progress: key, metadata, parts by number.
type Upload = (String, UserMetadata, BTreeMap<i32, Bytes>);

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, MemObject>>,
    /// Multipart uploads in progress: id -> (key, metadata, parts by number).
    uploads: Mutex<HashMap<String, Upload>>,
    version: AtomicU64,
    /// Page size used when the caller does not ask for one (S3's is 1,000).
    pub default_page_size: usize,
    pub requests: RequestCounts,
    /// While set, HeadObject answers 503 (a store that is failing).
    failing_heads: std::sync::atomic::AtomicBool,
    /// While set, writes ignore their `WriteCondition` and the store says so (as Garage
    /// accepts any PutObject).
    ignoring_conditions: std::sync::atomic::AtomicBool,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            default_page_size: 1000,
            ..Default::default()
        }
    }

    /// Makes writes ignore their conditions, as Garage does (or honour them again).
    pub fn ignore_conditions(&self, ignore: bool) {
        self.ignoring_conditions.store(ignore, Ordering::Relaxed);
    }

    /// Makes HeadObject fail with a 503 (or work again).
    pub fn fail_heads(&self, fail: bool) {
        self.failing_heads.store(fail, Ordering::Relaxed);
    }

    /// Stores an object (replacing any), giving it a fresh ETag.
    pub fn put(&self, key: &str, data: impl Into<Bytes>, metadata: &[(&str, &str)]) {
        let n = self.version.fetch_add(1, Ordering::Relaxed);
        let object = MemObject {
            data: data.into(),
            etag: format!("\"etag-{n}\""),
            last_modified: SystemTime::now(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.lock().insert(key.to_string(), object);
    }

    /// The body of an object, if present (for assertions).
    pub fn body(&self, key: &str) -> Option<Bytes> {
        self.lock().get(key).map(|o| o.data.clone())
    }

    /// Every key held, in order (for assertions).
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The metadata of an object, if present (for assertions).
    pub fn metadata(&self, key: &str) -> Option<HashMap<String, String>> {
        self.lock().get(key).map(|o| o.metadata.clone())
    }

    fn store_checked(
        &self,
        key: &str,
        data: Bytes,
        metadata: &UserMetadata,
        condition: &WriteCondition,
    ) -> Result<String, StoreError> {
        let mut objects = self.lock();
        let current = objects.get(key).map(|o| o.etag.clone());
        let allowed = match condition {
            _ if self.ignoring_conditions.load(Ordering::Relaxed) => true,
            WriteCondition::None => true,
            WriteCondition::IfAbsent => current.is_none(),
            WriteCondition::IfMatch(etag) => current.as_deref() == Some(etag.as_str()),
        };
        if !allowed {
            return Err(StoreError::PreconditionFailed);
        }
        let n = self.version.fetch_add(1, Ordering::Relaxed);
        let etag = format!("\"etag-{n}\"");
        objects.insert(
            key.to_string(),
            MemObject {
                data,
                etag: etag.clone(),
                last_modified: SystemTime::now(),
                metadata: metadata.clone(),
            },
        );
        Ok(etag)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MemObject>> {
        // A panic while holding this lock can only come from a test assertion; the map
        // itself is never left half-updated, so the poison is safe to ignore.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn enforces_write_conditions(&self) -> bool {
        !self.ignoring_conditions.load(Ordering::Relaxed)
    }

    async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        self.requests.list.fetch_add(1, Ordering::Relaxed);
        let limit = max_keys
            .map(|m| m.max(1) as usize)
            .unwrap_or(self.default_page_size.max(1));
        let objects = self.lock();
        let mut page = ListPage::default();
        let mut count = 0;
        let mut last_returned: Option<String> = None;
        for (key, obj) in objects.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(after) = &continuation {
                if key.as_str() <= after.as_str() {
                    continue;
                }
            }
            let rest = &key[prefix.len()..];
            if let Some(slash) = rest.find('/') {
                let common = format!("{prefix}{}", &rest[..=slash]);
                if page.common_prefixes.last() == Some(&common) {
                    continue;
                }
                // Continuation after a common prefix skips every key under it.
                if continuation
                    .as_deref()
                    .is_some_and(|after| after.starts_with(&common))
                {
                    continue;
                }
                if count == limit {
                    page.next_token = last_returned;
                    return Ok(page);
                }
                page.common_prefixes.push(common.clone());
                last_returned = Some(format!("{common}\u{10FFFF}"));
            } else {
                if count == limit {
                    page.next_token = last_returned;
                    return Ok(page);
                }
                page.objects.push(ObjectSummary {
                    key: key.clone(),
                    size: obj.data.len() as u64,
                    etag: Some(obj.etag.clone()),
                    last_modified: Some(obj.last_modified),
                });
                last_returned = Some(key.clone());
            }
            count += 1;
        }
        Ok(page)
    }

    async fn head(&self, key: &str) -> Result<ObjectHead, StoreError> {
        self.requests.head.fetch_add(1, Ordering::Relaxed);
        if self.failing_heads.load(Ordering::Relaxed) {
            return Err(StoreError::Service {
                status: 503,
                code: "ServiceUnavailable".into(),
                message: String::new(),
            });
        }
        let objects = self.lock();
        let obj = objects.get(key).ok_or(StoreError::NotFound)?;
        Ok(ObjectHead {
            size: obj.data.len() as u64,
            etag: Some(obj.etag.clone()),
            last_modified: Some(obj.last_modified),
            metadata: obj.metadata.clone(),
        })
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes, StoreError> {
        self.requests.get.fetch_add(1, Ordering::Relaxed);
        let objects = self.lock();
        let obj = objects.get(key).ok_or(StoreError::NotFound)?;
        if if_match.is_some_and(|etag| etag != obj.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let len = obj.data.len() as u64;
        if range.start >= len && len > 0 {
            return Err(StoreError::InvalidRange);
        }
        let end = range.end.min(len);
        let start = range.start.min(end);
        Ok(obj.data.slice(start as usize..end as usize))
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &UserMetadata,
        condition: &WriteCondition,
    ) -> Result<String, StoreError> {
        self.requests.put.fetch_add(1, Ordering::Relaxed);
        self.store_checked(key, body, metadata, condition)
    }

    async fn create_multipart(
        &self,
        key: &str,
        metadata: &UserMetadata,
    ) -> Result<String, StoreError> {
        let id = format!("upload-{}", self.version.fetch_add(1, Ordering::Relaxed));
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                (key.to_string(), metadata.clone(), BTreeMap::new()),
            );
        Ok(id)
    }

    async fn upload_part(
        &self,
        _key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let upload = uploads.get_mut(upload_id).ok_or(StoreError::NotFound)?;
        upload.2.insert(part_number, body);
        Ok(format!("\"part-{part_number}\""))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
        condition: &WriteCondition,
    ) -> Result<String, StoreError> {
        self.requests.put.fetch_add(1, Ordering::Relaxed);
        let (_, metadata, stored) = self
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(upload_id)
            .ok_or(StoreError::NotFound)?;
        let mut body = Vec::new();
        for (number, _) in parts {
            body.extend_from_slice(stored.get(&number).ok_or(StoreError::InvalidRange)?);
        }
        self.store_checked(key, Bytes::from(body), &metadata, condition)
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(upload_id);
        Ok(())
    }

    async fn replace_metadata(
        &self,
        key: &str,
        metadata: &UserMetadata,
        if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        self.requests.copy.fetch_add(1, Ordering::Relaxed);
        let data = self.body(key).ok_or(StoreError::NotFound)?;
        let condition = match if_match {
            Some(etag) => WriteCondition::IfMatch(etag.to_string()),
            None => WriteCondition::None,
        };
        self.store_checked(key, data, metadata, &condition)
    }

    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: &UserMetadata,
        if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        self.requests.copy.fetch_add(1, Ordering::Relaxed);
        let (data, etag) = {
            let objects = self.lock();
            let source = objects.get(from).ok_or(StoreError::NotFound)?;
            (source.data.clone(), source.etag.clone())
        };
        if if_match.is_some_and(|want| want != etag) {
            return Err(StoreError::PreconditionFailed);
        }
        self.store_checked(to, data, metadata, &WriteCondition::None)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.requests.delete.fetch_add(1, Ordering::Relaxed);
        self.lock().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list_all(store: &MemoryStore, prefix: &str) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::new();
        let mut prefixes = Vec::new();
        let mut token = None;
        loop {
            let page = store.list_page(prefix, token, Some(2)).await.unwrap();
            keys.extend(page.objects.into_iter().map(|o| o.key));
            prefixes.extend(page.common_prefixes);
            match page.next_token {
                Some(t) => token = Some(t),
                None => return (keys, prefixes),
            }
        }
    }

    #[tokio::test]
    async fn delimiter_listing_with_paging() {
        let store = MemoryStore::new();
        for key in ["a", "b/1", "b/2", "b/3", "c", "d/x/y", "e"] {
            store.put(key, "x", &[]);
        }
        let (keys, prefixes) = list_all(&store, "").await;
        assert_eq!(keys, ["a", "c", "e"]);
        assert_eq!(prefixes, ["b/", "d/"]);
        let (keys, prefixes) = list_all(&store, "b/").await;
        assert_eq!(keys, ["b/1", "b/2", "b/3"]);
        assert!(prefixes.is_empty());
    }

    #[tokio::test]
    async fn ranges_and_preconditions() {
        let store = MemoryStore::new();
        store.put("k", "0123456789", &[]);
        let etag = store.head("k").await.unwrap().etag.unwrap();
        assert_eq!(&store.get_range("k", 2..5, None).await.unwrap()[..], b"234");
        assert_eq!(&store.get_range("k", 8..50, None).await.unwrap()[..], b"89");
        assert_eq!(
            store.get_range("k", 0..1, Some("\"other\"")).await,
            Err(StoreError::PreconditionFailed)
        );
        assert!(store.get_range("k", 0..1, Some(&etag)).await.is_ok());
        assert_eq!(store.head("nope").await, Err(StoreError::NotFound));
    }
}
