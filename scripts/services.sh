#!/usr/bin/env bash
# Ensure the local Postgres and Redis that olap-replicator needs are reachable.
#
#   scripts/services.sh up      reuse what is reachable, else start / install it
#   scripts/services.sh status  report what is reachable (exit 0 only if all is)
#
# Targets (override with env):
#   REPLICATOR_PG_HOST   (default 127.0.0.1)
#   REPLICATOR_PG_PORT   (default 5432)
#   REPLICATOR_PG_USER   (default $PGUSER or postgres; only used for the auth check)
#   REPLICATOR_REDIS_URL (default redis://127.0.0.1:6379/0)
#
# Services that are already reachable are never stopped or restarted. Starting
# or installing only happens for targets on this machine (127.0.0.1/localhost/::1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PG_HOST="${REPLICATOR_PG_HOST:-127.0.0.1}"
PG_PORT="${REPLICATOR_PG_PORT:-5432}"
PG_USER="${REPLICATOR_PG_USER:-${PGUSER:-postgres}}"
REDIS_URL="${REPLICATOR_REDIS_URL:-redis://127.0.0.1:6379/0}"

# Marker dropped into the config dir of a Postgres cluster this script installed
# or created; only such clusters get their pg_hba.conf adjusted.
PG_MARKER=".olap-replicator-managed"
HBA_TAG="# olap-replicator: password-less local access (added by scripts/services.sh)"

WAIT_SECS="${REPLICATOR_SERVICES_WAIT:-60}"

log() { printf '[services] %s\n' "$*"; }
err() { printf '[services] ERROR: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# Run a command with a timeout if `timeout` exists.
with_timeout() {
    local secs="$1"
    shift
    if have timeout; then timeout "$secs" "$@"; else "$@"; fi
}

# Pick a Python interpreter for fallback socket checks (may be empty).
PYBIN=""
for cand in python3 "$ROOT/.venv/bin/python" python; do
    if have "$cand" || [[ -x "$cand" ]]; then PYBIN="$cand"; break; fi
done

# ----------------------------------------------------------------- parsing

REDIS_SCHEME="" REDIS_HOST="" REDIS_PORT="" REDIS_PASS="" REDIS_USER="" REDIS_SOCK=""
parse_redis_url() {
    local url="$1" rest auth hostport
    REDIS_SCHEME="${url%%://*}"
    if [[ "$REDIS_SCHEME" == "$url" ]]; then
        err "REPLICATOR_REDIS_URL must look like redis://host:port/db (got '$url')"
        exit 2
    fi
    rest="${url#*://}"
    case "$REDIS_SCHEME" in
        unix)
            REDIS_SOCK="${rest%%\?*}"
            return 0
            ;;
        redis | rediss) ;;
        *)
            err "unsupported Redis URL scheme '$REDIS_SCHEME' in '$url'"
            exit 2
            ;;
    esac
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    if [[ "$rest" == *@* ]]; then
        auth="${rest%@*}"
        hostport="${rest##*@}"
        if [[ "$auth" == *:* ]]; then
            REDIS_USER="${auth%%:*}"
            REDIS_PASS="${auth#*:}"
        else
            REDIS_PASS="$auth"
        fi
    else
        hostport="$rest"
    fi
    if [[ "$hostport" =~ ^\[([^]]+)\](:([0-9]+))?$ ]]; then # [::1]:6379
        REDIS_HOST="${BASH_REMATCH[1]}"
        REDIS_PORT="${BASH_REMATCH[3]:-6379}"
    elif [[ "$hostport" =~ ^([^:]*)(:([0-9]+))?$ ]]; then
        REDIS_HOST="${BASH_REMATCH[1]:-127.0.0.1}"
        REDIS_PORT="${BASH_REMATCH[3]:-6379}"
    else
        err "cannot parse host/port from REPLICATOR_REDIS_URL '$url'"
        exit 2
    fi
}

