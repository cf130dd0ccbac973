"""Column types, table schemas and the schema hash.

A table's schema is a list of typed columns. Its hash is a stable 63-bit digest of the column
names, types and nullability, so two clusters can tell at once whether their tables match.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import xxhash

from app.catalog.names import check_name
from app.errors import InvalidRequest, SchemaMismatch
from app.timestamps import arrow_tz_type, check_zones, normalize_tz_type, parse_datetime_bound

_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
}
_ALIASES = {
    "boolean": "bool",
    "tinyint": "int8",
    "smallint": "int16",
    "int": "int32",
    "integer": "int32",
    "bigint": "int64",
    "float": "float32",
    "double": "float64",
    "varchar": "string",
    "text": "string",
    "timestamp": "datetime",
}
_DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")
TYPE_NAMES = [*_SIMPLE_TYPES, "timestamptz[(ZONE)]", "decimal(P,S)"]


def normalize_type(name: str) -> str:
    tz = normalize_tz_type(name)  # before lowering: zone names are case-sensitive
    if tz is not None:
        return tz
    lowered = name.strip().lower()
    lowered = _ALIASES.get(lowered, lowered)
    if lowered in _SIMPLE_TYPES:
        return lowered
    m = _DECIMAL.match(lowered)
    if m and 1 <= int(m.group(1)) <= 38 and int(m.group(2)) <= int(m.group(1)):
        return f"decimal({int(m.group(1))},{int(m.group(2))})"
    raise InvalidRequest(f"unknown column type {name!r}: use one of {', '.join(TYPE_NAMES)}")


def arrow_type(type_name: str) -> pa.DataType:
    if type_name in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[type_name]
    tz = arrow_tz_type(type_name)
    if tz is not None:
        return tz
    m = _DECIMAL.match(type_name)
    assert m, type_name
    return pa.decimal128(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class ColumnDef:
    name: str
    type: str
    nullable: bool = True
    # A column's identity across renames: rowset files name their columns by it (Parquet field
    # ids), so a file written before a rename, drop or widening still reads right. 0: never
    # altered, the column's position + 1 (a table's columns get explicit ids at its first alter).
    id: int = 0
    # The value of this column in rows written before it was added (JSON: the type's text form).
    default: Any = None

    def to_json(self) -> dict[str, Any]:
        # id and default only when set: a table never altered keeps the schema hash it had.
        extra = {"id": self.id} if self.id else {}
        if self.default is not None:
            extra["default"] = self.default
        return {"name": self.name, "type": self.type, "nullable": self.nullable, **extra}

    @staticmethod
    def from_json(data: dict[str, Any]) -> ColumnDef:
        return ColumnDef(
            data["name"],
            data["type"],
            bool(data.get("nullable", True)),
            int(data.get("id", 0)),
            data.get("default"),
        )

    @staticmethod
    def parse(spec: str) -> ColumnDef:
        """``name:type`` or ``name:type:not null``."""
        parts = [p.strip() for p in spec.split(":")]
        if len(parts) not in (2, 3) or not parts[0]:
            raise InvalidRequest(f"column {spec!r} must be written NAME:TYPE or NAME:TYPE:not null")
        nullable = True
        if len(parts) == 3:
            if parts[2].lower().replace("_", " ") != "not null":
                raise InvalidRequest(f"column {spec!r}: the third part may only be 'not null'")
            nullable = False
        return ColumnDef(parts[0], normalize_type(parts[1]), nullable)


def columns_from(specs: Sequence[ColumnDef | str | tuple[str, str]]) -> list[ColumnDef]:
    cols: list[ColumnDef] = []
    for spec in specs:
        if isinstance(spec, ColumnDef):
            cols.append(
                ColumnDef(
                    spec.name, normalize_type(spec.type), spec.nullable, spec.id, spec.default
                )
            )
        elif isinstance(spec, str):
            cols.append(ColumnDef.parse(spec))
        else:
            cols.append(ColumnDef(spec[0], normalize_type(spec[1])))
    if not cols:
        raise InvalidRequest("a table needs at least one column")
    seen: set[str] = set()
    for col in cols:
        check_name("column", col.name)
        if col.name in seen:
            raise InvalidRequest(f"column {col.name!r} is defined twice")
        seen.add(col.name)
    return cols


def schema_hash(columns: Sequence[ColumnDef]) -> int:
    canonical = json.dumps([c.to_json() for c in columns], sort_keys=True)
    return xxhash.xxh64_intdigest(canonical.encode()) & 0x7FFF_FFFF_FFFF_FFFF


def arrow_schema(columns: Sequence[ColumnDef]) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c.type), nullable=c.nullable) for c in columns])


FIELD_ID = b"PARQUET:field_id"


def column_ids(columns: Sequence[ColumnDef]) -> list[int]:
    """Each column's identity: its id, or (a table never altered) its position + 1."""
    return [c.id or i + 1 for i, c in enumerate(columns)]


