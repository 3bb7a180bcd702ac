use std::process::ExitCode;

use clap::Parser;
use s3files::cli::{Cli, Command};
use s3files::mounts::Unmounted;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // mount(8) runs /sbin/mount.s3files (a link to this binary) for `-t s3files`.
    if s3files::mount_helper::invoked_as_helper(&argv) {
        return s3files::mount_helper::main(&argv);
    }
    let cli = Cli::parse_from(argv);
    match cli.command {
        Command::Mount(args) => s3files::daemon::mount_command(args),
        Command::Unmount(args) => unmount(&args.mountpoint),
        Command::Sync(args) => {
            let path = args.path.unwrap_or_else(|| std::path::PathBuf::from("."));
            sync(&path)
        }
        Command::Status(args) => {
            let path = args.path.unwrap_or_else(|| std::path::PathBuf::from("."));
            report(s3files::mounts::status(&path).map(|text| print!("{text}")))
        }
    }
}

/// Exit status of `s3files unmount` when the mount is gone but not every change is known
/// to be in S3 (documented in docs/CONFIGURATION.md).
const UNMOUNTED_WITH_PENDING: u8 = 3;

fn unmount(path: &std::path::Path) -> ExitCode {
    let mut progress = |line: &str| eprintln!("s3files: {line}");
    match s3files::mounts::unmount(path, &mut progress) {
        Ok(Unmounted::Complete) => ExitCode::SUCCESS,
        Ok(Unmounted::Pending { pending, cache_dir }) => {
            eprintln!(
                "s3files: warning: {} is unmounted, but {pending} pending change(s) were not \
                 exported within the daemon's {}s limit; they stay in the journal of {} and \
                 are exported at the next mount with that cache dir (its s3files.log says why)",
                path.display(),
                s3files::daemon::FLUSH_TIMEOUT.as_secs(),
                cache_dir.display(),
            );
            ExitCode::from(UNMOUNTED_WITH_PENDING)
        }
        Ok(Unmounted::Unconfirmed(reason)) => {
            eprintln!(
                "s3files: warning: {} is unmounted, but {reason}",
                path.display()
            );
            ExitCode::from(UNMOUNTED_WITH_PENDING)
        }
        Err(e) => report::<s3files::mounts::UnmountError>(Err(e)),
    }
}

/// `s3files sync` with progress: a bar on a terminal, one summary line otherwise.
fn sync(path: &std::path::Path) -> ExitCode {
    use std::io::IsTerminal;
    let mut tracker = SyncProgress::new(std::io::stderr().is_terminal());
    let result =
        s3files::mounts::sync_with_progress(path, PROGRESS_EVERY, &mut |now| tracker.update(now));
    tracker.finish(result.is_ok());
    report(result)
}

/// How often `s3files sync` reads the mount's pending count.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Files and bytes done so far by a sync, from the mount's pending counts: the total is
/// what was pending at the start plus whatever was added while it ran.
struct SyncProgress {
    bar: Option<indicatif::ProgressBar>,
    started: std::time::Instant,
    total: s3files::mounts::Pending,
    last: Option<s3files::mounts::Pending>,
}

impl SyncProgress {
    fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(0),
                indicatif::ProgressDrawTarget::stderr_with_hz(5),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "syncing [{bar:20}] {pos}/{len} changes, {msg} ({elapsed})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        SyncProgress {
            bar,
            started: std::time::Instant::now(),
            total: Default::default(),
            last: None,
        }
    }

    fn update(&mut self, now: s3files::mounts::Pending) {
        let last = self.last.unwrap_or_default();
        // Pending counts that grow are new changes the sync also waits for.
        self.total.files += now.files.saturating_sub(last.files);
        self.total.bytes += now.bytes.saturating_sub(last.bytes);
        self.last = Some(now);
        if let Some(bar) = &self.bar {
            let done_bytes = self.total.bytes.saturating_sub(now.bytes);
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            // Message first: each call may redraw, and the bar should never show an
            // empty one.
            bar.set_message(format!(
                "{} left, {}/s",
                format_size(now.bytes),
                format_size((done_bytes as f64 / secs) as u64)
            ));
            bar.set_length(self.total.files);
            bar.set_position(self.total.files.saturating_sub(now.files));
        }
    }

    fn finish(self, ok: bool) {
        let left = self.last.unwrap_or_default();
        let files = self.total.files.saturating_sub(left.files);
        let bytes = self.total.bytes.saturating_sub(left.bytes);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if ok && self.last.is_none() {
            // The daemon gave no pending counts (one from before they existed).
            eprintln!("synced in {:.1} s", self.started.elapsed().as_secs_f64());
        } else if ok {
            eprintln!(
                "synced {files} change(s) ({}) in {:.1} s",
                format_size(bytes),
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

fn format_size(bytes: u64) -> String {
    s3files::units::format_size(bytes)
}

fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3files: error: {e}");
            ExitCode::FAILURE
        }
    }
}
