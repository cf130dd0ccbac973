"""Shared fixtures: fresh catalog databases per test run, storage roots in tmp dirs.

Postgres and Redis are throw-away servers of the run's own, started from the installed binaries
(``scripts/services.sh install``) on free ports, UTF-8 whatever the machine's locale: the tests
need no service running and no port setting. To use servers of yours instead, set
``REPLICATOR_TEST_PG_URL`` (``postgresql+psycopg://user@host:port``, trust auth) and/or
``REPLICATOR_TEST_BROKER_URL`` (``redis://host:port/db``). Every run uses databases named
``olaptest_<run id>_<cluster>`` and drops them at the end, so runs never see each other's data.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.catalog.engine import dispose_all, drop_database
from app.client import ClusterHandle
from app.config import Settings
from frontends.connect import replicator
from tests.harness import PostgresServer, RedisServer, SeaweedServer

RUN_ID = uuid.uuid4().hex[:8]
# Not matched by the default template olap_{cluster}: a coordinator on this machine never
# mistakes a test run's catalogs for real clusters.
DB_PREFIX = f"olaptest_{RUN_ID}_"


def _drop_run_databases(pg_url: str) -> None:
    admin = sa.create_engine(f"{pg_url}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            names = (
                conn.execute(
                    sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                    {"p": DB_PREFIX + "%"},
                )
                .scalars()
                .all()
            )
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(Postgres URL without a database, broker URL) of this run."""
    pg_url = os.environ.get("REPLICATOR_TEST_PG_URL", "").rstrip("/")
    broker_url = os.environ.get("REPLICATOR_TEST_BROKER_URL", "")
    pg = None if pg_url else PostgresServer().init()
    redis = None if broker_url else RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield (pg_url or pg.url), (broker_url or redis.url)  # type: ignore[union-attr]
    finally:
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.destroy()


@pytest.fixture(scope="session")
def settings(servers: tuple[str, str]) -> Iterator[Settings]:
    pg_url, broker_url = servers
    yield Settings(broker_url=broker_url, dsn_template=f"{pg_url}/{DB_PREFIX}{{cluster}}")
    dispose_all()
    _drop_run_databases(pg_url)


@pytest.fixture(scope="session")
def test_env(settings: Settings) -> dict[str, str]:
    """Environment for subprocesses (CLI, workers) that must see this run's clusters."""
    env = dict(os.environ)  # a copy: workers of an object-storage test add the AWS variables
    env["REPLICATOR_DSN_TEMPLATE"] = settings.dsn_template
    env["REPLICATOR_BROKER_URL"] = settings.broker_url
    env.pop("REPLICATOR_CONFIG", None)
    return env


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real SeaweedFS with its S3 gateway, started the first time a test asks for it; its
    endpoint and keys are put in this process's environment (the AWS variables object
    storage reads), and in ``test_env`` of the workers started after that."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    server.make_bucket("olaptest")
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


_names = itertools.count(1)

ClusterFactory = Callable[..., ClusterHandle]


@pytest.fixture
def make_cluster(settings: Settings, tmp_path: Path) -> Iterator[ClusterFactory]:
    """``make_cluster(backends=3)`` → an initialised cluster with that many backends."""

    created: list[ClusterHandle] = []

    def make(backends: int = 2, name: str | None = None) -> ClusterHandle:
        cname = name or f"c{next(_names)}"
        handle = replicator(settings).cluster(cname)
        handle.init()
        created.append(handle)
        for i in range(1, backends + 1):
            handle.add_backend(f"be{i}", str(tmp_path / cname / f"be{i}"))
        return handle

    yield make
    # Every cluster is its own database: drop them at once, or a long run holds their pooled
    # connections and leaves catalogs behind for any coordinator that discovers them.
    for handle in created:
        drop_database(handle.catalog.dsn)
    dispose_all()
