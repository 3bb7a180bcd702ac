//! Command-line definitions (clap). The shape of `s3files mount` is a contract other tools
//! drive; extend it compatibly and keep docs/CONFIGURATION.md in step with the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::units::{parse_duration, parse_size};

#[derive(Debug, Parser)]
#[command(
    name = "s3files",
    version,
    about = "Mount an S3 bucket as a local directory with Amazon S3 Files semantics",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount s3://BUCKET[/PREFIX] on MOUNTPOINT. `mount -t s3files SOURCE DIR -o
    /// key=value,...` and fstab lines do the same through a link to this binary named
    /// /sbin/mount.s3files: each option is the flag of that name.
    Mount(MountArgs),
    /// Unmount an s3files mount, and return once its daemon has exported what is pending
    /// (at most 30 s), released its cache dir and exited. Exit status 3: unmounted, but
    /// some changes are still not in S3 (they go out at the next mount).
    Unmount(UnmountArgs),
    /// Export every pending change under PATH (default: the current directory) now, and
    /// return once it is in S3. On a terminal it shows a progress bar (changes and bytes
    /// left, rate); it ends with one summary line on stderr.
    Sync(SyncArgs),
    /// Show the state of PATH (default: the current directory) on an s3files mount: S3
    /// Files' S3Key, FilePath and ExportError, then its export state, how much of it is
    /// cached, and the mount's cache and S3 metrics. On the mount's root it ends with a
    /// summary of the whole mount: pending exports and bytes, the oldest pending change,
    /// conflicts, lost+found, cache use and how changes in S3 are found.
    Status(SyncArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// Bucket (and optional key prefix) to mount, as s3://BUCKET[/PREFIX].
    #[arg(value_name = "s3://BUCKET[/PREFIX]")]
    pub source: String,

    /// Existing empty directory to mount on.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// S3 endpoint URL, e.g. http://127.0.0.1:9000 for MinIO or moto.
    #[arg(long, value_name = "URL", env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,

    /// AWS region. Without it the standard AWS configuration chain decides; with a custom
    /// endpoint and no region anywhere, us-east-1 is used.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Address buckets as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT (needed for MinIO-style
    /// endpoints).
    #[arg(long)]
    pub force_path_style: bool,

    /// Directory for the daemon's local state (log, staging, cache), private to the
    /// daemon's user (0700). Default: $XDG_CACHE_HOME/s3files/<mount-id> (or
    /// ~/.cache/...), one per mount.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Bound on the disk cache of file data under the cache directory, e.g. 10GiB; least
    /// recently used data already in S3 is dropped to stay under it [default: 10GiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,

    /// Bound on the in-memory tier of the data cache (the hottest blocks) [default: 128MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_cache_size: Option<u64>,

    /// Cached data unused for this long is dropped, e.g. 7days [default: 30days]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub cache_expiry: Option<std::time::Duration>,

    /// Quiet time after the last change before a file is exported, e.g. 60s, 500ms
    /// [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub write_back_delay: Option<std::time::Duration>,

    /// How often accessed directories are re-listed to pick up changes made in the bucket;
    /// 0s turns polling off [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub poll_interval: Option<std::time::Duration>,

    /// How long the kernel may keep names and attributes without asking the daemon. The
    /// daemon invalidates them whenever it learns of a change (the poller, conflicts), so
    /// this only bounds staleness should a notification be lost; 1s for names when the
    /// daemon checks permissions (--uid, --root-squash). Directory listings are kept
    /// until the directory's mtime moves; 0s keeps none [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub kernel_cache_ttl: Option<std::time::Duration>,

    /// FUSE requests served at once (kernel event loops); 1 serves them one at a time
    /// [default: twice the number of CPUs, at least 4]
    #[arg(long, value_name = "N")]
    pub fuse_threads: Option<usize>,

    /// Import changes made in the bucket from S3 Event Notifications delivered to this
    /// SQS queue (its URL, e.g. https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE): a change
    /// shows within a second. Polling stays on as the safety net, every 60s unless
    /// --poll-interval says otherwise
    #[arg(long, value_name = "URL")]
    pub events_queue: Option<String>,

    /// Serve every read and write through the daemon. By default an open file whose
    /// bytes are local (being written, or wholly in the disk cache) is handed to the
    /// kernel, which reads and writes the local file directly (FUSE passthrough, Linux
    /// 6.9+, needs CAP_SYS_ADMIN); where the kernel lacks it the mount falls back by
    /// itself
    #[arg(long)]
    pub no_passthrough: bool,

    /// Files smaller than this are fetched into the cache in the background when their
    /// directory is first listed; 0 turns this off. The root's import rule, unless an
    /// --import-rule has prefix= (giving both is an error) [default: 128KiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub import_size_threshold: Option<u64>,

    /// An S3 Files import rule, repeatable (at most 10 with the root's):
    /// prefix=DIR/,trigger=ON_DIRECTORY_FIRST_ACCESS|ON_FILE_ACCESS,size-less-than=SIZE
    /// (or sizeLessThan=). Files under DIR/ (mount-relative; prefix= is the root) smaller
    /// than SIZE are imported when their directory is first listed (the default trigger)
    /// or, with ON_FILE_ACCESS, when they are opened; the longest matching prefix wins.
    /// Without a rule for the root, --import-size-threshold is the root's rule.
    #[arg(long, value_name = "RULE")]
    pub import_rule: Vec<String>,

    /// Access-point user: every request acts as this uid, and the daemon checks permissions
    /// against it.
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,

    /// Access-point group: every request acts as this gid.
    #[arg(long, value_name = "N")]
    pub gid: Option<u32>,

    /// Access-point secondary groups, comma-separated (at most 16): group permissions
    /// also apply to files of these gids. Needs --uid and --gid.
    #[arg(
        long = "gids",
        visible_alias = "secondary-gids",
        value_name = "G1,G2,...",
        value_delimiter = ','
    )]
    pub gids: Vec<u32>,

    /// Access-point root directory: the mount shows this directory of the file system
    /// (a path below the mounted prefix, e.g. /team/a) as its root. If it does not
    /// exist, the mount fails unless --root-owner and --root-mode say how to create it.
    #[arg(long, value_name = "PATH")]
    pub root_dir: Option<String>,

    /// Owner of a root directory the mount creates (and of the missing directories on
    /// the way to it), as UID:GID. Needs --root-dir and --root-mode.
    #[arg(long, value_name = "UID:GID")]
    pub root_owner: Option<String>,

    /// Permissions of a root directory the mount creates (and of the missing directories
    /// on the way to it), 3 or 4 octal digits (e.g. 0755). Needs --root-dir and
    /// --root-owner.
    #[arg(long, value_name = "MODE")]
    pub root_mode: Option<String>,

    /// Requests from uid 0 act as the anonymous user 65534:65534, for permission checks
    /// and as the owner of new files (S3 Files without s3files:ClientRootAccess).
    #[arg(long)]
    pub root_squash: bool,

    /// Refuse every write with EROFS.
    #[arg(long)]
    pub read_only: bool,

    /// Mount a bucket that does not have versioning enabled. S3 Files requires versioning
    /// so that data overwritten or deleted through the mount stays recoverable; without
    /// this flag such a mount fails. For stores that have no versioning (benchmarks).
    /// Such stores may ignore conditional writes (Garage does), so each upload then reads
    /// the key first to find another writer's version (one HeadObject per export).
    #[arg(long)]
    pub allow_unversioned: bool,

    /// Stay attached to the terminal. Without it, `mount` returns 0 once the mount is live,
    /// or non-zero with a one-line reason, and the daemon logs to CACHE_DIR/s3files.log.
    #[arg(long)]
    pub foreground: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics. A bare PORT (or :PORT) listens on
    /// 127.0.0.1 only; HOST:PORT as given, e.g. 0.0.0.0:9100 or [::1]:9100. A port in use
    /// fails the mount. docs/CONFIGURATION.md lists the metrics.
    #[arg(long, value_name = "[HOST:]PORT")]
    pub metrics_addr: Option<String>,

    /// Log level (error, warn, info, debug, trace) or a tracing filter directive.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// Mount point of a running s3files mount.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// A file or directory on an s3files mount.
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
}
