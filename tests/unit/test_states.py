"""Rowset and transaction states are spelled once, as the strings the catalog stores."""

from __future__ import annotations

from app import txn as txns
from app.catalog import schema as s
from app.storage.rowsets import RowsetState
from app.txn import TxnState


def test_rowset_states_are_the_catalog_strings() -> None:
    assert [str(x) for x in RowsetState] == ["PENDING", "VISIBLE", "STALE", "DELETED"]
    assert RowsetState.VISIBLE == "VISIBLE" and f"{RowsetState.STALE}" == "STALE"
    assert s.rowsets.c.state.server_default.arg == RowsetState.PENDING


def test_transaction_states_are_the_catalog_strings() -> None:
    assert [str(x) for x in TxnState] == ["PREPARE", "COMMITTED", "VISIBLE", "ABORTED"]
    assert txns.OPEN_STATES == ("PREPARE", "COMMITTED")
    assert s.transactions.c.state.server_default.arg == TxnState.PREPARE
