"""A timestamptz table partitioned by the time of day, replicated to another cluster by real
workers: the type and its schema hash arrive unchanged, and exports of source and target give
equal rows with the zone intact, at the visible version and at an older one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.config import Settings
from app.replication.state import JobState
from tests.integration.rig import Rig, start_rig
from tests.integration.test_timestamps import berlin_part, events_table, tz_table


@pytest.fixture(scope="module")
def rig(
    settings: Settings, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    yield from start_rig(settings, test_env, tmp_path_factory.mktemp("xrig"), "x", bandwidth=0)


def rows_of(path: Path) -> list[tuple[int, object, str]]:
    table = pq.read_table(path)
    assert table.schema.field("ts").type == pa.timestamp("us", tz="Europe/Berlin")
    return sorted((r["id"], r["ts"], r["v"]) for r in table.to_pylist())


def test_a_timestamptz_table_replicates_and_exports_equal_on_both_sides(
    rig: Rig, tmp_path: Path
) -> None:
    tz_table(rig.src, replicas=2)
    first = events_table(300)
    rig.src.load("db.ev", first, label="ev-1")
    job = rig.replicator.replicate(f"{rig.src.name}:db.ev", rig.dst.name, create_target=True)
    assert job.wait(120).state is JobState.COMMITTED, job.message

    src_info, dst_info = rig.src.table("db.ev"), rig.dst.table("db.ev")
    assert dst_info.columns == src_info.columns
    assert dst_info.columns[1].type == "timestamptz(Europe/Berlin)"
    assert dst_info.schema_hash == src_info.schema_hash
    bounds = [(p.name, p.lower, p.upper) for p in rig.dst.partitions("db.ev")]
    assert bounds == [(p.name, p.lower, p.upper) for p in rig.src.partitions("db.ev")]

    rig.src.load("db.ev", events_table(120, start_id=1000), label="ev-2")
    again = rig.replicator.replicate(f"{rig.src.name}:db.ev", rig.dst.name).wait(120)
    assert again.state is JobState.COMMITTED, again.message

    rig.src.export("db.ev", tmp_path / "src.parquet")
    rig.dst.export("db.ev", tmp_path / "dst.parquet")
    both = rows_of(tmp_path / "src.parquet")
    assert both == rows_of(tmp_path / "dst.parquet")
    assert len(both) == 420
    sent = {r["id"]: r["ts"] for r in first.to_pylist()}
    assert all(ts == sent[i] for i, ts, _v in both if i in sent)  # the same instants

    # The older version, from the rowsets the incremental job shipped, equals the source's.
    for side in ("src", "dst"):
        handle = rig.src if side == "src" else rig.dst
        handle.export("db.ev", tmp_path / f"{side}-v2.parquet", version=2, partitions=["day"])
    old = rows_of(tmp_path / "src-v2.parquet")
    assert old == rows_of(tmp_path / "dst-v2.parquet")
    assert {i for i, _ts, _v in old} == {i for i, ts in sent.items() if berlin_part(ts) == "day"}
    assert all(berlin_part(ts) == "day" for _i, ts, _v in old)  # type: ignore[arg-type]
