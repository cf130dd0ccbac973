"""Shared rig of the transfer tests (no tests here): a dev PKI, marked storage roots with rowset
files, transfer servers on 127.0.0.1 (in a thread, or in a subprocess that can be killed), and a
real redis-server on a free port."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash
from aiohttp import web

from app.storage.checksum import FileMeta
from app.storage.marker import write_marker
from app.transfer import server, tls, tokens
from app.transfer.server import BackendRoot, InMemoryRevocations
from app.transfer.tokens import Grant

SECRET = b"transfer-secret-for-tests-only!!"
SECRETS = {"k1": SECRET}
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tls.ClusterPki]:
    hosts = ["127.0.0.1", "localhost"]
    return tls.make_dev_pki(
        tmp_path_factory.mktemp("pki"),
        {"prod": {"be1": hosts}, "dr": {"be1": hosts}, "evil": {"be1": hosts}},
    )


def server_ssl(pki: dict[str, tls.ClusterPki], mtls: bool = True) -> object:
    certs = pki["prod"].backends["be1"]
    return tls.server_context(
        certs.server_cert, certs.server_key, pki["dr"].ca_cert if mtls else None
    )


def client_ssl(pki: dict[str, tls.ClusterPki], cluster: str = "dr", cert: bool = True) -> object:
    certs = pki[cluster].backends["be1"]
    if not cert:
        return tls.client_context(pki["prod"].ca_cert)
    return tls.client_context(pki["prod"].ca_cert, certs.client_cert, certs.client_key)


@dataclass
class Source:
    root: Path
    tablet: int
    rowset: str
    name: str
    meta: FileMeta

    @property
    def path(self) -> Path:
        return self.root / f"data/{self.tablet}/{self.rowset}/{self.name}"


def make_source(root: Path, size: int, name: str = "0.parquet", tablet: int = 7) -> Source:
    """A marked storage root of prod/be1 holding one rowset file of ``size`` random bytes."""
    root.mkdir(parents=True, exist_ok=True)
    write_marker(root, "prod", "be1")
    rowset = uuid.uuid4().hex
    path = root / f"data/{tablet}/{rowset}/{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = xxhash.xxh3_64()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            part = block[: min(left, len(block))]
            f.write(part)
            digest.update(part)
            left -= len(part)
    return Source(root, tablet, rowset, name, FileMeta(name, size, digest.hexdigest()))


def grant_for(*sources: Source, job: int = 12, expires_in: float = 600, **kw: object) -> Grant:
    fields: dict[str, object] = {
        "source_cluster": "prod",
        "target_cluster": "dr",
        "job_id": job,
        "hold_owner": f"job:dr:{job}",
        "expires_at": int(time.time() + expires_in),
        "files": tuple((s.tablet, s.rowset, s.name) for s in sources),
    }
    fields.update(kw)
    return Grant(**fields)  # type: ignore[arg-type]


def token_for(*sources: Source, **kw: object) -> str:
    return tokens.mint(SECRET, grant_for(*sources, **kw))


class ThreadServer:
    """A transfer server in a background thread with its own event loop."""

    def __init__(self, app: web.Application, ssl_context: object | None) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            server.start(app, "127.0.0.1", 0, ssl_context),  # type: ignore[arg-type]
            self.loop,
        )
        self.runner, self.port = future.result(10)

    @property
    def stats(self) -> server.ServerStats:
        return self.app[server.STATS]

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def revocations() -> InMemoryRevocations:
    return InMemoryRevocations()


def thread_server(
    root: Path,
    ssl_context: object | None,
    revocations: InMemoryRevocations | None = None,
    cap: float = 0,
) -> ThreadServer:
    app = server.make_app(
        {"be1": BackendRoot("prod", "be1", root)},
        SECRETS,
        revocations or InMemoryRevocations(),
        serving_cap_mb_per_sec=cap,
    )
    return ThreadServer(app, ssl_context)


SERVER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from app.transfer import server, tls
    root, cert, key, ca, port, cap = sys.argv[1:7]
    server.run(
        "127.0.0.1", int(port), tls.server_context(cert, key, ca),
        {"be1": server.BackendRoot("prod", "be1", Path(root))},
        {"k1": SECRET_REPR}, server.InMemoryRevocations(), float(cap),
    )
    """
).replace("SECRET_REPR", repr(SECRET))


class ProcessServer:
    """A transfer server in its own process, to be killed and restarted on the same port."""

    def __init__(self, root: Path, pki: dict[str, tls.ClusterPki], cap: float = 0) -> None:
        certs = pki["prod"].backends["be1"]
        self.args = [root, certs.server_cert, certs.server_key, pki["dr"].ca_cert]
        self.port = free_port()
        self.cap = cap
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-c", SERVER_SCRIPT, *map(str, self.args)]
        self.proc = subprocess.Popen([*argv, str(self.port), str(self.cap)], cwd=REPO)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("transfer server subprocess did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a free port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
