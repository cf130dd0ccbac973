"""START_APPLY takes the taken snapshots a page at a time and misses none of them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.replication import applies as start
from app.replication.state import JobState
from app.replication.taskrows import TaskKind
from tests.conftest import ClusterFactory
from tests.integration.driver import Driver

pytestmark = pytest.mark.usefixtures("drop_created_catalogs")


def test_applies_start_for_every_taken_snapshot_a_page_at_a_time(
    settings: Settings, make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Driver(settings, make_cluster)
    job = d.submit()
    snapshots = d.tick(job)
    d.work(snapshots)  # every snapshot taken; the applies are the next tick's to start
    pages: list[int] = []
    real = start.snapshots_ready

    def paged(conn: sa.Connection, job_id: int, after_id: int = 0, limit: int = 2000) -> list:  # type: ignore[type-arg]
        got = real(conn, job_id, after_id, limit=3)
        pages.append(len(got))
        return got

    monkeypatch.setattr(start, "snapshots_ready", paged)
    applying = d.tick(job)

    with d.dst.catalog.engine.connect() as conn:
        snaps, applies, replicas = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE kind = :s), count(*) FILTER (WHERE kind = :a), "
                "(SELECT count(*) FROM replicas) FROM job_tasks WHERE job_id = :j"
            ),
            {"s": TaskKind.SNAPSHOT, "a": TaskKind.APPLY, "j": job.id},
        ).one()
    assert applies == replicas == 2 * snaps  # every tablet, on both target replicas
    assert pages[-1] == 0 and len(pages) == -(-snaps // 3) + 1 and max(pages) == 3
    monkeypatch.undo()
    d.work(applying)
    d.finish(job)
    assert job.state is JobState.COMMITTED
