"""Schema changes: table alter (one change a call) and table history."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from app.errors import InvalidRequest
from app.evolve import AddColumn, Change, DropColumn, RenameColumn, WidenColumn
from frontends.cli.apps import connect, out, table_cli
from frontends.cli.render import safe


@table_cli.command("alter")
def table_alter(
    cluster: str,
    table: str,
    add_column: Annotated[
        str | None, typer.Option(help="NAME:TYPE[:not null] (a NOT NULL one needs --default)")
    ] = None,
    default: Annotated[
        str | None, typer.Option(help="With --add-column: the value of the rows already written")
    ] = None,
    drop_column: Annotated[str | None, typer.Option(help="NAME")] = None,
    widen: Annotated[str | None, typer.Option(help="NAME:TYPE, e.g. qty:int64")] = None,
    rename: Annotated[str | None, typer.Option(help="OLD:NEW")] = None,
) -> None:
    """Change a table's schema: a new schema version; rows already written read as the new
    schema says (a renamed column keeps its data, an added one shows its default)."""
    change = _change(add_column, default, drop_column, widen, rename)
    info = connect().cluster(cluster).alter(table, change)
    cols = ", ".join(f"{safe(c.name)} {safe(c.type)}" for c in info.columns)
    out.print(f"table {safe(info.full_name)} altered: schema hash {info.schema_hash}; {cols}")


def _change(
    add: str | None, default: str | None, drop: str | None, widen: str | None, rename: str | None
) -> Change:
    if default is not None and add is None:
        raise InvalidRequest("--default goes with --add-column")
    given = [x for x in (add, drop, widen, rename) if x is not None]
    if len(given) != 1:
        raise InvalidRequest(
            "give exactly one of --add-column, --drop-column, --widen, --rename (one change a "
            "call, each a schema version of its own)"
        )
    if add is not None:
        return AddColumn(add, default)
    if drop is not None:
        return DropColumn(drop)
    pair = (widen or rename or "").split(":")
    if len(pair) != 2 or not all(p.strip() for p in pair):
        what = "--widen NAME:TYPE" if widen else "--rename OLD:NEW"
        raise InvalidRequest(f"write {what}, got {widen or rename!r}")
    a, b = (p.strip() for p in pair)
    return WidenColumn(a, b) if widen else RenameColumn(a, b)


@table_cli.command("history")
def table_history(cluster: str, table: str) -> None:
    """Every schema version of a table, oldest first."""
    t = Table("version", "when", "change", "columns", "schema hash")
    for v in connect().cluster(cluster).schema_history(table):
        cols = ", ".join(f"{c.name} {c.type}" for c in v.columns)
        when = v.created_at.strftime("%Y-%m-%d %H:%M:%S")
        t.add_row(str(v.version), when, safe(v.change), safe(cols), str(v.schema_hash))
    out.print(t)
