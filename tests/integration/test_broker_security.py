"""A broker with a password and mutual TLS, end to end: a real redis-server with ``requirepass``
listening only on TLS (client certificates required), real worker processes reaching it through
``rediss://:PASSWORD@...`` with the CA and a client certificate, a job replicated to COMMITTED;
then neither the broker's password nor the catalogs' (in their DSNs) appears in any log file,
catalog row, Celery event (task arguments included) or metric, and a wrong password or a missing
CA is one line on the CLI with exit 2."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app import broker
from app.catalog import schema as s
from app.config import Settings
from app.errors import BrokerRefused
from app.replication.state import JobState
from app.transfer import tls
from frontends.servers import RedisServer, RedisTls
from tests.harness import Workers, wait_until
from tests.integration.rig import Rig, rows, start_rig

BROKER_PASSWORD = f"brk-{secrets.token_hex(12)}"
WRONG_PASSWORD = f"old-{secrets.token_hex(12)}"
PG_PASSWORD = f"pg-{secrets.token_hex(12)}"


def _with_pg_password(template: str) -> str:
    """The run's DSN template with a password (the test Postgres trusts loopback, so it is never
    checked, but every process holds it in its DSNs)."""
    url = make_url(template.replace("{cluster}", "CLUSTER"))
    if url.password:
        pytest.skip("REPLICATOR_TEST_PG_URL has a password of its own")
    rendered = url.set(password=PG_PASSWORD).render_as_string(hide_password=False)
    return rendered.replace("CLUSTER", "{cluster}")


class EventTap:
    """Every Celery event on the broker, received by a client with the workers' settings."""

    def __init__(self, settings: Settings) -> None:
        from celery import Celery

        from workers.security import configure

        self.app = Celery("event-tap", broker=settings.broker_url)
        configure(self.app, settings)
        self.events: list[dict[str, Any]] = []
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(15)


@dataclass
class Outcome:
    rig: Rig
    job_state: JobState
    equal: bool
    events: list[dict[str, Any]]
    metrics: str


@pytest.fixture(scope="module")
def rig(
    settings: Settings, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("secure-broker")
    pki = tls.make_dev_pki(base / "broker-pki", {"broker": {"redis": ["127.0.0.1"]}})
    certs = pki["broker"].backends["redis"]
    ca = pki["broker"].ca_cert
    redis = RedisServer(
        base / "redis",
        password=BROKER_PASSWORD,
        tls=RedisTls(certs.server_cert, certs.server_key, ca, certs.client_cert, certs.client_key),
    )
    overrides = {
        "broker_ca_file": str(ca),
        "broker_cert_file": str(certs.client_cert),
        "broker_key_file": str(certs.client_key),
        "dsn_template": _with_pg_password(settings.dsn_template),
    }
    env = dict(test_env) | {"REPLICATOR_DSN_TEMPLATE": overrides["dsn_template"]}
    yield from start_rig(settings, env, base, "sb", 0.0, redis=redis, overrides=overrides)


@pytest.fixture(scope="module")
def outcome(rig: Rig) -> Iterator[Outcome]:
    from frontends.metrics import render

    assert rig.settings.broker_url.startswith(f"rediss://:{BROKER_PASSWORD}@127.0.0.1:")
    tap = EventTap(rig.settings)
    try:
        # Workers send a heartbeat every 2 s: once one arrives, the tap is listening.
        wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in tap.events), 30, "events")
        table = rig.make_tables("secure", buckets=2, src_replicas=1, dst_replicas=1)
        rig.src.load(table, rows(2_000, seed=41), label="secure-1")
        job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)
        equal = rig.content(rig.dst, table) == rig.content(rig.src, table)
        time.sleep(2.5)  # the last tasks' events and a heartbeat
        metrics = render(rig.settings, clusters=[rig.dst.name], inspect_timeout=2.0)
    finally:
        tap.stop()
    yield Outcome(rig, job.state, equal, list(tap.events), metrics)


def _secrets() -> list[str]:
    return [BROKER_PASSWORD, PG_PASSWORD]


def test_a_job_commits_through_a_broker_with_a_password_and_mutual_tls(outcome: Outcome) -> None:
    assert outcome.job_state is JobState.COMMITTED
    assert outcome.equal
    kinds = {e.get("name") for e in outcome.events if e["type"] == "task-received"}
    assert {"replication.snapshot", "replication.apply", "replication.tick"} <= kinds
    # The exporter reached the broker over TLS too: queue depths and the workers' consumers.
    assert "replicator_broker_up 1.0" in outcome.metrics
    assert 'replicator_queue_consumers{queue="be.sbdst.be1"} 1.0' in outcome.metrics


