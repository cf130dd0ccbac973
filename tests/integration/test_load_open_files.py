"""A load keeps a bounded number of files open, whatever the number of tablets it touches.

A load into 100,000 tablets kept one file open per tablet and failed with "Too many open files".
Here the limit is 2 and the load touches 8 tablets (4 partitions x 2 buckets) in many small
flushes, so files are closed early and their tablets' later rows go into further files of the
same rowset; the data must read back whole, on every replica, and replicate whole."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from app.catalog import schema as s
from app.config import Settings
from app.storage import sinks
from app.storage.checksum import checksum_file
from app.storage.rowsets import RowsetState, RowsetWriter
from tests.conftest import ClusterFactory
from tests.integration.driver import TABLE, Driver
from tests.integration.rig import rows

pytestmark = pytest.mark.usefixtures("drop_created_catalogs")


def _open_parquet_files(roots: list[str]) -> int:
    """Files under ``roots`` this process holds open now, as the kernel sees them."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        n += target.endswith(".parquet") and any(target.startswith(r) for r in roots)
    return n


def test_a_load_into_many_tablets_holds_at_most_the_limit_of_files_open(
    settings: Settings, make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinks, "MAX_OPEN_FILES", 2)
    monkeypatch.setattr(sinks, "FLUSH_TABLET_BYTES", 1)  # every part is flushed at once
    d = Driver(settings, make_cluster)
    roots = [os.path.realpath(b.storage_root) for b in d.src.backends()]
    peak = [0]
    write = RowsetWriter.write

    def watched(self: RowsetWriter, table: pa.Table) -> None:
        write(self, table)
        peak[0] = max(peak[0], _open_parquet_files(roots))

    monkeypatch.setattr(RowsetWriter, "write", watched)
    data = pa.concat_tables([rows(300, seed=100 + i) for i in range(12)])
    batches = data.to_batches(max_chunksize=300)
    assert len(batches) == 12  # 12 input batches, each touching all 8 tablets
    res = d.src.load(TABLE, pa.Table.from_batches(batches), label="many-files")
    assert 0 < peak[0] <= 2, peak[0]

    with d.src.catalog.engine.connect() as conn:
        loaded = conn.execute(sa.select(s.rowsets).where(s.rowsets.c.txn_id == res.txn_id)).all()
    assert len(loaded) == 8 and all(r.state == RowsetState.VISIBLE for r in loaded)
    assert res.files == sum(len(r.files) for r in loaded) > 8  # some rowsets have several files
    names = [[f["name"] for f in r.files] for r in loaded]
    assert all(n == [f"{i}.parquet" for i in range(len(n))] for n in names)
    assert sum(r.num_rows for r in loaded) == data.num_rows
    # Every file on every replica, as recorded (replication_num = 2).
    for r in loaded:
        for b in d.src.backends():
            base = Path(b.storage_root) / "data" / str(r.tablet_id) / r.id
            for f in r.files:
                assert checksum_file(base / f["name"]) == (f["size"], f["checksum"])

    # Multi-file rowsets replicate like any other (the apply installs each file).
    job = d.finish(d.submit())
    assert str(job.state) == "COMMITTED", job.message
    src_sums = [c.content() for c in d.src.checksum(TABLE)]
    assert [c.content() for c in d.dst.checksum(TABLE)] == src_sums
    with d.dst.catalog.engine.connect() as conn:
        files = (
            conn.execute(
                sa.select(sa.func.jsonb_array_length(s.rowsets.c.files)).where(
                    s.rowsets.c.state == RowsetState.VISIBLE
                )
            )
            .scalars()
            .all()
        )
    assert max(files) > 1


def test_a_rowset_given_no_rows_still_has_one_file(make_cluster: ClusterFactory) -> None:
    """Compaction writes a rowset even when its inputs hold no rows: one file of no rows."""
    handle = make_cluster(backends=2)
    backends = handle.backends()
    writer = RowsetWriter(7, "r0", pa.schema([("x", pa.int64())]), backends)
    metas = writer.finish()
    assert [m.name for m in metas] == ["0.parquet"]
    for b in backends:
        got = Path(b.storage_root) / "data" / "7" / "r0" / "0.parquet"
        assert checksum_file(got) == (metas[0].size, metas[0].checksum)
