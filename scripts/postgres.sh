#!/usr/bin/env bash
# PostgreSQL for tests: the machine's own server binaries (Debian's postgresql package),
# a throw-away cluster in a temp directory on a free loopback port, trust auth for user kura.
#
#   source scripts/postgres.sh
#   pg_start DIR      # sets KURA_TEST_PG=postgres://kura@127.0.0.1:PORT/kura_test
#   pg_stop

pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$d" ]; then
        echo "installing postgresql" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
        d=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    echo "$d"
}

# initdb refuses to run as root: run the server as the postgres user then.
pg_as() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

pg_start() {
    PG_DIR=$1
    local bin port
    bin=$(pg_bindir)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$PG_DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR"
    pg_as "$bin/initdb" -D "$PG_DIR/data" -U kura --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 ||
        { cat "$PG_DIR/initdb.log" >&2; return 1; }
    # fsync off: a test cluster is thrown away; kura's own durability is tested elsewhere.
    pg_as "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
        start >/dev/null || { tail -20 "$PG_DIR/server.log" >&2; return 1; }
    PG_BIN=$bin
    pg_as "$bin/createdb" -h 127.0.0.1 -p "$port" -U kura kura_test
    KURA_TEST_PG="postgres://kura@127.0.0.1:$port/kura_test"
    export KURA_TEST_PG PG_DIR PG_BIN
}

pg_stop() {
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
        pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    fi
}
