"""A private redis-server for the tests and the benchmarks, run like every supervised process."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
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
