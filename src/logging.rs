//! Log set-up: tracing to stderr (the terminal, or CACHE_DIR/s3files.log for a
//! background daemon). Credentials are never logged: no layer here sees them.

use tracing_subscriber::EnvFilter;

/// `level` is a plain level (applied to s3files, with the AWS SDK kept at warn so its
/// request chatter does not drown ours) or a full tracing filter directive.
pub fn init(level: &str) {
    let level = level.trim();
    let directive = if matches!(
        level.to_ascii_lowercase().as_str(),
        "error" | "warn" | "info" | "debug" | "trace"
    ) {
        format!("warn,s3files={level}")
    } else {
        level.to_string()
    };
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|e| {
        eprintln!("s3files: warning: bad --log-level '{level}' ({e}); using info");
        EnvFilter::new("warn,s3files=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
