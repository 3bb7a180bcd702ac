# Shared by the Garage benchmark scripts: set-up, release build, a scratch directory
# cleaned up on exit (mounts unmounted, Garage stopped), and mount helpers.
# shellcheck shell=bash

# Sets root, bin, work; starts Garage (exports GARAGE_ENDPOINT and AWS_* for it).
bench_init() {
    root=$(pwd)
    scripts/setup.sh >&2
    cargo build --release --quiet --bins --examples
    bin="$root/target/release/s3files"
    work=$(mktemp -d)
    trap bench_cleanup EXIT
    eval "$(scripts/garage.sh start "$work/garage")"
}

bench_cleanup() {
    local m
    for m in $(awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts); do
        "$bin" unmount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m"
    done
    scripts/garage.sh stop "$work/garage"
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
