"""app.sync: a policy's beat, driven here step by step against real catalogs and storage (the
jobs run in this process through the real coordinator and task code): new tables, new
partitions, schema changes replayed without recopying, lag, the fence, divergence, pause."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from app.client import ClusterHandle, Replicator
from app.config import Settings
from app.errors import InvalidRequest, TableBusy
from app.evolve import AddColumn, WidenColumn
from app.replication.coordinator import Coordinator
from app.replication.state import JobState
from app.replication.taskrows import TaskKind
from app.replication.work import deliver
from app.sync import tick as sync
from app.sync.policies import TableSyncState
from app.sync.verify import check_files
from frontends.cli.watch import _active_jobs, _bar_values
from frontends.metrics.server import render
from tests.conftest import ClusterFactory
from tests.integration.rig import create_test_table, rows


class Sync:
    def __init__(self, settings: Settings, make_cluster: ClusterFactory) -> None:
        self.settings = settings.with_overrides(transfer_mode="shared")
        self.src, self.dst = make_cluster(backends=2), make_cluster(backends=2)
        self.r = Replicator(self.settings)
        self.coordinator = Coordinator(self.settings, actor="test")

    def beat(self, cluster: str | None = None) -> list[int]:
        """One sync beat of ``cluster`` (the target's), then every job it started run to its
        end."""
        where = cluster or self.dst.name
        beat = sync.tick_cluster(self.settings, where)
        for check in beat.checks:  # as the target backends' workers would
            check_files(self.settings, check)
        self.finish(beat.started, where)
        return beat.started

    def finish(self, started: list[int], cluster: str | None = None) -> None:
        where = cluster or self.dst.name
        for job_id in started:
            for _ in range(20):
                for m in self.coordinator.tick(where, job_id).messages:
                    deliver(self.settings, m, "test-worker")
                if self.r.job(f"{where}:{job_id}").state.final:
                    break
            job = self.r.job(f"{where}:{job_id}")
            assert job.state is JobState.COMMITTED, job.message

    def table(self, name: str) -> object:
        policy = self.r.sync(self.dst.name, "p").show()
        return next(t for t in policy.tables if t.src_table == name)

    def moved_in(self, cluster: str, job_ids: list[int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in job_ids:
            for t in self.r.job(f"{cluster}:{j}").tasks():
                if t.kind == TaskKind.APPLY:
                    out[t.partition_name] = out.get(t.partition_name, 0) + t.bytes_done
        return out

    def moved(self, job_ids: list[int]) -> int:
        return sum(
            t.bytes_done
            for j in job_ids
            for t in self.r.job(f"{self.dst.name}:{j}").tasks()
            if t.kind == TaskKind.APPLY
        )


def _same(a: ClusterHandle, b: ClusterHandle, table: str) -> None:
    assert [p.content() for p in a.checksum(table)] == [p.content() for p in b.checksum(table)]
    assert a.table(table).schema_hash == b.table(table).schema_hash


@pytest.fixture
def s(settings: Settings, make_cluster: ClusterFactory) -> Sync:
    return Sync(settings, make_cluster)


def test_a_policy_follows_tables_partitions_and_schema_changes(s: Sync) -> None:
    for name in ("db.a", "db.b", "db.skip_me"):
        create_test_table(s.src, name, buckets=2, replication_num=1)
        s.src.load(name, rows(500, seed=1), label=f"{name}-1")
    s.r.sync_create(f"{s.src.name}:db", s.dst.name, name="p", exclude=["skip*"])

    first = s.beat()  # both followed tables are created on the target and copied
    assert len(first) == 2
    for name in ("db.a", "db.b"):
        _same(s.src, s.dst, name)
    assert [t.src_table for t in s.r.sync(s.dst.name, "p").show().tables] == ["a", "b"]
    assert s.beat() == []  # nothing moved: no job
    assert s.table("a").versions_behind == 0 and s.table("a").synced_at is not None  # type: ignore[attr-defined]

    # A load: one incremental job; the lag the beat saw is what the source's commits say.
    s.src.load("db.a", rows(200, seed=2), label="a-2")
    commits = [p.visible_at for p in s.src.partitions("db.a") if p.visible_version == 3]
    assert len(s.beat()) == 1
    assert s.table("a").behind_since == min(commits)  # type: ignore[attr-defined]
    assert s.table("a").versions_behind == len(commits)  # type: ignore[attr-defined]
    _same(s.src, s.dst, "db.a")
    assert s.beat() == []
    assert s.table("a").behind_since is None and s.table("a").versions_behind == 0  # type: ignore[attr-defined]

    # Schema changes and a new partition on the source: replayed, not recopied.
    s.src.alter("db.a", AddColumn("tag:string:not null", "x"))
    s.src.alter("db.a", WidenColumn("qty", "int64"))
    s.src.add_partition("db.a", "p2024q1", "2024-01-01", "2024-04-01")
    late = rows(300, seed=3).append_column("tag", pa.array(["y"] * 300))
    s.src.load("db.a", late, label="a-3")
    new_rowsets = _rowset_bytes(s.src, "db.a", min_version=4)
    jobs = s.beat()
    _same(s.src, s.dst, "db.a")
    assert [p.name for p in s.dst.partitions("db.a")][-1] == "p2024q1"
    replays = s.dst.schema_history("db.a")[1:]
    assert [v.change for v in replays] == [
        "add column tag string",
        "widen column qty int32 -> int64",
    ]
    # Made in the transaction that made the new rows visible (one now() for both).
    assert {v.created_at for v in replays} == {
        p.visible_at for p in s.dst.partitions("db.a") if p.visible_version == 4
    }
    assert s.moved(jobs) == new_rowsets > 0  # only the load's rowsets crossed: no full copy
    assert s.dst.scan("db.a").sort_by("id").equals(s.src.scan("db.a").sort_by("id"))


def _rowset_bytes(
    c: ClusterHandle, table: str, min_version: int, partition: str | None = None
) -> int:
    with c.catalog.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(r.data_size), 0) FROM rowsets r JOIN tablets t ON "
                    "t.id = r.tablet_id JOIN partitions p ON p.id = t.partition_id JOIN tables "
                    "tb ON tb.id = p.table_id WHERE tb.name = :t AND r.state = 'VISIBLE' AND "
                    "r.start_version >= :v AND (CAST(:p AS text) IS NULL OR p.name = :p)"
                ),
                {"t": table.split(".")[1], "v": min_version, "p": partition},
            ).scalar_one()
        )


def test_the_target_is_fenced_and_a_write_behind_its_back_stops_the_table(s: Sync) -> None:
    create_test_table(s.src, "db.a", buckets=1, replication_num=1)
    s.src.load("db.a", rows(100, seed=1), label="a-1")
    s.r.sync_create(f"{s.src.name}:db", s.dst.name, name="p")
    s.beat()
    with pytest.raises(TableBusy, match="sync policy 'p'"):
        s.dst.load("db.a", rows(10, seed=9), label="x")
    with pytest.raises(TableBusy, match="sync policy 'p'"):
        s.dst.alter("db.a", AddColumn("n:int32"))
    # Behind the project's back: a load's version written straight into the target's catalog.
    with s.dst.catalog.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE partitions SET visible_version = visible_version + 1, "
                "version_txn_kind = 'LOAD' WHERE name = 'p2023q1'"
            )
        )
    s.src.load("db.a", rows(100, seed=2), label="a-2")
    assert s.beat() == []  # found at the next beat: no job, nothing overwritten
    t = s.table("a")
    assert t.state is TableSyncState.STOPPED and "written outside the policy" in t.reason  # type: ignore[attr-defined]
    assert "p2023q1" in t.reason  # type: ignore[attr-defined]
    assert s.beat() == []  # and it stays stopped
    s.r.sync(s.dst.name, "p").drop()
    s.dst.load("db.a", rows(10, seed=9), label="x")  # no policy, no fence


def test_pause_measures_lag_and_starts_nothing_until_resumed(s: Sync) -> None:
    create_test_table(s.src, "db.a", buckets=1, replication_num=1)
    s.src.load("db.a", rows(100, seed=1), label="a-1")
    s.r.sync_create(f"{s.src.name}:db", s.dst.name, name="p")
    s.beat()
    s.r.sync(s.dst.name, "p").pause()
    s.src.load("db.a", rows(100, seed=2), label="a-2")
    s.src.load("db.a", rows(100, seed=3), label="a-3")
    assert s.beat() == []
    t = s.table("a")
    assert t.versions_behind == 8  # type: ignore[attr-defined]  # 4 partitions x 2 versions
    metrics = render(s.settings, [s.dst.name])
    assert (
        f'replicator_sync_versions_behind{{cluster="{s.dst.name}",policy="p",state="SYNCING",'
        'table="a"} 8.0'
    ) in metrics, [ln for ln in metrics.splitlines() if "sync" in ln]
    # Both loads came between two beats: the oldest commit seen is the second's.
    assert t.behind_since == min(p.visible_at for p in s.src.partitions("db.a"))  # type: ignore[attr-defined]
    s.r.sync(s.dst.name, "p").resume()
    started = sync.tick_cluster(s.settings, s.dst.name).started
    (running,) = _active_jobs(s.r, s.dst.name)  # as `jobs watch` shows it
    assert (
        running.id == started[0]
        and running.sync == "sync p: 8 versions, " + (running.sync.split(", ")[1])
    )
    assert _bar_values(running)[2].endswith(f"[cyan]{running.sync}[/]")
    s.finish(started)
    assert s.beat() == []  # the beat after the job's commit sees the target caught up
    assert s.table("a").versions_behind == 0 and s.table("a").behind_since is None  # type: ignore[attr-defined]
    _same(s.src, s.dst, "db.a")


def test_a_target_of_another_schema_history_stops_that_table_only(s: Sync) -> None:
    for name in ("db.a", "db.b"):
        create_test_table(s.src, name, buckets=1, replication_num=1)
        s.src.load(name, rows(100, seed=1), label=f"{name}-1")
    s.dst.create_table("db.b", ["id:int64", "other:string"], distributed_by=["id"])
    s.r.sync_create(f"{s.src.name}:db", s.dst.name, name="p")
    assert len(s.beat()) == 1  # a is created and copied; b is not touched
    b = s.table("b")
    assert b.state is TableSyncState.STOPPED and "incompatible schema change" in b.reason  # type: ignore[attr-defined]
    assert s.dst.table("db.b").columns[1].name == "other"
    _same(s.src, s.dst, "db.a")


def test_the_cli_manages_policies_and_refuses_bad_input_in_one_line(
    s: Sync, test_env: dict[str, str]
) -> None:
    import subprocess
    import sys
    from pathlib import Path

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "frontends.cli", "sync", *args],
            env=test_env | {"COLUMNS": "200"}, cwd=Path(__file__).resolve().parents[2],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    create_test_table(s.src, "db.a", buckets=1, replication_num=1)
    ok = cli("create", f"{s.src.name}:db", f"{s.dst.name}:mirror", "--name", "m", "--include", "a*")
    assert ok.returncode == 0 and "sync policy m" in ok.stdout, ok.stderr
    assert "m" in cli("list", s.dst.name).stdout
    assert cli("pause", s.dst.name, "m").returncode == 0
    assert s.r.sync(s.dst.name, "m").show().state == "PAUSED"
    for args, message in [
        (["create", f"{s.src.name}:db", s.dst.name, "--name", "m"], "already exists"),
        (["create", s.src.name, s.dst.name], "CLUSTER:DATABASE"),
        (["create", f"{s.src.name}:db", s.dst.name, "--rename", "a"], "SOURCE_TABLE=TARGET_TABLE"),
        (["create", "nocluster:db", s.dst.name], "not initialised"),
        (["show", s.dst.name, "nope"], "no sync policy 'nope'"),
        (["resync", s.dst.name, "m", "zz"], "follows no table 'zz'"),
    ]:
        bad = cli(*args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and message in bad.stderr, bad.stderr
    assert cli("drop", s.dst.name, "m").returncode == 0 and s.r.syncs(s.dst.name) == []


def test_sync_plan_previews_the_next_beat_per_table_and_changes_nothing(
    s: Sync, test_env: dict[str, str]
) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from app.sync.plan import plan

    for name in ("db.a", "db.b"):
        create_test_table(s.src, name, buckets=1, replication_num=1)
        s.src.load(name, rows(100, seed=1), label=f"{name}-1")
    s.r.sync_create(f"{s.src.name}:db", s.dst.name, name="p")
    first = plan(s.settings, s.dst.name, "p")
    assert [(t.table, t.preview.create_table) for t in first] == [("a", True), ("b", True)]  # type: ignore[union-attr]
    assert s.r.sync(s.dst.name, "p").show().tables == []  # the plan made no row, no table
    assert [t.full_name for t in s.dst.tables()] == []
    s.beat()
    s.src.load("db.a", rows(100, seed=2), label="a-2")
    a, b = plan(s.settings, s.dst.name, "p")
    assert {p.action for p in a.preview.partitions} == {"INCREMENTAL"}  # type: ignore[union-attr]
    assert {p.action for p in b.preview.partitions} == {"SKIP"}  # type: ignore[union-attr]
    shown = subprocess.run(
        [sys.executable, "-m", "frontends.cli", "sync", "plan", s.dst.name, "p"],
        env=test_env | {"COLUMNS": "200"}, cwd=Path(__file__).resolve().parents[2],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("INCREMENTAL") == 4 and "db.b" in shown.stdout


def test_promote_then_fail_back_copies_only_the_partitions_the_promoted_side_changed(
    s: Sync,
) -> None:
    from tests.integration.test_dry_run import _quarter

    create_test_table(s.src, "db.a", buckets=2, replication_num=1)
    s.src.load("db.a", rows(2_000, seed=1), label="a-1")
    s.r.sync_create(f"{s.src.name}:db", s.dst.name, name="p")
    s.beat()
    done = s.r.sync(s.dst.name, "p").promote(reverse=True)
    assert done.caught_up and done.not_copied == {} and done.reverse == "p_back"
    assert s.r.syncs(s.dst.name) == []  # the policy is gone: the promoted side is writable
    back = s.r.sync(s.src.name, "p_back").show()
    assert back.state == "PAUSED" and back.src_cluster == s.dst.name
    with pytest.raises(TableBusy, match="p_back"):  # the old source waits for the failback
        s.src.load("db.a", rows(10, seed=9), label="x")

    s.dst.load("db.a", _quarter(3_000, 5, "2023-01-01", "2023-04-01"), label="promoted-1")
    changed = _rowset_bytes(s.dst, "db.a", min_version=1, partition="p2023q1")
    s.r.sync(s.src.name, "p_back").resume()
    jobs = s.beat(s.src.name)
    assert len(jobs) == 1
    moved = s.moved_in(s.src.name, jobs)
    assert moved == {"p2023q1": changed}  # one partition, in full; the other three stay
    _same(s.dst, s.src, "db.a")
    assert s.beat(s.src.name) == []


def test_promote_now_stops_at_once_and_says_what_was_not_copied(s: Sync) -> None:
    create_test_table(s.src, "db.a", buckets=1, replication_num=1)
    s.src.load("db.a", rows(400, seed=1), label="a-1")
    s.r.sync_create(f"{s.src.name}:db", s.dst.name, name="p")
    s.beat()
    s.r.sync(s.dst.name, "p").pause()
    s.src.load("db.a", rows(400, seed=2), label="a-2")
    with pytest.raises(InvalidRequest, match="still behind"):
        s.r.sync(s.dst.name, "p").promote(timeout=0.5)  # nothing runs the beat here
    assert [p.name for p in s.r.syncs(s.dst.name)] == ["p"]  # and nothing was promoted
    done = s.r.sync(s.dst.name, "p").promote(now=True)
    assert not done.caught_up and done.not_copied == {"a": 4}
    s.dst.load("db.a", rows(10, seed=9), label="writable")


def test_a_flipped_target_byte_is_found_after_the_next_commit_and_its_partition_repaired(
    s: Sync,
) -> None:
    from pathlib import Path

    from app.catalog import model
    from app.storage.client import rowset_dir
    from tests.integration.test_dry_run import _quarter

    create_test_table(s.src, "db.a", buckets=2, replication_num=2)
    s.src.load("db.a", rows(4_000, seed=1), label="a-1")
    s.r.sync_create(f"{s.src.name}:db", s.dst.name, name="p")
    s.beat()
    s.beat()  # the first job's files are checked
    assert s.beat() == []
    assert "and rows equal" in s.table("a").last_check  # type: ignore[attr-defined]
    # Damage one file of partition p2023q2 on one target replica.
    with s.dst.catalog.engine.connect() as conn:
        table = model.get_table(conn, "db.a")
        q2 = next(p.id for p in model.list_partitions(conn, table.id) if p.name == "p2023q2")
        tablet = next(t for t in model.list_tablets(conn, table.id) if t.partition_id == q2)
        rowset = model.visible_rowsets(conn, [tablet.id])[tablet.id][0]
        backend = model.list_backends(conn)[tablet.backend_ids[0]]
    path = Path(backend.storage_root, rowset_dir(tablet.id, rowset.id), rowset.files[0]["name"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    s.src.load("db.a", _quarter(2_000, 7, "2023-01-01", "2023-04-01"), label="a-2")  # q1 only
    assert len(s.beat()) == 1  # the next commit (p2023q1)
    assert s.beat() == []  # its checks are asked for (and answered)
    (repair,) = s.beat()  # found: a repair of p2023q2 alone
    t = s.table("a")
    assert t.mismatches == 1 and "partitions p2023q2 differ (1 damaged files)" in t.last_check  # type: ignore[attr-defined]
    parts = {p.partition_name: p.mode for p in s.r.job(f"{s.dst.name}:{repair}").partitions()}
    assert parts == {"p2023q2": "FULL"}
    moved = s.moved_in(s.dst.name, [repair])
    assert set(moved) == {"p2023q2"}
    _same(s.src, s.dst, "db.a")
    s.beat()
    assert s.beat() == [] and "and rows equal" in s.table("a").last_check  # type: ignore[attr-defined]
    metrics = render(s.settings, [s.dst.name])
    line = f'replicator_sync_verify_failures_total{{cluster="{s.dst.name}",policy="p",table="a"}}'
    assert f"{line} 1.0" in metrics, [ln for ln in metrics.splitlines() if "verify" in ln]


def test_a_partition_dropped_on_the_source_is_kept_on_the_target_and_reported(s: Sync) -> None:
    create_test_table(s.src, "db.a", buckets=1, replication_num=1)
    s.src.load("db.a", rows(400, seed=1), label="a-1")
    s.r.sync_create(f"{s.src.name}:db", s.dst.name, name="p")
    s.beat()
    with s.src.catalog.engine.begin() as conn:  # no DROP PARTITION yet: as the catalog would
        conn.execute(sa.text("DELETE FROM partitions WHERE name = 'p2023q4'"))
    before = [p.content() for p in s.dst.checksum("db.a")]
    assert s.beat() == []
    t = s.table("a")
    assert t.state is TableSyncState.SYNCING  # type: ignore[attr-defined]
    assert t.reason == "partition(s) p2023q4 dropped on the source; the target keeps them"  # type: ignore[attr-defined]
    assert [p.content() for p in s.dst.checksum("db.a")] == before
    s.src.load(
        "db.a",
        rows(400, seed=2).filter(pc.less(rows(400, seed=2)["day"], dt.date(2023, 10, 1))),
        label="a-2",
    )
    assert len(s.beat()) == 1  # the other partitions go on syncing
