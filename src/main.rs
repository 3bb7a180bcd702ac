use std::process::ExitCode;

use clap::Parser;
use s3files::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mount(args) => s3files::daemon::mount_command(args),
        Command::Unmount(args) => report(s3files::mounts::unmount(&args.mountpoint)),
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

fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3files: error: {e}");
            ExitCode::FAILURE
        }
    }
}
