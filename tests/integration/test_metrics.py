"""The Prometheus endpoint and the operator CLI views, against real workers, Postgres and Redis."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.queues import queue_name
from app.replication.state import JobState
from app.replication.taskrows import TaskKind
from frontends import metrics
from tests.harness import ROOT, free_port, wait_until
from tests.integration.rig import Rig, rows, start_rig

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def rig(
    settings: Settings, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    # 2 MB/s per apply process, so the big job of the watch test runs for a few seconds.
    yield from start_rig(settings, test_env, tmp_path_factory.mktemp("rig"), "m", bandwidth=2.0)


@pytest.fixture(scope="module")
def endpoint(rig: Rig) -> Iterator[str]:
    server, thread = metrics.serve(
        rig.settings, port=free_port(), addr="127.0.0.1", consumers_ttl=0.0
    )
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pick(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= set(lab)}


def one(samples: Samples, name: str, **labels: str) -> float:
    found = pick(samples, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return next(iter(found.values()))


def test_metrics_report_bytes_jobs_lag_and_queues(rig: Rig, endpoint: str) -> None:
    table = rig.make_tables("mt", buckets=2)
    rig.src.load(table, rows(4_000, seed=1), label="mt-1")
    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)
    assert job.state is JobState.COMMITTED, job.message

    s = scrape(endpoint)
    dst, src = rig.dst.name, rig.src.name
    assert one(s, "replicator_up") == 1
    assert one(s, "replicator_catalog_up", cluster=dst) == 1
    assert one(s, "replicator_broker_up") == 1
    assert one(s, "replicator_jobs", cluster=dst, state="COMMITTED") >= 1
    assert one(s, "replicator_jobs", cluster=dst, state="ABORTED") == 0
    applied = one(s, "replicator_replicated_bytes_total", cluster=dst, table=table)
    assert applied == job.progress.bytes_done > 0
    # 4 partitions x 2 buckets x 2 target replicas, one load: one file per replica at least.
    assert one(s, "replicator_replicated_files_total", cluster=dst, table=table) >= 16
    assert one(s, "replicator_task_attempts_total", cluster=dst, kind=TaskKind.APPLY) >= 16
    # Attempts and retries are those the catalog records (attempts beyond the first).
    attempts = rig.count(
        rig.dst,
        "SELECT coalesce(sum(attempts), 0) FROM job_tasks WHERE kind = :k",
        k=TaskKind.APPLY,
    )
    retries = rig.count(
        rig.dst,
        "SELECT coalesce(sum(greatest(attempts - 1, 0)), 0) FROM job_tasks WHERE kind = :k",
        k=TaskKind.APPLY,
    )
    assert one(s, "replicator_task_attempts_total", cluster=dst, kind=TaskKind.APPLY) == attempts
    assert one(s, "replicator_task_retries_total", cluster=dst, kind=TaskKind.APPLY) == retries
    assert one(s, "replicator_task_duration_seconds_count", cluster=dst, kind=TaskKind.APPLY) >= 16
    assert one(s, "replicator_task_duration_seconds_sum", cluster=dst, kind=TaskKind.APPLY) > 0
    assert one(s, "replicator_job_duration_seconds_count", cluster=dst, state="COMMITTED") >= 1
    assert one(s, "replicator_table_last_commit_timestamp_seconds", cluster=dst, table=table) > 0
    lag = pick(s, "replicator_table_version_lag", cluster=dst, table=table)
    assert len(lag) == 4 and set(lag.values()) == {0}, lag
    assert set(pick(s, "replicator_table_lag_seconds", cluster=dst, table=table).values()) == {0}
    # Every backend queue of both clusters and the coordinator queue have a depth, the one the
    # broker holds (nothing is left queued once the job has committed; the beat's ticks come
    # and go on the coordinator queue), and each backend queue has the one rig worker consuming
    # it.
    queues = [queue_name(c, b) for c in (src, dst) for b in ("be1", "be2")] + ["coordinator"]
    broker = redis.Redis.from_url(rig.settings.broker_url)
    for queue in queues[:-1]:
        assert one(s, "replicator_queue_length", queue=queue) == broker.llen(queue) == 0
    wait_until(
        lambda: one(scrape(endpoint), "replicator_queue_length", queue="coordinator") == 0,
        30, "the coordinator queue to be empty", interval=0.2,
    )  # fmt: skip

    # Consumers come from a 1 s inspect broadcast: on a busy machine a worker may answer late,
    # so give it a few scrapes.
    def consumed() -> bool:
        s = scrape(endpoint)
        return all(one(s, "replicator_queue_consumers", queue=q) == 1 for q in queues) and (
            one(s, "replicator_workers_online") >= 5
        )

    wait_until(consumed, 30, "one consumer on every rig queue", interval=0.5)

    # A new source load: the target is one version behind in the partitions it touched.
    rig.src.load(table, rows(500, seed=2), label="mt-2")
    s = scrape(endpoint)
    lag = pick(s, "replicator_table_version_lag", cluster=dst, table=table, src_cluster=src)
    assert set(lag.values()) == {1}, lag  # 500 random days reach every quarter

    def behind() -> bool:  # seconds behind: since the source's newer version, so they grow
        seconds = pick(scrape(endpoint), "replicator_table_lag_seconds", cluster=dst, table=table)
        return len(seconds) == 4 and all(v > 0 for v in seconds.values())

    wait_until(behind, 10, "seconds behind to grow on every partition", interval=0.05)

    # ... and caught up again after the next job; the byte counter only grew.
    again = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)
    assert again.state is JobState.COMMITTED, again.message
    s = scrape(endpoint)
    assert set(pick(s, "replicator_table_version_lag", cluster=dst, table=table).values()) == {0}
    assert one(s, "replicator_replicated_bytes_total", cluster=dst, table=table) > applied
    assert one(s, "replicator_jobs", cluster=dst, state="COMMITTED") >= 2


def test_queue_depth_counts_priority_sublists(rig: Rig, endpoint: str) -> None:
    client = redis.Redis.from_url(rig.settings.broker_url)
    queue = queue_name("mnone", "be9")  # no worker and no catalog: found by the SCAN of be.*
    keys = [queue, f"{queue}\x06\x163", f"{queue}\x06\x169"]
    try:
        client.lpush(keys[0], "a", "b")
        client.lpush(keys[1], "c")
        client.lpush(keys[2], "d")
        s = scrape(endpoint)
        assert one(s, "replicator_queue_length", queue=queue) == 4
        assert one(s, "replicator_queue_consumers", queue=queue) == 0
    finally:
        client.delete(*keys)


def _cli(rig: Rig, *args: str) -> list[str]:
    return [sys.executable, "-m", "frontends.cli", *args]


def test_cli_serves_metrics_and_watches_a_running_job(rig: Rig) -> None:
    env = dict(rig.workers.env)
    port = free_port()
    server = subprocess.Popen(
        _cli(
            rig,
            "metrics",
            "serve",
            "--port",
            str(port),
            "--addr",
            "127.0.0.1",
            "--cluster",
            rig.dst.name,
            "--cluster",
            rig.src.name,
        ),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def up() -> bool:
            try:
                return one(scrape(url), "replicator_catalog_up", cluster=rig.dst.name) == 1
            except OSError:
                return False

        wait_until(up, 30, "replicator metrics serve", interval=0.2)

        # The target backends' workers are down while the job is submitted, so it waits in
        # REPLICATING until `jobs watch` has shown it running; then they come back.
        table = rig.make_tables("mwatch", buckets=8)
        rig.src.load(table, rows(20_000, seed=3, wide=True), label="mwatch-1")
        dst_workers = [queue_name(rig.dst.name, b) for b in ("be1", "be2")]
        for name in dst_workers:
            rig.workers.kill(name)
        job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name)
        wait_until(lambda: job.refresh().state is JobState.REPLICATING, 60, "the snapshots")
        running = scrape(url)
        assert pick(running, "replicator_active_job_bytes", job_ref=job.ref, kind="total")
        active = sum(
            one(running, "replicator_jobs", cluster=rig.dst.name, state=state)
            for state in ("INITIALIZING", "SNAPSHOTING", "REPLICATING")
        )
        assert active == 1
        watch = _watch_until_idle(rig, env, f"watching {job.ref}", dst_workers)
        assert watch.returncode == 0, watch.stdout
        assert f"watching {job.ref} (REPLICATING)" in watch.stdout, watch.stdout
        assert f"{job.ref} COMMITTED" in watch.stdout, watch.stdout
        assert job.refresh().state is JobState.COMMITTED

        s = scrape(url)
        assert one(s, "replicator_replicated_bytes_total", cluster=rig.dst.name, table=table) > 0
        assert not pick(s, "replicator_active_job_bytes", job_ref=job.ref)

        show = subprocess.run(
            _cli(rig, "job", "show", job.ref),
            env={**env, "COLUMNS": "200"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert show.returncode == 0, show.stdout + show.stderr
        text = show.stdout
        # 4 partitions x 8 buckets: 32 snapshots and 64 applies, so tasks are grouped.
        assert "grouped" in text and "plan" in text and "events" in text, text
        assert queue_name(rig.dst.name, "be1") in text and "p2023q4" in text, text
    finally:
        server.terminate()
        server.wait(10)


def _watch_until_idle(
    rig: Rig, env: dict[str, str], seen: str, stopped: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run `jobs watch --until-idle`; once it prints ``seen``, restart the ``stopped`` workers
    and let it run to its end."""
    argv = _cli(rig, "jobs", "watch", "--until-idle", "--cluster", rig.dst.name,
                "--interval", "0.2", "--timeout", "120")  # fmt: skip
    proc = subprocess.Popen(
        argv,
        env={**env, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(seen in line for line in lines), 60, f"{seen!r} from jobs watch")
    finally:
        for name in stopped:
            rig.workers.restart(name)
    proc.wait(150)
    reader.join(10)
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(lines), "")
