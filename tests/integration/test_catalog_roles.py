"""The least-privilege roles of deploy/postgres-roles.sql and postgres-catalog-grants.sql, on
the run's real Postgres: a catalog made by the owner, then used as ``replicator_worker`` (a
table created, rows loaded, checksums read: rows and sequences only), which may neither create a
database nor change a catalog's schema."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app.catalog.engine import create_database
from app.client import Replicator
from app.config import Settings
from tests.integration.rig import COLUMNS, PARTITIONS, rows

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
pytestmark = pytest.mark.usefixtures("drop_created_catalogs")


def _run_sql(dsn: str, path: Path) -> None:
    engine = sa.create_engine(dsn, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            # The driver's own execute: no parameters, so '%I' in format() stays as it is.
            conn.connection.driver_connection.execute(path.read_text())  # type: ignore[union-attr]
    finally:
        engine.dispose()


def _as_worker(settings: Settings) -> Settings:
    url = make_url(settings.dsn_template.replace("{cluster}", "CLUSTER"))
    worker = url.set(username="replicator_worker", password=None)
    return settings.with_overrides(
        dsn_template=worker.render_as_string(hide_password=False).replace("CLUSTER", "{cluster}")
    )


def test_the_worker_role_uses_an_existing_catalog_and_can_do_nothing_more(
    settings: Settings, make_cluster, tmp_path: Path
) -> None:
    admin = make_url(settings.dsn_template.replace("{cluster}", "x")).set(database="postgres")
    if os.environ.get("REPLICATOR_TEST_PG_URL"):
        pytest.skip("creates server-wide roles: only on the run's own throw-away Postgres")
    with sa.create_engine(admin, isolation_level="AUTOCOMMIT").connect() as conn:
        known = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = 'replicator_worker'"))
        if known.first() is None:
            _run_sql(admin.render_as_string(hide_password=False), DEPLOY / "postgres-roles.sql")
    owner = make_cluster(backends=2)  # cluster init, as the catalog's owner
    _run_sql(owner.catalog.dsn, DEPLOY / "postgres-catalog-grants.sql")

    worker = Replicator(_as_worker(settings)).cluster(owner.name)
    assert "replicator_worker@" in worker.catalog.dsn
    worker.create_table(
        "db.t", COLUMNS, partition_by="day", partitions=PARTITIONS, distributed_by=["id"],
        buckets=2, replication_num=1,
    )  # fmt: skip
    worker.load("db.t", rows(500, seed=61), label="roles-1")
    assert sum(c.rows for c in worker.checksum("db.t")) == 500

    engine = sa.create_engine(worker.catalog.dsn)
    try:
        for ddl in ("CREATE TABLE not_allowed (i int)", "ALTER TABLE jobs ADD COLUMN no int"):
            with (
                pytest.raises(sa.exc.ProgrammingError, match=r"permission denied|must be owner"),
                engine.begin() as conn,
            ):
                conn.execute(sa.text(ddl))
    finally:
        engine.dispose()
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied to create database"):
        create_database(worker.catalog.dsn.replace(owner.name, f"{owner.name}_new"))
