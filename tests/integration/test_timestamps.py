"""timestamptz and time-of-day partition bounds on a real catalog: loads from Parquet and CSV,
routing by the time of day, reading back in the column's zone, and the refusals of a load that
would drop or guess a zone (through the real CLI)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import zoneinfo
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from app.client import ClusterHandle

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
# One Berlin day cut at 06:00 and 18:00; bounds without an offset are read in the column's zone.
TZ_PARTITIONS = [
    ("night", "2026-01-01T00:00:00", "2026-01-01T06:00:00"),
    ("day", "2026-01-01T06:00:00", "2026-01-01T18:00:00+01:00"),
    ("evening", "2026-01-01T18:00:00", "2026-01-02T00:00:00"),
]


def berlin_part(when: dt.datetime) -> str:
    hour = when.astimezone(BERLIN).hour
    return "night" if hour < 6 else "day" if hour < 18 else "evening"


def tz_table(handle: ClusterHandle, name: str = "db.ev", replicas: int = 1) -> None:
    handle.create_table(
        name,
        ["id:int64:not null", "ts:timestamptz(Europe/Berlin)", "v:string"],
        partition_by="ts",
        partitions=TZ_PARTITIONS,
        distributed_by=["id"],
        buckets=3,
        replication_num=replicas,
    )


def events(n: int, start_id: int = 0) -> list[dt.datetime]:
    """``n`` instants across the Berlin day, in New York time, with the edges of the partitions
    (05:59:59.999999 and 06:00 Berlin) among them."""
    first = dt.datetime(2026, 1, 1, tzinfo=BERLIN)
    edges = [first + dt.timedelta(hours=6, microseconds=-1), first + dt.timedelta(hours=6)]
    step = dt.timedelta(seconds=86399) / n
    spread = [first + step * i + dt.timedelta(microseconds=start_id) for i in range(n - 2)]
    return [t.astimezone(NEW_YORK) for t in edges + spread]


def events_table(n: int, start_id: int = 0) -> pa.Table:
    when = events(n, start_id)
    return pa.table(
        {
            "id": pa.array(range(start_id, start_id + n), pa.int64()),
            "ts": pa.array(when, pa.timestamp("us", tz="America/New_York")),
            "v": [f"v{i}" for i in range(start_id, start_id + n)],
        }
    )


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frontends.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_zoned_rows_route_by_time_of_day_and_read_back_in_the_column_zone(
    make_cluster: Any, tmp_path: Path
) -> None:
    handle = make_cluster(backends=2)
    tz_table(handle)
    source = events_table(200)
    pq.write_table(source, tmp_path / "ev.parquet")

    res = handle.load("db.ev", str(tmp_path / "ev.parquet"), label="ev-1")

    assert res.rows == 200
    sent = dict(zip(source["id"].to_pylist(), source["ts"].to_pylist(), strict=True))
    for part in ("night", "day", "evening"):
        got = handle.scan("db.ev", [part])
        assert got.schema.field("ts").type == pa.timestamp("us", tz="Europe/Berlin")
        for row in got.to_pylist():
            assert row["ts"] == sent[row["id"]]  # the same instant
            assert row["ts"].tzinfo.key == "Europe/Berlin"  # type: ignore[union-attr]
            assert berlin_part(row["ts"]) == part
    edges = {r["id"]: p for p in ("night", "day") for r in handle.scan("db.ev", [p]).to_pylist()}
    assert (edges[0], edges[1]) == ("night", "day")  # 05:59:59.999999 and 06:00:00 Berlin


def test_naive_datetime_bounds_with_a_time_of_day_route_rows(make_cluster: Any) -> None:
    handle = make_cluster(backends=1)
    handle.create_table(
        "db.shifts",
        ["id:int64", "at:timestamp"],
        partition_by="at",
        partitions=[
            ("early", "2026-01-01T00:00:00", "2026-01-01T06:00:00"),
            ("late", "2026-01-01T06:00:00", "2026-01-01T12:30:00"),
        ],
    )
    at = [
        dt.datetime(2026, 1, 1, 5, 59, 59),
        dt.datetime(2026, 1, 1, 6),
        dt.datetime(2026, 1, 1, 12, 29),
    ]
    handle.load("db.shifts", pa.table({"id": [1, 2, 3], "at": at}), label="s1")
    assert handle.scan("db.shifts", ["early"])["id"].to_pylist() == [1]
    assert sorted(handle.scan("db.shifts", ["late"])["id"].to_pylist()) == [2, 3]
    assert handle.scan("db.shifts", ["late"]).schema.field("at").type == pa.timestamp("us")


def test_the_cli_refuses_a_zone_a_column_cannot_keep_or_would_have_to_guess(
    make_cluster: Any, tmp_path: Path, test_env: dict[str, str]
) -> None:
    handle = make_cluster(backends=1)
    handle.create_table("db.naive", ["id:int64", "ts:datetime", "v:string"])
    tz_table(handle)
    pq.write_table(events_table(4), tmp_path / "zoned.parquet")
    naive = pa.table(
        {"id": [1], "ts": pa.array([dt.datetime(2026, 1, 1, 7)], pa.timestamp("us")), "v": ["a"]}
    )
    pq.write_table(naive, tmp_path / "naive.parquet")
    (tmp_path / "no_offset.csv").write_text("id,ts,v\n1,2026-01-01T07:00:00,a\n")
    (tmp_path / "offset.csv").write_text("id,ts,v\n1,2026-01-01T07:00:00+01:00,a\n")
    name = handle.name

    dropped = one_error_line(
        cli(test_env, "load", name, "db.naive", str(tmp_path / "zoned.parquet"), "--label", "a")
    )
    assert "column 'ts' is a timestamp without time zone" in dropped
    assert "zone America/New_York" in dropped and "declare the column timestamptz" in dropped
    guessed = one_error_line(
        cli(test_env, "load", name, "db.ev", str(tmp_path / "naive.parquet"), "--label", "b")
    )
    assert "column 'ts' is timestamptz" in guessed and "have no time zone" in guessed
    no_offset = one_error_line(
        cli(test_env, "load", name, "db.ev", str(tmp_path / "no_offset.csv"), "--label", "c")
    )
    assert "needs an offset on every value" in no_offset
    offset = one_error_line(
        cli(test_env, "load", name, "db.naive", str(tmp_path / "offset.csv"), "--label", "d")
    )
    assert "declare the column timestamptz" in offset
    assert handle.scan("db.naive").num_rows == 0 and handle.scan("db.ev").num_rows == 0


def test_the_cli_creates_time_of_day_partitions_and_loads_a_csv_with_offsets(
    make_cluster: Any, tmp_path: Path, test_env: dict[str, str]
) -> None:
    handle = make_cluster(backends=1)
    specs = [f"{name}:{lower}:{upper}" for name, lower, upper in TZ_PARTITIONS]
    create = ["table", "create", handle.name, "db.ev", "-c", "id:int64", "-c", "v:string"]
    create += ["-c", "ts:timestamptz(Europe/Berlin)", "--partition-by", "ts"]
    res = cli(test_env, *create, *(arg for spec in specs for arg in ("-p", spec)))
    assert res.returncode == 0, res.stderr
    assert [(p.name, p.lower) for p in handle.partitions("db.ev")] == [
        ("night", "2025-12-31T23:00:00+00:00"),
        ("day", "2026-01-01T05:00:00+00:00"),
        ("evening", "2026-01-01T17:00:00+00:00"),
    ]
    (tmp_path / "ev.csv").write_text(
        "id,ts,v\n1,2026-01-01T05:30:00+01:00,a\n2,2026-01-01T05:30:00Z,b\n3,2026-01-01T17:00:00Z,c\n"
    )
    res = cli(test_env, "load", handle.name, "db.ev", str(tmp_path / "ev.csv"), "--label", "csv")
    assert res.returncode == 0, res.stderr
    parts = {p: handle.scan("db.ev", [p])["id"].to_pylist() for p in ("night", "day", "evening")}
    assert parts == {"night": [1], "day": [2], "evening": [3]}  # 05:30, 06:30, 18:00 in Berlin
