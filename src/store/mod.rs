//! The one door to S3: the `ObjectStore` trait, its types and errors. Everything above
//! this module talks to a bucket only through the trait; `s3` implements it with
//! aws-sdk-s3, `memory` is an in-process fake for unit tests and benches, and `faulty`
//! wraps a store to inject faults (errors, slow answers) in tests.

use std::collections::HashMap;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub mod faulty;
pub mod memory;
pub mod s3;

/// One object as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

/// One page of a delimiter listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectSummary>,
    /// Prefixes (ending in the delimiter) that group deeper keys.
    pub common_prefixes: Vec<String>,
    /// Continuation token for the next page; None on the last page.
    pub next_token: Option<String>,
}

/// What HeadObject (or the headers of a GET) says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// User metadata, keys without the `x-amz-meta-` prefix.
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("bucket does not exist")]
    NoSuchBucket,
    #[error("access denied{}", fmt_detail(.0))]
    AccessDenied(String),
    #[error("credentials rejected ({0})")]
    BadCredentials(String),
    #[error("no AWS credentials found ({0})")]
    NoCredentials(String),
    #[error("object changed (precondition failed)")]
    PreconditionFailed,
    #[error("requested range not satisfiable")]
    InvalidRange,
    /// The object is archived (a Glacier storage class): S3 answers InvalidObjectState.
    #[error("object archived (InvalidObjectState){}", fmt_detail(.0))]
    ObjectArchived(String),
    /// The KMS key that encrypts the object or the bucket cannot be used.
    #[error("encryption key inaccessible{}", fmt_detail(.0))]
    KeyInaccessible(String),
    /// The request's user metadata is over S3's 2 KB limit (MetadataTooLarge).
    #[error("user metadata too large (MetadataTooLarge){}", fmt_detail(.0))]
    MetadataTooLarge(String),
    /// The key is over S3's 1,024 bytes (KeyTooLongError).
    #[error("key too long (KeyTooLongError){}", fmt_detail(.0))]
    KeyTooLong(String),
    #[error("throttled by the store{}", fmt_detail(.0))]
    Throttled(String),
    #[error("endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("S3 error {code} (HTTP {status}){}", fmt_detail(.message))]
    Service {
        status: u16,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

fn fmt_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// Precondition of a write, for conflict detection (S3 conditional writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteCondition {
    /// Unconditional.
    None,
    /// Only if the key does not exist (`If-None-Match: *`).
    IfAbsent,
    /// Only if the current object has this ETag (`If-Match`).
    IfMatch(String),
}

/// User metadata to store on an object (keys without the `x-amz-meta-` prefix).
pub type UserMetadata = HashMap<String, String>;

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Whether a write with a `WriteCondition` that does not hold is refused
    /// (`PreconditionFailed`), as S3 does. Where it may not be, exports read the key
    /// first, so another writer's version is found before it would be overwritten
    /// (except by a write landing between that read and the write).
    fn enforces_write_conditions(&self) -> bool {
        true
    }

    /// One page of ListObjectsV2 under `prefix` with delimiter `/`.
    async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError>;

    /// HeadObject.
    async fn head(&self, key: &str) -> Result<ObjectHead, StoreError>;

    /// GetObject of a byte range (end exclusive, clamped to the object by the store).
    /// With `if_match`, fails with `PreconditionFailed` if the object's ETag differs, so a
    /// reader never mixes bytes of two versions.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes, StoreError>;

    /// GetObject of a whole object with what its headers say (size, ETag, user metadata):
    /// one request where a small file needs both its bytes and its POSIX metadata. With
    /// `if_match`, fails with `PreconditionFailed` if the object's ETag differs.
    async fn get_whole(
        &self,
        key: &str,
        if_match: Option<&str>,
    ) -> Result<(ObjectHead, Bytes), StoreError> {
        let head = self.head(key).await?;
        if if_match.is_some() && head.etag.as_deref() != if_match {
            return Err(StoreError::PreconditionFailed);
        }
        let data = self
            .get_range(key, 0..head.size, head.etag.as_deref())
            .await?;
        Ok((head, data))
    }

    /// PutObject of a whole body; returns the new ETag.
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &UserMetadata,
        condition: &WriteCondition,
    ) -> Result<String, StoreError>;

    /// Starts a multipart upload; returns its upload id.
    async fn create_multipart(
        &self,
        key: &str,
        metadata: &UserMetadata,
    ) -> Result<String, StoreError>;

    /// Uploads one part (numbered from 1); returns the part's ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError>;

    /// Completes a multipart upload from (part number, ETag) pairs; returns the new ETag.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
        condition: &WriteCondition,
    ) -> Result<String, StoreError>;

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;

    /// Replaces an object's metadata without re-sending its body (CopyObject onto itself
    /// with metadata REPLACE); returns the new ETag.
    async fn replace_metadata(
        &self,
        key: &str,
        metadata: &UserMetadata,
        if_match: Option<&str>,
    ) -> Result<String, StoreError>;

    /// Server-side CopyObject of `from` (only if its ETag is `if_match`, when given) to
    /// `to`, with `metadata` replacing the source's; returns the new ETag.
    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: &UserMetadata,
        if_match: Option<&str>,
    ) -> Result<String, StoreError>;

    /// DeleteObject (a delete marker in a versioned bucket). Deleting a missing key is
    /// not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}
