"""The DDL a sync policy prepares for its target: a partition the source table gained, and the
source's schema changes since the target's schema (which the job replays at its commit)."""

from __future__ import annotations

import contextlib
from typing import Any

import sqlalchemy as sa

from app import partitions
from app.catalog import model
from app.catalog import schema as s
from app.cluster import Cluster
from app.errors import AlreadyExists


def add_partition(dst: Cluster, policy: str, table: str, name: str, lower: Any, upper: Any) -> None:
    """The source's new partition, on the target: empty, so the next job copies it in full."""
    with contextlib.suppress(AlreadyExists):  # made by an earlier beat, its job yet to run
        partitions.add_partition(dst, table, name, lower, upper, by_sync=policy)


def schema_path(src: Cluster, src_table: str, dst_hash: int) -> list[dict[str, Any]] | None:
    """The source's schema changes made since it had the schema ``dst_hash`` (oldest first), or
    None when the source never had it: the two schemas did not come from one history."""
    with src.engine.connect() as conn:
        table = model.get_table(conn, src_table, src.name)
        rows = conn.execute(
            sa.select(s.schema_versions.c.schema_hash, s.schema_versions.c.spec)
            .where(s.schema_versions.c.table_id == table.id)
            .order_by(s.schema_versions.c.version)
        ).all()
    hashes = [r.schema_hash for r in rows]
    if dst_hash not in hashes:
        return None
    at = len(hashes) - 1 - hashes[::-1].index(dst_hash)  # the newest time it had that schema
    specs = [r.spec for r in rows[at + 1 :]]
    return None if any(spec is None for spec in specs) else specs
