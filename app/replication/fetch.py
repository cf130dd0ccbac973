"""Bringing one file from a source replica to the target, verified in the same pass.

This is where bytes cross from one cluster to the other: each source replica (``sources``) is
tried in order; the staged file is written and verified (size and xxh3) in one pass, and removed
if it did not verify. What went wrong is said by the error's kind.
"""

from __future__ import annotations

from collections.abc import Callable

from app.errors import (
    ChecksumMismatch,
    CorruptSource,
    SourceDataGone,
    StorageUnavailable,
)
from app.replication.sources import Source
from app.storage.checksum import FileMeta
from app.storage.client import StorageClient


def fetch(
    sources: list[Source],
    target: StorageClient,
    tablet: int,
    rowset: str,
    staged: str,
    meta: FileMeta,
    on_progress: Callable[[int], object],
) -> int:
    """Copy one file to ``staged``, trying each source replica; returns the bytes that crossed.

    A checksum mismatch on every replica is tried once more (bytes can be damaged in flight);
    if it repeats on every replica the data itself is bad and retrying cannot help. A staged
    file that did not verify is removed; one cut off by an unreachable replica is kept, and
    the next replica (or the task's next attempt) continues it with Range. A replica that
    cannot be reached is moved to the end of ``sources`` (the caller's list), so the task's
    next files try the others first.
    """
    where = f"{tablet}/{rowset}/{meta.name}"
    if not sources:
        raise SourceDataGone(f"no source replica of {where} is registered any more")
    errors: list[str] = []
    for _attempt in range(2):
        mismatches = 0
        for source in list(sources):  # a copy: _demote reorders the caller's list
            try:
                return source.fetch(tablet, rowset, meta, target, staged, on_progress)
            except (FileNotFoundError, SourceDataGone):
                errors.append(f"{source.name}: missing")
                continue
            except ChecksumMismatch as exc:
                mismatches += 1
                errors.append(f"{source.name}: {exc}")
            except StorageUnavailable as exc:
                errors.append(f"{source.name}: {exc}")
                _demote(sources, source)
                continue  # the partial file stays: the next replica or attempt continues it
            except BaseException:
                target.delete_tree(staged)
                raise
            target.delete_tree(staged)
        if mismatches < len(sources):
            break
    raise _classify(errors, where, len(sources))


def _demote(sources: list[Source], source: Source) -> None:
    if sources and sources[-1] is not source:
        sources.remove(source)
        sources.append(source)


def _classify(errors: list[str], where: str, n_sources: int) -> Exception:
    detail = "; ".join(errors)
    if all(e.endswith(": missing") for e in errors):
        return SourceDataGone(f"{where} is gone from every source replica: {detail}")
    if sum("checksum" in e for e in errors) >= 2 * n_sources:
        return CorruptSource(f"every source replica of {where} fails its checksum, twice: {detail}")
    if any("checksum" in e for e in errors):
        return ChecksumMismatch(f"no source replica delivered {where} intact: {detail}")
    return StorageUnavailable(f"no source replica of {where} could be read: {detail}")
