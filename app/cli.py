"""The ``replicator`` command line. User mistakes print one line and exit non-zero."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.client import Replicator
from app.cluster import PartitionSpec
from app.errors import ReplicatorError, UserError

cli = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
cluster_cli = typer.Typer(no_args_is_help=True, help="Create and inspect clusters.")
backend_cli = typer.Typer(no_args_is_help=True, help="Manage a cluster's backends.")
table_cli = typer.Typer(no_args_is_help=True, help="Create and inspect tables.")
cli.add_typer(cluster_cli, name="cluster")
cli.add_typer(backend_cli, name="backend")
job_cli = typer.Typer(no_args_is_help=True, help="Inspect and cancel one replication job.")
cli.add_typer(table_cli, name="table")
cli.add_typer(job_cli, name="job")

out = Console(soft_wrap=True)
err = Console(stderr=True)


def _replicator() -> Replicator:
    return Replicator()


@cluster_cli.command("init")
def cluster_init(name: str) -> None:
    """Create the cluster's catalog database, or migrate it to the newest schema."""
    created, before, after = _replicator().cluster(name).init()
    if created:
        out.print(f"cluster {name}: catalog created at revision {after}")
    elif before != after:
        out.print(f"cluster {name}: catalog migrated from {before} to {after}")
    else:
        out.print(f"cluster {name}: catalog already at revision {after}")


@backend_cli.command("add")
def backend_add(
    cluster: str,
    name: str,
    storage: Annotated[Path, typer.Option("--storage", help="Storage root directory")],
) -> None:
    """Add a backend (queue be.CLUSTER.NAME) with its storage root."""
    b = _replicator().cluster(cluster).add_backend(name, str(storage))
    out.print(f"backend {b.name} ({b.state}) storage {b.storage_root} queue be.{cluster}.{b.name}")


@backend_cli.command("list")
def backend_list(cluster: str) -> None:
    """List backends."""
    t = Table("name", "state", "storage", "queue")
    for b in _replicator().cluster(cluster).backends():
        t.add_row(b.name, b.state, b.storage_root, f"be.{cluster}.{b.name}")
    out.print(t)


@backend_cli.command("decommission")
def backend_decommission(cluster: str, name: str) -> None:
    """Stop placing tablets on a backend that holds no replicas."""
    b = _replicator().cluster(cluster).decommission_backend(name)
    out.print(f"backend {b.name} is {b.state}")


@table_cli.command("create")
def table_create(
    cluster: str,
    table: Annotated[str, typer.Argument(help="DATABASE.TABLE")],
    column: Annotated[list[str], typer.Option("--column", "-c", help="NAME:TYPE[:not null]")],
    partition_by: Annotated[str | None, typer.Option(help="Range partition column")] = None,
    partition: Annotated[
        list[str] | None, typer.Option("--partition", "-p", help="NAME:LOWER:UPPER")
    ] = None,
    distributed_by: Annotated[list[str] | None, typer.Option(help="Hash column(s)")] = None,
    buckets: int = 1,
    replication_num: int = 1,
) -> None:
    """Create a table with range partitions and hash buckets."""
    info = _replicator().cluster(cluster).create_table(
        table,
        column,
        partition_by=partition_by,
        partitions=[PartitionSpec.parse(p) for p in partition or []],
        distributed_by=distributed_by or [],
        buckets=buckets,
        replication_num=replication_num,
    )
    out.print(
        f"table {info.full_name} created: schema hash {info.schema_hash}, "
        f"{info.buckets} buckets, replication_num {info.replication_num}"
    )


@table_cli.command("list")
def table_list(cluster: str) -> None:
    """List tables."""
    t = Table("table", "columns", "partition by", "buckets", "replicas", "schema hash")
    for info in _replicator().cluster(cluster).tables():
        t.add_row(
            info.full_name, str(len(info.columns)), info.partition_column or "-",
            str(info.buckets), str(info.replication_num), str(info.schema_hash),
        )
    out.print(t)


@table_cli.command("show")
def table_show(cluster: str, table: str) -> None:
    """Show a table's columns and partitions."""
    handle = _replicator().cluster(cluster)
    info = handle.table(table)
    out.print(f"[bold]{info.full_name}[/] schema hash {info.schema_hash}")
    out.print("columns: " + ", ".join(f"{c.name} {c.type}" for c in info.columns))
    t = Table("partition", "range", "version", "epoch")
    for p in handle.partitions(table):
        t.add_row(p.name, f"[{p.lower}, {p.upper})", str(p.visible_version), str(p.version_epoch))
    out.print(t)


