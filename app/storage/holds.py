"""Holds: leased protection of rowsets against compaction and GC.

A replication job holds the source rowsets it ships; a hold ends when its owner releases it or
when its lease expires, so a dead job never pins files for ever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa

from app.catalog import schema as s

# One array parameter, one statement text whatever the count: a VALUES list of n rows is a new
# statement for SQLAlchemy to compile for every n (75 ms for a snapshot message of 125 rowsets,
# cProfile of bench small), and Postgres allows at most 65,535 parameters.
_PLACE = sa.text(
    """
    INSERT INTO holds (rowset_id, owner, expires_at)
    SELECT DISTINCT r, :owner, now() + make_interval(secs => :lease)
    FROM unnest(CAST(:ids AS text[])) AS r
    ON CONFLICT (rowset_id, owner) DO UPDATE SET expires_at = excluded.expires_at
    """
)


def place(conn: sa.Connection, rowset_ids: Iterable[str], owner: str, lease_sec: int) -> int:
    """Hold each rowset for ``owner`` until ``lease_sec`` from now (a held one: extended)."""
    ids = list(rowset_ids)
    if not ids:
        return 0
    return conn.execute(_PLACE, {"ids": ids, "owner": owner, "lease": lease_sec}).rowcount


def renew(conn: sa.Connection, owner: str, lease_sec: int) -> int:
    return conn.execute(
        sa.update(s.holds)
        .where(s.holds.c.owner == owner)
        .values(expires_at=sa.func.now() + dt.timedelta(seconds=lease_sec))
    ).rowcount


def release(conn: sa.Connection, owner: str) -> int:
    return conn.execute(sa.delete(s.holds).where(s.holds.c.owner == owner)).rowcount


def active(conn: sa.Connection, owner: str | None = None) -> int:
    q = sa.select(sa.func.count()).select_from(s.holds).where(s.holds.c.expires_at > sa.func.now())
    if owner is not None:
        q = q.where(s.holds.c.owner == owner)
    return int(conn.execute(q).scalar_one())


def held_rowsets_subquery() -> sa.Select[tuple[str]]:
    return sa.select(s.holds.c.rowset_id).where(s.holds.c.expires_at > sa.func.now())
