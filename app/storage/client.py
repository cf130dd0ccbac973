"""One interface per kind of storage; a backend's storage root is reached through it.

Paths are relative to the root and always use ``/``. Layout of a root:

    data/<tablet id>/<rowset id>/<file>      installed rowset files
    staging/<txn id>/<rowset id>.<file>      files being received by a replication apply
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from app.errors import StorageUnavailable


class StorageClient(Protocol):
    root: str

    def open_read(self, path: str) -> BinaryIO: ...
    def open_write(self, path: str) -> BinaryIO: ...
    def local_path(self, path: str) -> str | None: ...
    def size(self, path: str) -> int | None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def delete_tree(self, path: str) -> None: ...
    def list_dirs(self, path: str) -> list[str]: ...
    def walk_files(self, path: str) -> Iterator[tuple[str, float]]: ...
    def check(self) -> None: ...


class LocalStorage:
    """A storage root that is a directory on this host (or a mounted file system)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _abs(self, path: str) -> Path:
        return Path(self.root, path)

    def check(self) -> None:
        if not os.path.isdir(self.root):
            raise StorageUnavailable(f"storage root {self.root} is not a reachable directory")

    def open_read(self, path: str) -> BinaryIO:
        try:
            return open(self._abs(path), "rb")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {path} under {self.root}: {exc}") from exc

    def open_write(self, path: str) -> BinaryIO:
        target = self._abs(path)
        # Directories usually exist: try first, create them on demand.
        try:
            return open(target, "wb")
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            return open(target, "wb")

    def local_path(self, path: str) -> str | None:
        return str(self._abs(path))

    def size(self, path: str) -> int | None:
        try:
            return self._abs(path).stat().st_size
        except FileNotFoundError:
            return None

    def rename(self, src: str, dst: str) -> None:
        target = self._abs(dst)
        try:
            os.replace(self._abs(src), target)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._abs(src), target)

    def delete_tree(self, path: str) -> None:
        target = self._abs(path)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink(missing_ok=True)

    def list_dirs(self, path: str) -> list[str]:
        target = self._abs(path)
        if not target.is_dir():
            return []
        return sorted(p.name for p in target.iterdir() if p.is_dir())

    def walk_files(self, path: str) -> Iterator[tuple[str, float]]:
        base = self._abs(path)
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = Path(dirpath, name)
                try:
                    mtime = full.stat().st_mtime
                except FileNotFoundError:
                    continue
                yield str(full.relative_to(self.root)), mtime


def storage_for(root: str) -> StorageClient:
    """The client for a backend's storage root. Only local directories exist so far."""
    return LocalStorage(root)


def rowset_dir(tablet_id: int, rowset_id: str) -> str:
    return f"data/{tablet_id}/{rowset_id}"


def staging_dir(txn_id: int) -> str:
    return f"staging/{txn_id}"
