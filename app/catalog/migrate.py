"""Create or upgrade a catalog to the newest schema. Running it twice is harmless."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.catalog.engine import create_database, engine_for

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(dsn: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    return cfg


@functools.cache  # the migration scripts do not change while a process runs
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()
    assert head is not None
    return head


def current_revision(dsn: str) -> str | None:
    with engine_for(dsn).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(dsn: str) -> tuple[bool, str | None, str]:
    """Returns (database created, revision before, revision after)."""
    created = create_database(dsn)
    before = current_revision(dsn)
    cfg = alembic_config(dsn)
    with engine_for(dsn).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return created, before, head_revision()
