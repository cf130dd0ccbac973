"""Engines per catalog DSN, safe across fork, and creation of catalog databases."""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from app.errors import AccessDenied, NotFound, ReplicatorError, StorageUnavailable

_engines: dict[str, tuple[int, Engine]] = {}
_lock = threading.Lock()

# Catalogs this process found initialised and at the head revision, and when. A submit checks
# both clusters; asking Postgres each time took a new connection and an Alembic read, about
# half of a submit's time. Trusted for READY_TTL_SEC, forgotten when this process drops one.
READY_TTL_SEC = 60.0
_ready: dict[str, float] = {}


def mark_ready(dsn: str) -> None:
    _ready[dsn] = time.monotonic()


def known_ready(dsn: str) -> bool:
    seen = _ready.get(dsn)
    return seen is not None and time.monotonic() - seen < READY_TTL_SEC


def engine_for(dsn: str) -> Engine:
    """One pooled engine per DSN per process; a forked child builds its own."""
    pid = os.getpid()
    with _lock:
        cached = _engines.get(dsn)
        if cached is not None and cached[0] == pid:
            return cached[1]
        if cached is not None:  # inherited from the parent: never reuse its sockets
            cached[1].dispose(close=False)
        # Worker processes run one task at a time: a small pool per catalog is plenty.
        engine = sa.create_engine(dsn, pool_size=2, max_overflow=8)
        _ping_when_idle(engine)
        _engines[dsn] = (pid, engine)
        return engine


# A pooled connection is pinged on checkout only when it has sat unused this long. Pinging every
# checkout (pool_pre_ping) cost a round trip per checkout: 8 for a one-tablet snapshot task, 6
# for a tick, about 5 ms of a 30 ms task. A connection in use moments ago is almost surely alive;
# if Postgres went away in that second, the statement fails as a retryable error (the task's
# attempt, the next tick) and SQLAlchemy drops the pool's connections.
PING_IDLE_SEC = 1.0


def _ping_when_idle(engine: Engine) -> None:
    @sa.event.listens_for(engine, "checkin")
    def _returned(dbapi_conn: object, record: sa.pool.ConnectionPoolEntry) -> None:
        record.info["returned_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _maybe_ping(dbapi_conn: object, record: sa.pool.ConnectionPoolEntry, proxy: object) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < PING_IDLE_SEC:
            return  # new (just connected) or recently used
        try:
            _ping(dbapi_conn)
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise sa.exc.DisconnectionError(f"stale catalog connection: {exc}") from exc


def _ping(dbapi_conn: Any) -> None:
    with dbapi_conn.cursor() as cur:
        cur.execute("SELECT 1")
    dbapi_conn.rollback()


def cached_dsns() -> set[str]:
    """DSNs this process has a pooled engine for (tests use it to drop what they created)."""
    with _lock:
        return set(_engines)


_scan_engines: dict[str, tuple[int, Engine]] = {}


def scan_engine(dsn: str) -> Engine:
    """An engine without a pool, for short periodic looks at many catalogs."""
    pid = os.getpid()
    with _lock:
        cached = _scan_engines.get(dsn)
        if cached is None or cached[0] != pid:
            cached = (pid, sa.create_engine(dsn, poolclass=sa.pool.NullPool))
            _scan_engines[dsn] = cached
        return cached[1]


def dispose_all() -> None:
    with _lock:
        for _pid, engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()


# Postgres refusing who we are (SQLSTATE class 28), not failing to answer: retrying cannot help.
_LOGIN_REFUSED = re.compile(
    r"password authentication failed|authentication failed|role \".*\" does not exist|"
    r"no pg_hba\.conf entry|no password supplied|permission denied for database",
    re.IGNORECASE,
)


def one_line(exc: object) -> str:
    """An error's text on one line (Postgres and psycopg messages span several)."""
    return " ".join(str(exc).split())


def login_refused(exc: sa.exc.DBAPIError) -> bool:
    """Whether Postgres refused the login (bad user, password or pg_hba rule)."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate.startswith("28") or bool(_LOGIN_REFUSED.search(str(exc.orig)))


def unreachable(exc: sa.exc.DBAPIError, what: str) -> ReplicatorError:
    """The error for a failed connection to Postgres: AccessDenied (fix the settings) when the
    login was refused, otherwise StorageUnavailable (try again later)."""
    if login_refused(exc):
        return AccessDenied(
            f"Postgres refused the login {what}: {one_line(exc.orig)}; check the user and "
            "password in the cluster's DSN (dsn_template, REPLICATOR_PG_URL)"
        )
    return StorageUnavailable(f"cannot reach Postgres {what}: {one_line(exc.orig)}")


def _admin_engine(dsn: str) -> tuple[Engine, str]:
    url = make_url(dsn)
    name = url.database
    if not name:
        raise NotFound(f"catalog DSN {dsn!r} names no database")
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    return admin, name


def database_exists(dsn: str) -> bool:
    admin, name = _admin_engine(dsn)
    try:
        with admin.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            return found is not None
    except sa.exc.OperationalError as exc:
        raise unreachable(exc, f"for {name}") from exc
    finally:
        admin.dispose()


def create_database(dsn: str) -> bool:
    """Create the catalog database if missing. Returns True when it was created."""
    admin, name = _admin_engine(dsn)
    try:
        with admin.connect() as conn:
            # Serialize concurrent `cluster init` of the same name.
            conn.execute(sa.text("SELECT pg_advisory_lock(hashtext(:n))"), {"n": name})
            try:
                exists = conn.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first()
                if exists:
                    return False
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                return True
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:n))"), {"n": name})
    except sa.exc.OperationalError as exc:
        raise unreachable(exc, f"to create {name}") from exc
    finally:
        admin.dispose()


def drop_database(dsn: str) -> None:
    admin, name = _admin_engine(dsn)
    _ready.pop(dsn, None)
    with _lock:
        cached = _engines.pop(dsn, None)
    if cached is not None:
        cached[1].dispose()
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def discover_clusters(dsn_template: str, explicit: list[str]) -> list[str]:
    """Cluster names: those configured explicitly plus every database the DSN template matches."""
    names = set(explicit)
    url = make_url(dsn_template.replace("{cluster}", "x"))
    db_template = make_url(dsn_template.replace("{cluster}", "CLUSTERNAME")).database or ""
    prefix, _, suffix = db_template.partition("CLUSTERNAME")
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for (datname,) in conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                {"p": prefix.replace("_", r"\_") + "%" + suffix.replace("_", r"\_")},
            ):
                name = datname[len(prefix) : len(datname) - len(suffix) or None]
                if name:
                    names.add(name)
    finally:
        admin.dispose()
    return sorted(names)
