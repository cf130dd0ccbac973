"""Whose storage root is this? Checked before a root is registered, and by GC and apply.

Two clusters whose backends were given the same or nested directories would delete each
other's live files in garbage collection. So a root is refused at ``backend add`` when another
backend's root (of any cluster these settings reach) is the same, inside it or around it, or when
it carries another backend's marker; and GC and apply work only in roots whose marker is their
own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import sqlalchemy as sa

from app.catalog import schema as s
from app.catalog.engine import discover_clusters, scan_engine
from app.config import Settings
from app.errors import AlreadyExists, InvalidRequest, ReplicatorError
from app.storage.client import storage_for
from app.storage.marker import MARKER, owner_of
from app.storage.objects import ObjectRoot, is_object_root

log = logging.getLogger(__name__)


def normalize(root: str) -> str:
    """The root as the catalog records it: an absolute directory, or an ``s3://`` root with
    its endpoint spelled out (app/storage/objects.py). InvalidRequest for a malformed one."""
    if not root:
        raise InvalidRequest(
            "storage root must not be empty: give a directory or s3://BUCKET/PREFIX"
        )
    return ObjectRoot.parse(root).canonical() if is_object_root(root) else os.path.abspath(root)


# A backend of a restore's source catalog reads a backup repository (app/backup/view.py); its
# root is the repository's URL behind this prefix, and overlaps what the repository overlaps.
VIEW_PREFIX = "repo+"


def _overlap(a: str, b: str) -> bool:
    a, b = a.removeprefix(VIEW_PREFIX), b.removeprefix(VIEW_PREFIX)
    if is_object_root(a) or is_object_root(b):
        return (
            is_object_root(a)
            and is_object_root(b)
            and ObjectRoot.parse(a).overlaps(ObjectRoot.parse(b))
        )
    a, b = os.path.realpath(a), os.path.realpath(b)
    return (
        a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)
    )


def _known_roots(settings: Settings, cluster: str) -> Iterator[tuple[str, str, str]]:
    """(cluster, backend, root) of every backend of every cluster these settings reach."""
    try:
        names = discover_clusters(settings.dsn_template, list(settings.clusters))
    except sa.exc.SQLAlchemyError as exc:
        log.warning("cannot list the other clusters to check for overlapping roots: %s", exc)
        names = []
    for name in sorted({*names, cluster}):
        try:
            with scan_engine(settings.dsn(name)).connect() as conn:
                rows = conn.execute(sa.select(s.backends.c.name, s.backends.c.storage_root)).all()
        except (sa.exc.SQLAlchemyError, InvalidRequest):
            continue  # not a catalog (yet), or not reachable: nothing registered there to hit
        for backend, root in rows:
            yield name, backend, root


def make_root(root: str) -> None:
    """Create the storage root directory (and its parents) if missing; for object storage,
    check that the bucket answers (buckets are made by whoever owns the store, not here)."""
    if is_object_root(root):
        try:
            storage_for(root).check()
        except ReplicatorError as exc:
            raise InvalidRequest(
                f"{exc}; create the bucket, or check the endpoint and the AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY this process has"
            ) from None
        return
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(
            f"storage root {root} cannot be made: {exc.strerror}; give a directory this user "
            "may create"
        ) from None


def check_new_root(settings: Settings, cluster: str, backend: str, root: str) -> None:
    """Refuse ``root`` for ``cluster``/``backend`` unless it is a directory (or can be one)
    that no other backend owns or overlaps."""
    if not is_object_root(root) and os.path.exists(root) and not os.path.isdir(root):
        raise InvalidRequest(f"storage root {root} is a file, not a directory: give a directory")
    owner = owner_of(root)
    if owner is not None and owner != (cluster, backend):
        raise AlreadyExists(
            f"storage root {root} belongs to backend {owner[0]}:{owner[1]} (its {MARKER} says "
            "so); give this backend a directory of its own"
        )
    for other_cluster, other_backend, other_root in _known_roots(settings, cluster):
        if (other_cluster, other_backend) == (cluster, backend):
            continue
        if _overlap(root, other_root):
            raise InvalidRequest(
                f"storage root {root} overlaps {other_root}, the root of backend "
                f"{other_cluster}:{other_backend}; roots of different backends must be neither "
                "the same nor inside one another"
            )


def check_repository(settings: Settings, cluster: str, repo: str) -> None:
    """Refuse a backup repository that overlaps a backend's storage root: GC there would take
    its objects for orphans, and a backup would read its own repository as table data."""
    for other_cluster, other_backend, other_root in _known_roots(settings, cluster):
        if not other_root.startswith(VIEW_PREFIX) and _overlap(repo, other_root):
            raise InvalidRequest(
                f"repository {repo} overlaps {other_root}, the storage root of backend "
                f"{other_cluster}:{other_backend}; give the repository a place of its own"
            )
    make_root(repo)
