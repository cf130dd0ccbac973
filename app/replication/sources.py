"""Where an apply task reads a source replica's files from.

By default (``transfer_mode = https``) every byte crosses the network: the file is downloaded
from the transfer server of the source backend that holds it, with the snapshot's token, over
TLS (``http`` is the same without TLS, only when asked for). ``shared`` reads the source's storage
root directly, for roots that every host really mounts. A source root in object storage is read
from the store itself (or copied inside it, when the target's root is in the same store). Either
way the source's addresses and roots come from the source cluster's catalog, never from a
manifest, and every name that came from the source is validated before it is used. A
restore's source is a backup repository (``RepositorySource``).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app import broker, faults
from app.backup.repo import VIEW_PREFIX, Repository, object_key
from app.catalog import model
from app.cluster import Cluster
from app.config import Settings
from app.errors import ChecksumMismatch, SetupError
from app.storage.checksum import FileMeta, copy_verified
from app.storage.client import StorageClient, rowset_dir, storage_for
from app.storage.objects import ObjectStorage, is_object_root
from app.transfer import names, tls
from app.transfer.budget import Budget
from app.transfer.client import Downloader

Progress = Callable[[int], object]


class Source(Protocol):
    """One source replica of a tablet's files."""

    backend_id: int
    name: str

    def fetch(
        self, tablet: int, rowset: str, meta: FileMeta, target: StorageClient, staged: str,
        on_progress: Progress,
    ) -> int:  # fmt: skip
        """Write the file into ``staged`` on ``target``, verified (size and xxh3 in the same
        pass); return the bytes that crossed. FileNotFoundError or SourceDataGone: this replica
        lacks it; ChecksumMismatch: bad bytes; StorageUnavailable: unreachable now."""


