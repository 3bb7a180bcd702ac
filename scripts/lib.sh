# Shared by the Garage benchmark scripts: set-up, release build, a scratch directory
# cleaned up on exit (mounts unmounted, Garage stopped), and mount helpers.
# shellcheck shell=bash

# Sets root, bin, work; starts Garage (exports GARAGE_ENDPOINT and AWS_* for it), or moto
# with S3FILES_BENCH_SERVER=moto (a look at a machine without Garage: moto's ranged GETs
# re-read whole objects, so throughput rows then measure moto).
bench_init() {
    root=$(pwd)
    scripts/setup.sh >&2
    cargo build --release --quiet --bins --examples
    bin="$root/target/release/s3files"
    work=$(mktemp -d)
    trap bench_cleanup EXIT
    if [[ ${S3FILES_BENCH_SERVER:-garage} == moto ]]; then
        bench_start_moto
    else
        eval "$(scripts/garage.sh start "$work/garage")"
    fi
}

bench_start_moto() {
    local port i
    port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    .venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
    moto_pid=$!
    export GARAGE_ENDPOINT="http://127.0.0.1:$port" GARAGE_BUCKET=bench
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
    export AWS_EC2_METADATA_DISABLED=true
    for i in $(seq 100); do
        (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
        sleep 0.1
    done
    .venv/bin/python -c "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1]).create_bucket(Bucket='bench')" "$GARAGE_ENDPOINT"
}

bench_cleanup() {
    local m
    for m in $(awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts); do
        "$bin" unmount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m"
    done
    scripts/garage.sh stop "$work/garage"
    if [[ -n ${moto_pid:-} ]]; then kill "$moto_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}

wait_mounted() {
    local i
    for i in $(seq 300); do
        grep -qs " $1 " /proc/mounts && return 0
        sleep 0.1
    done
    echo "bench: $1 did not mount" >&2
    return 1
}

# mount_bench MOUNTPOINT CACHE_DIR [FLAGS...]: mounts s3://bench in the foreground
# daemon mode, in the background, and sets mount_pid (for /proc/PID/status).
mount_bench() {
    local mnt=$1 cache=$2
    shift 2
    mkdir -p "$mnt"
    "$bin" mount s3://bench "$mnt" --endpoint-url "$GARAGE_ENDPOINT" --force-path-style --allow-unversioned \
        --cache-dir "$cache" --foreground --log-level warn "$@" 2>>"$work/daemon.log" &
    mount_pid=$!
    wait_mounted "$mnt"
}

unmount_bench() {
    "$bin" unmount "$1"
    wait "$mount_pid" || true
}
