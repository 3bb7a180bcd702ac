//! Event-driven import: S3 Event Notifications (ObjectCreated, ObjectRemoved) tell the
//! mount which directories changed, so a change made in the bucket shows within a second
//! instead of at the next poll round. The events only say where to look: each changed
//! directory that this mount watches (has listed) is listed again and merged exactly as a
//! poll round does (`FsCore::refresh_dir`: conflicts, invalidation, the cache), so an
//! event can never make the mount show something the bucket does not hold. Polling
//! stays on as the safety net (lost or late events, and deletes on versioned buckets,
//! which some servers do not announce). docs/SEMANTICS.md "Import".
//!
//! Sources implement `EventSource`: SQS today (`SqsSource`); a MinIO
//! `ListenBucketNotification` stream can follow behind the same trait.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::fs::inode::{Node, ROOT_INO};
use crate::fs::FsCore;
use crate::store::ObjectStore;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One object's change, as an S3 Event Notification record tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    pub key: String,
    pub removed: bool,
    /// S3's per-key ordering token (hex, comparable after padding); None from servers
    /// that send none.
    pub sequencer: Option<String>,
    pub etag: Option<String>,
}

/// One delivered message: its events (none for a test event; a malformed or foreign
/// message is logged and carries none) and what acknowledges it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub events: Vec<ObjectEvent>,
    pub receipt: String,
}

/// Where events come from.
pub trait EventSource: Send + Sync {
    /// The next messages; waits (long polling) while there are none.
    fn receive(&self) -> BoxFuture<'_, Result<Vec<Delivery>, String>>;
    /// Acknowledges handled messages (they are not delivered again).
    fn done(&self, receipts: Vec<String>) -> BoxFuture<'_, Result<(), String>>;
    /// For status: e.g. "sqs http://127.0.0.1:5000/123456789012/changes".
    fn describe(&self) -> String;
}

/// The object events of one notification body for `bucket`. Ok(empty) for S3's test
/// event and for records of other buckets (a queue shared with other buckets); Err for
/// anything that is not an S3 Event Notification. An SNS envelope is opened first.
pub fn parse_notification(body: &str, bucket: &str) -> Result<Vec<ObjectEvent>, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("Type").and_then(|t| t.as_str()) == Some("Notification") {
        let inner = value
            .get("Message")
            .and_then(|m| m.as_str())
            .ok_or("an SNS envelope without a Message")?;
        return parse_notification(inner, bucket);
    }
    if value.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    let records = value
        .get("Records")
        .and_then(|r| r.as_array())
        .ok_or("no Records: not an S3 event notification")?;
    let mut events = Vec::new();
    for record in records {
        let name = record
            .get("eventName")
            .and_then(|n| n.as_str())
            .ok_or("a record without eventName")?;
        let removed = if name.starts_with("ObjectCreated") {
            false
        } else if name.starts_with("ObjectRemoved") {
            true
        } else {
            continue; // restores, replication, lifecycle transitions: not a change
        };
        let s3 = record.get("s3").ok_or("a record without s3")?;
        let record_bucket = s3
            .pointer("/bucket/name")
            .and_then(|b| b.as_str())
            .ok_or("a record without a bucket name")?;
        if record_bucket != bucket {
            continue;
        }
        let object = s3.get("object").ok_or("a record without an object")?;
        let key = object
            .get("key")
            .and_then(|k| k.as_str())
            .ok_or("a record without a key")?;
        let text = |field: &str| object.get(field).and_then(|v| v.as_str()).map(String::from);
        events.push(ObjectEvent {
            key: url_decode(key).ok_or("a key that is not URL-encoded UTF-8")?,
            removed,
            sequencer: text("sequencer"),
            etag: text("eTag").map(|e| e.trim_matches('"').to_string()),
        });
    }
    Ok(events)
}

/// Event keys are URL-encoded, with `+` for a space.
fn url_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(b) = input.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = [input.next()?, input.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).ok()
}

/// The newest sequencer seen per key, so an event older than one already handled (SQS
/// delivers out of order, and at least once) is dropped. Bounded: once full it starts
/// afresh, which at worst lists a directory once more.
#[derive(Debug, Default)]
pub struct Sequencers {
    seen: HashMap<String, String>,
}

const MAX_SEQUENCERS: usize = 100_000;

impl Sequencers {
    /// Whether `event` is newer than every event handled for its key. Without a
    /// sequencer an event always counts (its listing decides).
    pub fn is_new(&mut self, event: &ObjectEvent) -> bool {
        let Some(seq) = &event.sequencer else {
            return true;
        };
        if let Some(last) = self.seen.get(&event.key) {
            if !newer(seq, last) {
                return false;
            }
        }
        if self.seen.len() >= MAX_SEQUENCERS {
            self.seen.clear();
        }
        self.seen.insert(event.key.clone(), seq.clone());
        true
    }
}

