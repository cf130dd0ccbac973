"""Compaction, garbage collection and holds, on real catalogs and real files."""

from __future__ import annotations

import datetime as dt
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.client import ClusterHandle
from app.errors import InvalidRequest
from app.storage import gc, holds
from tests.integration.rig import replica_paths

LOADS = 4


pytestmark = pytest.mark.usefixtures("drop_created_catalogs")


def loaded_table(make_cluster: Any) -> ClusterHandle:
    """3 backends, 2 partitions x 3 buckets, 2 replicas, LOADS loads that touch every tablet."""
    handle = make_cluster(backends=3)
    handle.create_table(
        "db.t",
        ["id:int64:not null", "k:int64", "day:date", "price:decimal(12,2)", "v:string"],
        partition_by="k",
        partitions=[("p1", 0, 100), ("p2", 100, 200)],
        buckets=3,
        replication_num=2,
    )
    for i in range(LOADS):
        ids = list(range(i * 600, (i + 1) * 600))
        handle.load(
            "db.t",
            pa.table(
                {
                    "id": pa.array(ids, pa.int64()),
                    "k": pa.array([x % 200 for x in ids], pa.int64()),
                    "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=x % 30) for x in ids]),
                    "price": pa.array([f"{x}.25" for x in ids]).cast(pa.decimal128(12, 2)),
                    "v": pa.array([None if x % 7 == 0 else f"v{x}" for x in ids]),
                }
            ),
            label=f"load-{i}",
        )
    return handle


def visible(handle: ClusterHandle) -> dict[int, list[model.RowsetInfo]]:
    with handle.catalog.engine.connect() as conn:
        table = model.get_table(conn, "db.t")
        return model.visible_rowsets(conn, [t.id for t in model.list_tablets(conn, table.id)])


def rowset_rows(handle: ClusterHandle, state: str) -> list[sa.Row[Any]]:
    with handle.catalog.engine.connect() as conn:
        return conn.execute(sa.select(s.rowsets).where(s.rowsets.c.state == state)).all()


def wait_until_db_time_passes(handle: ClusterHandle, moment: Any, limit: float = 15) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        with handle.catalog.engine.connect() as conn:
            if conn.execute(sa.select(sa.func.now() > moment)).scalar_one():
                return
        time.sleep(0.1)
    raise AssertionError(f"database time never passed {moment}")


def test_compaction_keeps_the_checksum_and_merges_rowsets(make_cluster) -> None:
    handle = loaded_table(make_cluster)
    before = handle.checksum("db.t")
    rows_before = handle.scan("db.t").sort_by("id")
    assert [c.version for c in before] == [LOADS + 1, LOADS + 1]
    rowsets_before = visible(handle)
    assert len(rowsets_before) == 6
    assert all(len(rs) == LOADS for rs in rowsets_before.values())

    report = handle.compact("db.t")
    assert (report.tablets, report.rowsets_merged, report.rowsets_written) == (6, 6 * LOADS, 6)

    assert handle.checksum("db.t") == before  # rows, checksum, version and epoch
    assert handle.scan("db.t").sort_by("id").equals(rows_before)
    after = visible(handle)
    assert all(len(rs) == 1 for rs in after.values())
    for tablet_id, (merged,) in after.items():
        assert (merged.start_version, merged.end_version) == (2, LOADS + 1)
        assert merged.num_rows == sum(r.num_rows for r in rowsets_before[tablet_id])
    for p in handle.partitions("db.t"):
        assert p.visible_version == LOADS + 1
    # Nothing left to merge: a second compaction does nothing.
    assert handle.compact("db.t").tablets == 0


