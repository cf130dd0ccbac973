"""One interface per kind of storage; a backend's storage root is reached through it.

Paths are relative to the root and always use ``/``. Layout of a root:

    data/<tablet id>/<rowset id>/<file>      installed rowset files
    staging/<txn id>/<rowset id>.<file>      files being received by a replication apply
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NoReturn, Protocol

from app.errors import InvalidRequest, ReplicatorError, StorageFull, StorageUnavailable
from app.units import MB


class StorageClient(Protocol):
    """A backend's storage root: a directory on this host (LocalStorage, below) or a prefix of
    an S3 bucket (ObjectStorage, app/storage/objects.py).

    Rules every implementation keeps, in every method:

    * A path is relative to the root, ``/``-separated, without a leading ``/``, ``.`` or ``..``
      parts. A "directory" is a prefix that ends at a ``/``: ``data/1`` holds what is stored
      under ``data/1/``, never ``data/10/...``.
      Implementations that have real directories create them on demand and may leave them
      behind empty; callers never rely on an empty directory existing or not.
    * Something missing is an answer, not a failure: each method below says what it returns
      or raises when nothing is stored at its path. "Missing" includes a path whose parent is
      a file (it cannot hold anything either) and, where a file is expected, a directory.
    * A root that cannot be reached (unmounted or removed, not a directory, permission
      denied, an endpoint that does not answer) raises StorageUnavailable, a RetryableError:
      never FileNotFoundError, so that a root that is away is never taken for data that is
      gone, and never a bare OSError. Any other failure of the storage itself (I/O error,
      disk full, permission denied on one file) raises StorageUnavailable too.
    * Nothing is cached between calls: every answer is read from the storage at call time.
    """

    root: str
    """Where the storage is, as the catalog records it (today an absolute directory)."""

    def check(self) -> None:
        """Raise StorageUnavailable unless the root can be reached now. Changes nothing.

        Callers that must tell "root away" from "file missing" ahead of other calls use it;
        the other methods raise StorageUnavailable by themselves anyway."""

    def open_read(self, path: str) -> BinaryIO:
        """A reader of the whole file at ``path``, from its first byte; the caller closes it.

        Missing: raises FileNotFoundError. Root unreachable or the file unreadable: raises
        StorageUnavailable. Errors while reading from the returned stream may be plain
        OSError (``app.errors.retryable`` counts them as transient)."""

    def open_write(self, path: str) -> BinaryIO:
        """A writer that creates ``path``, or empties it if it exists; the caller closes it.

        Parent directories are created as needed. Not atomic: until the writer is closed the
        file may be partial (an object store publishes it on close), so callers write to a
        temporary name and ``rename`` it into place. Closing does not promise durability
        (no fsync). Repeating a write of the same bytes gives the same file. Root unreachable
        or the file not writable: raises StorageUnavailable, at the latest when the writer is
        closed (an object store learns it then); other errors while writing may be plain
        OSError. A writer left by an exception (``with`` block) publishes nothing on an
        object store; a directory keeps what was written."""

    def local_path(self, path: str) -> str | None:
        """The name of ``path`` on this host's file system, for tools that need a file name
        (memory-mapping, external programs), or None when the storage has none (object
        storage): callers must then fall back to ``open_read``/``open_write``.

        Pure: no I/O, no check that anything exists there, never raises."""

    def size(self, path: str) -> int | None:
        """The size in bytes of the file at ``path``; None if no file is there (a directory
        or prefix is not a file). Root unreachable: raises StorageUnavailable."""

    def rename(self, src: str, dst: str) -> None:
        """Move the file at ``src`` to ``dst`` on the same root (files only, not directories).

        Parent directories of ``dst`` are created as needed. An existing ``dst`` is replaced
        atomically: a reader of ``dst`` sees the old file or the new one, never a mix or
        nothing. ``src`` missing: raises FileNotFoundError (so a repeated rename fails once
        the first one succeeded; callers that retry check ``dst`` first). Root unreachable:
        raises StorageUnavailable."""

    def delete_tree(self, path: str) -> None:
        """Delete the file at ``path`` or, if it is a directory (prefix), everything under it.

        Missing: nothing happens, so it is idempotent and safe to repeat after a crash.
        Not atomic: a failure part way leaves some files, which a later call removes.
        Root unreachable, or something that could not be removed: raises StorageUnavailable
        (callers cleaning up after another error decide whether to suppress it)."""

    def list_dirs(self, path: str) -> list[str]:
        """Names (not paths) of the directories (prefixes) directly under ``path``, sorted.

        Files directly under ``path`` are not listed. Missing, or not a directory: ``[]``
        (an object store cannot tell an empty prefix from a missing one). Root unreachable:
        raises StorageUnavailable."""

    def walk_files(self, path: str) -> Iterator[tuple[str, float]]:
        """``(path, mtime)`` of every file under ``path`` at any depth, in no given order;
        the path is relative to the root (ready for the other methods), mtime is in Unix
        seconds (an object's last-modified time).

        Lazy: errors surface while iterating. Missing: yields nothing. A file that vanishes
        during the walk is skipped by a directory walk; an object store lists a page (1,000
        keys) at a time and may yield a key deleted after its page was listed. Root
        unreachable: raises StorageUnavailable."""


class LocalStorage:
    """A storage root that is a directory on this host (or a mounted file system)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._real_root: str | None = None  # resolved when a symlink below it is followed

    def _abs(self, path: str) -> str:
        """The absolute path of ``path``, refused (InvalidRequest) unless it is a clean
        relative path that, with symlinks resolved, lies inside the root: names reach here
        from other clusters' manifests, so this is checked before every open, rename and
        delete, whatever the caller already checked."""
        parts = path.split("/")
        if not path or "\x00" in path or any(part in ("", ".", "..") for part in parts):
            raise InvalidRequest(
                f"storage path {path[:80]!r} is not a clean relative path under {self.root}"
            )
        # The root itself is the operator's: only what lies below it is looked at. A clean
        # relative path leaves the root only through a symlink below it; looking at its few
        # components is enough when none is one. realpath (an lstat of every component from
        # "/", twice) took a tenth of an apply's CPU, and resolving the root once per client
        # (clients are made per task and per tablet) as much again: cProfile of bench small.
        # A str, not a Path: building Paths took a quarter of a small-tablet apply's CPU.
        joined = f"{self.root.rstrip(os.sep)}{os.sep}{path}"
        if _no_links_below(self.root.rstrip(os.sep), parts):
            return joined
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        real_root = self._real_root
        resolved = os.path.realpath(joined)
        if not resolved.startswith(real_root.rstrip(os.sep) + os.sep):
            raise InvalidRequest(f"storage path {path[:80]!r} leaves the root {self.root}")
        return resolved

    def _missing(self, exc: OSError) -> bool:
        """Whether ``exc`` means "no file at that path" in a reachable root: nothing there, a
        parent that is a file, or a directory where a file was asked for (a prefix, to an
        object store). A root that is not there fails every path the same way: that is an
        unreachable root, not a missing file."""
        missing = FileNotFoundError | NotADirectoryError | IsADirectoryError
        return isinstance(exc, missing) and os.path.isdir(self.root)

    def _unavailable(self, doing: str, path: str, exc: OSError) -> ReplicatorError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return full(self.root, f"cannot {doing} {path}")
        return StorageUnavailable(f"cannot {doing} {path} under {self.root}: {exc}")

    def _not_found(self, doing: str, path: str, exc: OSError) -> NoReturn:
        """Raise FileNotFoundError if ``exc`` means the file is missing, else
        StorageUnavailable."""
        if not self._missing(exc):
            raise self._unavailable(doing, path, exc) from exc
        if isinstance(exc, FileNotFoundError):
            raise exc
        raise FileNotFoundError(errno.ENOENT, f"no file {path} under {self.root}") from exc

    def check(self) -> None:
        if not os.path.isdir(self.root):
            raise StorageUnavailable(f"storage root {self.root} is not a reachable directory")

    def open_read(self, path: str) -> BinaryIO:
        try:
            return open(self._abs(path), "rb")
        except OSError as exc:
            self._not_found("read", path, exc)

    def open_write(self, path: str) -> BinaryIO:
        target = self._abs(path)
        try:
            # Directories usually exist: try first, create them on demand.
            try:
                return open(target, "wb")
            except FileNotFoundError:
                self.check()
                os.makedirs(os.path.dirname(target), exist_ok=True)
                return open(target, "wb")
        except OSError as exc:
            raise self._unavailable("write", path, exc) from exc

    def local_path(self, path: str) -> str | None:
        return self._abs(path)

    def size(self, path: str) -> int | None:
        try:
            st = os.stat(self._abs(path))
        except OSError as exc:
            if self._missing(exc):
                return None
            raise self._unavailable("stat", path, exc) from exc
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def rename(self, src: str, dst: str) -> None:
        target = self._abs(dst)
        try:
            try:
                os.replace(self._abs(src), target)
            except FileNotFoundError:
                self.check()
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(self._abs(src), target)
        except OSError as exc:
            # Either side may fail as "missing": only a missing source is FileNotFoundError.
            if not self._missing(exc) or os.path.lexists(self._abs(src)):
                raise self._unavailable("rename", f"{src} to {dst}", exc) from exc
            self._not_found("rename", src, exc)

    def delete_tree(self, path: str) -> None:
        target = self._abs(path)
        try:
            st = os.lstat(target)
        except OSError as exc:
            if self._missing(exc):
                return
            raise self._unavailable("delete", path, exc) from exc
        try:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(target, onerror=_vanished_is_fine)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
        except OSError as exc:
            raise self._unavailable("delete", path, exc) from exc

    def list_dirs(self, path: str) -> list[str]:
        try:
            with os.scandir(self._abs(path)) as entries:
                return sorted(e.name for e in entries if e.is_dir())
        except OSError as exc:
            if self._missing(exc):
                return []
            raise self._unavailable("list", path, exc) from exc

    def walk_files(self, path: str) -> Iterator[tuple[str, float]]:
        def failed(exc: OSError) -> None:
            if not self._missing(exc):
                raise self._unavailable("walk", path, exc) from exc

        real_root = os.path.realpath(self.root)
        # Resolved, as the root is: the paths yielded are relative to it.
        for dirpath, _dirs, files in os.walk(os.path.realpath(self._abs(path)), onerror=failed):
            for name in files:
                full = Path(dirpath, name)
                try:
                    mtime = full.stat().st_mtime
                except OSError as exc:
                    failed(exc)
                    continue  # removed during the walk
                yield full.relative_to(real_root).as_posix(), mtime


def _vanished_is_fine(
    _func: Any, _path: str, exc_info: tuple[type[BaseException], BaseException, TracebackType]
) -> None:
    """``shutil.rmtree``'s error handler: something removed meanwhile needs no removing."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def _no_links_below(real_root: str, parts: list[str]) -> bool:
    """True when no component of ``parts`` under ``real_root`` is a symlink: each existing
    one is a real directory or file (past the first missing one nothing exists to follow).
    False when one is a link, or cannot be looked at: the caller resolves the path then."""
    current = real_root
    for part in parts:
        current = f"{current}{os.sep}{part}"
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if stat.S_ISLNK(mode):
            return False
    return True


def storage_for(root: str) -> StorageClient:
    """The client for a backend's storage root: ``s3://...`` is object storage
    (app/storage/objects.py), anything else a directory on this host."""
    if root.startswith("s3://"):
        from app.storage.objects import ObjectStorage  # obstore loads only where it is used

        return ObjectStorage(root)
    return LocalStorage(root)


def rowset_dir(tablet_id: int, rowset_id: str) -> str:
    return f"data/{tablet_id}/{rowset_id}"


def staging_dir(txn_id: int) -> str:
    return f"staging/{txn_id}"


def receiving_path(storage: StorageClient, txn_id: int, rowset_id: str, final: str) -> str:
    """Where a file on its way to ``final`` (``rowset_dir(...)/<name>``) is written: in a
    directory, under the transaction's staging directory (flat: one per transaction), renamed
    into place once verified, since a file is visible while it is written; in object storage,
    ``final`` itself, since an object is published whole when its writer closes and not at all
    when the writer is abandoned (a failed checksum), and a rename there is a copy."""
    if storage.root.startswith("s3://"):  # by the root: local_path would lstat every part
        return final
    return f"{staging_dir(txn_id)}/{rowset_id}.{final.rsplit('/', 1)[-1]}"


def full(root: str, what: str) -> StorageFull:
    """The error for a storage root without room left, saying how much there is."""
    try:
        usage = shutil.disk_usage(root)
        room = f"{usage.free / MB:.1f} MB free of {usage.total / MB:.1f} MB"
    except OSError:
        room = "free space unknown"
    return StorageFull(f"storage root {root} is full ({room}): {what}")