/// Sequencers are hex strings of varying length: compare them as numbers.
fn newer(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a.to_ascii_uppercase()) > (b.len(), b.to_ascii_uppercase())
}

/// SQS with long polling.
pub struct SqsSource {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    bucket: String,
}

/// Long-polling wait per ReceiveMessage (SQS's maximum).
const WAIT_SECONDS: i32 = 20;

impl SqsSource {
    /// A client for the queue at `queue_url`, whose endpoint is the URL's origin
    /// (`https://sqs.REGION.amazonaws.com`, or a local server's).
    pub async fn connect(
        queue_url: &str,
        region: Option<String>,
        bucket: &str,
    ) -> Result<Self, String> {
        let origin = queue_origin(queue_url)?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(origin)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(WAIT_SECONDS as u64 + 10))
                    .build(),
            );
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        let config = loader.load().await;
        let mut builder = aws_sdk_sqs::config::Builder::from(&config);
        if config.region().is_none() {
            builder = builder.region(aws_config::Region::from_static("us-east-1"));
        }
        Ok(SqsSource {
            client: aws_sdk_sqs::Client::from_conf(builder.build()),
            queue_url: queue_url.to_string(),
            bucket: bucket.to_string(),
        })
    }
}

/// `scheme://host[:port]` of a queue URL; the URL must be http(s) with a queue path.
pub fn queue_origin(queue_url: &str) -> Result<String, String> {
    let (scheme, rest) = queue_url.split_once("://").ok_or_else(|| {
        format!("{queue_url}: not a URL (expected https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE)")
    })?;
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "{queue_url}: the queue URL must be http:// or https://"
        ));
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || path.trim_matches('/').is_empty() {
        return Err(format!(
            "{queue_url}: expected http(s)://HOST/ACCOUNT/QUEUE"
        ));
    }
    Ok(format!("{scheme}://{host}"))
}

impl EventSource for SqsSource {
    fn receive(&self) -> BoxFuture<'_, Result<Vec<Delivery>, String>> {
        Box::pin(async move {
            let answer = self
                .client
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(WAIT_SECONDS)
                .send()
                .await
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
            let mut deliveries = Vec::new();
            for message in answer.messages.unwrap_or_default() {
                let Some(receipt) = message.receipt_handle else {
                    continue;
                };
                let body = message.body.unwrap_or_default();
                let events = match parse_notification(&body, &self.bucket) {
                    Ok(events) => events,
                    Err(reason) => {
                        // Never retried: it would fail the same way forever.
                        warn!(
                            queue = self.queue_url,
                            reason, "dropped a message that is not an S3 event notification"
                        );
                        Vec::new()
                    }
                };
                deliveries.push(Delivery { events, receipt });
            }
            Ok(deliveries)
        })
    }

    fn done(&self, receipts: Vec<String>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for chunk in receipts.chunks(10) {
                let mut request = self
                    .client
                    .delete_message_batch()
                    .queue_url(&self.queue_url);
                for (i, receipt) in chunk.iter().enumerate() {
                    let entry = aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .map_err(|e| e.to_string())?;
                    request = request.entries(entry);
                }
                request
                    .send()
                    .await
                    .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
            }
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!("sqs {}", self.queue_url)
    }
}