def test_gc_after_compaction_removes_exactly_the_stale_files(make_cluster) -> None:
    handle = loaded_table(make_cluster)
    handle.compact("db.t")
    stale = rowset_rows(handle, "STALE")
    live = rowset_rows(handle, "VISIBLE")
    stale_paths, live_paths = replica_paths(handle, stale), replica_paths(handle, live)
    assert len(stale) == 6 * LOADS and len(stale_paths) == 2 * 6 * LOADS
    assert all(p.is_file() for p in stale_paths + live_paths)  # until GC runs
    before = handle.checksum("db.t")

    report = handle.gc()
    assert report.deleted_rowsets == 6 * LOADS
    assert report.orphan_files == 0 and report.kept_by_holds == 0
    assert not any(p.exists() for p in stale_paths)
    assert not any(p.parent.exists() for p in stale_paths)
    assert all(p.is_file() for p in live_paths)
    assert len(rowset_rows(handle, "DELETED")) == 6 * LOADS
    assert handle.checksum("db.t") == before
    assert handle.gc().deleted_rowsets == 0  # a second run finds nothing


def test_a_held_rowset_survives_gc_until_its_hold_expires(make_cluster) -> None:
    handle = loaded_table(make_cluster)
    handle.compact("db.t")
    stale = sorted(rowset_rows(handle, "STALE"), key=lambda r: r.id)
    held, free = stale[: len(stale) // 2], stale[len(stale) // 2 :]
    with handle.catalog.engine.begin() as conn:
        assert holds.place(conn, [r.id for r in held], "test:job-1", lease_sec=2) == len(held)
        expires = conn.execute(sa.select(sa.func.max(s.holds.c.expires_at))).scalar_one()
    with handle.catalog.engine.connect() as conn:
        assert holds.active(conn, "test:job-1") == len(held)

    first = handle.gc()
    assert first.kept_by_holds == len(held)
    assert first.deleted_rowsets == len(free)
    assert all(p.is_file() for p in replica_paths(handle, held))
    assert not any(p.exists() for p in replica_paths(handle, free))
    assert {r.id for r in rowset_rows(handle, "STALE")} == {r.id for r in held}

    wait_until_db_time_passes(handle, expires)
    second = handle.gc()
    assert second.expired_holds == len(held)
    assert second.deleted_rowsets == len(held)
    assert second.kept_by_holds == 0
    assert not any(p.exists() for p in replica_paths(handle, held))
    assert rowset_rows(handle, "STALE") == []
    with handle.catalog.engine.connect() as conn:
        assert holds.active(conn) == 0


def test_a_released_hold_frees_its_rowsets_at_once(make_cluster) -> None:
    handle = loaded_table(make_cluster)
    handle.compact("db.t", partitions=["p1"])
    stale = rowset_rows(handle, "STALE")
    assert len(stale) == 3 * LOADS  # only p1's tablets were compacted
    with handle.catalog.engine.begin() as conn:
        holds.place(conn, [r.id for r in stale], "test:job-2", lease_sec=3600)
    assert handle.gc().deleted_rowsets == 0
    assert all(p.is_file() for p in replica_paths(handle, stale))
    with handle.catalog.engine.begin() as conn:
        assert holds.release(conn, "test:job-2") == len(stale)
    assert handle.gc().deleted_rowsets == len(stale)
    assert not any(p.exists() for p in replica_paths(handle, stale))


def test_compaction_up_to_a_version_merges_only_that_range(make_cluster) -> None:
    handle = loaded_table(make_cluster)
    before = handle.checksum("db.t")
    report = handle.compact("db.t", up_to_version=3)
    assert report.rowsets_merged == 6 * 2
    for rowsets in visible(handle).values():
        assert [(r.start_version, r.end_version) for r in rowsets] == [(2, 3), (4, 4), (5, 5)]
    assert handle.checksum("db.t") == before
    # A later full compaction merges the merged rowset with the rest.
    handle.compact("db.t")
    for rowsets in visible(handle).values():
        assert [(r.start_version, r.end_version) for r in rowsets] == [(2, LOADS + 1)]
    assert handle.checksum("db.t") == before


def test_loads_after_compaction_continue_the_versions(make_cluster) -> None:
    handle = loaded_table(make_cluster)
    handle.compact("db.t")
    res = handle.load(
        "db.t",
        [
            {"id": 10_000 + i, "k": i, "day": dt.date(2024, 3, 1), "price": "1.50", "v": "x"}
            for i in range(150)
        ],
        label="after",
    )
    assert res.versions == {"p1": LOADS + 2, "p2": LOADS + 2}
    assert sum(c.rows for c in handle.checksum("db.t")) == LOADS * 600 + 150
    handle.compact("db.t")
    for rowsets in visible(handle).values():
        assert [(r.start_version, r.end_version) for r in rowsets] == [(2, LOADS + 2)]


def test_compaction_of_an_unknown_partition_is_refused(make_cluster) -> None:
    handle = loaded_table(make_cluster)
    before = visible(handle)
    with pytest.raises(InvalidRequest, match=r"partition.*p9 not in db\.t"):
        handle.compact("db.t", partitions=["p9"])
    assert visible(handle) == before


def test_gc_removes_orphans_after_the_grace_period_and_staging_of_closed_transactions(
    make_cluster,
) -> None:
    handle = loaded_table(make_cluster)
    root = Path(handle.backends()[0].storage_root)
    tablet_id = next(iter(visible(handle)))
    orphan = root / "data" / str(tablet_id) / "0123456789abcdef0123456789abcdef" / "0.parquet"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a crash before the catalog row was written")
    staging = root / "staging" / "999999" / "rs" / "0.parquet"
    staging.parent.mkdir(parents=True)
    staging.write_bytes(b"half received")
    live_paths = replica_paths(handle, rowset_rows(handle, "VISIBLE"))
    before = handle.checksum("db.t")

    young = handle.gc()  # the orphan is younger than the default grace period
    assert young.orphan_files == 0
    assert orphan.is_file()
    # Staging belongs to open transactions only; transaction 999999 is not one.
    assert young.staging_dirs == 1 and not staging.parent.parent.exists()

    old = time.time() - 7200
    os.utime(orphan, (old, old))
    report = handle.gc()
    assert report.orphan_files == 1
    assert not orphan.parent.exists()
    assert report.staging_dirs == 0
    assert all(p.is_file() for p in live_paths)
    assert handle.checksum("db.t") == before


def test_each_backend_run_deletes_its_own_copies_even_when_runs_overlap(make_cluster) -> None:
    """The beat sends GC to each backend's queue: a run deletes that backend's copies only and
    leaves the rows STALE (the other replicas' hosts may not have run yet). Two runs at once:
    the second waits for the first's row locks instead of skipping the rows."""
    handle = loaded_table(make_cluster)
    handle.compact("db.t")
    stale = rowset_rows(handle, "STALE")
    by_backend: dict[str, list[Path]] = {}
    for p in replica_paths(handle, stale):
        root = next(b for b in handle.backends() if p.is_relative_to(b.storage_root))
        by_backend.setdefault(root.name, []).append(p)
    assert len(by_backend) >= 2
    first, second = sorted(by_backend)[:2]
    report = gc.collect(handle._cluster, backend=first)
    assert report.deleted_rowsets == len(stale)
    assert not any(p.exists() for p in by_backend[first])
    assert all(p.is_file() for p in by_backend[second])  # another host's copies: not touched
    assert len(rowset_rows(handle, "STALE")) == len(stale)  # not DELETED until they settle

    # Another backend's run holds the rows (FOR UPDATE) while this one starts.
    with ThreadPoolExecutor(1) as pool, handle.catalog.engine.begin() as conn:
        stale_rows = sa.select(s.rowsets.c.id).where(s.rowsets.c.state == "STALE")
        conn.execute(stale_rows.with_for_update())
        running = pool.submit(gc.collect, handle._cluster, backend=second)
        time.sleep(0.5)
        assert not running.done()  # it waits for the rows, it does not skip them
    assert running.result(timeout=30).deleted_rowsets == len(stale)
    assert not any(p.exists() for p in by_backend[second])
