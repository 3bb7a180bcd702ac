#!/usr/bin/env bash
# Side by side, in one run:
#  1. FUSE workers: aggregate throughput of 8 parallel readers, each on its own cached
#     file, against 1 reader, with --fuse-threads 1 and with the default (one per CPU,
#     at least 2). Reads are 128 KiB O_DIRECT preads, so every one reaches the daemon
#     (the page cache would otherwise answer them and measure nothing of FUSE).
#  2. Stat storm: lstat of every file of a tree, twice with more than 1 s between the
#     passes (a `git status` now and again), with --kernel-cache-ttl 1s (the old fixed
#     timeout) and with the default.
#
#   scripts/bench-workers.sh [SECONDS] [FILES]    (default 5 s per read test, 2000 files)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
files=${2:-2000}

# Against moto (every measured request is answered from the cache or the kernel, so the
# server's speed does not enter the ratios; no Garage build needed).
scripts/setup.sh >&2
cargo build --release --quiet --bins --examples
bin="$PWD/target/release/s3files"
work=$(mktemp -d)
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
endpoint="http://127.0.0.1:$port"
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
cleanup() {
    local m
    for m in $(awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts); do
        "$bin" unmount "$m" 2>/dev/null || umount -l "$m"
    done
    kill "$moto_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
    curl -s "$endpoint" >/dev/null && break
    sleep 0.1
done

mount_bench() {
    local mnt=$1 cache=$2
    shift 2
    mkdir -p "$mnt"
    "$bin" mount s3://bench "$mnt" --endpoint-url "$endpoint" --force-path-style --allow-unversioned \
        --cache-dir "$cache" --log-level warn "$@"
}
unmount_bench() {
    "$bin" unmount "$1"
}

echo "creating 8 x 32 MiB files and a tree of $files files..." >&2
.venv/bin/python - "$endpoint" "$files" <<'PY'
import sys, boto3, concurrent.futures as cf
endpoint, n = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=endpoint)
s3.create_bucket(Bucket="bench")
body = bytes(range(256)) * (32 * 4096)
for i in range(8):
    s3.put_object(Bucket="bench", Key=f"readers/f{i}", Body=body)
def put(i):
    s3.put_object(Bucket="bench", Key=f"tree/d{i % 20:02d}/f{i:05d}", Body=b"x" * 100)
with cf.ThreadPoolExecutor(32) as pool:
    list(pool.map(put, range(n)))
PY

# readers MOUNT SECONDS N: N processes, reader i reading MOUNT/readers/fi in a loop;
# prints the aggregate MiB/s.
readers() {
    .venv/bin/python - "$1" "$2" "$3" <<'PY'
import mmap, os, sys, time, multiprocessing as mp
root, secs, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
CHUNK = 128 * 1024
def read(i, start, out):
    fd = os.open(f"{root}/readers/f{i}", os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, CHUNK)
    size = os.fstat(fd).st_size
    while time.monotonic() < start:
        pass
    done, off, end = 0, 0, start + secs
    while time.monotonic() < end:
        done += os.preadv(fd, [buf], off)
        off = (off + CHUNK) % size
    out.put(done)
out = mp.Queue()
start = time.monotonic() + 0.5
procs = [mp.Process(target=read, args=(i, start, out)) for i in range(n)]
for p in procs: p.start()
total = sum(out.get() for _ in procs)
for p in procs: p.join()
print(f"{total / secs / 2**20:.0f}")
PY
}

# warm MOUNT: reads every block of the 8 files, last first: a sequential read streams
# past the data cache, block reads out of order fill it.
warm() {
    .venv/bin/python - "$1" <<'PY'
import mmap, os, sys
buf = mmap.mmap(-1, 256 * 1024)
for i in range(8):
    fd = os.open(f"{sys.argv[1]}/readers/f{i}", os.O_RDONLY | os.O_DIRECT)
    for off in reversed(range(0, os.fstat(fd).st_size, len(buf))):
        os.preadv(fd, [buf], off)
    os.close(fd)
PY
}

# storm ROOT: lstat of every file under ROOT; prints the seconds it took.
storm() {
    .venv/bin/python - "$1" <<'PY'
import os, sys, time
root = sys.argv[1]
names = [f"{root}/d{i % 20:02d}/f{i:05d}" for i in range(int(os.environ["FILES"]))]
t = time.perf_counter()
for p in names:
    os.lstat(p)
print(f"{time.perf_counter() - t:.3f}")
PY
}
export FILES=$files

declare -A one eight
for threads in 1 default; do
    mnt="$work/m-$threads"
    flags=(--import-size-threshold 0)
    [[ $threads == 1 ]] && flags+=(--fuse-threads 1)
    mount_bench "$mnt" "$work/c-$threads" "${flags[@]}"
    warm "$mnt" # fill the data cache
    one[$threads]=$(readers "$mnt" "$secs" 1)
    eight[$threads]=$(readers "$mnt" "$secs" 8)
    unmount_bench "$mnt"
done

declare -A first second
for ttl in 1s default; do
    mnt="$work/s-$ttl"
    flags=()
    [[ $ttl == 1s ]] && flags+=(--kernel-cache-ttl 1s)
    mount_bench "$mnt" "$work/sc-$ttl" "${flags[@]}"
    ls -R "$mnt/tree" >/dev/null # list the tree, as `git status` finds it
    sleep 1.5
    first[$ttl]=$(storm "$mnt/tree")
    sleep 1.5
    second[$ttl]=$(storm "$mnt/tree")
    unmount_bench "$mnt"
done

echo "machine: $(nproc) CPUs; cached reads: 128 KiB O_DIRECT preads for ${secs}s"
printf '%-18s %12s %12s %10s\n' fuse-threads "1 reader" "8 readers" "8/1"
for threads in 1 default; do
    awk -v t="$threads" -v a="${one[$threads]}" -v b="${eight[$threads]}" \
        'BEGIN {printf "%-18s %8s MiB/s %6s MiB/s %9.2fx\n", t, a, b, b / a}'
done
awk -v a="${eight[1]}" -v b="${eight[default]}" \
    'BEGIN {printf "8 readers, default vs 1 thread: %.2fx\n", b / a}'
echo
echo "stat storm: lstat of $files files after ls -R, two passes 1.5 s apart"
printf '%-18s %10s %10s %12s\n' kernel-cache-ttl "pass 1 s" "pass 2 s" "pass2/pass1"
for ttl in 1s default; do
    awk -v t="$ttl" -v a="${first[$ttl]}" -v b="${second[$ttl]}" \
        'BEGIN {printf "%-18s %10s %10s %11.2fx\n", t, a, b, b / a}'
done
awk -v a="${second[1s]}" -v b="${second[default]}" \
    'BEGIN {printf "pass 2, 1s TTL vs default: %.1fx faster\n", a / b}'
