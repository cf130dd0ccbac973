"""The replication runs, followed with a live bar, and the check that both clusters agree."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.client import Job, Replicator
from app.errors import JobTimeout
from app.replication.jobs import Progress as JobProgress
from app.units import MB
from frontends.demo.common import (
    CLUSTERS,
    JOB_TIMEOUT_SEC,
    LOG_DIR,
    REPLICATION_NUM,
    SOURCE,
    STALL_TIMEOUT_SEC,
    TABLE,
    TARGET,
    console,
    rel,
)


@dataclass
class JobReport:
    title: str
    ref: str
    label: str
    state: str
    message: str | None
    bytes: int
    replicas: int
    replicas_done: int
    incremental_tablets: int
    full_tablets: int
    seconds: float
    phases: dict[str, float]

    @property
    def mode(self) -> str:
        if self.incremental_tablets and not self.full_tablets:
            return "incremental"
        if self.full_tablets and not self.incremental_tablets:
            return "full"
        if not self.full_tablets and not self.incremental_tablets:
            return "-"
        return "mixed"

    @property
    def mb_per_sec(self) -> float:
        return self.bytes / MB / self.seconds if self.seconds > 0 else 0.0


def _phases(job: Any) -> dict[str, float]:
    """Seconds the job spent in each state, from its events."""
    out: dict[str, float] = {}
    events = job.events
    for prev, nxt in itertools.pairwise(events):
        if prev.to_state == nxt.to_state:
            continue
        key = str(prev.to_state)
        out[key] = out.get(key, 0.0) + (nxt.at - prev.at).total_seconds()
    return out


def replicate(
    replicator: Replicator,
    title: str,
    label: str,
    *,
    create_target: bool,
    src: str = SOURCE,
    dst: str = TARGET,
) -> JobReport:
    started = time.monotonic()
    job = replicator.replicate(
        f"{src}:{TABLE}",
        dst,
        label=label,
        create_target=create_target,
        replication_num=REPLICATION_NUM if create_target else None,
    )
    console.print(
        f"  submitted job [bold]{job.ref}[/] ({job.label}): {src}:{TABLE} -> {dst}:{TABLE}"
    )
    with Progress(
        TextColumn("  {task.description:<12}"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[size]:>15}"),
        TextColumn("{task.fields[speed]:>11}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        _follow(job, bar, JOB_TIMEOUT_SEC - (time.monotonic() - started))
    report = _report(job, title, time.monotonic() - started)
    _print_report(report)
    return report


class Stalled(JobTimeout):
    """The job's progress has not moved for STALL_TIMEOUT_SEC."""


@dataclass
class _Watch:
    """What the bar of one job remembers between refreshes."""

    copy_started: float | None = None
    last_seen: tuple[Any, ...] | None = None
    last_change: float = field(default_factory=time.monotonic)
    detail: str = ""

    def line(self, job: Job, p: JobProgress) -> tuple[str, str]:
        """(size, speed) for the bar; remembers the detail of the phase."""
        if job.state == "SNAPSHOTING" or (p.snapshots_total and not p.tablets_total):
            self.detail = f"snapshots {p.snapshots_done}/{p.snapshots_total}"
        else:
            self.detail = f"replicas {p.tablets_done}/{p.tablets_total}"
        size = speed = ""
        if p.bytes_total:
            self.copy_started = self.copy_started or time.monotonic()
            size = f"{p.bytes_done / MB:.1f}/{p.bytes_total / MB:.1f} MB"
            took = time.monotonic() - self.copy_started
            if took > 0.5 and p.bytes_done:
                speed = f"{p.bytes_done / MB / took:.1f} MB/s"
        return size, speed

    def check_stall(self, job: Job, p: JobProgress) -> None:
        seen = (job.state, p.snapshots_done, p.tablets_done, p.bytes_done)
        if seen != self.last_seen:
            self.last_seen, self.last_change = seen, time.monotonic()
        stalled = time.monotonic() - self.last_change
        if stalled > STALL_TIMEOUT_SEC:
            raise self.stuck(job, f"made no progress for {stalled:.0f}s")

    def stuck(self, job: Job, why: str) -> Stalled:
        return Stalled(
            f"job {job.ref} {why} (state {job.state}, {self.detail}); see "
            f"`replicator job show {job.ref}`, Flower and {rel(LOG_DIR)}/"
        )


