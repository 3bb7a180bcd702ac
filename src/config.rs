//! Typed configuration: the validated form of the command line, with defaults, and the
//! parsers for sizes (`10GiB`), durations (`60s`, `500ms`) and `s3://` URIs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::MountArgs;
use crate::fs::namespace::{validate_prefix, MAX_KEY_LEN};
use crate::import_rules::{ImportRule, ImportRules, RuleSetError, MAX_RULES};

/// S3 Files exports a file after about a minute without writes.
pub const DEFAULT_WRITE_BACK_DELAY: Duration = Duration::from_secs(60);

/// Remote changes show within seconds on S3 Files; we list watched directories this often.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// With events on, polling is only the safety net (lost events, deletes some servers do
/// not announce): less often.
pub const EVENTS_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Disk cache bound when `--cache-size` is not given.
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;

/// Memory tier bound when `--memory-cache-size` is not given.
pub const DEFAULT_MEMORY_CACHE_SIZE: u64 = 128 << 20;

/// S3 Files drops cached data unused for 30 days.
pub const DEFAULT_CACHE_EXPIRY: Duration = Duration::from_secs(30 * 86400);

/// S3 Files imports files under 128 KiB with their directory's first listing.
pub const DEFAULT_IMPORT_SIZE_THRESHOLD: u64 = 128 << 10;

/// Where the mount's data lives in S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix of the mount root: empty, or ending in `/`.
    pub prefix: String,
}

/// Identity that every request acts as (S3 Files access point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPoint {
    pub uid: u32,
    pub gid: u32,
    /// Groups besides `gid` whose group permissions apply (S3 Files `SecondaryGids`).
    pub secondary_gids: Vec<u32>,
}

/// S3 Files (like EFS) takes at most 16 secondary gids per access point, as NFS's
/// AUTH_SYS carries at most 16 groups.
pub const MAX_SECONDARY_GIDS: usize = 16;

/// S3 Files' limits on an access point's root directory path (`/a/b`): at most 100
/// characters, at most 4 directories, none starting with `.` and none of these characters.
pub const MAX_ROOT_DIR_LEN: usize = 100;
pub const MAX_ROOT_DIR_DEPTH: usize = 4;
const ROOT_DIR_FORBIDDEN: &str = "$#<>;`|&?{}^*\n";

/// An access point's root directory: the directory of the file system the mount shows
/// as its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDir {
    /// Path below the file-system root, without leading or trailing `/` (`team/a`).
    pub path: String,
    /// How to create it when it does not exist; without it the mount fails then.
    pub create: Option<CreationInfo>,
}

/// Owner and permissions of a root directory the mount creates (S3 Files
/// `CreationPermissions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationInfo {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (no file type).
    pub mode: u32,
}

