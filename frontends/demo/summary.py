"""The demo's closing words: wall time per step, the jobs table, the check, the verdict."""

from __future__ import annotations

import time

from rich import box
from rich.markup import escape
from rich.table import Table

from app.units import MB
from frontends.demo.backup import BackupResult
from frontends.demo.common import LOG_DIR, SOURCE, TABLE, TARGET, console, rel
from frontends.demo.lake import LakeResult
from frontends.demo.replication import JobReport


class Steps:
    """Wall time of each step, for the summary."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.times: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def begin(self, number: int, title: str, key: str, *, header: bool = True) -> None:
        self.end()
        if header:
            console.print(f"[bold]{number}. {title}[/]")
        self._current = (key, time.monotonic())

    def end(self) -> None:
        if self._current is not None:
            key, at = self._current
            self.times[key] = self.times.get(key, 0.0) + time.monotonic() - at
            self._current = None

    @property
    def total(self) -> float:
        return time.monotonic() - self.started

    def line(self) -> str:
        return ", ".join(f"{k} {v:.0f}s" for k, v in self.times.items())


def print_summary(
    jobs: list[JobReport],
    equal: bool,
    flower_url: str,
    flower_ok: bool,
    steps: Steps,
    lake: LakeResult | None = None,
    backup: BackupResult | None = None,
) -> int:
    """Print the summary; returns the demo's exit code."""
    console.rule("[bold]Summary")
    console.print(_jobs_table(jobs + ([lake.report] if lake else [])))
    committed = len(jobs) == 2 and all(j.state == "COMMITTED" for j in jobs)
    if len(jobs) == 2 and jobs[0].bytes:
        _print_share(jobs)
    if equal:
        console.print(
            f"  check: [green]{SOURCE} and {TARGET} are equal[/] in all partitions "
            "(rows, checksum, version, epoch)"
        )
    else:
        console.print(f"  check: [red]{SOURCE} and {TARGET} differ[/] (see the table above)")
    console.print(
        f"  Flower: {flower_url}"
        + ("" if flower_ok else " (did not start)")
        + f"   logs: {rel(LOG_DIR)}/"
    )
    if lake is not None:
        console.print(
            f"  lake: {TARGET}:{TABLE} copied into {lake.root}/ (object storage), "
            + ("[green]equal[/]" if lake.equal else "[red]NOT equal[/]")
            + f" to {TARGET}:{TABLE}"
        )
    if backup is not None:
        console.print(
            f"  backup: {TARGET}:{TABLE} backed up as {escape(backup.backup)} "
            f"({backup.bytes / MB:.1f} MB, {backup.seconds:.1f}s, {backup.state}); partition "
            f"{backup.partition} v{backup.version} restored ({backup.restore_state}, "
            f"{backup.restore_seconds:.1f}s), "
            + ("[green]equal[/]" if backup.equal else "[red]NOT equal[/]")
        )
    console.print(f"  demo time {steps.total:.0f}s: {steps.line()}")
    console.print("  [bold]make demo-down[/] stops the workers, Flower and SeaweedFS")
    if backup is not None and not backup.ok:
        console.print(f"[red]demo failed:[/] the backup step: {escape(backup.message or '')}")
        return 1
    if lake is not None and not lake.equal:
        why = f"job {lake.report.ref} {lake.report.state}: {lake.report.message or 'no message'}"
        console.print(f"[red]demo failed:[/] the lake step: {escape(why)}")
        return 1
    return _verdict(jobs, committed, equal)


def _jobs_table(jobs: list[JobReport]) -> Table:
    summary = Table(box=box.SIMPLE_HEAD)
    for col, right in (
        ("job", False),
        ("mode", False),
        ("state", False),
        ("tablets\nincr/full", True),
        ("replicas", True),
        ("MB", True),
        ("time", True),
        ("MB/s", True),
    ):
        summary.add_column(col, justify="right" if right else "left")
    for j in jobs:
        colour = "green" if j.state == "COMMITTED" else "red"
        summary.add_row(
            j.ref,
            j.mode,
            f"[{colour}]{j.state}[/]",
            f"{j.incremental_tablets}/{j.full_tablets}",
            f"{j.replicas_done}/{j.replicas}",
            f"{j.bytes / MB:.1f}",
            f"{j.seconds:.1f}s",
            f"{j.mb_per_sec:.1f}",
        )
    return summary


def _print_share(jobs: list[JobReport]) -> None:
    share = 100.0 * jobs[1].bytes / jobs[0].bytes
    if jobs[1].mode == "incremental":
        console.print(
            f"  the second job was incremental: it moved only the new rowsets, "
            f"{share:.1f}% of the first job's bytes"
        )
    else:
        console.print(
            f"  [yellow]the second job was not incremental ({jobs[1].incremental_tablets} "
            f"incremental / {jobs[1].full_tablets} full tablets, {share:.1f}% of the bytes)[/]"
        )


def _verdict(jobs: list[JobReport], committed: bool, equal: bool) -> int:
    if not committed:
        failed = next((j for j in jobs if j.state != "COMMITTED"), None)
        why = f"job {failed.ref} {failed.state}: {failed.message or 'no message'}" if failed else ""
        console.print(f"[red]demo failed:[/] {escape(why)}")
        return 1
    if not equal:
        console.print(f"[red]demo failed:[/] {TARGET}:{TABLE} does not equal {SOURCE}:{TABLE}")
        return 1
    console.print("[green bold]demo OK[/]")
    return 0
