"""The ``replicator`` command line. User mistakes print one line and exit non-zero.

replicator ...            (the console script)
python -m frontends.cli ...
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from app.errors import ReplicatorError, UserError, redact
from frontends.cli import (
    backup,
    clusters,
    export,
    jobs,
    processes,
    schema,
    sync,
    transfer,
    watch,
)  # fmt: skip
from frontends.cli.apps import cli, err
from frontends.cli.failures import describe
from frontends.cli.render import safe

__all__ = [
    "backup", "cli", "clusters", "export", "jobs", "main", "processes", "schema", "sync",
    "transfer", "watch",
]  # fmt: skip


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli(args=argv, standalone_mode=False)
    except UserError as exc:
        _fail(2, str(exc))
    except ReplicatorError as exc:
        _fail(3, str(exc))
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here with standalone_mode=False
        if isinstance(exc, _click_exceptions()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        known = describe(exc)  # a file, a database or a value error: still one line
        if known is None:
            raise
        _fail(*known)


def _fail(code: int, message: str) -> None:
    """The one line of a failed command, on stderr: no secrets, no markup, no control codes."""
    err.print(f"[red]error:[/] {safe(redact(message))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """Usage errors: click's, and those of the copy of click that newer typer releases bundle."""
    import click

    found: list[type[BaseException]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        found.append(TyperClickException)
    except ImportError:
        pass
    return tuple(found)
