"""Commands on clusters, backends and tables: init, backends, tables, load, compact, gc,
checksum."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.cluster import PartitionSpec
from app.queues import queue_name
from frontends.cli.apps import backend_cli, cli, cluster_cli, connect, out, table_cli
from frontends.cli.render import safe


@cluster_cli.command("init")
def cluster_init(name: str) -> None:
    """Create the cluster's catalog database, or migrate it to the newest schema."""
    created, before, after = connect().cluster(name).init()
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
    # A str, not a Path: Path("") is ".", which would make an empty --storage the cwd.
    storage: Annotated[
        str,
        typer.Option(
            "--storage",
            help="Storage root: a directory, or s3://BUCKET/PREFIX[?endpoint=URL] (object "
            "storage; credentials from the AWS_* variables)",
        ),
    ],
    transfer_url: Annotated[
        str | None,
        typer.Option(
            "--transfer-url", help="https://HOST:PORT where other hosts reach its transfer server"
        ),
    ] = None,
) -> None:
    """Add a backend (queue be.CLUSTER.NAME) with its storage root (again: update its URL)."""
    b = connect().cluster(cluster).add_backend(name, storage, transfer_url)
    queue = queue_name(cluster, b.name)
    where = f" transfer {safe(b.transfer_url)}" if b.transfer_url else ""
    out.print(
        f"backend {safe(b.name)} ({b.state}) storage {safe(b.storage_root)} "
        f"queue {safe(queue)}{where}"
    )


@backend_cli.command("list")
def backend_list(cluster: str) -> None:
    """List backends."""
    t = Table("name", "state", "storage", "queue", "transfer")
    for b in connect().cluster(cluster).backends():
        t.add_row(
            safe(b.name),
            safe(b.state),
            safe(b.storage_root),
            safe(queue_name(cluster, b.name)),
            safe(b.transfer_url),
        )
    out.print(t)


@backend_cli.command("decommission")
def backend_decommission(cluster: str, name: str) -> None:
    """Stop placing tablets on a backend that holds no replicas."""
    b = connect().cluster(cluster).decommission_backend(name)
    out.print(f"backend {safe(b.name)} is {b.state}")


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
        connect()
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
        f"table {safe(info.full_name)} created: schema hash {info.schema_hash}, "
        f"{info.buckets} buckets, replication_num {info.replication_num}"
    )


@table_cli.command("list")
def table_list(cluster: str) -> None:
    """List tables."""
    t = Table("table", "columns", "partition by", "buckets", "replicas", "schema hash")
    for info in connect().cluster(cluster).tables():
        t.add_row(
            safe(info.full_name),
            str(len(info.columns)),
            safe(info.partition_column or "-"),
            str(info.buckets),
            str(info.replication_num),
            str(info.schema_hash),
        )
    out.print(t)


@table_cli.command("show")
def table_show(cluster: str, table: str) -> None:
    """Show a table's columns and partitions."""
    handle = connect().cluster(cluster)
    info = handle.table(table)
    out.print(f"[bold]{safe(info.full_name)}[/] schema hash {info.schema_hash}")
    out.print("columns: " + ", ".join(f"{safe(c.name)} {safe(c.type)}" for c in info.columns))
    t = Table("partition", "range", "version", "epoch")
    for p in handle.partitions(table):
        bounds = safe(f"[{p.lower}, {p.upper})")
        t.add_row(safe(p.name), bounds, str(p.visible_version), str(p.version_epoch))
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
        connect()
        .cluster(cluster)
        .load(table, str(path), label=label, overwrite=overwrite, format=format)
    )
    if res.already_loaded:
        out.print(
            f"label {safe(label)} was already loaded (transaction {res.txn_id}); nothing to do"
        )
        return
    versions = ", ".join(f"{safe(p)}=v{v}" for p, v in res.versions.items())
    out.print(f"loaded {res.rows} rows, {res.files} files, {res.bytes} bytes; {versions}")


@cli.command("compact")
def compact(
    cluster: str,
    table: str,
    partition: Annotated[list[str] | None, typer.Option("--partition", "-p")] = None,
) -> None:
    """Merge each tablet's visible rowsets into one."""
    rep = connect().cluster(cluster).compact(table, partitions=partition)
    out.print(
        f"compacted {rep.tablets} tablets: {rep.rowsets_merged} rowsets into {rep.rowsets_written}"
    )


@cli.command("gc")
def gc(cluster: str) -> None:
    """Delete unneeded files: stale rowsets, aborted loads, orphans, expired holds."""
    rep = connect().cluster(cluster).gc()
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
    for c in connect().cluster(cluster).checksum(table, partition):
        t.add_row(safe(c.partition), str(c.version), str(c.epoch), str(c.rows), c.checksum)
    out.print(t)
