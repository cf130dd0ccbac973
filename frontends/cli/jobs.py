"""Replication jobs: replicate, jobs (list), job show, job cancel."""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from typing import Annotated, Any

import typer
from rich.table import Table

from app.client import Job, Replicator
from app.errors import JobTimeout, ReplicatorError
from app.replication.dryrun import DryRun
from app.replication.taskrows import TaskKind, TaskState
from frontends.cli.apps import cli, connect, err, job_cli, jobs_cli, out
from frontends.cli.render import duration, safe, size


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
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace target partitions written on the target since replicated"),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(help="Print what would happen per partition; change nothing"),
    ] = False,
) -> None:
    """Replicate a table's partitions at their current source versions, as one transaction."""
    if dry_run:
        print_dry_run(
            connect().dry_run(
                src,
                dst,
                partitions=partition,
                create_target=create_target,
                replication_num=replication_num,
                overwrite=overwrite,
            )
        )
        return
    job = connect().replicate(
        src,
        dst,
        partitions=partition,
        label=label,
        create_target=create_target,
        replication_num=replication_num,
        overwrite=overwrite,
    )
    out.print(
        f"job {safe(job.ref)} ({safe(job.label)}): {job.state}"
        + (f" - {safe(job.message)}" if job.message else "")
    )
    if not wait or job.state.final:
        if job.state == "ABORTED":
            sys.exit(1)
        return
    wait_with_bar(job, timeout)
    out.print(f"job {safe(job.ref)}: {job.state} - {safe(job.message)}")
    if job.state != "COMMITTED":
        sys.exit(1)


def print_dry_run(plan: DryRun) -> None:
    table = Table(title=f"dry run: {safe(plan.src)} -> {safe(plan.dst)} (nothing changed)")
    for col in ("partition", "action", "versions", "bytes", "files", "replicas", "note"):
        table.add_column(col, justify="right" if col in ("bytes", "files", "replicas") else "left")
    for p in plan.partitions:
        target = "new" if p.dst_version is None else f"v{p.dst_version}"
        table.add_row(
            safe(p.name), p.action, f"{target} -> v{p.src_version}", size(p.bytes),
            str(p.files), str(p.replicas), safe(p.note),
        )  # fmt: skip
    out.print(table)
    if plan.create_table:
        out.print(f"the target table {safe(plan.dst)} would be created")
    est = plan.estimate_sec
    took = (
        "no estimate"
        if est is None
        else f"about {est:.1f} s"
        if est < 60
        else f"about {duration(est)}"
    )
    out.print(
        f"would move {size(plan.bytes_moved)} in {plan.files} files to target replicas; "
        f"{took} ({safe(plan.basis)})"
    )