def test_no_password_in_any_log_file(outcome: Outcome) -> None:
    logs = sorted(outcome.rig.base.rglob("*.log"))
    assert len(logs) >= 6  # 4 backend workers, the coordinator, 2 transfer servers, redis
    coordinator = (outcome.rig.base / "logs" / "coordinator.log").read_text()
    # Celery prints the broker URL in its banner, masked: the place a password would leak.
    assert f"rediss://:**@127.0.0.1:{outcome.rig.redis.port}/0" in coordinator
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in _secrets():
            assert secret not in text, f"{path} holds a password"


def test_no_password_in_any_catalog_row(outcome: Outcome) -> None:
    rig = outcome.rig
    counted = 0
    for handle in (rig.src, rig.dst):
        with handle.catalog.engine.connect() as conn:
            for table in s.metadata.sorted_tables:
                for (text,) in conn.execute(sa.text(f"SELECT t::text FROM {table.name} t")):
                    counted += 1
                    assert not any(secret in text for secret in _secrets()), table.name
    assert counted > 20  # job, tasks, events, rowsets, holds ... were all read


def test_no_password_in_any_celery_event(outcome: Outcome) -> None:
    received = [e for e in outcome.events if e["type"] == "task-received"]
    assert received and all("kwargs" in e for e in received)  # task arguments are in events
    for event in outcome.events:
        text = repr(event)
        assert not any(secret in text for secret in _secrets()), event["type"]


def test_no_password_in_the_metrics(outcome: Outcome) -> None:
    assert "replicator_jobs" in outcome.metrics
    assert not any(secret in outcome.metrics for secret in _secrets())


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frontends.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_wrong_broker_password_is_one_line_and_exit_2(rig: Rig) -> None:
    env = dict(rig.workers.env)
    env["REPLICATOR_BROKER_URL"] = rig.redis.url.replace(BROKER_PASSWORD, WRONG_PASSWORD)
    for command in (["worker", "--cluster", rig.dst.name, "--backend", "be1"], ["coordinator"]):
        out = _cli(env, *command)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: the broker at rediss://:***@")
        assert "refused the credentials" in lines[0]
        assert WRONG_PASSWORD not in out.stderr + out.stdout


def test_no_password_or_an_untrusted_broker_is_one_line_and_exit_2(rig: Rig) -> None:
    env = dict(rig.workers.env)
    env["REPLICATOR_BROKER_URL"] = rig.redis.url.replace(f":{BROKER_PASSWORD}@", "@")
    out = _cli(env, "worker", "--cluster", rig.dst.name, "--backend", "be1")
    assert out.returncode == 2 and "refused the credentials" in out.stderr, out.stderr
    env = dict(rig.workers.env)
    env.pop("REPLICATOR_BROKER_CA_FILE")  # the system's CAs do not know the dev CA
    out = _cli(env, "worker", "--cluster", rig.dst.name, "--backend", "be1")
    assert out.returncode == 2, out.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in out.stderr and len(out.stderr.splitlines()) == 1
    assert BROKER_PASSWORD not in out.stderr


def test_a_worker_with_a_wrong_password_never_logs_it(rig: Rig, tmp_path: Path) -> None:
    """Started without the CLI's check (``celery -A workers worker``), the worker retries; its
    log says why, with the URL masked."""
    env = dict(rig.workers.env)
    env["REPLICATOR_BROKER_URL"] = rig.redis.url.replace(BROKER_PASSWORD, WRONG_PASSWORD)
    workers = Workers(env, tmp_path)
    proc = workers.backend(rig.dst.name, "be1", suffix="-wrongpw")
    try:
        wait_until(lambda: "invalid username-password" in proc.tail(50), 60, "the AUTH refusal")
    finally:
        workers.stop_all()
    text = proc.log.read_text()
    assert f":**@127.0.0.1:{rig.redis.port}" in text
    assert WRONG_PASSWORD not in text


def test_broker_check_names_the_cause_without_the_password(rig: Rig) -> None:
    wrong = rig.settings.with_overrides(
        broker_url=rig.redis.url.replace(BROKER_PASSWORD, WRONG_PASSWORD)
    )
    with pytest.raises(BrokerRefused) as caught:
        broker.check(wrong)
    assert WRONG_PASSWORD not in str(caught.value)
    broker.check(rig.settings)  # the right one passes
