//! `ObjectStore` over aws-sdk-s3: client construction (endpoint, region, path style,
//! timeouts, retries) and the mapping of SDK errors to `StoreError`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, CompletedMultipartUpload, CompletedPart, EncodingType,
    MetadataDirective,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tracing::debug;

use super::{
    ListPage, ObjectHead, ObjectStore, ObjectSummary, StoreError, UserMetadata, WriteCondition,
};
use crate::metrics::Metrics;

/// A connect that takes longer than this is treated as an unreachable endpoint, so a dead
/// endpoint turns into EIO quickly instead of hanging the kernel request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// No bytes for this long on an open connection fails the attempt (then retried).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per request, first one included; the SDK's standard mode backs off
/// exponentially with jitter and retries throttling, 5xx and transient I/O errors.
const MAX_ATTEMPTS: u32 = 4;

/// What the S3 client needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub bucket: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    /// Whether the store refuses a PutObject whose `If-Match`/`If-None-Match` does not
    /// hold (S3, MinIO, moto do; Garage accepts it regardless).
    pub enforces_write_conditions: bool,
}

pub struct S3Store {
    client: Client,
    bucket: String,
    metrics: Arc<Metrics>,
    enforces_write_conditions: bool,
}

impl S3Store {
    /// Builds the client from the standard AWS configuration chain plus our options.
    /// Fails (without network I/O) only when no region can be found.
    pub async fn connect(options: &S3Options, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk_config = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(options.force_path_style);
        if sdk_config.region().is_none() {
            if options.endpoint_url.is_some() {
                // S3-compatible stores rarely care; us-east-1 is what their docs use.
                builder = builder.region(Region::from_static("us-east-1"));
            } else {
                return Err(StoreError::Other(
                    "no AWS region configured: pass --region or set AWS_REGION".into(),
                ));
            }
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: options.bucket.clone(),
            metrics,
            enforces_write_conditions: options.enforces_write_conditions,
        })
    }
}

impl S3Store {
    /// Reads a GetObject body whole, counting the bytes.
    async fn read_body(&self, body: ByteStream) -> Result<Bytes, StoreError> {
        let data = body
            .collect()
            .await
            .map_err(|e| StoreError::Unreachable(format!("reading object body: {e}")))?
            .into_bytes();
        self.metrics.add_bytes_fetched(data.len() as u64);
        Ok(data)
    }

    /// A one-key listing of `prefix` with few retries: the start-up check that the
    /// endpoint answers, the bucket exists and the credentials are accepted.
    pub async fn probe(&self, prefix: &str) -> Result<ListPage, StoreError> {
        let config = self
            .client
            .config()
            .to_builder()
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .build();
        list(
            &Client::from_conf(config),
            &self.bucket,
            prefix,
            None,
            Some(1),
        )
        .await
    }

    /// The bucket's versioning state (GetBucketVersioning), for the start-up check that
    /// S3 Files' requirement holds: overwritten and deleted data stays recoverable.
    pub async fn versioning(&self) -> Result<Versioning, StoreError> {
        let out = match self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => out,
            // moto answers 200 with a document whose root element the SDK refuses
            // (GetBucketVersioningResponse, not VersioningConfiguration); read its Status.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {
                let body = e
                    .raw_response()
                    .and_then(|r| r.body().bytes())
                    .unwrap_or(&[]);
                return Ok(versioning_from_xml(&String::from_utf8_lossy(body)));
            }
            Err(e) => return Err(classify(e)),
        };
        Ok(match out.status() {
            Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
            Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
            _ => Versioning::Never,
        })
    }
}

/// The versioning state in a GetBucketVersioning document: its `<Status>` element.
fn versioning_from_xml(body: &str) -> Versioning {
    let status = body
        .split_once("<Status>")
        .and_then(|(_, rest)| rest.split_once("</Status>"))
        .map(|(status, _)| status.trim());
    match status {
        Some("Enabled") => Versioning::Enabled,
        Some("Suspended") => Versioning::Suspended,
        _ => Versioning::Never,
    }
}

/// A bucket's versioning state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    Enabled,
    /// Was enabled once; new writes no longer keep old versions.
    Suspended,
    /// Never enabled.
    Never,
}

