"""Long-running processes: a backend worker, the coordinator, the metrics exporter."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from app.queues import queue_name
from frontends.cli.apps import cli, connect, err, metrics_cli, out


@metrics_cli.command("serve")
def metrics_serve(
    port: Annotated[int, typer.Option(help="HTTP port of /metrics")] = 9808,
    addr: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface)")
    ] = "127.0.0.1",
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

    from frontends import metrics

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = connect().settings
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
    from frontends import metrics

    out.file.write(metrics.render(connect().settings, clusters=cluster))


@cli.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option(help="Cluster of the backend")],
    backend: Annotated[str, typer.Option(help="Backend whose queue to serve")],
    concurrency: int = 2,
) -> None:
    """Start a Celery worker for the queue be.CLUSTER.BACKEND (extra args go to celery)."""
    import os

    from app import broker

    r = connect()
    r.cluster(cluster).catalog.backend(backend)  # a clear error for unknown names
    broker.check(r.settings)  # a wrong password or CA: one line and exit 2, not a retry loop
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

    from app import broker
    from workers.commands import coordinator_argv

    broker.check(connect().settings)  # a wrong password or CA: one line, exit 2
    schedule.parent.mkdir(parents=True, exist_ok=True)
    args = coordinator_argv(
        concurrency=concurrency, beat_schedule=str(schedule) if beat else None, extra=ctx.args
    )
    os.execv(sys.executable, args)
