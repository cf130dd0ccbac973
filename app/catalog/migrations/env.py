"""Alembic environment: runs against the catalog DSN set by ``app.catalog.migrate``."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from app.catalog.schema import metadata

config = context.config


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        connectable = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
    with (
        connectable.connect() if isinstance(connectable, sa.Engine) else _same(connectable) as conn
    ):
        context.configure(connection=conn, target_metadata=metadata, compare_type=True)
        with context.begin_transaction():
            # Two `cluster init` runs at once must not both migrate.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274001)"))
            context.run_migrations()


class _same:
    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sa.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        return None


run_migrations_online()
