#!/usr/bin/env bash
# The whole test suite: lint, unit and property tests, and mount tests that start a real
# S3 server (moto) on 127.0.0.1 and mount it with FUSE. Needs root (FUSE mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# Never let the AWS SDK reach for instance metadata; tests use static credentials and
# explicit loopback endpoints.
export AWS_EC2_METADATA_DISABLED=true

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
