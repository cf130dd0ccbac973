"""Failpoints: named places where a test can make the product fail on purpose.

Off unless ``REPLICATOR_FAILPOINTS`` names a JSON file such as
``{"transfer.corrupt": 1}`` (fire once). The count is kept in that file under an exclusive
lock, so "once" holds across every worker process of a test. Production never sets it.
"""

from __future__ import annotations

import fcntl
import json
import os


def fire(name: str) -> bool:
    """True if the failpoint ``name`` is armed; consumes one shot."""
    path = os.environ.get("REPLICATOR_FAILPOINTS")
    if not path or not os.path.exists(path):
        return False
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            armed = json.loads(f.read() or "{}")
            left = int(armed.get(name, 0))
            if left <= 0:
                return False
            armed[name] = left - 1
            f.seek(0)
            f.truncate()
            f.write(json.dumps(armed))
            return True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
