//! Event-driven import (`--events-queue`): moto delivers S3 Event Notifications for its
//! bucket to its own SQS queue; with polling at 30 s, changes made in the bucket show on
//! the mount within a second; deletes (which moto does not announce on a versioned
//! bucket) still show within the poll interval; a malformed message is dropped, never a
//! crash.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
use common::{assert_answers, block_on, wait_for, Mount, S3Server};

fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new(common::REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            common::ACCESS_KEY,
            common::SECRET_KEY,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// A queue that receives the bucket's ObjectCreated and ObjectRemoved events.
fn notify_queue(server: &S3Server, bucket: &str) -> (aws_sdk_sqs::Client, String) {
    let sqs = sqs_client(&server.endpoint);
    block_on(async {
        let url = sqs
            .create_queue()
            .queue_name("changes")
            .send()
            .await
            .expect("create queue")
            .queue_url
            .expect("queue url");
        let arn = format!("arn:aws:sqs:{}:123456789012:changes", common::REGION);
        let queue = QueueConfiguration::builder()
            .queue_arn(arn)
            .events(Event::from("s3:ObjectCreated:*"))
            .events(Event::from("s3:ObjectRemoved:*"))
            .build()
            .expect("queue configuration");
        server
            .client()
            .put_bucket_notification_configuration()
            .bucket(bucket)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .queue_configurations(queue)
                    .build(),
            )
            .send()
            .await
            .expect("notification configuration");
        (sqs, url)
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn changes_in_the_bucket_show_within_a_second_with_polling_at_30s() {
    let server = S3Server::start();
    server.create_bucket("evt");
    server.put("evt", "base.txt", "base", &[]);
    let (sqs, queue) = notify_queue(&server, "evt");
    let mount = Mount::start(
        &server,
        "s3://evt",
        &["--events-queue", &queue, "--poll-interval", "30s"],
    );
    let root = mount.join("");
    // Watched: the root is listed.
    assert!(std::fs::read_dir(&root).expect("ls").count() >= 1);
    let status = common::status_xattr(&root, Duration::from_secs(10));
    assert!(status.contains("events: on (sqs "), "{status}");
    // The queue's notification-configuration test event, if any, is consumed first.
    std::thread::sleep(Duration::from_millis(500));

    // A malformed message and a foreign one: dropped, logged, no crash.
    block_on(async {
        for body in ["not json at all", r#"{"Records":[{"weird":true}]}"#] {
            sqs.send_message()
                .queue_url(&queue)
                .message_body(body)
                .send()
                .await
                .expect("send");
        }
    });

    let mut latencies = Vec::new();
    for i in 0..50 {
        // Creates and overwrites, alternating.
        let key = format!("f{}.txt", i % 25);
        let body = format!("version {i}");
        let started = Instant::now();
        server.put("evt", &key, body.clone(), &[]);
        let path = mount.join(&key);
        let shown = wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&path).ok().as_deref() == Some(body.as_str())
        });
        assert!(shown, "{key} never showed {body}");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    eprintln!(
        "events: 50 changes visible after p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.last().unwrap()
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}: {latencies:?}");

    let log = mount.log();
    assert!(
        log.contains("dropped a message that is not an S3 event notification"),
        "{log}"
    );

    // A delete is not announced by moto on a versioned bucket: the poller shows it.
    block_on(async {
        server
            .client()
            .delete_object()
            .bucket("evt")
            .key("base.txt")
            .send()
            .await
            .expect("delete");
    });
    assert!(
        wait_for(Duration::from_secs(40), || !mount.join("base.txt").exists()),
        "the delete shows within the poll interval"
    );
    assert_answers(&root, Duration::from_secs(5));
}

#[test]
fn a_bad_queue_url_fails_the_mount_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().to_str().expect("utf-8").to_string();
    let (out, _) = common::run_s3files(
        &["mount", "s3://evt", &mnt, "--events-queue", "sqs://nope"],
        &[],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--events-queue"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