#[derive(Debug, Clone)]
pub struct MountConfig {
    pub location: S3Location,
    pub mountpoint: PathBuf,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub cache_dir: PathBuf,
    pub access_point: Option<AccessPoint>,
    /// Access point root directory, below `location.prefix`.
    pub root_dir: Option<RootDir>,
    /// uid 0 acts as 65534:65534.
    pub root_squash: bool,
    pub read_only: bool,
    /// Mount even if the bucket's versioning is not enabled.
    pub allow_unversioned: bool,
    /// Quiet time before a changed file is exported.
    pub write_back_delay: Duration,
    /// How often listed directories are listed again; zero turns polling off.
    pub poll_interval: Duration,
    /// How long the kernel may keep names and attributes.
    pub kernel_cache_ttl: Duration,
    /// FUSE event loops serving requests at once.
    pub fuse_threads: usize,
    /// Hand open files with local bytes to the kernel (FUSE passthrough).
    pub passthrough: bool,
    /// SQS queue of S3 Event Notifications to import changes from.
    pub events_queue: Option<String>,
    /// Bound on the disk tier of the data cache.
    pub cache_size: u64,
    /// Bound on the memory tier of the data cache.
    pub memory_cache_size: u64,
    /// Cached data unused this long is dropped.
    pub cache_expiry: Duration,
    /// Files smaller than this are imported with their directory's first listing.
    pub import_size_threshold: u64,
    /// The import rules: `--import-rule`s, with the root rule from
    /// `--import-size-threshold` when none of them is for the root.
    pub import_rules: ImportRules,
    pub foreground: bool,
    pub log_level: String,
    /// Stable id of this mount (bucket, prefix, mount point); names the default cache dir.
    pub mount_id: String,
    /// Where to serve Prometheus metrics (`--metrics-addr`); None: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid source '{0}': expected s3://BUCKET[/PREFIX]")]
    BadUri(String),
    #[error("invalid source '{uri}': {reason}")]
    BadPrefix { uri: String, reason: String },
    #[error("invalid --events-queue: {0}")]
    BadEventsQueue(String),
    #[error("--cache-expiry must be longer than 0s")]
    ZeroExpiry,
    #[error("--fuse-threads must be at least 1")]
    ZeroFuseThreads,
    #[error("--uid and --gid must be given together")]
    PartialAccessPoint,
    #[error("--gids (--secondary-gids) needs --uid and --gid: secondary groups belong to an access point identity")]
    GidsWithoutAccessPoint,
    #[error("--gids takes at most {MAX_SECONDARY_GIDS} groups, got {0}")]
    TooManyGids(usize),
    #[error("invalid --root-dir '{path}': {reason}")]
    BadRootDir { path: String, reason: String },
    #[error("--root-owner and --root-mode need --root-dir (they say how to create it)")]
    CreationInfoWithoutRootDir,
    #[error("--root-owner and --root-mode must be given together")]
    PartialCreationInfo,
    #[error("invalid --root-owner '{0}': expected UID:GID, e.g. 1000:1000")]
    BadRootOwner(String),
    #[error("invalid --root-mode '{0}': expected 3 or 4 octal digits, e.g. 0755")]
    BadRootMode(String),
    #[error("mount point {0} does not exist")]
    MountpointMissing(PathBuf),
    #[error("mount point {0} is not a directory")]
    MountpointNotDir(PathBuf),
    #[error("cannot find a cache directory: set --cache-dir (no HOME or XDG_CACHE_HOME)")]
    NoCacheHome,
    #[error("invalid endpoint URL '{0}': expected http://HOST[:PORT] or https://...")]
    BadEndpoint(String),
    #[error("invalid --import-rule '{rule}': {reason}")]
    BadImportRule { rule: String, reason: String },
    #[error(
        "too many import rules: {0} (at most {MAX_RULES}, counting the root rule, which \
         --import-size-threshold sets when no --import-rule has prefix=)"
    )]
    TooManyImportRules(usize),
    #[error("two --import-rule flags have prefix '{0}': give one rule per prefix")]
    DuplicateImportRule(String),
    #[error(
        "--import-rule with prefix= and --import-size-threshold both set the root's import \
         rule: give one or the other"
    )]
    RootImportRuleTwice,
    #[error("no import rule covers the mount root (an --import-rule with prefix=)")]
    NoRootImportRule,
    #[error("invalid --metrics-addr '{addr}': {reason}")]
    BadMetricsAddr { addr: String, reason: String },
}