def file_schema(columns: Sequence[ColumnDef]) -> pa.Schema:
    """The schema rowset files are written with: the table's, each field tagged with its
    column id (Parquet keeps it as the field_id), so any later schema can read the file."""
    return pa.schema(
        [
            pa.field(c.name, arrow_type(c.type), nullable=c.nullable, metadata={FIELD_ID: str(i)})
            for c, i in zip(columns, column_ids(columns), strict=True)
        ]
    )


def _from_json(type_name: str, value: Any) -> Any:
    if value is None:
        return None
    if type_name.startswith("decimal("):
        return decimal.Decimal(value)
    if type_name == "date":
        return dt.date.fromisoformat(value)
    if type_name == "datetime":
        return dt.datetime.fromisoformat(value)
    return value


def adapt(batch: pa.RecordBatch, columns: Sequence[ColumnDef]) -> pa.RecordBatch:
    """A batch as read from a rowset file, as the table's ``columns`` are now (see the module's
    comment). A batch already in that shape is returned as it is."""
    target = arrow_schema(columns)
    fields = batch.schema
    have = [int((f.metadata or {}).get(FIELD_ID, i + 1)) for i, f in enumerate(fields)]
    want = column_ids(columns)
    if (
        have == want
        and fields.names == target.names
        and all(f.type.equals(t.type) for f, t in zip(fields, target, strict=True))
    ):
        return pa.RecordBatch.from_arrays(batch.columns, schema=target)
    at = {cid: k for k, cid in enumerate(have)}
    arrays = []
    for col, cid, field in zip(columns, want, target, strict=True):
        k = at.get(cid)
        if k is None:  # added after this file was written
            value = pa.scalar(_from_json(col.type, col.default), field.type)
            arrays.append(pa.repeat(value, batch.num_rows))
            continue
        array = batch.column(k)
        arrays.append(array if array.type.equals(field.type) else array.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Return ``batch`` with exactly ``schema``'s columns and types, or raise SchemaMismatch."""
    given = set(batch.schema.names)
    wanted = set(schema.names)
    if given != wanted:
        missing = sorted(wanted - given)
        extra = sorted(given - wanted)
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {', '.join(extra)}")
        raise SchemaMismatch("data does not match the table schema: " + "; ".join(parts))
    arrays = []
    for field in schema:
        col = batch.column(field.name)
        check_zones(field.name, col.type, field.type)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaMismatch(
                    f"column {field.name!r} holds {col.type}, which does not convert to "
                    f"{field.type}: {str(exc).splitlines()[0]}"
                ) from None
        if not field.nullable and col.null_count:
            raise SchemaMismatch(
                f"column {field.name!r} is NOT NULL but has {col.null_count} nulls"
            )
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _in_range(type_name: str, value: int) -> int:
    """``value`` if an ``intN`` column can hold it (a bound past that overflows in routing)."""
    limit = 2 ** (int(type_name.removeprefix("int")) - 1)
    if not -limit <= value < limit:
        raise InvalidRequest(
            f"partition bound {value} is out of range for {type_name} ({-limit} to {limit - 1})"
        )
    return value


def parse_value(type_name: str, raw: Any) -> Any:
    """Parse a partition bound given as text (CLI) or a Python value into a JSON-able value."""
    if raw is None:
        return None
    try:
        if type_name.startswith("int"):
            return _in_range(type_name, int(raw))
        if type_name == "date":
            return (
                raw if isinstance(raw, dt.date) else dt.date.fromisoformat(str(raw))
            ).isoformat()
        if type_name == "datetime" or arrow_tz_type(type_name) is not None:
            return parse_datetime_bound(type_name, raw)
        if type_name == "string":
            return str(raw)
    except (ValueError, TypeError, OverflowError):
        raise InvalidRequest(f"partition bound {raw!r} is not a valid {type_name}") from None
    raise InvalidRequest(
        f"a {type_name} column cannot be a partition column: "
        "use an int, date, datetime, timestamptz or string"
    )
