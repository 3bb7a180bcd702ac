#!/usr/bin/env bash
# Installs what s3files and its tests need on a fresh Debian 12 machine, idempotently:
#   - fuse3 (fusermount3; the daemon itself mounts with mount(2) as root)
#   - attr (getfattr/setfattr, which the status tests run as S3 Files users do)
#   - a Python venv at .venv with moto's S3 server, the store the tests and the demo start
# Re-running it is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION="5.2.5"

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: '$*' needs root; run this script as root or install it yourself" >&2
        exit 1
    fi
}

if ! command -v fusermount3 >/dev/null 2>&1; then
    need_root "apt-get install fuse3"
    echo "setup: installing fuse3" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi

if ! command -v getfattr >/dev/null 2>&1; then
    need_root "apt-get install attr"
    echo "setup: installing attr (getfattr/setfattr: tests read the status as S3 Files users do)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq attr >/dev/null
fi

if [[ ! -e /dev/fuse ]]; then
    echo "setup: /dev/fuse is missing; this machine cannot mount FUSE file systems" >&2
    exit 1
fi

if [[ ! -x .venv/bin/moto_server ]] || ! .venv/bin/python -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    echo "setup: creating .venv with moto[server]==$MOTO_VERSION" >&2
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
