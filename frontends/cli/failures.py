"""What the CLI says, and how it exits, for errors that are not the library's own.

The library raises a ReplicatorError for everything it foresaw; what else reaches the CLI (a file
it could not open, a value Postgres refused, a number Python could not take) still becomes one
line and an exit status that says whether to fix the command (2) or try again later (3).
"""

from __future__ import annotations

import errno

import sqlalchemy as sa

from app.catalog.engine import login_refused, one_line

# The request names a path that cannot be used as it is: the user must give another.
_USER_ERRNOS = {
    errno.ENOENT,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EROFS,
}


def describe(exc: BaseException) -> tuple[int, str] | None:
    """(exit status, message) for an error the CLI should report on one line, or None for a
    bug (the traceback is then the best report)."""
    if isinstance(exc, sa.exc.DBAPIError):
        detail = one_line(exc.orig)
        if login_refused(exc):
            return 2, f"Postgres refused the login: {detail}; check the user and password"
        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            return 3, f"cannot reach Postgres: {detail}"
        return 2, f"the catalog refused the request: {detail}"
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        text = exc.strerror or one_line(exc)
        return (2 if exc.errno in _USER_ERRNOS else 3), f"{text}{where}"
    if isinstance(exc, ValueError | OverflowError):
        return 2, f"invalid value: {one_line(exc)}"
    return None