#[async_trait]
impl ObjectStore for S3Store {
    fn enforces_write_conditions(&self) -> bool {
        self.enforces_write_conditions
    }

    async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        debug!(prefix, "s3 ListObjectsV2");
        let _timer = self.metrics.count_request(crate::metrics::Request::List);
        list(&self.client, &self.bucket, prefix, continuation, max_keys).await
    }

    async fn head(&self, key: &str) -> Result<ObjectHead, StoreError> {
        debug!(key, "s3 HeadObject");
        let _timer = self.metrics.count_request(crate::metrics::Request::Head);
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        Ok(object_head(
            out.content_length(),
            out.e_tag(),
            out.last_modified(),
            out.metadata(),
        ))
    }

    async fn get_whole(
        &self,
        key: &str,
        if_match: Option<&str>,
    ) -> Result<(ObjectHead, Bytes), StoreError> {
        debug!(key, "s3 GetObject (whole)");
        let _timer = self.metrics.count_request(crate::metrics::Request::Get);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(classify)?;
        let head = object_head(
            out.content_length(),
            out.e_tag(),
            out.last_modified(),
            out.metadata(),
        );
        let data = self.read_body(out.body).await?;
        Ok((head, data))
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes, StoreError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        debug!(key, start = range.start, end = range.end, "s3 GetObject");
        let _timer = self.metrics.count_request(crate::metrics::Request::Get);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(classify)?;
        self.read_body(out.body).await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &UserMetadata,
        condition: &WriteCondition,
    ) -> Result<String, StoreError> {
        debug!(key, size = body.len(), ?condition, "s3 PutObject");
        let _timer = self.metrics.count_request(crate::metrics::Request::Put);
        let (if_match, if_none_match) = condition_headers(condition);
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .set_metadata(Some(metadata.clone()))
            .set_if_match(if_match)
            .set_if_none_match(if_none_match)
            .send()
            .await
            .map_err(classify)?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn create_multipart(
        &self,
        key: &str,
        metadata: &UserMetadata,
    ) -> Result<String, StoreError> {
        debug!(key, "s3 CreateMultipartUpload");
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(Some(metadata.clone()))
            .send()
            .await
            .map_err(classify)?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other("CreateMultipartUpload returned no upload id".into()))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        debug!(key, part_number, size = body.len(), "s3 UploadPart");
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(classify)?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
        condition: &WriteCondition,
    ) -> Result<String, StoreError> {
        debug!(
            key,
            parts = parts.len(),
            ?condition,
            "s3 CompleteMultipartUpload"
        );
        let _timer = self.metrics.count_request(crate::metrics::Request::Put);
        let (if_match, if_none_match) = condition_headers(condition);
        let parts = parts
            .into_iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(n).e_tag(etag).build())
            .collect();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .set_if_match(if_match)
            .set_if_none_match(if_none_match)
            .send()
            .await
            .map_err(classify)?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        debug!(key, "s3 AbortMultipartUpload");
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn replace_metadata(
        &self,
        key: &str,
        metadata: &UserMetadata,
        if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        self.copy_object(key, key, metadata, if_match).await
    }

    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        metadata: &UserMetadata,
        if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        debug!(from, to, "s3 CopyObject");
        let _timer = self.metrics.count_request(crate::metrics::Request::Copy);
        let out = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(format!("{}/{}", self.bucket, url_encode_key(from)))
            .metadata_directive(MetadataDirective::Replace)
            .set_metadata(Some(metadata.clone()))
            .set_copy_source_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(classify)?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        debug!(key, "s3 DeleteObject");
        let _timer = self.metrics.count_request(crate::metrics::Request::Delete);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)
        {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn condition_headers(condition: &WriteCondition) -> (Option<String>, Option<String>) {
    match condition {
        WriteCondition::None => (None, None),
        WriteCondition::IfAbsent => (None, Some("*".to_string())),
        WriteCondition::IfMatch(etag) => (Some(etag.clone()), None),
    }
}

/// Percent-encodes a key for `x-amz-copy-source`, keeping `/` and unreserved characters.
fn url_encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One page of ListObjectsV2 with delimiter `/`.
async fn list(
    client: &Client,
    bucket: &str,
    prefix: &str,
    continuation: Option<String>,
    max_keys: Option<i32>,
) -> Result<ListPage, StoreError> {
    let out = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .delimiter("/")
        // Keys may hold characters XML 1.0 cannot carry (NUL, other controls); without
        // URL encoding one such key would make the whole page undecodable.
        .encoding_type(EncodingType::Url)
        .set_continuation_token(continuation)
        .set_max_keys(max_keys)
        .send()
        .await
        .map_err(classify)?;
    let encoded = out.encoding_type() == Some(&EncodingType::Url);
    let decode = |text: &str| {
        if encoded {
            url_decode(text)
        } else {
            Some(text.to_string())
        }
    };
    let objects = out
        .contents()
        .iter()
        .filter_map(|o| {
            Some(ObjectSummary {
                key: decode(o.key()?)?,
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: o.e_tag().map(str::to_string),
                last_modified: o.last_modified().and_then(to_system_time),
            })
        })
        .collect();
    let common_prefixes = out
        .common_prefixes()
        .iter()
        .filter_map(|p| decode(p.prefix()?))
        .collect();
    let next_token = match out.is_truncated() {
        Some(true) => out.next_continuation_token().map(str::to_string),
        _ => None,
    };
    Ok(ListPage {
        objects,
        common_prefixes,
        next_token,
    })
}

/// Decodes a URL-encoded key (`%XX` escapes; S3 also encodes spaces as `+`). None when
/// the result is not UTF-8, which no S3 key can be.
fn url_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// What the headers of a HeadObject or GetObject response say about the object.
fn object_head(
    content_length: Option<i64>,
    etag: Option<&str>,
    last_modified: Option<&aws_sdk_s3::primitives::DateTime>,
    metadata: Option<&HashMap<String, String>>,
) -> ObjectHead {
    ObjectHead {
        size: content_length.unwrap_or(0).max(0) as u64,
        etag: etag.map(str::to_string),
        last_modified: last_modified.and_then(to_system_time),
        metadata: metadata.cloned().unwrap_or_default(),
    }
}

fn to_system_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

/// Maps an SDK error to the store's error kinds (docs/SEMANTICS.md "Errors").
fn classify<E>(err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => from_service(
            ctx.raw().status().as_u16(),
            ctx.err().code().unwrap_or_default(),
            ctx.err().message().unwrap_or_default(),
        ),
        SdkError::TimeoutError(_) => StoreError::Unreachable("request timed out".into()),
        SdkError::DispatchFailure(failure) => {
            let reason = innermost_cause(&err);
            debug!(error = %DisplayErrorContext(&err), "S3 request not sent");
            if failure.is_timeout() || failure.is_io() {
                StoreError::Unreachable(reason)
            } else if reason.contains("credentials") {
                StoreError::NoCredentials(reason)
            } else {
                StoreError::Other(reason)
            }
        }
        // A response cut off or unreadable mid-way: the server or the path failed, and
        // another try may well succeed.
        SdkError::ResponseError(_) => StoreError::Unreachable(innermost_cause(&err)),
        _ => {
            let reason = innermost_cause(&err);
            debug!(error = %DisplayErrorContext(&err), "S3 request failed");
            if reason.contains("credentials") {
                StoreError::NoCredentials(reason)
            } else {
                StoreError::Other(reason)
            }
        }
    }
}

