#!/usr/bin/env bash
# The read-path benchmarks of docs/BENCHMARKS.md in one run against one local Garage
# server (disk-backed, so throughput is not capped by the server as it is with moto),
# printing a table:
#
#   1. 4 KiB random pread latency (O_DIRECT, so every read reaches the daemon) on a cached
#      file, vs the same on a trivial in-memory FUSE file system (examples/memfs.rs);
#      and the same reads cold (each the first touch of its block: a cache miss).
#   2. Sequential read of a large object through the mount (cold: streamed), vs a plain
#      aws-sdk-s3 loop of 8 MiB ranged GETs; and warm (the kernel page cache, kept across
#      opens of an unchanged object).
#   3. grep -r over a freshly listed tree of small files vs the same tree on local disk
#      (warm, and cold after dropping the page cache when run as root), and again warm;
#      and over as many small files on memfs (the FUSE floor).
#   4. Peak RSS of the daemon while streaming a huge object.
#
#   scripts/bench.sh [SEQ_MIB] [HUGE_MIB] [FILES] [ROUNDS]   (default 1024 4096 2000 3)
set -euo pipefail
cd "$(dirname "$0")/.."
seq_mib=${1:-1024}
huge_mib=${2:-4096}
files=${3:-2000}
rounds=${4:-3}
pread_secs=${S3FILES_BENCH_PREAD_SECS:-10}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bench_init
tool="$root/target/release/examples/bench_io"
memfs="$root/target/release/examples/memfs"

echo "bench: creating objects (${seq_mib} MiB, ${huge_mib} MiB, 64 MiB x2, $files small files)..." >&2
mkdir -p "$work/local"
.venv/bin/python - "$GARAGE_ENDPOINT" "$work" "$seq_mib" "$huge_mib" "$files" <<'PY'
import os, sys, random, boto3, concurrent.futures as cf
from boto3.s3.transfer import TransferConfig
endpoint, work, seq_mib, huge_mib, files = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
s3 = boto3.client("s3", endpoint_url=endpoint)
cfg = TransferConfig(multipart_chunksize=64 << 20, max_concurrency=4)
def upload(key, mib):
    path = os.path.join(work, "upload.bin")
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    s3.upload_file(path, "bench", key, Config=cfg)
    os.remove(path)
upload("seq.bin", seq_mib)
upload("huge.bin", huge_mib)
upload("random-warm.bin", 64)
upload("random-cold.bin", 64)
rng = random.Random(7)
words = ["alpha", "beta", "gamma", "delta", "kappa", "omega", "sigma", "tau"]
def make(i):
    lines = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(rng.randint(20, 120))]
    if i % 50 == 0:
        lines.append("needle found here")
    return f"tree/d{i % 20:02d}/f{i:05d}.txt", ("\n".join(lines) + "\n").encode()
