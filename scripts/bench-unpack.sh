#!/usr/bin/env bash
# Unpacks a source tree of at least 5,000 files (crates from the local cargo registry)
# into the mount and onto local disk, alternating, in one run, and prints the times and
# their ratio. Writes are local on the mount (export happens after the write-back delay),
# so this measures the write path's local cost. Results go in docs/BENCHMARKS.md.
#
#   scripts/bench-unpack.sh [ROUNDS]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
rounds=${1:-3}

scripts/setup.sh
cargo build --release --quiet
bin="$root/target/release/s3files"
work=$(mktemp -d)
mnt="$work/mnt"
mkdir -p "$mnt" "$work/local"

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
cleanup() {
    if grep -qs " $mnt " /proc/mounts; then "$bin" unmount "$mnt" || umount -l "$mnt" || true; fi
    kill "$moto_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
.venv/bin/python -c "import boto3,sys; s3 = boto3.client('s3', endpoint_url=sys.argv[1]); s3.create_bucket(Bucket='unpack'); s3.put_bucket_versioning(Bucket='unpack', VersioningConfiguration={'Status': 'Enabled'})" "http://127.0.0.1:$port"

# The tarball: whole crates from the registry until there are at least 5,000 files.
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -n 1)
crates=()
count=0
for crate in $(ls "$registry" | sort); do
    crates+=("$crate")
    count=$((count + $(find "$registry/$crate" -type f | wc -l)))
    [[ $count -ge 5000 ]] && break
done
tar -C "$registry" -cf "$work/tree.tar" "${crates[@]}"
files=$(tar -tf "$work/tree.tar" | grep -vc '/$')
bytes=$(stat -c %s "$work/tree.tar")

# Export after the run, not during it: the benchmark is about the local write path.
"$bin" mount s3://unpack "$mnt" --endpoint-url "http://127.0.0.1:$port" --force-path-style \
    --cache-dir "$work/cache" --write-back-delay 600s

now() { date +%s.%N; }
local_times=()
mount_times=()
for round in $(seq "$rounds"); do
    rm -rf "$work/local/$round"; mkdir -p "$work/local/$round" "$mnt/$round"
    sync
    t0=$(now); tar -C "$work/local/$round" -xf "$work/tree.tar"; t1=$(now)
    local_times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")
    t0=$(now); tar -C "$mnt/$round" -xf "$work/tree.tar"; t1=$(now)
    mount_times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")
done
diff -r "$work/local/1" "$mnt/1" >/dev/null && same=yes || same=NO

printf 'tree: %d files, %d crates, %.1f MiB tar\n' "$files" "${#crates[@]}" "$(awk -v b="$bytes" 'BEGIN {print b / 1048576}')"
printf '%-8s %12s %12s %8s\n' round local_s mount_s ratio
for i in $(seq 0 $((rounds - 1))); do
    awk -v r=$((i + 1)) -v l="${local_times[$i]}" -v m="${mount_times[$i]}" \
        'BEGIN {printf "%-8d %12.2f %12.2f %7.2fx\n", r, l, m, m / l}'
done
printf '%s\n' "${local_times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median local: %.2f s\n", a[int((NR+1)/2)]}'
printf '%s\n' "${mount_times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median mount: %.2f s\n", a[int((NR+1)/2)]}'
echo "mount tree identical to local: $same"