@cli.command("load")
def load(
    cluster: str,
    table: str,
    path: Path,
    label: Annotated[str, typer.Option(help="Unique per database; the same label loads once")],
    format: Annotated[str | None, typer.Option(help="parquet, csv or arrow")] = None,
    overwrite: bool = False,
) -> None:
    """Load a Parquet, CSV or Arrow file as one transaction."""
    res = _replicator().cluster(cluster).load(
        table, str(path), label=label, overwrite=overwrite, format=format
    )
    if res.already_loaded:
        out.print(f"label {label} was already loaded (transaction {res.txn_id}); nothing to do")
        return
    versions = ", ".join(f"{p}=v{v}" for p, v in res.versions.items())
    out.print(f"loaded {res.rows} rows, {res.files} files, {res.bytes} bytes; {versions}")


@cli.command("compact")
def compact(
    cluster: str,
    table: str,
    partition: Annotated[list[str] | None, typer.Option("--partition", "-p")] = None,
) -> None:
    """Merge each tablet's visible rowsets into one."""
    rep = _replicator().cluster(cluster).compact(table, partitions=partition)
    out.print(f"compacted {rep.tablets} tablets: {rep.rowsets_merged} rowsets into {rep.rowsets_written}")


@cli.command("gc")
def gc(cluster: str) -> None:
    """Delete unneeded files: stale rowsets, aborted loads, orphans, expired holds."""
    rep = _replicator().cluster(cluster).gc()
    out.print(
        f"aborted {rep.aborted_transactions} expired transactions, deleted {rep.deleted_rowsets} "
        f"rowsets ({rep.kept_by_holds} kept by holds), {rep.orphan_files} orphan dirs, "
        f"{rep.staging_dirs} staging dirs, {rep.expired_holds} expired holds"
    )


@cli.command("checksum")
def checksum(
    cluster: str,
    table: str,
    partition: Annotated[list[str] | None, typer.Option("--partition", "-p")] = None,
) -> None:
    """Per partition: version, epoch, row count and an order-independent content checksum."""
    t = Table("partition", "version", "epoch", "rows", "checksum")
    for c in _replicator().cluster(cluster).checksum(table, partition):
        t.add_row(c.partition, str(c.version), str(c.epoch), str(c.rows), c.checksum)
    out.print(t)


def _progress_line(job: Any) -> str:
    p = job.progress
    return (
        f"{job.ref} {job.state}: snapshots {p.snapshots_done}/{p.snapshots_total}, "
        f"replicas {p.tablets_done}/{p.tablets_total}, bytes {p.bytes_done}/{p.bytes_total}"
    )


