#!/usr/bin/env bash
# One benchmark command for the whole story (issue 11): the same workloads on the same
# local Garage server through s3files, rclone mount (--vfs-cache-mode full) and s3fs, and
# on local disk, in one run, printing one Markdown table (medians over rounds, min-max
# spread in parentheses; ratios per round) and writing a chart (docs/bench-peers.png).
#
#   scripts/bench.sh                 # full run: 1 GiB, 4 GiB stream, 2,000 / 20,000 /
#                                    # 5,000 / 4,650 / 20,000 files, 3 rounds (about 35
#                                    # minutes; ~10 GiB of free disk)
#   scripts/bench.sh 1024 1024       # the same, streaming the 1 GiB file for the RSS row
#                                    # (less disk; docs/BENCHMARKS.md's run)
#   scripts/bench.sh --quick         # about 3 minutes: 64 MiB files, 500 small files, 1 round
#   scripts/bench.sh [--quick] [SEQ_MIB] [HUGE_MIB] [FILES] [ROUNDS]
#
# Sizes and choices, as environment variables (defaults: full run / --quick):
#   S3FILES_BENCH_UNTAR_FILES   files in the tarball unpacked into the mount (5000 / 500)
#   S3FILES_BENCH_STAT_FILES    files of the stat-storm tree (20000 / 2000)
#   S3FILES_BENCH_BIGDIR_FILES  objects of the big flat directory (20000 / 2000)
#   S3FILES_BENCH_REPO_FILES    files of the git repository cloned (4650 / 500)
#   S3FILES_BENCH_READER_MIB    size of each of the 8 parallel readers' files (64 / 16)
#   S3FILES_BENCH_PREAD_SECS    seconds of each pread and readers loop (5 / 2)
#   S3FILES_BENCH_SYSTEMS       which to run, of "s3files rclone s3fs local" (all)
#   S3FILES_BENCH_LIMIT         time limit of each workload, seconds (600 / 300)
#   S3FILES_BENCH_CHART         chart path (docs/bench-peers.png; "" for none)
#   S3FILES_BENCH_SERVER=moto   moto instead of Garage (no Garage build; throughput rows
#                               then measure moto's ranged GETs, not the file systems)
#
# Workloads (each FUSE system gets a fresh mount and an empty cache every round):
#   grep      `find` then `grep -r` over FILES small files (1-6 KiB, 20 dirs); local warm
#   pread     4 KiB random preads on a cached 64 MiB file, O_DIRECT and buffered
#             (examples/bench_io.rs); cold: each read a first touch of its block
#   seq       a cached SEQ_MIB file read with the page cache dropped; cold: the first read
#             of it, against an SDK client's 4 parallel 8 MiB ranged GETs (local column)
#   readers   8 threads on 8 cached files (128 KiB O_DIRECT preads), against 1
#   stat      walk + lstat of every file of a STAT_FILES tree, twice 1.5 s apart (the
#             second pass timed, a `git status` now and again)
#   untar     tar -xf of UNTAR_FILES files into the mount: until tar exits, and until every
#             file is in the bucket (s3files: `s3files sync`; peers: their own upload,
#             polled by listing; local: + sync(1))
#   git       clone of a REPO_FILES repository from a local bare repository (git clone
#             --no-local), then the first `git status`, then `grep -rl`
#   stream    peak RSS of each daemon reading a HUGE_MIB object once, on its own mount
#   bigdir    a flat directory of BIGDIR_FILES objects of 10 bytes: the first plain `ls`
#             (against its ListObjectsV2 pages alone, boto3) and, on another fresh mount,
#             the first `ls -l` (local: warm)
# The memfs floor (examples/memfs.rs, a trivial in-memory FUSE file system) is printed below
# the table: its pread and grep (read-only part) and its untar (the same tarball, until tar
# exits; writable part), what any FUSE file system costs on this machine. So is the `ls -l`
# floor: one GetObject per object of the big directory by a plain SDK client, 64 in
# flight, no file system (what learning each object's metadata costs through the SDK).
#
# Robustness: each mount is unmounted and its process ended by PID (also on exit); a mount
# or a workload that fails shows "failed" in its cells and the run goes on; every workload
# and every wait has a time limit. Needs root (FUSE mounts, drop_caches, apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
if [[ ${1:-} == --quick ]]; then
    quick=true
    shift
