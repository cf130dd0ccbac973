"""Column types, schema parsing, the schema hash and conforming batches to a schema (no DB)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pyarrow as pa
import pytest

from app.errors import InvalidRequest, SchemaMismatch
from app.schema import (
    ColumnDef,
    arrow_schema,
    columns_from,
    conform,
    normalize_type,
    parse_value,
    schema_hash,
)

SPECS = ["id:bigint:not null", "name:varchar", "day:date", "amount:decimal(10, 2)"]
# The hash is compared across clusters and releases: it must never drift. If this value changes,
# every existing table would look like it has another schema.
PINNED_HASH = 1910648480209836315


def test_the_same_columns_always_give_the_same_hash() -> None:
    first = schema_hash(columns_from(SPECS))
    again = schema_hash(columns_from(list(SPECS)))
    assert first == again == PINNED_HASH
    assert 0 <= first < 2**63


def test_the_schema_hash_is_the_same_in_another_process() -> None:
    code = (
        "from app.schema import columns_from, schema_hash;"
        f"print(schema_hash(columns_from({SPECS!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == PINNED_HASH


def test_type_aliases_give_the_same_hash_as_canonical_names() -> None:
    canonical = ["id:int64:not null", "name:string", "day:date", "amount:decimal(10,2)"]
    assert schema_hash(columns_from(canonical)) == schema_hash(columns_from(SPECS))
    tuples = [("a", "INT"), ("b", "Double"), ("c", "text")]
    assert [c.type for c in columns_from(tuples)] == ["int32", "float64", "string"]


def test_a_different_column_type_gives_a_different_hash() -> None:
    base = schema_hash(columns_from(["id:int64", "v:int32"]))
    assert schema_hash(columns_from(["id:int64", "v:int64"])) != base
    assert schema_hash(columns_from(["id:int64", "v:string"])) != base
    assert schema_hash(columns_from(["id:int64", "p:decimal(10,2)"])) != schema_hash(
        columns_from(["id:int64", "p:decimal(10,3)"])
    )


def test_nullability_names_and_column_order_change_the_hash() -> None:
    base = schema_hash(columns_from(["id:int64", "v:string"]))
    assert schema_hash(columns_from(["id:int64:not null", "v:string"])) != base
    assert schema_hash(columns_from(["id:int64", "w:string"])) != base
    assert schema_hash(columns_from(["v:string", "id:int64"])) != base


def test_column_specs_parse_name_type_and_not_null() -> None:
    assert ColumnDef.parse("id:int64:not null") == ColumnDef("id", "int64", False)
    assert ColumnDef.parse(" ts : timestamp ") == ColumnDef("ts", "datetime", True)
    assert ColumnDef.parse("x:int:NOT_NULL") == ColumnDef("x", "int32", False)
    cols = columns_from(SPECS)
    assert [ColumnDef.from_json(c.to_json()) for c in cols] == cols


@pytest.mark.parametrize(
    ("specs", "words"),
    [
        (["id:blob"], "unknown column type 'blob'"),
        (["id:decimal(40,2)"], "unknown column type"),
        (["id:decimal(5,6)"], "unknown column type"),
        (["id"], "NAME:TYPE"),
        (["id:int64:maybe"], "may only be 'not null'"),
        (["id:int64", "id:string"], "defined twice"),
        (["1id:int64"], "column name '1id' is not valid"),
        ([], "at least one column"),
    ],
)
def test_bad_column_specs_are_refused_with_a_clear_message(specs: list[str], words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        columns_from(specs)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_an_unknown_type_message_names_the_known_types() -> None:
    with pytest.raises(InvalidRequest) as info:
        normalize_type("varbinary")
    for name in ("int64", "string", "date", "datetime", "decimal(P,S)"):
        assert name in str(info.value)


def test_the_arrow_schema_follows_the_columns() -> None:
    schema = arrow_schema(columns_from([*SPECS, "ts:datetime", "ok:bool"]))
    assert schema.field("id").type == pa.int64() and not schema.field("id").nullable
    assert schema.field("amount").type == pa.decimal128(10, 2)
    assert schema.field("day").type == pa.date32()
    assert schema.field("ts").type == pa.timestamp("us")
    assert schema.field("ok").type == pa.bool_()


def test_conform_reorders_columns_and_casts_compatible_types() -> None:
    schema = arrow_schema(columns_from(["id:int64:not null", "v:float64", "d:date"]))
    batch = pa.record_batch(
        {
            "d": pa.array(["2024-01-02", None]),
            "v": pa.array([1, 2], pa.int32()),
            "id": pa.array([7, 8], pa.int16()),
        }
    )
    out = conform(batch, schema)
    assert out.schema == schema
    assert out.column("id").to_pylist() == [7, 8]
    assert out.column("v").to_pylist() == [1.0, 2.0]
    assert out.column("d").to_pylist() == [dt.date(2024, 1, 2), None]


def test_conform_refuses_missing_and_unexpected_columns() -> None:
    schema = arrow_schema(columns_from(["id:int64", "v:string"]))
    with pytest.raises(SchemaMismatch, match=r"missing column\(s\) v"):
        conform(pa.record_batch({"id": [1]}), schema)
    with pytest.raises(SchemaMismatch, match=r"unexpected column\(s\) w"):
        conform(pa.record_batch({"id": [1], "v": ["a"], "w": [2]}), schema)


def test_conform_refuses_values_that_do_not_convert() -> None:
    schema = arrow_schema(columns_from(["id:int64"]))
    with pytest.raises(SchemaMismatch, match="'id' holds string"):
        conform(pa.record_batch({"id": ["12", "abc"]}), schema)
    narrow = arrow_schema(columns_from(["id:int8"]))
    with pytest.raises(SchemaMismatch, match="does not convert"):
        conform(pa.record_batch({"id": pa.array([1000], pa.int64())}), narrow)


def test_conform_refuses_nulls_in_a_not_null_column() -> None:
    schema = arrow_schema(columns_from(["id:int64:not null"]))
    with pytest.raises(SchemaMismatch, match="NOT NULL but has 1 nulls"):
        conform(pa.record_batch({"id": pa.array([1, None], pa.int64())}), schema)


def test_partition_bounds_parse_by_column_type() -> None:
    assert parse_value("int64", "42") == 42
    assert parse_value("date", "2024-02-01") == "2024-02-01"
    assert parse_value("date", dt.date(2024, 2, 1)) == "2024-02-01"
    assert parse_value("datetime", "2024-02-01 10:00:00") == "2024-02-01T10:00:00"
    assert parse_value("string", "m") == "m"
    assert parse_value("int64", None) is None
    with pytest.raises(InvalidRequest, match="not a valid date"):
        parse_value("date", "2024-13-01")
    with pytest.raises(InvalidRequest, match="cannot be a partition column"):
        parse_value("float64", "1.5")
