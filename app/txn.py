"""Transactions: PREPARE -> COMMITTED -> VISIBLE, or ABORTED.

A transaction is a labelled unit of change on one table. Commit is done by the kind's own code
(load, compaction, replication) inside one Postgres transaction that ends with ``mark_visible``;
every state change here is a compare-and-set that must touch exactly one row.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.catalog import schema as s
from app.catalog.model import TableInfo
from app.errors import LabelConflict, TableBusy, TransactionConflict, TransactionExpired
from app.storage.rowsets import RowsetState


class TxnState(StrEnum):
    """``transactions.state``: PREPARE -> COMMITTED -> VISIBLE, or PREPARE -> ABORTED.
    ``mark_visible`` goes from PREPARE to VISIBLE in one step; COMMITTED is still counted as
    open."""

    PREPARE = "PREPARE"
    COMMITTED = "COMMITTED"
    VISIBLE = "VISIBLE"
    ABORTED = "ABORTED"


OPEN_STATES = (TxnState.PREPARE, TxnState.COMMITTED)


@dataclass(frozen=True)
class Txn:
    id: int
    table_id: int
    label: str
    kind: str
    state: TxnState
    deadline: dt.datetime
    content_digest: str | None
    reason: str | None


def _txn(row: sa.Row[tuple[object, ...]]) -> Txn:
    m = row._mapping
    return Txn(
        m["id"],
        m["table_id"],
        m["label"],
        m["kind"],
        TxnState(m["state"]),
        m["deadline"],
        m["content_digest"],
        m["reason"],
    )


def find_by_label(conn: sa.Connection, db_id: int, label: str) -> Txn | None:
    row = conn.execute(
        sa.select(s.transactions).where(
            s.transactions.c.db_id == db_id,
            s.transactions.c.label == label,
            s.transactions.c.state != TxnState.ABORTED,
        )
    ).first()
    return _txn(row) if row else None


def get(conn: sa.Connection, txn_id: int) -> Txn:
    row = conn.execute(sa.select(s.transactions).where(s.transactions.c.id == txn_id)).first()
    if row is None:
        raise TransactionConflict(f"transaction {txn_id} does not exist")
    return _txn(row)


def open_replication(conn: sa.Connection, table_id: int) -> Txn | None:
    row = conn.execute(
        sa.select(s.transactions).where(
            s.transactions.c.table_id == table_id,
            s.transactions.c.kind == "REPLICATION",
            s.transactions.c.state.in_(OPEN_STATES),
        )
    ).first()
    return _txn(row) if row else None


def refuse_if_replicating(conn: sa.Connection, table: TableInfo, what: str) -> None:
    open_txn = open_replication(conn, table.id)
    if open_txn is not None:
        raise TableBusy(
            f"{what} into {table.full_name} refused: replication job {open_txn.label} "
            "has the table open; wait for it or cancel it"
        )


def begin(
    conn: sa.Connection,
    table: TableInfo,
    *,
    label: str,
    kind: str,
    timeout_sec: int,
    content_digest: str | None = None,
) -> Txn:
    """Insert a PREPARE transaction. Raises LabelConflict if the label is live in the database."""
    try:
        with conn.begin_nested():
            row = conn.execute(
                sa.insert(s.transactions)
                .values(
                    db_id=table.db_id,
                    table_id=table.id,
                    label=label,
                    kind=kind,
                    content_digest=content_digest,
                    timeout_sec=timeout_sec,
                    deadline=sa.func.now() + dt.timedelta(seconds=timeout_sec),
                )
                .returning(s.transactions)
            ).one()
    except sa.exc.IntegrityError:
        raise LabelConflict(
            f"label {label!r} is already used in database {table.db_name}"
        ) from None
    return _txn(row)


def lock_open(conn: sa.Connection, txn_id: int) -> Txn:
    """Lock a PREPARE transaction for commit; raise if it was aborted or has expired."""
    row = conn.execute(
        sa.select(s.transactions, (s.transactions.c.deadline < sa.func.now()).label("expired"))
        .where(s.transactions.c.id == txn_id)
        .with_for_update()
    ).first()
    if row is None:
        raise TransactionConflict(f"transaction {txn_id} does not exist")
    txn = _txn(row)
    if txn.state != TxnState.PREPARE:
        raise TransactionConflict(
            f"transaction {txn.label} is {txn.state}"
            + (f" ({txn.reason})" if txn.reason else "")
            + ", it cannot commit"
        )
    if row.expired:
        raise TransactionExpired(f"transaction {txn.label} passed its timeout and cannot commit")
    return txn


def mark_visible(conn: sa.Connection, txn_id: int) -> None:
    # Committed and published in one step: the catalog commit is the publish.
    _cas(conn, txn_id, TxnState.PREPARE, TxnState.VISIBLE, None)


def abort(engine_or_conn: Engine | sa.Connection, txn_id: int, reason: str) -> bool:
    """Abort a PREPARE transaction and orphan its pending rowsets. False if it was not open."""
    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.begin() as conn:
            return abort(conn, txn_id, reason)
    conn = engine_or_conn
    done = conn.execute(
        sa.update(s.transactions)
        .where(s.transactions.c.id == txn_id, s.transactions.c.state == TxnState.PREPARE)
        .values(state=TxnState.ABORTED, reason=reason, finished_at=sa.func.now())
    ).rowcount
    if done:
        conn.execute(
            sa.update(s.rowsets)
            .where(s.rowsets.c.txn_id == txn_id, s.rowsets.c.state == RowsetState.PENDING)
            .values(state=RowsetState.STALE, stale_at=sa.func.now())
        )
    return bool(done)


def abort_expired(engine: Engine) -> list[int]:
    """Abort every PREPARE transaction past its deadline (a crashed load, a stuck job)."""
    with engine.begin() as conn:
        ids = (
            conn.execute(
                sa.select(s.transactions.c.id)
                .where(
                    s.transactions.c.state == TxnState.PREPARE,
                    s.transactions.c.deadline < sa.func.now(),
                )
                .with_for_update(skip_locked=True)
            )
            .scalars()
            .all()
        )
        for txn_id in ids:
            abort(conn, txn_id, "transaction timeout reached")
    return list(ids)


def _cas(
    conn: sa.Connection, txn_id: int, expected: TxnState, new: TxnState, reason: str | None
) -> None:
    done = conn.execute(
        sa.update(s.transactions)
        .where(s.transactions.c.id == txn_id, s.transactions.c.state == expected)
        .values(state=new, reason=reason, finished_at=sa.func.now())
    ).rowcount
    if done != 1:
        raise TransactionConflict(
            f"transaction {txn_id} was not {expected}; it cannot become {new}"
        )
