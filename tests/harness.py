"""Real processes for integration and fault tests: a private Redis and Postgres, Celery workers.

Every process is a subprocess the test can SIGKILL and restart. Nothing here is mocked. The
processes themselves are run by the one supervisor, ``frontends.supervise``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from frontends.servers import RedisServer, SeaweedServer
from frontends.supervise import QUIET, ROOT, Proc, Workers, free_port

__all__ = [
    "QUIET",
    "ROOT",
    "PostgresServer",
    "Proc",
    "RedisServer",
    "SeaweedServer",
    "Workers",
    "free_port",
    "wait_until",
]


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class PostgresServer:
    """A Postgres of the test's own (initdb in a temp dir, its own port), so a test may kill or
    restart it without touching the machine's. Runs as the ``postgres`` user when we are root."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if found:
            self.bindir = found[-1].parent
        elif shutil.which("pg_ctl"):
            self.bindir = Path(shutil.which("pg_ctl") or "").parent
        else:
            raise RuntimeError("Postgres server binaries are not installed: run `make services`")
        import tempfile

        self.datadir = Path(tempfile.mkdtemp(prefix="olap-pg-")) / "data"
        self.as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> PostgresServer:
        if self.as_root:
            shutil.chown(self.datadir.parent, "postgres", "postgres")
        self._run(
            self.bindir / "initdb",
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            # UTF-8 whatever the machine's locale (a minimal Debian has none: SQL_ASCII).
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        return self.start()

    def start(self) -> PostgresServer:
        opts = f"-p {self.port} -k {self.datadir.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            str(self.datadir),
            "-o",
            opts,
            "-l",
            str(self.datadir.parent / "server.log"),
            "-w",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(
            self.bindir / "pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False
        )

    def restart(self, down_for: float = 0.0) -> None:
        """Stop at once (every connection dies), stay down a while, start again."""
        self.stop("immediate")
        time.sleep(down_for)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)