impl MountConfig {
    /// Validates the command line. Checks that need the file system (mount point, cache
    /// dir) happen here too, so that nothing is mounted with a bad configuration.
    pub fn from_args(args: &MountArgs) -> Result<Self, ConfigError> {
        let location = parse_s3_uri(&args.source)?;
        let cache_expiry = args.cache_expiry.unwrap_or(DEFAULT_CACHE_EXPIRY);
        if cache_expiry.is_zero() {
            return Err(ConfigError::ZeroExpiry);
        }
        let fuse_threads = match args.fuse_threads {
            Some(0) => return Err(ConfigError::ZeroFuseThreads),
            Some(n) => n,
            None => default_fuse_threads(),
        };
        let access_point = match (args.uid, args.gid) {
            (Some(uid), Some(gid)) => Some(AccessPoint {
                uid,
                gid,
                secondary_gids: args.gids.clone(),
            }),
            (None, None) if args.gids.is_empty() => None,
            (None, None) => return Err(ConfigError::GidsWithoutAccessPoint),
            _ => return Err(ConfigError::PartialAccessPoint),
        };
        if args.gids.len() > MAX_SECONDARY_GIDS {
            return Err(ConfigError::TooManyGids(args.gids.len()));
        }
        let root_dir = parse_root_dir(
            &location,
            args.root_dir.as_deref(),
            args.root_owner.as_deref(),
            args.root_mode.as_deref(),
        )?;
        if let Some(url) = &args.endpoint_url {
            validate_endpoint(url)?;
        }
        let import_rules = import_rules(args)?;
        let metrics_addr = match &args.metrics_addr {
            Some(addr) => Some(crate::metrics_endpoint::parse_addr(addr).map_err(|reason| {
                ConfigError::BadMetricsAddr {
                    addr: addr.clone(),
                    reason,
                }
            })?),
            None => None,
        };
        let mountpoint = check_mountpoint(&args.mountpoint)?;
        let mount_id = mount_id(&location, &mountpoint);
        let cache_dir = match &args.cache_dir {
            Some(dir) => dir.clone(),
            None => default_cache_root()?.join(&mount_id),
        };
        Ok(MountConfig {
            location,
            mountpoint,
            endpoint_url: args.endpoint_url.clone(),
            region: args.region.clone(),
            force_path_style: args.force_path_style,
            cache_dir,
            access_point,
            root_dir,
            root_squash: args.root_squash,
            read_only: args.read_only,
            allow_unversioned: args.allow_unversioned,
            write_back_delay: args.write_back_delay.unwrap_or(DEFAULT_WRITE_BACK_DELAY),
            poll_interval: args
                .poll_interval
                .unwrap_or(if args.events_queue.is_some() {
                    EVENTS_POLL_INTERVAL
                } else {
                    DEFAULT_POLL_INTERVAL
                }),
            events_queue: match &args.events_queue {
                Some(url) => {
                    crate::events::queue_origin(url).map_err(ConfigError::BadEventsQueue)?;
                    Some(url.clone())
                }
                None => None,
            },
            fuse_threads,
            passthrough: !args.no_passthrough,
            kernel_cache_ttl: args
                .kernel_cache_ttl
                .unwrap_or(crate::fs::DEFAULT_KERNEL_TTL),
            cache_size: args.cache_size.unwrap_or(DEFAULT_CACHE_SIZE),
            memory_cache_size: args.memory_cache_size.unwrap_or(DEFAULT_MEMORY_CACHE_SIZE),
            cache_expiry,
            import_size_threshold: args
                .import_size_threshold
                .unwrap_or(DEFAULT_IMPORT_SIZE_THRESHOLD),
            import_rules,
            foreground: args.foreground,
            log_level: args.log_level.clone(),
            mount_id,
            metrics_addr,
        })
    }
}

impl MountConfig {
    /// Key prefix of the mount root: the mounted prefix, plus the access point's root
    /// directory if there is one. Empty or ending in `/`.
    pub fn root_prefix(&self) -> String {
        match &self.root_dir {
            Some(root) => format!("{}{}/", self.location.prefix, root.path),
            None => self.location.prefix.clone(),
        }
    }
}

/// Twice the CPUs and at least 4 FUSE event loops: several, so that one request answered
/// inline (a disk read, a journal write) never holds up every other process using the
/// mount; more than the CPUs, because a request is answered sooner when a thread is
/// already waiting for it than when the one that answered the last has to come back
/// first (4 KiB `O_DIRECT` reads of a cached file: p50 24 us with 4 threads against 45 us
/// with 2 on 2 CPUs; docs/BENCHMARKS.md).
fn default_fuse_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_mul(2)
        .max(4)
}

