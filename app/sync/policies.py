"""Sync policies as rows of the target cluster's catalog: create, list, show, pause, resume,
drop. A policy names a source cluster's database and a database of this cluster; the
coordinator's beat (app/sync/tick.py) does the following."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from app.catalog import schema as s
from app.catalog.names import check_name
from app.cluster import Cluster
from app.config import Settings
from app.errors import AlreadyExists, InvalidRequest, NotFound
from app.sync import fence


class PolicyState(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"  # followed tables stay fenced; lag is still measured; no job starts


class TableSyncState(StrEnum):
    SYNCING = "SYNCING"
    STOPPED = "STOPPED"  # for a reason given (divergence, incompatible schema change)
    SOURCE_DROPPED = "SOURCE_DROPPED"  # gone from the source; the target's copy is kept


@dataclass(frozen=True)
class SyncedTable:
    src_table: str
    dst_table: str
    state: TableSyncState
    reason: str | None
    job_id: int | None
    versions_behind: int
    behind_since: dt.datetime | None
    synced_at: dt.datetime | None
    pending: dict[str, list[list[Any]]] = field(default_factory=dict)
    verified_job_id: int | None = None
    mismatches: int = 0
    last_check: str | None = None

    def seconds_behind(self, now: dt.datetime) -> float:
        return 0.0 if self.behind_since is None else (now - self.behind_since).total_seconds()


@dataclass(frozen=True)
class Policy:
    id: int
    name: str
    src_cluster: str
    src_db: str
    dst_cluster: str
    dst_db: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    renames: dict[str, str]
    state: PolicyState
    last_tick_at: dt.datetime | None
    tables: list[SyncedTable] = field(default_factory=list)
    baseline: dict[str, dict[str, list[int]]] | None = None  # a failback policy's (promote.py)

    def follows(self, table: str) -> bool:
        """Whether a source table (a name within src_db) is one this policy keeps in sync."""
        return fence.follows(self.include, self.exclude, table)

    def target_of(self, table: str) -> str:
        return self.renames.get(table, table)


def parse_renames(items: list[str]) -> dict[str, str]:
    """``SRC=DST`` pairs (table names within the databases)."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep:
            raise InvalidRequest(f"--rename {item!r}: write SOURCE_TABLE=TARGET_TABLE")
        out[check_name("table", src.strip())] = check_name("table", dst.strip())
    if len(set(out.values())) != len(out):
        raise InvalidRequest("--rename maps two source tables onto one target table")
    return out


def create(
    settings: Settings,
    name: str,
    src: str,
    dst: str,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    renames: dict[str, str] | None = None,
    baseline: dict[str, dict[str, list[int]]] | None = None,
) -> Policy:
    """A policy keeping ``src`` (CLUSTER:DB) in sync with ``dst`` (CLUSTER[:DB], the same
    database name by default). It starts at the coordinator's next beat."""
    check_name("policy", name)
    src_cluster, src_db = _split(src, "source", None)
    dst_cluster, dst_db = _split(dst, "target", src_db)
    if src_cluster == dst_cluster and src_db == dst_db:
        raise InvalidRequest(f"source and target are the same database {src}")
    Cluster(settings, src_cluster).ensure_ready()
    dst_c = Cluster(settings, dst_cluster)
    dst_c.ensure_ready()
    with dst_c.engine.begin() as conn:
        if conn.execute(
            sa.select(s.sync_policies.c.id).where(s.sync_policies.c.name == name)
        ).first():
            raise AlreadyExists(f"sync policy {name!r} already exists in cluster {dst_cluster!r}")
        conn.execute(
            sa.insert(s.sync_policies).values(
                name=name, src_cluster=src_cluster, src_db=src_db, dst_db=dst_db,
                include=list(include or []), exclude=list(exclude or []),
                renames=dict(renames or {}), state=PolicyState.ACTIVE, baseline=baseline,
            )
        )  # fmt: skip
    return show(settings, dst_cluster, name)


