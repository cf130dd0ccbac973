"""The typer command groups and the two consoles every command module prints to."""

from __future__ import annotations

import typer
from rich.console import Console

from app.client import Replicator
from frontends.connect import replicator

cli = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
cluster_cli = typer.Typer(no_args_is_help=True, help="Create and inspect clusters.")
backend_cli = typer.Typer(no_args_is_help=True, help="Manage a cluster's backends.")
table_cli = typer.Typer(no_args_is_help=True, help="Create and inspect tables.")
cli.add_typer(cluster_cli, name="cluster")
cli.add_typer(backend_cli, name="backend")
job_cli = typer.Typer(no_args_is_help=True, help="Inspect and cancel one replication job.")
cli.add_typer(table_cli, name="table")
cli.add_typer(job_cli, name="job")
jobs_cli = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="List replication jobs (newest first), or watch the running ones.",
)
cli.add_typer(jobs_cli, name="jobs")
metrics_cli = typer.Typer(no_args_is_help=True, help="Prometheus metrics read from the catalogs.")
cli.add_typer(metrics_cli, name="metrics")
transfer_cli = typer.Typer(
    no_args_is_help=True, help="The transfer server of a backend host, and development certs."
)
cli.add_typer(transfer_cli, name="transfer")
sync_cli = typer.Typer(
    no_args_is_help=True, help="Keep a whole database in sync with another cluster's."
)
cli.add_typer(sync_cli, name="sync")
backup_cli = typer.Typer(
    no_args_is_help=True, help="Back up tables into a repository; list, verify and prune it."
)
cli.add_typer(backup_cli, name="backup")

out = Console(soft_wrap=True)
err = Console(stderr=True)


def connect() -> Replicator:
    """The Replicator of every command: settings from replicator.toml / REPLICATOR_*, nudges
    through the workers' broker."""
    return replicator()
