"""app.catalog.engine: a pooled catalog connection is pinged on checkout only after it sat idle
(PING_IDLE_SEC), so a connection that Postgres closed meanwhile is replaced without an error,
and a connection used moments ago costs no extra round trip."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.catalog import engine as eng
from tests.conftest import ClusterFactory


def _backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def _kill(engine: sa.Engine, pid: int) -> None:
    admin = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    admin.dispose()


def test_an_idle_connection_closed_by_postgres_is_replaced(
    make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_cluster(backends=1).catalog.engine
    first = _backend_pid(engine)
    _kill(engine, first)
    monkeypatch.setattr(eng, "PING_IDLE_SEC", 0.0)  # every checkout counts as idle
    assert _backend_pid(engine) != first  # the ping found it dead: a new connection, no error


def test_only_a_connection_idle_for_a_while_is_pinged(
    make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_cluster(backends=1).catalog.engine
    pings: list[object] = []
    real = eng._ping
    monkeypatch.setattr(eng, "_ping", lambda c: (pings.append(c), real(c)))
    _backend_pid(engine)  # a new connection: not pinged
    for _ in range(5):
        _backend_pid(engine)  # used moments ago: not pinged
    assert pings == []
    monkeypatch.setattr(eng, "PING_IDLE_SEC", 0.0)
    _backend_pid(engine)
    assert len(pings) == 1
