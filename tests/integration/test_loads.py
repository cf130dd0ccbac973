"""Loads: labels, concurrency, crashes, input formats, overwrite and streaming.

Real Postgres catalogs and real files under the backends' storage roots; nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from app import txn as txns
from app.catalog import schema as s
from app.client import ClusterHandle
from app.config import Settings
from app.errors import LabelConflict, RowsOutsidePartitions
from app.rowhash import ContentChecksum
from app.storage import sinks
from app.storage.load import Loader
from app.storage.rowsets import RowsetState
from frontends.connect import replicator
from tests.integration.rig import replica_paths

CRASH_SCRIPT = Path(__file__).with_name("crash_load.py")


pytestmark = pytest.mark.usefixtures("drop_created_catalogs")

# -- helpers -------------------------------------------------------------------------------


def two_partition_table(handle: ClusterHandle, name: str = "db.t", buckets: int = 2) -> None:
    handle.create_table(
        name,
        ["id:int64:not null", "k:int64", "v:string"],
        partition_by="k",
        partitions=[("p1", 0, 100), ("p2", 100, 200)],
        buckets=buckets,
        replication_num=1,
    )


def rows(start: int, n: int) -> pa.Table:
    """n rows with ids from ``start``, spread over both partitions of two_partition_table."""
    ids = list(range(start, start + n))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "k": pa.array([i % 200 for i in ids], pa.int64()),
            "v": pa.array([f"v{i}" for i in ids]),
        }
    )


def expected_checksums(
    data: pa.Table, bounds: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, str]]:
    out = {}
    for name, (lo, hi) in bounds.items():
        part = data.filter(pc.and_(pc.greater_equal(data["k"], lo), pc.less(data["k"], hi)))
        c = ContentChecksum()
        c.add(part)
        out[name] = (c.rows, c.hexdigest)
    return out


BOUNDS = {"p1": (0, 100), "p2": (100, 200)}


def versions(handle: ClusterHandle, table: str) -> dict[str, tuple[int, int]]:
    return {p.name: (p.visible_version, p.version_epoch) for p in handle.partitions(table)}


def data_files(handle: ClusterHandle) -> set[Path]:
    return {p for b in handle.backends() for p in Path(b.storage_root).rglob("*") if p.is_file()}


def rowsets_of(handle: ClusterHandle, where: Any = sa.true()) -> list[sa.Row[Any]]:
    with handle.catalog.engine.connect() as conn:
        return conn.execute(sa.select(s.rowsets).where(where).order_by(s.rowsets.c.id)).all()


def state(handle: ClusterHandle, table: str) -> tuple[Any, ...]:
    """Everything a refused request must leave untouched."""
    visible = [
        (r.id, r.state)
        for r in rowsets_of(handle)
        if r.state in (RowsetState.VISIBLE, RowsetState.PENDING)
    ]
    return (
        versions(handle, table),
        [c.content() for c in handle.checksum(table)],
        visible,
        sorted(data_files(handle)),
    )


def wait_for_db_time_past(handle: ClusterHandle, moment: dt.datetime, limit: float = 15) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        with handle.catalog.engine.connect() as conn:
            if conn.execute(sa.select(sa.func.now() > moment)).scalar_one():
                return
        time.sleep(0.1)
    raise AssertionError(f"database time never passed {moment}")


# -- idempotent labels -------------------------------------------------------------------


def test_the_same_label_twice_loads_once(make_cluster, tmp_path: Path) -> None:
    handle = make_cluster(backends=2)
    two_partition_table(handle)
    data = rows(0, 400)
    pq.write_table(data, tmp_path / "a.parquet")
    first = handle.load("db.t", tmp_path / "a.parquet", label="batch-1")
    assert not first.already_loaded
    assert first.versions == {"p1": 2, "p2": 2} and first.rows == 400
    before = state(handle, "db.t")

    # The same data again, even in another form, is recognised and does nothing.
    again = handle.load("db.t", data.to_pylist(), label="batch-1")
    assert again.already_loaded
    assert again.txn_id == first.txn_id
    assert again.versions == {} and again.files == 0
    assert state(handle, "db.t") == before
    assert [(v[0]) for v in versions(handle, "db.t").values()] == [2, 2]
    assert sum(c.rows for c in handle.checksum("db.t")) == 400


def test_the_same_label_with_other_data_is_refused_and_changes_nothing(make_cluster) -> None:
    handle = make_cluster(backends=2)
    two_partition_table(handle)
    two_partition_table(handle, "db.other")
    handle.load("db.t", rows(0, 300), label="batch-1")
    before = state(handle, "db.t")
    with handle.catalog.engine.connect() as conn:
        txn_count = conn.execute(
            sa.select(sa.func.count()).select_from(s.transactions)
        ).scalar_one()

    with pytest.raises(LabelConflict, match="label 'batch-1' was already used to load other data"):
        handle.load("db.t", rows(0, 301), label="batch-1")
    with pytest.raises(LabelConflict, match="already used"):  # same rows, but as an overwrite
        handle.load("db.t", rows(0, 300), label="batch-1", overwrite=True)
    with pytest.raises(LabelConflict, match="already used"):  # labels are per database
        handle.load("db.other", rows(0, 300), label="batch-1")

    assert state(handle, "db.t") == before
    assert [v for v, _epoch in versions(handle, "db.other").values()] == [1, 1]
    with handle.catalog.engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(s.transactions)).scalar_one()
            == txn_count
        )


def test_a_label_is_free_again_after_its_load_failed(make_cluster) -> None:
    handle = make_cluster(backends=1)
    two_partition_table(handle)
    bad = rows(0, 10).set_column(1, "k", pa.array([500] * 10, pa.int64()))
    with pytest.raises(RowsOutsidePartitions):
        handle.load("db.t", bad, label="retry-me")
    res = handle.load("db.t", rows(0, 10), label="retry-me")
    assert res.versions == {"p1": 2}
    assert handle.checksum("db.t", ["p1"])[0].rows == 10


# -- concurrency -------------------------------------------------------------------------

_barrier: Any = None


def _init_worker(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


def _load_in_process(
    settings: Settings, cluster: str, table: str, start: int, n: int, label: str
) -> Any:
    _barrier.wait(timeout=30)  # every process starts its load at the same moment
    try:
        res = replicator(settings).cluster(cluster).load(table, rows(start, n), label=label)
    except LabelConflict as exc:
        return ("conflict", str(exc))
    return ("loaded", res.already_loaded, res.versions, res.rows)


def run_in_processes(calls: list[tuple[Any, ...]]) -> list[Any]:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(calls))
    with ProcessPoolExecutor(
        len(calls), mp_context=ctx, initializer=_init_worker, initargs=(barrier,)
    ) as pool:
        futures = [pool.submit(_load_in_process, *call) for call in calls]
        return [f.result(timeout=120) for f in futures]


def test_eight_concurrent_loads_get_consecutive_versions_and_lose_nothing(
    make_cluster, settings: Settings
) -> None:
    handle = make_cluster(backends=2)
    two_partition_table(handle)
    n = 1000
    results = run_in_processes(
        [(settings, handle.name, "db.t", i * n, n, f"concurrent-{i}") for i in range(8)]
    )
    assert all(r[0] == "loaded" and not r[1] and r[3] == n for r in results), results
    for part in ("p1", "p2"):
        assert sorted(r[2][part] for r in results) == list(range(2, 10))
    assert {name: v for name, (v, _e) in versions(handle, "db.t").items()} == {"p1": 9, "p2": 9}

    everything = rows(0, 8 * n)
    got = {c.partition: (c.rows, c.checksum) for c in handle.checksum("db.t")}
    assert got == expected_checksums(everything, BOUNDS)
    assert sorted(handle.scan("db.t")["id"].to_pylist()) == list(range(8 * n))
    # Each tablet holds one rowset per load, at distinct versions 2..9.
    by_tablet: dict[int, list[int]] = {}
    for r in rowsets_of(handle, s.rowsets.c.state == "VISIBLE"):
        assert r.start_version == r.end_version
        by_tablet.setdefault(r.tablet_id, []).append(r.start_version)
    assert len(by_tablet) == 4
    assert all(sorted(v) == list(range(2, 10)) for v in by_tablet.values())


def test_concurrent_loads_with_one_label_load_it_once(make_cluster, settings: Settings) -> None:
    handle = make_cluster(backends=1)
    two_partition_table(handle)
    results = run_in_processes([(settings, handle.name, "db.t", 0, 500, "same") for _ in range(4)])
    fresh = [r for r in results if r[0] == "loaded" and not r[1]]
    assert len(fresh) == 1, results
    assert fresh[0][2] == {"p1": 2, "p2": 2}
    assert all(r[0] == "conflict" or r[1] for r in results if r is not fresh[0])
    assert {name: v for name, (v, _e) in versions(handle, "db.t").items()} == {"p1": 2, "p2": 2}
    assert sum(c.rows for c in handle.checksum("db.t")) == 500


# -- crashes -----------------------------------------------------------------------------


def test_a_load_killed_before_commit_leaves_nothing_visible_and_gc_removes_it_after_the_timeout(
    make_cluster, test_env: dict[str, str], tmp_path: Path
) -> None:
    handle = make_cluster(backends=2)
    handle.create_table("db.t", ["id:int64", "k:int64", "v:string"], buckets=3, replication_num=2)
    handle.load("db.t", rows(0, 100), label="before")
    before = handle.checksum("db.t")
    pq.write_table(rows(1000, 600), tmp_path / "crash.parquet")

    env = {**test_env, "REPLICATOR_LOAD_TRANSACTION_TIMEOUT_SEC": "2"}
    proc = subprocess.run(
        [
            sys.executable,
            str(CRASH_SCRIPT),
            handle.name,
            "db.t",
            str(tmp_path / "crash.parquet"),
            "crashed",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["timeout_sec"] == 2 and info["rows"] == 600 and info["files"] == 3

    # Nothing of the dead load is visible, but its files are on disk, on both replicas.
    assert handle.checksum("db.t") == before
    pending = rowsets_of(handle, s.rowsets.c.txn_id == info["txn_id"])
    assert len(pending) == 3 and {r.state for r in pending} == {RowsetState.PENDING}
    paths = replica_paths(handle, pending)
    assert len(paths) == 6 and all(p.is_file() for p in paths)
    # GC must not touch a transaction that may still commit. Its 2 s may have run out already
    # on a slow machine, so it is given a minute first; then its deadline is now again.
    set_deadline = sa.update(s.transactions).where(s.transactions.c.id == info["txn_id"])
    with handle.catalog.engine.begin() as conn:
        conn.execute(set_deadline.values(deadline=sa.func.now() + dt.timedelta(seconds=60)))
        assert txns.get(conn, info["txn_id"]).state == "PREPARE"
    report = handle.gc()
    assert report.aborted_transactions == 0 and report.deleted_rowsets == 0
    assert all(p.is_file() for p in paths)
    with handle.catalog.engine.begin() as conn:
        conn.execute(set_deadline.values(deadline=sa.func.now()))
        txn = txns.get(conn, info["txn_id"])

    wait_for_db_time_past(handle, txn.deadline)
    report = handle.gc()
    assert report.aborted_transactions == 1
    assert report.deleted_rowsets == 3
    assert not any(p.exists() for p in paths)
    assert not any(p.parent.exists() for p in paths)
    with handle.catalog.engine.connect() as conn:
        txn = txns.get(conn, info["txn_id"])
    assert txn.state == "ABORTED" and "timeout" in (txn.reason or "")
    assert {r.state for r in rowsets_of(handle, s.rowsets.c.txn_id == info["txn_id"])} == {
        "DELETED"
    }
    assert handle.checksum("db.t") == before
    # The label of the dead load is free again.
    assert handle.load("db.t", rows(1000, 600), label="crashed").versions == {"t": 3}
    assert handle.checksum("db.t")[0].rows == 700


def test_gc_keeps_the_files_of_a_load_that_may_still_commit(make_cluster) -> None:
    handle = make_cluster(backends=1)
    two_partition_table(handle)
    loader = Loader(handle.catalog)
    table = handle.table("db.t")
    with handle.catalog.engine.begin() as conn:
        txn = txns.begin(conn, table, label="slow", kind="LOAD", timeout_sec=3600)
    staged = loader.stage(table, txn.id, rows(0, 200), None)
    paths = replica_paths(handle, rowsets_of(handle, s.rowsets.c.txn_id == txn.id))
    assert staged.files == 4 and len(paths) == 4

    report = handle.gc(orphan_grace_sec=0)
    assert (report.aborted_transactions, report.deleted_rowsets, report.orphan_files) == (0, 0, 0)
    assert all(p.is_file() for p in paths)
    assert [c.rows for c in handle.checksum("db.t")] == [0, 0]

    # The slow load can still commit after GC ran.
    digest = loader._digest(table, False, staged.checksum)
    assert loader.commit(table, txn.id, overwrite=False, digest=digest) == {"p1": 2, "p2": 2}
    assert sum(c.rows for c in handle.checksum("db.t")) == 200


def test_a_failed_load_leaves_no_files_and_no_versions(make_cluster) -> None:
    handle = make_cluster(backends=2)
    two_partition_table(handle)
    handle.load("db.t", rows(0, 50), label="ok")
    before = state(handle, "db.t")
    good = rows(100, 500)
    bad = rows(600, 10).set_column(1, "k", pa.array([250] * 10, pa.int64()))
    reader = pa.RecordBatchReader.from_batches(good.schema, good.to_batches() + bad.to_batches())
    with pytest.raises(RowsOutsidePartitions, match=r"10 rows fit no partition of db\.t"):
        handle.load("db.t", reader, label="half-bad")
    assert state(handle, "db.t") == before
    failed = rowsets_of(handle, s.rowsets.c.state != "VISIBLE")
    assert failed and {r.state for r in failed} == {"DELETED"}  # the good half had been staged


# -- formats, overwrite, streaming -------------------------------------------------------

RICH_COLUMNS = [
    "id:int64:not null",
    "name:string",
    "day:date",
    "amount:float64",
    "ts:datetime",
    "price:decimal(10,2)",
    "flag:bool",
]


def rich_data(n: int = 600) -> pa.Table:
    base = dt.datetime(2024, 1, 1, 8, 30, 15, 123456)
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "name": pa.array([None if i % 11 == 0 else f"name {i}" for i in range(n)]),
            "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=i % 60) for i in range(n)]),
            "amount": pa.array([i * 1.37 + 0.1 for i in range(n)], pa.float64()),
            "ts": pa.array(
                [base + dt.timedelta(seconds=i * 977) for i in range(n)], pa.timestamp("us")
            ),
            "price": pa.array([Decimal(i * 7) / 100 for i in range(n)], pa.decimal128(10, 2)),
            "flag": pa.array([None if i % 13 == 0 else i % 2 == 0 for i in range(n)]),
        }
    )


def test_parquet_csv_arrow_and_python_rows_give_equal_checksums(
    make_cluster, tmp_path: Path
) -> None:
    handle = make_cluster(backends=2)
    data = rich_data()
    pq.write_table(data, tmp_path / "in.parquet", row_group_size=200)
    pacsv.write_csv(data, tmp_path / "in.csv")
    with pa.OSFile(str(tmp_path / "in.arrow"), "wb") as f, pa.ipc.new_file(f, data.schema) as w:
        w.write_table(data, max_chunksize=250)
    with pa.OSFile(str(tmp_path / "in.arrows"), "wb") as f, pa.ipc.new_stream(f, data.schema) as w:
        w.write_table(data, max_chunksize=250)
    sources: dict[str, Any] = {
        "parquet": tmp_path / "in.parquet",
        "csv": str(tmp_path / "in.csv"),
        "arrow": tmp_path / "in.arrow",
        "stream": tmp_path / "in.arrows",
        "rows": data.to_pylist(),
        "table": data,
    }
    results = {}
    for kind, source in sources.items():
        handle.create_table(
            f"db.{kind}",
            RICH_COLUMNS,
            partition_by="day",
            partitions=[("jan", "2024-01-01", "2024-02-01"), ("feb", "2024-02-01", "2024-03-01")],
            distributed_by=["id", "name"],
            buckets=3,
        )
        res = handle.load(f"db.{kind}", source, label=f"load-{kind}")
        assert res.rows == 600 and res.versions == {"jan": 2, "feb": 2}
        results[kind] = [c.content() for c in handle.checksum(f"db.{kind}")]

    jan, feb = (
        data.filter(pc.less(data["day"], dt.date(2024, 2, 1))),
        data.filter(pc.greater_equal(data["day"], dt.date(2024, 2, 1))),
    )
    expected = []
    for name, part in (("jan", jan), ("feb", feb)):
        c = ContentChecksum()
        c.add(part)
        expected.append((name, 2, c.rows, c.hexdigest))
    for kind, got in results.items():
        assert got == expected, kind
    scanned = handle.scan("db.csv").sort_by("id")
    assert scanned.equals(data.cast(handle.table("db.csv").arrow_schema))


def test_an_overwrite_replaces_the_data_and_starts_a_new_epoch(make_cluster) -> None:
    handle = make_cluster(backends=2)
    two_partition_table(handle)
    created = versions(handle, "db.t")
    handle.load("db.t", rows(0, 300), label="a")
    after_a = versions(handle, "db.t")
    handle.load("db.t", rows(300, 300), label="b")
    after_b = versions(handle, "db.t")
    for p in ("p1", "p2"):  # normal loads keep the epoch
        assert after_a[p] == (2, created[p][1])
        assert after_b[p] == (3, created[p][1])
    old = rowsets_of(handle, s.rowsets.c.state == "VISIBLE")
    old_paths = replica_paths(handle, old)

    new = rows(5000, 120).set_column(1, "k", pa.array([i % 100 for i in range(120)], pa.int64()))
    res = handle.load("db.t", new, label="c", overwrite=True)
    assert res.versions == {"p1": 4, "p2": 4}
    after_c = versions(handle, "db.t")
    for p in ("p1", "p2"):
        assert after_c[p][0] == 4
        assert after_c[p][1] != created[p][1]
    assert sorted(handle.scan("db.t")["id"].to_pylist()) == list(range(5000, 5120))
    got = {c.partition: (c.rows, c.checksum) for c in handle.checksum("db.t")}
    assert got == expected_checksums(new, BOUNDS)
    assert got["p2"] == (0, f"{0:016x}")
    assert {r.state for r in rowsets_of(handle, s.rowsets.c.id.in_([r.id for r in old]))} == {
        "STALE"
    }

    # The replaced files stay until GC, then go.
    assert all(p.is_file() for p in old_paths)
    assert handle.gc().deleted_rowsets == len(old)
    assert not any(p.exists() for p in old_paths)
    handle.load("db.t", rows(9000, 10), label="d")
    after_d = versions(handle, "db.t")
    assert after_d["p1"] == (5, after_c["p1"][1])


def _big_table(n: int) -> pa.Table:
    ids = pa.array(range(n), pa.int64())
    return pa.table(
        {
            "id": ids,
            "x": pc.multiply(pc.cast(ids, pa.float64()), 0.5),
            "payload": pc.binary_join_element_wise(
                pc.cast(ids, pa.string()), pa.scalar("-" + "p" * 40), ""
            ),
        }
    )


def _row_groups(handle: ClusterHandle) -> list[int]:
    paths = replica_paths(handle, rowsets_of(handle, s.rowsets.c.state == "VISIBLE"))
    return [pq.ParquetFile(p).metadata.num_row_groups for p in paths]


def test_a_load_bigger_than_the_tablet_flush_threshold_streams_in_row_groups(
    make_cluster, tmp_path: Path
) -> None:
    handle = make_cluster(backends=1)
    handle.create_table("db.big", ["id:int64", "x:float64", "payload:string"], buckets=1)
    n = 300_000
    data = _big_table(n)
    assert data.nbytes > sinks.FLUSH_TABLET_BYTES  # really above the threshold
    pq.write_table(data, tmp_path / "big.parquet", row_group_size=50_000)
    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_row_groups == 6

    res = handle.load("db.big", tmp_path / "big.parquet", label="big")
    assert res.rows == n and res.files == 1
    assert _row_groups(handle)[0] >= 2  # flushed before the end, not held whole
    c = ContentChecksum()
    c.add(data)
    assert [x.content() for x in handle.checksum("db.big")] == [("big", 2, n, c.hexdigest)]


def test_a_load_bigger_than_the_total_flush_threshold_flushes_the_biggest_tablets(
    make_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shrink only the thresholds (not the data path) so a small file crosses the total limit.
    monkeypatch.setattr(sinks, "FLUSH_TABLET_BYTES", 1 << 40)
    monkeypatch.setattr(sinks, "FLUSH_TOTAL_BYTES", 2 * 1024 * 1024)
    handle = make_cluster(backends=2)
    handle.create_table("db.big", ["id:int64", "x:float64", "payload:string"], buckets=4)
    n = 150_000
    data = _big_table(n)
    pq.write_table(data, tmp_path / "big.parquet", row_group_size=30_000)
    res = handle.load("db.big", tmp_path / "big.parquet", label="big")
    assert res.rows == n and res.files == 4
    groups = _row_groups(handle)
    assert len(groups) == 4 and all(g >= 2 for g in groups)
    c = ContentChecksum()
    c.add(data)
    assert [x.content() for x in handle.checksum("db.big")] == [("big", 2, n, c.hexdigest)]
