"""replicate --dry-run (Replicator.dry_run): per partition skip, incremental, full or create,
with the bytes the job would then really move, and nothing changed in either catalog or on disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from app.client import ClusterHandle
from app.config import Settings
from app.errors import NotFound, SchemaMismatch
from app.replication.state import JobState
from app.replication.taskrows import TaskKind
from tests.conftest import ClusterFactory
from tests.integration.driver import TABLE, Driver
from tests.integration.rig import rows

REPO = Path(__file__).resolve().parents[2]


def _quarter(n: int, seed: int, start: str, end: str) -> pa.Table:
    t = rows(n, seed=seed)
    lo, hi = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    return t.filter(pc.and_(pc.greater_equal(t["day"], lo), pc.less(t["day"], hi)))


def _fingerprint(handle: ClusterHandle) -> str:
    """Every row of every catalog table, and every file under the backends' roots."""
    h = hashlib.sha256()
    with handle.catalog.engine.connect() as conn:
        names = conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        ).scalars()
        for name in list(names):
            every_row = "coalesce(string_agg(t::text, '|' ORDER BY t::text), '')"
            body = conn.execute(sa.text(f'SELECT md5({every_row}) FROM "{name}" t')).scalar_one()
            h.update(f"{name}:{body}".encode())
    for b in handle.backends():
        for p in sorted(Path(b.storage_root).rglob("*")):
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


@pytest.fixture
def d(settings: Settings, make_cluster: ClusterFactory) -> Driver:
    return Driver(settings, make_cluster)


def test_each_kind_of_partition_is_previewed_as_the_job_then_does_it(d: Driver) -> None:
    d.finish(d.submit())  # the target holds every partition at version 2
    d.src.load(TABLE, _quarter(4_000, 11, "2023-04-01", "2023-07-01"), label="q2-more")
    for i in (1, 2):
        d.src.load(TABLE, _quarter(4_000, 20 + i, "2023-07-01", "2023-10-01"), label=f"q3-{i}")
    d.src.compact(TABLE, partitions=["p2023q3"])  # the versions the target lacks are merged away
    before = (_fingerprint(d.src), _fingerprint(d.dst))

    plan = d.r.dry_run(f"{d.src.name}:{TABLE}", d.dst.name)

    assert (_fingerprint(d.src), _fingerprint(d.dst)) == before  # nothing changed
    by = {p.name: p for p in plan.partitions}
    assert list(by) == ["p2023q1", "p2023q2", "p2023q3", "p2023q4"]  # the table's order
    assert {n: (p.action, p.dst_version, p.src_version) for n, p in by.items()} == {
        "p2023q1": ("SKIP", 2, 2),
        "p2023q2": ("INCREMENTAL", 2, 3),
        "p2023q3": ("FULL", 2, 4),
        "p2023q4": ("SKIP", 2, 2),
    }
    assert "copied in full" in by["p2023q3"].note and by["p2023q1"].note == "up to date"
    assert not plan.create_table and by["p2023q2"].replicas == 2
    assert by["p2023q2"].files == 2 and by["p2023q3"].files == 2  # one rowset per tablet

    # What the job then really does: the same modes and exactly the bytes previewed.
    job = d.finish(d.submit())
    assert job.state is JobState.COMMITTED, job.message
    applies = [t for t in job.tasks() if t.kind == TaskKind.APPLY]
    moved: dict[str, int] = {}
    incremental: dict[str, set[bool]] = {}
    for t in applies:
        moved[t.partition_name] = moved.get(t.partition_name, 0) + t.bytes_done
        incremental.setdefault(t.partition_name, set()).add(bool(t.incremental))
    assert moved == {n: p.bytes_moved for n, p in by.items() if p.action != "SKIP"}
    assert incremental == {"p2023q2": {True}, "p2023q3": {False}}
    assert plan.bytes_moved == sum(t.bytes_done for t in applies) > 0
    # This link has a committed job that moved bytes now: the next preview estimates a time.
    again = d.r.dry_run(f"{d.src.name}:{TABLE}", d.dst.name)
    assert {p.action for p in again.partitions} == {"SKIP"} and again.bytes_moved == 0


def test_a_missing_target_is_previewed_as_created_and_is_not_created(d: Driver) -> None:
    before = _fingerprint(d.dst)
    plan = d.r.dry_run(
        f"{d.src.name}:{TABLE}", f"{d.dst.name}:db.fresh", create_target=True, replication_num=1
    )
    assert _fingerprint(d.dst) == before
    assert plan.create_table and {p.action for p in plan.partitions} == {"CREATE"}
    with d.src.catalog.engine.connect() as conn:
        total = conn.execute(sa.text("SELECT sum(data_size) FROM rowsets")).scalar_one()
    assert plan.bytes_moved == total and all(p.replicas == 1 for p in plan.partitions)
    assert all(p.dst_version is None for p in plan.partitions)
    with pytest.raises(NotFound, match="create_target"):
        d.r.dry_run(f"{d.src.name}:{TABLE}", f"{d.dst.name}:db.fresh")


def test_the_estimate_comes_from_this_links_committed_jobs(d: Driver) -> None:
    plan = d.r.dry_run(f"{d.src.name}:{TABLE}", d.dst.name)
    assert plan.estimate_sec is None and "no estimate" in plan.basis
    d.src.load(TABLE, rows(40_000, seed=5, wide=True), label="big")  # > 1 MiB to move
    job = d.finish(d.submit())
    d.src.load(TABLE, rows(2_000, seed=6), label="more")
    plan = d.r.dry_run(f"{d.src.name}:{TABLE}", d.dst.name)
    rec = job.record
    moved = sum(t.bytes_done for t in job.tasks() if t.kind == TaskKind.APPLY)
    took = (rec.finished_at - rec.created_at).total_seconds()  # type: ignore[operator]
    assert plan.link_bytes_per_sec == pytest.approx(moved / took, rel=1e-3)
    assert plan.estimate_sec == pytest.approx(plan.bytes_moved / (moved / took), rel=1e-3)
    assert "from the last 1 committed job " in plan.basis


def test_the_cli_prints_each_partition_and_refuses_bad_input_in_one_line(
    d: Driver, test_env: dict[str, str]
) -> None:
    d.dst.create_table("db.other", ["id:int64"], distributed_by=["id"], buckets=1)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "frontends.cli", "replicate", *args, "--dry-run"],
            env=test_env | {"COLUMNS": "200"}, cwd=REPO, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    ok = cli(f"{d.src.name}:{TABLE}", d.dst.name, "--create-target")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    for name in ("p2023q1", "p2023q2", "p2023q3", "p2023q4"):
        assert any(name in ln and "FULL" in ln and "v1 -> v2" in ln for ln in lines), ok.stdout
    assert "nothing changed" in ok.stdout and "no estimate" in ok.stdout
    bad = cli(f"{d.src.name}:{TABLE}", f"{d.dst.name}:db.other")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "schema" in bad.stderr.lower()
    with pytest.raises(SchemaMismatch):
        d.r.dry_run(f"{d.src.name}:{TABLE}", f"{d.dst.name}:db.other")
