#!/usr/bin/env bash
# Reads a large object through the mount against Garage (a server whose ranged GETs do
# not slow down with object size) and reports time, throughput, whether the sha256
# matches, and the daemon's peak RSS. Results go in docs/BENCHMARKS.md.
#
#   scripts/bench-large-read.sh [SIZE_MIB]     (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bench_init
mnt="$work/mnt"
mkdir -p "$mnt"

echo "writing a ${size_mib} MiB object..." >&2
head -c $((size_mib << 20)) /dev/urandom >"$work/object.bin"
want=$(sha256sum "$work/object.bin" | cut -d' ' -f1)
.venv/bin/python - "$GARAGE_ENDPOINT" "$work/object.bin" <<'PY'
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1]).upload_file(sys.argv[2], "bench", "large.bin")
PY
rm "$work/object.bin"
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true

"$bin" mount s3://bench "$mnt" --endpoint-url "$GARAGE_ENDPOINT" --force-path-style --allow-unversioned \
    --cache-dir "$work/cache"
pid=$(pgrep -f "^$bin mount s3://bench $mnt" | head -n 1)

start=$(date +%s.%N)
got=$(sha256sum "$mnt/large.bin" | cut -d' ' -f1)
end=$(date +%s.%N)
peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")

awk -v mib="$size_mib" -v s="$start" -v e="$end" -v kib="$peak_kib" -v ok="$([[ $got == "$want" ]] && echo yes || echo NO)" 'BEGIN {
    secs = e - s
    printf "object: %d MiB\nread+sha256 through the mount: %.2f s (%.0f MiB/s)\nsha256 match: %s\ndaemon peak RSS: %.1f MiB\n", mib, secs, mib / secs, ok, kib / 1024
}'
[[ $got == "$want" ]]
