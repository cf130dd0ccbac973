"""The marker in a backend's storage root: which cluster and backend the root belongs to.

``backend add`` writes it; the transfer server (and, as they learn to, GC and apply) refuse to
work in a root whose marker is not their own, so two clusters whose roots were set to the same
or nested directories cannot serve or delete each other's files.
"""

from __future__ import annotations

import json
import os

from app.errors import ReplicatorError, SetupError, StorageUnavailable
from app.storage.client import storage_for
from app.transfer import names

MARKER = ".olap-replicator-root"


def _read(root: str | os.PathLike[str]) -> object:
    with storage_for(os.fspath(root)).open_read(MARKER) as f:
        return json.loads(f.read())


def write_marker(root: str | os.PathLike[str], cluster: str, backend: str) -> str:
    """Mark ``root`` as the storage root of ``cluster``/``backend`` (a directory's file, or an
    object at the prefix of an object-storage root); returns the root."""
    body = {"cluster": names.cluster_name(cluster), "backend": names.backend_name(backend)}
    with storage_for(os.fspath(root)).open_write(MARKER) as f:
        f.write((json.dumps(body, sort_keys=True) + "\n").encode())
    return os.fspath(root)


def check_marker(root: str | os.PathLike[str], cluster: str, backend: str) -> None:
    """SetupError unless ``root`` carries a marker naming exactly ``cluster``/``backend``;
    StorageUnavailable (retryable) when the root cannot be reached now: a store restarting or a
    disk being remounted is no reason to fail a job for good."""
    try:
        body = _read(root)
    except FileNotFoundError:
        raise SetupError(f"storage root {root} has no {MARKER} marker") from None
    except StorageUnavailable:
        raise
    except (OSError, ValueError, ReplicatorError) as exc:
        raise SetupError(f"storage root {root}: unreadable {MARKER} ({exc})") from None
    if not isinstance(body, dict) or body != {"cluster": cluster, "backend": backend}:
        raise SetupError(
            f"storage root {root} is marked {names.show(body)}, not "
            f"{{'cluster': {cluster!r}, 'backend': {backend!r}}}"
        )


def owner_of(root: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(cluster, backend) that ``root``'s marker names, or None if it has no readable one."""
    try:
        body = _read(root)
    except (OSError, ValueError, ReplicatorError):
        return None
    if isinstance(body, dict) and isinstance(body.get("cluster"), str):
        return str(body["cluster"]), str(body.get("backend"))
    return None