items = [make(i) for i in range(files)]
for key, body in items:
    path = os.path.join(work, "local", key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(body)
with cf.ThreadPoolExecutor(16) as pool:
    list(pool.map(lambda kb: s3.put_object(Bucket="bench", Key=kb[0], Body=kb[1]), items))
PY

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'; }

# 1. Random 4 KiB preads.
echo "bench: 4 KiB random preads..." >&2
mkdir -p "$work/memfs"
"$memfs" "$work/memfs" $((64 << 20)) "$files" &
memfs_pid=$!
wait_mounted "$work/memfs"
read -r _ memfs_p50 memfs_p99 <<<"$("$tool" pread "$work/memfs/data.bin" "$pread_secs")"

mount_bench "$work/mnt" "$work/cache-pread"
read -r _ cold_p50 cold_p99 <<<"$("$tool" pread-cold "$work/mnt/random-cold.bin" 256)"
"$tool" pread "$work/mnt/random-warm.bin" 3 >/dev/null   # fills the cache
read -r _ warm_p50 warm_p99 <<<"$("$tool" pread "$work/mnt/random-warm.bin" "$pread_secs")"
unmount_bench "$work/mnt"

# 2. Sequential read, alternating with the SDK loop, a fresh mount (cold) per round.
echo "bench: sequential ${seq_mib} MiB x $rounds..." >&2
: >"$work/sdk" ; : >"$work/cold" ; : >"$work/warm"
for _ in $(seq "$rounds"); do
    "$tool" sdk bench seq.bin 8 | awk '{print $3}' >>"$work/sdk"
    mount_bench "$work/mnt" "$work/cache-seq"
    "$tool" seq "$work/mnt/seq.bin" | awk '{print $3}' >>"$work/cold"
    "$tool" seq "$work/mnt/seq.bin" | awk '{print $3}' >>"$work/warm"
    unmount_bench "$work/mnt"
done
sdk_mibs=$(median <"$work/sdk"); cold_mibs=$(median <"$work/cold"); warm_mibs=$(median <"$work/warm")

# 3. grep -r over a freshly listed tree: a fresh mount and cache per round.
echo "bench: grep -r over $files files x $rounds..." >&2
: >"$work/local-t" ; : >"$work/local-cold" ; : >"$work/grep-cold" ; : >"$work/grep-warm" ; : >"$work/grep-memfs"
for r in $(seq "$rounds"); do
    # Local disk cold (page cache dropped; needs root), then warm, like a hot tree.
    if sync && echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then
        secs grep -r needle "$work/local/tree" >>"$work/local-cold"
    fi
    secs grep -r needle "$work/local/tree" >>"$work/local-t"
    secs grep -r needle "$work/memfs/tree" >>"$work/grep-memfs"
    mount_bench "$work/mnt" "$work/cache-grep-$r"
    find "$work/mnt/tree" >/dev/null
    secs grep -r needle "$work/mnt/tree" >>"$work/grep-cold"
    secs grep -r needle "$work/mnt/tree" >>"$work/grep-warm"
    unmount_bench "$work/mnt"
done
local_s=$(median <"$work/local-t"); grep_cold=$(median <"$work/grep-cold"); grep_warm=$(median <"$work/grep-warm")
grep_memfs=$(median <"$work/grep-memfs")
local_cold=$( [[ -s "$work/local-cold" ]] && median <"$work/local-cold" || echo 0)
fusermount3 -u "$work/memfs" 2>/dev/null || umount "$work/memfs"
wait "$memfs_pid" || true

# 4. Peak RSS while streaming the huge object.
echo "bench: streaming ${huge_mib} MiB..." >&2
mount_bench "$work/mnt" "$work/cache-huge"
huge_mibs=$("$tool" seq "$work/mnt/huge.bin" | awk '{print $3}')
rss_mib=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$mount_pid/status")
unmount_bench "$work/mnt"

echo
echo "s3files read benchmarks against Garage ($(nproc) cores; medians of $rounds rounds where rounds apply)"
printf '%-58s %14s %14s %10s\n' "measurement" "s3files" "reference" "ratio"
printf '%-58s %14s %14s %10s\n' "4 KiB random pread p50, cached (vs memfs), us" "$warm_p50" "$memfs_p50" "$(ratio "$warm_p50" "$memfs_p50")"
printf '%-58s %14s %14s %10s\n' "4 KiB random pread p99, cached (vs memfs), us" "$warm_p99" "$memfs_p99" "$(ratio "$warm_p99" "$memfs_p99")"
printf '%-58s %14s %14s %10s\n' "4 KiB random pread p50 / p99, cold (cache misses), us" "$cold_p50 / $cold_p99" "" ""
printf '%-58s %14s %14s %10s\n' "sequential ${seq_mib} MiB cold/streamed (vs SDK loop), MiB/s" "$cold_mibs" "$sdk_mibs" "$(ratio "$cold_mibs" "$sdk_mibs")"
printf '%-58s %14s %14s %10s\n' "sequential ${seq_mib} MiB warm (page cache), MiB/s" "$warm_mibs" "" ""
printf '%-58s %14s %14s %10s\n' "grep -r $files files, freshly listed (vs local disk), s" "$grep_cold" "$local_s" "$(ratio "$grep_cold" "$local_s")"
if [[ $local_cold != 0 ]]; then
    printf '%-58s %14s %14s %10s\n' "grep -r $files files, freshly listed (vs local disk cold), s" "$grep_cold" "$local_cold" "$(ratio "$grep_cold" "$local_cold")"
fi
printf '%-58s %14s %14s %10s\n' "grep -r $files files, warm (vs local disk), s" "$grep_warm" "$local_s" "$(ratio "$grep_warm" "$local_s")"
printf '%-58s %14s %14s %10s\n' "grep -r $files files on memfs (FUSE floor; vs local), s" "$grep_memfs" "$local_s" "$(ratio "$grep_memfs" "$local_s")"
printf '%-58s %14s %14s %10s\n' "streaming ${huge_mib} MiB: MiB/s, daemon peak RSS MiB" "$huge_mibs" "$rss_mib" ""
