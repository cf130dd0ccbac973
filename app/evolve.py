"""Schema changes: add, drop, widen and rename columns, each a new schema version of the table,
with rows written under any earlier version read as the table is now.

Why it needs no rewrite of data: rowset files name their columns by id (Parquet field ids,
``app.schema.file_schema``; a file written before ids counts positions, which is what the ids of
a never-altered table are). A reader matches a file's columns to the table's by id, so a renamed
column keeps its data, a dropped one is left out, a widened one is cast (widening never loses a
value), and a column added later is filled with its default. Ids are never reused: a column
dropped and added again under the same name is a new column whose old rows hold the default.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from app import txn as txns
from app.catalog import model
from app.catalog import schema as s
from app.catalog.names import check_name
from app.cluster import Cluster
from app.errors import InvalidRequest
from app.schema import ColumnDef, arrow_type, column_ids, normalize_type, schema_hash
from app.sync import fence


@dataclass(frozen=True)
class AddColumn:
    column: str  # NAME:TYPE or NAME:TYPE:not null
    default: Any = None  # the value of the rows already written (required for NOT NULL)
    id: int = 0  # 0: the table's next; a sync replays the source's, so that both sides agree


@dataclass(frozen=True)
class DropColumn:
    name: str


@dataclass(frozen=True)
class WidenColumn:
    name: str
    type: str


@dataclass(frozen=True)
class RenameColumn:
    name: str
    new_name: str


Change = AddColumn | DropColumn | WidenColumn | RenameColumn
_KINDS: dict[str, type[Change]] = {
    "add": AddColumn, "drop": DropColumn, "widen": WidenColumn, "rename": RenameColumn,
}  # fmt: skip


def spec_of(change: Change) -> dict[str, Any]:
    """The change as data, kept with its schema version (a sync replays it on its target)."""
    kind = next(k for k, cls in _KINDS.items() if isinstance(change, cls))
    return {"kind": kind, **change.__dict__}


def change_from(spec: dict[str, Any]) -> Change:
    args = {k: v for k, v in spec.items() if k != "kind"}
    return _KINDS[spec["kind"]](**args)


@dataclass(frozen=True)
class Evolved:
    columns: list[ColumnDef]
    partition_column: str | None
    distribution_columns: list[str]
    description: str


@dataclass(frozen=True)
class SchemaVersion:
    version: int
    columns: tuple[ColumnDef, ...]
    schema_hash: int
    change: str
    created_at: dt.datetime


_INT_WIDTH = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}


def evolve(table: model.TableInfo, change: Change, next_id: int) -> Evolved:
    """The table's columns after ``change`` (every column with an explicit id; a new one gets
    ``next_id``), or an InvalidRequest saying why the change is refused. Pure: no catalog."""
    ids = column_ids(table.columns)
    cols = [_with(c, id=i) for c, i in zip(table.columns, ids, strict=True)]
    part, dist = table.partition_column, list(table.distribution_columns)
    where = f"table {table.full_name}"
    if isinstance(change, AddColumn):
        col = ColumnDef.parse(change.column)
        check_name("column", col.name)
        if col.name in {c.name for c in cols}:
            raise InvalidRequest(f"{where} already has a column {col.name!r}")
        default = parse_default(col, change.default)
        if change.id and change.id in ids:
            raise InvalidRequest(f"{where} already has a column with id {change.id}")
        cols.append(_with(col, id=change.id or next_id, default=default))
        return Evolved(cols, part, dist, f"add column {col.name} {col.type}")
    old = _find(cols, change.name, where)
    if isinstance(change, DropColumn):
        _refuse_key(old, part, dist, where, "dropped")
        if len(cols) == 1:
            raise InvalidRequest(f"{where} has one column: a table needs at least one")
        return Evolved([c for c in cols if c is not old], part, dist, f"drop column {old.name}")
    if isinstance(change, WidenColumn):
        new_type = normalize_type(change.type)
        _refuse_key(old, part, dist, where, "widened")
        _check_widening(old, new_type)
        cols = [_with(c, type=new_type) if c is old else c for c in cols]
        return Evolved(cols, part, dist, f"widen column {old.name} {old.type} -> {new_type}")
    new = check_name("column", change.new_name)
    if new in {c.name for c in cols}:
        raise InvalidRequest(f"{where} already has a column {new!r}")
    cols = [_with(c, name=new) if c is old else c for c in cols]
    part = new if part == old.name else part
    dist = [new if d == old.name else d for d in dist]
    return Evolved(cols, part, dist, f"rename column {old.name} -> {new}")


def _with(col: ColumnDef, **changes: Any) -> ColumnDef:
    values = {"name": col.name, "type": col.type, "nullable": col.nullable, "id": col.id,
              "default": col.default} | changes  # fmt: skip
    return ColumnDef(**values)


def _find(cols: list[ColumnDef], name: str, where: str) -> ColumnDef:
    for c in cols:
        if c.name == name:
            return c
    raise InvalidRequest(
        f"{where} has no column {name!r} (it has {', '.join(c.name for c in cols)})"
    )


def _refuse_key(col: ColumnDef, part: str | None, dist: list[str], where: str, what: str) -> None:
    if col.name == part:
        raise InvalidRequest(f"column {col.name!r} partitions {where}: it cannot be {what}")
    if col.name in dist:
        raise InvalidRequest(
            f"column {col.name!r} distributes the rows of {where} over its buckets (by its "
            f"values' hash): it cannot be {what}"
        )


def _check_widening(col: ColumnDef, new: str) -> None:
    old = col.type
    ok = False
    if old in _INT_WIDTH and new in _INT_WIDTH:
        ok = _INT_WIDTH[new] > _INT_WIDTH[old]
    elif (old, new) == ("float32", "float64"):
        ok = True
    elif old.startswith("decimal(") and new.startswith("decimal("):
        (p, sc), (p2, sc2) = _precision(old), _precision(new)
        ok = (p2, sc2) != (p, sc) and sc2 >= sc and p2 - sc2 >= p - sc
    if not ok:
        raise InvalidRequest(
            f"column {col.name!r}: {old} -> {new} is not a widening; allowed are int8 < int16 < "
            "int32 < int64, float32 -> float64, and decimal(P,S) to as many or more digits on "
            "both sides of the point"
        )


def _precision(type_name: str) -> tuple[int, int]:
    p, sc = type_name.removeprefix("decimal(").removesuffix(")").split(",")
    return int(p), int(sc)


def parse_default(col: ColumnDef, raw: Any) -> Any:
    """``raw`` as the JSON form of a ``col.type`` value, checked to fit; None for no default."""
    if raw is None:
        if not col.nullable:
            raise InvalidRequest(
                f"column {col.name!r} is NOT NULL: give a default for the rows already written"
            )
        return None
    if col.type.startswith("timestamptz"):
        raise InvalidRequest(f"column {col.name!r}: a timestamptz column takes no default yet")
    try:
        value = _python(col.type, raw)
        pa.scalar(value, arrow_type(col.type))
    except (ValueError, TypeError, ArithmeticError, pa.ArrowException):
        raise InvalidRequest(f"default {raw!r} is not a valid {col.type}") from None
    return value.isoformat() if isinstance(value, dt.date) else _json(value)


def _python(type_name: str, raw: Any) -> Any:
    text = str(raw).strip()
    if type_name == "bool":
        if isinstance(raw, bool) or text.lower() in ("true", "false"):
            return raw if isinstance(raw, bool) else text.lower() == "true"
        raise ValueError(raw)
    if type_name in _INT_WIDTH:
        if isinstance(raw, float) or not text.lstrip("-").isdigit():
            raise ValueError(raw)
        return int(text)
    if type_name.startswith("float"):
        return float(text)
    if type_name.startswith("decimal("):
        return decimal.Decimal(text)
    if type_name == "date":
        return raw if isinstance(raw, dt.date) else dt.date.fromisoformat(text)
    if type_name == "datetime":
        return raw if isinstance(raw, dt.datetime) else dt.datetime.fromisoformat(text)
    return text  # string


def _json(value: Any) -> Any:
    return str(value) if isinstance(value, decimal.Decimal) else value


def alter_table(
    cluster: Cluster, full_name: str, change: Change, *, by_sync: str | None = None
) -> model.TableInfo:
    """Apply ``change`` as the table's next schema version, in one catalog transaction. Refused
    while a replication job has the table open as its target (its files are being installed),
    and on the target of a sync policy unless that policy (``by_sync``) makes it."""
    with cluster.engine.begin() as conn:
        table = model.get_table(conn, full_name, cluster.name)
        txns.refuse_if_replicating(conn, table, "altering the schema")
        if by_sync is None or fence.policy_of(conn, table) != by_sync:
            fence.refuse_if_fenced(conn, table, "altering the schema")
        return apply_change(conn, table.id, change)


def apply_change(conn: sa.Connection, table_id: int, change: Change) -> model.TableInfo:
    """The schema change itself, in the caller's transaction (a sync job's commit replays the
    source's changes in the transaction that makes the data needing them visible)."""
    current = conn.execute(
        sa.select(s.tables.c.schema_version).where(s.tables.c.id == table_id).with_for_update()
    ).scalar_one()
    table = model.table_by_id(conn, table_id)  # as it is under the lock
    ever = conn.execute(
        sa.select(s.schema_versions.c.columns).where(s.schema_versions.c.table_id == table.id)
    ).scalars()
    next_id = 1 + max(
        [len(table.columns)]
        + [i for cols in ever for i in column_ids([ColumnDef.from_json(c) for c in cols])]
    )
    result = evolve(table, change, next_id)
    columns = [c.to_json() for c in result.columns]
    h = schema_hash(result.columns)
    conn.execute(
        sa.update(s.tables)
        .where(s.tables.c.id == table.id, s.tables.c.schema_version == current)
        .values(
            columns=columns,
            schema_hash=h,
            schema_version=current + 1,
            partition_column=result.partition_column,
            distribution_columns=result.distribution_columns,
        )
    )
    conn.execute(sa.update(s.indexes).where(s.indexes.c.table_id == table.id).values(schema_hash=h))
    spec = spec_of(change)
    if isinstance(change, AddColumn) and not change.id:
        spec["id"] = next_id  # what a replay on another cluster must give the column
    conn.execute(
        sa.insert(s.schema_versions).values(
            table_id=table.id,
            version=current + 1,
            columns=columns,
            schema_hash=h,
            change=result.description,
            spec=spec,
        )
    )
    return model.table_by_id(conn, table.id)


