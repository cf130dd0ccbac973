"""Bad inputs through the `replicator` CLI: one clear line on stderr, non-zero exit, no change.

Every bad command runs as its own process (like a user at a shell), a few side by side to keep the
module fast, against one cluster whose whole state is compared before and after.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from app.catalog import engine as engine_module
from app.catalog import schema as s
from app.client import ClusterHandle
from app.config import Settings
from app.storage.rowsets import RowsetState
from frontends.connect import replicator

CLUSTER = f"clierr{uuid.uuid4().hex[:8]}"
MISSING_CLUSTER = f"nosuch{uuid.uuid4().hex[:8]}"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "frontends.cli", *args]


def write_csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def snapshot(handle: ClusterHandle, settings: Settings) -> dict[str, Any]:
    """Everything a refused command must leave as it was."""
    with handle.catalog.engine.connect() as conn:
        tables = conn.execute(
            sa.select(s.tables.c.name, s.tables.c.schema_hash, s.tables.c.columns).order_by(
                s.tables.c.id
            )
        ).all()
        parts = conn.execute(
            sa.select(
                s.partitions.c.name, s.partitions.c.visible_version, s.partitions.c.version_epoch
            ).order_by(s.partitions.c.id)
        ).all()
        rowsets = conn.execute(
            sa.select(s.rowsets.c.id, s.rowsets.c.state)
            .where(
                s.rowsets.c.state.in_([RowsetState.VISIBLE, RowsetState.PENDING, RowsetState.STALE])
            )
            .order_by(s.rowsets.c.id)
        ).all()
        live_txns = conn.execute(
            sa.select(s.transactions.c.label, s.transactions.c.state)
            .where(s.transactions.c.state != "ABORTED")
            .order_by(s.transactions.c.id)
        ).all()
        backends = conn.execute(sa.select(s.backends.c.name, s.backends.c.state)).all()
    files = sorted(
        (str(p), p.stat().st_size)
        for b in handle.backends()
        for p in Path(b.storage_root).rglob("*")
        if p.is_file()
    )
    admin = sa.create_engine(sa.engine.make_url(settings.dsn(CLUSTER)).set(database="postgres"))
    try:
        with admin.connect() as conn:
            missing_db = conn.execute(
                sa.text("SELECT count(*) FROM pg_database WHERE datname = :n"),
                {"n": sa.engine.make_url(settings.dsn(MISSING_CLUSTER)).database},
            ).scalar_one()
    finally:
        admin.dispose()
    return {
        "tables": tables,
        "partitions": parts,
        "rowsets": rowsets,
        "transactions": live_txns,
        "backends": backends,
        "checksum": [c.content() for c in handle.checksum("db.t")],
        "files": files,
        "missing cluster database": missing_db,
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli-inputs")
    write_csv(d / "good.csv", "id,k,v\n1,5,a\n2,150,b\n3,42,c\n")
    write_csv(d / "other.csv", "id,k,v\n1,5,a\n2,150,b\n3,42,changed\n")
    write_csv(d / "missing_column.csv", "id,k\n1,5\n")
    write_csv(d / "bad_number.csv", "id,k,v\nabc,5,a\n")
    write_csv(d / "out_of_range.csv", "id,k,v\n1,5,a\n2,999,b\n")
    pq.write_table(
        pa.table({"id": ["12", "abc"], "k": [1, 2], "v": ["a", "b"]}), d / "wrong_type.parquet"
    )
    return d


def _cases(d: Path) -> dict[str, tuple[list[str], str]]:
    c = CLUSTER
    good = str(d / "good.csv")
    return {
        "unknown cluster": (
            ["load", MISSING_CLUSTER, "db.t", good, "--label", "u1"],
            f"cluster '{MISSING_CLUSTER}' is not initialised",
        ),
        "unknown table": (
            ["load", c, "db.nosuch", good, "--label", "u2"],
            f"table db.nosuch in cluster '{c}' does not exist",
        ),
        "missing column": (
            ["load", c, "db.t", str(d / "missing_column.csv"), "--label", "u3"],
            "missing column(s) v",
        ),
        "unconvertible type": (
            ["load", c, "db.t", str(d / "wrong_type.parquet"), "--label", "u4"],
            "column 'id' holds string, which does not convert to int64",
        ),
        "unparsable csv value": (
            ["load", c, "db.t", str(d / "bad_number.csv"), "--label", "u5"],
            "invalid value 'abc'",
        ),
        "out of range partition": (
            ["load", c, "db.t", str(d / "out_of_range.csv"), "--label", "u6"],
            "1 rows fit no partition of db.t (e.g. k=999)",
        ),
        "duplicate table": (
            ["table", "create", c, "db.t", "-c", "id:int64"],
            f"table db.t already exists in cluster '{c}'",
        ),
        "label reused with other data": (
            ["load", c, "db.t", str(d / "other.csv"), "--label", "base"],
            "label 'base' was already used to load other data",
        ),
        "unknown column type": (
            ["table", "create", c, "db.new1", "-c", "id:int64", "-c", "blob_col:blob"],
            "unknown column type 'blob'",
        ),
        "too few backends": (
            ["table", "create", c, "db.new2", "-c", "id:int64", "--replication-num", "3"],
            "replication_num 3 needs 3 active backends",
        ),
    }


@pytest.fixture(scope="module")
def cluster(
    settings: Settings,
    test_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    inputs: Path,
) -> Iterator[ClusterHandle]:
    handle = replicator(settings).cluster(CLUSTER)
    handle.init()
    roots = tmp_path_factory.mktemp("cli-roots")
    handle.add_backend("be1", str(roots / "be1"))
    handle.add_backend("be2", str(roots / "be2"))
    handle.create_table(
        "db.t",
        ["id:int64:not null", "k:int64", "v:string"],
        partition_by="k",
        partitions=[("p1", 0, 100), ("p2", 100, 200)],
        buckets=2,
        replication_num=2,
    )
    # The good path through the CLI, which the bad ones are compared against.
    ok = subprocess.run(
        command("load", CLUSTER, "db.t", str(inputs / "good.csv"), "--label", "base"),
        env=test_env,
        cwd=inputs,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "loaded 3 rows" in ok.stdout and "p1=v2" in ok.stdout and "p2=v2" in ok.stdout
    yield handle
    engine_module.drop_database(handle.catalog.dsn)


@pytest.fixture(scope="module")
def outcomes(
    cluster: ClusterHandle, settings: Settings, test_env: dict[str, str], inputs: Path
) -> tuple[dict[str, Any], dict[str, subprocess.CompletedProcess[str]], dict[str, Any]]:
    before = snapshot(cluster, settings)
    cases = _cases(inputs)

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command(*args), env=test_env, cwd=inputs, capture_output=True, text=True, timeout=180
        )

    # A few at a time: the CLI is CPU-bound at start-up, and each one opens catalog connections.
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run, args) for name, (args, _words) in cases.items()}
        results = {name: f.result() for name, f in futures.items()}
    after = snapshot(cluster, settings)
    return before, results, after


CASE_NAMES = list(_cases(Path("/")).keys())


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_bad_command_prints_one_clear_line_exits_non_zero_and_changes_nothing(
    name: str, outcomes: Any, inputs: Path
) -> None:
    before, results, after = outcomes
    _args, words = _cases(inputs)[name]
    res = results[name]
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert words in lines[0]
    assert res.stdout == ""
    assert after == before


def test_the_missing_cluster_was_not_created(outcomes: Any) -> None:
    before, _results, after = outcomes
    assert before["missing cluster database"] == after["missing cluster database"] == 0


def test_refused_tables_were_not_created(outcomes: Any) -> None:
    _before, _results, after = outcomes
    assert [t.name for t in after["tables"]] == ["t"]


def test_refused_loads_left_no_files_and_kept_the_versions(
    outcomes: Any, cluster: ClusterHandle
) -> None:
    before, _results, after = outcomes
    assert [(p.name, p.visible_version) for p in after["partitions"]] == [("p1", 2), ("p2", 2)]
    assert after["checksum"] == before["checksum"]
    assert [rows for (_p, _v, rows, _c) in after["checksum"]] == [2, 1]
    # Only the base load's files are on disk: one per visible rowset on each of its 2 replicas.
    data_files = [f for f in after["files"] if "/data/" in f[0]]  # (each root also has a marker)
    assert len(data_files) == 2 * len([r for r in after["rowsets"] if r.state == "VISIBLE"])
    with cluster.catalog.engine.connect() as conn:
        failed = conn.execute(
            sa.select(s.transactions.c.label, s.transactions.c.state).where(
                s.transactions.c.label.in_(["u3", "u4", "u5", "u6"])
            )
        ).all()
    # Each failed load began a transaction, and each was aborted.
    assert sorted(failed) == [(label, "ABORTED") for label in ("u3", "u4", "u5", "u6")]
