"""app.evolve.evolve and app.schema.adapt: which schema changes are allowed, and how a batch
written under one schema reads under another."""

from __future__ import annotations

import decimal

import pyarrow as pa
import pytest

from app.catalog.model import TableInfo
from app.errors import InvalidRequest
from app.evolve import AddColumn, DropColumn, RenameColumn, WidenColumn, evolve
from app.schema import ColumnDef, adapt, columns_from, file_schema, schema_hash


def _table(*specs: str) -> TableInfo:
    cols = tuple(columns_from(list(specs)))
    return TableInfo(1, 1, "db", "t", cols, schema_hash(cols), "day", ("id",), 2, 1)


T = _table("id:int64", "day:date", "qty:int32", "price:decimal(10,2)", "note:string")


def test_a_never_altered_table_keeps_its_hash_and_gets_explicit_ids_at_its_first_change() -> None:
    assert all(c.id == 0 for c in T.columns)
    got = evolve(T, AddColumn("tag:string", "none"), next_id=6)
    assert [c.id for c in got.columns] == [1, 2, 3, 4, 5, 6]
    assert got.columns[-1] == ColumnDef("tag", "string", True, 6, "none")
    assert schema_hash(got.columns) != T.schema_hash


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (AddColumn("qty:int64"), "already has a column 'qty'"),
        (AddColumn("n:int64:not null"), "NOT NULL: give a default"),
        (AddColumn("n:int32", "9999999999"), "not a valid int32"),
        (AddColumn("n:int32", "1.5"), "not a valid int32"),
        (AddColumn("n:date", "yesterday"), "not a valid date"),
        (AddColumn("1n:int32"), "not valid"),
        (DropColumn("id"), "distributes the rows"),
        (DropColumn("day"), "partitions"),
        (DropColumn("nope"), "has no column 'nope'"),
        (WidenColumn("qty", "int16"), "not a widening"),
        (WidenColumn("qty", "int32"), "not a widening"),
        (WidenColumn("qty", "string"), "not a widening"),
        (WidenColumn("price", "decimal(11,4)"), "not a widening"),  # 7 integer digits, not 8
        (WidenColumn("id", "decimal(30,0)"), "distributes the rows"),
        (RenameColumn("qty", "note"), "already has a column 'note'"),
        (RenameColumn("qty", "a b"), "not valid"),
    ],
)
def test_a_change_that_would_lose_or_confuse_data_is_refused(change: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        evolve(T, change, next_id=6)  # type: ignore[arg-type]


def test_allowed_widenings_and_a_rename_of_the_partition_column() -> None:
    assert evolve(T, WidenColumn("qty", "bigint"), 6).columns[2].type == "int64"
    assert evolve(T, WidenColumn("price", "decimal(14,4)"), 6).columns[3].type == "decimal(14,4)"
    renamed = evolve(T, RenameColumn("day", "d"), 6)
    assert renamed.partition_column == "d" and renamed.columns[1].name == "d"
    assert renamed.columns[1].id == 2


def test_a_batch_written_before_the_changes_reads_as_the_table_is_now() -> None:
    old = pa.RecordBatch.from_pylist(
        [{"id": 1, "day": None, "qty": 7, "price": decimal.Decimal("1.25"), "note": "a"}],
        schema=file_schema(T.columns),
    )
    cols = T.columns
    table = T
    for change in (
        RenameColumn("note", "comment"),
        DropColumn("qty"),
        AddColumn("qty:int64:not null", "0"),  # a new column of the same name: new id
        WidenColumn("price", "decimal(12,2)"),
    ):
        got = evolve(table, change, next_id=1 + max(c.id or 5 for c in table.columns))
        cols = tuple(got.columns)
        table = TableInfo(1, 1, "db", "t", cols, schema_hash(cols), got.partition_column,
                          tuple(got.distribution_columns), 2, 1)  # fmt: skip
    row = adapt(old, cols).to_pylist()[0]
    assert row == {"id": 1, "day": None, "price": decimal.Decimal("1.25"), "comment": "a", "qty": 0}
    assert adapt(old, cols).schema.field("price").type == pa.decimal128(12, 2)
    # A file written under the new schema reads as it is.
    new = adapt(old, cols)
    again = pa.RecordBatch.from_arrays(new.columns, schema=file_schema(cols))
    assert adapt(again, cols).to_pylist() == new.to_pylist()