is_local_host() {
    case "$1" in
        127.0.0.1 | localhost | ::1 | "" | /*) return 0 ;; # /path = unix socket dir
        *) return 1 ;;
    esac
}

# ----------------------------------------------------------------- checks

# Plain TCP connect check (python if available, else bash /dev/tcp).
tcp_open() {
    local host="$1" port="$2"
    if [[ -n "$PYBIN" ]]; then
        "$PYBIN" - "$host" "$port" <<'PY' 2>/dev/null
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
except OSError:
    sys.exit(1)
PY
    else
        with_timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
    fi
}

pg_reachable() {
    if have pg_isready; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

# Can we actually log in without a password? (best effort; needs psql)
pg_login_ok() {
    have psql || return 0
    PGCONNECT_TIMEOUT=5 with_timeout 10 psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" \
        -d postgres -Atqc 'select 1' </dev/null >/dev/null 2>&1
}

redis_reachable() {
    local out=""
    if [[ "$REDIS_SCHEME" == unix ]]; then
        [[ -S "$REDIS_SOCK" ]] || return 1
        if have redis-cli; then
            out="$(with_timeout 5 redis-cli -s "$REDIS_SOCK" ping 2>/dev/null </dev/null || true)"
            [[ "$out" == PONG ]]
            return
        fi
        return 0
    fi
    if have redis-cli && [[ "$REDIS_SCHEME" == redis ]]; then
        out="$(with_timeout 5 redis-cli --no-auth-warning -u "$REDIS_URL" ping 2>/dev/null </dev/null || true)"
        [[ "$out" == PONG ]]
        return
    fi
    if [[ -z "$PYBIN" ]]; then
        tcp_open "$REDIS_HOST" "$REDIS_PORT"
        return
    fi
    # Raw RESP PING (optionally AUTH first); TLS (rediss) degrades to a TCP check.
    "$PYBIN" - "$REDIS_HOST" "$REDIS_PORT" "$REDIS_USER" "$REDIS_PASS" "$REDIS_SCHEME" <<'PY' 2>/dev/null
import socket, sys
host, port, user, pw, scheme = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
try:
    s = socket.create_connection((host, port), timeout=3)
    if scheme == "rediss":
        sys.exit(0)
    f = s.makefile("rb")
    def cmd(*args):
        s.sendall(b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))
        return f.readline()
    if pw:
        cmd(*(["AUTH", user, pw] if user else ["AUTH", pw]))
    sys.exit(0 if cmd("PING").startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

redis_desc() {
    if [[ "$REDIS_SCHEME" == unix ]]; then echo "unix:$REDIS_SOCK"; else echo "$REDIS_HOST:$REDIS_PORT"; fi
}

wait_for() { # wait_for <secs> <check-fn>
    local secs="$1" fn="$2" i
    for ((i = 0; i < secs * 2; i++)); do
        "$fn" && return 0
        sleep 0.5
    done
    return 1
}

# ----------------------------------------------------------------- privileges / apt

# fd 9 holds the services lock; it is closed for every child so that daemons
# we start (postgres, redis, apt postinst services) do not keep it held.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@" 9>&-
    elif have sudo && sudo -n true 2>/dev/null; then
        sudo -n "$@" 9>&-
    else
        err "need root (or password-less sudo) to run: $*"
        return 1
    fi
}

APT_UPDATED=0
apt_install() { # apt_install pkg...
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    if ! have apt-get; then
        err "need packages ${missing[*]} but apt-get is not available; install them manually"
        return 1
    fi
    log "installing: ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ((APT_UPDATED == 0)); then
        as_root apt-get -o DPkg::Lock::Timeout=300 update -qq </dev/null || {
            err "apt-get update failed"
            return 1
        }
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "${missing[@]}" </dev/null || {
        err "apt-get install ${missing[*]} failed"
        return 1
    }
}

# ----------------------------------------------------------------- postgres

pg_installed() {
    have pg_ctlcluster && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Prints "ver name status" of the cluster configured for $PG_PORT (if any).
pg_cluster_for_port() {
    have pg_lsclusters || return 0
    pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2, $4; exit }'
}

pg_any_cluster() {
    have pg_lsclusters && [[ -n "$(pg_lsclusters -h 2>/dev/null)" ]]
}

# Make 127.0.0.1/::1/unix-socket access password-less, but only on a cluster
# that carries our marker (i.e. that this script installed or created).
pg_fix_auth() {
    local ver="$1" name="$2" conf="/etc/postgresql/$1/$2"
    [[ -f "$conf/$PG_MARKER" ]] || return 0
    if ! grep -qxF "$HBA_TAG" "$conf/pg_hba.conf"; then
        log "postgres: enabling trust auth for local connections on cluster $ver/$name"
        as_root bash -c "
            tmp=\$(mktemp) &&
            { printf '%s\n' '$HBA_TAG' \
                'local   all  all                 trust' \
                'host    all  all  127.0.0.1/32   trust' \
                'host    all  all  ::1/128        trust'
              cat '$conf/pg_hba.conf'; } > \"\$tmp\" &&
            cat \"\$tmp\" > '$conf/pg_hba.conf' && rm -f \"\$tmp\""
        if [[ "$(pg_cluster_for_port | awk '{print $3}')" == online ]]; then
            as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload || true
        fi
    fi
}

pg_start_cluster() {
    local ver="$1" name="$2"
    log "postgres: starting cluster $ver/$name (port $PG_PORT)"
    as_root install -d -m 2775 -o postgres -g postgres /var/run/postgresql 2>/dev/null || true
    if ! as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start; then
        err "pg_ctlcluster $ver $name start failed; see /var/log/postgresql/postgresql-$ver-$name.log"
        return 1
    fi
}

pg_up() {
    if pg_reachable; then
        log "postgres: reusing $PG_HOST:$PG_PORT"
        if ! pg_login_ok; then
            # A cluster we installed earlier (e.g. an interrupted run) still needs its pg_hba fix.
            local c=""
            is_local_host "$PG_HOST" && c="$(pg_cluster_for_port)"
            if [[ -n "$c" && -f "/etc/postgresql/$(awk '{print $1 "/" $2}' <<<"$c")/$PG_MARKER" ]]; then
                pg_fix_auth $(awk '{print $1, $2}' <<<"$c")
                sleep 1
            fi
            pg_login_ok || log "postgres: WARNING: reachable, but password-less login as '$PG_USER' failed"
        fi
        return 0
    fi
    if ! is_local_host "$PG_HOST"; then
        err "postgres not reachable at $PG_HOST:$PG_PORT (remote host; not starting anything)"
        return 1
    fi
    log "postgres: not reachable at $PG_HOST:$PG_PORT"

    if ! pg_installed; then
        apt_install postgresql || return 1
        # The package normally creates and starts cluster <ver>/main; mark it as ours.
        local c
        c="$(pg_cluster_for_port)"
        if [[ -n "$c" ]]; then
            as_root touch "/etc/postgresql/${c%% *}/$(awk '{print $2}' <<<"$c")/$PG_MARKER"
        fi
    fi

    local cluster ver name status
    cluster="$(pg_cluster_for_port)"
    if [[ -z "$cluster" ]]; then
        if pg_any_cluster; then
            err "no Postgres cluster is configured for port $PG_PORT:"
            pg_lsclusters >&2 || true
            err "set REPLICATOR_PG_PORT to one of the ports above, or create a cluster on $PG_PORT"
            return 1
        fi
        ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)"
        if [[ -z "$ver" ]] || ! have pg_createcluster; then
            err "postgres binaries found but no cluster and no pg_createcluster; cannot continue"
            return 1
        fi
        log "postgres: creating cluster $ver/main on port $PG_PORT"
        as_root pg_createcluster --port "$PG_PORT" "$ver" main >/dev/null || {
            err "pg_createcluster failed"
            return 1
        }
        as_root touch "/etc/postgresql/$ver/main/$PG_MARKER"
        cluster="$(pg_cluster_for_port)"
    fi
    read -r ver name status <<<"$cluster"

    pg_fix_auth "$ver" "$name"
    if [[ "$status" != online* ]]; then
        pg_start_cluster "$ver" "$name" || return 1
    fi
    if ! wait_for "$WAIT_SECS" pg_reachable; then
        err "postgres cluster $ver/$name did not become reachable at $PG_HOST:$PG_PORT within ${WAIT_SECS}s"
        err "check listen_addresses in /etc/postgresql/$ver/$name/postgresql.conf and /var/log/postgresql/"
        return 1
    fi
    if ! pg_login_ok; then
        if [[ -f "/etc/postgresql/$ver/$name/$PG_MARKER" ]]; then
            err "postgres is up but password-less login as '$PG_USER' still fails"
            return 1
        fi
        log "postgres: WARNING: up, but password-less login as '$PG_USER' failed (not our cluster; pg_hba untouched)"
    fi
    log "postgres: up at $PG_HOST:$PG_PORT (cluster $ver/$name)"
}

# ----------------------------------------------------------------- redis

redis_start() {
    local dir logfile bind_args=(--bind 127.0.0.1 -::1)
    if [[ $EUID -eq 0 ]]; then
        dir=/var/lib/redis
        logfile=/var/log/redis/ci.log
        [[ "$REDIS_PORT" == 6379 ]] || logfile="/var/log/redis/ci-$REDIS_PORT.log"
    else
        dir="$ROOT/var/redis"
        logfile="$dir/redis-$REDIS_PORT.log"
    fi
    mkdir -p "$dir" "$(dirname "$logfile")"
    [[ "$REDIS_HOST" == ::1 ]] && bind_args=(--bind ::1 -127.0.0.1)
    local auth_args=()
    [[ -n "$REDIS_PASS" && -z "$REDIS_USER" ]] && auth_args=(--requirepass "$REDIS_PASS")
    log "redis: starting redis-server on port $REDIS_PORT (log: $logfile)"
    if ! redis-server --daemonize yes "${bind_args[@]}" --port "$REDIS_PORT" --save "" \
        --appendonly no --dir "$dir" --logfile "$logfile" "${auth_args[@]}" </dev/null 9>&-; then
        err "redis-server failed to start; see $logfile"
        return 1
    fi
    if ! wait_for "$WAIT_SECS" redis_reachable; then
        err "redis did not answer PING on $(redis_desc) within ${WAIT_SECS}s; tail of $logfile:"
        tail -n 20 "$logfile" >&2 2>/dev/null || true
        return 1
    fi
}

redis_up() {
    if redis_reachable; then
        log "redis: reusing $(redis_desc)"
        return 0
    fi
    if [[ "$REDIS_SCHEME" != redis ]] || ! is_local_host "$REDIS_HOST"; then
        err "redis not reachable at $(redis_desc) (not a local redis:// target; not starting anything)"
        return 1
    fi
    if [[ -n "$REDIS_USER" ]]; then
        err "redis not reachable at $(redis_desc); URL has an ACL user, refusing to start an ad-hoc server"
        return 1
    fi
    log "redis: not reachable at $(redis_desc)"
    if tcp_open "$REDIS_HOST" "$REDIS_PORT"; then
        err "port $REDIS_PORT is open but does not answer Redis PING (wrong password or another service?)"
        return 1
    fi
    if ! have redis-server; then
        apt_install redis-server || return 1
        # The Debian package may have started its own service already.
        if wait_for 3 redis_reachable; then
            log "redis: up at $(redis_desc) (Debian service)"
            return 0
        fi
    fi
    redis_start || return 1
    log "redis: up at $(redis_desc)"
}

# ----------------------------------------------------------------- rsync

rsync_up() {
    if have rsync; then
        return 0
    fi
    apt_install rsync || return 1
    have rsync || { err "rsync still missing after install"; return 1; }
    log "rsync: installed"
}

# ----------------------------------------------------------------- commands

cmd_status() {
    local rc=0
    if pg_reachable; then
        if pg_login_ok; then
            log "postgres: reachable at $PG_HOST:$PG_PORT"
        else
            log "postgres: reachable at $PG_HOST:$PG_PORT (but password-less login as '$PG_USER' failed)"
        fi
    else
        log "postgres: NOT reachable at $PG_HOST:$PG_PORT"
        rc=1
    fi
    if redis_reachable; then
        log "redis: reachable at $(redis_desc)"
    else
        log "redis: NOT reachable at $(redis_desc)"
        rc=1
    fi
    if have rsync; then log "rsync: $(command -v rsync)"; else
        log "rsync: NOT installed"
        rc=1
    fi
    return "$rc"
}

cmd_up() {
    # Serialise concurrent `up` runs (e.g. make -j) so we never double-install/start.
    if have flock; then
        exec 9>"${TMPDIR:-/tmp}/olap-replicator-services.lock"
        flock -w 900 9 || log "WARNING: could not take services lock; continuing"
    fi
    local rc=0
    pg_up || rc=1
    redis_up || rc=1
    rsync_up || rc=1
    if ((rc)); then
        err "services are not ready (see messages above)"
        return 1
    fi
    log "all services ready"
}

usage() {
    echo "usage: $0 {up|status}" >&2
    exit 2
}

parse_redis_url "$REDIS_URL"
case "${1:-}" in
    up) cmd_up ;;
    status) cmd_status ;;
    *) usage ;;
esac