@dataclass
class SharedRoot:
    """A source replica whose storage root this host mounts (``transfer_mode = shared``)."""

    backend_id: int
    name: str
    storage: StorageClient

    def path(self, tablet: int, rowset: str, meta: FileMeta) -> str:
        """Where the file is under this replica's root."""
        return f"{rowset_dir(tablet, rowset)}/{meta.name}"

    def fetch(
        self, tablet: int, rowset: str, meta: FileMeta, target: StorageClient, staged: str,
        on_progress: Progress,
    ) -> int:  # fmt: skip
        path = self.path(tablet, rowset, meta)
        with self.storage.open_read(path) as raw, target.open_write(staged) as out:
            fin = _Corrupting(raw, meta.size // 2) if faults.fire("transfer.corrupt") else raw
            return copy_verified(fin, out, meta, on_progress=on_progress)  # type: ignore[arg-type]


@dataclass
class ObjectSource(SharedRoot):
    """A source replica whose root is object storage: read from the store itself, whatever
    the transfer mode (the store is a network service with its own credentials and TLS, and
    no transfer server stands in front of it). When the target's root is in the same store
    (one endpoint, one bucket), the object is copied inside the store and no byte passes
    through this worker; the copy is then checked by its size, as the store reports it (the
    store copied its own bytes, which a read here to re-hash them would move after all)."""

    def fetch(
        self, tablet: int, rowset: str, meta: FileMeta, target: StorageClient, staged: str,
        on_progress: Progress,
    ) -> int:  # fmt: skip
        src = self.storage
        if not (
            isinstance(src, ObjectStorage)
            and isinstance(target, ObjectStorage)
            and target.where.same_store(src.where)
        ):
            return super().fetch(tablet, rowset, meta, target, staged, on_progress)
        size = target.copy_from(src, self.path(tablet, rowset, meta), staged)
        if size != meta.size:
            raise ChecksumMismatch(
                f"file {meta.name}: the store copied {size} bytes, the manifest says {meta.size}"
            )
        on_progress(0)
        return 0


@dataclass
class RepositorySource(ObjectSource):
    """A restore's source: a backup repository, whose objects are named by their content
    (app/backup/repo.py). Read from the repository itself, or copied inside the store when
    the target's root is in the same one; a repository that is a directory must be mounted
    where the target's workers run."""

    def path(self, tablet: int, rowset: str, meta: FileMeta) -> str:
        return object_key(meta)


@dataclass
class Download:
    """A source replica reached through its backend's transfer server."""

    backend_id: int
    name: str
    url: str
    token: str
    downloader: Downloader

    def fetch(
        self, tablet: int, rowset: str, meta: FileMeta, target: StorageClient, staged: str,
        on_progress: Progress,
    ) -> int:  # fmt: skip
        path = target.local_path(staged)
        if path is None:  # object storage: through a file of this host's, then uploaded
            return self._fetch_spooled(tablet, rowset, meta, target, staged, on_progress)
        if target.size(staged) is None:
            with target.open_write(staged):
                pass  # creates the staging directory; the download fills the file
        # else: a partial file of an earlier attempt or replica, which the download continues
        result = self.downloader.fetch_to(
            self.url, self.name, tablet, rowset, meta, self.token, path, on_progress,
            corrupt=faults.fire("transfer.corrupt"),
        )  # fmt: skip
        return result.transferred

    def _fetch_spooled(
        self, tablet: int, rowset: str, meta: FileMeta, target: StorageClient, staged: str,
        on_progress: Progress,
    ) -> int:  # fmt: skip
        """Download into a temporary file of this host (verified there, continued with Range
        if cut off), then upload it to ``staged`` (hashed again on the way). One file at a
        time per worker process: the spool holds at most one file."""
        with tempfile.TemporaryDirectory(prefix="olap-spool-") as spool:
            local = os.path.join(spool, "file")
            result = self.downloader.fetch_to(
                self.url, self.name, tablet, rowset, meta, self.token, local, on_progress,
                corrupt=faults.fire("transfer.corrupt"),
            )  # fmt: skip
            with open(local, "rb") as fin, target.open_write(staged) as out:
                copy_verified(fin, out, meta)
        return result.transferred


def sources_for(
    settings: Settings, src_cluster: str, backend_ids: list[int], token: str | None
) -> list[Source]:
    """The task's source replicas, in the order to try, as this host reaches them."""
    cluster = Cluster(settings, src_cluster)
    backends = _backends(cluster)
    if any(int(b) not in backends for b in backend_ids):  # added since they were read: again
        backends = _backends(cluster, fresh=True)
    out: list[Source] = []
    for b in backend_ids:
        backend = backends.get(int(b))
        if backend is None:
            continue  # decommissioned and removed since the snapshot
        if backend.storage_root.startswith(VIEW_PREFIX):
            repo = Repository(backend.storage_root.removeprefix(VIEW_PREFIX))
            out.append(RepositorySource(backend.id, backend.name, repo.storage))
            continue
        if is_object_root(backend.storage_root):
            out.append(ObjectSource(backend.id, backend.name, ObjectStorage(backend.storage_root)))
            continue
        if settings.transfer_mode == "shared":
            out.append(SharedRoot(backend.id, backend.name, storage_for(backend.storage_root)))
            continue
        if not backend.transfer_url:
            raise SetupError(
                f"source backend {src_cluster}:{backend.name} has no transfer address: register "
                f"it with `replicator backend add {src_cluster} {backend.name} --storage ... "
                "--transfer-url https://HOST:PORT`"
            )
        if token is None:
            raise SetupError(f"job's snapshot of {src_cluster} carries no transfer token")
        out.append(Download(backend.id, backend.name, backend.transfer_url, token,
                            downloader(settings)))  # fmt: skip
    return out


# The source cluster's backends, read once per BACKENDS_TTL_SEC in a process rather than once
# per file: an apply of 10,000 small tablets made 10,000 catalog queries for the same rows
# (bench small, cProfile). A backend added or decommissioned meanwhile is seen that much later;
# a replica that is gone fails over as an unreachable one does.
BACKENDS_TTL_SEC = 5.0
_backends_seen: dict[str, tuple[float, dict[int, model.Backend]]] = {}


def _backends(cluster: Cluster, fresh: bool = False) -> dict[int, model.Backend]:
    seen = _backends_seen.get(cluster.dsn)
    if not fresh and seen is not None and time.monotonic() - seen[0] < BACKENDS_TTL_SEC:
        return seen[1]
    with cluster.engine.connect() as conn:
        backends = model.list_backends(conn)
    _backends_seen[cluster.dsn] = (time.monotonic(), backends)
    return backends


@functools.cache
def _downloader(ca: str, cert: str, key: str, insecure: bool) -> Downloader:
    ctx = None if insecure else tls.client_context(ca, cert or None, key or None)
    return Downloader(ctx)


def downloader(settings: Settings) -> Downloader:
    """One per worker process and TLS setting: its connections stay open between tasks."""
    if settings.transfer_mode == "https" and not settings.transfer_ca_file:
        raise SetupError(
            "transfer_ca_file is not set: point REPLICATOR_TRANSFER_CA_FILE at the CA bundle "
            "that signs the source clusters' transfer servers (or set transfer_mode = http "
            "for an insecure test set-up)"
        )
    return _downloader(
        settings.transfer_ca_file,
        settings.transfer_client_cert_file,
        settings.transfer_client_key_file,
        settings.transfer_mode == "http",
    )


def link_budget(settings: Settings, src_cluster: str, dst_cluster: str) -> Budget:
    """The (source -> target) link's bandwidth budget, shared through the broker's Redis."""
    return Budget(
        broker.shared_client(settings),
        (src_cluster, dst_cluster),
        settings.transfer_bandwidth_mb_per_sec,
    )


class _Corrupting:
    """A reader that flips the byte at offset ``at`` (the middle of the file, inside a data page,
    not its magic header, so only the checksum can tell): the ``transfer.corrupt`` failpoint."""

    def __init__(self, raw: object, at: int) -> None:
        self.raw, self.at, self.pos = raw, at, 0

    def readinto(self, view: memoryview) -> int:
        n = int(self.raw.readinto(view))  # type: ignore[attr-defined]
        if self.pos <= self.at < self.pos + n:
            view[self.at - self.pos] ^= 0xFF
        self.pos += n
        return n


def check_names(tablet: object, rowset: object, meta: FileMeta) -> None:
    """Everything in a manifest came from the source cluster: validate it before use."""
    names.tablet_id(tablet)
    names.rowset_id(rowset)
    names.file_name(meta.name)
