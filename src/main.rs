use std::process::ExitCode;

use clap::Parser;
use s3files::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mount(args) => s3files::daemon::mount_command(args),
        Command::Unmount(args) => match s3files::mounts::unmount(&args.mountpoint) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("s3files: error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
