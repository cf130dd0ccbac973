"""TLS handshakes that fail are refusals too, and each gets its log line.

asyncio's own TLS server reports a failed handshake (plain HTTP to the TLS port, a client
without a certificate under mutual TLS, a certificate from an unknown CA) only in debug mode. So
the transfer server accepts plain TCP and does the handshake itself with ``loop.start_tls``: a
failure is logged and counted, with nothing read from storage, and a success hands the
connection to aiohttp's HTTP protocol as if aiohttp had accepted it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("app.transfer.server")

HANDSHAKE_TIMEOUT_SEC = 10.0


class TlsGate(asyncio.Protocol):
    """One accepted connection until its TLS handshake is done."""

    def __init__(
        self,
        make_protocol: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        refused: Callable[[], None],
    ) -> None:
        self.make_protocol = make_protocol
        self.context = context
        self.refused = refused
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the bytes are the handshake's, read by start_tls
        self.task = asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        protocol = self.make_protocol()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport,
                protocol,
                self.context,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_SEC,
            )
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.refused()
            log.warning("refused %s: TLS handshake failed (%s)", _who(peer), _reason(exc))
            transport.abort()
            return
        if tls is None:  # the peer went away during the handshake
            transport.abort()
            return
        protocol.connection_made(tls)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass


def _who(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "a client"


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or type(exc).__name__).replace("_", " ").lower()


class GatedSite(web.BaseSite):
    """aiohttp's SockSite, with the TLS handshake done by a :class:`TlsGate`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        context: ssl.SSLContext,
        refused: Callable[[], None],
    ) -> None:
        super().__init__(runner)
        self._sock = sock
        self._context = context
        self._refused = refused
        host, port = sock.getsockname()[:2]
        self._name = f"https://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: TlsGate(server, self._context, self._refused),
            sock=self._sock,
            backlog=self._backlog,
        )
