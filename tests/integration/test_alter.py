"""Schema changes on a real catalog and real rowset files: every alter is a schema version, rows
written under any earlier version read as the table is now (scan, checksum, compaction), a
replication pairs tables altered alike, and nothing about a refused alter is left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from alembic import command

from app.catalog.migrate import alembic_config, upgrade
from app.config import Settings
from app.errors import InvalidRequest, SchemaMismatch, TableBusy
from app.evolve import AddColumn, DropColumn, RenameColumn, WidenColumn
from app.replication.state import JobState
from tests.conftest import ClusterFactory
from tests.integration.driver import TABLE, Driver
from tests.integration.rig import create_test_table, rows

REPO = Path(__file__).resolve().parents[2]
CHANGES = [
    AddColumn("tag:string:not null", "old"),
    RenameColumn("note", "comment"),
    WidenColumn("qty", "int64"),
    DropColumn("price"),
]


def _new_rows(n: int, seed: int) -> pa.Table:
    """Rows in the altered shape: qty past int32, a tag, the note renamed, no price."""
    t = rows(n, seed).drop_columns(["price"]).rename_columns(["id", "day", "qty", "comment"])
    qty = pc.add(t["qty"].cast(pa.int64()), 2**40)
    return t.set_column(2, "qty", qty).append_column("tag", pa.array(["new"] * n))


def test_rows_of_every_schema_version_read_as_the_table_is_now(
    make_cluster: ClusterFactory,
) -> None:
    c = make_cluster(backends=2)
    create_test_table(c, TABLE, buckets=2, replication_num=2)
    first = rows(500, seed=1)
    c.load(TABLE, first, label="v1")
    for change in CHANGES:
        c.alter(TABLE, change)
    c.load(TABLE, _new_rows(300, seed=2), label="v5")

    info = c.table(TABLE)
    assert [(col.name, col.type) for col in info.columns] == [
        ("id", "int64"), ("day", "date"), ("qty", "int64"), ("comment", "string"),
        ("tag", "string"),
    ]  # fmt: skip
    assert [v.change for v in c.schema_history(TABLE)] == [
        "created",
        "add column tag string",
        "rename column note -> comment",
        "widen column qty int32 -> int64",
        "drop column price",
    ]
    got = c.scan(TABLE).sort_by("id").to_pylist()
    old = {r["id"]: r for r in first.to_pylist()}
    assert len(got) == 800
    for r in got:
        if r["id"] in old:  # written under version 1
            o = old[r["id"]]
            assert (r["qty"], r["comment"], r["tag"]) == (o["qty"], o["note"], "old")
        else:
            assert r["qty"] >= 2**40 and r["tag"] == "new"
    before = c.checksum(TABLE)
    c.compact(TABLE)  # merges files of both schemas into files of the current one
    assert c.scan(TABLE).sort_by("id").to_pylist() == got
    assert [(p.rows, p.checksum) for p in c.checksum(TABLE)] == [
        (p.rows, p.checksum) for p in before
    ]


def test_a_column_dropped_and_added_again_does_not_bring_its_old_values_back(
    make_cluster: ClusterFactory,
) -> None:
    c = make_cluster(backends=1)
    create_test_table(c, TABLE, buckets=1, replication_num=1)
    c.load(TABLE, rows(50, seed=3), label="a")
    c.alter(TABLE, DropColumn("note"))
    c.alter(TABLE, AddColumn("note:string"))
    assert set(c.scan(TABLE).column("note").to_pylist()) == {None}
    ids = [col.id for col in c.table(TABLE).columns]
    assert ids == [1, 2, 3, 4, 6]  # id 5 (the first note) is never given again


def test_a_refused_alter_changes_nothing(d: Driver) -> None:
    before = d.src.table(TABLE)
    with pytest.raises(InvalidRequest, match="not a widening"):
        d.src.alter(TABLE, WidenColumn("qty", "int8"))
    assert d.src.table(TABLE) == before and len(d.src.schema_history(TABLE)) == 1
    # A target being replicated into is not altered under the job's feet.
    job = d.submit()
    sent = d.tick(job)  # planned: the target's replication transaction is open
    with pytest.raises(TableBusy, match="altering the schema"):
        d.dst.alter(TABLE, AddColumn("x:int32"))
    d.work(sent)
    assert d.finish(job).state is JobState.COMMITTED


@pytest.fixture
def d(settings: Settings, make_cluster: ClusterFactory) -> Driver:
    return Driver(settings, make_cluster)


def test_tables_altered_alike_replicate_and_a_created_target_takes_the_altered_schema(
    d: Driver,
) -> None:
    d.finish(d.submit())
    for change in CHANGES:
        d.src.alter(TABLE, change)
    d.src.load(TABLE, _new_rows(200, seed=4), label="after")
    with pytest.raises(SchemaMismatch, match="tag"):
        d.submit()
    for change in CHANGES:  # the same changes on the target: the same ids, the same hash
        d.dst.alter(TABLE, change)
    assert d.dst.table(TABLE).schema_hash == d.src.table(TABLE).schema_hash
    assert d.finish(d.submit()).state is JobState.COMMITTED
    assert d.dst.checksum(TABLE) == d.src.checksum(TABLE)
    assert d.dst.scan(TABLE).sort_by("id").equals(d.src.scan(TABLE).sort_by("id"))

    job = d.r.replicate(f"{d.src.name}:{TABLE}", f"{d.dst.name}:db.copy", create_target=True)
    assert d.finish(job).state is JobState.COMMITTED, job.message
    assert d.dst.table("db.copy").columns == d.src.table(TABLE).columns
    assert d.dst.scan("db.copy").sort_by("id").equals(d.src.scan(TABLE).sort_by("id"))


def test_the_cli_alters_one_change_a_call_and_says_what_is_wrong_in_one_line(
    make_cluster: ClusterFactory, test_env: dict[str, str]
) -> None:
    c = make_cluster(backends=1)
    create_test_table(c, TABLE, buckets=1, replication_num=1)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "frontends.cli", "table", *args],
            env=test_env | {"COLUMNS": "200"}, cwd=REPO, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    ok = cli("alter", c.name, TABLE, "--add-column", "n:int64:not null", "--default", "7")
    assert ok.returncode == 0, ok.stderr
    assert "altered" in ok.stdout and "n int64" in ok.stdout
    assert "add column n int64" in cli("history", c.name, TABLE).stdout
    for args, message in [
        (["--drop-column", "qty", "--rename", "a:b"], "exactly one of"),
        (["--rename", "qty"], "--rename OLD:NEW"),
        (["--widen", "qty:int8"], "not a widening"),
        (["--default", "1"], "--default goes with --add-column"),
    ]:
        bad = cli("alter", c.name, TABLE, *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and message in bad.stderr, bad.stderr
    assert len(c.schema_history(TABLE)) == 2  # the one change that was asked for right


def test_the_migration_gives_every_existing_table_its_version_one(
    make_cluster: ClusterFactory,
) -> None:
    c = make_cluster(backends=1)
    create_test_table(c, TABLE, buckets=1, replication_num=1)
    dsn = c.catalog.dsn
    cfg = alembic_config(dsn)
    with c.catalog.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    upgrade(dsn)
    with c.catalog.engine.connect() as conn:
        got = conn.execute(
            sa.text("SELECT version, change, schema_hash FROM schema_versions")
        ).all()
    assert got == [(1, "created", c.table(TABLE).schema_hash)]
