//! The docs are part of the contract: every flag `--help` prints is described in
//! docs/CONFIGURATION.md, and every errno the code can return is in docs/SEMANTICS.md.

mod common;

use std::time::Duration;

fn doc(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_mount_flag_is_documented() {
    let (out, _) = common::run_s3files(&["mount", "--help"], &[], Duration::from_secs(10));
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let config = doc("CONFIGURATION.md");
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .filter(|w| *w != "--help" && *w != "--version")
        .collect();
    assert!(flags.len() >= 13, "parsed flags: {flags:?}");
    for flag in flags {
        assert!(
            config.contains(&format!("`{flag}")),
            "{flag} is not in docs/CONFIGURATION.md"
        );
    }
}

#[test]
fn every_errno_is_documented() {
    let semantics = doc("SEMANTICS.md");
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fs/error.rs"),
    )
    .unwrap();
    // Every errno the daemon returns comes from FsError::errno (the adapter maps
    // nothing itself: checked below), and each one is in the Errors section.
    let adapter = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fuse.rs"),
    )
    .unwrap();
    for (i, line) in adapter.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        assert!(
            !code.contains("Errno::E") && !code.contains("libc::E"),
            "src/fuse.rs:{} answers an errno directly; go through FsError: {line}",
            i + 1
        );
    }
    let errors = semantics
        .split("## Errors")
        .nth(1)
        .expect("docs/SEMANTICS.md has an Errors section");
    for errno in source
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| w.starts_with('E') && w.len() >= 3 && w.chars().all(|c| c.is_ascii_uppercase()))
    {
        assert!(
            errors.contains(&format!("`{errno}`")),
            "{errno} is not in docs/SEMANTICS.md"
        );
    }
}

/// Prints a Python expression over docker/docker-compose.yml loaded as `d` (no Docker
/// engine runs on the CI machines; the bench venv has PyYAML).
fn compose_query(expression: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(format!(
            "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); print({expression})"
        ))
        .arg(root.join("docker/docker-compose.yml"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", python.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn docker_compose_file_parses() {
    // No Docker engine runs on the CI machines; check what can be checked: the compose
    // file is valid YAML with the services the README promises.
    let services = compose_query("' '.join(sorted(d['services']))");
    for service in ["minio", "s3files", "agent", "agent-2"] {
        assert!(
            services.split_whitespace().any(|s| s == service),
            "{services}"
        );
    }
}

#[test]
fn every_metric_is_documented() {
    use std::sync::Arc;
    let registry = s3files::metrics_endpoint::registry(
        Arc::new(s3files::metrics::Metrics::default()),
        s3files::fs::Gauges::default,
        true,
    );
    let text = s3files::metrics_endpoint::render(&registry).unwrap();
    let config = doc("CONFIGURATION.md");
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    assert!(names.len() >= 30, "{names:?}");
    for name in names {
        assert!(
            config.contains(&format!("| `{name}` |")),
            "{name} is not in the metrics table of docs/CONFIGURATION.md"
        );
    }
}

#[test]
fn every_flag_used_in_docker_exists() {
    // The compose file's s3files command and healthcheck use only flags the binary has
    // (and CONFIGURATION.md documents).
    let words = compose_query(
        "' '.join(d['services']['s3files']['command'] + d['services']['s3files']['healthcheck']['test'])",
    );
    let flags: Vec<&str> = words
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .collect();
    assert!(flags.len() >= 4, "{flags:?}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_s3files"))
        .args(["mount", "--help"])
        .output()
        .expect("s3files mount --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let config = doc("CONFIGURATION.md");
    for flag in flags {
        assert!(help.contains(flag), "{flag} is not a flag of s3files mount");
        assert!(
            config.contains(&format!("`{flag}")),
            "{flag} is not in CONFIGURATION.md"
        );
    }
    assert!(
        words.contains("status"),
        "the healthcheck runs s3files status"
    );
}
