"""Replication end to end: real Postgres, a private Redis, and separate worker processes for two
source backends, two target backends and the coordinator."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.errors import (
    LabelConflict,
    NotFound,
    SchemaMismatch,
    TableBusy,
    TargetDiverged,
    TransferRefused,
    VersionConflict,
)
from app.replication.state import JobState
from app.replication.taskrows import TaskKind, TaskState
from app.storage.checksum import FileMeta
from app.storage.rowsets import RowsetState
from app.transfer import tls
from app.transfer.client import Downloader
from tests.harness import wait_until
from tests.integration.rig import COLUMNS, PARTITIONS, Rig, rows, start_rig


@pytest.fixture(scope="module")
def rig(
    settings: Settings, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    # 8 MB/s per apply process: small tables are unaffected, the big one takes seconds to copy.
    yield from start_rig(settings, test_env, tmp_path_factory.mktemp("rig"), "r", bandwidth=8.0)


def _job_rows(rig: Rig, job_id: int, kind: str) -> list[sa.Row[tuple[object, ...]]]:
    with rig.dst.catalog.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT * FROM job_tasks WHERE job_id = :j AND kind = :k ORDER BY id"),
                {"j": job_id, "k": kind},
            )
        )


def test_a_full_replication_makes_the_target_equal_to_the_source(rig: Rig) -> None:
    table = rig.make_tables("full", buckets=8, src_replicas=2, dst_replicas=2)
    rig.src.load(table, rows(20_000, seed=1), label="full-1")
    rig.src.load(table, rows(5_000, seed=2), label="full-2")

    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)

    assert job.state is JobState.COMMITTED, job.message
    assert rig.content(rig.dst, table) == rig.content(rig.src, table)
    assert all(version == 3 for _p, version, *_ in rig.content(rig.dst, table))
    assert rig.missing_replica_files(rig.dst, table) == []
    applies = _job_rows(rig, job.id, TaskKind.APPLY)
    assert len(applies) == 4 * 8 * 2  # every tablet, on both target replicas
    assert all(not a.incremental for a in applies)
    # The files are small: they crossed in batch requests, each file once per target replica.
    files = sum(len(r["files"]) for a in applies for r in a.manifest["rowsets"])
    log = rig.workers.procs[f"transfer.{rig.src.name}"].log.read_text()
    batched = re.findall(rf"batch for job {job.id}: (\d+) of (\d+) files", log)
    assert sum(int(n) for n, _ in batched) == files == 4 * 8 * 2 * 2
    assert 4 * len(batched) <= files  # a request per apply message and source, not per file
    assert rig.staged_files(rig.dst) == []
    owner = f"job:{rig.dst.name}:{job.id}"
    assert rig.count(rig.src, "SELECT count(*) FROM holds WHERE owner = :o", o=owner) == 0


def test_an_incremental_replication_ships_only_the_new_rowsets(rig: Rig) -> None:
    table = rig.make_tables("incr", buckets=4)
    rig.src.load(table, rows(8_000, seed=3), label="incr-1")
    first = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)
    assert first.state is JobState.COMMITTED, first.message

    rig.src.load(table, rows(3_000, seed=4), label="incr-2")
    rig.src.load(table, rows(3_000, seed=5), label="incr-3")
    new_bytes = rig.count(
        rig.src,
        "SELECT coalesce(sum(r.data_size), 0) FROM rowsets r "
        "JOIN transactions t ON t.id = r.txn_id "
        "WHERE t.label IN ('incr-2', 'incr-3') AND r.state = 'VISIBLE'",
    )
    second = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)

    assert second.state is JobState.COMMITTED, second.message
    assert rig.content(rig.dst, table) == rig.content(rig.src, table)
    applies = _job_rows(rig, second.id, TaskKind.APPLY)
    assert applies and all(a.incremental for a in applies)
    # Only the two new loads travel, once to each of the two target replicas.
    assert sum(a.bytes_done for a in applies) == 2 * new_bytes
    assert second.progress.bytes_done == 2 * new_bytes
    assert rig.missing_replica_files(rig.dst, table) == []


def test_compaction_across_the_target_version_falls_back_to_a_full_snapshot(rig: Rig) -> None:
    table = rig.make_tables("fallback", buckets=4)
    rig.src.load(table, rows(6_000, seed=6), label="fb-1")
    assert (
        rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120).state
        == "COMMITTED"
    )
    rig.src.load(table, rows(2_000, seed=7), label="fb-2")
    report = rig.src.compact(table)  # merges [2..3]: the target, at 2, sits inside that range
    assert report.tablets > 0

    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)

    assert job.state is JobState.COMMITTED, job.message
    assert rig.content(rig.dst, table) == rig.content(rig.src, table)
    snaps = _job_rows(rig, job.id, TaskKind.SNAPSHOT)
    assert snaps and all(s.incremental is False for s in snaps)
    assert rig.missing_replica_files(rig.dst, table) == []
    # The rowsets the full snapshot replaced are stale, so nothing is counted twice.
    assert rig.dst.scan(table).num_rows == 8_000


def test_replicating_an_unchanged_table_ends_at_once_and_says_so(rig: Rig) -> None:
    table = rig.make_tables("same", buckets=2)
    rig.src.load(table, rows(1_000, seed=8), label="same-1")
    assert (
        rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120).state
        == "COMMITTED"
    )

    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name)

    assert job.state is JobState.COMMITTED
    assert job.message is not None and "up to date" in job.message
    assert job.tasks() == []
    assert job.progress.bytes_done == 0


def test_a_cancelled_job_leaves_the_target_exactly_as_it_was(rig: Rig) -> None:
    table = rig.make_tables("cancel", buckets=2)
    rig.src.load(table, rows(3_000, seed=9), label="cancel-1")
    assert (
        rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120).state
        == "COMMITTED"
    )
    rig.src.load(table, rows(400_000, seed=10, wide=True), label="cancel-big")
    before = rig.content(rig.dst, table)

    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name)
    wait_until(
        lambda: job.refresh().state is JobState.REPLICATING and job.progress.bytes_done > 0,
        60,
        "the job to be copying",
    )
    with pytest.raises(TableBusy, match=job.label.split("-")[0]) as refused:
        rig.dst.load(table, rows(10, seed=11), label="during-job")
    assert f"REPLICATION_db_cancel_{job.id}" in str(refused.value)
    assert job.cancel() is True
    job.wait(60)

    assert job.state is JobState.ABORTED
    assert job.message == "cancelled by user"
    assert rig.content(rig.dst, table) == before
    txn_id = job.record.txn_id
    assert (
        rig.count(
            rig.dst,
            "SELECT count(*) FROM rowsets WHERE txn_id = :t AND state = ANY(:s)",
            t=txn_id,
            s=[RowsetState.PENDING, RowsetState.VISIBLE],
        )
        == 0
    )
    # An apply still copying when the cancel landed stops at its next heartbeat.
    wait_until(lambda: rig.staged_files(rig.dst) == [], 10, "staged files to be removed")
    # ... and whatever it had installed without recording it goes too.
    wait_until(lambda: rig.unnamed_rowset_dirs(rig.dst) == [], 10, "unrecorded rowsets to go")
    open_tasks = rig.count(
        rig.dst,
        "SELECT count(*) FROM job_tasks WHERE job_id = :j AND state <> ALL(:s)",
        j=job.id,
        s=[TaskState.DONE, TaskState.CANCELLED],
    )
    assert open_tasks == 0  # nothing stays PENDING, QUEUED or RUNNING for ever
    owner = f"job:{rig.dst.name}:{job.id}"
    assert rig.count(rig.src, "SELECT count(*) FROM holds WHERE owner = :o", o=owner) == 0
    # The target accepts loads again once the job has ended.
    rig.dst.load(table, rows(10, seed=12), label="after-job")


def test_the_same_label_returns_the_same_job_and_other_arguments_are_refused(rig: Rig) -> None:
    table = rig.make_tables("label", buckets=2)
    rig.src.load(table, rows(500, seed=13), label="label-1")
    first = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name, label="nightly-1")
    again = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name, label="nightly-1")
    assert again.id == first.id
    jobs = rig.jobs_count()
    with pytest.raises(LabelConflict, match=r"nightly-1"):
        rig.replicator.replicate(
            f"{rig.src.name}:{table}", rig.dst.name, label="nightly-1", partitions=["p2023q1"]
        )
    assert rig.jobs_count() == jobs
    assert first.wait(120).state is JobState.COMMITTED


class TestBadInputIsRefusedWithoutMakingAJob:
    def test_unknown_source_cluster(self, rig: Rig) -> None:
        jobs = rig.jobs_count()
        with pytest.raises(NotFound, match=r"nosuch.*not initialised"):
            rig.replicator.replicate("nosuch:db.x", rig.dst.name)
        assert rig.jobs_count() == jobs

    def test_unknown_target_cluster(self, rig: Rig) -> None:
        with pytest.raises(NotFound, match=r"nosuch.*not initialised"):
            rig.replicator.replicate(f"{rig.src.name}:db.full", "nosuch")

    def test_unknown_source_table(self, rig: Rig) -> None:
        jobs = rig.jobs_count()
        with pytest.raises(NotFound, match=r"source table db.missing does not exist"):
            rig.replicator.replicate(f"{rig.src.name}:db.missing", rig.dst.name)
        assert rig.jobs_count() == jobs

    def test_schema_hash_mismatch(self, rig: Rig) -> None:
        rig.src.create_table("db.schema_a", COLUMNS, partition_by="day", partitions=PARTITIONS)
        other = [*COLUMNS[:-1], "note:int64"]
        rig.dst.create_table("db.schema_a", other, partition_by="day", partitions=PARTITIONS)
        jobs = rig.jobs_count()
        with pytest.raises(SchemaMismatch, match=r"schema hash .* note: string vs int64"):
            rig.replicator.replicate(f"{rig.src.name}:db.schema_a", rig.dst.name)
        assert rig.jobs_count() == jobs

    def test_bucket_count_mismatch(self, rig: Rig) -> None:
        rig.src.create_table(
            "db.buckets", COLUMNS, partition_by="day", partitions=PARTITIONS, buckets=4
        )
        rig.dst.create_table(
            "db.buckets", COLUMNS, partition_by="day", partitions=PARTITIONS, buckets=2
        )
        with pytest.raises(SchemaMismatch, match=r"bucket counts differ: source .* 4, target .* 2"):
            rig.replicator.replicate(f"{rig.src.name}:db.buckets", rig.dst.name)

    def test_target_ahead_of_source(self, rig: Rig) -> None:
        table = rig.make_tables("ahead", buckets=2)
        rig.src.load(table, rows(100, seed=14), label="ahead-src")
        rig.dst.load(table, rows(100, seed=15), label="ahead-dst-1")
        rig.dst.load(table, rows(100, seed=16), label="ahead-dst-2")
        before = rig.content(rig.dst, table)
        jobs = rig.jobs_count()
        with pytest.raises(VersionConflict, match=r"ahead of the source"):
            rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name)
        assert rig.jobs_count() == jobs
        assert rig.content(rig.dst, table) == before

    def test_missing_target_without_create_target(self, rig: Rig) -> None:
        rig.src.create_table("db.lonely", COLUMNS, partition_by="day", partitions=PARTITIONS)
        with pytest.raises(NotFound, match=r"create_target"):
            rig.replicator.replicate(f"{rig.src.name}:db.lonely", rig.dst.name)

    def test_the_cli_prints_one_line_and_exits_non_zero(
        self, rig: Rig, test_env: dict[str, str]
    ) -> None:
        env = dict(test_env, REPLICATOR_BROKER_URL=rig.settings.broker_url)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "frontends.cli",
                "replicate",
                f"{rig.src.name}:db.buckets",
                rig.dst.name,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().count("\n") == 0
        assert "bucket counts differ" in done.stderr


def test_create_target_builds_the_table_and_replicates_chosen_partitions(rig: Rig) -> None:
    table = "db.created"
    rig.src.create_table(
        table,
        COLUMNS,
        partition_by="day",
        partitions=PARTITIONS,
        distributed_by=["id"],
        buckets=4,
        replication_num=2,
    )
    rig.src.load(table, rows(4_000, seed=17), label="created-1")

    job = rig.replicator.replicate(
        f"{rig.src.name}:{table}",
        rig.dst.name,
        create_target=True,
        partitions=["p2023q1", "p2023q3"],
        replication_num=1,
    ).wait(120)

    assert job.state is JobState.COMMITTED, job.message
    info = rig.dst.table(table)
    assert (info.buckets, info.replication_num, info.schema_hash) == (
        4,
        1,
        rig.src.table(table).schema_hash,
    )
    src = {c[0]: c for c in rig.content(rig.src, table)}
    dst = {c[0]: c for c in rig.content(rig.dst, table)}
    assert dst["p2023q1"] == src["p2023q1"] and dst["p2023q3"] == src["p2023q3"]
    assert dst["p2023q2"][1] == 1 and dst["p2023q2"][3] == 0  # not asked for: untouched


def test_the_cli_replicates_and_shows_the_job(rig: Rig, test_env: dict[str, str]) -> None:
    table = rig.make_tables("cli", buckets=2)
    rig.src.load(table, rows(700, seed=18), label="cli-1")
    env = dict(test_env, REPLICATOR_BROKER_URL=rig.settings.broker_url)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "frontends.cli",
            "replicate",
            f"{rig.src.name}:{table}",
            rig.dst.name,
            "--wait",
            "--label",
            "cli-job",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "COMMITTED" in run.stdout
    job = rig.replicator.jobs(rig.dst.name, state="COMMITTED")[0]
    shown = subprocess.run(
        [sys.executable, "-m", "frontends.cli", "job", "show", job.ref],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    for expected in (TaskKind.SNAPSHOT, TaskKind.APPLY, "REPLICATING", "COMMITTED", "p2023q1"):
        assert expected in shown.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "frontends.cli", "jobs", "--cluster", rig.dst.name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "cli-job" in listed.stdout
    assert rig.content(rig.dst, table) == rig.content(rig.src, table)


def test_a_download_token_works_while_its_job_runs_and_not_after_a_cancel(
    rig: Rig, tmp_path: Path
) -> None:
    table = rig.make_tables("token", buckets=2)
    rig.src.load(table, rows(300_000, seed=21, wide=True), label="token-1")
    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name)
    found: list[sa.Row[tuple[object, ...]]] = []

    def a_token() -> bool:
        with rig.dst.catalog.engine.connect() as conn:
            found[:] = conn.execute(
                sa.text(
                    "SELECT src_tablet_id, manifest, transfer_token, src_backend_ids "
                    "FROM job_tasks WHERE job_id = :j AND kind = :k "
                    "AND transfer_token IS NOT NULL LIMIT 1"
                ),
                {"j": job.id, "k": TaskKind.APPLY},
            ).all()
        return bool(found)

    wait_until(a_token, 60, "apply tasks with their download token")
    tablet, manifest, token, backend_ids = found[0]
    rowset = manifest["rowsets"][0]
    meta = FileMeta.from_json(rowset["files"][0])
    source = next(b for b in rig.src.backends() if b.id == backend_ids[0])
    s = rig.settings
    downloader = Downloader(
        tls.client_context(
            s.transfer_ca_file, s.transfer_client_cert_file, s.transfer_client_key_file
        )
    )

    copies = itertools.count()

    def download() -> int:  # into a new file each time: a complete one would need no request
        args = (source.transfer_url, source.name, tablet, rowset["id"], meta, token)
        dst = tmp_path / f"copy{next(copies)}"
        return downloader.fetch_to(*args, dst).size  # type: ignore[arg-type]

    assert download() == meta.size  # the running job's token names this file: served, verified
    assert job.cancel() is True
    job.wait(60)
    assert job.state is JobState.ABORTED
    refused_at = time.monotonic()
    with pytest.raises(TransferRefused):
        while True:  # within a second of the job's end, its holds are gone and so is the token
            download()
            assert time.monotonic() - refused_at < 1.5, "the token still works after the cancel"
            time.sleep(0.1)
    with rig.dst.catalog.engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM job_tasks WHERE job_id = :j AND transfer_token <> ''"),
            {"j": job.id},
        ).scalar_one()
    assert left == 0  # forgotten once the job ended
    leaked = [p for p in rig.base.rglob("*.log") if str(token) in p.read_text(errors="replace")]
    assert leaked == [] and str(token) not in str(job.events) + (job.message or "")


def test_a_diverged_target_is_refused_and_overwritten_only_when_asked(rig: Rig) -> None:
    table = rig.make_tables("diverged", buckets=2)
    rig.src.load(table, rows(2_000, seed=31), label="diverged-1")
    first = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)
    assert first.state is JobState.COMMITTED, first.message
    rig.src.load(table, rows(2_000, seed=32), label="diverged-src-2")
    rig.dst.load(table, rows(2_000, seed=33), label="diverged-dst-2")  # written on the target
    # Both at version 3 now, with different histories: not "up to date", and not replaced.
    assert [c[1] for c in rig.content(rig.dst, table)] == [
        c[1] for c in rig.content(rig.src, table)
    ]
    before = rig.content(rig.dst, table)
    jobs = rig.jobs_count()

    with pytest.raises(TargetDiverged, match=r"p2023q1 is at version 3 epoch \d+ after a load"):
        rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name)
    assert rig.jobs_count() == jobs and rig.content(rig.dst, table) == before

    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name, overwrite=True)
    job.wait(120)
    assert job.state is JobState.COMMITTED, job.message
    assert rig.content(rig.dst, table) == rig.content(rig.src, table)
    planned = next(e for e in job.events if e.to_state == "SNAPSHOTING")
    assert "OVERWRITING partitions p2023q1" in planned.reason, planned.reason
