use std::process::ExitCode;

use clap::Parser;
use s3files::cli::{Cli, Command};
use s3files::mounts::Unmounted;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mount(args) => s3files::daemon::mount_command(args),
        Command::Unmount(args) => unmount(&args.mountpoint),
        Command::Sync(args) => {
            let path = args.path.unwrap_or_else(|| std::path::PathBuf::from("."));
            report(s3files::mounts::sync(&path))
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

fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3files: error: {e}");
            ExitCode::FAILURE
        }
    }
}