/// Validates `--root-dir` and its creation info. A root dir of `/` is the file-system
/// root itself (no root directory).
fn parse_root_dir(
    location: &S3Location,
    path: Option<&str>,
    owner: Option<&str>,
    mode: Option<&str>,
) -> Result<Option<RootDir>, ConfigError> {
    let create = match (owner, mode) {
        (Some(owner), Some(mode)) => {
            let (uid, gid) = parse_owner(owner)?;
            Some(CreationInfo {
                uid,
                gid,
                mode: parse_mode(mode)?,
            })
        }
        (None, None) => None,
        _ => return Err(ConfigError::PartialCreationInfo),
    };
    let Some(raw) = path else {
        return match create {
            Some(_) => Err(ConfigError::CreationInfoWithoutRootDir),
            None => Ok(None),
        };
    };
    let bad = |reason: &str| ConfigError::BadRootDir {
        path: raw.to_string(),
        reason: reason.to_string(),
    };
    if raw.is_empty() {
        return Err(bad("empty path (use / for the file-system root)"));
    }
    // One leading and one trailing `/` are fine; anything else must be plain segments.
    let trimmed = raw.strip_prefix('/').unwrap_or(raw);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return match create {
            Some(_) => Err(ConfigError::CreationInfoWithoutRootDir),
            None => Ok(None),
        };
    }
    validate_prefix(trimmed).map_err(|reason| bad(&reason.to_string()))?;
    // S3 Files' rules for an access point's root directory path.
    if trimmed.len() + 1 > MAX_ROOT_DIR_LEN {
        return Err(bad("longer than 100 characters"));
    }
    if trimmed.split('/').count() > MAX_ROOT_DIR_DEPTH {
        return Err(bad("more than 4 directories deep"));
    }
    if trimmed.split('/').any(|segment| segment.starts_with('.')) {
        return Err(bad("a directory name starts with '.'"));
    }
    if let Some(c) = trimmed.chars().find(|c| ROOT_DIR_FORBIDDEN.contains(*c)) {
        return Err(bad(&format!("'{}' is not allowed", c.escape_default())));
    }
    // Keys below it must still fit in S3's 1,024 bytes.
    if location.prefix.len() + trimmed.len() + 1 >= MAX_KEY_LEN {
        return Err(bad("too long: keys below it would pass 1,024 bytes"));
    }
    Ok(Some(RootDir {
        path: trimmed.to_string(),
        create,
    }))
}

fn parse_owner(text: &str) -> Result<(u32, u32), ConfigError> {
    let bad = || ConfigError::BadRootOwner(text.to_string());
    let (uid, gid) = text.split_once(':').ok_or_else(bad)?;
    let number = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    Ok((number(uid).ok_or_else(bad)?, number(gid).ok_or_else(bad)?))
}

