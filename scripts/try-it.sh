#!/usr/bin/env bash
# First run on a fresh machine, no S3 needed: installs what s3files needs, builds it,
# starts a local S3 server (moto) on 127.0.0.1, creates a versioned bucket with a few
# files, mounts it, and reads a file through the mount.
#
#   scripts/try-it.sh [MOUNTPOINT]     (default: ./mnt)
#
# It then keeps the mount up until you press Ctrl-C (or, without a terminal, unmounts
# right away), and cleans up: unmount, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mountpoint=${1:-"$root/mnt"}

scripts/setup.sh
echo "building s3files (release)..." >&2
cargo build --release --quiet
bin="$root/target/release/s3files"

# A private, throwaway S3: static credentials, loopback only, no instance metadata.
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
endpoint="http://127.0.0.1:$port"
work=$(mktemp -d)
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!

cleanup() {
    if grep -qs " $mountpoint " /proc/mounts; then
        "$bin" unmount "$mountpoint" || umount -l "$mountpoint" || true
    fi
    kill "$moto_pid" 2>/dev/null || true
    wait "$moto_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 100); do
    (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    sleep 0.1
done

.venv/bin/python - "$endpoint" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
s3.create_bucket(Bucket="demo")
s3.put_bucket_versioning(Bucket="demo", VersioningConfiguration={"Status": "Enabled"})
s3.put_object(Bucket="demo", Key="hello.txt", Body=b"Hello from S3, read through s3files!\n")
s3.put_object(Bucket="demo", Key="project/README.md", Body=b"# a project stored in S3\n")
s3.put_object(Bucket="demo", Key="project/src/main.py", Body=b"print('hi')\n",
              Metadata={"file-permissions": "0100755", "file-owner": "1000", "file-group": "1000"})
s3.put_object(Bucket="demo", Key="latest", Body=b"project/README.md",
              Metadata={"file-permissions": "0120777"})
PY

mkdir -p "$mountpoint"
"$bin" mount s3://demo "$mountpoint" --endpoint-url "$endpoint" --force-path-style \
    --cache-dir "$work/cache"
echo "s3://demo is mounted on $mountpoint (local S3 server at $endpoint)"
echo
echo "\$ ls -lR $mountpoint"
ls -lR "$mountpoint"
echo
echo "\$ cat $mountpoint/hello.txt"
cat "$mountpoint/hello.txt"
echo
echo "\$ echo 'written on the mount' > $mountpoint/notes.txt; s3files sync $mountpoint"
echo "written on the mount" >"$mountpoint/notes.txt"
"$bin" sync "$mountpoint"   # otherwise exported after 60 s of quiet
echo "keys in s3://demo now:"
.venv/bin/python - "$endpoint" <<'PY'
import sys, boto3
for o in boto3.client("s3", endpoint_url=sys.argv[1]).list_objects_v2(Bucket="demo")["Contents"]:
    print("  ", o["Key"])
PY
echo
echo "\$ s3files status $mountpoint/hello.txt   # export state, cache, metrics"
"$bin" status "$mountpoint/hello.txt"

if [[ -t 0 ]]; then
    echo
    echo "Explore $mountpoint from another shell; press Ctrl-C here to unmount and stop."
    trap 'echo; exit 0' INT
    while sleep 3600; do :; done
fi
