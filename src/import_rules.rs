//! Import rules (S3 Files `ImportDataRule`): which files' data is fetched into the cache
//! ahead of reads, and when. A rule has a prefix (mount-relative, a directory path ending
//! in `/`, or empty for the root), a trigger and a size bound; a file takes the rule with
//! the longest prefix its path starts with. Below `config` (which validates the flag) and
//! the core (which applies the rules); docs/CONFIGURATION.md "Import rules".

use std::fmt;

use crate::units::parse_size;

/// S3 Files allows at most this many rules per file system, the root rule included.
pub const MAX_RULES: usize = 10;

/// The largest `sizeLessThan` S3 Files accepts (its API's valid range, 49056 GiB).
pub const MAX_SIZE_LESS_THAN: u64 = 52_673_613_135_872;

/// S3 Files' limit on a rule's prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 1024;

/// When a file's data is imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// With the first listing of the file's directory (S3 Files' default).
    OnDirectoryFirstAccess,
    /// When the file is opened for reading.
    OnFileAccess,
}

impl Trigger {
    /// The S3 Files spelling.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::OnDirectoryFirstAccess => "ON_DIRECTORY_FIRST_ACCESS",
            Trigger::OnFileAccess => "ON_FILE_ACCESS",
        }
    }

    /// The S3 Files spelling, in any case, with `-` for `_` accepted too.
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_uppercase().replace('-', "_");
        [Trigger::OnDirectoryFirstAccess, Trigger::OnFileAccess]
            .into_iter()
            .find(|t| t.name() == text)
    }
}

/// One rule: files under `prefix` smaller than `size_less_than` bytes are imported on
/// `trigger`. A bound of 0 imports nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRule {
    /// Mount-relative: empty (the root), or a directory path ending in `/`.
    pub prefix: String,
    pub trigger: Trigger,
    pub size_less_than: u64,
}

/// Field names of the flag's `KEY=VALUE` list; `sizeLessThan` is S3 Files' spelling.
const FIELDS: [&str; 4] = ["prefix", "trigger", "size-less-than", "sizeLessThan"];

impl ImportRule {
    /// The root rule S3 Files starts with (and s3files keeps without `--import-rule`).
    pub fn root(size_less_than: u64) -> Self {
        ImportRule {
            prefix: String::new(),
            trigger: Trigger::OnDirectoryFirstAccess,
            size_less_than,
        }
    }

    /// Parses `prefix=P,trigger=T,size-less-than=S` (fields in any order; `trigger`
    /// defaults to ON_DIRECTORY_FIRST_ACCESS; S is a size as `--cache-size` takes it). A
    /// comma belongs to the prefix unless another field follows it, so prefixes with
    /// commas work.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut fields: Vec<(String, String)> = Vec::new();
        for part in text.split(',') {
            let field = part
                .split_once('=')
                .map(|(k, v)| (k.trim(), v))
                .filter(|(k, _)| FIELDS.contains(k));
            match (field, fields.last_mut()) {
                (Some((key, value)), _) => fields.push((key.to_string(), value.to_string())),
                (None, Some((key, value))) if key == "prefix" => {
                    value.push(',');
                    value.push_str(part);
                }
                (None, _) => {
                    return Err(format!(
                        "'{}' is not a field (expected prefix=DIR/, trigger=ON_DIRECTORY_FIRST_ACCESS|ON_FILE_ACCESS, size-less-than=SIZE)",
                        part.trim()
                    ))
                }
            }
        }
        let (mut prefix, mut trigger, mut size) = (None, None, None);
        for (key, value) in fields {
            let (slot, name) = match key.as_str() {
                "prefix" => (&mut prefix, "prefix"),
                "trigger" => (&mut trigger, "trigger"),
                _ => (&mut size, "size-less-than"),
            };
            if slot.replace(value).is_some() {
                return Err(format!("{name} is given twice"));
            }
        }
        let prefix = prefix.ok_or("prefix is missing (prefix= for the mount root)")?;
        check_prefix(&prefix)?;
        let trigger = match trigger {
            None => Trigger::OnDirectoryFirstAccess,
            Some(text) => Trigger::parse(&text).ok_or_else(|| {
                format!(
                    "unknown trigger '{}' (expected ON_DIRECTORY_FIRST_ACCESS or ON_FILE_ACCESS)",
                    text.trim()
                )
            })?,
        };
        let size = size.ok_or("size-less-than is missing (e.g. size-less-than=128KiB)")?;
        let size_less_than = parse_size(&size)?;
        if size_less_than > MAX_SIZE_LESS_THAN {
            return Err(format!(
                "size-less-than {} is out of range (0 to {MAX_SIZE_LESS_THAN} bytes)",
                size.trim()
            ));
        }
        Ok(ImportRule {
            prefix,
            trigger,
            size_less_than,
        })
    }

    /// Whether a file of `size` bytes under this rule is imported on `trigger`. Empty
    /// files have nothing to fetch.
    pub fn imports(&self, trigger: Trigger, size: u64) -> bool {
        self.trigger == trigger && size > 0 && size < self.size_less_than
    }
}