fn from_service(status: u16, code: &str, message: &str) -> StoreError {
    match (status, code) {
        (_, "NoSuchBucket") => StoreError::NoSuchBucket,
        (_, "NoSuchKey") | (404, _) => StoreError::NotFound,
        (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken") => {
            StoreError::BadCredentials(code.to_string())
        }
        // Refusals S3 Files reports with their own export error codes: kept apart from
        // plain access denials (KMS answers 403 too, as does an archived object).
        (_, "InvalidObjectState") => StoreError::ObjectArchived(message.to_string()),
        (_, "MetadataTooLarge") => StoreError::MetadataTooLarge(message.to_string()),
        (_, "KeyTooLongError") => StoreError::KeyTooLong(message.to_string()),
        (_, code) if code.starts_with("KMS.") => {
            StoreError::KeyInaccessible(format!("{code}: {message}"))
        }
        // A denial by KMS (the caller may not use the key) comes as AccessDenied whose
        // message names the KMS action.
        (403, _) if message.contains("kms:") => StoreError::KeyInaccessible(message.to_string()),
        (403, _) => StoreError::AccessDenied(message.to_string()),
        (412, _) => StoreError::PreconditionFailed,
        (416, _) => StoreError::InvalidRange,
        (429, _) | (_, "SlowDown" | "Throttling" | "ThrottlingException") => {
            StoreError::Throttled(code.to_string())
        }
        _ => StoreError::Service {
            status,
            code: if code.is_empty() {
                "Unknown".into()
            } else {
                code.to_string()
            },
            message: message.to_string(),
        },
    }
}

