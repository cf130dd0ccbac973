"""One beat of every active sync policy of a cluster: what moved on the source, and the job,
the partition or the schema change that brings the target along.

Per policy it reads each side's tables and partitions in one grouped query (not a poll per
table), the policy's rows and the running jobs, and then, per followed table:
- a table missing on the target: a job with create_target (the source's schema and partitions);
- a target written outside the policy (a version not made by a replication, or ahead of the
  source): the table's sync STOPS with the divergence recorded; nothing is overwritten;
- a different schema that the source reached from the target's by alters: the same alters are
  replayed on the target (app/sync/ddl.py), so no data is copied again for them; any other
  difference STOPS the table with the reason;
- a partition the source gained: created on the target; one the source dropped: kept, reported;
- versions that moved: a replication job (at most one per table at a time).
Lag is kept per table: versions behind, and since when (the commit time of the oldest source
version not yet on the target, from the source partitions' ``visible_at``).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.catalog import schema as s
from app.cluster import Cluster
from app.config import Settings
from app.errors import AdmissionRefused, ReplicatorError, TableBusy, UserError
from app.replication.state import ACTIVE_STATES
from app.replication.submit import submit
from app.sync import checking, ddl
from app.sync.policies import Policy, PolicyState, SyncedTable, TableSyncState, load_policies
from app.sync.verify import CheckRequest

log = logging.getLogger(__name__)


@dataclass
class Part:
    version: int
    epoch: int
    visible_at: dt.datetime
    lower: Any
    upper: Any
    written_by: str  # the kind of transaction that made the version


@dataclass
class TableView:
    schema_hash: int
    parts: dict[str, Part] = field(default_factory=dict)


def tables_of(cluster: Cluster, db: str) -> dict[str, TableView]:
    """Every table of ``db`` with its partitions, in one query."""
    t, p, d = s.tables.c, s.partitions.c, s.databases.c
    q = (
        sa.select(t.name, t.schema_hash, p.name.label("part"), p.visible_version,
                  p.version_epoch, p.visible_at, p.lower, p.upper, p.version_txn_kind)
        .select_from(s.tables.join(s.databases, d.id == t.db_id))
        .join(s.partitions, p.table_id == t.id)
        .where(d.name == db)
    )  # fmt: skip
    out: dict[str, TableView] = {}
    with cluster.engine.connect() as conn:
        for r in conn.execute(q):
            view = out.setdefault(r.name, TableView(r.schema_hash))
            view.parts[r.part] = Part(
                r.visible_version, r.version_epoch, r.visible_at, r.lower, r.upper,
                r.version_txn_kind,
            )  # fmt: skip
    return out


@dataclass
class Beat:
    started: list[int] = field(default_factory=list)  # jobs: tick them at once
    checks: list[CheckRequest] = field(default_factory=list)  # send to the backends' queues


def tick_cluster(settings: Settings, cluster: str) -> Beat:
    """Every policy of ``cluster`` (the target): the jobs it started, the checks it asks for."""
    dst = Cluster(settings, cluster)
    started = Beat()
    with dst.engine.connect() as lock:
        # One beat at a time per cluster: two coordinators' beats would otherwise both see a
        # table move (the second submit is refused as busy, but the work is done twice).
        if not lock.execute(sa.text(f"SELECT pg_try_advisory_lock({_LOCK})")).scalar():
            return started
        try:
            policies = load_policies(lock, cluster)
            lock.commit()
            for policy in policies:
                try:
                    tick_policy(settings, dst, policy, started)
                except ReplicatorError as exc:  # e.g. the source is down: next beat
                    log.warning("sync policy %s: %s", policy.name, exc)
        finally:
            lock.execute(sa.text(f"SELECT pg_advisory_unlock({_LOCK})"))
            lock.commit()
    return started


_LOCK = 727274003  # the sync beat's advisory lock (727274002 is the submit lock)


def tick_policy(settings: Settings, dst: Cluster, policy: Policy, beat: Beat) -> None:
    src = Cluster(settings, policy.src_cluster)
    theirs = tables_of(src, policy.src_db)
    ours = tables_of(dst, policy.dst_db)
    running = _running_jobs(dst, policy.src_cluster)
    rows = {t.src_table: t for t in policy.tables}
    started = beat.started
    now = dt.datetime.now(dt.UTC)
    for name in sorted(n for n in theirs if policy.follows(n)):
        target = policy.target_of(name)
        row = rows.get(name)
        changes = _lag(theirs[name], ours.get(target), now, row)
        kept = _kept_partitions(theirs[name], ours.get(target))
        if row is not None and row.state is TableSyncState.SYNCING and row.reason != kept:
            changes["reason"] = kept
        if row is None:  # with its lag: never seen as caught up before it is
            _insert_row(dst, policy, name, target, changes)
        if row is not None and row.state is not TableSyncState.SYNCING:
            _update(dst, policy, name, **changes)
            continue
        if policy.state is PolicyState.ACTIVE and f"{policy.dst_db}.{target}" not in running:
            if row is not None:
                found = checking.after_job(settings, src, dst, policy, row, beat)
                changes |= found
                if "job_id" in found:  # a repair started: nothing else for it this beat
                    _update(dst, policy, name, **changes)
                    continue
            verdict = _step(
                settings, src, dst, policy, name, target, theirs[name], ours.get(target)
            )
            if isinstance(verdict, int):
                started.append(verdict)
                changes["job_id"] = verdict
            elif verdict is not None:
                changes |= {"state": TableSyncState.STOPPED, "reason": verdict}
        _update(dst, policy, name, **changes)
    for name, row in rows.items():
        if name not in theirs and row.state is TableSyncState.SYNCING:
            gone = "the table was dropped on the source; the target keeps its copy"
            _update(dst, policy, name, state=TableSyncState.SOURCE_DROPPED, reason=gone)
    with dst.engine.begin() as conn:
        conn.execute(
            sa.update(s.sync_policies)
            .where(s.sync_policies.c.id == policy.id)
            .values(last_tick_at=sa.func.now())
        )


def _step(
    settings: Settings,
    src: Cluster,
    dst: Cluster,
    policy: Policy,
    name: str,
    target: str,
    theirs: TableView,
    ours: TableView | None,
) -> int | str | None:
    """What this table needs now: a job started (its id), a reason to stop, or nothing."""
    src_full, dst_full = f"{policy.src_db}.{name}", f"{policy.dst_db}.{target}"
    overwrite, moved, changes = False, None, None
    if ours is not None:
        # A failback policy may replace what its target held when it was promoted away.
        kept = (policy.baseline or {}).get(target, {})
        as_left = {p for p, v in ours.parts.items() if kept.get(p) == [v.version, v.epoch]}
        diverged = [
            f"partition {p} is at version {v.version} after a {v.written_by.lower()} on the target"
            for p, v in ours.parts.items()
            if p not in as_left
            and (
                (v.version > 1 and v.written_by != "REPLICATION")
                or (p in theirs.parts and v.version > theirs.parts[p].version)
            )
        ]
        if diverged:
            return (
                f"the target was written outside the policy: {'; '.join(diverged)}. Nothing was "
                "overwritten; drop the target table and resync to copy it anew"
            )
        if ours.schema_hash != theirs.schema_hash:
            path = ddl.schema_path(src, src_full, ours.schema_hash)
            if path is None:
                return (
                    "incompatible schema change: the target's schema is not one the source "
                    "had; a full resync needs the target table dropped (then `sync resync`)"
                )
            changes = path  # replayed by the job, in its commit's transaction
        for part, v in theirs.parts.items():
            if part not in ours.parts:
                ddl.add_partition(dst, policy.name, dst_full, part, v.lower, v.upper)
        moved = [p for p, v in theirs.parts.items() if _moved(v, ours.parts.get(p))]
        if not moved:
            return None
        # Only the partitions that moved: an overwrite must not reach the others.
        overwrite = any(ours.parts[p].written_by != "REPLICATION" for p in moved if p in as_left)
    label = f"sync-{policy.name}-{target}-{uuid.uuid4().hex[:8]}"
    try:
        _, job_id, _ = submit(
            settings, f"{src.name}:{src_full}", f"{dst.name}:{dst_full}",
            create_target=ours is None, label=label, overwrite=overwrite, partitions=moved,
            schema_changes=changes,
        )  # fmt: skip
    except (AdmissionRefused, TableBusy) as exc:
        log.info("sync %s: %s waits: %s", policy.name, name, exc)
        return None
    except UserError as exc:
        return f"replication refused: {exc}"
    return job_id


def _kept_partitions(theirs: TableView, ours: TableView | None) -> str | None:
    """A report of the target partitions the source no longer has: kept, never dropped."""
    gone = sorted(set(ours.parts) - set(theirs.parts)) if ours is not None else []
    if not gone:
        return None
    return f"partition(s) {', '.join(gone)} dropped on the source; the target keeps them"


def _moved(theirs: Part, ours: Part | None) -> bool:
    """The target partition lacks what the source's holds. Two partitions never loaded (version
    1) hold the same nothing whatever their epochs."""
    if ours is None:
        return theirs.version > 1
    return (ours.version, ours.epoch) != (theirs.version, theirs.epoch) and theirs.version > 1


def _running_jobs(dst: Cluster, src_cluster: str) -> set[str]:
    j = s.jobs.c
    with dst.engine.connect() as conn:
        return set(
            conn.execute(
                sa.select(j.dst_table).where(
                    j.src_cluster == src_cluster, j.state.in_([str(x) for x in ACTIVE_STATES])
                )
            ).scalars()
        )


def _lag(
    theirs: TableView, ours: TableView | None, now: dt.datetime, row: SyncedTable | None
) -> dict[str, Any]:
    """Versions behind, and the commit time of the oldest source version not on the target;
    only what changed since the row was read (most beats change nothing: no write)."""
    pending = row.pending if row is not None else {}
    behind = 0
    kept: dict[str, list[list[Any]]] = {}
    for part, v in theirs.parts.items():
        have = ours.parts[part].version if ours and part in ours.parts else 1
        if ours and part in ours.parts and ours.parts[part].epoch != v.epoch:
            have = 1  # another history: all of it is to copy
        if v.version <= have:
            continue
        behind += v.version - have
        seen = [e for e in pending.get(part, []) if have < e[0] <= v.version]
        if not any(e[0] == v.version for e in seen):
            seen.append([v.version, v.visible_at.isoformat()])
        kept[part] = seen
    times = [dt.datetime.fromisoformat(e[1]) for es in kept.values() for e in es]
    since = min(times) if times else None
    if row is not None and (row.versions_behind, row.pending, row.behind_since) == (
        behind,
        kept,
        since,
    ):
        return {}
    out: dict[str, Any] = {"versions_behind": behind, "pending": kept, "behind_since": since}
    if not behind:
        out["synced_at"] = now
    return out


def _insert_row(dst: Cluster, policy: Policy, name: str, target: str, lag: dict[str, Any]) -> None:
    with dst.engine.begin() as conn:
        conn.execute(
            pg_insert(s.sync_tables).values(
                policy_id=policy.id, src_table=name, dst_table=target,
                state=TableSyncState.SYNCING,
                **{k: v for k, v in lag.items() if k != "synced_at"},
            ).on_conflict_do_nothing()
        )  # fmt: skip


def _update(dst: Cluster, policy: Policy, name: str, **values: Any) -> None:
    if not values:
        return
    if "synced_at" in values:  # only when it becomes caught up, not every beat it stays so
        values["synced_at"] = sa.func.coalesce(
            sa.case((s.sync_tables.c.versions_behind == 0, s.sync_tables.c.synced_at)),
            values["synced_at"],
        )
    t = s.sync_tables.c
    with dst.engine.begin() as conn:
        conn.execute(
            sa.update(s.sync_tables)
            .where(t.policy_id == policy.id, t.src_table == name)
            .values(**values)
        )
