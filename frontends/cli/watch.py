"""``replicator jobs watch``: live progress bars of the running jobs of one or more clusters."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from app.client import Replicator
from app.errors import ReplicatorError
from frontends.cli.apps import connect, jobs_cli, out
from frontends.cli.jobs import cluster_names
from frontends.cli.render import duration, safe, size


@dataclass(frozen=True)
class _Running:
    """One running job as the watch shows it."""

    id: int
    label: str
    state: str
    src_cluster: str
    src_table: str
    dst_table: str
    age: float
    snaps: int
    snaps_done: int
    applies: int
    applies_done: int
    bytes_done: int
    bytes_total: int
    retries: int
    running: int
    failed: int
    sync: str = ""  # for a table a sync policy follows: how far behind it is


_SYNC_LAG = """
    SELECT s.dst_db || '.' || t.dst_table AS dst, s.name, t.versions_behind,
           coalesce(extract(epoch FROM now() - t.behind_since), 0) AS seconds
    FROM sync_tables t JOIN sync_policies s ON s.id = t.policy_id
"""


def _active_jobs(r: Replicator, name: str) -> list[_Running]:
    """One row per running job of the cluster, with its task counts and bytes."""
    import sqlalchemy as sa

    from app.catalog import schema as s
    from app.cluster import Cluster
    from app.replication.progress import KindProgress, progress
    from app.replication.state import ACTIVE_STATES
    from app.replication.taskrows import TaskKind

    with Cluster(r.settings, name).engine.connect() as conn:
        jobs = conn.execute(
            sa.select(s.jobs, sa.func.extract("epoch", sa.func.now() - s.jobs.c.created_at))
            .where(s.jobs.c.state.in_([str(x) for x in ACTIVE_STATES]))
            .order_by(s.jobs.c.id)
        ).all()
        tasks = progress(conn, [j.id for j in jobs])
        lag = {
            r.dst: f"sync {r.name}: {r.versions_behind} versions, {float(r.seconds):.1f} s behind"
            for r in conn.execute(sa.text(_SYNC_LAG))
        }
    out = []
    for j in jobs:
        snap = tasks.get((j.id, TaskKind.SNAPSHOT), KindProgress())
        apply = tasks.get((j.id, TaskKind.APPLY), KindProgress())
        out.append(
            _Running(
                j.id,
                j.label,
                j.state,
                j.src_cluster,
                j.src_table,
                j.dst_table,
                float(j[-1]),
                snap.total,
                snap.done,
                apply.total,
                apply.done,
                apply.bytes_done,
                apply.bytes_total,
                snap.retries + apply.retries,
                snap.running + apply.running,
                snap.failed + apply.failed,
                lag.get(j.dst_table, ""),
            )
        )
    return out


def _bar_values(row: Any) -> tuple[float, float, str]:
    """(done, total, detail) of one running job's bar."""
    if row.state == "REPLICATING" and row.bytes_total:
        done, total = float(row.bytes_done), float(row.bytes_total)
    elif row.state == "REPLICATING":
        done, total = float(row.applies_done), float(row.applies or 1)
    else:
        done, total = float(row.snaps_done), float(row.snaps or 1)
    detail = (
        f"snapshots {row.snaps_done}/{row.snaps}  "
        f"replicas {row.applies_done}/{row.applies}  "
        f"{size(row.bytes_done)}/{size(row.bytes_total)}"
    )
    if row.running:
        detail += f"  running {row.running}"
    if row.retries:
        detail += f"  [yellow]retries {row.retries}[/]"
    if row.failed:
        detail += f"  [red]failed {row.failed}[/]"
    if row.sync:
        detail += f"  [cyan]{safe(row.sync)}[/]"
    return done, total, detail


@dataclass
class Watcher:
    """The state of one `jobs watch`: the clusters, the bars shown, whether a job aborted."""

    r: Replicator
    clusters: list[str] | None
    names: list[str]
    names_at: float
    bars: Progress | None = None
    seen: dict[str, Any] = field(default_factory=dict)  # job ref -> progress task id
    aborted: bool = False

    @property
    def console(self) -> Any:
        assert self.bars is not None
        return self.bars.console

    def active(self) -> dict[str, Any]:
        if not self.clusters and time.monotonic() - self.names_at > 10:
            self.names, self.names_at = cluster_names(self.r, None), time.monotonic()
        active: dict[str, Any] = {}
        for name in self.names:
            try:
                for row in _active_jobs(self.r, name):
                    active[f"{name}:{row.id}"] = row
            except ReplicatorError as exc:
                self.console.print(f"[yellow]cluster {safe(name)}: {safe(exc)}[/]")
        return active

    def show(self, ref: str, row: Any) -> None:
        assert self.bars is not None
        done, total, detail = _bar_values(row)
        age = duration(float(row.age or 0))
        desc = (
            f"[bold]{safe(ref)}[/] {safe(row.src_cluster)}:{safe(row.src_table)} → "
            f"{safe(row.dst_table)} {safe(row.state)}"
        )
        if ref not in self.seen:
            self.console.print(f"watching {safe(ref)} ({safe(row.state)})", highlight=False)
            self.seen[ref] = self.bars.add_task(
                desc, total=total, completed=int(done), detail=detail, age=age
            )
        else:
            self.bars.update(
                self.seen[ref],
                description=desc,
                total=total,
                completed=done,
                detail=detail,
                age=age,
            )

    def finished(self, ref: str) -> None:
        """The job left the running set: drop its bar, print how it ended."""
        assert self.bars is not None
        self.bars.remove_task(self.seen.pop(ref))
        try:
            *_, job = self.r.job(ref).watch(timeout=5.0)  # it has left the running states
            rec = job.record
            took = (rec.finished_at - rec.created_at).total_seconds() if rec.finished_at else 0
            colour = "green" if rec.state == "COMMITTED" else "red"
            self.aborted |= rec.state == "ABORTED"
            self.console.print(
                f"[{colour}]{safe(ref)} {rec.state}[/] {safe(rec.src)} → {safe(rec.dst)} "
                f"in {duration(took)}" + (f" - {safe(rec.message)}" if rec.message else ""),
                highlight=False,
            )
        except ReplicatorError as exc:
            self.console.print(f"{ref}: {safe(str(exc))}", highlight=False)

    def step(self) -> dict[str, Any]:
        active = self.active()
        for ref, row in active.items():
            self.show(ref, row)
        for ref in [x for x in self.seen if x not in active]:
            self.finished(ref)
        return active


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
    r = connect()
    names = cluster_names(r, cluster)
    w = Watcher(r, cluster, names, time.monotonic())
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TextColumn("[dim]{task.fields[age]}"),
        console=out,
        refresh_per_second=4,
    ) as bars:
        w.bars = bars
        while True:
            active = w.step()
            if until_idle and not active:
                if not w.seen and not w.aborted and time.monotonic() - started < interval * 2:
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
    if w.aborted:
        sys.exit(1)
