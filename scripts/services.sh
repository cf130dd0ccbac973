#!/usr/bin/env bash
# The Postgres and Redis olap-replicator needs (README: "Ports and services").
#
#   scripts/services.sh install  the programs `make test` needs (Debian packages, apt-get):
#                                postgresql, redis-server, rsync, curl, procps. The tests start
#                                throw-away servers of their own from these binaries.
#   scripts/services.sh up       install, then make sure a Postgres answers at REPLICATOR_PG_URL
#                                and a Redis at REPLICATOR_REDIS_URL (for `make demo`, `make bench`)
#   scripts/services.sh status   what answers (exit 0 only if both do)
#
# One setting per service:
#   REPLICATOR_PG_URL     postgresql+psycopg://USER@HOST:PORT  (default postgresql+psycopg://postgres@127.0.0.1:5432)
#   REPLICATOR_REDIS_URL  redis://HOST:PORT[/DB]               (default redis://127.0.0.1:6379)
#
# A server already answering is reused as it is and never restarted. Otherwise, for a local
# address only: Postgres - start the Debian cluster configured for that port, or move the cluster
# a fresh apt install just made to it, or create one (UTF-8 whatever the locale, trust auth on
# loopback); Redis - start redis-server on that port. No systemd needed (pg_ctlcluster, daemonize).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_URL="${REPLICATOR_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432}"
REDIS_URL="${REPLICATOR_REDIS_URL:-redis://127.0.0.1:6379}"
PACKAGES=(postgresql redis-server rsync curl procps)
MARKER=.olap-replicator-managed # in /etc/postgresql/VER/NAME of clusters this script made
export LANG=C.UTF-8 LC_ALL=C.UTF-8 # apt's own cluster and ours come up UTF-8 on any machine

log() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo -n "$@"; fi; }

# scheme://[user[:password]@]host[:port][/path]  ->  URL_USER URL_HOST URL_PORT URL_PATH
parse_url() { # parse_url <url> <default port>
    [[ "$1" =~ ^[a-z+]+://(([^:@/]*)(:[^@/]*)?@)?([^:/]+)(:([0-9]+))?(/.*)?$ ]] ||
        die "cannot parse '$1' (want scheme://[user@]host:port)"
    URL_USER="${BASH_REMATCH[2]}" URL_HOST="${BASH_REMATCH[4]}"
    URL_PORT="${BASH_REMATCH[6]:-$2}" URL_PATH="${BASH_REMATCH[7]}"
}
parse_url "$PG_URL" 5432
PG_USER="${URL_USER:-postgres}" PG_HOST="$URL_HOST" PG_PORT="$URL_PORT"
[[ -z "$URL_PATH" || "$URL_PATH" == / ]] ||
    die "REPLICATOR_PG_URL names no database (each cluster is its own): drop '$URL_PATH'"
parse_url "$REDIS_URL" 6379
REDIS_HOST="$URL_HOST" REDIS_PORT="$URL_PORT"

is_local() { [[ "$1" == 127.0.0.1 || "$1" == localhost || "$1" == ::1 ]]; }

wait_for() { # wait_for <seconds> <command...>
    local i
    for ((i = 0; i < $1 * 4; i++)); do "${@:2}" && return 0; sleep 0.25; done
    return 1
}

# -------------------------------------------------------------------------- packages

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    have apt-get || die "install ${missing[*]} (no apt-get here)"
    log "installing ${missing[*]} (apt-get)"
    as_root apt-get -o DPkg::Lock::Timeout=300 update -qq </dev/null || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" \
        </dev/null >/dev/null || die "apt-get install ${missing[*]} failed"
    JUST_INSTALLED=" ${missing[*]} "
}
JUST_INSTALLED=""

# -------------------------------------------------------------------------- postgres

pg_answers() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1; }
pg_sql() { PGCONNECT_TIMEOUT=5 psql -X -w -Atq -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c "$1" </dev/null 2>/dev/null; }
clusters() { pg_lsclusters -h 2>/dev/null; } # ver name port status owner datadir log

pg_check() { # logs in without a password; catalogs are created from template1: must be UTF-8
    pg_sql 'select 1' >/dev/null ||
        die "Postgres at $PG_HOST:$PG_PORT does not let '$PG_USER' in without a password (trust auth on loopback is needed)"
    local enc
    enc="$(pg_sql "select pg_encoding_to_char(encoding) from pg_database where datname = 'template1'")"
    [[ "$enc" == UTF8 ]] || die "Postgres at $PG_HOST:$PG_PORT has template1 in $enc, not UTF8 (a cluster made without a locale).
  Make a UTF-8 one: pg_dropcluster --stop VER NAME; pg_createcluster --locale C.UTF-8 --encoding UTF8 --port $PG_PORT VER NAME"
}

