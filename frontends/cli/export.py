"""`replicator export`: a table's rows at a committed version, as one Parquet file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from frontends.cli.apps import cli, connect, out
from frontends.cli.render import size


@cli.command("export")
def export(
    cluster: str,
    table: Annotated[str, typer.Argument(help="DATABASE.TABLE")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The Parquet file to write")],
    partition: Annotated[
        list[str] | None, typer.Option("--partition", "-p", help="Only these (repeat)")
    ] = None,
    version: Annotated[
        int | None, typer.Option(help="An older version still kept (default: the visible one)")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the file if it exists")] = False,
) -> None:
    """Write a table's rows at its committed version(s) to one Parquet file, atomically."""
    res = (
        connect()
        .cluster(cluster)
        .export(table, output, partitions=partition, version=version, force=force)
    )
    versions = ", ".join(f"{p.name}=v{p.version}" for p in res.partitions)
    out.print(f"exported {res.rows} rows to {res.path} ({size(res.bytes)}); {versions}")
