"""Setting the stage: the services answer, the demo's clusters are fresh, the data is loaded."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from app.errors import InvalidRequest, ReplicatorError, SetupError
from app.queues import cluster_pattern
from app.units import MB
from frontends.demo.common import (
    BACKENDS,
    CLUSTERS,
    DEFAULT_SCALE_FACTOR,
    DEMO_DIR,
    LOG_DIR,
    PARTS,
    SOURCE,
    TABLE,
    console,
    one_line,
    safe_url,
)
from frontends.supervise import ROOT
from frontends.tpch import lineitem_files, parquet_rows


def preflight(settings: Any) -> None:
    import redis

    from app.catalog.engine import database_exists

    try:
        database_exists(settings.dsn(SOURCE))
    except ReplicatorError as exc:  # StorageUnavailable: its message names database and cause
        raise SetupError(f"{one_line(exc)} (is it running? `make services`)") from None
    except Exception as exc:  # turned into one line
        raise SetupError(
            f"cannot reach Postgres for {_database_name(settings.dsn(SOURCE))}: {one_line(exc)} "
            "(is it running? `make services`)"
        ) from None
    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=3).ping()
    except Exception as exc:
        raise SetupError(
            f"cannot reach the Redis broker at {safe_url(settings.broker_url)}: {one_line(exc)} "
            "(is it running? `make services`)"
        ) from None


def _database_name(dsn: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(dsn).database or dsn


def _backend_roots(dsn: str) -> list[str]:
    """Storage roots the catalog names; [] when it has no backends table yet."""
    import sqlalchemy as sa

    engine = sa.create_engine(dsn)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("SELECT storage_root FROM backends"))]
    except sa.exc.ProgrammingError:
        return []
    finally:
        engine.dispose()


def _under(path: str | Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def reset_clusters(settings: Any) -> None:
    from app.catalog.engine import database_exists, drop_database
    from frontends.demo.lake import LAKE, forget_store, roots_are_ours

    for name in (*CLUSTERS, LAKE):
        dsn = settings.dsn(name)
        if not database_exists(dsn):
            continue
        roots = _backend_roots(dsn)
        if name == LAKE:
            foreign = [] if roots_are_ours(roots) else roots
        else:
            foreign = [r for r in roots if not _under(r, DEMO_DIR)]
        if foreign:
            raise SetupError(
                f"cluster {name!r} (database {_database_name(dsn)}) exists and is not a demo "
                f"cluster (it has storage at {foreign[0]}); the demo will not drop it. "
                "Point REPLICATOR_DSN_TEMPLATE elsewhere or drop it yourself."
            )
        drop_database(dsn)
        console.print(
            f"  dropped cluster [bold]{name}[/] (catalog database {_database_name(dsn)}) "
            "from a previous demo run"
        )
    for name in CLUSTERS:
        storage = DEMO_DIR / name
        if storage.exists():
            shutil.rmtree(storage)
            console.print(f"  deleted storage {storage.relative_to(ROOT)}/")
    forget_store()
    for leftover in DEMO_DIR.glob("beat-schedule*"):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(LOG_DIR, ignore_errors=True)


def purge_demo_queues(broker_url: str) -> int:
    """Drop messages a previous demo left in the backend queues (they name jobs that are gone)."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_connect_timeout=3)
    dropped = 0
    for cluster in CLUSTERS:
        for key in client.scan_iter(match=cluster_pattern(cluster), count=1000):
            if client.type(key) == b"list":
                dropped += int(client.llen(key))
                client.delete(key)
    return dropped


def create_clusters(replicator: Any, transfer_urls: dict[str, str]) -> None:
    from frontends.demo.lake import LAKE

    replicator.cluster(LAKE).init()  # its backends come with its store, in the last step
    for name in CLUSTERS:
        handle = replicator.cluster(name)
        handle.init()
        for backend in BACKENDS:
            handle.add_backend(backend, str(DEMO_DIR / name / backend), transfer_urls[name])
        console.print(
            f"  cluster [bold]{name}[/]: catalog {_database_name(replicator.settings.dsn(name))}, "
            f"backends {', '.join(BACKENDS)} under {(DEMO_DIR / name).relative_to(ROOT)}/"
        )


def scale_factor() -> float:
    raw = os.environ.get("DEMO_SCALE_FACTOR")
    if raw is None:
        return DEFAULT_SCALE_FACTOR
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"DEMO_SCALE_FACTOR must be a number, got {raw!r}") from None
    if not 0 < value <= 100:
        raise InvalidRequest(f"DEMO_SCALE_FACTOR must be in (0, 100], got {raw!r}")
    return value


def generate(sf: float) -> list[Path]:
    """The PARTS lineitem files of scale factor ``sf`` in part order (cached)."""
    with console.status(f"Generating TPC-H lineitem at scale factor {sf:g} with tpchgen-cli..."):
        started = time.monotonic()
        try:
            files = lineitem_files(sf, parts=PARTS)
        except subprocess.CalledProcessError as exc:
            raise SetupError(f"tpchgen-cli failed with exit code {exc.returncode}") from None
        took = time.monotonic() - started

    def part_no(path: Path) -> int:
        try:
            return int(path.name.split(".")[1])
        except (IndexError, ValueError):
            return 0

    files = sorted(files, key=part_no)
    size = sum(f.stat().st_size for f in files)
    how = f"generated in {took:.1f}s" if took > 0.5 else "cached"
    console.print(
        f"  TPC-H lineitem SF {sf:g}: {len(files)} Parquet files, {size / MB:.0f} MB ({how}, "
        f"{files[0].parent.relative_to(ROOT)}/)"
    )
    return files


@dataclass
class LoadReport:
    rows: int
    bytes: int
    files: int
    seconds: float
    versions: dict[str, int]


def load_files(handle: Any, files: Sequence[Path], label: str, what: str) -> LoadReport:
    """Load the files as one transaction, with a progress bar of rows read."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    total = parquet_rows(files)
    scanner = ds.dataset([str(f) for f in files], format="parquet").scanner()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        TaskProgressColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(f"Loading {what}", total=total)

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in scanner.to_batches():
                bar.advance(task, batch.num_rows)
                yield batch
            bar.update(task, description=f"Committing {what}")

        reader = pa.RecordBatchReader.from_batches(scanner.projected_schema, batches())
        started = time.monotonic()
        result = handle.load(TABLE, reader, label=label)
        took = time.monotonic() - started
    return LoadReport(result.rows, result.bytes, result.files, took, dict(result.versions))


def print_load(report: LoadReport, cluster: str) -> None:
    versions = sorted(set(report.versions.values()))
    if len(versions) == 1:
        where = f"partitions now at v{versions[0]}"
    else:
        where = ", ".join(f"{p}=v{v}" for p, v in sorted(report.versions.items()))
    console.print(
        f"  loaded {report.rows:,} rows in {report.seconds:.1f}s: {report.files} rowsets, "
        f"{report.bytes / MB:.1f} MB with replicas; {where}"
    )
