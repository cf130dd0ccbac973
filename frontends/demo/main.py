"""The demo, step by step (see the package's docstring), and ``--down``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.markup import escape

from app.client import ClusterHandle, Replicator
from app.config import Settings, load_settings
from app.errors import ReplicatorError, UserError
from frontends.connect import replicator as connect
from frontends.demo.backup import backup_and_restore
from frontends.demo.common import (
    BACKENDS,
    BUCKETS,
    CLUSTERS,
    DEMO_DIR,
    LOG_DIR,
    PARTS,
    PID_DIR,
    REPLICATION_NUM,
    SOURCE,
    TABLE,
    TARGET,
    TRANSFER_PORTS,
    console,
    err_console,
    one_line,
    rel,
)
from frontends.demo.lake import copy_to_lake, plan_store, start_store
from frontends.demo.processes import start_processes, stop_processes, wait_ready, worker_env
from frontends.demo.replication import JobReport, checksums, replicate
from frontends.demo.setup import (
    create_clusters,
    generate,
    load_files,
    preflight,
    print_load,
    purge_demo_queues,
    reset_clusters,
    scale_factor,
)
from frontends.demo.summary import Steps, print_summary
from frontends.supervise import Workers, free_port, port_free
from frontends.tpch import create_lineitem
from frontends.transfer_setup import LocalTransfer, local_transfer


def run() -> int:
    steps = Steps()
    settings = load_settings()
    sf = scale_factor()
    console.rule("[bold]olap-replicator demo")
    preflight(settings)

    steps.begin(1, "Clusters", "reset")
    replicator, transfer, ports = _fresh_clusters(settings)

    steps.begin(2, "Workers", "workers")
    store = plan_store()  # for the last steps; the workers are told its address and keys
    procs, flower_port = start_processes(transfer.env | store.env(), ports)
    console.print(
        f"  starting in the background: a transfer server per cluster "
        f"({', '.join(f'{c} :{p}' for c, p in ports.items())}), "
        f"{len(CLUSTERS) * len(BACKENDS)} backend workers "
        f"({_first_and_last_queue()}), coordinator + beat, Flower"
    )
    _say_how_bytes_travel(transfer)

    starting = start_store(store)  # while the data is loaded

    steps.begin(3, f"Data: TPC-H lineitem into {SOURCE}", "data")
    prod, rest = _first_load(replicator, sf)

    steps.begin(2, "Workers", "workers", header=False)
    flower_url, flower_ok = _workers_ready(procs, flower_port)

    steps.begin(4, f"Replicate {SOURCE}:{TABLE} -> {TARGET} (first copy)", "replicate")
    jobs = _replications(replicator, prod, rest, steps)

    steps.begin(6, f"Verify: checksum {TABLE} on {SOURCE} and {TARGET}", "verify")
    equal, table = checksums(replicator)
    console.print(table)
    in_lake = backed_up = None
    if equal and all(j.state == "COMMITTED" for j in jobs):
        steps.begin(7, f"Lake: {TARGET}:{TABLE} into object storage (S3)", "lake")
        in_lake = copy_to_lake(replicator, worker_env(transfer.env), starting)
    if in_lake is not None and in_lake.equal:
        steps.begin(8, f"Backup: {TARGET}:{TABLE} into the store, one partition restored", "backup")
        backed_up = backup_and_restore(replicator, starting.result())
    steps.end()
    return print_summary(jobs, equal, flower_url, flower_ok, steps, in_lake, backed_up)


def _first_and_last_queue() -> str:
    from app.queues import queue_name

    return f"{queue_name(CLUSTERS[0], BACKENDS[0])} .. {queue_name(CLUSTERS[-1], BACKENDS[-1])}"


def _fresh_clusters(settings: Settings) -> tuple[Replicator, LocalTransfer, dict[str, int]]:
    """Stop a previous demo's processes, drop its clusters and messages, create new ones, each
    with a transfer server address and (unless insecure mode was asked for) certificates."""
    stopped = stop_processes(verbose=False)
    if stopped:
        console.print(
            f"  stopped {len(stopped)} processes left from a previous demo run "
            f"({', '.join(stopped)})"
        )
    reset_clusters(settings)
    dropped = purge_demo_queues(settings.broker_url)
    if dropped:
        console.print(f"  dropped {dropped} stale messages from the demo's backend queues")
    mode = "http" if settings.transfer_mode == "http" else "https"
    transfer = local_transfer(DEMO_DIR / "pki", list(CLUSTERS), mode)
    ports = {
        c: p if port_free(p) else free_port() for c, p in zip(CLUSTERS, TRANSFER_PORTS, strict=True)
    }
    replicator = connect(settings.with_overrides(**transfer.overrides))
    create_clusters(replicator, {c: transfer.url(p) for c, p in ports.items()})
    return replicator, transfer, ports


def _say_how_bytes_travel(transfer: LocalTransfer) -> None:
    if transfer.mode == "http":
        console.print(
            "  [yellow]transfer_mode = http: files cross between clusters WITHOUT TLS "
            "(insecure; for trying things out only)[/]"
        )
    else:
        console.print(
            f"  files cross between clusters over HTTPS with mutual TLS (development CAs in "
            f"{rel(DEMO_DIR / 'pki')}/), each download authorised by a per-task token"
        )


def _first_load(replicator: Replicator, sf: float) -> tuple[ClusterHandle, list[Path]]:
    """Create the source table and load all but the last part; returns it and the rest."""
    files = generate(sf)
    first, rest = files[:-1], files[-1:]
    prod = replicator.cluster(SOURCE)
    info = create_lineitem(prod, TABLE, buckets=BUCKETS, replication_num=REPLICATION_NUM)
    n_parts = len(prod.partitions(TABLE))
    console.print(
        f"  created {SOURCE}:{info.full_name}: {n_parts} range partitions x {info.buckets} "
        f"buckets = {n_parts * info.buckets} tablets, {info.replication_num} replicas each"
    )
    load1 = load_files(prod, first, "demo-lineitem-1", f"parts 1-{len(first)} of {PARTS}")
    print_load(load1, SOURCE)
    return prod, rest


def _workers_ready(procs: Workers, flower_port: int) -> tuple[str, bool]:
    flower_ok = wait_ready(procs)
    console.print(
        f"  workers ready ({len(CLUSTERS) * len(BACKENDS)} backends + coordinator); "
        f"logs {rel(LOG_DIR)}/, pids {rel(PID_DIR)}/"
    )
    flower_url = f"http://127.0.0.1:{flower_port}"
    if flower_ok:
        console.print(f"  Flower at {flower_url}")
    else:
        console.print(
            f"  [yellow]Flower did not come up on port {flower_port}; see "
            f"{rel(LOG_DIR / 'flower.log')}[/]"
        )
    return flower_url, flower_ok


def _replications(
    replicator: Replicator, prod: ClusterHandle, rest: list[Path], steps: Steps
) -> list[JobReport]:
    """The first copy; if it committed, load the rest and replicate again (incremental)."""
    job1 = replicate(replicator, "first copy", "demo-full", create_target=True)
    jobs = [job1]
    if job1.state == "COMMITTED":
        steps.begin(5, f"Load more rows into {SOURCE}, replicate again", "load+replicate")
        load2 = load_files(prod, rest, "demo-lineitem-2", f"part {PARTS} of {PARTS}")
        print_load(load2, SOURCE)
        job2 = replicate(replicator, "incremental", "demo-incremental", create_target=False)
        jobs.append(job2)
    return jobs


def down() -> int:
    stopped = stop_processes()
    if stopped:
        console.print(f"stopped {len(stopped)} demo processes")
    else:
        console.print("no demo processes are running")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m frontends.demo", description="Run the olap-replicator demo (or stop it)."
    )
    parser.add_argument("--down", action="store_true", help="stop the demo's workers and Flower")
    args = parser.parse_args(argv)
    try:
        return down() if args.down else run()
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/]")
        code = 130
    except UserError as exc:  # SetupError, InvalidRequest: the message is what the user needs
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        code = 1
    except ReplicatorError as exc:
        err_console.print(f"[red]error:[/] {escape(one_line(exc))}")
        code = 1
    except Exception as exc:  # one clear line, never a traceback
        err_console.print(f"[red]error:[/] {type(exc).__name__}: {escape(one_line(exc))}")
        if os.environ.get("DEMO_DEBUG"):
            raise
        code = 1
    if not args.down and PID_DIR.is_dir() and any(PID_DIR.glob("*.pid")):
        console.print(
            f"workers and Flower started by the demo are still running (logs in "
            f"{rel(LOG_DIR)}/); `make demo-down` stops them"
        )
    return code