fi
if $quick; then
    d=(64 64 500 1 500 2000 500 16 2 300 2000)
else
    d=(1024 4096 2000 3 5000 20000 4650 64 5 600 20000)
fi
seq_mib=${1:-${d[0]}}
huge_mib=${2:-${d[1]}}
files=${3:-${d[2]}}
rounds=${4:-${d[3]}}
untar_files=${S3FILES_BENCH_UNTAR_FILES:-${d[4]}}
stat_files=${S3FILES_BENCH_STAT_FILES:-${d[5]}}
repo_files=${S3FILES_BENCH_REPO_FILES:-${d[6]}}
reader_mib=${S3FILES_BENCH_READER_MIB:-${d[7]}}
pread_secs=${S3FILES_BENCH_PREAD_SECS:-${d[8]}}
limit=${S3FILES_BENCH_LIMIT:-${d[9]}}
bigdir_files=${S3FILES_BENCH_BIGDIR_FILES:-${d[10]}}
systems=${S3FILES_BENCH_SYSTEMS:-s3files rclone s3fs local}
chart=${S3FILES_BENCH_CHART-docs/bench-peers.png}
# With HUGE_MIB = SEQ_MIB the stream reads seq.bin (on a fresh mount, so cold): less disk.
huge_key=huge.bin
((huge_mib == seq_mib)) && huge_key=seq.bin

# The peers, from Debian's packages.
missing=()
for p in rclone s3fs git; do command -v "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    echo "bench: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bench_init
tool="$root/target/release/examples/bench_io"
memfs="$root/target/release/examples/memfs"
py="$root/.venv/bin/python"
helper="$root/scripts/bench_peers.py"
# The chart's plotting library, in the bench venv only (the tests do not need it).
if [[ -n $chart ]] && ! "$py" -c 'import matplotlib' 2>/dev/null; then
    echo "bench: installing matplotlib into .venv" >&2
    "$root/.venv/bin/pip" install --quiet --disable-pip-version-check matplotlib >&2 ||
        echo "bench: matplotlib could not be installed; no chart" >&2
fi

# Every process this script starts in the background, ended by PID on exit.
pids=()
peers_cleanup() {
    local p m
    for m in $(awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts); do
        timeout 60 fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    bench_cleanup
}
trap peers_cleanup EXIT
trap 'exit 130' INT TERM

res="$work/res"
mkdir -p "$res" "$work/local"
errors="$work/errors.log"
: >"$errors"

# Peers' configuration: static keys, path-style, the loopback endpoint; nothing else.
export RCLONE_CONFIG="$work/rclone.conf"
: >"$RCLONE_CONFIG"
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other RCLONE_CONFIG_BENCH_ENV_AUTH=false
export RCLONE_CONFIG_BENCH_ENDPOINT="$GARAGE_ENDPOINT" RCLONE_CONFIG_BENCH_REGION=us-east-1
export RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"
export RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true
echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" >"$work/s3fs.passwd"
chmod 600 "$work/s3fs.passwd"

echo "bench: creating data (${seq_mib} MiB, ${huge_mib} MiB, 8 x ${reader_mib} MiB, $files + $stat_files small files; tar of $untar_files, git of $repo_files)..." >&2
"$py" "$helper" make-data "$work" "$seq_mib" "$huge_mib" "$files" "$stat_files" "$untar_files" "$repo_files" "$reader_mib" "$bigdir_files"
tar -C "$work/untar-src" -cf "$work/untar.tar" .
rm -rf "$work/untar-src"
git -C "$work/repo-src" init -q
git -C "$work/repo-src" add -A
git -C "$work/repo-src" -c user.name=bench -c user.email=bench@localhost commit -q -m tree
git clone -q --bare "$work/repo-src" "$work/repo.git"
rm -rf "$work/repo-src"

