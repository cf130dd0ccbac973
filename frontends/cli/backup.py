"""Backups and restores: backup create, list, show, verify, prune; restore."""

from __future__ import annotations

import datetime as dt
import re
import sys
from typing import Annotated

import typer
from rich.table import Column, Table

from app.backup.manifest import Manifest
from app.client import Job
from app.errors import InvalidRequest
from frontends.cli.apps import backup_cli, cli, connect, out
from frontends.cli.jobs import wait_with_bar
from frontends.cli.render import safe, size

Repo = Annotated[str, typer.Option("--repo", help="A directory, or s3://BUCKET/PREFIX")]
Wait = Annotated[bool, typer.Option(help="Wait for COMMITTED or ABORTED")]
_DURATION = re.compile(r"([0-9]+)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, what: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w``."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise InvalidRequest(
            f"{what} {text!r} is not a duration: write a number and a unit, e.g. 30d, 12h, 90m"
        )
    return dt.timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time with its zone: 2026-12-03T18:00:00Z, 2026-12-03 18:00+01:00."""
    try:
        at = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise InvalidRequest(
            f"--at {text!r} is not a time with its zone: write e.g. 2026-12-03T18:00:00Z"
        )
    return at


def _finish(job: Job, wait: bool, timeout: float) -> None:
    out.print(
        f"job {safe(job.ref)} ({safe(job.label)}): {job.state}"
        + (f" - {safe(job.message)}" if job.message else "")
    )
    if wait and not job.state.final:
        wait_with_bar(job, timeout)
        out.print(f"job {safe(job.ref)}: {job.state} - {safe(job.message)}")
    if job.state == "ABORTED" or (wait and job.state != "COMMITTED"):
        sys.exit(1)


@backup_cli.command("create")
def backup_create(
    table: Annotated[str, typer.Argument(help="CLUSTER:DATABASE.TABLE")],
    repo: Repo,
    partition: Annotated[list[str] | None, typer.Option("--partition", "-p")] = None,
    label: Annotated[str | None, typer.Option(help="Same label, same job")] = None,
    wait: Wait = False,
    timeout: float = 3600.0,
) -> None:
    """Back up a table (or some partitions): uploads only the files the repository lacks; the
    backup is listed once its manifest, written last, is there."""
    job = connect().repository(repo).backup(table, partitions=partition, label=label)
    out.print(f"backup {safe(job.record.backup)} of {safe(table)} into {safe(repo)}")
    _finish(job, wait, timeout)


@backup_cli.command("list")
def backup_list(
    repo: Repo,
    table: Annotated[str | None, typer.Option(help="DATABASE.TABLE")] = None,
) -> None:
    """The finished backups, oldest first, and any manifest that does not check out."""
    listing = connect().repository(repo).backups(table)
    t = Table(
        Column("backup", no_wrap=True), "table", "from", "taken at (UTC)", "partitions",
        "bytes", "uploaded",
    )  # fmt: skip
    for m in listing.backups:
        t.add_row(
            safe(m.name), safe(m.table), safe(m.cluster), f"{m.taken_at:%Y-%m-%d %H:%M:%S}",
            str(len(m.partitions)), size(m.bytes), size(m.uploaded_bytes),
        )  # fmt: skip
    out.print(t)
    for line in listing.corrupt:
        out.print(f"[red]bad manifest:[/] {safe(line)}")


@backup_cli.command("show")
def backup_show(name: str, repo: Repo) -> None:
    """A backup's partitions: versions held, rowsets, rows and bytes."""
    _print_manifest(connect().repository(repo).show(name))


def _print_manifest(m: Manifest) -> None:
    from app.backup.choose import held_versions, span

    out.print(
        f"backup {safe(m.name)}: {safe(m.table)} of cluster {safe(m.cluster)}, taken "
        f"{m.taken_at:%Y-%m-%d %H:%M:%S} UTC; {size(m.bytes)} in {len(m.objects())} objects, "
        f"{size(m.uploaded_bytes)} uploaded by it ({m.uploaded_objects} objects)"
    )
    t = Table("partition", "version", "restorable versions", "rowsets", "rows", "bytes")
    for p in m.partitions:
        held = held_versions(p)
        rowsets = [r for tab in p.tablets for r in tab.rowsets]
        t.add_row(
            safe(p.name), str(p.version), span(held), str(len(rowsets)),
            str(sum(r.num_rows for r in rowsets)), size(sum(f.size for f in p.files())),
        )  # fmt: skip
    out.print(t)


@backup_cli.command("verify")
def backup_verify(
    repo: Repo,
    name: Annotated[
        list[str] | None, typer.Argument(help="Backups to check (default: all)")
    ] = None,
) -> None:
    """Re-hash every object the backups need; name each one missing or different. Exit 1 if
    anything is wrong."""
    report = connect().repository(repo).verify(name)
    for line in report.missing:
        out.print(f"[red]missing:[/] {safe(line)}")
    for line in report.differing:
        out.print(f"[red]differs:[/] {safe(line)}")
    for line in report.corrupt:
        out.print(f"[red]bad manifest:[/] {safe(line)}")
    verdict = "ok" if report.ok else "found problems"
    out.print(
        f"verify {verdict}: {len(report.backups)} backups, {report.objects} objects, "
        f"{size(report.bytes)} re-hashed; {len(report.missing)} missing, "
        f"{len(report.differing)} differ, {len(report.corrupt)} bad manifests"
    )
    if not report.ok:
        sys.exit(1)


@backup_cli.command("prune")
def backup_prune(
    repo: Repo,
    keep: Annotated[int | None, typer.Option(help="Newest backups to keep, per table")] = None,
    older_than: Annotated[
        str | None, typer.Option(help="Delete backups older than this (30d, 12h)")
    ] = None,
    grace: Annotated[
        str, typer.Option(help="Leave unreferenced objects younger than this (running backups)")
    ] = "1h",
    dry_run: Annotated[bool, typer.Option(help="Say what would go; delete nothing")] = False,
) -> None:
    """Delete old backups, then the objects no remaining backup needs."""
    done = (
        connect()
        .repository(repo)
        .prune(
            keep=keep,
            older_than=parse_duration(older_than, "--older-than") if older_than else None,
            grace_sec=parse_duration(grace, "--grace").total_seconds(),
            dry_run=dry_run,
        )
    )
    would = "would delete" if dry_run else "deleted"
    out.print(
        f"prune {would} {len(done.deleted_backups)} backups "
        f"({', '.join(map(safe, done.deleted_backups)) or 'none'}) and {done.deleted_objects} "
        f"objects ({size(done.freed_bytes)}); kept {len(done.kept_backups)} backups"
        + (
            f"; left {done.left_objects} objects younger than the grace"
            if done.left_objects
            else ""
        )
        + (f"; {safe(done.note)}" if done.note else "")
    )


@cli.command("restore")
def restore(
    repo: Repo,
    table: Annotated[str, typer.Option("--table", help="DATABASE.TABLE, as backed up")],
    to: Annotated[str, typer.Option("--to", help="CLUSTER[:DATABASE.TABLE]")],
    partition: Annotated[list[str] | None, typer.Option("--partition", "-p")] = None,
    version: Annotated[int | None, typer.Option(help="Each partition's version to restore")] = None,
    at: Annotated[str | None, typer.Option(help="As the table was at this time (ISO 8601)")] = None,
    backup: Annotated[str | None, typer.Option(help="Default: the newest that holds it")] = None,
    label: Annotated[str | None, typer.Option(help="Same label, same job")] = None,
    wait: Wait = False,
    timeout: float = 3600.0,
) -> None:
    """Restore a table, or some partitions at any version a backup holds, as one atomic job."""
    handle = connect().repository(repo)
    when = parse_time(at) if at is not None else None
    job = handle.restore(
        table, to=to, partitions=partition, version=version, at=when, backup=backup, label=label
    )
    r = job.record.options.get("restore", {})
    versions = ", ".join(f"{p}=v{v}" for p, v in r.get("versions", {}).items())
    out.print(f"restore of {safe(table)} from backup {safe(r.get('backup'))}: {safe(versions)}")
    _finish(job, wait, timeout)
