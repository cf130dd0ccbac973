"""What one does to a repository besides backing up and restoring: list, verify, prune.

Prune never deletes an object a kept backup needs: a backup's manifest names every object it
needs (an incremental backup names the objects an earlier one uploaded, not just its own), so
prune deletes the manifests it was asked to, then only objects that no remaining manifest names.
Two more rules keep it safe while other work goes on: an object younger than ``grace_sec`` is
left alone (a running backup may have just uploaded it, before its manifest exists), and a
manifest that cannot be read stops all object deletion (its objects are unknown).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.backup import manifest as mf
from app.backup.repo import Repository, parse_object_name
from app.errors import CorruptBackup, InvalidRequest, NotFound
from app.storage.checksum import FileMeta, checksum_stream

VERIFY_THREADS = 4
PRUNE_GRACE_SEC = 3600


@dataclass
class Listing:
    backups: list[mf.Manifest] = field(default_factory=list)  # oldest first
    corrupt: list[str] = field(default_factory=list)  # one line each: which and why


def list_backups(repo: Repository, table: str | None = None) -> Listing:
    out = Listing()
    for name in repo.names():
        try:
            text = repo.read_manifest_text(name)
            if text is None:
                continue
            m = mf.parse(name, text)
        except CorruptBackup as exc:
            out.corrupt.append(str(exc))
            continue
        if table is None or m.table == table:
            out.backups.append(m)
    out.backups.sort(key=lambda m: (m.taken_at, m.name))
    return out


@dataclass
class Verified:
    backups: list[str] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)  # "objects/<key> (needed by a, b)"
    differing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.differing or self.corrupt)


def verify(repo: Repository, names: list[str] | None = None) -> Verified:
    """Re-hash every object the backups (``names``, or all) need; name what is missing or
    differs from its name's size and checksum, and every manifest that does not check out."""
    listing = list_backups(repo)
    chosen = listing.backups
    if names:

        def named(line: str, n: str) -> bool:
            return line.startswith(f"backup {n}:")

        known = {m.name for m in chosen}
        unknown = [
            n for n in names if n not in known and not any(named(c, n) for c in listing.corrupt)
        ]
        if unknown:
            raise NotFound(
                f"repository {repo.url} has no finished backup {', '.join(unknown)} "
                "(`replicator backup list --repo URL` shows them)"
            )
        chosen = [m for m in chosen if m.name in names]
        listing.corrupt = [c for c in listing.corrupt if any(named(c, n) for n in names)]
    out = Verified(backups=[m.name for m in chosen], corrupt=listing.corrupt)
    users: dict[str, list[str]] = defaultdict(list)
    metas: dict[str, FileMeta] = {}
    for m in chosen:
        for key, meta in m.objects().items():
            users[key].append(m.name)
            metas[key] = meta
    with ThreadPoolExecutor(VERIFY_THREADS) as pool:
        results = list(pool.map(lambda key: _check(repo, key, metas[key]), sorted(metas)))
    for key, problem in results:
        out.objects += 1
        out.bytes += metas[key].size
        who = ", ".join(users[key][:3]) + (" ..." if len(users[key]) > 3 else "")
        if problem == "missing":
            out.missing.append(f"{key} (needed by {who})")
        elif problem:
            out.differing.append(f"{key}: {problem} (needed by {who})")
    return out


def _check(repo: Repository, key: str, meta: FileMeta) -> tuple[str, str | None]:
    size = repo.storage.size(key)
    if size is None:
        return key, "missing"
    with repo.storage.open_read(key) as f:
        got = checksum_stream(f, size_hint=meta.size)
    if got != (meta.size, meta.checksum):
        return key, f"holds {got[0]} bytes with checksum {got[1]}"
    return key, None


@dataclass
class Pruned:
    deleted_backups: list[str] = field(default_factory=list)
    kept_backups: list[str] = field(default_factory=list)
    deleted_objects: int = 0
    freed_bytes: int = 0
    left_objects: int = 0  # unreferenced but younger than the grace period (or a manifest is bad)
    note: str = ""


def prune(
    repo: Repository,
    *,
    keep: int | None = None,
    older_than: dt.timedelta | None = None,
    grace_sec: float = PRUNE_GRACE_SEC,
    dry_run: bool = False,
) -> Pruned:
    """Delete the backups beyond the ``keep`` newest of each table and/or taken more than
    ``older_than`` ago (both given: only those that are both), then the objects no remaining
    backup needs."""
    if keep is None and older_than is None:
        raise InvalidRequest("say what to prune: --keep N (newest backups per table to keep) "
                             "and/or --older-than DURATION (e.g. 30d)")  # fmt: skip
    if keep is not None and (isinstance(keep, bool) or keep < 1):
        raise InvalidRequest(f"--keep {keep!r} must be at least 1 (prune never deletes them all)")
    if grace_sec < 0:
        raise InvalidRequest(f"grace {grace_sec} must not be negative")
    listing = list_backups(repo)
    now = dt.datetime.now(dt.UTC)
    per_table: dict[str, list[mf.Manifest]] = defaultdict(list)
    for m in listing.backups:
        per_table[m.table].append(m)
    doomed: list[mf.Manifest] = []
    for backups in per_table.values():
        newest_first = list(reversed(backups))
        for i, m in enumerate(newest_first):
            beyond = keep is None or i >= keep
            old = older_than is None or m.taken_at < now - older_than
            (doomed if beyond and old else []).append(m)
    out = Pruned(deleted_backups=[m.name for m in doomed])
    out.kept_backups = [m.name for m in listing.backups if m not in doomed]
    if not dry_run:
        for m in doomed:  # manifests first: a backup is gone before any object it needed
            repo.delete_manifest(m.name)
    _prune_objects(repo, listing, doomed, grace_sec, dry_run, out)
    return out


def _prune_objects(
    repo: Repository,
    listing: Listing,
    doomed: list[mf.Manifest],
    grace_sec: float,
    dry_run: bool,
    out: Pruned,
) -> None:
    if listing.corrupt:
        out.note = (
            f"no object deleted: {len(listing.corrupt)} manifests cannot be read, and their "
            "objects are unknown (`replicator backup verify` names them)"
        )
        return
    needed = {k for m in listing.backups if m not in doomed for k in m.objects()}
    cutoff = time.time() - grace_sec
    for name, mtime in list(repo.objects()):
        if f"objects/{name}" in needed:
            continue
        if mtime > cutoff:
            out.left_objects += 1
            continue
        parsed = parse_object_name(name)  # None: a partial upload's leftover
        if not dry_run:
            repo.delete_object(name)
        out.deleted_objects += 1
        out.freed_bytes += parsed[1] if parsed else 0
