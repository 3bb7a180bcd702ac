#!/usr/bin/env bash
# Big flat directory on moto: one prefix of N objects of 10 bytes (default 20,000).
# Measures, in one run, the time of its ListObjectsV2 pages alone (boto3 paginator), and
# on a fresh mount each time: the first plain `ls -f` and the first `ls -l`, with eager
# import on (the default) and off. Also counts the server's requests during each (its
# request log). Results go in docs/BENCHMARKS.md.
#
#   scripts/bench-bigdir.sh [N]     (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
n=${1:-20000}

scripts/setup.sh >&2
cargo build --release --quiet --bins
bin="$root/target/release/s3files"
work=$(mktemp -d)

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
endpoint="http://127.0.0.1:$port"
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
cleanup() {
    local m
    for m in $(awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts); do
        "$bin" unmount "$m" 2>/dev/null || umount -l "$m" || true
    done
    kill "$moto_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

echo "creating $n objects..." >&2
.venv/bin/python - "$endpoint" "$n" <<'PY'
import sys, boto3, concurrent.futures as cf
endpoint, n = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
s3.create_bucket(Bucket="big")
s3.put_bucket_versioning(Bucket="big", VersioningConfiguration={"Status": "Enabled"})
def put(i):
    s3.put_object(Bucket="big", Key=f"flat/f{i:06d}", Body=b"0123456789")
with cf.ThreadPoolExecutor(32) as pool:
    list(pool.map(put, range(n)))
PY

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
# Requests in the server's log after line $1: listings, HEADs and GETs of objects.
requests() {
    tail -n +"$(($1 + 1))" "$work/moto.log" | awk '
        /"GET \/big\/?\?list-type=2/ {l++; next}
        /"HEAD \/big\/flat\/[^ ?]/ {h++; next}
        /"GET \/big\/flat\/[^ ?]/ {g++}
        END {printf "%d LIST, %d HEAD, %d GET", l, h, g}'
}

t0=$(now)
pages=$(.venv/bin/python - "$endpoint" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="big", Prefix="flat/", Delimiter="/")
print(sum(1 for _ in pages))
PY
)
list_s=$(since "$t0")

# run LABEL EAGER_FLAGS COMMAND: a fresh mount (new cache), the command on flat/ timed.
run() {
    local label=$1 flags=$2 cmd=$3 mnt="$work/mnt-$RANDOM" from entries secs
    mkdir -p "$mnt"
    # shellcheck disable=SC2086
    "$bin" mount s3://big "$mnt" --endpoint-url "$endpoint" --force-path-style \
        --cache-dir "$mnt.cache" --log-level warn $flags
    from=$(wc -l <"$work/moto.log")
    t0=$(now)
    entries=$($cmd "$mnt/flat" | wc -l)
    secs=$(since "$t0")
    printf '%-34s %9s %8s   %s\n' "$label" "$secs" "$entries" "$(requests "$from")"
    "$bin" unmount "$mnt"
    echo "$secs" >"$work/$label.s"
}

echo "directory: $n objects of 10 bytes in one prefix, moto, release build"
printf '%-34s %9s %8s   %s\n' what seconds lines "server requests during it"
printf '%-34s %9s %8s   %s\n' "ListObjectsV2 pages alone (boto3)" "$list_s" "$pages" "pages"
run "ls-f-eager-on" "" "ls -f"
run "ls-f-eager-off" "--import-size-threshold 0" "ls -f"
run "ls-l-eager-on" "" "ls -l"
run "ls-l-eager-off" "--import-size-threshold 0" "ls -l"
for label in ls-f-eager-on ls-f-eager-off; do
    awk -v l="$list_s" -v s="$(cat "$work/$label.s")" -v n="$label" \
        'BEGIN {printf "%s / listing alone: %.2fx\n", n, s / l}'
done