/// S3 Files' pattern for permissions: `[0-7]{3,4}`.
fn parse_mode(text: &str) -> Result<u32, ConfigError> {
    let ok = (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !ok {
        return Err(ConfigError::BadRootMode(text.to_string()));
    }
    u32::from_str_radix(text, 8).map_err(|_| ConfigError::BadRootMode(text.to_string()))
}

/// The `--import-rule`s as S3 Files would accept them. S3 Files requires a rule for the
/// root; s3files makes one from `--import-size-threshold` (or its default) when none is
/// given, so command lines from before import rules keep their meaning. Both at once
/// would be two answers for the root: refused.
fn import_rules(args: &MountArgs) -> Result<ImportRules, ConfigError> {
    let mut rules = args
        .import_rule
        .iter()
        .map(|text| {
            ImportRule::parse(text).map_err(|reason| ConfigError::BadImportRule {
                rule: text.escape_debug().to_string(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let has_root = rules.iter().any(|r| r.prefix.is_empty());
    match (has_root, args.import_size_threshold) {
        (true, Some(_)) => return Err(ConfigError::RootImportRuleTwice),
        (true, None) => {}
        (false, threshold) => rules.push(ImportRule::root(
            threshold.unwrap_or(DEFAULT_IMPORT_SIZE_THRESHOLD),
        )),
    }
    ImportRules::new(rules).map_err(|e| match e {
        RuleSetError::TooMany(n) => ConfigError::TooManyImportRules(n),
        RuleSetError::Duplicate(prefix) => ConfigError::DuplicateImportRule(prefix),
        // Not met from the command line (a root rule is added above), but said plainly.
        RuleSetError::NoRoot => ConfigError::NoRootImportRule,
    })
}

fn check_mountpoint(path: &Path) -> Result<PathBuf, ConfigError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            Ok(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
        }
        Ok(_) => Err(ConfigError::MountpointNotDir(path.to_path_buf())),
        Err(_) => Err(ConfigError::MountpointMissing(path.to_path_buf())),
    }
}

fn validate_endpoint(url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::BadEndpoint(url.to_string()))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(ConfigError::BadEndpoint(url.to_string()));
    }
    Ok(())
}

fn default_cache_root() -> Result<PathBuf, ConfigError> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("s3files"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("s3files")),
        None => Err(ConfigError::NoCacheHome),
    }
}

/// A short hex id that is the same for the same bucket, prefix and mount point, so a
/// remount finds its cache dir (and, later, its pending exports) again.
pub fn mount_id(location: &S3Location, mountpoint: &Path) -> String {
    // FNV-1a: stable across Rust versions, unlike std's DefaultHasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let parts = [
        location.bucket.as_bytes(),
        b"\0",
        location.prefix.as_bytes(),
        b"\0",
        mountpoint.as_os_str().as_encoded_bytes(),
    ];
    for byte in parts.into_iter().flatten() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Parses `s3://BUCKET[/PREFIX]`. The prefix is normalised to end in `/` and must be a
/// valid path (no empty, `.` or `..` segments), so no key outside it can be reached.
pub fn parse_s3_uri(uri: &str) -> Result<S3Location, ConfigError> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| ConfigError::BadUri(uri.to_string()))?;
    let (bucket, prefix) = match rest.split_once('/') {
        Some((bucket, prefix)) => (bucket, prefix),
        None => (rest, ""),
    };
    if !is_valid_bucket_name(bucket) {
        return Err(ConfigError::BadUri(uri.to_string()));
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        validate_prefix(trimmed).map_err(|reason| ConfigError::BadPrefix {
            uri: uri.to_string(),
            reason: reason.to_string(),
        })?;
        format!("{trimmed}/")
    };
    Ok(S3Location {
        bucket: bucket.to_string(),
        prefix,
    })
}