def _follow(job: Job, bar: Progress, timeout: float) -> None:
    """Refresh the bar until the job is final; JobTimeout if it stalls or takes too long."""
    task = bar.add_task(str(job.state), total=None, size="", speed="", detail="")
    w = _Watch()
    try:
        for seen in job.watch(timeout=timeout, poll=0.2, max_poll=0.5):
            p = seen.progress
            size, speed = w.line(seen, p)
            bar.update(
                task,
                description=str(seen.state),
                completed=p.bytes_done,
                total=p.bytes_total or None,
                size=size,
                speed=speed,
                detail=w.detail,
            )
            if seen.state.final:
                if p.bytes_total:
                    bar.update(task, completed=p.bytes_total, total=p.bytes_total)
                return
            w.check_stall(seen, p)
    except Stalled:
        raise
    except JobTimeout:
        raise w.stuck(job, f"is not done after {JOB_TIMEOUT_SEC:.0f}s") from None


def _report(job: Job, title: str, client_seconds: float) -> JobReport:
    rec = job.record
    seconds = (
        (rec.finished_at - rec.created_at).total_seconds() if rec.finished_at else client_seconds
    )
    p = job.progress
    return JobReport(
        title=title,
        ref=job.ref,
        label=job.label,
        state=str(job.state),
        message=job.message,
        bytes=p.bytes_total,
        replicas=p.tablets_total,
        replicas_done=p.tablets_done,
        incremental_tablets=p.incremental_tablets,
        full_tablets=p.full_tablets,
        seconds=seconds,
        phases=_phases(job),
    )


def _print_report(report: JobReport) -> None:
    colour = "green" if report.state == "COMMITTED" else "red"
    phases = ", ".join(f"{k.lower()} {v:.1f}s" for k, v in report.phases.items())
    console.print(
        f"  job {report.ref} [{colour}]{report.state}[/] in {report.seconds:.1f}s: "
        f"{report.bytes / MB:.1f} MB, {report.replicas_done}/{report.replicas} replicas, "
        f"{report.full_tablets} full + {report.incremental_tablets} incremental tablets"
        + (f" - {escape(report.message)}" if report.message and report.state != "COMMITTED" else "")
    )
    if phases:
        console.print(f"    {phases}")


def _partition_checksum(settings: Any, cluster: str, partition: str) -> Any:
    """One partition's checksum; runs in a pool process (hashing rows is CPU-bound)."""
    from frontends.connect import replicator

    return replicator(settings).cluster(cluster).checksum(TABLE, [partition])[0]


def checksums(replicator: Any) -> tuple[bool, Table]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    units = [
        (name, p.name) for name in CLUSTERS for p in replicator.cluster(name).partitions(TABLE)
    ]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    results: dict[str, dict[str, Any]] = {name: {} for name in CLUSTERS}
    workers = max(1, min(len(units), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        futures = {
            unit: pool.submit(_partition_checksum, replicator.settings, *unit) for unit in units
        }
        with console.status(f"Computing checksums of {TABLE} on {SOURCE} and {TARGET}..."):
            for (name, partition), future in futures.items():
                results[name][partition] = future.result()
    src, dst = results[SOURCE], results[TARGET]
    table = Table(
        title=f"{TABLE} per partition (where they differ: {SOURCE} above, {TARGET} below)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col, right in (
        ("partition", False),
        ("rows", True),
        ("version", True),
        ("epoch", True),
        ("checksum", False),
        ("same", False),
    ):
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    all_equal = set(src) == set(dst) and bool(src)
    for name in sorted(set(src) | set(dst)):
        a, b = src.get(name), dst.get(name)
        equal = (
            a is not None
            and b is not None
            and (a.rows, a.checksum, a.version, a.epoch) == (b.rows, b.checksum, b.version, b.epoch)
        )
        all_equal &= equal

        def pair(attr: str, fmt: str = "{}", a: Any = a, b: Any = b) -> str:
            x = fmt.format(getattr(a, attr)) if a is not None else "-"
            y = fmt.format(getattr(b, attr)) if b is not None else "-"
            return x if x == y else f"[red]{x}\n{y}[/]"

        table.add_row(
            name,
            pair("rows", "{:,}"),
            pair("version"),
            pair("epoch"),
            pair("checksum"),
            "[green]yes[/]" if equal else "[red]NO[/]",
        )
    return all_equal, table
