"""Timestamps with and without a time zone: the ``timestamptz`` type, its bounds, and the rule
that a load never drops or invents a zone.

``datetime`` (alias ``timestamp``) holds wall-clock times without a zone. ``timestamptz`` holds
instants: stored as UTC microseconds, with the column's zone (UTC unless written
``timestamptz(Europe/Berlin)``) kept in the Arrow and Parquet schema, so reads give the values
back in that zone. The zone is part of the type name and therefore of the schema hash.

Loads convert between zones (the same instant, relabelled) but never between "has a zone" and
"has none": dropping a zone or guessing one silently changes what the values mean, so both are
refused with the fix (declare the column ``timestamptz``, or give the input a zone).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import Any

import pyarrow as pa

from app.errors import InvalidRequest, SchemaMismatch

TZ_TYPE = "timestamptz"
_TZ = re.compile(r"^timestamptz(?:\((?P<zone>[^()]+)\))?$", re.IGNORECASE)
TZ_ALIASES = ("timestamp with time zone", "datetimetz")


def normalize_tz_type(name: str) -> str | None:
    """The canonical name of a ``timestamptz[(ZONE)]`` type, or None if ``name`` is not one.
    ZONE is an IANA name (case matters: ``Europe/Berlin``); UTC is written plain ``timestamptz``.
    """
    stripped = " ".join(name.strip().split())
    if stripped.lower() in TZ_ALIASES:
        return TZ_TYPE
    m = _TZ.match(stripped)
    if m is None:
        return None
    zone = (m.group("zone") or "UTC").strip()
    if zone.upper() in ("UTC", "Z", "ETC/UTC"):
        return TZ_TYPE
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(
            f"unknown time zone {zone!r} in column type {name!r}: use an IANA name such as "
            "Europe/Berlin, or plain timestamptz for UTC"
        ) from None
    return f"{TZ_TYPE}({zone})"


def zone_of(type_name: str) -> str | None:
    """The zone of a canonical ``timestamptz`` type name; None for any other type."""
    m = _TZ.match(type_name)
    if m is None:
        return None
    return m.group("zone") or "UTC"


def arrow_tz_type(type_name: str) -> pa.DataType | None:
    zone = zone_of(type_name)
    return None if zone is None else pa.timestamp("us", tz=zone)


def parse_datetime_bound(type_name: str, raw: Any) -> str:
    """A partition bound of a ``datetime`` or ``timestamptz`` column as canonical ISO text.

    ``datetime`` bounds are wall-clock times and may not carry a zone. ``timestamptz`` bounds
    without a zone are read in the column's zone; all are stored in UTC
    (``2026-01-01T04:00:00+00:00``), so bounds compare as text and match across clusters."""
    value = raw if isinstance(raw, dt.datetime) else dt.datetime.fromisoformat(str(raw))
    zone = zone_of(type_name)
    if zone is None:
        if value.tzinfo is not None:
            raise InvalidRequest(
                f"partition bound {raw!r} has a time zone but the column is a datetime without "
                "one: write the bound without a zone, or declare the column timestamptz"
            )
        return value.isoformat()
    if value.tzinfo is None:
        value = value.replace(tzinfo=zoneinfo.ZoneInfo(zone))
    return value.astimezone(dt.UTC).isoformat()


def bound_micros(value: str) -> int:
    """Microseconds since the epoch of a canonical bound (UTC for timestamptz bounds, the wall
    clock for datetime ones) - the same scale as the column's stored int64 values."""
    parsed = dt.datetime.fromisoformat(value)
    epoch = dt.datetime(1970, 1, 1, tzinfo=parsed.tzinfo and dt.UTC)
    return (parsed - epoch) // dt.timedelta(microseconds=1)


def check_zones(name: str, given: pa.DataType, wanted: pa.DataType) -> None:
    """Refuse input whose timestamps would lose their zone, or have to get one by guessing."""
    if not pa.types.is_timestamp(wanted):
        return
    if wanted.tz is None and pa.types.is_timestamp(given) and given.tz is not None:
        raise SchemaMismatch(
            f"column {name!r} is a timestamp without time zone but the input's values are in "
            f"zone {given.tz}, which loading would drop: declare the column timestamptz (keeps "
            "the zone), or convert the values to local times without a zone before loading"
        )
    no_zone = (pa.types.is_timestamp(given) and given.tz is None) or pa.types.is_date(given)
    if wanted.tz is not None and no_zone:
        raise SchemaMismatch(
            f"column {name!r} is timestamptz but the input's values ({given}) have no time "
            "zone: give them one (pyarrow.compute.assume_timezone, pandas tz_localize, or an "
            "offset such as +02:00 in CSV), or declare the column datetime"
        )
