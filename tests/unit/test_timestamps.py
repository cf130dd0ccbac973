"""timestamptz: type names, the Arrow type, bounds, and loads that would drop or guess a zone."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pyarrow as pa
import pytest

from app.cluster import PartitionSpec
from app.errors import InvalidRequest, SchemaMismatch
from app.schema import arrow_schema, columns_from, conform, normalize_type, parse_value, schema_hash

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def test_timestamptz_names_normalize_and_keep_the_zone_in_the_arrow_type() -> None:
    assert normalize_type("TIMESTAMPTZ") == "timestamptz"
    assert normalize_type("timestamp with time zone") == "timestamptz"
    assert normalize_type("timestamptz(UTC)") == "timestamptz"
    assert normalize_type("timestamptz(Europe/Berlin)") == "timestamptz(Europe/Berlin)"
    assert normalize_type("timestamp") == "datetime"  # still without a zone
    schema = arrow_schema(columns_from(["a:timestamptz", "b:timestamptz(Europe/Berlin)"]))
    assert schema.field("a").type == pa.timestamp("us", tz="UTC")
    assert schema.field("b").type == pa.timestamp("us", tz="Europe/Berlin")


def test_the_zone_is_part_of_the_schema_hash() -> None:
    naive = schema_hash(columns_from(["ts:datetime"]))
    utc = schema_hash(columns_from(["ts:timestamptz"]))
    berlin = schema_hash(columns_from(["ts:timestamptz(Europe/Berlin)"]))
    assert len({naive, utc, berlin}) == 3
    assert schema_hash(columns_from(["ts:timestamptz(UTC)"])) == utc


def test_an_unknown_zone_is_refused_in_one_line() -> None:
    with pytest.raises(InvalidRequest, match="unknown time zone 'Mars/Olympus'") as info:
        normalize_type("timestamptz(Mars/Olympus)")
    assert "\n" not in str(info.value)


def test_datetime_bounds_keep_the_time_of_day_and_refuse_a_zone() -> None:
    assert parse_value("datetime", "2026-01-01T06:00:00") == "2026-01-01T06:00:00"
    assert parse_value("datetime", "2026-01-01") == "2026-01-01T00:00:00"
    with pytest.raises(InvalidRequest, match="has a time zone but the column is a datetime"):
        parse_value("datetime", "2026-01-01T06:00:00+02:00")


def test_timestamptz_bounds_are_stored_in_utc() -> None:
    assert parse_value("timestamptz", "2026-01-01T06:00:00+02:00") == "2026-01-01T04:00:00+00:00"
    assert parse_value("timestamptz", "2026-01-01T06:00:00") == "2026-01-01T06:00:00+00:00"
    # Without an offset, a bound is read in the column's own zone (CET is +01:00 in January).
    berlin = "timestamptz(Europe/Berlin)"
    assert parse_value(berlin, "2026-01-01T06:00:00") == "2026-01-01T05:00:00+00:00"
    aware = dt.datetime(2026, 7, 1, 6, tzinfo=BERLIN)  # CEST, +02:00
    assert parse_value(berlin, aware) == "2026-07-01T04:00:00+00:00"
    # Stored bounds parse to themselves: a target created from the source's bounds matches.
    assert parse_value(berlin, "2026-07-01T04:00:00+00:00") == "2026-07-01T04:00:00+00:00"


def test_a_zoned_input_is_refused_by_a_column_without_zone() -> None:
    schema = arrow_schema(columns_from(["ts:datetime"]))
    zoned = pa.record_batch({"ts": pa.array([0], pa.timestamp("us", tz="+02:00"))})
    with pytest.raises(SchemaMismatch) as info:
        conform(zoned, schema)
    message = str(info.value)
    assert "column 'ts'" in message and "zone +02:00" in message and "timestamptz" in message
    assert "\n" not in message


@pytest.mark.parametrize("given", [pa.timestamp("us"), pa.timestamp("ms"), pa.date32()])
def test_an_input_without_zone_is_refused_by_a_timestamptz_column(given: pa.DataType) -> None:
    schema = arrow_schema(columns_from(["ts:timestamptz"]))
    with pytest.raises(SchemaMismatch, match="'ts' is timestamptz but the input's values"):
        conform(pa.record_batch({"ts": pa.array([0], given)}), schema)


def test_a_zoned_input_converts_to_the_column_zone_keeping_the_instant() -> None:
    schema = arrow_schema(columns_from(["ts:timestamptz(Europe/Berlin)"]))
    when = dt.datetime(2026, 1, 1, 6, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    out = conform(pa.record_batch({"ts": pa.array([when], pa.timestamp("s", tz="-05:00"))}), schema)
    assert out.schema.field("ts").type == pa.timestamp("us", tz="Europe/Berlin")
    value = out.column("ts")[0].as_py()
    assert value == when and value.utcoffset() == dt.timedelta(hours=1)


def test_partition_specs_take_bounds_with_a_time_of_day() -> None:
    spec = PartitionSpec.parse("night:2026-01-01T00:00:00:2026-01-01T06:00:00+01:00")
    assert spec == PartitionSpec("night", "2026-01-01T00:00:00", "2026-01-01T06:00:00+01:00")
    assert PartitionSpec.parse("p:2026-01-01 06:00:") == PartitionSpec("p", "2026-01-01 06:00")
    assert PartitionSpec.parse("p1:0:100") == PartitionSpec("p1", "0", "100")
    assert PartitionSpec.parse("p:2024-01-01:") == PartitionSpec("p", "2024-01-01", None)
    for bad in ("x:a:b:c", "p1:0", ":1:2"):
        with pytest.raises(InvalidRequest, match="must be written NAME:LOWER:UPPER"):
            PartitionSpec.parse(bad)
