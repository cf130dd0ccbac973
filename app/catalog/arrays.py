"""Membership tests with one array parameter: ``column = ANY(:values)``.

SQLAlchemy renders ``column.in_(values)`` with one bound parameter per value, and Postgres' wire
protocol allows 65,535 parameters in a statement: a job over 100,000 tablets failed there. An
array is one parameter whatever its length, and the planner treats ``= ANY(array)`` as it treats
an ``IN`` list (an index scan per value, or a hash over them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY


def any_of(column: sa.ColumnElement[Any], values: Iterable[Any]) -> sa.ColumnElement[bool]:
    """``column`` equals one of ``values`` (an empty list matches nothing)."""
    array = sa.bindparam(None, list(values), type_=ARRAY(column.type))
    return column == sa.any_(array)
