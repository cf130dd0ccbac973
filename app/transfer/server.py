"""The transfer server of one host: serves its backends' rowset files over HTTPS.

``GET /v1/{backend}/{tablet}/{rowset}/{file}`` with ``Authorization: Bearer <token>``: after the
checks of :mod:`app.transfer.access` (steps 1-6), served with HTTP Range: by ``web.FileResponse``
(zero-copy sendfile) on plain HTTP; under TLS or a bandwidth cap, streamed in chunks (through a
token bucket shared by every connection when capped).

``POST /v1/{backend}/files`` (:mod:`app.transfer.batch`), tokens in the body: the same checks for
every file the body names, then the files one after another.

Why not FileResponse under TLS: sendfile cannot encrypt (kernel TLS is not used), and asyncio's
sendfile fallback for SSL transports, which FileResponse then takes, measured 35-55 MB/s here
against 250-370 MB/s for plain chunked writes of 256 KiB-1 MiB (1 GiB, loopback, curl as the
client, a shared 2-core machine; uvloop gave no clear gain).

Each refusal logs one line (never the token) and touches no file: ``stats.opened`` counts the
files this server opened, for tests. Storage roots come from the configuration only; a root whose
marker file (``.olap-replicator-root``) does not name its cluster and backend stops the server
from starting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from app.errors import RequestRefused, SetupError
from app.storage.marker import check_marker
from app.transfer import batch, names
from app.transfer.access import (  # re-exported: the server's configuration
    Access,
    BackendRoot,
    InMemoryRevocations,
    RevocationCheck,
)
from app.transfer.tlsgate import GatedSite
from app.units import MB

log = logging.getLogger("app.transfer.server")

__all__ = [
    "STATS",
    "BackendRoot",
    "InMemoryRevocations",
    "RevocationCheck",
    "ServerStats",
    "make_app",
    "run",
    "start",
]

# Tokens travel in a header; aiohttp's default field limit (8190) fits ~250 files.
MAX_TOKEN_BYTES = 256 * 1024
# Chunks of the streamed path (TLS, or a bandwidth cap).
CHUNK = 512 * 1024


@dataclass
class ServerStats:
    opened: int = 0  # files opened for serving
    served_bytes: int = 0  # bytes promised in responses (whole ranges)
    refused: Counter[int] = field(default_factory=Counter)  # by HTTP status; 0: TLS handshake


STATS = web.AppKey("transfer_stats", ServerStats)


class AsyncTokenBucket:
    """Bytes per second shared by every coroutine of one event loop. Waiters queue in order
    (asyncio.Lock is FIFO), so connections share the rate evenly."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 10, CHUNK)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)


_REFUSALS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
}


class _Handler:
    def __init__(self, access: Access, bucket: AsyncTokenBucket | None, stats: ServerStats) -> None:
        self.access = access
        self.bucket = bucket
        self.stats = stats

    def _refused(self, request: web.Request, refusal: RequestRefused) -> web.HTTPException:
        """Count and log (one line, never a token) a refusal; the HTTP answer to raise."""
        self.stats.refused[refusal.status] += 1
        log.warning(
            "transfer refused %d %s %s from %s: %s",
            refusal.status,
            request.method,
            names.show(request.rel_url.raw_path),
            request.remote,
            refusal.why,
        )
        return _REFUSALS[refusal.status](text=f"{refusal.status}: {refusal.why}\n")

    async def get(self, request: web.Request) -> web.StreamResponse:
        try:
            path, grant = await self.access.file(request)
        except RequestRefused as refusal:
            raise self._refused(request, refusal) from None
        size = path.stat().st_size
        self.stats.opened += 1
        log.debug("serving %s for job %d", path, grant.job_id)
        transport = request.transport
        tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        if self.bucket is None and not tls:
            self.stats.served_bytes += size
            return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
        return await self._stream(request, path, size, self.bucket)

    async def batch(self, request: web.Request) -> web.StreamResponse:
        """The files a JSON body names, framed one after another (see the module's text)."""
        try:
            paths, grant = await self.access.files(request)
        except RequestRefused as refusal:
            raise self._refused(request, refusal) from None
        sizes = [p.stat().st_size if p is not None and p.is_file() else -1 for p in paths]
        response = web.StreamResponse(status=200)
        response.content_type = "application/octet-stream"
        response.content_length = sum(batch.FRAME.size + max(n, 0) for n in sizes)
        await response.prepare(request)
        # One line a request (up to batch.MAX_FILES files): what a job's small files cost.
        log.info(
            "batch for job %d: %d of %d files, %d bytes",
            grant.job_id,
            sum(n >= 0 for n in sizes),
            len(sizes),
            sum(max(n, 0) for n in sizes),
        )
        for path, size in zip(paths, sizes, strict=True):
            await response.write(batch.FRAME.pack(size))
            if path is None or size < 0:
                continue
            self.stats.opened += 1
            self.stats.served_bytes += size
            with open(path, "rb") as f:
                if await _send(response, f, size, self.bucket):
                    # Shrank since its size was sent: cut the response short.
                    raise ConnectionResetError(f"{path} shrank while being served")
        await response.write_eof()
        return response

    async def _stream(
        self, request: web.Request, path: Path, size: int, bucket: AsyncTokenBucket | None
    ) -> web.StreamResponse:
        """Chunked writes (Range honoured), through ``bucket`` when there is a cap."""
        start, stop = _byte_range(request, size)
        partial = request.headers.get("Range") is not None
        response = web.StreamResponse(status=206 if partial else 200)
        response.content_type = "application/octet-stream"
        response.content_length = stop - start
        response.headers["Accept-Ranges"] = "bytes"
        if partial:
            response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        self.stats.served_bytes += stop - start
        await response.prepare(request)
        with open(path, "rb") as f:
            f.seek(start)
            # A file that shrank ends short: the client's length check sees it.
            await _send(response, f, stop - start, bucket)
        await response.write_eof()
        return response


