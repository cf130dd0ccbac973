"""The one home of the rules for names and labels users give.

Database, table, partition and column names share one pattern and one length limit; backends
have theirs (they also name Celery queues); labels of loads and jobs are 1 to 128 printable
characters. Names are checked where something is created, so every row written since can be
shown and typed back; lookups only need the shape (``DATABASE.TABLE``), since a name that breaks
the rules cannot exist (or was written by an older version, and must stay reachable).
Cluster names are checked by ``app.config.check_cluster_name``: they are part of settings.
"""

from __future__ import annotations

import re

from app.errors import InvalidRequest

NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BACKEND_MAX = 64
_BACKEND = re.compile(r"[A-Za-z0-9_-]+")
LABEL_MAX = 128


def shown(value: str, limit: int = 40) -> str:
    """``value`` quoted as Python writes it (control characters escaped, so the message stays
    one harmless line), cut to ``limit`` characters."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit])[:-1] + "…'"


def _too_long(kind: str, value: str, limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"{kind} {shown(value)} is {len(value)} characters long; at most {limit} are allowed"
    )


def check_name(kind: str, name: str) -> str:
    """A database, table, partition or column name (``kind`` says which); returns it."""
    if len(name) > NAME_MAX:
        raise _too_long(f"{kind} name", name, NAME_MAX)
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"{kind} name {shown(name)} is not valid: use letters, digits and '_', starting "
            f"with a letter or '_' (at most {NAME_MAX} characters)"
        )
    return name


def split_table_name(full_name: str) -> tuple[str, str]:
    """``DATABASE.TABLE`` -> (database, table), by shape only (for lookups)."""
    parts = full_name.split(".")
    if len(parts) != 2 or not all(parts):
        raise InvalidRequest(f"table {shown(full_name)} must be written DATABASE.TABLE")
    return parts[0], parts[1]


def check_table_name(full_name: str) -> tuple[str, str]:
    """A new table's ``DATABASE.TABLE``: its shape and both names."""
    db_name, table_name = split_table_name(full_name)
    return check_name("database", db_name), check_name("table", table_name)


def check_backend_name(name: str) -> str:
    if len(name) > BACKEND_MAX:
        raise _too_long("backend name", name, BACKEND_MAX)
    if not _BACKEND.fullmatch(name):
        raise InvalidRequest(
            f"backend name {shown(name)} is not valid: use letters, digits, '_' and '-' "
            f"(at most {BACKEND_MAX} characters)"
        )
    return name


def check_label(label: str) -> str:
    """A load's or a job's label."""
    if not label:
        raise InvalidRequest("a label must not be empty: give 1 to 128 printable characters")
    if len(label) > LABEL_MAX:
        raise InvalidRequest(
            f"label {shown(label)} is {len(label)} characters long; a label has at most "
            f"{LABEL_MAX} characters"
        )
    if not label.isprintable():
        raise InvalidRequest(
            f"label {shown(label)} holds a control character; use printable characters only"
        )
    return label