impl FsCore {
    /// The event loop: forever, receive events, list again each watched directory they
    /// name (once per batch, however many events name it), acknowledge. `store` is the
    /// loop's own S3 client, as the poller's is.
    pub async fn run_events(
        self: Arc<Self>,
        source: Arc<dyn EventSource>,
        store: Arc<dyn ObjectStore>,
    ) {
        info!(
            source = source.describe(),
            "importing changes from S3 events"
        );
        let mut sequencers = Sequencers::default();
        let mut backoff = Duration::from_secs(1);
        loop {
            let deliveries = match source.receive().await {
                Ok(deliveries) => {
                    backoff = Duration::from_secs(1);
                    deliveries
                }
                Err(e) => {
                    warn!(error = %e, "cannot receive events; polling still runs; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let receipts: Vec<String> = deliveries.iter().map(|d| d.receipt.clone()).collect();
            let events: Vec<ObjectEvent> = deliveries.into_iter().flat_map(|d| d.events).collect();
            self.apply_events(&events, &mut sequencers, &store).await;
            if !receipts.is_empty() {
                if let Err(e) = source.done(receipts).await {
                    // They come back after the visibility timeout: applied twice, harmless.
                    warn!(error = %e, "cannot acknowledge events");
                }
            }
        }
    }

    /// Lists again, once each, the watched directories that `events` name.
    pub async fn apply_events(
        &self,
        events: &[ObjectEvent],
        sequencers: &mut Sequencers,
        store: &Arc<dyn ObjectStore>,
    ) {
        let mut dirs: BTreeMap<u64, Arc<Node>> = BTreeMap::new();
        for event in events {
            self.metrics()
                .events_received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !sequencers.is_new(event) {
                debug!(
                    key = event.key,
                    "event older than one already handled; dropped"
                );
                continue;
            }
            if let Some(dir) = self.watched_dir_of(&event.key) {
                dirs.insert(dir.ino, dir);
            }
        }
        for dir in dirs.values() {
            if let Err(e) = self.refresh_dir(dir, store).await {
                debug!(ino = dir.ino, error = %e, "events: listing failed; polling retries");
            }
        }
    }

    /// The deepest directory on `key`'s path that this mount has listed (a change below
    /// a directory it never listed shows when it is listed, as always). None for keys
    /// outside the mount.
    fn watched_dir_of(&self, key: &str) -> Option<Arc<Node>> {
        let rel = key.strip_prefix(self.root_prefix())?;
        let mut dir = self.inode(ROOT_INO)?;
        dir.state().children.as_ref()?;
        let mut parts: Vec<&str> = rel.split('/').collect();
        parts.pop(); // the object's own name (empty for a `dir/` marker)
        for part in parts {
            match self.child_of(&dir, part) {
                Some(next) if next.state().is_dir && next.state().children.is_some() => dir = next,
                _ => break,
            }
        }
        Some(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: &str = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3",
        "eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},
        "object":{"key":"dir/a+file%C3%A9.txt","size":5,"eTag":"abc","sequencer":"0055AED6DCD90281E5"}}},
        {"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"b"},"object":{"key":"gone","sequencer":"0A"}}},
        {"eventName":"ObjectRestore:Completed","s3":{"bucket":{"name":"b"},"object":{"key":"cold"}}},
        {"eventName":"ObjectCreated:Copy","s3":{"bucket":{"name":"other"},"object":{"key":"theirs"}}}]}"#;

    #[test]
    fn notifications_are_parsed_and_filtered() {
        let events = parse_notification(CREATED, "b").unwrap();
        assert_eq!(
            events,
            vec![
                ObjectEvent {
                    key: "dir/a fileé.txt".into(),
                    removed: false,
                    sequencer: Some("0055AED6DCD90281E5".into()),
                    etag: Some("abc".into()),
                },
                ObjectEvent {
                    key: "gone".into(),
                    removed: true,
                    sequencer: Some("0A".into()),
                    etag: None,
                },
            ]
        );
        // S3's test event, and an SNS envelope around a notification.
        assert!(
            parse_notification(r#"{"Service":"Amazon S3","Event":"s3:TestEvent"}"#, "b")
                .unwrap()
                .is_empty()
        );
        let sns = serde_json::json!({"Type": "Notification", "Message": CREATED}).to_string();
        assert_eq!(parse_notification(&sns, "b").unwrap().len(), 2);
    }

    #[test]
    fn malformed_and_foreign_messages_are_errors_not_panics() {
        for body in [
            "",
            "not json",
            "{}",
            r#"{"Records": 5}"#,
            r#"{"Records":[{"s3":{}}]}"#,
            r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"%zz"}}}]}"#,
            r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"%C3"}}}]}"#,
        ] {
            assert!(parse_notification(body, "b").is_err(), "{body}");
        }
    }

    #[test]
    fn older_events_of_a_key_are_dropped() {
        let event = |key: &str, seq: Option<&str>| ObjectEvent {
            key: key.into(),
            removed: false,
            sequencer: seq.map(String::from),
            etag: None,
        };
        let mut seen = Sequencers::default();
        assert!(seen.is_new(&event("k", Some("00A1"))));
        assert!(!seen.is_new(&event("k", Some("00A1"))), "a redelivery");
        assert!(!seen.is_new(&event("k", Some("9F"))), "older, shorter");
        assert!(seen.is_new(&event("k", Some("0100"))), "newer, longer");
        assert!(seen.is_new(&event("other", Some("01"))));
        assert!(
            seen.is_new(&event("k", None)),
            "no sequencer: the listing decides"
        );
    }

    #[test]
    fn queue_urls_give_their_endpoint() {
        assert_eq!(
            queue_origin("https://sqs.eu-west-1.amazonaws.com/123456789012/changes").unwrap(),
            "https://sqs.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            queue_origin("http://127.0.0.1:5000/123456789012/q").unwrap(),
            "http://127.0.0.1:5000"
        );
        for bad in ["sqs://q", "http://host", "http:///x", "queue"] {
            assert!(queue_origin(bad).is_err(), "{bad}");
        }
    }
}
