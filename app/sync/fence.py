"""A table a sync policy follows is written by that policy alone (its replication jobs): loads
and schema changes from anyone else are refused, naming the policy. Without the fence, a
write on the target would make it diverge and the next job would have to refuse or overwrite."""

from __future__ import annotations

import sqlalchemy as sa

from app.catalog import schema as s
from app.catalog.model import TableInfo
from app.errors import TableBusy


def policy_of(conn: sa.Connection, table: TableInfo) -> str | None:
    """The name of the policy that follows ``table`` as its target, if one does."""
    p, t = s.sync_policies.c, s.sync_tables.c
    return conn.execute(
        sa.select(p.name)
        .join(s.sync_tables, t.policy_id == p.id)
        .where(p.dst_db == table.db_name, t.dst_table == table.name)
    ).scalar()


def refuse_if_fenced(conn: sa.Connection, table: TableInfo, what: str) -> None:
    name = policy_of(conn, table)
    if name is not None:
        raise TableBusy(
            f"{what} into {table.full_name} refused: sync policy {name!r} keeps this table in "
            f"sync and is the only writer; drop the policy (`replicator sync drop {name}`) "
            "to write here"
        )