# ---- measuring helpers ----------------------------------------------------------------

# record ROW SYSTEM VALUE: one value per round ("failed" for a failed round).
record() {
    mkdir -p "$res/$1"
    echo "$3" >>"$res/$1/$2"
}
# failure ROW SYSTEM RC CMD...: records a failed round, "timeout" when the limit ended it.
failure() {
    local row=$1 sys=$2 rc=$3
    shift 3
    if ((rc == 124 || rc == 137)); then
        echo "bench: $sys $row: time limit ($limit s) reached: $*" >&2
        record "$row" "$sys" timeout
    else
        echo "bench: $sys $row failed (exit $rc): $*" >&2
        record "$row" "$sys" failed
    fi
    return 1
}
# timed ROW SYSTEM CMD...: the command's wall time in seconds, within the time limit.
timed() {
    local row=$1 sys=$2 t0 t1 rc
    shift 2
    t0=$EPOCHREALTIME
    timeout -k 10 "$limit" "$@" >/dev/null 2>>"$errors" && rc=0 || rc=$?
    t1=$EPOCHREALTIME
    if ((rc == 0)); then
        record "$row" "$sys" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}')"
        return 0
    fi
    failure "$row" "$sys" "$rc" "$@"
}
# field ROW SYSTEM N CMD...: field N of the command's output (bench_io prints numbers).
field() {
    local row=$1 sys=$2 n=$3 out rc
    shift 3
    out=$(timeout -k 10 "$limit" "$@" 2>>"$errors") && rc=0 || rc=$?
    if ((rc == 0)) && [[ -n $out ]]; then
        record "$row" "$sys" "$(awk -v n="$n" '{print $n}' <<<"$out")"
        return 0
    fi
    failure "$row" "$sys" "$rc" "$@"
}
drop_caches() {
    timeout 120 sync || true
    echo 3 >/proc/sys/vm/drop_caches || echo "bench: cannot drop the page cache (not root?)" >&2
}
# Seconds since EPOCHREALTIME value $1.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.4f", b - a}'; }

# ---- mounts ---------------------------------------------------------------------------

# mount_sys SYSTEM MOUNTPOINT CACHE_DIR: starts the system's daemon in the background,
# sets sys_pid, and returns once the mount is live (at most 30 s).
mount_sys() {
    local sys=$1 mnt=$2 cache=$3
    mkdir -p "$mnt" "$cache"
    case $sys in
    s3files)
        "$bin" mount s3://bench "$mnt" --endpoint-url "$GARAGE_ENDPOINT" --force-path-style \
            --allow-unversioned --cache-dir "$cache" --foreground --log-level warn \
            >>"$work/s3files.log" 2>&1 &
        ;;
    rclone)
        # rclone refuses to start while AWS_CA_BUNDLE is set (MACHINE-NOTES).
        env -u AWS_CA_BUNDLE rclone mount bench:bench "$mnt" --vfs-cache-mode full \
            --cache-dir "$cache" --log-level NOTICE --log-file "$work/rclone.log" &
        ;;
    s3fs)
        s3fs bench "$mnt" -f -o url="$GARAGE_ENDPOINT" -o use_path_request_style \
            -o endpoint=us-east-1 -o passwd_file="$work/s3fs.passwd" -o use_cache="$cache" \
            -o dbglevel=err >>"$work/s3fs.log" 2>&1 &
        ;;
    esac
    sys_pid=$!
    pids+=("$sys_pid")
    if ! wait_mounted "$mnt"; then
        unmount_sys "$sys" "$mnt"
        return 1
    fi
}