def replayed(table: model.TableInfo, specs: list[dict[str, Any]]) -> model.TableInfo:
    """``table`` as it would be after the changes ``specs`` (the source's, ids included), in
    memory: what a job that replays them must find equal to its source."""
    for spec in specs:
        change = change_from(spec)
        if isinstance(change, AddColumn) and not change.id:
            raise InvalidRequest("a replayed column addition must carry the column's id")
        got = evolve(table, change, next_id=0)
        cols = tuple(got.columns)
        table = dataclasses.replace(
            table,
            columns=cols,
            schema_hash=schema_hash(cols),
            partition_column=got.partition_column,
            distribution_columns=tuple(got.distribution_columns),
        )
    return table


def history(cluster: Cluster, full_name: str) -> list[SchemaVersion]:
    """Every schema the table has had, oldest first."""
    with cluster.engine.connect() as conn:
        table = model.get_table(conn, full_name, cluster.name)
        rows = conn.execute(
            sa.select(s.schema_versions)
            .where(s.schema_versions.c.table_id == table.id)
            .order_by(s.schema_versions.c.version)
        ).all()
    return [
        SchemaVersion(
            r.version,
            tuple(ColumnDef.from_json(c) for c in r.columns),
            r.schema_hash,
            r.change,
            r.created_at,
        )
        for r in rows
    ]