/// The SDK's error chain is long; its innermost cause is what a person needs to read
/// (e.g. "Connection refused (os error 111)").
fn innermost_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioning_status_is_read_from_any_root_element() {
        let doc = |inner: &str| {
            format!(
                "<?xml version=\"1.0\"?><GetBucketVersioningResponse xmlns=\"x\">{inner}</GetBucketVersioningResponse>"
            )
        };
        assert_eq!(versioning_from_xml(&doc("")), Versioning::Never);
        assert_eq!(
            versioning_from_xml(&doc("<Status>Enabled</Status>")),
            Versioning::Enabled
        );
        assert_eq!(
            versioning_from_xml(&doc(
                "<Status>Suspended</Status><MfaDelete>Disabled</MfaDelete>"
            )),
            Versioning::Suspended
        );
        assert_eq!(versioning_from_xml("not xml"), Versioning::Never);
    }

    #[test]
    fn service_errors_map_to_kinds() {
        assert_eq!(
            from_service(404, "NoSuchBucket", ""),
            StoreError::NoSuchBucket
        );
        assert_eq!(from_service(404, "NoSuchKey", ""), StoreError::NotFound);
        assert_eq!(from_service(404, "", ""), StoreError::NotFound);
        assert_eq!(
            from_service(403, "InvalidAccessKeyId", "x"),
            StoreError::BadCredentials("InvalidAccessKeyId".into())
        );
        assert_eq!(
            from_service(403, "AccessDenied", "no"),
            StoreError::AccessDenied("no".into())
        );
        assert_eq!(
            from_service(412, "PreconditionFailed", ""),
            StoreError::PreconditionFailed
        );
        assert_eq!(
            from_service(503, "SlowDown", ""),
            StoreError::Throttled("SlowDown".into())
        );
        assert_eq!(
            from_service(403, "InvalidObjectState", "archived"),
            StoreError::ObjectArchived("archived".into())
        );
        assert_eq!(
            from_service(400, "MetadataTooLarge", "big"),
            StoreError::MetadataTooLarge("big".into())
        );
        assert_eq!(
            from_service(400, "KeyTooLongError", "long"),
            StoreError::KeyTooLong("long".into())
        );
        assert_eq!(
            from_service(400, "KMS.DisabledException", "off"),
            StoreError::KeyInaccessible("KMS.DisabledException: off".into())
        );
        assert_eq!(
            from_service(
                403,
                "AccessDenied",
                "User: x is not authorized to perform: kms:GenerateDataKey"
            ),
            StoreError::KeyInaccessible(
                "User: x is not authorized to perform: kms:GenerateDataKey".into()
            )
        );
        assert!(matches!(
            from_service(500, "InternalError", "boom"),
            StoreError::Service { status: 500, .. }
        ));
    }

    #[test]
    fn copy_source_encoding() {
        assert_eq!(url_encode_key("a/b c+d%é"), "a/b%20c%2Bd%25%C3%A9");
        assert_eq!(
            url_decode(&url_encode_key("x y/z?")).as_deref(),
            Some("x y/z?")
        );
    }

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode("a%2Fb+c%00d").as_deref(), Some("a/b c\0d"));
        assert_eq!(url_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(url_decode("plain").as_deref(), Some("plain"));
        assert_eq!(url_decode("bad%2"), None);
        assert_eq!(url_decode("bad%zz"), None);
        assert_eq!(url_decode("%FF"), None);
    }

    #[test]
    fn innermost_cause_skips_context() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(Wrapper(inner));
        assert_eq!(innermost_cause(&outer), "refused");
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("context")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