# unmount_sys SYSTEM MOUNTPOINT: unmounts, then waits for the daemon to exit (s3files
# exports what is pending for up to 30 s; rclone uploads its dirty files), ending it by
# PID after 120 s.
unmount_sys() {
    local sys=$1 mnt=$2 i
    if grep -qs " $mnt " /proc/mounts; then
        if [[ $sys == s3files ]]; then
            timeout 120 "$bin" unmount "$mnt" >/dev/null 2>>"$errors" || true
        fi
        grep -qs " $mnt " /proc/mounts && { timeout 60 fusermount3 -u "$mnt" 2>>"$errors" || true; }
    fi
    for i in $(seq 1200); do
        kill -0 "$sys_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$sys_pid" 2>/dev/null; then
        echo "bench: $sys (pid $sys_pid) still running 120 s after unmount; ending it" >&2
        kill "$sys_pid" 2>/dev/null || true
        sleep 5
        kill -9 "$sys_pid" 2>/dev/null || true
    fi
    wait "$sys_pid" 2>/dev/null || true
    if grep -qs " $mnt " /proc/mounts; then umount -l "$mnt" 2>/dev/null || true; fi
}

# ---- one round of one system ----------------------------------------------------------

all_rows=(grep pread_direct pread_direct_p99 pread_buffered pread_cold seq_cached seq_cold
    readers1 readers8 readers_ratio stat untar untar_flush clone git_status grep_rl stream_rss
    bigdir_ls bigdir_lsl)

