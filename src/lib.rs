//! s3files: mount an S3 bucket as a local directory with Amazon S3 Files semantics.
//! See docs/ARCHITECTURE.md for how the modules fit together.

pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod events;
pub mod export;
pub mod fs;
pub mod fuse;
pub mod import_rules;
pub mod local_state;
pub mod lock_order;
pub mod logging;
pub mod metrics;
pub mod metrics_endpoint;
pub mod mount_api;
pub mod mount_helper;
pub mod mounts;
pub mod posix;
pub mod read;
pub mod store;
pub mod units;

pub use mount_api::{Mount, MountBuilder, MountError, MountGuard};
