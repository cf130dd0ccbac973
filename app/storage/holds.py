"""Holds: leased protection of rowsets against compaction and GC.

A replication job holds the source rowsets it ships; a hold ends when its owner releases it or
when its lease expires, so a dead job never pins files for ever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.catalog import schema as s


def place(conn: sa.Connection, rowset_ids: Iterable[str], owner: str, lease_sec: int) -> int:
    rows = [{"rowset_id": r, "owner": owner} for r in rowset_ids]
    if not rows:
        return 0
    expires = sa.func.now() + dt.timedelta(seconds=lease_sec)
    stmt = pg_insert(s.holds).values(
        [{"rowset_id": r["rowset_id"], "owner": owner, "expires_at": expires} for r in rows]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["rowset_id", "owner"], set_={"expires_at": stmt.excluded.expires_at}
    )
    # SQLAlchemy keeps an INSERT's rowcount only when asked; without this it reports -1.
    return conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount


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
