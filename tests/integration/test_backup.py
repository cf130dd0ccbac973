"""Backups and restores with a real SeaweedFS repository, real workers and real Postgres.

The source cluster ``bksrc`` keeps its files in directories; the repository is a prefix of the
suite's bucket (and, once, a directory). Each restore goes into a cluster of its own, and the
restored table is compared with the source two ways: the project's per-partition checksum
(every row read back and hashed) and the rows themselves, sorted.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest

from app.backup.handle import RepositoryHandle
from app.backup.view import VIEW_CLUSTER
from app.client import ClusterHandle, Job, Replicator
from app.config import Settings
from app.errors import CorruptBackup, InvalidRequest, NotFound
from app.replication.state import JobState
from app.storage.objects import ObjectStorage
from frontends.connect import replicator as connect
from tests.harness import RedisServer, SeaweedServer, Workers, free_port
from tests.integration.rig import create_test_table, rows

BUCKET = "olaptest"
TABLE = "sales.orders"


@dataclass
class Rig:
    replicator: Replicator
    src: ClusterHandle
    base: Path
    workers: Workers
    prefix: str
    env: dict[str, str]
    clusters: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"s3://{BUCKET}/{self.prefix}/{name}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "frontends.cli", *args],
            env=self.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def repo(self, name: str) -> RepositoryHandle[Job]:
        return self.replicator.repository(self.url(name))

    def fresh(self, name: str) -> ClusterHandle:
        """A target cluster made for one restore (its workers were started with the rig)."""
        assert name in self.clusters
        return self.replicator.cluster(name)


TARGETS = ["bkdst1", "bkdst2", "bkdst3", "bkdst4", "bkdst5"]


@pytest.fixture(scope="module")
def rig(
    settings: Settings,
    test_env: dict[str, str],
    seaweed: SeaweedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("backup")
    redis = RedisServer(base / "redis").start()
    settings = settings.with_overrides(broker_url=redis.url, transfer_mode="shared")
    replicator = connect(settings)
    names = ["bksrc", *TARGETS]
    for name in names:
        handle = replicator.cluster(name)
        handle.init()
        for b in ("be1", "be2"):
            handle.add_backend(b, str(base / name / b))
    env = dict(test_env) | seaweed.env()
    env["REPLICATOR_BROKER_URL"] = redis.url
    env["REPLICATOR_TRANSFER_MODE"] = "shared"
    env["COLUMNS"] = "250"  # a backup's name in one piece in the tables the CLI prints
    env["REPLICATOR_COORDINATOR_CLUSTERS"] = ",".join(names)
    workers = Workers(env, base / "logs")
    try:
        for name in names:
            for b in ("be1", "be2"):
                workers.backend(name, b)
        workers.coordinator()
        workers.wait_ready()
        rig = Rig(replicator, replicator.cluster("bksrc"), base, workers,
                  f"bk-{uuid.uuid4().hex[:8]}", env, list(TARGETS))  # fmt: skip
        yield rig
    finally:
        workers.stop_all()
        redis.stop()


def _content(
    handle: ClusterHandle, table: str, parts: list[str] | None = None
) -> list[tuple[str, int, str]]:
    return [(c.partition, c.rows, c.checksum) for c in handle.checksum(table, parts)]


def _sorted_rows(handle: ClusterHandle, table: str, parts: list[str] | None = None) -> pa.Table:
    return handle.scan(table, parts).sort_by([("id", "ascending"), ("day", "ascending")])


def _committed(job: Job, timeout: float = 120) -> Job:
    job.wait(timeout)
    assert job.state is JobState.COMMITTED, job.message
    return job


def _objects(rig: Rig, repo: str) -> dict[str, int]:
    store = ObjectStorage(f"s3://{BUCKET}/{rig.prefix}/{repo}")
    return {p: store.size(p) or 0 for p, _ in store.walk_files("objects")}


@pytest.fixture(scope="module")
def history(rig: Rig) -> dict[str, object]:
    """Two backups of one table: a full one, then an incremental one after +2% rows in one
    partition; what the source held at each, by checksum and by rows."""
    create_test_table(rig.src, TABLE, buckets=2, replication_num=2)
    rig.src.load(TABLE, rows(20_000, seed=1), label="bk-load-1")
    rig.src.load(TABLE, rows(20_000, seed=2), label="bk-load-2")
    repo = rig.repo("main")
    first_state = _content(rig.src, TABLE)
    first_rows = _sorted_rows(rig.src, TABLE)
    first_parts = {p.name: p.visible_version for p in rig.src.partitions(TABLE)}
    first = _committed(repo.backup(f"bksrc:{TABLE}"))
    objects_after_first = _objects(rig, "main")
    extra = rows(800, seed=3).filter(pa.compute.less(pa.compute.field("day"), pa.scalar(
        __import__("datetime").date(2023, 4, 1))))  # fmt: skip
    rig.src.load(TABLE, extra, label="bk-load-3")  # only p2023q1 changes
    second = _committed(repo.backup(f"bksrc:{TABLE}"))
    return {
        "repo": repo,
        "first": first,
        "second": second,
        "first_state": first_state,
        "first_rows": first_rows,
        "first_parts": first_parts,
        "objects_after_first": objects_after_first,
    }


def test_a_backup_lists_every_object_and_uploads_each_once(rig: Rig, history: dict) -> None:
    repo = history["repo"]
    listing = repo.backups(TABLE)
    assert [m.name for m in listing.backups] == [
        history["first"].record.backup,
        history["second"].record.backup,
    ]
    first = listing.backups[0]
    # The first backup uploaded every byte its manifest names; the repository holds just those.
    assert first.uploaded_bytes == first.bytes > 0
    assert sorted(history["objects_after_first"]) == sorted(first.objects())
    assert sum(history["objects_after_first"].values()) == first.bytes


def test_an_incremental_backup_uploads_only_the_new_rowsets(rig: Rig, history: dict) -> None:
    first, second = history["repo"].backups(TABLE).backups
    new = set(second.objects()) - set(first.objects())
    assert new, "the third load made new rowsets"
    new_bytes = sum(second.objects()[k].size for k in new)
    assert second.uploaded_objects == len(new)
    assert second.uploaded_bytes == new_bytes
    assert new_bytes < 0.1 * second.bytes
    # Only p2023q1 moved on.
    v1 = {p.name: p.version for p in first.partitions}
    v2 = {p.name: p.version for p in second.partitions}
    assert {n for n in v2 if v2[n] != v1[n]} == {"p2023q1"}


def test_each_backup_restores_to_what_the_source_held_then(rig: Rig, history: dict) -> None:
    repo = history["repo"]
    dst1, dst2 = rig.fresh("bkdst1"), rig.fresh("bkdst2")
    _committed(repo.restore(TABLE, to="bkdst1", backup=history["first"].record.backup))
    assert _content(dst1, TABLE) == history["first_state"]
    assert _sorted_rows(dst1, TABLE).equals(history["first_rows"])
    _committed(repo.restore(TABLE, to="bkdst2"))  # the newest
    assert _content(dst2, TABLE) == _content(rig.src, TABLE)
    assert _sorted_rows(dst2, TABLE).equals(_sorted_rows(rig.src, TABLE))
    # The restore's source catalog is gone with its job.
    assert _view_tables(rig) == []


def test_one_partition_restores_at_an_older_version(rig: Rig, history: dict) -> None:
    """From the newest backup, p2023q1 as it was before the third load (the backup before it
    is not named: its rowsets are in the newer backup's chain)."""
    repo = history["repo"]
    old = history["first_parts"]["p2023q1"]
    choice = repo.plan_restore(TABLE, partitions=["p2023q1"], version=old)
    assert choice.manifest.name == history["second"].record.backup
    dst = rig.fresh("bkdst3")
    _committed(repo.restore(TABLE, to="bkdst3:sales.q1", partitions=["p2023q1"], version=old))
    then = [c for c in history["first_state"] if c[0] == "p2023q1"]
    assert _content(dst, "sales.q1") == then
    expected = history["first_rows"].filter(
        pa.compute.less(pa.compute.field("day"), pa.scalar(__import__("datetime").date(2023, 4, 1)))
    )
    assert _sorted_rows(dst, "sales.q1").equals(expected)
    assert [p.name for p in dst.partitions("sales.q1")] == ["p2023q1"]


def test_a_restore_at_a_time_takes_the_versions_committed_by_then(rig: Rig, history: dict) -> None:
    repo = history["repo"]
    at = history["first"].record.created_at
    choice = repo.plan_restore(TABLE, at=at)
    assert choice.versions == history["first_parts"]


def test_versions_no_backup_holds_are_refused_in_one_line(rig: Rig, history: dict) -> None:
    repo = history["repo"]
    with pytest.raises(NotFound, match="is held at versions"):
        repo.plan_restore(TABLE, partitions=["p2023q1"], version=99)
    with pytest.raises(NotFound, match="has no partition p1999"):
        repo.plan_restore(TABLE, partitions=["p1999"])
    with pytest.raises(NotFound, match=r"no finished backup of table sales\.nothing"):
        repo.plan_restore("sales.nothing")
    with pytest.raises(InvalidRequest, match="not both"):
        repo.plan_restore(TABLE, version=2, at=history["first"].record.created_at)


def _catalogs(rig: Rig) -> list[str]:
    from app.catalog.engine import discover_clusters

    return discover_clusters(rig.replicator.settings.dsn_template, [])


def _view_tables(rig: Rig) -> list[str]:
    """The tables left in the restores' source catalog (each restore's is dropped at its end)."""
    if VIEW_CLUSTER not in _catalogs(rig):
        return []
    return [t.full_name for t in rig.replicator.cluster(VIEW_CLUSTER).tables()]


def test_verify_names_a_corrupted_object_and_a_restore_that_needs_it_aborts(
    rig: Rig, history: dict
) -> None:
    repo = history["repo"]
    assert repo.verify().ok
    first, second = repo.backups(TABLE).backups
    key = sorted(set(second.objects()) - set(first.objects()))[0]
    store = ObjectStorage(f"s3://{BUCKET}/{rig.prefix}/main")
    with store.open_read(key) as f:
        good = f.read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    with store.open_write(key) as f:
        f.write(bytes(bad))
    try:
        report = repo.verify()
        assert not report.ok and not report.missing
        assert len(report.differing) == 1 and report.differing[0].startswith(key)
        assert second.name in report.differing[0]
        # The first backup does not need it: still good on its own.
        assert repo.verify([first.name]).ok
        # Into a table restored from the first backup: the restore of the second aborts and
        # leaves it as it was.
        dst = rig.fresh("bkdst4")
        _committed(repo.restore(TABLE, to="bkdst4", backup=first.name))
        before = _content(dst, TABLE)
        job = repo.restore(TABLE, to="bkdst4", backup=second.name).wait(120)
        assert job.state is JobState.ABORTED
        assert "checksum" in (job.message or "")
        assert _content(dst, TABLE) == before
    finally:
        with store.open_write(key) as f:
            f.write(good)
    assert repo.verify().ok


def test_a_restore_of_a_missing_object_is_refused_before_any_job(rig: Rig, history: dict) -> None:
    repo = history["repo"]
    first, second = repo.backups(TABLE).backups
    key = sorted(set(second.objects()) - set(first.objects()))[0]
    store = ObjectStorage(f"s3://{BUCKET}/{rig.prefix}/main")
    with store.open_read(key) as f:
        good = f.read()
    store.delete_tree(key)
    try:
        report = repo.verify()
        assert [m.split(" ")[0] for m in report.missing] == [key]
        jobs_before = len(rig.replicator.jobs("bkdst5"))
        with pytest.raises(CorruptBackup, match="lacks 1 of the"):
            repo.restore(TABLE, to="bkdst5")
        assert len(rig.replicator.jobs("bkdst5")) == jobs_before
        assert "sales" not in {t.db_name for t in rig.fresh("bkdst5").tables()}
        assert _view_tables(rig) == []
    finally:
        with store.open_write(key) as f:
            f.write(good)


def test_prune_keeps_what_a_kept_backup_needs(rig: Rig) -> None:
    """Backup, compact (new files replace old ones), backup again: prune --keep 1 deletes the
    first backup and only the objects no other backup names; the second still verifies and
    restores."""
    table = "sales.pruned"
    create_test_table(rig.src, table, buckets=2, replication_num=1)
    rig.src.load(table, rows(5_000, seed=11), label="pr-1")
    rig.src.load(table, rows(5_000, seed=12), label="pr-2")
    repo = rig.repo("prune")
    _committed(repo.backup(f"bksrc:{table}"))
    rig.src.compact(table, partitions=["p2023q1"])
    _committed(repo.backup(f"bksrc:{table}"))
    first, second = repo.backups(table).backups
    only_first = set(first.objects()) - set(second.objects())
    assert only_first  # the rowsets compaction replaced
    dry = repo.prune(keep=1, grace_sec=0, dry_run=True)
    assert dry.deleted_backups == [first.name] and dry.deleted_objects == len(only_first)
    assert repo.backups(table).backups == [first, second]  # a dry run changes nothing
    pruned = repo.prune(keep=1, grace_sec=0)
    assert pruned.deleted_backups == [first.name]
    assert pruned.deleted_objects == len(only_first)
    assert set(_objects(rig, "prune")) == set(second.objects())
    assert repo.verify().ok
    dst = rig.fresh("bkdst5")
    _committed(repo.restore(table, to="bkdst5"))
    assert _content(dst, table) == _content(rig.src, table)
    with pytest.raises(InvalidRequest, match="at least 1"):
        repo.prune(keep=0)


def test_a_directory_is_a_repository_too(rig: Rig, history: dict) -> None:
    repo = rig.replicator.repository(str(rig.base / "dir-repo"))
    job = _committed(repo.backup(f"bksrc:{TABLE}", partitions=["p2023q2"]))
    (m,) = repo.backups().backups
    assert m.name == job.record.backup and [p.name for p in m.partitions] == ["p2023q2"]
    assert repo.verify().ok
    dst = rig.fresh("bkdst2")
    _committed(repo.restore(TABLE, to="bkdst2:sales.q2"))
    assert _content(dst, "sales.q2") == _content(rig.src, TABLE, ["p2023q2"])


def test_the_command_line_backs_up_lists_verifies_and_restores(rig: Rig, history: dict) -> None:
    url = rig.url("cli")
    res = rig.cli("backup", "create", f"bksrc:{TABLE}", "--repo", url, "-p", "p2023q3", "--wait")
    assert res.returncode == 0, res.stderr
    assert "COMMITTED" in res.stdout and "backup " in res.stdout
    (m,) = rig.replicator.repository(url).backups().backups
    listed = rig.cli("backup", "list", "--repo", url)
    assert listed.returncode == 0 and m.name in listed.stdout, listed.stderr
    shown = rig.cli("backup", "show", m.name, "--repo", url)
    assert shown.returncode == 0 and "p2023q3" in shown.stdout, shown.stderr
    verified = rig.cli("backup", "verify", "--repo", url)
    assert verified.returncode == 0 and "verify ok" in verified.stdout, verified.stderr
    restored = rig.cli(
        "restore", "--repo", url, "--table", TABLE, "--to", "bkdst3:sales.q3", "--wait"
    )
    assert restored.returncode == 0 and "COMMITTED" in restored.stdout, restored.stderr
    dst = rig.fresh("bkdst3")
    assert _content(dst, "sales.q3") == _content(rig.src, TABLE, ["p2023q3"])
    jobs = rig.cli("jobs", "--cluster", "bksrc")
    assert jobs.returncode == 0 and m.name in jobs.stdout, jobs.stderr
    shown_job = rig.cli("job", "show", f"bksrc:{m.job_id}")
    assert shown_job.returncode == 0 and "COMMITTED" in shown_job.stdout, shown_job.stderr
    pruned = rig.cli("backup", "prune", "--repo", url, "--keep", "1", "--dry-run")
    assert pruned.returncode == 0 and "would delete 0 backups" in pruned.stdout, pruned.stderr


def _bad_cases(rig: Rig) -> dict[str, tuple[list[str], str]]:
    url = rig.url("main")
    inside = str(rig.base / "bksrc" / "be1" / "repo")
    restore = ["restore", "--repo", url, "--table", TABLE]
    return {
        "spec": (["backup", "create", "bksrc", "--repo", url], "must be written CLUSTER:DATABASE"),
        "table": (["backup", "create", "bksrc:sales.none", "--repo", url], "does not exist"),
        "partition": (
            ["backup", "create", f"bksrc:{TABLE}", "--repo", url, "-p", "p1"],
            "has no partition p1",
        ),
        "cluster": (
            ["backup", "create", f"nocluster:{TABLE}", "--repo", url],
            "is not initialised",
        ),
        "empty repo": (["backup", "create", f"bksrc:{TABLE}", "--repo", ""], "must not be empty"),
        "inside a root": (["backup", "create", f"bksrc:{TABLE}", "--repo", inside], "overlaps"),
        "no bucket": (
            ["backup", "create", f"bksrc:{TABLE}", "--repo", "s3://nobucket/x"],
            "create the bucket",
        ),
        "list no dir": (["backup", "list", "--repo", str(rig.base / "nowhere")], "not a directory"),
        "show unknown": (["backup", "show", "nope", "--repo", url], "no finished backup"),
        "show bad name": (["backup", "show", "../x", "--repo", url], "is not valid"),
        "verify unknown": (["backup", "verify", "--repo", url, "nope"], "no finished backup"),
        "prune what": (["backup", "prune", "--repo", url], "say what to prune"),
        "prune duration": (
            ["backup", "prune", "--repo", url, "--older-than", "3x"],
            "is not a duration",
        ),
        "prune keep 0": (["backup", "prune", "--repo", url, "--keep", "0"], "at least 1"),
        "restore at": ([*restore, "--to", "bkdst5", "--at", "yesterday"], "is not a time"),
        "restore version 0": ([*restore, "--to", "bkdst5", "--version", "0"], "whole number"),
        "restore version 99": (
            [*restore, "--to", "bkdst5", "--version", "99"],
            "is held at versions",
        ),
        "restore both": (
            [*restore, "--to", "bkdst5", "--version", "2", "--at", "2026-01-01T00:00:00Z"],
            "not both",
        ),
        "restore table": (
            ["restore", "--repo", url, "--table", "sales.none", "--to", "bkdst5"],
            "no finished backup of table",
        ),
        "restore cluster": ([*restore, "--to", "nocluster"], "is not initialised"),
        "restore partition": ([*restore, "--to", "bkdst5", "-p", "p1999"], "has no partition"),
        "restore backup": (
            [*restore, "--to", "bkdst5", "--backup", "nope"],
            "no finished backup",
        ),
    }


def test_bad_input_is_one_line_exit_2_and_changes_nothing(rig: Rig, history: dict) -> None:
    cases = _bad_cases(rig)
    jobs = {c: len(rig.replicator.jobs(c)) for c in ["bksrc", "bkdst5"]}
    objects = _objects(rig, "main")
    catalogs = set(_catalogs(rig))
    views = _view_tables(rig)
    with ThreadPoolExecutor(4) as pool:
        results = {n: pool.submit(rig.cli, *args) for n, (args, _) in cases.items()}
    for name, future in results.items():
        res = future.result()
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, (name, res.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, res.stderr)
        assert cases[name][1] in lines[0], (name, lines[0])
    assert {c: len(rig.replicator.jobs(c)) for c in ["bksrc", "bkdst5"]} == jobs
    assert _objects(rig, "main") == objects
    assert set(_catalogs(rig)) == catalogs
    assert _view_tables(rig) == views
    assert not (rig.base / "bksrc" / "be1" / "repo").exists()


def test_metrics_show_backups_apart_and_restores_as_replications(rig: Rig, history: dict) -> None:
    from frontends import metrics
    from tests.integration.test_metrics import one, scrape

    server, thread = metrics.serve(
        rig.replicator.settings, port=free_port(), addr="127.0.0.1", consumers_ttl=0.0
    )
    try:
        s = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    # Flower names the tasks as the worker logs do: each flow its own.
    for cluster, task in [("bksrc", "backup.snapshot"), ("bksrc", "backup.upload"),
                          ("bkdst1", "restore.snapshot"), ("bkdst1", "restore.apply")]:  # fmt: skip
        logs = [
            p.log.read_text()
            for n, p in rig.workers.procs.items()
            if n.startswith(f"be.{cluster}.")
        ]
        assert any(f"Task {task}[" in text for text in logs), (cluster, task)
    # A restore's source catalog is gone: no lag to read there, and the scrape is whole.
    assert one(s, "replicator_up") == 1
    first, second = history["repo"].backups(TABLE).backups
    assert one(s, "replicator_backup_jobs", cluster="bksrc", state="COMMITTED") >= 2
    assert one(s, "replicator_backup_bytes_total", cluster="bksrc", table=TABLE) >= (
        first.bytes + second.bytes
    )
    # Backups are not replication jobs of bksrc; restores are replications into their targets.
    assert one(s, "replicator_jobs", cluster="bksrc", state="COMMITTED") == 0
    restored = _content(rig.fresh("bkdst1"), TABLE)
    assert (
        restored and one(s, "replicator_replicated_bytes_total", cluster="bkdst1", table=TABLE) > 0
    )


def test_an_empty_table_and_an_altered_table_back_up_and_restore(rig: Rig) -> None:
    """A table with no rows yet; a table whose columns were added, renamed, widened and dropped
    between its loads (files of two schemas, read by column ids): both restore equal."""
    from app.evolve import AddColumn, DropColumn, RenameColumn, WidenColumn

    repo = rig.repo("shapes")
    create_test_table(rig.src, "sales.empty", buckets=2, replication_num=1)
    _committed(repo.backup("bksrc:sales.empty"))
    table = "sales.altered"
    create_test_table(rig.src, table, buckets=2, replication_num=1)
    rig.src.load(table, rows(2_000, seed=21), label="alt-1")
    for change in (AddColumn("tag:string:not null", "old"), RenameColumn("note", "comment"),
                   WidenColumn("qty", "int64"), DropColumn("price")):  # fmt: skip
        rig.src.alter(table, change)
    new = (
        rows(1_000, seed=22).drop_columns(["price"]).rename_columns(["id", "day", "qty", "comment"])
    )
    new = new.set_column(2, "qty", new["qty"].cast(pa.int64())).append_column(
        "tag", pa.array(["new"] * new.num_rows)
    )
    rig.src.load(table, new, label="alt-2")
    _committed(repo.backup(f"bksrc:{table}"))
    dst = rig.fresh("bkdst4")
    _committed(repo.restore("sales.empty", to="bkdst4:sales.empty"))
    assert [c.rows for c in dst.checksum("sales.empty")] == [0, 0, 0, 0]
    _committed(repo.restore(table, to=f"bkdst4:{table}"))
    assert [c.name for c in dst.table(table).columns] == [
        c.name for c in rig.src.table(table).columns
    ]
    assert _content(dst, table) == _content(rig.src, table)
    assert _sorted_rows(dst, table).equals(_sorted_rows(rig.src, table))
