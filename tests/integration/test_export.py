"""Export through the real CLI and the Python API, on a real catalog and real rowset files:
visible and older versions, partitions, replicas (one per tablet, a damaged one skipped), the
refusals of bad input (one line, exit 2, nothing written) and atomic output."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from app.catalog import engine as engine_module
from app.catalog import model
from app.catalog import schema as s
from app.client import ClusterHandle
from app.config import Settings
from app.errors import SourceDataGone, VersionConflict
from app.export import METADATA_KEY, kept_versions
from frontends.connect import replicator

CLUSTER = f"exp{uuid.uuid4().hex[:8]}"


def batch(start: int, n: int) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "k": pa.array([i % 200 for i in ids], pa.int64()),
            "v": [f"v{i}" for i in ids],
        }
    )


def make_table(handle: ClusterHandle, name: str) -> None:
    handle.create_table(
        name,
        ["id:int64:not null", "k:int64", "v:string"],
        partition_by="k",
        partitions=[("p1", 0, 100), ("p2", 100, 200)],
        buckets=3,
        replication_num=2,
    )


def ids(path: Path) -> list[int]:
    return sorted(pq.read_table(path)["id"].to_pylist())


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frontends.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def handle(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """db.t: two loads of 300 rows each (p1 and p2 at version 3)."""
    h = replicator(settings).cluster(CLUSTER)
    h.init()
    roots = tmp_path_factory.mktemp("export-roots")
    h.add_backend("be1", str(roots / "be1"))
    h.add_backend("be2", str(roots / "be2"))
    make_table(h, "db.t")
    h.load("db.t", batch(0, 300), label="t-1")
    h.load("db.t", batch(300, 300), label="t-2")
    yield h
    engine_module.drop_database(h.catalog.dsn)


def holds_count(handle: ClusterHandle) -> int:
    with handle.catalog.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(s.holds)).scalar_one())


def test_the_api_exports_every_row_once_at_the_visible_version(
    handle: ClusterHandle, tmp_path: Path
) -> None:
    out = tmp_path / "t.parquet"
    res = handle.export("db.t", out)

    assert (res.rows, res.path, res.bytes) == (600, str(out), out.stat().st_size)
    assert [(p.name, p.version) for p in res.partitions] == [("p1", 3), ("p2", 3)]
    assert ids(out) == list(range(600))  # two replicas per tablet, each row once
    written = pq.read_table(out)
    assert written.schema.equals(handle.table("db.t").arrow_schema)
    assert written.sort_by("id").equals(handle.scan("db.t").sort_by("id"))
    meta = json.loads(pq.read_schema(out).metadata[METADATA_KEY])
    assert meta["versions"] == {"p1": 3, "p2": 3} and meta["table"] == "db.t"
    assert holds_count(handle) == 0  # released
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_the_cli_exports_an_older_version_and_chosen_partitions(
    handle: ClusterHandle, tmp_path: Path, test_env: dict[str, str]
) -> None:
    old, p1 = tmp_path / "old.parquet", tmp_path / "p1.parquet"
    res = cli(test_env, "export", CLUSTER, "db.t", "--version", "2", "-o", str(old))
    assert res.returncode == 0, res.stderr
    assert "exported 300 rows" in res.stdout and "p1=v2, p2=v2" in res.stdout
    assert ids(old) == list(range(300))  # the first load only

    res = cli(test_env, "export", CLUSTER, "db.t", "--partition", "p1", "--output", str(p1))
    assert res.returncode == 0, res.stderr
    assert ids(p1) == [i for i in range(600) if i % 200 < 100]


def test_force_replaces_a_file_and_without_it_the_file_is_kept(
    handle: ClusterHandle, tmp_path: Path, test_env: dict[str, str]
) -> None:
    out = tmp_path / "t.parquet"
    out.write_bytes(b"old")
    res = cli(test_env, "export", CLUSTER, "db.t", "-o", str(out))
    assert res.returncode == 2 and "already exists" in res.stderr
    assert out.read_bytes() == b"old"
    handle.export("db.t", out, version=2, force=True)
    assert ids(out) == list(range(300))


def _bad_cases(d: Path) -> dict[str, tuple[list[str], str]]:
    out = str(d / "out.parquet")
    return {
        "unknown table": (["db.nosuch", "-o", out], "table db.nosuch in cluster"),
        "unknown partition": (["db.t", "-p", "p9", "-o", out], "partition(s) p9 do not exist"),
        "version above visible": (
            ["db.t", "--version", "7", "-o", out],
            "version 7 is above the visible version 3 of partition p1 of db.t",
        ),
        "version zero": (["db.t", "--version", "0", "-o", out], "version must be at least 1"),
        "missing directory": (
            ["db.t", "-o", str(d / "nowhere" / "t.parquet")],
            f"directory {d / 'nowhere'} does not exist",
        ),
        "a directory": (["db.t", "-o", str(d)], f"{d} is a directory"),
        "existing file": (["db.t", "-o", str(d / "kept.parquet")], "already exists"),
    }


def test_bad_input_prints_one_line_exits_2_and_writes_nothing(
    handle: ClusterHandle, tmp_path: Path, test_env: dict[str, str]
) -> None:
    (tmp_path / "kept.parquet").write_bytes(b"mine")
    before = sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*"))
    cases = _bad_cases(tmp_path)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = {
            name: pool.submit(cli, test_env, "export", CLUSTER, *args)
            for name, (args, _w) in cases.items()
        }
    for name, future in results.items():
        res = future.result()
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, (name, res.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, res.stderr)
        assert cases[name][1] in lines[0], (name, lines[0])
        assert res.stdout == ""
    assert sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*")) == before
    assert holds_count(handle) == 0


def test_a_version_merged_by_compaction_is_refused_naming_the_kept_ones(
    handle: ClusterHandle, tmp_path: Path
) -> None:
    make_table(handle, "db.c")
    for i in range(3):  # versions 2, 3, 4
        handle.load("db.c", batch(i * 200, 200), label=f"c-{i}")
    handle.export("db.c", tmp_path / "v3.parquet", version=3)
    assert ids(tmp_path / "v3.parquet") == list(range(400))

    handle.compact("db.c", partitions=["p1"])  # p1: versions 2..4 merged into one rowset
    with pytest.raises(VersionConflict) as info:
        handle.export("db.c", tmp_path / "again.parquet", version=3)
    assert "version 3 of partition p1 of db.c is no longer kept" in str(info.value)
    assert "exported at version 4" in str(info.value)
    assert not (tmp_path / "again.parquet").exists()
    handle.export("db.c", tmp_path / "p2.parquet", version=3, partitions=["p2"])
    assert ids(tmp_path / "p2.parquet") == [i for i in range(400) if i % 200 >= 100]


def _data_files(handle: ClusterHandle, table: str) -> list[list[Path]]:
    """Per visible rowset file: its path on each replica."""
    with handle.catalog.engine.connect() as conn:
        info = model.get_table(conn, table)
        tablets = model.list_tablets(conn, info.id)
        backends = model.list_backends(conn)
        rowsets = model.visible_rowsets(conn, [t.id for t in tablets])
    return [
        [
            Path(backends[b].storage_root, "data", str(t.id), r.id, "0.parquet")
            for b in t.backend_ids
        ]
        for t in tablets
        for r in rowsets[t.id]
    ]


def test_a_damaged_replica_is_skipped_and_a_lost_file_leaves_nothing_behind(
    handle: ClusterHandle, tmp_path: Path
) -> None:
    make_table(handle, "db.r")
    handle.load("db.r", batch(0, 400), label="r-1")
    files = _data_files(handle, "db.r")
    for replicas in files:  # the first replica of every file: same size, other bytes
        data = bytearray(replicas[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        replicas[0].write_bytes(bytes(data))
    handle.export("db.r", tmp_path / "r.parquet")
    assert ids(tmp_path / "r.parquet") == list(range(400))

    for path in files[-1]:  # one file gone on every replica
        path.unlink()
    with pytest.raises(SourceDataGone, match="no replica holds intact files"):
        handle.export("db.r", tmp_path / "r.parquet", force=True)
    assert ids(tmp_path / "r.parquet") == list(range(400))  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet"]  # no temporary file
    assert holds_count(handle) == 0


def test_kept_versions_are_the_ranges_no_merged_rowset_covers() -> None:
    assert kept_versions(4, [(2, 2), (3, 3), (4, 4)]) == [(2, 4)]
    assert kept_versions(4, [(2, 4), (3, 3)]) == [(4, 4)]
    assert kept_versions(6, [(2, 2), (3, 5), (6, 6)]) == [(2, 2), (5, 6)]
    assert kept_versions(9, [(2, 3), (4, 4), (5, 6)]) == [(3, 4), (6, 9)]
    assert kept_versions(5, []) == [(5, 5)]