impl fmt::Display for ImportRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "prefix={},trigger={},size-less-than={}",
            self.prefix,
            self.trigger.name(),
            self.size_less_than
        )
    }
}

/// A rule prefix as S3 Files takes it (empty or ending in `/`), and a path inside the
/// mount: no empty, `.` or `..` segments, no NUL, no leading `/`.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    let problem = if prefix.len() > MAX_PREFIX_LEN {
        format!("is longer than {MAX_PREFIX_LEN} bytes")
    } else if prefix.starts_with('/') {
        "starts with '/' (prefixes are relative to the mount root; prefix= is the root)".into()
    } else if prefix.contains('\0') {
        "contains a NUL byte".into()
    } else if !prefix.ends_with('/') {
        format!("does not end in '/' (a rule covers a directory: '{prefix}/')")
    } else if prefix.contains("//") {
        "contains '//'".into()
    } else if prefix[..prefix.len() - 1]
        .split('/')
        .any(|s| s == "." || s == "..")
    {
        "contains a '.' or '..' segment".into()
    } else if let Err(reason) = crate::fs::namespace::validate_prefix(&prefix[..prefix.len() - 1]) {
        reason.to_string()
    } else {
        return Ok(());
    };
    Err(format!("prefix '{}' {problem}", prefix.escape_debug()))
}

/// A rule set S3 Files would accept: at most `MAX_RULES`, one per prefix, exactly one
/// for the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRules {
    /// Longest prefix first, so the first match is the most specific.
    rules: Vec<ImportRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSetError {
    TooMany(usize),
    Duplicate(String),
    NoRoot,
}

impl ImportRules {
    pub fn new(mut rules: Vec<ImportRule>) -> Result<Self, RuleSetError> {
        if rules.len() > MAX_RULES {
            return Err(RuleSetError::TooMany(rules.len()));
        }
        rules.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.prefix.cmp(&b.prefix))
        });
        if let Some(pair) = rules.windows(2).find(|w| w[0].prefix == w[1].prefix) {
            return Err(RuleSetError::Duplicate(pair[0].prefix.clone()));
        }
        if rules.last().is_none_or(|r| !r.prefix.is_empty()) {
            return Err(RuleSetError::NoRoot);
        }
        Ok(ImportRules { rules })
    }

    /// Just the root rule, importing files under `size_less_than` on listing: what
    /// `--import-size-threshold` alone means.
    pub fn root_only(size_less_than: u64) -> Self {
        ImportRules {
            rules: vec![ImportRule::root(size_less_than)],
        }
    }

    /// The rule for a mount-relative path (a file's, or a directory's with its trailing
    /// `/`): the longest prefix it starts with; the root rule matches everything.
    pub fn for_path(&self, path: &str) -> &ImportRule {
        self.rules
            .iter()
            .find(|r| path.starts_with(&r.prefix))
            .unwrap_or_else(|| &self.rules[self.rules.len() - 1])
    }

    /// Whether any rule imports anything on `trigger`: lets a listing skip the per-file
    /// work when no rule imports on listing.
    pub fn any(&self, trigger: Trigger) -> bool {
        self.rules
            .iter()
            .any(|r| r.trigger == trigger && r.size_less_than > 1)
    }

    /// The rules, most specific first.
    pub fn rules(&self) -> &[ImportRule] {
        &self.rules
    }
}

