"""A table a sync policy follows is written by that policy alone (its replication jobs): loads
and schema changes from anyone else are refused, naming the policy. Without the fence, a
write on the target would make it diverge and the next job would have to refuse or overwrite."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import sqlalchemy as sa

from app.catalog import schema as s
from app.catalog.model import TableInfo
from app.errors import TableBusy


def policy_of(conn: sa.Connection, table: TableInfo) -> str | None:
    """The name of the policy that follows ``table`` as its target, if one does: one that has
    a row for it, or whose rules would follow it from its first beat on."""
    p, t = s.sync_policies.c, s.sync_tables.c
    rowed = conn.execute(
        sa.select(p.name)
        .join(s.sync_tables, t.policy_id == p.id)
        .where(p.dst_db == table.db_name, t.dst_table == table.name)
    ).scalar()
    if rowed is not None:
        return str(rowed)
    for name, include, exclude, renames in conn.execute(
        sa.select(p.name, p.include, p.exclude, p.renames).where(p.dst_db == table.db_name)
    ):
        back = {dst: src for src, dst in renames.items()}
        src = back.get(table.name, None if table.name in renames else table.name)
        if src is None:
            continue
        if follows(include, exclude, src):
            return str(name)
    return None


def follows(include: Sequence[str], exclude: Sequence[str], table: str) -> bool:
    """A policy's rules: a source table is followed if a glob of ``include`` (or none given)
    and no glob of ``exclude`` matches its name."""
    included = not include or any(fnmatch.fnmatchcase(table, g) for g in include)
    return included and not any(fnmatch.fnmatchcase(table, g) for g in exclude)


def refuse_if_fenced(conn: sa.Connection, table: TableInfo, what: str) -> None:
    name = policy_of(conn, table)
    if name is not None:
        raise TableBusy(
            f"{what} into {table.full_name} refused: sync policy {name!r} keeps this table in "
            f"sync and is the only writer; drop the policy (`replicator sync drop {name}`) "
            "to write here"
        )