# fuse_round SYSTEM ROUND: every workload through a fresh mount of SYSTEM.
fuse_round() {
    local sys=$1 r=$2 mnt="$work/mnt-$1" cache="$work/cache-$1-$2" row t0 out i
    echo "bench: round $r, $sys..." >&2
    if ! mount_sys "$sys" "$mnt" "$cache"; then
        echo "bench: $sys did not mount; its cells say failed" >&2
        for row in "${all_rows[@]}"; do record "$row" "$sys" failed; done
        rm -rf "$cache"
        return
    fi
    # grep right after the first listing.
    if timeout -k 10 "$limit" find "$mnt/tree" >/dev/null 2>>"$errors"; then
        timed grep "$sys" grep -r needle "$mnt/tree" || true
    else
        record grep "$sys" failed
    fi

    # Cold sequential read (the first), then the same file cached: read whole out of order
    # (a sequential read may stream past a cache), page cache dropped, read again.
    # Cold: the server reads from its disk too (page cache dropped), as for the SDK.
    drop_caches
    field seq_cold "$sys" 3 "$tool" seq "$mnt/seq.bin" || true
    if timeout -k 10 "$limit" "$tool" warm "$mnt/seq.bin" >/dev/null 2>>"$errors"; then
        drop_caches
        field seq_cached "$sys" 3 "$tool" seq "$mnt/seq.bin" || true
    else
        record seq_cached "$sys" failed
    fi

    # 4 KiB random preads on a cached file; cold ones on another.
    field pread_cold "$sys" 2 "$tool" pread-cold "$mnt/random-cold.bin" 256 || true
    if timeout -k 10 "$limit" "$tool" warm "$mnt/random.bin" >/dev/null 2>>"$errors" &&
        out=$(timeout -k 10 "$limit" "$tool" pread "$mnt/random.bin" "$pread_secs" 2>>"$errors"); then
        record pread_direct "$sys" "$(awk '{print $2}' <<<"$out")"
        record pread_direct_p99 "$sys" "$(awk '{print $3}' <<<"$out")"
        field pread_buffered "$sys" 2 "$tool" pread-buffered "$mnt/random.bin" "$pread_secs" || true
    else
        echo "bench: $sys pread failed" >&2
        for row in pread_direct pread_direct_p99 pread_buffered; do record "$row" "$sys" failed; done
    fi

    readers_rows "$sys" "$mnt/par"

    # Untar: until tar exits, and until every file is in the bucket.
    mkdir -p "$mnt/w-$sys-$r/untar" 2>>"$errors" || true
    t0=$EPOCHREALTIME
    if timed untar "$sys" tar -C "$mnt/w-$sys-$r/untar" -xf "$work/untar.tar"; then
        if [[ $sys == s3files ]]; then
            timeout -k 10 "$limit" "$bin" sync "$mnt/w-$sys-$r/untar" >/dev/null 2>>"$errors" || true
        fi
        if "$py" "$helper" wait-objects "w-$sys-$r/untar/" "$untar_files" "$limit" 2>>"$errors"; then
            record untar_flush "$sys" "$(since "$t0")"
        else
            record untar_flush "$sys" failed
        fi
    else
        record untar_flush "$sys" failed
    fi

    git_rows "$sys" "$mnt/w-$sys-$r/clone"

    # Stat storm on the tree's first listing, the second pass timed. Last, so that the
    # tree's first listing (which starts s3files' eager import of its small files) does
    # not load the writes above.
    if timeout -k 10 "$limit" "$tool" stat-tree "$mnt/stat" >/dev/null 2>>"$errors"; then
        sleep 1.5
        field stat "$sys" 2 "$tool" stat-tree "$mnt/stat" || true
    else
        record stat "$sys" failed
    fi

    unmount_sys "$sys" "$mnt"
    rm -rf "$cache"

    # Streaming a huge object once, on its own fresh mount: the daemon's peak RSS.
    cache="$work/cache-$sys-$r-stream"
    if (($(df --output=avail -m "$work" | tail -1) < huge_mib + 2048)) && [[ $sys != s3files ]]; then
        echo "bench: too little disk for $sys to cache ${huge_mib} MiB; stream skipped" >&2
        record stream_rss "$sys" skipped
    elif mount_sys "$sys" "$mnt" "$cache"; then
        if timeout -k 10 "$limit" "$tool" seq "$mnt/$huge_key" >/dev/null 2>>"$errors"; then
            record stream_rss "$sys" "$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$sys_pid/status")"
        else
            record stream_rss "$sys" failed
        fi
        unmount_sys "$sys" "$mnt"
    else
        record stream_rss "$sys" failed
    fi
    rm -rf "$cache"

    # A big flat directory, each command on its own fresh mount: the first plain `ls`
    # (names only), then the first `ls -l` (every object's metadata).
    for row in bigdir_ls bigdir_lsl; do
        cache="$work/cache-$sys-$r-$row"
        if mount_sys "$sys" "$mnt" "$cache"; then
            if [[ $row == bigdir_ls ]]; then
                timed "$row" "$sys" ls "$mnt/big" || true
            else
                timed "$row" "$sys" ls -l "$mnt/big" || true
            fi
            unmount_sys "$sys" "$mnt"
        else
            record "$row" "$sys" failed
        fi
        rm -rf "$cache"
    done
}

# readers_rows SYSTEM DIR: 1 reader on one cached file, then 8 on 8.
readers_rows() {
    local sys=$1 dir=$2 i one eight ok=true
    for i in $(seq 0 7); do
        timeout -k 10 "$limit" "$tool" warm "$dir/f$i" >/dev/null 2>>"$errors" || ok=false
    done
    if $ok && one=$(timeout -k 10 "$limit" "$tool" readers "$pread_secs" "$dir/f0" 2>>"$errors") &&
        eight=$(timeout -k 10 "$limit" "$tool" readers "$pread_secs" "$dir"/f{0..7} 2>>"$errors"); then
        one=$(awk '{print $4}' <<<"$one")
        eight=$(awk '{print $4}' <<<"$eight")
        record readers1 "$sys" "$one"
        record readers8 "$sys" "$eight"
        record readers_ratio "$sys" "$(awk -v a="$eight" -v b="$one" 'BEGIN {printf "%.3f", a / b}')"
    else
        echo "bench: $sys readers failed" >&2
        for i in readers1 readers8 readers_ratio; do record "$i" "$sys" failed; done
    fi
}

