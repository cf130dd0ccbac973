#!/bin/sh
# The image's entry point: export every secret file whose name is a setting, then run the
# command. Compose mounts secrets as files under /run/secrets; a secret given the target
# REPLICATOR_CLUSTER_PROD_TRANSFER_SECRET or FLOWER_BASIC_AUTH becomes that environment variable
# (app/config.py and Flower read variables, not files). Certificates stay files, referenced by
# path (REPLICATOR_TRANSFER_*_FILE). Kubernetes sets `command:`, which replaces this entry point:
# there the variables come from Secrets through `env[].valueFrom.secretKeyRef`.
set -eu
dir="${SECRETS_DIR:-/run/secrets}"
for f in "$dir"/REPLICATOR_* "$dir"/FLOWER_*; do
    [ -f "$f" ] || continue
    name="${f##*/}"
    case "$name" in
        *[!A-Z0-9_]*) echo "secrets-env: ignoring $f (not a variable name)" >&2; continue ;;
    esac
    value="$(cat "$f")"  # drops trailing newlines, as `echo secret > file` adds one
    export "$name=$value"
done
exec "$@"
