#!/usr/bin/env bash
# Starts a one-node Garage S3 server on 127.0.0.1 for benchmarks (its ranged GETs cost
# the same whatever the object size, unlike moto's). Builds Garage once if missing
# (`cargo install garage`, about 15 minutes on 2 cores).
#
#   eval "$(scripts/garage.sh start DIR)"   # prints exports: endpoint, keys, bucket, pid
#   scripts/garage.sh stop DIR
#
# Garage has no versioning and ignores conditional writes, so correctness tests stay on
# moto; this is for throughput and memory measurements only.
set -euo pipefail

cmd=${1:?usage: garage.sh start|stop DIR}
dir=${2:?usage: garage.sh start|stop DIR}

find_garage() {
    if command -v garage >/dev/null 2>&1; then
        command -v garage
    elif [[ -x /opt/garage/bin/garage ]]; then
        echo /opt/garage/bin/garage
    else
        echo "garage.sh: building Garage (cargo install garage --locked)..." >&2
        cargo install garage --locked --root /opt/garage --quiet >&2
        echo /opt/garage/bin/garage
    fi
}

case "$cmd" in
start)
    garage=$(find_garage)
    mkdir -p "$dir/meta" "$dir/data"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    rpc_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
api_bind_addr = "127.0.0.1:$port"
s3_region = "us-east-1"
EOF
    key="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    GARAGE_DEFAULT_ACCESS_KEY=$key GARAGE_DEFAULT_SECRET_KEY=$secret GARAGE_DEFAULT_BUCKET=bench \
        nohup "$garage" -c "$dir/garage.toml" server --single-node --default-bucket \
        >"$dir/garage.log" 2>&1 &
    echo $! >"$dir/garage.pid"
    for _ in $(seq 200); do
        (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
        sleep 0.1
    done
    # The default bucket is created just after the API port opens.
    sleep 1
    echo "export GARAGE_ENDPOINT=http://127.0.0.1:$port GARAGE_BUCKET=bench"
    echo "export AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1"
    echo "export AWS_EC2_METADATA_DISABLED=true"
    ;;
stop)
    if [[ -f "$dir/garage.pid" ]]; then
        kill "$(cat "$dir/garage.pid")" 2>/dev/null || true
        rm -f "$dir/garage.pid"
    fi
    ;;
*)
    echo "usage: garage.sh start|stop DIR" >&2
    exit 2
    ;;
esac
