"""Sync policies: sync create, list, show, pause, resume, resync, drop."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from app.sync.policies import Policy, parse_renames
from frontends.cli.apps import connect, out, sync_cli
from frontends.cli.render import safe


@sync_cli.command("create")
def sync_create(
    src: Annotated[str, typer.Argument(help="SOURCE_CLUSTER:DATABASE")],
    dst: Annotated[str, typer.Argument(help="TARGET_CLUSTER[:DATABASE]")],
    name: Annotated[str | None, typer.Option(help="Default: SOURCE_CLUSTER_DATABASE")] = None,
    include: Annotated[list[str] | None, typer.Option(help="Table-name glob (repeatable)")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Table-name glob (repeatable)")] = None,
    rename: Annotated[list[str] | None, typer.Option(help="SOURCE_TABLE=TARGET_TABLE")] = None,
) -> None:
    """Keep a source database's tables in sync with the target, from the next beat on."""
    policy = connect().sync_create(
        src, dst, name=name, include=include, exclude=exclude, renames=parse_renames(rename or [])
    )
    shown = policy.show()
    out.print(
        f"sync policy {safe(shown.name)}: {safe(shown.src_cluster)}:{safe(shown.src_db)} -> "
        f"{safe(shown.dst_cluster)}:{safe(shown.dst_db)} ({shown.state}); the coordinator "
        "follows it from its next beat"
    )


@sync_cli.command("list")
def sync_list(cluster: Annotated[str, typer.Argument(help="The target cluster")]) -> None:
    """The policies of a target cluster."""
    t = Table("policy", "source", "target", "state", "tables", "behind", "last beat")
    for p in connect().syncs(cluster):
        behind = sum(x.versions_behind for x in p.tables)
        beat = p.last_tick_at.strftime("%H:%M:%S") if p.last_tick_at else "never"
        t.add_row(
            safe(p.name), safe(f"{p.src_cluster}:{p.src_db}"), safe(f"{p.dst_cluster}:{p.dst_db}"),
            p.state, str(len(p.tables)), f"{behind} versions", beat,
        )  # fmt: skip
    out.print(t)


@sync_cli.command("show")
def sync_show(cluster: str, name: str) -> None:
    """Each followed table: state, versions and seconds behind, last job, and why it stopped."""
    _print(connect().sync(cluster, name).show())


def _print(p: Policy) -> None:
    now = dt.datetime.now(dt.UTC)
    rules = f"include {list(p.include) or 'all'}, exclude {list(p.exclude) or 'none'}"
    out.print(
        f"sync policy {safe(p.name)}: {safe(p.src_cluster)}:{safe(p.src_db)} -> "
        f"{safe(p.dst_cluster)}:{safe(p.dst_db)}, {p.state}; {safe(rules)}"
    )
    t = Table("table", "target", "state", "versions behind", "seconds behind", "last job", "note")
    for x in p.tables:
        t.add_row(
            safe(x.src_table), safe(x.dst_table), x.state, str(x.versions_behind),
            f"{x.seconds_behind(now):.1f}", f"{p.dst_cluster}:{x.job_id}" if x.job_id else "-",
            safe(x.reason or ""),
        )  # fmt: skip
    out.print(t)


@sync_cli.command("plan")
def sync_plan(cluster: str, name: str) -> None:
    """What the policy's next beat would copy, per table and partition; changes nothing."""
    from app.sync.plan import plan
    from frontends.cli.jobs import print_dry_run

    for t in plan(connect().settings, cluster, name):
        if t.preview is None:
            out.print(f"{safe(t.table)}: a job would be refused: {safe(t.refused)}")
        else:
            print_dry_run(t.preview)


@sync_cli.command("pause")
def sync_pause(cluster: str, name: str) -> None:
    """Start no new jobs; the tables stay fenced and lag is still measured."""
    _print(connect().sync(cluster, name).pause())


@sync_cli.command("resume")
def sync_resume(cluster: str, name: str) -> None:
    _print(connect().sync(cluster, name).resume())


@sync_cli.command("resync")
def sync_resync(cluster: str, name: str, table: str) -> None:
    """Let a STOPPED table sync again, once what stopped it is dealt with."""
    _print(connect().sync(cluster, name).resync(table))


@sync_cli.command("promote")
def sync_promote(
    cluster: str,
    name: str,
    now: Annotated[bool, typer.Option(help="Stop at once; report what was not copied")] = False,
    reverse: Annotated[
        bool, typer.Option(help="Leave a paused policy the other way round, for failback")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the lag to reach 0")] = 300,
) -> None:
    """Make the target the writable copy: once it has caught up (or at once with --now)."""
    done = connect().sync(cluster, name).promote(now=now, reverse=reverse, timeout=timeout)
    missing = ", ".join(f"{t}: {n} versions" for t, n in sorted(done.not_copied.items()))
    out.print(
        f"promoted: {cluster}'s tables of policy {safe(name)} are writable; "
        + ("caught up" if done.caught_up else f"not copied: {safe(missing)}")
        + (f"; cancelled jobs {done.cancelled_jobs}" if done.cancelled_jobs else "")
        + (f"; failback policy {safe(done.reverse)} (paused) made" if done.reverse else "")
    )


@sync_cli.command("drop")
def sync_drop(cluster: str, name: str) -> None:
    """Forget the policy: its target tables become writable and keep what they hold."""
    connect().sync(cluster, name).drop()
    out.print(f"sync policy {safe(name)} dropped; its target tables are writable again")
