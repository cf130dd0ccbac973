"""Bad input through the real `replicator` CLI (issue 11, items 8-12).

Every case runs as its own process, like a user at a shell, against two clusters (a source and a
target) whose whole catalogs, storage directories, scratch directories and the list of Postgres
databases are compared before and after. Each case must print one line `error: ...` naming the
problem, no traceback, nothing on stdout, and exit with exactly 2 (a user mistake) or 3 (only for
what may succeed later).

The last tests put rows into the catalogs the way an older version could have (names and labels
that are refused today) and check every listing still prints them, escaped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.catalog import engine as engine_module
from app.catalog import schema as s
from app.client import ClusterHandle, Replicator
from app.cluster import Cluster
from app.config import Settings
from app.replication.plan import TablePair, make_plan
from frontends.connect import replicator

# About 80 CLI processes, a few at a time: minutes on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(1500)

SRC = f"bisrc{uuid.uuid4().hex[:8]}"
DST = f"bidst{uuid.uuid4().hex[:8]}"
MISSING = f"binone{uuid.uuid4().hex[:8]}"
HUGE = "9" * 20  # over the largest int64
LONG = "x" * 9000


@dataclass(frozen=True)
class Case:
    args: list[str]
    words: str  # what the one error line must say
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "frontends.cli", *args]


def _name_cases(d: Path) -> dict[str, Case]:
    """Item 9: one pattern and length limit for database, table, partition and column names."""
    c = SRC
    return {
        "table name with markup": Case(
            ["table", "create", c, "sales.[/]", "-c", "id:int64"], "table name '[/]' is not valid"
        ),
        "table name of 9000 characters": Case(
            ["table", "create", c, f"db.{LONG}", "-c", "id:int64"],
            "table name 'xxxxxxxx",  # shortened in the message, and says how long it is
        ),
        "database name too long": Case(
            ["table", "create", c, f"{'d' * 65}.t", "-c", "id:int64"],
            "database name 'ddd",
        ),
        "table name with an escape sequence": Case(
            ["table", "create", c, "db.t\x1b[31m", "-c", "id:int64"],
            r"table name 't\x1b[31m' is not valid",
        ),
        "table name with a unicode control character": Case(
            ["table", "create", c, "db.t\u202eevil", "-c", "id:int64"],
            r"table name 't\u202eevil' is not valid",
        ),
        "table name with a dot too many": Case(
            ["table", "create", c, "db.t.x", "-c", "id:int64"],
            "table 'db.t.x' must be written DATABASE.TABLE",
        ),
        "empty table name": Case(
            ["table", "create", c, "", "-c", "id:int64"], "table '' must be written DATABASE.TABLE"
        ),
        "column name with a dash": Case(
            ["table", "create", c, "db.n1", "-c", "bad-col:int64"],
            "column name 'bad-col' is not valid",
        ),
        "column name too long": Case(
            ["table", "create", c, "db.n2", "-c", f"{'c' * 100}:int64"],
            "column name 'ccc",
        ),
        "partition name with markup": Case(
            [
                "table",
                "create",
                c,
                "db.n3",
                "-c",
                "k:int64",
                "--partition-by",
                "k",
                "-p",
                "p[/]:0:10",
            ],
            "partition name 'p[/]' is not valid",
        ),
        "partition name of 9000 characters": Case(
            [
                "table",
                "create",
                c,
                "db.n4",
                "-c",
                "k:int64",
                "--partition-by",
                "k",
                "-p",
                f"{LONG}:0:10",
            ],
            "partition name 'xxx",
        ),
        "partition bound over int64": Case(
            [
                "table",
                "create",
                c,
                "db.n5",
                "-c",
                "k:int64",
                "--partition-by",
                "k",
                "-p",
                f"p1:0:{HUGE}",
            ],
            f"partition bound {HUGE} is out of range for int64",
        ),
        "partition bound over int8": Case(
            [
                "table",
                "create",
                c,
                "db.n6",
                "-c",
                "k:int8",
                "--partition-by",
                "k",
                "-p",
                "p1:0:300",
            ],
            "partition bound 300 is out of range for int8",
        ),
        "partition bounds reversed": Case(
            [
                "table",
                "create",
                c,
                "db.n7",
                "-c",
                "k:int64",
                "--partition-by",
                "k",
                "-p",
                "p1:10:0",
            ],
            "lower bound 10 must be below upper bound 0",
        ),
        "partition bound not a number": Case(
            ["table", "create", c, "db.n8", "-c", "k:int64", "--partition-by", "k", "-p", "p1:a:b"],
            "partition bound 'a' is not a valid int64",
        ),
        "partition spec without bounds": Case(
            ["table", "create", c, "db.n9", "-c", "k:int64", "--partition-by", "k", "-p", "p1"],
            "partition 'p1' must be written NAME:LOWER:UPPER",
        ),
        "overlapping partitions": Case(
            [
                "table",
                "create",
                c,
                "db.n10",
                "-c",
                "k:int64",
                "--partition-by",
                "k",
                "-p",
                "p1:0:10",
                "-p",
                "p2:5:20",
            ],
            "partitions 'p1' and 'p2' overlap",
        ),
        "zero buckets": Case(
            ["table", "create", c, "db.n11", "-c", "id:int64", "--buckets", "0"],
            "buckets must be between 1 and 4096, got 0",
        ),
        "huge bucket count": Case(
            ["table", "create", c, "db.n12", "-c", "id:int64", "--buckets", HUGE],
            f"buckets must be between 1 and 4096, got {HUGE}",
        ),
        "negative replication_num": Case(
            ["table", "create", c, "db.n13", "-c", "id:int64", "--replication-num", "-1"],
            "replication_num must be at least 1, got -1",
        ),
        "unknown partition column": Case(
            [
                "table",
                "create",
                c,
                "db.n14",
                "-c",
                "id:int64",
                "--partition-by",
                "nosuch",
                "-p",
                "p1:0:10",
            ],
            "partition column 'nosuch' is not a column of db.n14",
        ),
    }


def _label_cases(d: Path) -> dict[str, Case]:
    """Item 9: labels are 1 to 128 printable characters, for loads and jobs alike."""
    good = str(d / "good.csv")
    return {
        "empty load label": Case(
            ["load", SRC, "db.t", good, "--label", ""], "label must not be empty"
        ),
        "load label with markup and a bell": Case(
            ["load", SRC, "db.t", good, "--label", "[/]\x07"],
            r"label '[/]\x07' holds a control character",
        ),
        "load label of 10 kB": Case(
            ["load", SRC, "db.t", good, "--label", "l" * 10_000],
            "is 10000 characters long; a label has at most 128",
        ),
        "job label of 10 kB": Case(
            [
                "replicate",
                f"{SRC}:db.t",
                f"{DST}:db.new1",
                "--create-target",
                "--label",
                "l" * 10000,
            ],
            "is 10000 characters long; a label has at most 128",
        ),
        "job label with a newline": Case(
            ["replicate", f"{SRC}:db.t", f"{DST}:db.new2", "--create-target", "--label", "a\nb"],
            r"label 'a\nb' holds a control character",
        ),
        "empty job label": Case(
            ["replicate", f"{SRC}:db.t", f"{DST}:db.new3", "--create-target", "--label", ""],
            "label must not be empty",
        ),
        "job label reused with other arguments": Case(
            ["replicate", f"{SRC}:db.t", f"{DST}:db.new4", "--create-target", "--label", "running"],
            "label 'running' already names job",
        ),
    }


def _replicate_cases(d: Path) -> dict[str, Case]:
    """Items 10 and 12: everything is checked before the target table is created."""
    return {
        "admission refused before creating the target": Case(
            ["replicate", f"{SRC}:db.t", f"{DST}:db.new5", "--create-target"],
            "the limit is 1 (replication_max_parallel_table_count)",
            code=3,
            env={"REPLICATOR_REPLICATION_MAX_PARALLEL_TABLE_COUNT": "1"},
        ),
        "replication_num 0": Case(
            [
                "replicate",
                f"{SRC}:db.t",
                f"{DST}:db.new6",
                "--create-target",
                "--replication-num",
                "0",
            ],
            "replication_num must be at least 1, got 0",
        ),
        "replication_num over the target's backends": Case(
            [
                "replicate",
                f"{SRC}:db.t",
                f"{DST}:db.new7",
                "--create-target",
                "--replication-num",
                "5",
            ],
            "replication_num 5 needs 5 active backends",
        ),
        "target table name with markup": Case(
            ["replicate", f"{SRC}:db.t", f"{DST}:db.[/]", "--create-target"],
            "table name '[/]' is not valid",
        ),
        "replicate to itself": Case(
            ["replicate", f"{SRC}:db.t", SRC], f"source and target are the same table {SRC}:db.t"
        ),
        "different nullability": Case(
            ["replicate", f"{SRC}:db.t", DST], "v: string vs string not null"
        ),
        "missing source table": Case(
            ["replicate", f"{SRC}:db.nosuch", DST, "--create-target"],
            f"source table db.nosuch does not exist in cluster '{SRC}'",
        ),
        "missing target table": Case(
            ["replicate", f"{SRC}:db.t", f"{DST}:db.nosuch"],
            f"target table db.nosuch does not exist in cluster '{DST}'",
        ),
        "source without a table": Case(
            ["replicate", SRC, DST], f"source '{SRC}' must be written CLUSTER:DATABASE.TABLE"
        ),
        "unknown source partition": Case(
            ["replicate", f"{SRC}:db.t", f"{DST}:db.new8", "--create-target", "-p", "nosuch"],
            "partition(s) nosuch do not exist in source table db.t",
        ),
        "target cluster not initialised": Case(
            ["replicate", f"{SRC}:db.t", MISSING, "--create-target"],
            f"cluster '{MISSING}' is not initialised",
        ),
        "target cluster name with capitals": Case(
            ["replicate", f"{SRC}:db.t", "Bad-Name", "--create-target"],
            "cluster name 'Bad-Name' is not valid",
        ),
    }


def _backend_cases(d: Path) -> dict[str, Case]:
    """Item 10 and 11: a backend is checked whole before its directory is made."""
    return {
        "backend of a cluster not initialised": Case(
            ["backend", "add", MISSING, "be9", "--storage", str(d / "scratch" / "be9")],
            f"cluster '{MISSING}' is not initialised",
        ),
        "backend name taken with another root": Case(
            ["backend", "add", SRC, "be1", "--storage", str(d / "scratch" / "other")],
            "backend 'be1' already exists",
        ),
        "backend root is a file": Case(
            ["backend", "add", SRC, "be9", "--storage", str(d / "good.csv")],
            "is a file, not a directory",
        ),
        "backend root inside a file": Case(
            ["backend", "add", SRC, "be9", "--storage", str(d / "good.csv" / "sub")],
            "cannot be made: Not a directory",
        ),
        "backend name with markup": Case(
            ["backend", "add", SRC, "be[/]", "--storage", str(d / "scratch" / "bex")],
            "backend name 'be[/]' is not valid",
        ),
        "backend name too long": Case(
            ["backend", "add", SRC, "b" * 100, "--storage", str(d / "scratch" / "bey")],
            "backend name 'bbb",
        ),
        "empty backend storage": Case(
            ["backend", "add", SRC, "be9", "--storage", ""], "storage root must not be empty"
        ),
        "object root with a bad bucket name": Case(
            ["backend", "add", SRC, "be9", "--storage", "s3://Bad_Bucket/x"],
            "'Bad_Bucket' is not a bucket name",
        ),
        "object root with an unclean prefix": Case(
            ["backend", "add", SRC, "be9", "--storage", "s3://bucket/a/../b"],
            "the prefix is not a clean path",
        ),
        "object root with an unknown option": Case(
            ["backend", "add", SRC, "be9", "--storage", "s3://bucket/x?region=eu"],
            "only ?endpoint=URL may follow the prefix",
        ),
        "object root with a bad endpoint": Case(
            ["backend", "add", SRC, "be9", "--storage", "s3://bucket/x?endpoint=ftp://h:1"],
            "is not http(s)://HOST[:PORT]",
        ),
        "object root whose endpoint does not answer": Case(
            [
                "backend",
                "add",
                SRC,
                "be9",
                "--storage",
                "s3://bucket/x?endpoint=http://127.0.0.1:9",
            ],
            "create the bucket, or check the endpoint",
        ),
        "unknown backend to decommission": Case(
            ["backend", "decommission", SRC, "nosuch"],
            f"backend 'nosuch' does not exist in cluster '{SRC}'",
        ),
    }


def _job_cases(d: Path) -> dict[str, Case]:
    """Item 11: job ids, limits and states."""
    return {
        "job id over bigint": Case(
            ["job", "show", f"{DST}:{HUGE}"], f"job {DST}:{HUGE} does not exist"
        ),
        "cancel a job id over bigint": Case(
            ["job", "cancel", f"{DST}:{HUGE}"], f"job {DST}:{HUGE} does not exist"
        ),
        "unknown job id": Case(
            ["job", "show", f"{DST}:999999"], f"job {DST}:999999 does not exist"
        ),
        "job ref without id": Case(["job", "show", DST], "must be written CLUSTER:ID"),
        "negative job id": Case(["job", "show", f"{DST}:-1"], "must be written CLUSTER:ID"),
        "job ref without cluster": Case(["job", "show", ":1"], "cluster name '' is not valid"),
        "job of a cluster not initialised": Case(
            ["job", "show", f"{MISSING}:1"], f"cluster '{MISSING}' is not initialised"
        ),
        "negative jobs limit": Case(
            ["jobs", "--cluster", DST, "--limit", "-1"], "limit must be at least 1, got -1"
        ),
        "unknown job state": Case(
            ["jobs", "--cluster", DST, "--state", "BOGUS"], "unknown job state 'BOGUS'"
        ),
        "jobs of a cluster not initialised": Case(
            ["jobs", "--cluster", MISSING], f"cluster '{MISSING}' is not initialised"
        ),
    }


def _load_cases(d: Path) -> dict[str, Case]:
    """Files that are missing, directories, empty or not what their name says."""
    c = SRC
    return {
        "missing input file": Case(
            ["load", c, "db.t", str(d / "nosuch.csv"), "--label", "f1"], "does not exist"
        ),
        "directory as input": Case(
            ["load", c, "db.t", str(d / "scratch"), "--label", "f2"], "is a directory"
        ),
        "empty csv": Case(["load", c, "db.t", str(d / "empty.csv"), "--label", "f3"], "empty"),
        "csv named parquet": Case(
            ["load", c, "db.t", str(d / "fake.parquet"), "--label", "f4"], "cannot read"
        ),
        "unknown format": Case(
            ["load", c, "db.t", str(d / "good.csv"), "--label", "f5", "--format", "xml"],
            "unknown format 'xml'",
        ),
        "null in a not null column": Case(
            ["load", c, "db.t", str(d / "null_id.csv"), "--label", "f6"],
            "column 'id' is NOT NULL but has 1 nulls",
        ),
        "number over int64 in csv": Case(
            ["load", c, "db.t", str(d / "huge.csv"), "--label", "f7"], "cannot read"
        ),
        "unknown partition to compact": Case(
            ["compact", c, "db.t", "-p", "nosuch"], "partition(s) nosuch not in db.t"
        ),
        "unknown partition to checksum": Case(
            ["checksum", c, "db.t", "-p", "nosuch"], "partition(s) nosuch do not exist"
        ),
        "unknown table to show": Case(
            ["table", "show", c, "db.nosuch"], f"table db.nosuch in cluster '{c}' does not exist"
        ),
    }


def _settings_cases(d: Path, dsn_template: str) -> dict[str, Case]:
    """Item 11: settings files and DSNs; bad credentials are a user mistake, not transient."""
    # The same server, as a role that does not exist: Postgres refuses the login.
    stranger = re.sub(r"://[^@/]*@", "://nosuchrole@", dsn_template, count=1)
    down = re.sub(r"@[^/]*/", "@127.0.0.1:1/", dsn_template, count=1)
    return {
        "config path is a directory": Case(
            ["table", "list", SRC], "is a directory", env={"REPLICATOR_CONFIG": str(d)}
        ),
        "config file missing": Case(
            ["table", "list", SRC],
            "settings file",
            env={"REPLICATOR_CONFIG": str(d / "nosuch.toml")},
        ),
        "config file not toml": Case(
            ["table", "list", SRC],
            "is not valid TOML",
            env={"REPLICATOR_CONFIG": str(d / "good.csv")},
        ),
        "dsn_template with a stray brace": Case(
            ["table", "list", SRC],
            "dsn_template",
            env={"REPLICATOR_DSN_TEMPLATE": dsn_template + "{"},
        ),
        "dsn_template with an unknown field": Case(
            ["table", "list", SRC],
            "dsn_template",
            env={"REPLICATOR_DSN_TEMPLATE": dsn_template + "{nosuch}"},
        ),
        "credentials refused": Case(
            ["table", "list", SRC], "refused", env={"REPLICATOR_DSN_TEMPLATE": stranger}
        ),
        "postgres down is transient": Case(
            ["table", "list", SRC],
            "cannot reach Postgres",
            code=3,
            env={"REPLICATOR_DSN_TEMPLATE": down},
        ),
        "setting that is not a number": Case(
            ["table", "list", SRC],
            "setting REPLICATOR_TASK_LEASE_SEC must be a number",
            env={"REPLICATOR_TASK_LEASE_SEC": "soon"},
        ),
        "cluster name with a control character": Case(
            ["table", "list", "c\x1b[2J"], r"cluster name 'c\x1b[2J' is not valid"
        ),
        "empty cluster name": Case(["cluster", "init", ""], "cluster name '' is not valid"),
        "cluster name too long": Case(["cluster", "init", "c" * 41], "is not valid"),
        "tables of a cluster not initialised": Case(
            ["table", "list", MISSING], f"cluster '{MISSING}' is not initialised"
        ),
        "backends of a cluster not initialised": Case(
            ["backend", "list", MISSING], f"cluster '{MISSING}' is not initialised"
        ),
    }


def _cases(d: Path, dsn_template: str) -> dict[str, Case]:
    return {
        **_name_cases(d),
        **_label_cases(d),
        **_replicate_cases(d),
        **_backend_cases(d),
        **_job_cases(d),
        **_load_cases(d),
        **_settings_cases(d, dsn_template),
    }


CASE_NAMES = list(_cases(Path("/"), "postgresql://u@h/x_{cluster}"))


# -- the clusters and their state ------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad-inputs")
    (d / "good.csv").write_text("id,k,v\n1,5,a\n2,150,b\n3,42,c\n")
    (d / "unpart.csv").write_text("id,v\n1,a\n2,b\n")
    (d / "empty.csv").write_text("")
    (d / "fake.parquet").write_text("id,k,v\n1,5,a\n")
    (d / "null_id.csv").write_text("id,k,v\n,5,a\n")
    (d / "huge.csv").write_text(f"id,k,v\n{HUGE},5,a\n")
    (d / "scratch").mkdir()
    return d


@pytest.fixture(scope="module")
def clusters(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, inputs: Path
) -> Iterator[tuple[ClusterHandle, ClusterHandle]]:
    r = replicator(settings)
    roots = tmp_path_factory.mktemp("bad-input-roots")
    src, dst = r.cluster(SRC), r.cluster(DST)
    src.init()
    dst.init()
    src.add_backend("be1", str(roots / "src1"))
    src.add_backend("be2", str(roots / "src2"))
    dst.add_backend("be1", str(roots / "dst1"))
    cols = ["id:int64:not null", "k:int64", "v:string"]
    parts = [("p1", 0, 100), ("p2", 100, 200)]
    src.create_table("db.t", cols, partition_by="k", partitions=parts, buckets=2, replication_num=2)
    src.create_table("db.u", ["id:int64", "v:string"], buckets=2)
    src.load("db.t", str(inputs / "good.csv"), label="base")
    src.load("db.u", str(inputs / "unpart.csv"), label="base-u")
    # The target's db.t differs from the source's in one column's nullability only.
    dst.create_table(
        "db.t",
        ["id:int64:not null", "k:int64", "v:string:not null"],
        partition_by="k",
        partitions=parts,
        buckets=2,
    )
    # A job nobody runs (no coordinator here): it stays INITIALIZING, so it counts for admission.
    r.replicate(f"{SRC}:db.t", f"{DST}:db.running", create_target=True, label="running")
    yield src, dst
    engine_module.drop_database(src.catalog.dsn)
    engine_module.drop_database(dst.catalog.dsn)


def _rows(handle: ClusterHandle) -> dict[str, list[Any]]:
    """Every catalog row, but transactions and rowsets a refused load aborted (they stay, by
    design: the load began and was rolled back)."""
    out: dict[str, list[Any]] = {}
    with handle.catalog.engine.connect() as conn:
        for table in s.metadata.sorted_tables:
            q = sa.select(table).order_by(*table.primary_key.columns)
            if table is s.transactions:
                q = q.where(s.transactions.c.state != "ABORTED")
            if table is s.rowsets:
                q = q.where(s.rowsets.c.state != "ABORTED")
            out[table.name] = [tuple(r) for r in conn.execute(q)]
    return out


def _paths(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def snapshot(
    src: ClusterHandle, dst: ClusterHandle, settings: Settings, inputs: Path
) -> dict[str, Any]:
    """Everything a refused command must leave as it was."""
    roots = {Path(b.storage_root).parent for h in (src, dst) for b in h.backends()}
    admin = sa.create_engine(sa.engine.make_url(settings.dsn(SRC)).set(database="postgres"))
    try:
        with admin.connect() as conn:
            databases = conn.execute(sa.text("SELECT datname FROM pg_database ORDER BY 1")).all()
    finally:
        admin.dispose()
    return {
        "source catalog": _rows(src),
        "target catalog": _rows(dst),
        "storage and scratch": [_paths(r) for r in sorted(roots)] + [_paths(inputs)],
        "databases": databases,
    }


Outcomes = tuple[dict[str, Any], dict[str, subprocess.CompletedProcess[str]], dict[str, Any]]


@pytest.fixture(scope="module")
def outcomes(
    clusters: tuple[ClusterHandle, ClusterHandle],
    settings: Settings,
    test_env: dict[str, str],
    inputs: Path,
) -> Outcomes:
    src, dst = clusters
    before = snapshot(src, dst, settings, inputs)
    cases = _cases(inputs, settings.dsn_template)

    def run(case: Case) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                command(*case.args),
                env=test_env | case.env,
                cwd=inputs,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired as exc:  # one hung command fails its case only
            return subprocess.CompletedProcess(exc.cmd, -9, "", f"timed out: {exc.stderr!r}")

    # A few at a time: the CLI is CPU-bound at start-up, and each one opens catalog connections.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, case) for name, case in cases.items()}
        results = {name: f.result() for name, f in futures.items()}
    after = snapshot(src, dst, settings, inputs)
    return before, results, after


def test_the_suite_is_big_enough() -> None:
    assert len(CASE_NAMES) >= 50


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_bad_command_prints_one_line_naming_it_exits_2_and_changes_nothing(
    name: str, outcomes: Outcomes, inputs: Path, settings: Settings
) -> None:
    before, results, after = outcomes
    case = _cases(inputs, settings.dsn_template)[name]
    res = results[name]
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert case.words in lines[0], lines[0]
    assert "\x1b" not in res.stderr  # names are shown escaped, never reach the terminal raw
    assert res.returncode == case.code, res.stderr
    assert res.stdout == ""
    assert after == before


# -- rows an older version could have written are shown, escaped -----------------------------

NASTY = "[/]\x1b[31m[bold]"


@pytest.fixture(scope="module")
def legacy(
    outcomes: Outcomes, clusters: tuple[ClusterHandle, ClusterHandle]
) -> tuple[ClusterHandle, ClusterHandle]:
    """Rows with names and labels that are refused today, written straight into the catalogs
    (after the bad-input cases, which compared the catalogs without them)."""
    src, dst = clusters
    with src.catalog.engine.begin() as conn:
        db_id = conn.execute(
            sa.select(s.databases.c.id).where(s.databases.c.name == "db")
        ).scalar_one()
        conn.execute(
            sa.insert(s.tables).values(
                db_id=db_id,
                name=NASTY,
                columns=[{"name": NASTY, "type": "int64", "nullable": True}],
                schema_hash=1,
                partition_column=NASTY,
                distribution_columns=[NASTY],
                buckets=1,
                replication_num=1,
            )
        )
        conn.execute(
            sa.insert(s.backends).values(
                name=NASTY, storage_root=f"/nowhere/{NASTY}", state="DECOMMISSIONED"
            )
        )
    with dst.catalog.engine.begin() as conn:
        for state, dst_table in (("ABORTED", "db.t"), ("SNAPSHOTING", f"db.{NASTY}")):
            job_id = conn.execute(
                sa.insert(s.jobs)
                .values(
                    label=f"{NASTY}-{state}",
                    state=state,
                    src_cluster=SRC,
                    src_table=f"db.{NASTY}",
                    dst_table=dst_table,
                    options={"partitions": [NASTY]},
                    args_digest="x",
                    message=NASTY,
                    finished_at=sa.func.now() if state == "ABORTED" else None,
                )
                .returning(s.jobs.c.id)
            ).scalar_one()
            conn.execute(
                sa.insert(s.job_events).values(
                    job_id=job_id, to_state=state, reason=NASTY, actor=NASTY
                )
            )
    return src, dst


def _cli(test_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Wide enough that no table cell wraps.
    env = test_env | {"COLUMNS": "300"}
    return subprocess.run(command(*args), env=env, capture_output=True, text=True, timeout=120)


def _legacy_job_ids(dst: ClusterHandle) -> list[int]:
    with dst.catalog.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(s.jobs.c.id).where(s.jobs.c.label.like("[/]%")).order_by(s.jobs.c.id)
            ).scalars()
        )


@pytest.mark.parametrize(
    "args",
    [
        ["table", "list", SRC],
        ["backend", "list", SRC],
        ["jobs", "--cluster", DST],
        ["job", "show", "LEGACY0"],
        ["job", "show", "LEGACY1"],
        ["jobs", "watch", "--cluster", DST, "--timeout", "1", "--interval", "0.2"],
    ],
    ids=["table list", "backend list", "jobs", "job show aborted", "job show running", "watch"],
)
def test_listings_show_names_refused_today_escaped(
    args: list[str], legacy: tuple[ClusterHandle, ClusterHandle], test_env: dict[str, str]
) -> None:
    _src, dst = legacy
    ids = _legacy_job_ids(dst)
    args = [f"{DST}:{ids[int(a[-1])]}" if a.startswith("LEGACY") else a for a in args]
    res = _cli(test_env, *args)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == (1 if "watch" in args else 0), res.stderr
    assert "\x1b" not in res.stdout + res.stderr  # the escape sequence reaches no terminal
    assert r"[/]\x1b[31m[bold]" in res.stdout.replace("\n", ""), res.stdout


# -- the library refuses the same inputs ----------------------------------------------------


def test_the_python_api_refuses_bad_names_with_user_errors(
    clusters: tuple[ClusterHandle, ClusterHandle], settings: Settings
) -> None:
    from app.errors import InvalidRequest

    src, _dst = clusters
    with pytest.raises(InvalidRequest, match="table name"):
        src.create_table("db.[/]", ["id:int64"])
    with pytest.raises(InvalidRequest, match="column name"):
        src.create_table("db.ok", [("c" * 65, "int64")])
    with pytest.raises(InvalidRequest, match="partition name"):
        src.create_table("db.ok", ["k:int64"], partition_by="k", partitions=[("p\n", 0, 1)])
    with pytest.raises(InvalidRequest, match="label"):
        Replicator(settings).replicate(f"{SRC}:db.t", f"{DST}:db.ok", label="x" * 129)
    with pytest.raises(InvalidRequest, match="label"):
        src.load("db.t", [{"id": 1, "k": 1, "v": "a"}], label="a\tb")
    assert "db.ok" not in [t.full_name for t in src.tables()]
    assert os.path.isdir(src.backends()[0].storage_root)


# -- replicate: the target is created only by a submit whose job is recorded -----------------


def test_racing_create_target_submits_name_the_winning_job(
    legacy: tuple[ClusterHandle, ClusterHandle], settings: Settings
) -> None:
    """Two submits of one new target at once: one job, and the other is told which job holds
    the target (it used to hear "table already exists", or find the table made under it)."""
    import threading

    from app.errors import TableBusy

    r = Replicator(settings)
    for round_ in range(3):
        target = f"{DST}:db.race{round_}"
        start = threading.Barrier(2)
        results: dict[str, Any] = {}

        def submit(
            label: str,
            target: str = target,
            start: threading.Barrier = start,
            results: dict[str, Any] = results,
        ) -> None:
            start.wait()
            try:
                results[label] = r.replicate(f"{SRC}:db.u", target, create_target=True, label=label)
            except Exception as exc:  # the assertions below say which one is expected
                results[label] = exc

        threads = [threading.Thread(target=submit, args=(f"race{round_}{x}",)) for x in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        jobs = [v for v in results.values() if not isinstance(v, Exception)]
        refused = [v for v in results.values() if isinstance(v, Exception)]
        assert len(jobs) == 1 and len(refused) == 1, results
        assert isinstance(refused[0], TableBusy), refused[0]
        assert f"already being replicated by job {jobs[0].ref} ({jobs[0].label})" in str(refused[0])


def test_an_unpartitioned_table_pairs_with_a_differently_named_target(
    legacy: tuple[ClusterHandle, ClusterHandle], settings: Settings
) -> None:
    _src, dst = legacy
    job = Replicator(settings).replicate(f"{SRC}:db.u", f"{DST}:db.u_copy", create_target=True)
    assert job.state == "INITIALIZING", job.message
    [target_partition] = dst.partitions("db.u_copy")
    assert target_partition.name == "u_copy"  # named after its own table
    # What the coordinator will plan: the source's one partition onto the target's.
    pair = TablePair.parse(f"{SRC}:db.u", f"{DST}:db.u_copy")
    plan = make_plan(Cluster(settings, SRC), Cluster(settings, DST), pair)
    [planned] = plan.partitions
    assert (planned.name, planned.dst_partition_id) == ("u", target_partition.id)
    assert len(plan.tablets) == 2  # both buckets pair
