"""Streams over objects: the reader and the writer ``ObjectStorage`` hands out.

They make obstore's objects look like the files the rest of the code copies and hashes with
``readinto``, ``write``, ``seek`` and ``tell``, and they keep the storage contract's promises
about consistency (a reader never mixes two versions of an object) and publication (a writer
left by an exception publishes nothing).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore import GetOptions

    from app.storage.objects import ObjectStorage

READ_BUFFER = 8 * 1024 * 1024  # a reader's ranged GETs: fewer, larger requests for big files


class ObjectReader(io.RawIOBase):
    """An object as a raw stream with ``readinto`` (what the copy loops use) and ``seek``
    (what Parquet readers use). Read in order, it is one GET, streamed: a consistent copy of
    the object as it was when opened. After a seek, ranged GETs carry ``If-Match`` with the
    entity tag seen at open, so an object replaced meanwhile fails the read (an OSError)
    instead of mixing two versions."""

    def __init__(self, store: S3Store, key: str) -> None:
        self._store, self._key = store, key
        result = obstore.get(store, key)  # NotFoundError here when it is missing
        self.size = int(result.meta["size"])
        self._etag = result.meta.get("e_tag")
        self._stream: Iterator[Any] | None = iter(result.stream(min_chunk_size=256 * 1024))
        self._pending = memoryview(b"")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        pos = max(base + offset, 0)
        if pos != self._pos:
            self._stream, self._pending, self._pos = None, memoryview(b""), pos
        return pos

    def _fill(self) -> None:
        try:
            if self._stream is not None:
                self._pending = memoryview(next(self._stream, b""))
                return
            if self._pos >= self.size:
                return
            end = min(self._pos + READ_BUFFER, self.size)
            options: GetOptions = {"range": (self._pos, end)}
            if self._etag:
                options["if_match"] = self._etag
            self._pending = memoryview(obstore.get(self._store, self._key, options=options).bytes())
        except Exception as exc:  # network trouble, or the object replaced: OSError (contract)
            raise OSError(f"reading object {self._key} failed: {exc}") from None

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(self._pending):
            self._fill()
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._pos += n
        return n


class ObjectWriter:
    """obstore's WritableFile that publishes the object only when closed without an error."""

    def __init__(self, f: Any, storage: ObjectStorage, path: str) -> None:
        self._f, self._storage, self._path = f, storage, path
        self.closed = False
        self._written = 0

    def write(self, data: Any) -> int:
        try:
            n = int(self._f.write(data))
        except Exception as exc:
            raise OSError(f"writing {self._path} under {self._storage.root}: {exc}") from None
        self._written += n
        return n

    def tell(self) -> int:  # Parquet writers record offsets with it
        return self._written

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass  # parts go up as the buffer fills; the object exists only once closed

    def close(self) -> None:
        """Publish the object. Only now does a store that is away say so (the parts before
        may all have fitted in the buffer): StorageUnavailable, like an open elsewhere."""
        if self.closed:
            return
        self.closed = True
        try:
            self._f.close()
        except Exception as exc:
            raise self._storage._unavailable("write", self._path, exc) from None

    def abort(self) -> None:
        """Give the upload up: nothing is published."""
        if self.closed:
            return
        self.closed = True
        # obstore's writer aborts its upload when left by an exception; an abandoned
        # multipart upload is the store's to expire.
        with contextlib.suppress(Exception):
            self._f.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
