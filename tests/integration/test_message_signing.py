"""Celery message signing (``message_signing_*`` settings), with real worker processes: every
message the workers, the beat and the coordinator send is signed and a job commits; a message put
on a queue unsigned (a plain JSON producer), or signed by a key whose certificate is not in the
store, is refused and never runs.

The test process itself never turns signing on (Celery's ``setup_security`` changes kombu's
serializer registry for the whole process): it submits jobs without a nudge (the beat picks
them up) and sends signed messages from subprocesses."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from app.client import Replicator
from app.config import Settings
from app.queues import COORDINATOR_QUEUE
from app.replication.state import JobState
from tests.harness import wait_until
from tests.integration.rig import Rig, rows, start_rig


def signing_pair(out: Path, name: str) -> tuple[Path, Path]:
    """An RSA key and a self-signed certificate (Celery signs with RSA keys only)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out / f"{name}.key", out / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def rig(
    settings: Settings, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("signing")
    key, cert = signing_pair(base / "signing", "replicator")
    store = base / "trusted"  # the certificates whose signatures workers accept
    store.mkdir()
    (store / "replicator.pem").write_bytes(cert.read_bytes())
    overrides = {
        "message_signing_key_file": str(key),
        "message_signing_cert_file": str(cert),
        "message_signing_cert_store": str(store),
    }
    yield from start_rig(settings, test_env, base, "sg", 0.0, overrides=overrides)


SEND = textwrap.dedent(
    """
    import sys
    from celery import Celery
    from app.config import load_settings
    from workers.security import configure

    settings = load_settings()
    app = Celery("sender", broker=settings.broker_url)
    configure(app, settings)
    app.send_task("replication.tick", kwargs={"cluster": sys.argv[2], "job_id": 999999},
                  queue=sys.argv[3], task_id=sys.argv[1])
    """
)


def send_signed(env: dict[str, str], task_id: str, cluster: str) -> None:
    """A tick signed with the key and certificate ``env`` names, sent from a subprocess."""
    subprocess.run(
        [sys.executable, "-c", SEND, task_id, cluster, COORDINATOR_QUEUE],
        env=env,
        check=True,
        timeout=60,
    )


def send_unsigned(broker_url: str, task_id: str, cluster: str) -> None:
    """The same tick from a plain Celery client: JSON, no signature."""
    from celery import Celery

    plain = Celery("plain", broker=broker_url)
    plain.conf.update(task_serializer="json", accept_content=["json"])
    plain.send_task(
        "replication.tick",
        kwargs={"cluster": cluster, "job_id": 999999},
        queue=COORDINATOR_QUEUE,
        task_id=task_id,
    )


def coordinator_log(rig: Rig) -> str:
    return (rig.base / "logs" / "coordinator.log").read_text(errors="replace")


def test_a_signed_job_commits(rig: Rig) -> None:
    table = rig.make_tables("signed", buckets=2, src_replicas=1, dst_replicas=1)
    rig.src.load(table, rows(2_000, seed=51), label="signed-1")
    # No nudge from this process (it does not sign): the beat's signed tick picks the job up.
    job = Replicator(rig.settings).replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)
    assert job.state is JobState.COMMITTED, job.message
    assert rig.content(rig.dst, table) == rig.content(rig.src, table)


def test_a_signed_message_runs(rig: Rig) -> None:
    task_id = f"signed-{uuid.uuid4()}"
    send_signed(rig.workers.env, task_id, rig.dst.name)
    wait_until(lambda: f"replication.tick[{task_id}] succeeded" in coordinator_log(rig), 30, "it")


def test_an_unsigned_message_is_refused_and_never_runs(rig: Rig) -> None:
    task_id = f"unsigned-{uuid.uuid4()}"
    refusals = coordinator_log(rig).count("untrusted content")
    send_unsigned(rig.redis.url, task_id, rig.dst.name)
    wait_until(lambda: coordinator_log(rig).count("untrusted content") > refusals, 30, "refusal")
    # A signed message sent after it runs: the unsigned one was taken off the queue (not left
    # for another worker, not redelivered) and the worker goes on.
    after = f"signed-{uuid.uuid4()}"
    send_signed(rig.workers.env, after, rig.dst.name)
    wait_until(lambda: f"replication.tick[{after}] succeeded" in coordinator_log(rig), 30, "it")
    assert task_id not in coordinator_log(rig)
    assert_drained(rig)


def assert_drained(rig: Rig) -> None:
    """The coordinator queue empties (the beat adds a tick a second, taken at once): a refused
    message was dropped, not put back."""
    client = redis.Redis.from_url(rig.redis.url)
    wait_until(lambda: client.llen(COORDINATOR_QUEUE) == 0, 10, "an empty coordinator queue")


def test_a_message_signed_by_an_untrusted_key_is_refused(rig: Rig, tmp_path: Path) -> None:
    key, cert = signing_pair(tmp_path / "intruder", "intruder")
    env = dict(rig.workers.env)
    env["REPLICATOR_MESSAGE_SIGNING_KEY_FILE"] = str(key)
    env["REPLICATOR_MESSAGE_SIGNING_CERT_FILE"] = str(cert)
    env["REPLICATOR_MESSAGE_SIGNING_CERT_STORE"] = str(cert)  # it trusts itself; workers don't
    task_id = f"intruder-{uuid.uuid4()}"
    before = coordinator_log(rig).count("Unknown certificate")
    send_signed(env, task_id, rig.dst.name)
    wait_until(lambda: coordinator_log(rig).count("Unknown certificate") > before, 30, "refusal")
    assert f"replication.tick[{task_id}]" not in coordinator_log(rig)
    assert_drained(rig)


def test_inspect_works_signed(rig: Rig) -> None:
    """The exporter's ``inspect active_queues`` is a signed control message whose signed replies
    it must read (a subprocess: the exporter with the workers' settings)."""
    out = subprocess.run(
        [sys.executable, "-m", "frontends.cli", "metrics", "show", "--cluster", rig.dst.name],
        env=rig.workers.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert 'replicator_queue_consumers{queue="be.sgdst.be1"} 1.0' in out.stdout
