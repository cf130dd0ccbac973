"""A backup repository: a storage root (a directory, or an ``s3://`` prefix) that holds
content-addressed objects and one manifest per backup.

Layout::

    objects/<xxh3-64>-<size>          a rowset file, named by its content: uploaded once, shared
                                      by every backup (and every table) that has those bytes
    backups/<name>/manifest.json      a backup: written last, so a backup that did not finish
                                      (a worker killed, the store restarted) is never listed

The repository is reached through the same storage interface as a backend's root
(app/storage/client.py), so a directory and object storage behave alike. Everything read back
from a repository is untrusted: app/backup/manifest.py checks a manifest before it is used, and
every object is verified against its name's size and checksum as it is read.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from app.errors import ChecksumMismatch, CorruptBackup, InvalidRequest, StorageUnavailable
from app.storage import roots
from app.storage.checksum import FileMeta, copy_verified
from app.storage.client import StorageClient, storage_for
from app.storage.objects import ObjectStorage, is_object_root
from app.storage.roots import VIEW_PREFIX as VIEW_PREFIX

OBJECTS = "objects"
BACKUPS = "backups"
MANIFEST = "manifest.json"
_OBJECT = re.compile(r"([0-9a-f]{16})-(0|[1-9][0-9]{0,15})")
BACKUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def object_key(meta: FileMeta) -> str:
    return f"{OBJECTS}/{meta.checksum}-{meta.size}"


def parse_object_name(name: str) -> tuple[str, int] | None:
    """(checksum, size) of an object's file name; None for anything else (a partial upload)."""
    m = _OBJECT.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else None


def check_backup_name(name: object) -> str:
    if not isinstance(name, str) or not BACKUP_NAME.fullmatch(name):
        raise InvalidRequest(
            f"backup name {name!r} is not valid: use 1-128 of [A-Za-z0-9_.-], starting with a "
            "letter or digit (`replicator backup list --repo URL` shows the names)"
        )
    return name


class Repository:
    """One repository, by its URL as the catalog and the manifests record it."""

    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or not url.strip():
            raise InvalidRequest(
                "repository must not be empty: give a directory or s3://BUCKET/PREFIX"
            )
        self.url = roots.normalize(url.strip())
        self.storage: StorageClient = storage_for(self.url)

    @property
    def in_object_storage(self) -> bool:
        return is_object_root(self.url)

    def check(self) -> None:
        """StorageUnavailable unless the repository's root answers now."""
        self.storage.check()

    def _readable(self) -> None:
        """A directory that is not there holds no backups: a mistyped path, said as such (an
        object store that does not answer may come back: StorageUnavailable, from the read)."""
        if not self.in_object_storage and not os.path.isdir(self.url):
            raise InvalidRequest(
                f"repository {self.url} is not a directory: give the directory (or "
                "s3://BUCKET/PREFIX) the backups were made into"
            )

    # -- objects -----------------------------------------------------------------------------
    def has(self, meta: FileMeta) -> bool:
        """Whether the object for ``meta`` is there, at its size (its bytes are checked by
        ``backup verify`` and by every read, not here: one HEAD per file)."""
        return self.storage.size(object_key(meta)) == meta.size

    def missing(self, metas: list[FileMeta]) -> list[FileMeta]:
        """Those of ``metas`` whose object is not there at its size: one HEAD each, 16 at a
        time (a store answers in milliseconds; one after another they made most of a
        one-partition restore's snapshot phase, 80 files: 0.4 s)."""
        if len(metas) <= 1:
            return [m for m in metas if not self.has(m)]
        with ThreadPoolExecutor(min(16, len(metas)), thread_name_prefix="head") as pool:
            present = list(pool.map(self.has, metas))
        return [m for m, ok in zip(metas, present, strict=True) if not ok]

    def put(
        self, src: StorageClient, path: str, meta: FileMeta, on_progress: Callable[[int], object]
    ) -> int:
        """Upload ``path`` of ``src`` as the object for ``meta``, verified in the same pass;
        return the bytes that passed through this process (0 for a copy inside one store).
        Published only whole and verified: an object store publishes a writer on a clean
        close, a directory gets a private temporary file renamed into place."""
        key = object_key(meta)
        if (
            isinstance(src, ObjectStorage)
            and isinstance(self.storage, ObjectStorage)
            and self.storage.where.same_store(src.where)
        ):
            size = self.storage.copy_from(src, path, key)
            if size != meta.size:
                self.storage.delete_tree(key)
                raise ChecksumMismatch(
                    f"file {meta.name}: the store copied {size} bytes, expected {meta.size}"
                )
            return 0
        if self.in_object_storage:
            with src.open_read(path) as fin, self.storage.open_write(key) as out:
                return copy_verified(fin, out, meta, on_progress=on_progress)
        tmp = f"{key}.{uuid.uuid4().hex}.part"  # two uploads of one object never share a file
        try:
            with src.open_read(path) as fin, self.storage.open_write(tmp) as out:
                copied = copy_verified(fin, out, meta, on_progress=on_progress)
            self.storage.rename(tmp, key)
        except BaseException:
            with contextlib.suppress(OSError, StorageUnavailable):
                self.storage.delete_tree(tmp)  # else prune removes what is left of it later
            raise
        return copied

    def objects(self) -> Iterator[tuple[str, float]]:
        """(file name under objects/, mtime) of every file there, partial uploads included."""
        for path, mtime in self.storage.walk_files(OBJECTS):
            yield path.rsplit("/", 1)[-1], mtime

    def delete_object(self, name: str) -> None:
        self.storage.delete_tree(f"{OBJECTS}/{name}")

    # -- manifests ---------------------------------------------------------------------------
    def write_manifest(self, name: str, text: str) -> None:
        """Publish a backup's manifest (the last thing a backup writes). Rewriting it with the
        same text is harmless: a commit retried after a crash does exactly that."""
        path = f"{BACKUPS}/{check_backup_name(name)}/{MANIFEST}"
        data = text.encode()
        if self.in_object_storage:
            with self.storage.open_write(path) as out:
                out.write(data)
            return
        tmp = f"{BACKUPS}/{name}/.{MANIFEST}.{uuid.uuid4().hex}"
        with self.storage.open_write(tmp) as out:
            out.write(data)
        self.storage.rename(tmp, path)

    def read_manifest_text(self, name: str) -> str | None:
        """The manifest's text; None if no finished backup has that name."""
        path = f"{BACKUPS}/{check_backup_name(name)}/{MANIFEST}"
        self._readable()
        size = self.storage.size(path)
        if size is None:
            return None
        if size > 1 << 30:
            raise CorruptBackup(f"backup {name}: its manifest is {size} bytes, more than 1 GiB")
        with self.storage.open_read(path) as f:
            raw: bytes = f.read()
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise CorruptBackup(f"backup {name}: its manifest is not UTF-8 text") from None

    def names(self) -> list[str]:
        """Names of the finished backups (those whose manifest is written), sorted."""
        self._readable()
        return [
            n
            for n in self.storage.list_dirs(BACKUPS)
            if BACKUP_NAME.fullmatch(n) and self.storage.size(f"{BACKUPS}/{n}/{MANIFEST}")
        ]

    def delete_manifest(self, name: str) -> None:
        self.storage.delete_tree(f"{BACKUPS}/{check_backup_name(name)}")
