#!/usr/bin/env bash
# Does polling a huge watched directory stall other requests? A directory of N keys
# (default 100,000) is watched (listed once), then a reader does 4 KiB O_DIRECT preads
# on a file elsewhere for a while, once with polling every second and once with polling
# off, against Garage. Prints the reader's p50/p99 for both and their ratio.
#
#   scripts/bench-poll-load.sh [KEYS] [SECONDS]     (default 100000 20)
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-100000}
secs=${2:-20}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bench_init
mkdir -p "$work/on" "$work/off"

echo "creating $keys keys..." >&2
.venv/bin/python - "$GARAGE_ENDPOINT" "$keys" <<'PY'
import sys, boto3, concurrent.futures as cf
endpoint, n = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=endpoint)
s3.put_object(Bucket="bench", Key="reader/data.bin", Body=bytes(range(256)) * 4096)
def put(i):
    s3.put_object(Bucket="bench", Key=f"huge/k{i:07d}", Body=b"x")
with cf.ThreadPoolExecutor(32) as pool:
    list(pool.map(put, range(n)))
PY

run() {
    local mnt=$1 poll=$2
    # Eager import off: this measures what polling costs, not 100,000 background GETs.
    "$bin" mount s3://bench "$mnt" --endpoint-url "$GARAGE_ENDPOINT" --force-path-style --allow-unversioned \
        --cache-dir "$work/cache-$poll" --poll-interval "$poll" --import-size-threshold 0
    ls "$mnt/huge" | wc -l >/dev/null   # watch the huge directory
    .venv/bin/python - "$mnt/reader/data.bin" "$secs" <<'PY'
import mmap, os, random, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
size = os.fstat(fd).st_size
lat = []
end = time.monotonic() + secs
while time.monotonic() < end:
    off = random.randrange(0, size // 4096) * 4096
    t = time.perf_counter_ns()
    os.preadv(fd, [buf], off)
    lat.append(time.perf_counter_ns() - t)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * (len(lat) - 1)))] / 1000
print(f"{len(lat)} {p(0.5):.1f} {p(0.99):.1f}")
PY
    "$bin" unmount "$mnt"
}

off=$(run "$work/off" 0s)
on=$(run "$work/on" 1s)
read -r n_off p50_off p99_off <<<"$off"
read -r n_on p50_on p99_on <<<"$on"
echo "watched directory: $keys keys; reader: 4 KiB O_DIRECT preads for ${secs}s on another file"
printf '%-12s %10s %12s %12s\n' polling reads p50_us p99_us
printf '%-12s %10s %12s %12s\n' off "$n_off" "$p50_off" "$p99_off"
printf '%-12s %10s %12s %12s\n' "every 1s" "$n_on" "$p50_on" "$p99_on"
awk -v a="$p99_on" -v b="$p99_off" 'BEGIN {printf "p99 ratio (on/off): %.2fx\n", a / b}'