# git_rows SYSTEM DIR: clone, first status, grep -rl.
git_rows() {
    local sys=$1 dir=$2
    if timed clone "$sys" git clone -q --no-local "$work/repo.git" "$dir"; then
        timed git_status "$sys" git -C "$dir" status --porcelain || true
        timed grep_rl "$sys" grep -rl needle "$dir" || true
    else
        record git_status "$sys" failed
        record grep_rl "$sys" failed
    fi
}

# local_round ROUND: the same workloads on local disk (the work directory's disk).
local_round() {
    local r=$1 l="$work/local" t0 out
    echo "bench: round $r, local disk..." >&2
    # grep warm: the toughest comparison (the tree is in the page cache).
    grep -r needle "$l/tree" >/dev/null
    timed grep local grep -r needle "$l/tree" || true
    # The cold row's reference: an SDK client, 4 parallel 8 MiB ranged GETs.
    drop_caches
    field seq_cold local 3 "$tool" sdk bench seq.bin 8 4 || true
    drop_caches
    field seq_cached local 3 "$tool" seq "$l/seq.bin" || true
    if out=$(timeout -k 10 "$limit" "$tool" pread "$l/random.bin" "$pread_secs" 2>>"$errors"); then
        record pread_direct local "$(awk '{print $2}' <<<"$out")"
        record pread_direct_p99 local "$(awk '{print $3}' <<<"$out")"
    fi
    field pread_buffered local 2 "$tool" pread-buffered "$l/random.bin" "$pread_secs" || true
    readers_rows local "$l/par"
    "$tool" stat-tree "$l/stat" >/dev/null
    sleep 1.5
    field stat local 2 "$tool" stat-tree "$l/stat" || true
    mkdir -p "$l/w-$r/untar"
    timeout 120 sync || true
    t0=$EPOCHREALTIME
    if timed untar local tar -C "$l/w-$r/untar" -xf "$work/untar.tar"; then
        timeout 120 sync || true
        record untar_flush local "$(since "$t0")"
    fi
    git_rows local "$l/w-$r/clone"
    rm -rf "$l/w-$r"
    # The big directory's references: its listing pages alone, and `ls -l` on local disk.
    field bigdir_ls local 1 "$py" "$helper" list-time big/ || true
    ls -l "$l/big" >/dev/null
    timed bigdir_lsl local ls -l "$l/big" || true
    field bigdir_gets local 2 "$tool" gets bench big/ 64 || true
}

memfs_round() {
    local out
    mkdir -p "$work/memfs"
    "$memfs" "$work/memfs" $((64 << 20)) "$files" 2>>"$errors" &
    sys_pid=$!
    pids+=("$sys_pid")
    if wait_mounted "$work/memfs"; then
        out=$("$tool" pread "$work/memfs/data.bin" "$pread_secs" 2>>"$errors") && record memfs_pread memfs "$(awk '{print $2}' <<<"$out")"
        timed memfs_grep memfs grep -r needle "$work/memfs/tree" || true
        # The untar floor: the same tarball into memfs's writable part (through the mount).
        if mkdir "$work/memfs/untar" 2>>"$errors"; then
            timed memfs_untar memfs tar -C "$work/memfs/untar" -xf "$work/untar.tar" || true
        else
            record memfs_untar memfs failed
        fi
    else
        record memfs_untar memfs failed
    fi
    unmount_sys memfs "$work/memfs"
}

started=$EPOCHREALTIME
for r in $(seq "$rounds"); do
    memfs_round
    for sys in $systems; do
        if [[ $sys == local ]]; then
            local_round "$r"
        else
            fuse_round "$sys" "$r"
        fi
    done
