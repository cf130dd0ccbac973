"""The CLI's promised exit codes (README "Use it"): a user mistake exits 2 with one `error:`
line, a transient failure (a catalog that cannot be reached) exits 3; neither changes anything."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ClusterFactory
from tests.harness import ROOT, free_port


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frontends.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_user_mistake_exits_2_with_one_error_line(
    test_env: dict[str, str], make_cluster: ClusterFactory
) -> None:
    cluster = make_cluster(backends=1)
    res = _cli(test_env, "checksum", cluster.name, "db.no_such_table")
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "db.no_such_table" in lines[0]
    assert cluster.tables() == []


def test_a_transient_failure_exits_3(test_env: dict[str, str]) -> None:
    """A catalog whose Postgres does not answer is not the user's mistake: exit 3."""
    env = dict(test_env)
    env["REPLICATOR_DSN_TEMPLATE"] = (
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x_{{cluster}}"
    )
    res = _cli(env, "checksum", "nowhere", "db.t")
    assert res.returncode == 3, (res.returncode, res.stderr)
    assert res.stderr.startswith("error:") and "cannot reach Postgres" in res.stderr, res.stderr
