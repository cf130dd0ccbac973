"""What every step of the demo shares: its names, sizes, directories and consoles."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from rich.console import Console

from frontends.supervise import ROOT

DEMO_DIR = ROOT / "var" / "demo"
LOG_DIR = DEMO_DIR / "logs"
PID_DIR = DEMO_DIR / "pids"
BEAT_SCHEDULE = DEMO_DIR / "beat-schedule"

SOURCE = "prod"
TARGET = "dr"
CLUSTERS = (SOURCE, TARGET)
BACKENDS = ("be1", "be2", "be3")
TABLE = "tpch.lineitem"
BUCKETS = 12
REPLICATION_NUM = 2
# tpchgen writes PARTS disjoint slices of the data; the first load takes all but the last one,
# the second load (the incremental step) takes the last one.
PARTS = 10
DEFAULT_SCALE_FACTOR = 0.3
FLOWER_PORT = 5555
TRANSFER_PORTS = (8470, 8471)  # one transfer server per cluster (its "host")
READY_TIMEOUT_SEC = 120.0
JOB_TIMEOUT_SEC = 900.0
STALL_TIMEOUT_SEC = 180.0  # a job whose progress does not move for this long is reported
STOP_TIMEOUT_SEC = 20.0

# Piped output (CI logs) has no width to respect; rich would wrap it at 80 columns.
console = Console(
    highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 110
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def rel(path: os.PathLike[str] | str) -> str:
    """A path relative to the repository, for messages."""
    return str(Path(path).relative_to(ROOT))


def safe_url(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"://[^@/]*@", "://***@", url)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
