#!/usr/bin/env bash
# Writes a large file through the mount and exports it (multipart) to Garage, reporting
# write and export time, whether the object's sha256 matches, and the daemon's peak RSS.
# Results go in docs/BENCHMARKS.md.
#
#   scripts/bench-large-write.sh [SIZE_MIB]     (default 4096)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-4096}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bench_init
mnt="$work/mnt"
mkdir -p "$mnt"

"$bin" mount s3://bench "$mnt" --endpoint-url "$GARAGE_ENDPOINT" --force-path-style --allow-unversioned \
    --cache-dir "$work/cache" --write-back-delay 600s
pid=$(pgrep -f "^$bin mount s3://bench $mnt" | head -n 1)

now() { date +%s.%N; }
# Pseudo-random data from a fast generator (AES-CTR via openssl would need a package;
# /dev/urandom is fast enough at ~500 MiB/s), hashed as it is written.
t0=$(now)
head -c $((size_mib << 20)) /dev/urandom | tee "$mnt/large.bin" | sha256sum | cut -d' ' -f1 >"$work/want"
t1=$(now)
"$bin" sync "$mnt/large.bin"
t2=$(now)
peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
got=$(.venv/bin/python - "$GARAGE_ENDPOINT" <<'PY'
import hashlib, sys, boto3
body = boto3.client("s3", endpoint_url=sys.argv[1]).get_object(Bucket="bench", Key="large.bin")["Body"]
h = hashlib.sha256()
for chunk in iter(lambda: body.read(8 << 20), b""):
    h.update(chunk)
print(h.hexdigest())
PY
)
want=$(cat "$work/want")
awk -v mib="$size_mib" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v kib="$peak_kib" \
    -v ok="$([[ $got == "$want" ]] && echo yes || echo NO)" 'BEGIN {
    printf "file: %d MiB\nwrite through the mount: %.1f s (%.0f MiB/s)\n", mib, t1 - t0, mib / (t1 - t0)
    printf "export (multipart) via s3files sync: %.1f s (%.0f MiB/s)\n", t2 - t1, mib / (t2 - t1)
    printf "object sha256 matches: %s\ndaemon peak RSS: %.1f MiB\n", ok, kib / 1024
}'
grep -c "exported" "$work/cache/s3files.log" >/dev/null || true
[[ $got == "$want" ]]
