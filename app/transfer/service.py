"""A transfer server as a host runs it: the backends of this host, from the local catalog.

The storage roots it serves come from its own cluster's catalog (never from a request); the
token secret is its cluster's; a token is honoured only while the job that holds the files still
holds them (``CatalogRevocations``), so when a job commits, aborts or is cancelled and its holds
are released, its tokens stop working within ``REVOCATION_CACHE_SEC``.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Sequence

import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.cluster import Cluster
from app.config import Settings
from app.errors import InvalidRequest, NotFound, SetupError
from app.storage.objects import is_object_root
from app.transfer import tls
from app.transfer.server import BackendRoot
from app.transfer.tokens import Grant

REVOCATION_CACHE_SEC = 1.0
KEY_ID = "k1"  # tokens name the key that signed them, so a secret can be rotated later


class CatalogRevocations:
    """A grant is live while its job holds files in this (the source) cluster's catalog."""

    def __init__(self, cluster: Cluster, cache_sec: float = REVOCATION_CACHE_SEC) -> None:
        self.cluster = cluster
        self.cache_sec = cache_sec
        self._seen: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def __call__(self, grant: Grant) -> bool:
        now = time.monotonic()
        with self._lock:
            hit = self._seen.get(grant.hold_owner)
        if hit is not None and now - hit[0] < self.cache_sec:
            return hit[1]
        with self.cluster.engine.connect() as conn:
            live = bool(
                conn.execute(
                    sa.select(
                        sa.exists().where(
                            s.holds.c.owner == grant.hold_owner,
                            s.holds.c.expires_at > sa.func.now(),
                        )
                    )
                ).scalar_one()
            )
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[grant.hold_owner] = (now, live)
        return live


def backend_roots(cluster: Cluster, backends: Sequence[str]) -> dict[str, BackendRoot]:
    """The named backends of ``cluster`` (all of them when none are named), as served."""
    with cluster.engine.connect() as conn:
        known = {b.name: b for b in model.list_backends(conn).values() if b.state == "ACTIVE"}
    # A root in object storage is read from the store by whoever replicates it: no transfer
    # server stands in front of it (app/replication/sources.py, ObjectSource).
    served = {n for n, b in known.items() if not is_object_root(b.storage_root)}
    if known and not served and not backends:
        raise InvalidRequest(
            f"every backend of cluster {cluster.name!r} keeps its files in object storage, "
            "which other clusters read directly: it needs no transfer server"
        )
    wanted = list(backends) or sorted(served)
    missing = [b for b in wanted if b not in known]
    if missing:
        raise NotFound(
            f"backend(s) {', '.join(missing)} do not exist in cluster {cluster.name!r} "
            f"(see `replicator backend list {cluster.name}`)"
        )
    in_store = [b for b in wanted if b not in served]
    if in_store:
        raise InvalidRequest(
            f"backend(s) {', '.join(in_store)} of cluster {cluster.name!r} keep their files in "
            "object storage, which other clusters read directly: serve only the others"
        )
    from pathlib import Path

    return {n: BackendRoot(cluster.name, n, Path(known[n].storage_root)) for n in wanted}


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the server from the settings; None only in ``transfer_mode = http``."""
    if settings.transfer_mode == "http":
        return None
    if not (settings.transfer_cert_file and settings.transfer_key_file):
        raise SetupError(
            "the transfer server needs a certificate: set REPLICATOR_TRANSFER_CERT_FILE and "
            "REPLICATOR_TRANSFER_KEY_FILE (`replicator transfer dev-certs` makes a development "
            "set), or transfer_mode = http for an insecure test set-up"
        )
    return tls.server_context(
        settings.transfer_cert_file,
        settings.transfer_key_file,
        settings.transfer_client_ca_file or None,
    )


def serve(
    settings: Settings, cluster_name: str, backends: Sequence[str], host: str, port: int
) -> None:
    """Serve the backends' files until SIGTERM/SIGINT."""
    from app.transfer import server

    cluster = Cluster(settings, cluster_name)
    cluster.ensure_ready()
    roots = backend_roots(cluster, backends)
    secrets = {KEY_ID: settings.transfer_secret(cluster_name)}
    server.run(
        host,
        port,
        server_context(settings),
        roots,
        secrets,
        CatalogRevocations(cluster),
        settings.transfer_serving_cap_mb_per_sec,
    )