pg_trust() { # trust on loopback, only for clusters this script made
    local conf="/etc/postgresql/$1/$2"
    grep -q '^# olap-replicator' "$conf/pg_hba.conf" && return 0
    as_root sed -i '1i # olap-replicator: password-less loopback access (scripts/services.sh)\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
}

pg_up() {
    if pg_answers; then log "postgres: reusing $PG_HOST:$PG_PORT"; pg_check; return; fi
    is_local "$PG_HOST" || die "no Postgres answers at $PG_HOST:$PG_PORT (not this machine: nothing started)"
    local ver name port status
    read -r ver name port status _ < <(clusters | awk -v p="$PG_PORT" '$3 == p' | head -n1) || true
    if [[ -z "${ver:-}" && "$JUST_INSTALLED" == *" postgresql "* ]]; then
        # apt just made cluster VER/main on a port of its choosing: move it to ours.
        read -r ver name port status _ < <(clusters | head -n1) || true
    fi
    if [[ -n "${ver:-}" && "$port" != "$PG_PORT" ]]; then
        log "postgres: moving the new cluster $ver/$name from port $port to $PG_PORT"
        [[ "$status" == online* ]] && as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" stop
        as_root pg_conftool "$ver" "$name" set port "$PG_PORT"
        status=down
    elif [[ -z "${ver:-}" ]]; then
        ver="$(ls /usr/lib/postgresql | sort -V | tail -n1)" name="replicator_$PG_PORT"
        log "postgres: creating cluster $ver/$name on port $PG_PORT (UTF-8)"
        as_root pg_createcluster --locale C.UTF-8 --encoding UTF8 --port "$PG_PORT" "$ver" "$name" >/dev/null
        as_root touch "/etc/postgresql/$ver/$name/$MARKER"
        status=down
    fi
    [[ "$JUST_INSTALLED" == *" postgresql "* ]] && as_root touch "/etc/postgresql/$ver/$name/$MARKER"
    [[ -f "/etc/postgresql/$ver/$name/$MARKER" ]] && pg_trust "$ver" "$name"
    if [[ "$status" == online* ]]; then
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload
    else
        log "postgres: starting cluster $ver/$name (port $PG_PORT)"
        as_root install -d -m 2775 -o postgres -g postgres /run/postgresql
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
            die "could not start $ver/$name; see /var/log/postgresql/postgresql-$ver-$name.log"
    fi
    wait_for 60 pg_answers || die "cluster $ver/$name does not answer at $PG_HOST:$PG_PORT"
    pg_check
    log "postgres: up at $PG_HOST:$PG_PORT (cluster $ver/$name)"
}

# -------------------------------------------------------------------------- redis

redis_answers() { [[ "$(timeout 5 redis-cli --no-auth-warning -u "$REDIS_URL" ping 2>/dev/null </dev/null)" == PONG ]]; }

redis_up() {
    if redis_answers; then log "redis: reusing $REDIS_HOST:$REDIS_PORT"; return; fi
    is_local "$REDIS_HOST" || die "no Redis answers at $REDIS_HOST:$REDIS_PORT (not this machine: nothing started)"
    local dir=/var/lib/redis logdir=/var/log/redis
    [[ $EUID -eq 0 ]] || dir="$ROOT/var/redis" logdir="$ROOT/var/redis"
    mkdir -p "$dir" "$logdir"
    log "redis: starting redis-server on port $REDIS_PORT (log $logdir/replicator-$REDIS_PORT.log)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$dir" --logfile "$logdir/replicator-$REDIS_PORT.log" </dev/null ||
        die "redis-server did not start"
    wait_for 30 redis_answers || die "redis-server does not answer on $REDIS_PORT; see $logdir/replicator-$REDIS_PORT.log"
    log "redis: up at $REDIS_HOST:$REDIS_PORT"
}

# -------------------------------------------------------------------------- commands

case "${1:-}" in
    install) install_packages ;;
    up)
        install_packages
        pg_up
        redis_up
        ;;
    status)
        rc=0
        if have pg_isready && pg_answers; then log "postgres: answers at $PG_HOST:$PG_PORT"; else log "postgres: NOT at $PG_HOST:$PG_PORT"; rc=1; fi
        if have redis-cli && redis_answers; then log "redis: answers at $REDIS_HOST:$REDIS_PORT"; else log "redis: NOT at $REDIS_HOST:$REDIS_PORT"; rc=1; fi
        exit "$rc"
        ;;
    *) echo "usage: $0 {install|up|status}" >&2; exit 2 ;;
esac
