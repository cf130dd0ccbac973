"""The ``replicator`` command line. User mistakes print one line and exit non-zero."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app.client import Replicator
from app.cluster import PartitionSpec
from app.errors import ReplicatorError, UserError
from app.queues import queue_name

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
    info = (
        _replicator()
        .cluster(cluster)
        .create_table(
            table,
            column,
            partition_by=partition_by,
            partitions=[PartitionSpec.parse(p) for p in partition or []],
            distributed_by=distributed_by or [],
            buckets=buckets,
            replication_num=replication_num,
        )
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
            info.full_name,
            str(len(info.columns)),
            info.partition_column or "-",
            str(info.buckets),
            str(info.replication_num),
            str(info.schema_hash),
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
    res = (
        _replicator()
        .cluster(cluster)
        .load(table, str(path), label=label, overwrite=overwrite, format=format)
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
    out.print(
        f"compacted {rep.tablets} tablets: {rep.rowsets_merged} rowsets into {rep.rowsets_written}"
    )


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
        src,
        dst,
        partitions=partition,
        label=label,
        create_target=create_target,
        replication_num=replication_num,
    )
    out.print(
        f"job {job.ref} ({job.label}): {job.state}"
        + (f" - {escape(job.message)}" if job.message else "")
    )
    if not wait or job.state.final:
        if job.state == "ABORTED":
            sys.exit(1)
        return
    import time

    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(job.ref, total=None)
        while not job.refresh().state.final and time.monotonic() < deadline:
            p = job.progress
            bar.update(
                task,
                description=f"{job.ref} {job.state}",
                completed=p.bytes_done,
                total=p.bytes_total or None,
            )
            time.sleep(0.2)
    out.print(f"job {job.ref}: {job.state} - {escape(job.message or '')}")
    if job.state != "COMMITTED":
        sys.exit(1)


jobs_cli = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="List replication jobs (newest first), or watch the running ones.",
)
cli.add_typer(jobs_cli, name="jobs")
metrics_cli = typer.Typer(no_args_is_help=True, help="Prometheus metrics read from the catalogs.")
cli.add_typer(metrics_cli, name="metrics")


def _cluster_names(r: Replicator, clusters: list[str] | None) -> list[str]:
    from app.catalog.engine import discover_clusters

    if clusters:
        return list(clusters)
    return discover_clusters(r.settings.dsn_template, list(r.settings.clusters))


@jobs_cli.callback()
def jobs(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Option(help="Target cluster (default: all)")] = None,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state")] = None,
    limit: int = 50,
) -> None:
    """List replication jobs, newest first (`jobs watch` follows the running ones)."""
    if ctx.invoked_subcommand is not None:
        return
    r = _replicator()
    t = Table("job", "label", "state", "source", "target", "created", "message")
    for name in _cluster_names(r, [cluster] if cluster else None):
        for job in r.jobs(name, state=state, limit=limit):
            rec = job.record
            t.add_row(
                rec.ref,
                rec.label,
                rec.state,
                rec.src,
                rec.dst,
                rec.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                escape(rec.message or ""),
            )
    out.print(t)


_ACTIVE_SQL = """
SELECT j.id, j.label, j.state, j.src_cluster, j.src_table, j.dst_table,
       extract(epoch FROM now() - j.created_at) AS age,
       count(t.id) FILTER (WHERE t.kind = 'SNAPSHOT') AS snaps,
       count(t.id) FILTER (WHERE t.kind = 'SNAPSHOT' AND t.state = 'DONE') AS snaps_done,
       count(t.id) FILTER (WHERE t.kind = 'APPLY') AS applies,
       count(t.id) FILTER (WHERE t.kind = 'APPLY' AND t.state = 'DONE') AS applies_done,
       coalesce(sum(t.bytes_done) FILTER (WHERE t.kind = 'APPLY'), 0) AS bytes_done,
       coalesce(sum(t.bytes_total) FILTER (WHERE t.kind = 'APPLY'), 0) AS bytes_total,
       coalesce(sum(greatest(t.attempts - 1, 0)), 0) AS retries,
       count(t.id) FILTER (WHERE t.state = 'RUNNING') AS running,
       count(t.id) FILTER (WHERE t.state = 'FAILED') AS failed
