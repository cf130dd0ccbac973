"""Flower, the Celery ops console, watching a real replication: its API lists the snapshot,
apply and tick tasks, and headless Chromium renders (and screenshots) its tasks page."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.queues import queue_name
from app.replication.state import JobState
from tests.harness import ROOT, free_port, wait_until
from tests.integration.rig import Rig, rows, start_rig

CHROMIUM = Path("/usr/bin/chromium")
NAMES = {"replication.snapshot", "replication.apply", "replication.tick"}


@pytest.fixture(scope="module")
def rig(
    settings: Settings, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    yield from start_rig(settings, test_env, tmp_path_factory.mktemp("rig"), "f", bandwidth=0.0)


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "ensure_chromium.sh")], check=False, timeout=600
        )
    if not CHROMIUM.exists():
        pytest.fail(
            "headless Chromium is missing and scripts/ensure_chromium.sh could not install it"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def flower(rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = dict(rig.workers.env)
    env["FLOWER_UNAUTHENTICATED_API"] = "true"  # the JSON API answers 401 without it
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                f"--broker={rig.redis.url}",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"flower exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthcheck", timeout=2) as resp:
                return bool(resp.read() == b"OK")
        except OSError:
            return False

    try:
        wait_until(healthy, 60, "flower to answer /healthcheck", interval=0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _chromium(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [
                str(binary),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_flower_lists_the_replication_tasks(
    rig: Rig, flower: str, chromium: Path, tmp_path: Path
) -> None:
    table = rig.make_tables("fl", buckets=2)
    rig.src.load(table, rows(2_000, seed=1), label="fl-1")
    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)
    assert job.state is JobState.COMMITTED, job.message

    # Flower knows tasks from the workers' events, a moment after they happen: a task's
    # "succeeded" event may come after the job has already committed.
    ours: list[dict[str, Any]] = []

    def seen_all() -> bool:
        nonlocal ours
        tasks = _get_json(f"{flower}/api/tasks?limit=1000")
        ours = [
            t
            for t in tasks.values()
            if t.get("name") in ("replication.snapshot", "replication.apply")
            and f"'job_id': {job.id}," in (t.get("kwargs") or "")
            and f"'cluster': '{rig.dst.name}'" in (t.get("kwargs") or "")
        ]
        return (
            {t.get("name") for t in tasks.values()} >= NAMES
            and {t["name"] for t in ours} == {"replication.snapshot", "replication.apply"}
            and all(t["state"] == "SUCCESS" for t in ours)
        )

    try:
        wait_until(seen_all, 30, "flower to show this job's tasks, all succeeded", interval=0.5)
    except AssertionError as exc:
        states = sorted((t["name"], t["state"], t.get("routing_key")) for t in ours)
        raise AssertionError(f"{exc}: {states}") from None
    # Messages name the job and carry task ids: the source and target backend queues ran them.
    assert all(f"'cluster': '{rig.dst.name}'" in t["kwargs"] for t in ours)
    assert {t["routing_key"] for t in ours if t["name"] == "replication.snapshot"} <= {
        queue_name(rig.src.name, "be1"),
        queue_name(rig.src.name, "be2"),
    }
    assert {t["routing_key"] for t in ours if t["name"] == "replication.apply"} <= {
        queue_name(rig.dst.name, "be1"),
        queue_name(rig.dst.name, "be2"),
    }
    workers = _get_json(f"{flower}/api/workers?refresh=1")
    assert {queue_name(rig.src.name, "be1"), "coordinator"} <= {w.split("@")[0] for w in workers}

    # The tasks page, rendered by a real browser: a screenshot for people, the DOM for us.
    shot = tmp_path / "flower-tasks.png"
    # The table is filled by an XHR after load: give the page virtual time to run it.
    res = _chromium(
        chromium,
        "--virtual-time-budget=8000",
        "--run-all-compositor-stages-before-draw",
        f"--screenshot={shot}",
        "--window-size=1600,1000",
        f"{flower}/tasks",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ROOT / "var").mkdir(exist_ok=True)
    shutil.copyfile(shot, ROOT / "var" / "flower-screenshot.png")

    dom = _chromium(chromium, "--virtual-time-budget=8000", "--dump-dom", f"{flower}/tasks").stdout
    # The first page holds the newest tasks: ticks come every second, the applies just before.
    assert "replication.tick" in dom, dom[-2000:]
    assert "replication.apply" in dom or "replication.snapshot" in dom, dom[-2000:]

    # One snapshot task's own page shows its name, queue and the job it belongs to.
    snap = next(t for t in ours if t["name"] == "replication.snapshot")
    page = _chromium(
        chromium, "--virtual-time-budget=5000", "--dump-dom", f"{flower}/task/{snap['uuid']}"
    ).stdout
    assert "replication.snapshot" in page and snap["uuid"] in page, page[-2000:]
    assert snap["routing_key"] in page and "job_id" in page, page[-2000:]
