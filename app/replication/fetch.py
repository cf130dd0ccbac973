"""Bringing one file from a source replica to the target, verified in the same pass.

This is where bytes cross from one cluster to the other. Today a source replica is read through
its storage client; a network transfer (a download from the source backend's transfer server)
plugs in here, behind the same contract: try each source replica in order, verify size and
checksum while writing the staged file, and say by the error's kind what went wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app import faults
from app.errors import ChecksumMismatch, CorruptSource, SourceDataGone, StorageUnavailable
from app.storage.checksum import FileMeta, copy_verified
from app.storage.client import StorageClient


def fetch(
    sources: list[tuple[int, StorageClient]],
    target: StorageClient,
    src_path: str,
    staged: str,
    meta: FileMeta,
    on_progress: Callable[[int], None],
) -> int:
    """Copy one file to ``staged``, trying each source replica; returns the bytes copied.

    A checksum mismatch on every replica is tried once more (bytes can be damaged in flight);
    if it repeats on every replica the data itself is bad and retrying cannot help. A staged
    file that did not verify is always removed.
    """
    errors: list[str] = []
    for _attempt in range(2):
        mismatches = 0
        for backend_id, source in sources:
            try:
                with source.open_read(src_path) as raw, target.open_write(staged) as fout:
                    fin = _Corrupting(raw) if faults.fire("transfer.corrupt") else raw
                    return copy_verified(fin, fout, meta, on_progress=on_progress)  # type: ignore[arg-type]
            except FileNotFoundError:
                errors.append(f"backend {backend_id}: missing")
            except ChecksumMismatch as exc:
                mismatches += 1
                errors.append(f"backend {backend_id}: {exc}")
            except StorageUnavailable as exc:
                errors.append(f"backend {backend_id}: {exc}")
            except BaseException:
                target.delete_tree(staged)
                raise
            target.delete_tree(staged)
        if mismatches < len(sources):
            break
    raise _classify(errors, src_path, meta, len(sources))


def _classify(errors: list[str], src_path: str, meta: FileMeta, n_sources: int) -> Exception:
    detail = "; ".join(errors)
    if all("missing" in e for e in errors):
        return SourceDataGone(
            f"{meta.name} of {src_path} is gone from every source replica: {detail}"
        )
    if sum("checksum" in e for e in errors) >= 2 * n_sources:
        return CorruptSource(
            f"every source replica of {src_path} fails its checksum, twice: {detail}"
        )
    if any("checksum" in e for e in errors):
        return ChecksumMismatch(f"no source replica delivered {src_path} intact: {detail}")
    return StorageUnavailable(f"no source replica of {src_path} could be read: {detail}")


class _Corrupting:
    """A reader that flips one byte of the first chunk: the ``transfer.corrupt`` failpoint."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.done = False

    def readinto(self, view: memoryview) -> int:
        n = int(self.raw.readinto(view))
        if n and not self.done:
            view[0] = view[0] ^ 0xFF
            self.done = True
        return n