done

# ---- the table ------------------------------------------------------------------------

rows="$work/rows"
cat >"$rows" <<EOF
grep|\`grep -r\` over $files small files right after \`find\` (local: warm)|s|lower|<= 1.5x local
pread_direct|4 KiB random \`pread\` p50, cached, O_DIRECT|us|lower|<= 1.5x local
pread_direct_p99|4 KiB random \`pread\` p99, cached, O_DIRECT|us|lower|
pread_buffered|4 KiB random \`pread\` p50, cached, buffered|us|lower|
pread_cold|4 KiB random \`pread\` p50, cold (first touch of each block)|us|lower|
seq_cached|sequential read, cached ${seq_mib} MiB file, page cache dropped|MiB/s|higher|>= 0.8x local
seq_cold|cold sequential read, ${seq_mib} MiB (ref: SDK, 4 parallel 8 MiB GETs)|MiB/s|higher|>= 0.9x ref
readers1|1 reader on a cached file (128 KiB O_DIRECT)|MiB/s|higher|
readers8|8 parallel readers on 8 cached files, aggregate|MiB/s|higher|
readers_ratio|8 readers / 1 reader|x|higher|s3files >= 1.6x
stat|stat storm: lstat of $stat_files files, second pass|s|lower|<= 2x local
untar|untar $untar_files files, until \`tar\` exits|s|lower|<= 1.2x local
untar_flush|untar $untar_files files, until all in S3 (local: + \`sync\`)|s|lower|
clone|\`git clone\` of $repo_files files|s|lower|<= 2x local
git_status|first \`git status\` of the clone|s|lower|<= 2x local
grep_rl|\`grep -rl\` over the clone|s|lower|<= 2x local
stream_rss|daemon peak RSS, streaming ${huge_mib} MiB once|MiB|lower|s3files < 256 MiB
bigdir_ls|first plain \`ls\` of a fresh $bigdir_files-object directory (ref: its ListObjectsV2 pages alone)|s|lower|<= 1.2x ref
bigdir_lsl|first \`ls -l\` of the same, fresh mount (local: warm)|s|lower|>= 2x ahead of both peers
EOF
elapsed=$(since "$started")
echo
echo "Side by side on one local $( [[ ${S3FILES_BENCH_SERVER:-garage} == moto ]] && echo moto || echo Garage) server, $(nproc) cores; medians of $rounds round(s), (min-max) over rounds; ran $(awk -v s="$elapsed" 'BEGIN {printf "%.0f", s / 60}') min"
echo
S3FILES_BENCH_LIMIT=$limit "$py" "$helper" report "$work" "$rows" "$chart"
echo
# floor ROW [SYSTEM]: the median of SYSTEM's (memfs's) rounds of ROW, empty when none
# succeeded (and no exit under pipefail when grep selects nothing or the row was never
# recorded).
floor() {
    grep -Ev '^(failed|timeout)$' "$res/$1/${2:-memfs}" 2>/dev/null | sort -g |
        awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}' || true
}
floor_pread=$(floor memfs_pread)
floor_grep=$(floor memfs_grep)
floor_untar=$(floor memfs_untar)
floor_gets=$(floor bigdir_gets local)
echo "For reference, examples/memfs.rs (a trivial in-memory FUSE file system, 1 s kernel timeouts, no page cache kept across opens; the old floor): 4 KiB O_DIRECT pread p50 ${floor_pread:-failed} us; grep -r over $files files ${floor_grep:-failed} s; untar of $untar_files files ${floor_untar:-failed} s."
echo "The ls -l floor: one GetObject per object of the $bigdir_files-object directory by a plain SDK client (64 in flight, no file system): ${floor_gets:-failed} s."
if [[ -s $errors ]]; then
    echo "bench: errors of failed workloads (last 20 lines):" >&2
    tail -n 20 "$errors" >&2
fi
