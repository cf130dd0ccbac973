"""scripts/services.sh reads one URL per service; a URL it cannot use is refused before anything
is installed or started."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


def run(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")} | env
    # No command: the script parses its settings, then prints its usage (exit 2).
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"REPLICATOR_PG_URL": "postgresql+psycopg://postgres@127.0.0.1:5433"},
        {"REPLICATOR_PG_URL": "postgresql://me@localhost"},
        {"REPLICATOR_REDIS_URL": "redis://127.0.0.1:6380/3"},
    ],
)
def test_usable_urls_are_accepted(env: dict[str, str]) -> None:
    result = run(**env)
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REPLICATOR_PG_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/olap"}, "no database"),
        ({"REPLICATOR_PG_URL": "127.0.0.1:5432"}, "cannot parse"),
        ({"REPLICATOR_REDIS_URL": "redis://127.0.0.1:port"}, "cannot parse"),
    ],
)
def test_unusable_urls_are_refused(env: dict[str, str], message: str) -> None:
    result = run(**env)
    assert result.returncode == 1 and message in result.stderr