@cli.command("replicate")
def replicate(
    src: Annotated[str, typer.Argument(help="CLUSTER:DATABASE.TABLE")],
    dst: Annotated[str, typer.Argument(help="CLUSTER[:DATABASE.TABLE]")],
    partition: Annotated[list[str] | None, typer.Option("--partition", "-p")] = None,
    label: Annotated[str | None, typer.Option(help="Same label, same job")] = None,
    create_target: Annotated[bool, typer.Option(help="Create the target table if missing")] = False,
    replication_num: Annotated[int | None, typer.Option(help="For a created target")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for COMMITTED or ABORTED")] = False,
    timeout: float = 3600.0,
) -> None:
    """Replicate a table's partitions at their current source versions, as one transaction."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    r = _replicator()
    job = r.replicate(
        src, dst, partitions=partition, label=label, create_target=create_target,
        replication_num=replication_num,
    )
    out.print(f"job {job.ref} ({job.label}): {job.state}" + (f" - {job.message}" if job.message else ""))
    if not wait or job.state.final:
        if job.state == "ABORTED":
            sys.exit(1)
        return
    import time

    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    ) as bar:
        task = bar.add_task(job.ref, total=None)
        while not job.refresh().state.final and time.monotonic() < deadline:
            p = job.progress
            bar.update(
                task, description=f"{job.ref} {job.state}", completed=p.bytes_done,
                total=p.bytes_total or None,
            )
            time.sleep(0.2)
    out.print(f"job {job.ref}: {job.state} - {job.message or ''}")
    if job.state != "COMMITTED":
        sys.exit(1)


@cli.command("jobs")
def jobs(
    cluster: Annotated[str | None, typer.Option(help="Target cluster (default: all)")] = None,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state")] = None,
    limit: int = 50,
) -> None:
    """List replication jobs, newest first."""
    from app.catalog.engine import discover_clusters

    r = _replicator()
    names = [cluster] if cluster else discover_clusters(r.settings.dsn_template, list(r.settings.clusters))
    t = Table("job", "label", "state", "source", "target", "created", "message")
    for name in names:
        for job in r.jobs(name, state=state, limit=limit):
            rec = job.record
            t.add_row(
                rec.ref, rec.label, rec.state, rec.src, rec.dst,
                rec.created_at.strftime("%Y-%m-%d %H:%M:%S"), rec.message or "",
            )
    out.print(t)


@job_cli.command("show")
def job_show(ref: Annotated[str, typer.Argument(help="CLUSTER:ID")]) -> None:
    """Plan, per-partition versions, tasks, events and errors of one job."""
    job = _replicator().job(ref)
    rec = job.record
    out.print(f"[bold]job {rec.ref}[/] {rec.label}: [bold]{rec.state}[/] {rec.src} -> {rec.dst}")
    if rec.message:
        out.print(f"message: {rec.message}")
    out.print(_progress_line(job))
    pt = Table("partition", "mode", "source version", "source epoch", "target version (before)")
    for p in job.partitions():
        pt.add_row(p.partition_name, p.mode, str(p.src_version), str(p.src_epoch), str(p.dst_version))
    out.print(pt)
    tt = Table("task", "kind", "partition", "bucket", "queue", "state", "attempts", "bytes", "error")
    for task in job.tasks():
        tt.add_row(
            str(task.id), task.kind, task.partition_name, str(task.bucket), task.queue, task.state,
            str(task.attempts), f"{task.bytes_done}/{task.bytes_total}", task.error or "",
        )
    out.print(tt)
    et = Table("at", "from", "to", "reason", "by")
    for e in job.events:
        et.add_row(e.at.strftime("%H:%M:%S.%f")[:-3], e.from_state or "", e.to_state, e.reason, e.actor or "")
    out.print(et)


@job_cli.command("cancel")
def job_cancel(ref: Annotated[str, typer.Argument(help="CLUSTER:ID")]) -> None:
    """Abort a job: the target stays exactly as it was."""
    job = _replicator().job(ref)
    if job.cancel():
        out.print(f"job {job.ref}: cancel requested; the coordinator aborts it")
    else:
        out.print(f"job {job.ref} already finished as {job.state}; nothing to cancel")


@cli.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option(help="Cluster of the backend")],
    backend: Annotated[str, typer.Option(help="Backend whose queue to serve")],
    concurrency: int = 2,
) -> None:
    """Start a Celery worker for one backend's queue be.CLUSTER.BACKEND (extra args go to celery)."""
    import os

    r = _replicator()
    r.cluster(cluster).catalog.backend(backend)  # a clear error for unknown names
    queue = f"be.{cluster}.{backend}"
    args = [
        sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queue,
        "-n", f"{queue}@%h", "-c", str(concurrency), "--prefetch-multiplier", "1", "-E",
        "--loglevel", "INFO", *ctx.args,
    ]
    os.execv(sys.executable, args)


@cli.command("coordinator", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def coordinator(
    ctx: typer.Context,
    concurrency: int = 2,
    beat: Annotated[bool, typer.Option(help="Also run the beat scheduler in this process")] = True,
    schedule: Annotated[Path, typer.Option(help="Beat schedule file")] = Path("var/celerybeat-schedule"),
) -> None:
    """Start the coordinator worker (queue `coordinator`) and, by default, the beat tick."""
    import os

    schedule.parent.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "coordinator",
        "-n", "coordinator@%h", "-c", str(concurrency), "--prefetch-multiplier", "1", "-E",
        "--loglevel", "INFO",
    ]
    if beat:
        args += ["-B", "-s", str(schedule)]
    os.execv(sys.executable, [*args, *ctx.args])


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli(args=argv, standalone_mode=False)
    except UserError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ReplicatorError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(3)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