FROM jobs j LEFT JOIN job_tasks t ON t.job_id = j.id
WHERE j.state IN ('INITIALIZING', 'SNAPSHOTING', 'REPLICATING')
GROUP BY j.id ORDER BY j.id
"""


def _active_jobs(r: Replicator, name: str) -> list[Any]:
    import sqlalchemy as sa

    from app.cluster import Cluster

    with Cluster(r.settings, name).engine.connect() as conn:
        return list(conn.execute(sa.text(_ACTIVE_SQL)))


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def _duration(sec: float) -> str:
    sec = max(int(sec), 0)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@jobs_cli.command("watch")
def jobs_watch(
    cluster: Annotated[
        list[str] | None, typer.Option("--cluster", help="Target cluster(s) (default: all)")
    ] = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once no job is running (1 if one aborted)")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes")] = 0.5,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds")] = None,
) -> None:
    """Live progress bars of running jobs: phase, snapshots, replicas, bytes, retries."""
    import time

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    r = _replicator()
    names = _cluster_names(r, cluster)
    names_at = time.monotonic()
    started = time.monotonic()
    seen: dict[str, Any] = {}  # job ref -> progress task id
    aborted = False
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TextColumn("[dim]{task.fields[age]}"),
        console=out,
        refresh_per_second=4,
    ) as bars:
        while True:
            if not cluster and time.monotonic() - names_at > 10:
                names, names_at = _cluster_names(r, None), time.monotonic()
            active: dict[str, Any] = {}
            for name in names:
                try:
                    for row in _active_jobs(r, name):
                        active[f"{name}:{row.id}"] = row
                except ReplicatorError as exc:
                    bars.console.print(f"[yellow]cluster {name}: {exc}[/]")
            for ref, row in active.items():
                if row.state == "REPLICATING" and row.bytes_total:
                    done, total = float(row.bytes_done), float(row.bytes_total)
                elif row.state == "REPLICATING":
                    done, total = float(row.applies_done), float(row.applies or 1)
                else:
                    done, total = float(row.snaps_done), float(row.snaps or 1)
                detail = (
                    f"snapshots {row.snaps_done}/{row.snaps}  "
                    f"replicas {row.applies_done}/{row.applies}  "
                    f"{_size(row.bytes_done)}/{_size(row.bytes_total)}"
                )
                if row.running:
                    detail += f"  running {row.running}"
                if row.retries:
                    detail += f"  [yellow]retries {row.retries}[/]"
                if row.failed:
                    detail += f"  [red]failed {row.failed}[/]"
                desc = (
                    f"[bold]{ref}[/] {row.src_cluster}:{row.src_table} → {row.dst_table} "
                    f"{row.state}"
                )
                age = _duration(float(row.age or 0))
                if ref not in seen:
                    seen[ref] = bars.add_task(
                        desc, total=total, completed=int(done), detail=detail, age=age
                    )
                else:
                    bars.update(
                        seen[ref],
                        description=desc,
                        total=total,
                        completed=done,
                        detail=detail,
                        age=age,
                    )
            for ref in [x for x in seen if x not in active]:
                bars.remove_task(seen.pop(ref))
                try:
                    job = r.job(ref)
                    rec = job.record
                    took = (
                        (rec.finished_at - rec.created_at).total_seconds() if rec.finished_at else 0
                    )
                    colour = "green" if rec.state == "COMMITTED" else "red"
                    aborted |= rec.state == "ABORTED"
                    bars.console.print(
                        f"[{colour}]{ref} {rec.state}[/] {rec.src} → {rec.dst} in {_duration(took)}"
                        + (f" - {escape(rec.message)}" if rec.message else ""),
                        highlight=False,
                    )
                except ReplicatorError as exc:
                    bars.console.print(f"{ref}: {escape(str(exc))}", highlight=False)
            if until_idle and not active:
                if not seen and not aborted and time.monotonic() - started < interval * 2:
                    bars.console.print("no running jobs")
                break
            if timeout is not None and time.monotonic() - started > timeout:
                bars.console.print(
                    f"[yellow]still {len(active)} running job(s) after {timeout:.0f}s[/]"
                )
                sys.exit(1)
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                break  # Ctrl-C: leave the last frame on screen, exit quietly
    if aborted:
        sys.exit(1)


@job_cli.command("show")
def job_show(
    ref: Annotated[str, typer.Argument(help="CLUSTER:ID")],
    all_tasks: Annotated[
        bool, typer.Option("--all-tasks", help="One row per task even when there are many")
    ] = False,
) -> None:
    """Plan, per-partition versions, tasks (grouped when many), events and errors of one job."""
    from collections import Counter, defaultdict

    r = _replicator()
    job = r.job(ref)
    rec = job.record
    out.print(f"[bold]job {rec.ref}[/] {rec.label}: [bold]{rec.state}[/] {rec.src} → {rec.dst}")
    ended = rec.finished_at.strftime("%Y-%m-%d %H:%M:%S") if rec.finished_at else "-"
    took = (rec.finished_at - rec.created_at).total_seconds() if rec.finished_at else None
    opts = ", ".join(f"{k}={v}" for k, v in sorted(rec.options.items()) if v not in (None, False))
    out.print(
        f"created {rec.created_at:%Y-%m-%d %H:%M:%S}, finished {ended}"
        + (f" ({_duration(took)})" if took is not None else "")
        + f", transaction {rec.txn_id or '-'}"
        + (f", options: {opts}" if opts else "")
        + (", cancel requested" if rec.cancel_requested and not rec.state.final else "")
    )
    if rec.message:
        out.print(f"message: {escape(rec.message)}")
    p = job.progress
    out.print(
        f"progress: snapshots {p.snapshots_done}/{p.snapshots_total} "
        f"({p.incremental_tablets} incremental, {p.full_tablets} full), "
        f"replicas {p.tablets_done}/{p.tablets_total}, "
        f"{_size(p.bytes_done)} of {_size(p.bytes_total)} ({p.bytes_done}/{p.bytes_total} bytes)"
    )
    # Plan: versions per partition, and what the target has now.
    now: dict[str, Any] = {}
    try:
        dst_cluster, _, dst_table = rec.dst.partition(":")
        now = {x.name: x for x in r.cluster(dst_cluster).partitions(dst_table)}
    except ReplicatorError:
        pass
    pt = Table("partition", "mode", "source v (epoch)", "target before", "target now", title="plan")
    for jp in job.partitions():
        cur = now.get(jp.partition_name)
        pt.add_row(
            jp.partition_name,
            jp.mode,
            f"{jp.src_version} ({jp.src_epoch})",
            f"{jp.dst_version} ({jp.dst_epoch})",
            f"{cur.visible_version} ({cur.version_epoch})" if cur else "-",
        )
    out.print(pt)
    tasks = job.tasks()
    if tasks and (len(tasks) <= 50 or all_tasks):
        tt = Table(
            "task",
            "kind",
            "partition",
            "bucket",
            "queue",
            "state",
            "attempts",
            "bytes",
            "worker",
            "error",
            title="tasks",
        )
        for task in tasks:
            tt.add_row(
                str(task.id),
                task.kind,
                task.partition_name,
                str(task.bucket),
                task.queue,
                task.state,
                str(task.attempts),
                str(task.bytes_total)
                if task.kind == "SNAPSHOT"
                else f"{task.bytes_done}/{task.bytes_total}",
                task.worker or "",
                escape(task.error or ""),
            )
        out.print(tt)
    elif tasks:
        states = ("PENDING", "QUEUED", "RUNNING", "DONE", "FAILED")
        groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for task in tasks:
            groups[(task.kind, task.queue)].append(task)
        gt = Table(
            "kind",
            "queue",
            "tasks",
            *[x.lower() for x in states],
            "retries",
            "bytes",
            title=f"tasks ({len(tasks)}, grouped; --all-tasks lists each)",
        )
        for (kind, queue), rows in sorted(groups.items()):
            c = Counter(x.state for x in rows)
            done_b = sum(x.bytes_done for x in rows)
            total_b = sum(x.bytes_total for x in rows)
            gt.add_row(
                kind,
                queue,
                str(len(rows)),
                *[str(c.get(x, 0) or "") for x in states],
                str(sum(max(x.attempts - 1, 0) for x in rows) or ""),
                _size(total_b) if kind == "SNAPSHOT" else f"{_size(done_b)}/{_size(total_b)}",
            )
        out.print(gt)
    errors: dict[str, list[int]] = defaultdict(list)
    for task in tasks:
        if task.error:
            errors[task.error].append(task.id)
    if errors:
        et = Table("count", "tasks", "error", title="task errors")
        for message, ids in sorted(errors.items(), key=lambda kv: -len(kv[1]))[:10]:
            shown = ", ".join(map(str, ids[:5])) + (", …" if len(ids) > 5 else "")
            et.add_row(str(len(ids)), shown, escape(message))
        out.print(et)
    ev = Table("at", "from", "to", "reason", "by", title="events")
    for e in job.events:
        ev.add_row(
            e.at.strftime("%H:%M:%S.%f")[:-3],
            e.from_state or "",
            e.to_state,
            escape(e.reason),
            e.actor or "",
        )
    out.print(ev)


@metrics_cli.command("serve")
def metrics_serve(
    port: Annotated[int, typer.Option(help="HTTP port of /metrics")] = 9808,
    addr: Annotated[str, typer.Option(help="Address to listen on")] = "0.0.0.0",
    cluster: Annotated[
        list[str] | None, typer.Option("--cluster", help="Target cluster(s) (default: all found)")
    ] = None,
    consumers_ttl: Annotated[
        float, typer.Option(help="Seconds to reuse the worker inspect answer")
    ] = 15.0,
) -> None:
    """Serve Prometheus metrics read from the catalogs and the broker at every scrape."""
    import contextlib
    import logging
    import signal
    import threading

    from app import metrics

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _replicator().settings
    server, _thread = metrics.serve(
        settings, port=port, addr=addr, clusters=cluster, consumers_ttl=consumers_ttl
    )
    scope = ", ".join(cluster) if cluster else "all clusters"
    err.print(f"metrics on http://{addr}:{port}/metrics ({scope})")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()


@metrics_cli.command("show")
def metrics_show(
    cluster: Annotated[
        list[str] | None, typer.Option("--cluster", help="Target cluster(s)")
    ] = None,
) -> None:
    """Print one scrape in Prometheus text format."""
    from app import metrics

    out.file.write(metrics.render(_replicator().settings, clusters=cluster))


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
    """Start a Celery worker for the queue be.CLUSTER.BACKEND (extra args go to celery)."""
    import os

    r = _replicator()
    r.cluster(cluster).catalog.backend(backend)  # a clear error for unknown names
    from workers.commands import backend_worker_argv

    args = backend_worker_argv(
        queue_name(cluster, backend), concurrency=concurrency, extra=ctx.args
    )
    os.execv(sys.executable, args)


@cli.command(
    "coordinator", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def coordinator(
    ctx: typer.Context,
    concurrency: int = 2,
    beat: Annotated[bool, typer.Option(help="Also run the beat scheduler in this process")] = True,
    schedule: Annotated[Path, typer.Option(help="Beat schedule file")] = Path(
        "var/celerybeat-schedule"
    ),
) -> None:
    """Start the coordinator worker (queue `coordinator`) and, by default, the beat tick."""
    import os

    from workers.commands import coordinator_argv

    schedule.parent.mkdir(parents=True, exist_ok=True)
    args = coordinator_argv(
        concurrency=concurrency, beat_schedule=str(schedule) if beat else None, extra=ctx.args
    )
    os.execv(sys.executable, args)


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
        if isinstance(exc, _click_exceptions()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        raise


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """Usage errors: click's, and those of the copy of click that newer typer releases bundle."""
    import click

    found: list[type[BaseException]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        found.append(TyperClickException)
    except ImportError:
        pass
    return tuple(found)


if __name__ == "__main__":
    main()
