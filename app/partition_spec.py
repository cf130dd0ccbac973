"""``NAME:LOWER:UPPER``: a range partition as a user writes it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidRequest


@dataclass(frozen=True)
class PartitionSpec:
    name: str
    lower: Any = None  # inclusive; None = unbounded
    upper: Any = None  # exclusive; None = unbounded

    @staticmethod
    def parse(spec: str) -> PartitionSpec:
        """``NAME:LOWER:UPPER``, either bound may be empty (unbounded); a bound may be a time
        of day with its own colons (``night:2026-01-01T00:00:00:2026-01-01T06:00:00+01:00``)."""
        m = _PARTITION_SPEC.match(spec)
        if m is None:
            raise InvalidRequest(
                f"partition {spec!r} must be written NAME:LOWER:UPPER (a bound may be empty)"
            )
        return PartitionSpec(m["name"], m["lower"] or None, m["upper"] or None)


# A bound is an ISO date-time (whose colons are its own) or any text without a colon.
_BOUND = r"(?:\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?|[^:]*)"
_PARTITION_SPEC = re.compile(rf"^(?P<name>[^:]+):(?P<lower>{_BOUND}):(?P<upper>{_BOUND})$")
