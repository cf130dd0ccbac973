"""Which backup a restore reads, and at which version of each partition.

A backup holds more than its own versions: a partition's rowsets form a chain of version
ranges, and any version that no rowset straddles is a state the partition really had (its
rowsets up to that version are exactly what it held then). So one partition can be restored at
an older version than the backup's, as long as compaction had not merged across it before the
backup was taken. ``--at TIME`` turns a time into each partition's last version committed at or
before it, by the commit times the manifest recorded.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from app.backup import manifest as mf
from app.backup import ops
from app.backup.repo import Repository, check_backup_name
from app.errors import InvalidRequest, NotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    manifest: mf.Manifest
    versions: dict[str, int]  # partition -> the version to restore


def restorable(p: mf.Partition, version: int) -> bool:
    """Whether the backup's rowsets of ``p`` give exactly its state at ``version``."""
    if not 1 <= version <= p.version:
        return False
    return not any(r.start <= version < r.end for t in p.tablets for r in t.rowsets)


def held_versions(p: mf.Partition) -> list[int]:
    """Every version of ``p`` this backup can restore, oldest first."""
    return [v for v in range(1, p.version + 1) if restorable(p, v)]


def manifests_of(repo: Repository, table: str) -> list[mf.Manifest]:
    """The finished backups of ``table`` in the repository, oldest first. A manifest that does
    not check out is left out with a warning (``backup verify`` names it)."""
    listing = ops.list_backups(repo, table)
    for line in listing.corrupt:
        log.warning("%s", line)
    return listing.backups


def load(repo: Repository, name: str) -> mf.Manifest:
    text = repo.read_manifest_text(check_backup_name(name))
    if text is None:
        raise NotFound(
            f"repository {repo.url} has no finished backup {name!r} "
            "(`replicator backup list --repo URL` shows them)"
        )
    return mf.parse(name, text)


def choose(
    repo: Repository,
    table: str,
    *,
    backup: str | None = None,
    partitions: list[str] | None = None,
    version: int | None = None,
    at: dt.datetime | None = None,
) -> Choice:
    if version is not None and at is not None:
        raise InvalidRequest("give a version or a time to restore at, not both")
    if version is not None and (isinstance(version, bool) or version < 1):
        raise InvalidRequest(f"version {version!r} must be a whole number >= 1")
    if backup is not None:
        candidates = [load(repo, backup)]
        if candidates[0].table != table:
            raise InvalidRequest(f"backup {backup} is of table {candidates[0].table}, not {table}")
    else:
        candidates = manifests_of(repo, table)
        if not candidates:
            raise NotFound(f"repository {repo.url} holds no finished backup of table {table}")
    if at is not None:
        if at.tzinfo is None:
            raise InvalidRequest(f"time {at.isoformat()} needs a time zone (e.g. ...Z or +00:00)")
        after = [m for m in candidates if m.taken_at >= at]
        candidates = after + [m for m in reversed(candidates) if m.taken_at < at]
    else:
        candidates = list(reversed(candidates))  # newest first
    reasons = []
    for m in candidates:
        names = partitions or [p.name for p in m.partitions]
        versions, why = _versions(m, names, version, at)
        if why is None:
            return Choice(m, versions)
        reasons.append(f"{m.name}: {why}")
    raise NotFound(
        f"no backup of {table} in {repo.url} can restore that: {'; '.join(reasons[:3])}"
        + (f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else "")
    )


def _versions(
    m: mf.Manifest, names: list[str], version: int | None, at: dt.datetime | None
) -> tuple[dict[str, int], str | None]:
    out: dict[str, int] = {}
    for name in names:
        p = m.partition(name)
        if p is None:
            return out, f"has no partition {name}"
        if at is not None:
            before = [v for v, when in p.history if when <= at]
            if not before:
                return out, f"partition {name} has no version committed by {at.isoformat()}"
            want = max(before)
        else:
            want = p.version if version is None else version
        if not restorable(p, want):
            return (
                out,
                f"partition {name} is held at versions {span(held_versions(p))}, not {want}",
            )
        out[name] = want
    return out, None


def span(held: list[int]) -> str:
    """Versions for people: ``1..7`` when they run on, else the last few."""
    if not held:
        return "none"
    if held == list(range(held[0], held[-1] + 1)):
        return f"{held[0]}..{held[-1]}"
    return ", ".join(map(str, held[-8:]))