/// Bucket names per S3's rules (3-63 chars of lowercase letters, digits, `.`, `-`,
/// starting and ending with a letter or digit); underscores and capitals are accepted too
/// because some S3-compatible stores allow them.
fn is_valid_bucket_name(name: &str) -> bool {
    let ok_len = (3..=63).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    let ok_ends = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    ok_len && ok_chars && ok_ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let loc = parse_s3_uri("s3://my-bucket/some/prefix/").unwrap();
        assert_eq!(loc.bucket, "my-bucket");
        assert_eq!(loc.prefix, "some/prefix/");
        let loc = parse_s3_uri("s3://my-bucket/some/prefix").unwrap();
        assert_eq!(loc.prefix, "some/prefix/");
        let loc = parse_s3_uri("s3://my-bucket").unwrap();
        assert_eq!(loc.prefix, "");
        let loc = parse_s3_uri("s3://my-bucket/").unwrap();
        assert_eq!(loc.prefix, "");
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "my-bucket",
            "s3://",
            "s3:/bucket",
            "http://bucket/x",
            "s3://a",
            "s3://-bucket",
            "s3://bucket!/x",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "s3://bucket/./a",
            "s3://bucket//",
        ] {
            assert!(parse_s3_uri(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn mount_id_is_stable_and_distinct() {
        let a = parse_s3_uri("s3://bucket/a").unwrap();
        let b = parse_s3_uri("s3://bucket/b").unwrap();
        let mnt = Path::new("/mnt/x");
        assert_eq!(mount_id(&a, mnt), mount_id(&a, mnt));
        assert_ne!(mount_id(&a, mnt), mount_id(&b, mnt));
        assert_ne!(mount_id(&a, mnt), mount_id(&a, Path::new("/mnt/y")));
        assert_eq!(mount_id(&a, mnt).len(), 16);
    }

    /// `s3files mount s3://bucket/fs TMP --cache-dir ... EXTRA`, validated.
    fn config(extra: &[&str]) -> Result<MountConfig, ConfigError> {
        use clap::Parser;
        let dir = std::env::temp_dir();
        let mut argv = vec![
            "s3files",
            "mount",
            "s3://bucket/fs",
            dir.to_str().unwrap(),
            "--cache-dir",
            "/nonexistent/cache",
        ];
        argv.extend_from_slice(extra);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("parses");
        let crate::cli::Command::Mount(args) = cli.command else {
            panic!("not a mount command");
        };
        MountConfig::from_args(&args)
    }

    #[test]
    fn metrics_addr_is_checked_before_mounting() {
        assert_eq!(config(&[]).unwrap().metrics_addr, None);
        let c = config(&["--metrics-addr", "9100"]).unwrap();
        assert_eq!(c.metrics_addr.unwrap().to_string(), "127.0.0.1:9100");
        let c = config(&["--metrics-addr", "[::1]:9100"]).unwrap();
        assert_eq!(c.metrics_addr.unwrap().to_string(), "[::1]:9100");
        let err = config(&["--metrics-addr", "nine"]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::BadMetricsAddr { addr, .. } if addr == "nine"),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with("invalid --metrics-addr 'nine': "));
    }

    #[test]
    fn secondary_gids_belong_to_an_access_point() {
        let c = config(&["--uid", "1000", "--gid", "1000", "--gids", "20,30"]).unwrap();
        assert_eq!(c.access_point.unwrap().secondary_gids, [20, 30]);
        let c = config(&["--uid", "1", "--gid", "2", "--secondary-gids", "7"]).unwrap();
        assert_eq!(c.access_point.unwrap().secondary_gids, [7]);
        let c = config(&["--uid", "1", "--gid", "2"]).unwrap();
        assert!(c.access_point.unwrap().secondary_gids.is_empty());
        assert_eq!(
            config(&["--gids", "20"]).unwrap_err(),
            ConfigError::GidsWithoutAccessPoint
        );
        let many: Vec<String> = (0..17).map(|g| g.to_string()).collect();
        let many = many.join(",");
        assert_eq!(
            config(&["--uid", "1", "--gid", "1", "--gids", &many]).unwrap_err(),
            ConfigError::TooManyGids(17)
        );
        assert!(config(&["--uid", "1"]).is_err());
    }

    #[test]
    fn root_dir_is_a_path_inside_the_file_system() {
        let c = config(&["--root-dir", "/team/a/"]).unwrap();
        let root = c.root_dir.clone().unwrap();
        assert_eq!(root.path, "team/a");
        assert_eq!(root.create, None);
        assert_eq!(c.root_prefix(), "fs/team/a/");
        assert_eq!(
            config(&["--root-dir", "team"]).unwrap().root_prefix(),
            "fs/team/"
        );
        // `/` is the file-system root itself.
        let c = config(&["--root-dir", "/"]).unwrap();
        assert_eq!(c.root_dir, None);
        assert_eq!(c.root_prefix(), "fs/");
        assert_eq!(config(&[]).unwrap().root_prefix(), "fs/");
        let loc = parse_s3_uri("s3://bucket").unwrap();
        for bad in ["", "a//b", "//a", "../x", "a/../b", "a/./b", "a\0b", "x/.."] {
            assert!(
                matches!(
                    parse_root_dir(&loc, Some(bad), None, None),
                    Err(ConfigError::BadRootDir { .. })
                ),
                "{bad:?} should be refused"
            );
        }
        // S3 Files' own limits on the path.
        let long = format!("/{}", "d".repeat(100));
        let longest = format!("/{}", "d".repeat(99));
        for bad in [
            long.as_str(),
            "/a/b/c/d/e",
            "/.hidden",
            "a/.b",
            "a$b",
            "a;b",
            "a|b",
            "a*",
            "a?b",
            "a\nb",
        ] {
            assert!(
                matches!(
                    parse_root_dir(&loc, Some(bad), None, None),
                    Err(ConfigError::BadRootDir { .. })
                ),
                "{bad:?} should be refused"
            );
        }
        for good in [longest.as_str(), "/a/b/c/d", "a.b/c-d_e f", "/x/"] {
            assert!(
                matches!(parse_root_dir(&loc, Some(good), None, None), Ok(Some(_))),
                "{good:?} should be accepted"
            );
        }
        let deep = parse_s3_uri(&format!("s3://bucket/{}", "p/".repeat(510))).unwrap();
        assert!(matches!(
            parse_root_dir(&deep, Some("/a/b"), None, None),
            Err(ConfigError::BadRootDir { .. })
        ));
    }

    #[test]
    fn root_dir_creation_info() {
        let c = config(&[
            "--root-dir",
            "/new",
            "--root-owner",
            "1000:2000",
            "--root-mode",
            "0750",
        ])
        .unwrap();
        assert_eq!(
            c.root_dir.unwrap().create,
            Some(CreationInfo {
                uid: 1000,
                gid: 2000,
                mode: 0o750
            })
        );
        let c = config(&[
            "--root-dir",
            "n",
            "--root-owner",
            "0:0",
            "--root-mode",
            "755",
        ]);
        assert_eq!(c.unwrap().root_dir.unwrap().create.unwrap().mode, 0o755);
        assert_eq!(
            config(&["--root-dir", "n", "--root-owner", "1:1"]).unwrap_err(),
            ConfigError::PartialCreationInfo
        );
        assert_eq!(
            config(&["--root-owner", "1:1", "--root-mode", "0700"]).unwrap_err(),
            ConfigError::CreationInfoWithoutRootDir
        );
        for owner in [
            "1000",
            "a:b",
            "1000:",
            ":1",
            "-1:0",
            "1:2:3",
            "99999999999:0",
        ] {
            assert_eq!(
                config(&[
                    "--root-dir",
                    "n",
                    &format!("--root-owner={owner}"),
                    "--root-mode",
                    "0700"
                ])
                .unwrap_err(),
                ConfigError::BadRootOwner(owner.into()),
                "{owner}"
            );
        }
        for mode in ["0999", "75", "07555", "rwx", "0o755", ""] {
            assert_eq!(
                config(&[
                    "--root-dir",
                    "n",
                    "--root-owner",
                    "1:1",
                    "--root-mode",
                    mode
                ])
                .unwrap_err(),
                ConfigError::BadRootMode(mode.into()),
                "{mode}"
            );
        }
    }

    #[test]
    fn fuse_threads_flag() {
        assert_eq!(config(&["--fuse-threads", "1"]).unwrap().fuse_threads, 1);
        let ttl = |flags: &[&str]| config(flags).unwrap().kernel_cache_ttl;
        assert_eq!(ttl(&[]), Duration::from_secs(60));
        assert_eq!(ttl(&["--kernel-cache-ttl", "1s"]), Duration::from_secs(1));
        assert_eq!(config(&["--fuse-threads", "6"]).unwrap().fuse_threads, 6);
        // Sized to the machine (a waiting thread per CPU beside a busy one), never a
        // single loop unless asked for.
        let default = config(&[]).unwrap().fuse_threads;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default, (2 * cpus).max(4));
        assert_eq!(
            config(&["--fuse-threads", "0"]).unwrap_err(),
            ConfigError::ZeroFuseThreads
        );
    }

    #[test]
    fn root_squash_flag() {
        assert!(config(&["--root-squash"]).unwrap().root_squash);
        assert!(!config(&[]).unwrap().root_squash);
    }

    fn rules_of(flags: &[&str]) -> Result<ImportRules, ConfigError> {
        use clap::Parser;
        let argv = ["s3files", "mount", "s3://b", "/mnt"].iter().chain(flags);
        match crate::cli::Cli::try_parse_from(argv)
            .expect("parses")
            .command
        {
            crate::cli::Command::Mount(args) => import_rules(&args),
            _ => unreachable!("a mount command"),
        }
    }

    #[test]
    fn import_rules_from_the_command_line() {
        use crate::import_rules::Trigger;
        // No rule: the root rule is --import-size-threshold's, or S3 Files' 128 KiB.
        let rules = rules_of(&[]).unwrap();
        assert_eq!(rules.rules(), [ImportRule::root(128 << 10)]);
        let rules = rules_of(&["--import-size-threshold", "0"]).unwrap();
        assert_eq!(rules.rules(), [ImportRule::root(0)]);
        // Rules without a root rule get the threshold's.
        let rules = rules_of(&[
            "--import-rule",
            "prefix=logs/,trigger=ON_FILE_ACCESS,size-less-than=1MiB",
            "--import-size-threshold",
            "4KiB",
        ])
        .unwrap();
        assert_eq!(rules.for_path("x").size_less_than, 4096);
        assert_eq!(rules.for_path("logs/x").trigger, Trigger::OnFileAccess);
        // A root rule replaces the threshold; giving both is refused.
        let rules = rules_of(&["--import-rule", "prefix=,sizeLessThan=10"]).unwrap();
        assert_eq!(rules.rules(), [ImportRule::root(10)]);
        let both = [
            "--import-rule",
            "prefix=,sizeLessThan=10",
            "--import-size-threshold",
            "10",
        ];
        assert_eq!(rules_of(&both), Err(ConfigError::RootImportRuleTwice));
        let dup = [
            "--import-rule",
            "prefix=a/,sizeLessThan=1",
            "--import-rule",
            "prefix=a/,sizeLessThan=2",
        ];
        assert_eq!(
            rules_of(&dup),
            Err(ConfigError::DuplicateImportRule("a/".into()))
        );
        // Ten rules are fine when one is the root's; ten plus the synthesized root are not.
        let flags: Vec<String> = (0..10)
            .flat_map(|i| {
                [
                    "--import-rule".into(),
                    format!("prefix=d{i}/,sizeLessThan=1"),
                ]
            })
            .collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        assert_eq!(rules_of(&flags), Err(ConfigError::TooManyImportRules(11)));
        let mut nine_and_root = flags[..18].to_vec();
        nine_and_root.extend(["--import-rule", "prefix=,sizeLessThan=1"]);
        assert_eq!(rules_of(&nine_and_root).unwrap().rules().len(), 10);
        let err = rules_of(&["--import-rule", "prefix=/x/,sizeLessThan=1"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid --import-rule 'prefix=/x/,sizeLessThan=1': prefix"),
            "{err}"
        );
    }

    #[test]
    fn endpoint_must_be_http() {
        assert!(validate_endpoint("http://127.0.0.1:9000").is_ok());
        assert!(validate_endpoint("https://s3.example.com").is_ok());
        assert!(validate_endpoint("127.0.0.1:9000").is_err());
        assert!(validate_endpoint("http://").is_err());
        assert!(validate_endpoint("ftp://x").is_err());
    }
}