def _split(spec: str, what: str, default_db: str | None) -> tuple[str, str]:
    cluster, sep, db = spec.partition(":")
    db = db if sep else (default_db or "")
    if not cluster or not db:
        raise InvalidRequest(
            f"{what} {spec!r} must be written CLUSTER:DATABASE"
            + (" (or just CLUSTER for the same database name)" if default_db else "")
        )
    return cluster, check_name("database", db)


def list_policies(settings: Settings, cluster: str) -> list[Policy]:
    c = Cluster(settings, cluster)
    c.ensure_ready()
    with c.engine.connect() as conn:
        return load_policies(conn, cluster)


def load_policies(conn: sa.Connection, cluster: str, name: str | None = None) -> list[Policy]:
    q = sa.select(s.sync_policies).order_by(s.sync_policies.c.name)
    if name is not None:
        q = q.where(s.sync_policies.c.name == name)
    policies = [_policy(r, cluster) for r in conn.execute(q)]
    if policies:
        t = s.sync_tables.c
        rows = conn.execute(
            sa.select(s.sync_tables)
            .order_by(t.src_table)
            .where(t.policy_id.in_([p.id for p in policies]))
        )
        by_id = {p.id: p for p in policies}
        for r in rows:
            by_id[r.policy_id].tables.append(_table(r))
    return policies


def show(settings: Settings, cluster: str, name: str) -> Policy:
    c = Cluster(settings, cluster)
    c.ensure_ready()
    with c.engine.connect() as conn:
        found = load_policies(conn, cluster, name)
    if not found:
        raise NotFound(f"no sync policy {name!r} in cluster {cluster!r}")
    return found[0]


def set_state(settings: Settings, cluster: str, name: str, state: PolicyState) -> Policy:
    c = Cluster(settings, cluster)
    c.ensure_ready()
    with c.engine.begin() as conn:
        done = conn.execute(
            sa.update(s.sync_policies).where(s.sync_policies.c.name == name).values(state=state)
        ).rowcount
    if not done:
        raise NotFound(f"no sync policy {name!r} in cluster {cluster!r}")
    return show(settings, cluster, name)


def drop(settings: Settings, cluster: str, name: str) -> None:
    """Forget the policy: its tables are no longer fenced; the target keeps what it holds, and
    a job already running finishes."""
    c = Cluster(settings, cluster)
    c.ensure_ready()
    with c.engine.begin() as conn:
        done = conn.execute(sa.delete(s.sync_policies).where(s.sync_policies.c.name == name))
    if not done.rowcount:
        raise NotFound(f"no sync policy {name!r} in cluster {cluster!r}")


def resync(settings: Settings, cluster: str, name: str, table: str) -> Policy:
    """Let a STOPPED table sync again (after the cause was dealt with, e.g. the target table
    dropped so that the policy copies it anew)."""
    policy = show(settings, cluster, name)
    c = Cluster(settings, cluster)
    with c.engine.begin() as conn:
        done = conn.execute(
            sa.update(s.sync_tables)
            .where(s.sync_tables.c.policy_id == policy.id, s.sync_tables.c.src_table == table)
            .values(state=TableSyncState.SYNCING, reason=None)
        ).rowcount
    if not done:
        raise NotFound(f"sync policy {name!r} follows no table {table!r}")
    return show(settings, cluster, name)


def _policy(r: Any, cluster: str) -> Policy:
    return Policy(
        r.id, r.name, r.src_cluster, r.src_db, cluster, r.dst_db, tuple(r.include),
        tuple(r.exclude), dict(r.renames), PolicyState(r.state), r.last_tick_at, [],
        r.baseline,
    )  # fmt: skip


def _table(r: Any) -> SyncedTable:
    return SyncedTable(
        r.src_table, r.dst_table, TableSyncState(r.state), r.reason, r.job_id,
        int(r.versions_behind), r.behind_since, r.synced_at, dict(r.pending or {}),
        r.verified_job_id, int(r.mismatches), r.last_check,
    )  # fmt: skip
