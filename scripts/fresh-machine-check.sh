#!/usr/bin/env bash
# Do the README's "Two commands" work on a fresh machine? Runs them in a minimal Debian 12.
#
#   sudo scripts/fresh-machine-check.sh                 default ports (5432, 6379)
#   sudo scripts/fresh-machine-check.sh --other-ports   REPLICATOR_PG_URL=...:15432, REPLICATOR_REDIS_URL=...:16379
#   options: --keep (keep the run's files), --cold (no download caches), --commands 'make demo; ...'
#
# The machine: `debootstrap --variant=minbase bookworm` plus python3 (3.11) and make - what the
# README asks a user to have. No locale, no Postgres, no Redis, no git (the check clones the
# repository's committed HEAD in from outside; a user may get it any way). The base root is built
# once and cached under $FRESH_CACHE (default /var/cache/olap-replicator/fresh-machine); each run
# gets a fresh copy-on-write copy of it (overlayfs), so nothing leaks from one run to the next.
#
# Isolation: everything runs in new mount, PID and network namespaces (unshare). The network
# namespace has only loopback, so the default ports are free even though this host uses them;
# apt and pip reach the mirrors through scripts/fresh-machine-proxy.py. The environment inside is
# empty but for PATH, HOME, TERM, http(s)_proxy and no_proxy (loopback). When the run ends -
# however it ends, Ctrl-C too (unshare --kill-child) - the kernel kills every process it started
# and drops every mount.
# Downloads (apt's .debs and pip's cache) are cached between runs unless --cold; they only make
# reruns faster. This host's network intercepts TLS: its pip CA bundle ($PIP_CERT, or
# $FRESH_PIP_CERT) is copied in and named by PIP_CERT, as on the host - a property of the
# network, not of the machine under test.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FRESH_CACHE:-/var/cache/olap-replicator/fresh-machine}"
MIRROR="${FRESH_MIRROR:-http://deb.debian.org/debian}"
COMMANDS="make demo; make test; make demo-down"
LABEL=default PORT_ENV=() KEEP=0 COLD=0
while (($#)); do
    case "$1" in
        --other-ports)
            LABEL=other-ports
            PORT_ENV=(REPLICATOR_PG_URL=postgresql+psycopg://postgres@127.0.0.1:15432
                REPLICATOR_REDIS_URL=redis://127.0.0.1:16379)
            ;;
        --keep) KEEP=1 ;;
        --cold) COLD=1 ;;
        --commands) COMMANDS="$2"; shift ;;
        *) sed -n '2,8p' "$0" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[fresh] %s\n' "$*"; }
[[ $EUID -eq 0 ]] || { echo "run as root (debootstrap, chroot, namespaces)" >&2; exit 2; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
mkdir -p "$CACHE"
exec 8>"$CACHE/lock"
flock -n 8 || { echo "another fresh-machine check is running" >&2; exit 1; }

# ---------------------------------------------------------------- the cached base root
if [[ ! -f "$CACHE/base/.complete" ]]; then
    log "building the base root (debootstrap bookworm minbase + python3 make; ~3 min, once)"
    rm -rf "$CACHE/base"
    debootstrap --variant=minbase --include=python3,make bookworm "$CACHE/base" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || { log "debootstrap failed: $CACHE/debootstrap.log"; exit 1; }
    touch "$CACHE/base/.complete"
fi
# What a Debian 12 install has and debootstrap leaves out: updates and security sources, hosts.
cat >"$CACHE/base/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$CACHE/base/etc/hosts"

# ---------------------------------------------------------------- this run
COMMIT="$(git -C "$REPO" rev-parse HEAD)"
RUN="$CACHE/runs/$(date +%Y%m%d-%H%M%S)-$LABEL"
mkdir -p "$RUN"/{upper,work,root} "$CACHE"/{apt-archives,pip-cache}
log "run $RUN: commit ${COMMIT:0:12}, ${PORT_ENV[*]:-default ports}"
[[ -z "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]] ||
    log "note: uncommitted changes in $REPO are not part of the check"

python3 "$REPO/scripts/fresh-machine-proxy.py" serve "$RUN/proxy.sock" 2>"$RUN/proxy.log" &
PROXY_PID=$!
STATUS=1
finish() {
    kill "$PROXY_PID" 2>/dev/null || true
    if ((STATUS == 0 && KEEP == 0)); then rm -rf "$RUN"; else log "kept $RUN (log: $RUN/check.log)"; fi
}
trap finish EXIT

PIP_CERT_SRC="${FRESH_PIP_CERT:-${PIP_CERT:-}}"
if [[ -n "$PIP_CERT_SRC" ]]; then
    cp "$PIP_CERT_SRC" "$RUN/upper/pip-ca.crt"  # appears as /pip-ca.crt inside
    PORT_ENV+=(PIP_CERT=/pip-ca.crt)
fi
export CACHE RUN REPO COMMIT COLD COMMANDS
export PORT_ENV_STR="${PORT_ENV[*]}"
STARTED=$SECONDS
set +e
unshare --mount --pid --net --fork --kill-child --propagation private bash -euo pipefail -c '
    M="$RUN/root"
    ip link set lo up
    python3 "$REPO/scripts/fresh-machine-proxy.py" relay 3128 "$RUN/proxy.sock" 2>>"$RUN/proxy.log" &
    mount -t overlay overlay -o "lowerdir=$CACHE/base,upperdir=$RUN/upper,workdir=$RUN/work" "$M"
    mount -t proc proc "$M/proc"
    mount -t sysfs sysfs "$M/sys"
    mount --rbind /dev "$M/dev"
    mount -t tmpfs -o mode=1777 shm "$M/dev/shm"
    mount -t tmpfs -o mode=755 run "$M/run"
    if [[ $COLD == 0 ]]; then
        mount --bind "$CACHE/apt-archives" "$M/var/cache/apt/archives"
        mkdir -p "$M/root/.cache/pip" && mount --bind "$CACHE/pip-cache" "$M/root/.cache/pip"
    fi
    git clone -q --no-checkout "$REPO" "$M/root/olap-replicator"
    git -C "$M/root/olap-replicator" checkout -q "$COMMIT"
    # shellcheck disable=SC2086
    exec chroot "$M" /usr/bin/env -i HOME=/root TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        http_proxy=http://127.0.0.1:3128 https_proxy=http://127.0.0.1:3128 \
        no_proxy=127.0.0.1,localhost,::1 $PORT_ENV_STR \
        COMMANDS="$COMMANDS" bash -c '\''
        cd /root/olap-replicator
        echo "[fresh] inside: $(. /etc/os-release; echo $PRETTY_NAME), $(python3 -V), locale: LANG=${LANG:-unset}"
        rc=0
        IFS=";" read -ra cmds <<<"$COMMANDS"
        for c in "${cmds[@]}"; do
            s=$SECONDS
            if bash -c "$c"; then r=ok; else r="FAILED"; rc=1; fi
            echo "[fresh] RESULT $c: $r in $((SECONDS - s))s"
        done
        exit $rc'\''
' 2>&1 | tee "$RUN/check.log"
STATUS=${PIPESTATUS[0]}
set -e

log "summary ($LABEL ports, commit ${COMMIT:0:12}, $((SECONDS - STARTED))s in all):"
grep -E '^\[fresh\] RESULT|^\[services\] (postgres|redis):|(passed|failed|error).* in [0-9.]+s' "$RUN/check.log" | sed 's/^/    /' || true
if ((STATUS == 0)); then log "PASS"; else log "FAIL (exit $STATUS)"; fi
exit "$STATUS"
