"""Clusters, backends, tables and replica placement, on real Postgres and real storage roots."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from app.catalog import engine as engine_module
from app.catalog import model
from app.catalog import schema as s
from app.catalog.migrate import head_revision
from app.client import ClusterHandle
from app.config import Settings
from app.errors import AlreadyExists, InvalidRequest, NotFound
from app.replication import taskrows
from app.replication.taskrows import TaskKind
from app.storage.checksum import checksum_file
from frontends.connect import replicator

pytestmark = pytest.mark.usefixtures("drop_created_catalogs")


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frontends.cli", *args],
        env={**env, "COLUMNS": "400"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def replica_backends(handle: ClusterHandle, full_name: str) -> list[model.TabletInfo]:
    with handle.catalog.engine.connect() as conn:
        table = model.get_table(conn, full_name)
        return model.list_tablets(conn, table.id)


def four_partition_table(handle: ClusterHandle, name: str = "db.placed") -> model.TableInfo:
    return handle.create_table(
        name,
        ["id:int64:not null", "k:int64", "v:string"],
        partition_by="k",
        partitions=[("p0", 0, 100), ("p1", 100, 200), ("p2", 200, 300), ("p3", 300, 400)],
        distributed_by=["id"],
        buckets=6,
        replication_num=2,
    )


# -- cluster init ------------------------------------------------------------------------


def test_cluster_init_twice_is_harmless(
    test_env: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    name = unique("init")
    first = cli(test_env, tmp_path, "cluster", "init", name)
    assert first.returncode == 0, first.stderr
    assert f"cluster {name}: catalog created at revision {head_revision()}" in first.stdout
    second = cli(test_env, tmp_path, "cluster", "init", name)
    assert second.returncode == 0, second.stderr
    assert f"cluster {name}: catalog already at revision {head_revision()}" in second.stdout
    assert second.stderr == ""
    handle = replicator(settings).cluster(name)
    handle.catalog.ensure_ready()  # the catalog exists, at the newest revision
    assert handle.tables() == [] and handle.backends() == []


def test_init_through_the_api_reports_created_then_already_current(
    settings: Settings, tmp_path: Path
) -> None:
    handle = replicator(settings).cluster(unique("api"))
    created, before, after = handle.init()
    assert created and before is None and after == head_revision()
    handle.add_backend("be1", str(tmp_path / "be1"))
    created, before, after = handle.init()
    assert not created and before == after == head_revision()
    assert [b.name for b in handle.backends()] == ["be1"]  # the catalog survived


def test_an_uninitialised_cluster_is_named_in_the_error(settings: Settings) -> None:
    handle = replicator(settings).cluster(unique("none"))
    with pytest.raises(NotFound, match=f"cluster '{handle.name}' is not initialised"):
        handle.tables()


# -- backends ----------------------------------------------------------------------------


def test_backend_add_list_and_decommission_through_the_cli(
    test_env: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    handle = replicator(settings).cluster(unique("be"))
    handle.init()
    handle.add_backend("be1", str(tmp_path / "be1"))
    handle.add_backend("be2", str(tmp_path / "be2"))
    handle.add_backend("be3", str(tmp_path / "be3"))
    # The same backend again is harmless; the same name with other storage is refused.
    assert handle.add_backend("be1", str(tmp_path / "be1")).id == handle.catalog.backend("be1").id
    with pytest.raises(AlreadyExists, match="backend 'be1' already exists"):
        handle.add_backend("be1", str(tmp_path / "elsewhere"))
    handle.create_table("db.t", ["id:int64"], buckets=2, replication_num=1)
    homes = {b for t in replica_backends(handle, "db.t") for b in t.backend_ids}
    assert homes == {handle.catalog.backend("be1").id, handle.catalog.backend("be2").id}

    # Three independent commands, side by side: add, a refused and an accepted decommission.
    with ThreadPoolExecutor(max_workers=3) as pool:
        add, refused, done = pool.map(
            lambda args: cli(test_env, tmp_path, *args),
            [
                ("backend", "add", handle.name, "be4", "--storage", str(tmp_path / "be4")),
                ("backend", "decommission", handle.name, "be1"),
                ("backend", "decommission", handle.name, "be3"),
            ],
        )
    assert add.returncode == 0, add.stderr
    assert (
        f"backend be4 (ACTIVE) storage {tmp_path / 'be4'} queue be.{handle.name}.be4" in add.stdout
    )
    assert (tmp_path / "be4").is_dir()
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: backend 'be1' still holds 1 tablet replicas; drop or move those tables before "
        "decommissioning it"
    ]
    assert done.returncode == 0, done.stderr
    assert "backend be3 is DECOMMISSIONED" in done.stdout
    assert handle.catalog.backend("be1").state == "ACTIVE"
    assert handle.catalog.backend("be3").state == "DECOMMISSIONED"

    listed = cli(test_env, tmp_path, "backend", "list", handle.name)
    assert listed.returncode == 0, listed.stderr
    states = {
        cells[1]: cells[2]
        for cells in (line.replace("\u2502", "|").split("|") for line in listed.stdout.splitlines())
        if len(cells) > 3
        for cells in [[c.strip() for c in cells]]
        if cells[1].startswith("be")
    }
    assert states == {"be1": "ACTIVE", "be2": "ACTIVE", "be3": "DECOMMISSIONED", "be4": "ACTIVE"}

    with pytest.raises(NotFound, match="backend 'be9' does not exist"):
        handle.decommission_backend("be9")
    # A decommissioned backend gets no new replicas and does not count as a replica home.
    handle.decommission_backend("be4")
    with pytest.raises(InvalidRequest, match="replication_num 3 needs 3 active backends"):
        handle.create_table("db.three", ["id:int64"], replication_num=3)
    handle.create_table("db.two", ["id:int64"], buckets=4, replication_num=2)
    be3 = handle.catalog.backend("be3").id
    assert all(be3 not in t.backend_ids for t in replica_backends(handle, "db.two"))


# -- tables ------------------------------------------------------------------------------


def test_a_table_records_its_schema_partitions_and_tablets(make_cluster) -> None:
    handle = make_cluster(backends=2)
    info = handle.create_table(
        "sales.orders",
        ["id:bigint:not null", "day:date", "amount:double"],
        partition_by="day",
        partitions=[("p1", "2024-01-01", "2024-02-01"), ("p2", "2024-02-01", None)],
        buckets=3,
        replication_num=2,
    )
    assert info.full_name == "sales.orders"
    assert [c.type for c in info.columns] == ["int64", "date", "float64"]
    assert info.distribution_columns == ("id",)
    assert handle.table("sales.orders") == info
    parts = handle.partitions("sales.orders")
    assert [(p.name, p.lower, p.upper, p.visible_version) for p in parts] == [
        ("p1", "2024-01-01", "2024-02-01", 1),
        ("p2", "2024-02-01", None, 1),
    ]
    assert parts[0].version_epoch != parts[1].version_epoch
    with handle.catalog.engine.connect() as conn:
        index_hash = conn.execute(
            sa.select(s.indexes.c.schema_hash).where(s.indexes.c.table_id == info.id)
        ).scalar_one()
    assert index_hash == info.schema_hash
    tablets = replica_backends(handle, "sales.orders")
    assert sorted((t.partition_id, t.bucket) for t in tablets) == sorted(
        (p.id, b) for p in parts for b in range(3)
    )
    assert [t.full_name for t in handle.tables()] == ["sales.orders"]


@pytest.fixture(scope="module")
def refusing_cluster(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterHandle]:
    """One cluster for all the refused definitions: none of them may leave anything behind."""
    handle = replicator(settings).cluster(unique("refuse"))
    handle.init()
    root = tmp_path_factory.mktemp("refuse")
    handle.add_backend("be1", str(root / "be1"))
    handle.add_backend("be2", str(root / "be2"))
    yield handle
    engine_module.drop_database(handle.catalog.dsn)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(partition_by="k", partitions=[("a", 0, 10), ("b", 5, 20)]), "overlap"),
        (dict(partition_by="k", partitions=[("a", 10, 0)]), "must be below"),
        (dict(partition_by="k", partitions=[("a", 0, 10), ("a", 10, 20)]), "defined twice"),
        (dict(partition_by="k", partitions=[]), "has no partitions"),
        (dict(partition_by="nope", partitions=[("a", 0, 1)]), "not a column"),
        (dict(partitions=[("a", 0, 1)]), "without a partition column"),
        (dict(distributed_by=["nope"]), "distribution column 'nope'"),
        (dict(buckets=0), "buckets must be between"),
        (dict(replication_num=3), "needs 3 active backends"),
    ],
)
def test_bad_table_definitions_are_refused_and_create_nothing(
    refusing_cluster: ClusterHandle, kwargs: dict[str, object], words: str
) -> None:
    handle = refusing_cluster
    with pytest.raises(InvalidRequest, match=words):
        handle.create_table("db.bad", ["id:int64", "k:int64"], **kwargs)
    assert handle.tables() == []


def test_a_duplicate_table_is_refused_and_the_first_is_unchanged(make_cluster) -> None:
    handle = make_cluster(backends=1)
    first = handle.create_table("db.t", ["id:int64"], buckets=2)
    with pytest.raises(AlreadyExists, match=r"table db\.t already exists"):
        handle.create_table("db.t", ["id:int64", "x:string"], buckets=5)
    assert handle.tables() == [first]
    assert len(replica_backends(handle, "db.t")) == 2


# -- placement ---------------------------------------------------------------------------


def test_replicas_are_on_distinct_backends_and_spread_evenly(make_cluster) -> None:
    handle = make_cluster(backends=3)
    four_partition_table(handle)
    tablets = replica_backends(handle, "db.placed")
    assert len(tablets) == 4 * 6
    for t in tablets:
        assert len(t.backend_ids) == 2
        assert len(set(t.backend_ids)) == 2
    per_backend = Counter(b for t in tablets for b in t.backend_ids)
    assert set(per_backend) == {b.id for b in handle.backends()}
    assert max(per_backend.values()) - min(per_backend.values()) <= 1
    # A second table keeps the whole cluster balanced.
    handle.create_table("db.more", ["id:int64"], buckets=5, replication_num=2)
    both = tablets + replica_backends(handle, "db.more")
    per_backend = Counter(b for t in both for b in t.backend_ids)
    assert max(per_backend.values()) - min(per_backend.values()) <= 1


def test_every_replica_has_the_rowset_files_after_a_load(make_cluster) -> None:
    handle = make_cluster(backends=3)
    four_partition_table(handle)
    n = 2400
    data = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "k": pa.array([i % 400 for i in range(n)], pa.int64()),
            "v": pa.array([f"value-{i}" for i in range(n)]),
        }
    )
    res = handle.load("db.placed", data, label="placement")
    assert res.versions == {"p0": 2, "p1": 2, "p2": 2, "p3": 2}
    assert res.files == 24

    roots = {b.id: Path(b.storage_root) for b in handle.backends()}
    tablets = {t.id: t for t in replica_backends(handle, "db.placed")}
    with handle.catalog.engine.connect() as conn:
        rowsets = model.visible_rowsets(conn, list(tablets))
    assert all(len(rs) == 1 for rs in rowsets.values())  # every tablet got data
    total_rows = 0
    for tablet_id, (rowset,) in rowsets.items():
        (meta,) = rowset.files
        assert (rowset.start_version, rowset.end_version) == (2, 2)
        total_rows += rowset.num_rows
        for backend_id, root in roots.items():
            path = root / "data" / str(tablet_id) / rowset.id / "0.parquet"
            if backend_id in tablets[tablet_id].backend_ids:
                assert path.is_file(), f"replica on backend {backend_id} lacks {path}"
                assert checksum_file(path) == (meta["size"], meta["checksum"])
            else:
                assert not path.exists()
    assert total_rows == n
    assert sum(c.rows for c in handle.checksum("db.placed")) == n
    assert os.listdir(roots[min(roots)])  # data went to real directories


def test_lookups_by_id_take_any_number_of_ids(settings: Settings) -> None:
    """One array parameter, not one per id: Postgres refuses statements with more than 65,535
    parameters, which an IN list over 100,000 tablets had."""
    handle = replicator(settings).cluster(unique("many"))
    handle.init()
    try:
        ids = list(range(1, 100_001))
        with handle.catalog.engine.connect() as conn:
            found = model.visible_rowsets(conn, ids)
            claimed = taskrows.claim(
                conn, 1, TaskKind.APPLY, ids, worker="w", lease_sec=1, max_attempts=1
            )
        assert len(found) == len(ids) and not any(found.values()) and claimed == []
    finally:
        engine_module.drop_database(handle.catalog.dsn)
