#!/usr/bin/env bash
# Starts and stops a throwaway PostgreSQL server for queuectl's tests and benchmarks.
#
#   .ci/postgres.sh start DIR   initdb into DIR/data, listen on 127.0.0.1 on a free port with
#                               the unix socket in DIR, print the server's URL on stdout
#   .ci/postgres.sh stop DIR    stop that server and remove DIR
#
# The server refuses to run as root: as root, it runs as the `postgres` system user (created if
# missing). Where the server binaries are missing and we are root, Debian's `postgresql` package
# is installed. Authentication is `trust` for the local connections only: this server holds
# nothing but test data and lives as long as one test run.
#
# QUEUECTL_PG_DURABLE=1 keeps PostgreSQL's durable defaults (fsync and synchronous_commit on),
# as the benchmarks want; otherwise fsync is off, which the tests (behaviour, not crash
# durability of the server's own files) do not need and which would only slow them down.
set -euo pipefail

die() {
    echo "postgres.sh: $*" >&2
    exit 1
}

find_bin() {
    local d
    for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return 0
        fi
    done
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    return 1
}

ensure_bin() {
    if find_bin >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "postgres.sh: installing Debian's postgresql package" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 ||
            die "could not install postgresql"
    fi
    find_bin >/dev/null || die "no PostgreSQL server binaries found (install Debian's postgresql)"
}

# Runs a command as the server's user.
as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    local dir=$1
    ensure_bin
    local bin
    bin=$(find_bin)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        if ! id postgres >/dev/null 2>&1; then
            useradd --system --no-create-home --shell /usr/sbin/nologin postgres ||
                die "could not create the postgres system user"
        fi
        chown postgres: "$dir"
    fi
    as_server_user "$bin/initdb" -D "$dir/data" -U postgres --auth=trust \
        --no-instructions -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
        die "initdb failed: $(tail -5 "$dir/initdb.log")"
    local fsync=off
    if [ "${QUEUECTL_PG_DURABLE:-}" = 1 ]; then
        fsync=on
    fi
    local try port
    for try in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 40000))
        if port_in_use "$port"; then
            continue
        fi
        if as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
                -c max_connections=300 -c fsync=$fsync" \
            start >/dev/null 2>&1; then
            echo "postgres://postgres@127.0.0.1:$port/postgres"
            return 0
        fi
        if ! grep -q "could not bind\|Address already in use" "$dir/server.log" 2>/dev/null; then
            die "the server did not start: $(tail -5 "$dir/server.log" 2>/dev/null)"
        fi
    done
    die "found no free port for the server"
}

stop() {
    local dir=$1
    [ -d "$dir" ] || return 0
    if [ -f "$dir/data/postmaster.pid" ]; then
        local bin
        bin=$(find_bin) || true
        if [ -n "$bin" ]; then
            as_server_user "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
                as_server_user "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 ||
                true
        fi
    fi
    rm -rf "$dir"
}

case "${1:-}" in
start) [ -n "${2:-}" ] || die "usage: $0 start DIR"; start "$2" ;;
stop) [ -n "${2:-}" ] || die "usage: $0 stop DIR"; stop "$2" ;;
*) die "usage: $0 start DIR | stop DIR" ;;
esac
