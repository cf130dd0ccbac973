"""File checksums (xxh3-64, hex) computed in the same pass that writes or copies the bytes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

import xxhash

from app.errors import ChecksumMismatch

CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileMeta:
    name: str
    size: int
    checksum: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "checksum": self.checksum}

    @staticmethod
    def from_json(data: dict[str, object]) -> FileMeta:
        return FileMeta(str(data["name"]), int(str(data["size"])), str(data["checksum"]))


def _buffer(chunk: int, size_hint: int | None) -> memoryview:
    # A small file needs a small buffer: zeroing 8 MB for a 3 KB file costs more than the copy.
    if size_hint is not None:
        chunk = min(chunk, size_hint + 1)
    return memoryview(bytearray(max(chunk, 1)))


def checksum_stream(
    src: BinaryIO, chunk: int = CHUNK, size_hint: int | None = None
) -> tuple[int, str]:
    digest = xxhash.xxh3_64()
    size = 0
    view = _buffer(chunk, size_hint)
    while True:
        n = src.readinto(view)  # type: ignore[attr-defined]
        if not n:
            break
        digest.update(view[:n])
        size += n
    return size, digest.hexdigest()


def checksum_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    with open(path, "rb") as f:
        return checksum_stream(f)


def copy_verified(
    src: BinaryIO,
    dst: BinaryIO,
    expected: FileMeta,
    *,
    chunk: int = CHUNK,
    on_progress: object = None,
) -> int:
    """Copy ``src`` to ``dst``, hashing in the same pass; ChecksumMismatch on any difference."""
    digest = xxhash.xxh3_64()
    size = 0
    view = _buffer(chunk, expected.size)
    while True:
        n = src.readinto(view)  # type: ignore[attr-defined]
        if not n:
            break
        part = view[:n]
        digest.update(part)
        dst.write(part)
        size += n
        if size > expected.size:
            break
        if callable(on_progress):
            on_progress(n)
    if size != expected.size or digest.hexdigest() != expected.checksum:
        raise ChecksumMismatch(
            f"file {expected.name}: expected {expected.size} bytes with checksum "
            f"{expected.checksum}, got {size} bytes with checksum {digest.hexdigest()}"
        )
    return size