def wait_with_bar(job: Job, timeout: float) -> None:
    """A transient bar of bytes copied on stderr until the job is final or ``timeout`` passes."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(safe(job.ref), total=None)
        try:
            for seen in job.watch(timeout=timeout, poll=0.2, max_poll=0.5):
                p = seen.progress
                bar.update(
                    task,
                    description=f"{safe(seen.ref)} {seen.state}",
                    completed=p.bytes_done,
                    total=p.bytes_total or None,
                )
        except JobTimeout:
            pass  # the caller prints the state it is still in


def cluster_names(r: Replicator, clusters: list[str] | None) -> list[str]:
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
    r = connect()
    t = Table("job", "label", "state", "source", "target", "created", "message")
    for name in cluster_names(r, [cluster] if cluster else None):
        for job in r.jobs(name, state=state, limit=limit):
            rec = job.record
            t.add_row(
                safe(rec.ref),
                safe(rec.label),
                safe(rec.state),
                safe(rec.src),
                safe(rec.dst),
                rec.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                safe(rec.message),
            )
    out.print(t)


@job_cli.command("show")
def job_show(
    ref: Annotated[str, typer.Argument(help="CLUSTER:ID")],
    all_tasks: Annotated[
        bool, typer.Option("--all-tasks", help="One row per task even when there are many")
    ] = False,
) -> None:
    """Plan, per-partition versions, tasks (grouped when many), events and errors of one job."""
    r = connect()
    job = r.job(ref)
    _print_header(job)
    out.print(_plan_table(r, job))
    tasks = job.tasks()
    if tasks and (len(tasks) <= 50 or all_tasks):
        out.print(_task_table(tasks))
    elif tasks:
        out.print(_grouped_task_table(tasks))
    errors = _error_table(tasks)
    if errors is not None:
        out.print(errors)
    out.print(_event_table(job))


def _print_header(job: Job) -> None:
    rec = job.record
    out.print(
        f"[bold]job {safe(rec.ref)}[/] {safe(rec.label)}: [bold]{safe(rec.state)}[/] "
        f"{safe(rec.src)} → {safe(rec.dst)}"
    )
    ended = rec.finished_at.strftime("%Y-%m-%d %H:%M:%S") if rec.finished_at else "-"
    took = (rec.finished_at - rec.created_at).total_seconds() if rec.finished_at else None
    opts = safe(
        ", ".join(f"{k}={v}" for k, v in sorted(rec.options.items()) if v not in (None, False))
    )
    out.print(
        f"created {rec.created_at:%Y-%m-%d %H:%M:%S}, finished {ended}"
        + (f" ({duration(took)})" if took is not None else "")
        + f", transaction {rec.txn_id or '-'}"
        + (f", options: {opts}" if opts else "")
        + (", cancel requested" if rec.cancel_requested and not rec.state.final else "")
    )
    if rec.message:
        out.print(f"message: {safe(rec.message)}")
    p = job.progress
    out.print(
        f"progress: snapshots {p.snapshots_done}/{p.snapshots_total} "
        f"({p.incremental_tablets} incremental, {p.full_tablets} full), "
        f"replicas {p.tablets_done}/{p.tablets_total}, "
        f"{size(p.bytes_done)} of {size(p.bytes_total)} ({p.bytes_done}/{p.bytes_total} bytes)"
    )


def _plan_table(r: Replicator, job: Job) -> Table:
    """Versions per partition, and what the target has now."""
    now: dict[str, Any] = {}
    try:
        dst_cluster, _, dst_table = job.record.dst.partition(":")
        now = {x.name: x for x in r.cluster(dst_cluster).partitions(dst_table)}
    except ReplicatorError:
        pass
    pt = Table("partition", "mode", "source v (epoch)", "target before", "target now", title="plan")
    for jp in job.partitions():
        cur = now.get(jp.partition_name)
        pt.add_row(
            safe(jp.partition_name),
            safe(jp.mode),
            f"{jp.src_version} ({jp.src_epoch})",
            f"{jp.dst_version} ({jp.dst_epoch})",
            f"{cur.visible_version} ({cur.version_epoch})" if cur else "-",
        )
    return pt


def _task_table(tasks: list[Any]) -> Table:
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
            safe(task.kind),
            safe(task.partition_name),
            str(task.bucket),
            safe(task.queue),
            safe(task.state),
            str(task.attempts),
            str(task.bytes_total)
            if task.kind == TaskKind.SNAPSHOT
            else f"{task.bytes_done}/{task.bytes_total}",
            safe(task.worker),
            safe(task.error),
        )
    return tt


def _grouped_task_table(tasks: list[Any]) -> Table:
    states = tuple(TaskState)
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
            safe(kind),
            safe(queue),
            str(len(rows)),
            *[str(c.get(x, 0) or "") for x in states],
            str(sum(max(x.attempts - 1, 0) for x in rows) or ""),
            size(total_b) if kind == TaskKind.SNAPSHOT else f"{size(done_b)}/{size(total_b)}",
        )
    return gt


def _error_table(tasks: list[Any]) -> Table | None:
    errors: dict[str, list[int]] = defaultdict(list)
    for task in tasks:
        if task.error:
            errors[task.error].append(task.id)
    if not errors:
        return None
    et = Table("count", "tasks", "error", title="task errors")
    for message, ids in sorted(errors.items(), key=lambda kv: -len(kv[1]))[:10]:
        shown = ", ".join(map(str, ids[:5])) + (", …" if len(ids) > 5 else "")
        et.add_row(str(len(ids)), shown, safe(message))
    return et


def _event_table(job: Job) -> Table:
    ev = Table("at", "from", "to", "reason", "by", title="events")
    for e in job.events:
        ev.add_row(
            e.at.strftime("%H:%M:%S.%f")[:-3],
            safe(e.from_state),
            safe(e.to_state),
            safe(e.reason),
            safe(e.actor),
        )
    return ev


@job_cli.command("cancel")
def job_cancel(ref: Annotated[str, typer.Argument(help="CLUSTER:ID")]) -> None:
    """Abort a job: the target stays exactly as it was."""
    job = connect().job(ref)
    if job.cancel():
        out.print(f"job {safe(job.ref)}: cancel requested; the coordinator aborts it")
    else:
        out.print(f"job {safe(job.ref)} already finished as {job.state}; nothing to cancel")