/// The rules as `--import-rule` values, most specific first, for the log.
impl fmt::Display for ImportRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}[{rule}]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, trigger: Trigger, size: u64) -> ImportRule {
        ImportRule {
            prefix: prefix.into(),
            trigger,
            size_less_than: size,
        }
    }

    #[test]
    fn parses_the_flag() {
        let r =
            ImportRule::parse("prefix=logs/,trigger=ON_FILE_ACCESS,size-less-than=1MiB").unwrap();
        assert_eq!(r, rule("logs/", Trigger::OnFileAccess, 1 << 20));
        let r = ImportRule::parse("sizeLessThan=4096,prefix=").unwrap();
        assert_eq!(r, rule("", Trigger::OnDirectoryFirstAccess, 4096));
        let r = ImportRule::parse("prefix=a/b/,trigger=on-file-access,size-less-than=0").unwrap();
        assert_eq!(r, rule("a/b/", Trigger::OnFileAccess, 0));
        // A comma inside a prefix stays in it.
        let r = ImportRule::parse("prefix=x,y/z/,size-less-than=1").unwrap();
        assert_eq!(r.prefix, "x,y/z/");
        // Display is parseable back.
        let r = rule("d/", Trigger::OnFileAccess, 77);
        assert_eq!(ImportRule::parse(&r.to_string()).unwrap(), r);
        let max = format!("prefix=,size-less-than={MAX_SIZE_LESS_THAN}");
        assert_eq!(
            ImportRule::parse(&max).unwrap().size_less_than,
            MAX_SIZE_LESS_THAN
        );
    }

    #[test]
    fn refuses_bad_rules() {
        for (text, expect) in [
            ("", "is not a field"),
            ("logs/", "is not a field"),
            ("prefix=logs/", "size-less-than is missing"),
            ("size-less-than=1", "prefix is missing"),
            ("prefix=a/,prefix=b/,size-less-than=1", "given twice"),
            (
                "prefix=a/,size-less-than=1,colour=red",
                "'colour=red' is not a field",
            ),
            (
                "prefix=a/,trigger=ALWAYS,size-less-than=1",
                "unknown trigger 'ALWAYS'",
            ),
            ("prefix=a/,size-less-than=lots", "invalid size"),
            ("prefix=a/,size-less-than=-1", "invalid size"),
            ("prefix=a/,size-less-than=49TiB", "out of range"),
            ("prefix=/a/,size-less-than=1", "starts with '/'"),
            ("prefix=a,size-less-than=1", "does not end in '/'"),
            ("prefix=a//b/,size-less-than=1", "contains '//'"),
            ("prefix=a/../b/,size-less-than=1", "'..' segment"),
            ("prefix=../,size-less-than=1", "'..' segment"),
            ("prefix=./,size-less-than=1", "'.' or '..' segment"),
            ("prefix=a\0b/,size-less-than=1", "NUL"),
        ] {
            let err = ImportRule::parse(text).expect_err(text);
            assert!(err.contains(expect), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{text:?}: {err}");
        }
        let long = format!("prefix={}/,size-less-than=1", "a/".repeat(600));
        assert!(ImportRule::parse(&long)
            .unwrap_err()
            .contains("longer than"));
    }

    #[test]
    fn rule_sets_follow_s3_files_limits() {
        let root = ImportRule::root(128 << 10);
        let many: Vec<ImportRule> = (0..10)
            .map(|i| rule(&format!("d{i}/"), Trigger::OnFileAccess, 1))
            .chain([root.clone()])
            .collect();
        assert_eq!(ImportRules::new(many), Err(RuleSetError::TooMany(11)));
        let dup = vec![
            root.clone(),
            rule("a/", Trigger::OnFileAccess, 1),
            rule("a/", Trigger::OnDirectoryFirstAccess, 2),
        ];
        assert_eq!(
            ImportRules::new(dup),
            Err(RuleSetError::Duplicate("a/".into()))
        );
        let two_roots = vec![root.clone(), ImportRule::root(1)];
        assert_eq!(
            ImportRules::new(two_roots),
            Err(RuleSetError::Duplicate(String::new()))
        );
        let no_root = vec![rule("a/", Trigger::OnFileAccess, 1)];
        assert_eq!(ImportRules::new(no_root), Err(RuleSetError::NoRoot));
    }

    #[test]
    fn the_longest_matching_prefix_wins() {
        let rules = ImportRules::new(vec![
            ImportRule::root(10),
            rule("a/", Trigger::OnFileAccess, 20),
            rule("a/b/", Trigger::OnDirectoryFirstAccess, 30),
            rule("ab/", Trigger::OnDirectoryFirstAccess, 40),
        ])
        .unwrap();
        let bound = |path: &str| rules.for_path(path).size_less_than;
        assert_eq!(bound("x.txt"), 10);
        assert_eq!(bound("a/x.txt"), 20);
        assert_eq!(bound("a/c/d/x.txt"), 20);
        assert_eq!(bound("a/b/x.txt"), 30);
        assert_eq!(bound("a/b/c/x.txt"), 30);
        assert_eq!(bound("a/bc/x.txt"), 20);
        assert_eq!(bound("ab/x"), 40);
        assert_eq!(bound("abc/x"), 10);
        assert_eq!(bound("a"), 10, "the file a is not under a/");
        assert!(rules.any(Trigger::OnFileAccess));
        assert!(!ImportRules::root_only(0).any(Trigger::OnDirectoryFirstAccess));
    }

    #[test]
    fn imports_only_below_the_bound_and_on_its_trigger() {
        let r = rule("", Trigger::OnFileAccess, 100);
        assert!(r.imports(Trigger::OnFileAccess, 99));
        assert!(!r.imports(Trigger::OnFileAccess, 100));
        assert!(!r.imports(Trigger::OnFileAccess, 0));
        assert!(!r.imports(Trigger::OnDirectoryFirstAccess, 1));
        assert!(!rule("", Trigger::OnFileAccess, 0).imports(Trigger::OnFileAccess, 1));
    }
}
