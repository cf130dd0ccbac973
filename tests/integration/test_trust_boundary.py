"""Everything that crosses from another cluster is untrusted input.

A source cluster's catalog (or a manifest written from it) names files; before this was checked,
a source file named ``../../../../<somewhere>/x`` made a COMMITTED job write that file outside
the target's storage root, with content the source chose. Each test plants such a name and
checks that the job aborts, saying which name is bad, and that nothing was written outside.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.replication.state import JobState
from app.replication.taskrows import TaskKind
from tests.conftest import ClusterFactory
from tests.integration.driver import TABLE, Driver

BAD_NAMES = ["../../../../escaped/x", "/tmp/escaped-absolute", "..", "a/b"]


@pytest.fixture
def driver(settings: Settings, make_cluster: ClusterFactory) -> Driver:
    return Driver(settings, make_cluster)


def _outside(driver: Driver) -> list[Path]:
    """Files anywhere under the test's directories that are not under a storage root."""
    roots = [Path(b.storage_root) for h in (driver.src, driver.dst) for b in h.backends()]
    base = roots[0].parents[1]
    return [
        p for p in base.rglob("*") if p.is_file() and not any(p.is_relative_to(r) for r in roots)
    ] + [p for p in (Path("/tmp/escaped-absolute"),) if p.exists()]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_source_file_name_that_leaves_the_root_aborts_the_job_at_snapshot(
    driver: Driver, bad: str
) -> None:
    before = driver.dst.checksum(TABLE)
    with driver.src.catalog.engine.begin() as conn:
        row = conn.execute(sa.text("SELECT id, files FROM rowsets LIMIT 1")).one()
        files = [dict(f, name=bad) for f in row.files]
        conn.execute(
            sa.text("UPDATE rowsets SET files = CAST(:f AS jsonb) WHERE id = :i"),
            {"f": json.dumps(files), "i": row.id},
        )

    job = driver.finish(driver.submit())

    assert job.state is JobState.ABORTED
    assert "file name" in (job.message or "") and repr(bad)[:40] in (job.message or "")
    assert _outside(driver) == []
    assert driver.dst.checksum(TABLE) == before


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_tampered_manifest_is_refused_again_where_it_lands(driver: Driver, bad: str) -> None:
    """Even if the snapshot side let a bad name through (another cluster runs its own code),
    the apply side checks it again before it opens anything."""
    before = driver.dst.checksum(TABLE)
    job = driver.submit()
    driver.work(driver.tick(job))  # plan, then the snapshots run
    with driver.dst.catalog.engine.begin() as conn:
        for task_id, manifest in conn.execute(
            sa.text("SELECT id, manifest FROM job_tasks WHERE job_id = :j AND kind = :k"),
            {"j": job.id, "k": TaskKind.SNAPSHOT},
        ).all():
            manifest["rowsets"][0]["files"][0]["name"] = bad
            conn.execute(
                sa.text("UPDATE job_tasks SET manifest = CAST(:m AS jsonb) WHERE id = :i"),
                {"m": json.dumps(manifest), "i": task_id},
            )

    job = driver.finish(job)

    assert job.state is JobState.ABORTED
    assert "file name" in (job.message or ""), job.message
    assert _outside(driver) == []
    assert driver.dst.checksum(TABLE) == before
