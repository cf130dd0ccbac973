"""The trust boundary for names: everything that crosses from another cluster is untrusted.

Every id and name that arrives in a URL, a token or a manifest passes one of these validators
before it is used, and every path built from them is resolved with :func:`resolve_under` before
anything is opened, renamed or deleted. Each validator returns the value in its canonical type
or raises :class:`~app.errors.InvalidRequest` with a one-line message naming the bad value
(its ``repr``, cut to 80 characters).

All character classes are ASCII only: ``str.isalnum`` and ``\\d`` accept other scripts' letters
and digits (full-width ``"\\uff11"``, Cyrillic ``"\\u0430"``), which would let look-alike
names through.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path, PurePath

from app.config import CLUSTER_NAME
from app.errors import InvalidRequest

INT64_MAX = 2**63 - 1
FILE_NAME_MAX = 128
BACKEND_NAME_MAX = 64

_FILE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}", re.ASCII)
_ROWSET_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
_DECIMAL = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)
# app.cluster.Cluster.add_backend allows "letters, digits, '_' and '-'" (via str.isalnum, which
# also accepts non-ASCII letters); here only their ASCII spelling, and a length limit.
_BACKEND_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}", re.ASCII)
_KEY_ID = re.compile(r"[A-Za-z0-9_\-]{1,32}", re.ASCII)
_HOLD_OWNER = re.compile(r"[A-Za-z0-9_.:\-]{1,200}", re.ASCII)


def show(value: object) -> str:
    """``repr(value)`` cut to 80 characters: safe to put in a one-line message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(what: str, value: object, rule: str) -> InvalidRequest:
    return InvalidRequest(f"{what} {show(value)} is not valid: {rule}")


def file_name(value: object) -> str:
    """A data file name: ``[A-Za-z0-9_.-]``, 1..128 characters, no leading ``.``."""
    if (
        not isinstance(value, str)
        or not _FILE_NAME.fullmatch(value)
        or value.startswith(".")  # also refuses "." and ".."
    ):
        raise _bad("file name", value, "use 1-128 of [A-Za-z0-9_.-], not starting with '.'")
    return value


def rowset_id(value: object) -> str:
    """A rowset id: 32 lower-case hex digits (``uuid4().hex``, ``uuid5().hex``)."""
    if not isinstance(value, str) or not _ROWSET_ID.fullmatch(value):
        raise _bad("rowset id", value, "expected 32 lower-case hex digits")
    return value


def _positive_int64(what: str, value: object) -> int:
    if isinstance(value, bool):  # bool is an int; True is not tablet 1
        raise _bad(what, value, "expected a positive integer")
    if isinstance(value, int):
        if 1 <= value <= INT64_MAX:
            return value
        raise _bad(what, value, f"expected 1..{INT64_MAX}")
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = int(value)
        if number <= INT64_MAX:
            return number
    raise _bad(what, value, f"expected a decimal 1..{INT64_MAX} without sign or leading zeros")


def tablet_id(value: object) -> int:
    return _positive_int64("tablet id", value)


def job_id(value: object) -> int:
    return _positive_int64("job id", value)


def cluster_name(value: object) -> str:
    """The rule of :func:`app.config.check_cluster_name` (``[a-z][a-z0-9_]{0,39}``)."""
    if not isinstance(value, str) or not CLUSTER_NAME.fullmatch(value):
        raise _bad(
            "cluster name", value, "use lower-case letters, digits and '_', starting with a letter"
        )
    return value


def backend_name(value: object) -> str:
    """``app.cluster`` backend names: letters, digits, ``_`` and ``-`` (ASCII), 1..64."""
    if not isinstance(value, str) or not _BACKEND_NAME.fullmatch(value):
        raise _bad("backend name", value, "use 1-64 of ASCII letters, digits, '_' and '-'")
    return value


def key_id(value: object) -> str:
    """A token signing key id: 1..32 of ``[A-Za-z0-9_-]``."""
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        raise _bad("key id", value, "use 1-32 of ASCII letters, digits, '_' and '-'")
    return value


def hold_owner(value: object) -> str:
    """A hold owner such as ``job:<cluster>:<job id>``: 1..200 of ``[A-Za-z0-9_.:-]``."""
    if not isinstance(value, str) or not _HOLD_OWNER.fullmatch(value):
        raise _bad("hold owner", value, "use 1-200 of ASCII letters, digits and '_.:-'")
    return value


def rowset_file(tablet: object, rowset: object, name: object) -> str:
    """The path of a rowset's file relative to a storage root, from validated parts."""
    return f"data/{tablet_id(tablet)}/{rowset_id(rowset)}/{file_name(name)}"


def resolve_under(root: str | os.PathLike[str], relative: str | PurePath) -> Path:
    """``root / relative`` with symlinks resolved, refused unless strictly inside ``root``
    (itself resolved). Call it before any open, rename or delete of a path built from input.

    A path that does not exist yet resolves as far as it exists, so this also checks write
    targets. It checks once: a symlink placed inside the root after the call is not seen."""
    text = os.fspath(relative) if isinstance(relative, PurePath) else relative
    if not isinstance(text, str) or not text:
        raise _bad("path", relative, "expected a non-empty relative path")
    if "\x00" in text:
        raise _bad("path", relative, "contains a NUL byte")
    if os.path.isabs(text) or text.startswith(("/", "\\")):
        raise _bad("path", relative, "must be relative to the storage root")
    real_root = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(real_root, text))
    if not resolved.startswith(real_root.rstrip(os.sep) + os.sep):
        raise _bad("path", relative, "leaves the storage root")
    return Path(resolved)


def transfer_url(url: str) -> str:
    """``https://host:port`` (or ``http://`` for insecure set-ups), nothing else."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or port is None
        or parts.username
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise InvalidRequest(
            f"transfer URL {url[:80]!r} must be https://HOST:PORT (http:// only for insecure "
            "set-ups), the address other hosts reach this backend's transfer server at"
        )
    return f"{parts.scheme}://{parts.netloc}"