async def _send(
    response: web.StreamResponse, f: BinaryIO, length: int, bucket: AsyncTokenBucket | None
) -> int:
    """Write ``length`` bytes of ``f`` in chunks, through ``bucket`` when there is a cap;
    returns how many were missing (the file ended first)."""
    loop = asyncio.get_running_loop()
    remaining = length
    while remaining > 0:
        n = min(CHUNK, remaining)
        if bucket is not None:
            await bucket.take(n)
        data = await loop.run_in_executor(None, f.read, n)
        if not data:
            break
        await response.write(data)
        remaining -= len(data)
    return remaining


def _byte_range(request: web.Request, size: int) -> tuple[int, int]:
    """[start, stop) of the Range header (aiohttp parses it), the whole file without one."""
    if request.headers.get("Range") is None:
        return 0, size
    try:
        wanted = request.http_range
    except ValueError:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={"Content-Range": f"bytes */{size}"}
        ) from None
    start, stop = wanted.start, wanted.stop
    if start is None and stop is None:
        return 0, size
    if start is not None and start < 0:  # suffix: the last -start bytes
        return max(size + start, 0), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, stop


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _unknown(request: web.Request) -> web.Response:
    request.app[STATS].refused[400] += 1
    log.warning(
        "transfer refused 400 %s from %s: not /v1/<backend>/<tablet>/<rowset>/<file>",
        names.show(request.rel_url.raw_path),
        request.remote,
    )
    raise web.HTTPBadRequest(text="400: expected /v1/<backend>/<tablet>/<rowset>/<file>\n")


def make_app(
    backends: Mapping[str, BackendRoot],
    secrets: Mapping[str, bytes],
    revocation_check: RevocationCheck,
    serving_cap_mb_per_sec: float = 0,
    *,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The transfer application for ``backends`` (by backend name). SetupError if a root's
    marker does not name its cluster and backend, or no secret is given."""
    if not secrets:
        raise SetupError("the transfer server needs at least one token secret")
    for name, backend in backends.items():
        if name != backend.backend:
            raise SetupError(f"backend {name!r} is configured as {backend.backend!r}")
        names.backend_name(backend.backend)
        names.cluster_name(backend.cluster)
        check_marker(backend.root, backend.cluster, backend.backend)
    bucket = None
    if serving_cap_mb_per_sec > 0:
        bucket = AsyncTokenBucket(serving_cap_mb_per_sec * MB)
    app = web.Application()
    app[STATS] = ServerStats()
    handler = _Handler(Access(backends, secrets, revocation_check, clock), bucket, app[STATS])
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/v1/{backend}/{tablet}/{rowset}/{file}", handler.get)
    app.router.add_post("/v1/{backend}/files", handler.batch)
    app.router.add_route("*", "/{tail:.*}", _unknown)
    return app


async def start(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: a free port); returns the runner and the port."""
    runner = web.AppRunner(app, access_log=None, max_field_size=MAX_TOKEN_BYTES + 64)
    await runner.setup()
    sock = socket.create_server((host, port), reuse_port=False)
    if ssl_context is None:
        await web.SockSite(runner, sock).start()
    else:
        stats = app.get(STATS) or ServerStats()  # any aiohttp app can be served this way

        def refused() -> None:
            stats.refused[0] += 1  # 0: refused before HTTP, in the TLS handshake

        await GatedSite(runner, sock, ssl_context, refused).start()
    return runner, int(sock.getsockname()[1])


def run(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    backends: Mapping[str, BackendRoot],
    secrets: Mapping[str, bytes],
    revocation_check: RevocationCheck,
    serving_cap_mb_per_sec: float = 0,
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM). ``ssl_context`` None serves plain HTTP: only
    for tests on loopback."""
    app = make_app(backends, secrets, revocation_check, serving_cap_mb_per_sec)
    asyncio.run(_serve_until_signal(app, host, port, ssl_context))


async def _serve_until_signal(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner, _port = await start(app, host, port, ssl_context)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
