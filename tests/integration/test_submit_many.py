"""Replicator.replicate_many: many jobs submitted at once, all or none, at a cost per batch that
does not grow with its jobs (statements counted on the real catalogs); every refusal names the
cause and records nothing. Decided at submit time: the commits run through in-process ticks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from app.catalog import schema as s
from app.client import ClusterHandle, Replicator, Request
from app.config import Settings
from app.errors import AdmissionRefused, InvalidRequest, NotFound, TableBusy
from app.replication.coordinator import Coordinator
from app.replication.state import JobState
from app.replication.work import deliver
from tests.conftest import ClusterFactory
from tests.integration.rig import create_test_table, rows


def _tables(make_cluster: ClusterFactory, n: int) -> tuple[ClusterHandle, ClusterHandle]:
    src, dst = make_cluster(backends=2), make_cluster(backends=2)
    for i in range(n):
        for handle in (src, dst):
            create_test_table(handle, f"db.t{i}", buckets=2, replication_num=1)
        src.load(f"db.t{i}", rows(40, seed=i), label=f"l{i}")
    return src, dst


def _requests(src: ClusterHandle, dst: ClusterHandle, n: int, **kw: object) -> list[Request]:
    return [Request(f"{src.name}:db.t{i}", dst.name, **kw) for i in range(n)]  # type: ignore[arg-type]


def _job_rows(dst: ClusterHandle) -> int:
    with dst.catalog.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(s.jobs)).scalar_one())


def _no_nudge(_cluster: str, _job: int) -> None:
    return None


@contextmanager
def _statements(*handles: ClusterHandle) -> Iterator[list[str]]:
    """Every statement the handles' catalog engines execute meanwhile."""
    seen: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_a: object) -> None:
        seen.append(statement)

    engines = {id(h.catalog.engine): h.catalog.engine for h in handles}.values()
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", count)


def test_a_batch_records_every_job_in_order_and_each_commits(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _tables(make_cluster, 4)
    shared = settings.with_overrides(transfer_mode="shared")  # the applies run in this process
    jobs = Replicator(shared, _no_nudge).replicate_many(_requests(src, dst, 4))
    assert [j.record.src for j in jobs] == [f"{src.name}:db.t{i}" for i in range(4)]
    assert [j.state for j in jobs] == [JobState.INITIALIZING] * 4
    assert len({j.id for j in jobs}) == 4 and all(j.events for j in jobs)
    coordinator = Coordinator(shared, actor="test")
    for job in jobs:
        for _ in range(20):
            for m in coordinator.tick(dst.name, job.id).messages:
                deliver(shared, m, "test")
            if job.refresh().state.final:
                break
        assert job.state is JobState.COMMITTED, job.message
    for i in range(4):
        assert dst.checksum(f"db.t{i}") == src.checksum(f"db.t{i}")


def test_a_batch_costs_the_same_statements_whatever_its_size(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _tables(make_cluster, 24)
    r = Replicator(settings, _no_nudge)
    r.replicate_many(_requests(src, dst, 1, label=None))  # connections opened, caches warm
    with _statements(src, dst) as small:
        r.replicate_many([Request(f"{src.name}:db.t{i}", dst.name) for i in range(1, 4)])
    with _statements(src, dst) as large:
        r.replicate_many([Request(f"{src.name}:db.t{i}", dst.name) for i in range(4, 24)])
    # One by one, each job cost sixteen statements.
    assert len(large) == len(small) <= 16, (len(small), len(large))
    assert _job_rows(dst) == 24


def test_one_bad_request_refuses_the_batch_naming_it_and_records_nothing(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _tables(make_cluster, 3)
    r = Replicator(settings, _no_nudge)
    bad = [*_requests(src, dst, 3), Request(f"{src.name}:db.nope", dst.name)]
    with pytest.raises(NotFound, match=r"source table db\.nope does not exist"):
        r.replicate_many(bad)
    twice = [*_requests(src, dst, 2), Request(f"{src.name}:db.t1", dst.name)]
    with pytest.raises(InvalidRequest, match=r"target table 'db\.t1' more than once"):
        r.replicate_many(twice)
    other = make_cluster(backends=1)
    mixed = [*_requests(src, dst, 1), Request(f"{src.name}:db.t1", other.name)]
    with pytest.raises(InvalidRequest, match="one target cluster"):
        r.replicate_many(mixed)
    with pytest.raises(InvalidRequest, match=r"app\.client\.Request"):
        r.replicate_many([f"{src.name}:db.t0"])  # type: ignore[list-item]
    assert _job_rows(dst) == 0


def test_admission_counts_the_batch_s_own_jobs_and_refuses_all_of_it(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _tables(make_cluster, 4)
    r = Replicator(settings.with_overrides(replication_max_parallel_table_count=3), _no_nudge)
    with pytest.raises(AdmissionRefused, match=r"\(and 3 earlier in this batch\).*fewer jobs"):
        r.replicate_many(_requests(src, dst, 4))
    assert _job_rows(dst) == 0
    r.replicate_many(_requests(src, dst, 1))
    with pytest.raises(TableBusy, match=r"db\.t0 is already being replicated"):
        r.replicate_many(_requests(src, dst, 2))
    assert _job_rows(dst) == 1


def test_the_same_labels_again_return_the_same_jobs(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _tables(make_cluster, 3)
    r = Replicator(settings, _no_nudge)
    asked = [Request(f"{src.name}:db.t{i}", dst.name, label=f"batch-{i}") for i in range(3)]
    first = r.replicate_many(asked)
    again = r.replicate_many(asked)
    assert [j.id for j in again] == [j.id for j in first]
    assert _job_rows(dst) == 3
