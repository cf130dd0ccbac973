"""The download client of apply tasks: fetch a rowset file from a source backend's transfer
server, hashing (xxh3) while writing, resuming with ``Range`` after a broken connection.

Library choice, by measurement (``tests/integration/test_transfer_client_speed.py``, run with
``TRANSFER_BENCH=1``): a 1 GiB file from the aiohttp transfer server (its own process, mutual
TLS) on loopback into a file, xxh3 in the same pass, against ``curl -s -o`` of the same URL, on
the shared 2-core build machine while other sessions were busy (load 4-6), two sessions of 3
rounds each:

    library                                   best      x curl   all runs (s)
    curl --cacert/--cert -o FILE              4.44 s    1.00     7.56 6.41 4.44
    urllib3 2.8, read(1 MiB) + xxh3 + write   4.15 s    0.93     8.37 8.34 4.15
    httpx 0.28 sync, iter_raw + xxh3 + write  7.59 s    1.71     12.90 8.41 7.59
    (second session)
    curl                                      3.29 s    1.00     4.11 4.17 3.29
    urllib3                                   3.62 s    1.10     6.37 3.62 3.92
    httpx                                     5.35 s    1.63     15.15 5.35 7.59

The server's TLS (~250-350 MB/s of Python asyncio SSL here) bounds curl and urllib3 alike;
httpx adds layers (httpcore, h11). urllib3 is the choice: as fast as the best, the fewest layers
(http.client underneath, no sniffio/anyio), already a dependency of most of the stack, and its
PoolManager keeps alive one pool per (scheme, host, port), i.e. per source backend.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
import xxhash

from app.errors import (
    ChecksumMismatch,
    InvalidRequest,
    SourceDataGone,
    StorageUnavailable,
    TransferRefused,
)
from app.storage.checksum import FileMeta
from app.transfer import batch, names, tokens
from app.transfer.body import BodyReader

log = logging.getLogger("app.transfer.client")

CHUNK = 1024 * 1024


class _Transient(Exception):
    """A broken connection or a 5xx: resume from the verified offset. ``unreachable``: no
    connection could be made at all (refused, no route, connect timeout)."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass
class FetchResult:
    """What one ``fetch_to`` did: ``transferred`` counts body bytes received over the network,
    so ``transferred - size`` is what was fetched twice."""

    size: int = 0
    transferred: int = 0
    requests: int = 0
    resumes: int = 0
    corrupt: bool = False  # the failpoint has yet to flip a byte


class Downloader:
    """Downloads over HTTPS with connections kept alive, one pool per source (host, port).

    ``retries``: how many times one file may be resumed after a transient failure (a broken
    connection, a timeout, a 5xx), sleeping ``backoff`` doubling up to ``max_backoff``. Not
    thread-safe per file; share one per worker process."""

    def __init__(
        self,
        ssl_context: object | None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retries: int = 5,
        connect_retries: int = 1,
        backoff: float = 0.2,
        max_backoff: float = 2.0,
        pool_size: int = 4,
        chunk: int = CHUNK,
    ) -> None:
        self.plain_allowed = ssl_context is None  # only for tests on loopback
        self.retries = retries
        self.connect_retries = connect_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.chunk = chunk
        self.pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=pool_size,
            ssl_context=ssl_context,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=timeout),
        )

    def close(self) -> None:
        self.pool.clear()

    def url(self, url_base: str, backend: str, tablet: int, rowset: str, name: str) -> str:
        path = names.rowset_file(tablet, rowset, name).removeprefix("data/")
        return f"{self._base(url_base)}/v1/{names.backend_name(backend)}/{path}"

    def _base(self, url_base: str) -> str:
        parts = urlsplit(url_base)
        scheme_ok = parts.scheme == "https" or (parts.scheme == "http" and self.plain_allowed)
        if not scheme_ok or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise InvalidRequest(
                f"transfer address {names.show(url_base)} is not https://HOST:PORT"
            )
        return url_base.rstrip("/")

    def fetch_to(
        self,
        url_base: str,
        backend: str,
        tablet: int,
        rowset: str,
        meta: FileMeta,
        token: str,
        dst_file_path: str | os.PathLike[str],
        on_progress: Callable[[int], object] | None = None,
        *,
        corrupt: bool = False,
    ) -> FetchResult:
        """Download one file into ``dst_file_path`` (created or truncated) and verify its size
        and checksum: ChecksumMismatch if they differ, TransferRefused on 401/403,
        SourceDataGone on 404, StorageUnavailable when the retries are spent. ``corrupt``
        flips the byte in the middle of the file (the ``transfer.corrupt`` failpoint: damage
        in flight, which the checksum must catch).

        A partial file already at ``dst_file_path`` (an earlier attempt, or another replica of
        the same file, cut off) is hashed where it lies and continued with ``Range``: bytes
        received once are not fetched again. The whole-file checksum still decides."""
        url = self.url(url_base, backend, tablet, rowset, meta.name)
        digest = xxhash.xxh3_64()
        result = FetchResult()
        result.corrupt = corrupt
        failures = 0
        fd = os.open(dst_file_path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as out:
            result.size = _continue_partial(out, meta, digest, self.chunk)
            if result.size == meta.size:  # complete and verified already: no request
                return result
            while True:
                try:
                    self._get_into(url, token, meta, out, digest, result, on_progress)
                    break
                except _Transient as exc:
                    if result.size == meta.size:
                        break  # every byte arrived before the break; the checksum decides
                    failures += 1
                    # A server that cannot be reached at all, before a byte came: say so soon,
                    # so that the caller can turn to another replica.
                    gone = exc.unreachable and result.size == 0 and failures > self.connect_retries
                    if gone or failures > self.retries:
                        raise StorageUnavailable(
                            f"file {meta.name} from {url_base}: {exc}; gave up after "
                            f"{failures} attempts at byte {result.size}"
                        ) from None
                    result.resumes += 1
                    log.info("file %s: %s; resuming at byte %d", meta.name, exc, result.size)
                    time.sleep(min(self.backoff * 2 ** (failures - 1), self.max_backoff))
        if result.size != meta.size or digest.hexdigest() != meta.checksum:
            raise ChecksumMismatch(
                f"file {meta.name} from {url_base}: expected {meta.size} bytes with checksum "
                f"{meta.checksum}, got {result.size} bytes with checksum {digest.hexdigest()}"
            )
        return result

    def fetch_many(
        self,
        url_base: str,
        backend: str,
        wanted: Sequence[tuple[str, int, str, FileMeta]],
        corrupt: Callable[[], bool] | None = None,
    ) -> tuple[list[bytes | None], int]:
        """The bytes of each ``(token, tablet, rowset, meta)`` in one batch request, each
        verified (size and xxh3): None for a file this backend lacks or that arrived damaged;
        and the bytes received. The caller bounds the count and sizes (the response is held in
        memory; see ``batch.MAX_FILES`` and ``batch.MAX_BODY``). TransferRefused on 401/403,
        StorageUnavailable when the request or its response fails: either way nothing is
        returned, and the files' own requests take over. ``corrupt()``, asked per file, flips
        its middle byte (the ``transfer.corrupt`` failpoint)."""
        url = f"{self._base(url_base)}/v1/{names.backend_name(backend)}/files"
        expected = sum(batch.FRAME.size + m.size for *_, m in wanted)
        index: dict[str, int] = {}
        refs = [(index.setdefault(tok, len(index)), t, r, m.name) for tok, t, r, m in wanted]
        body = batch.request_body(list(index), refs)
        try:
            response = self.pool.request(
                "POST",
                url,
                body=body,
                headers={"Content-Type": "application/json"},
                preload_content=False,
                decode_content=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageUnavailable(f"batch from {url_base}: {_why(exc)}") from None
        try:
            if response.status != 200:
                reason = tokens.redact(response.data[:300].decode("utf-8", "replace")).strip()
                message = f"batch from {url_base}: HTTP {response.status}: {names.show(reason)}"
                if response.status in (401, 403):
                    raise TransferRefused(response.status, message)
                raise StorageUnavailable(message)
            length = int(response.headers.get("Content-Length", -1))
            if not 0 <= length <= expected:  # bounded before a byte is read
                raise StorageUnavailable(f"batch from {url_base}: {length} bytes announced")
            data = response.read(length)
            if len(data) != length:
                raise StorageUnavailable(f"batch from {url_base}: cut off")
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            response.close()
            raise StorageUnavailable(f"batch from {url_base}: {_why(exc)}") from None
        response.release_conn()
        return _unframe(memoryview(data), wanted, corrupt), len(data)

    def _get_into(
        self,
        url: str,
        token: str,
        meta: FileMeta,
        out: object,
        digest: xxhash.xxh3_64,
        result: FetchResult,
        on_progress: Callable[[int], object] | None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if result.size:
            headers["Range"] = f"bytes={result.size}-"
        try:
            result.requests += 1
            response = self.pool.request(
                "GET", url, headers=headers, preload_content=False, decode_content=False
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            unreachable = isinstance(
                exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
            )
            raise _Transient(
                f"request failed ({type(exc).__name__}: {_why(exc)})", unreachable
            ) from None
        done = False
        try:
            self._check_status(response, meta, out, digest, result)
            done = self._read_body(response, meta, out, digest, result, on_progress)
        finally:
            if done:
                response.release_conn()
            else:
                response.close()

    def _check_status(
        self,
        response: urllib3.BaseHTTPResponse,
        meta: FileMeta,
        out: object,
        digest: xxhash.xxh3_64,
        result: FetchResult,
    ) -> None:
        status = response.status
        if status >= 500 or status == 429:
            raise _Transient(f"HTTP {status}")
        if status in (400, 401, 403, 404, 416):
            reason = tokens.redact(response.data[:300].decode("utf-8", "replace")).strip()
            message = f"file {meta.name}: the source answered {status}: {names.show(reason)}"
            if status in (401, 403):
                raise TransferRefused(status, message)
            if status == 404:
                raise SourceDataGone(message)
            if status == 416:  # the source file is shorter than the manifest says
                raise ChecksumMismatch(message)
            raise InvalidRequest(message)
        if status == 206 and result.size:
            expected = f"bytes {result.size}-"
            if not response.headers.get("Content-Range", "").startswith(expected):
                raise _Transient("the source answered another range")
            return
        if status != 200:
            raise _Transient(f"unexpected HTTP {status}")
        if result.size:  # Range ignored: the whole file again, from the start
            out.seek(0)  # type: ignore[attr-defined]
            out.truncate()  # type: ignore[attr-defined]
            digest.reset()
            result.size = 0

    def _read_body(
        self,
        response: urllib3.BaseHTTPResponse,
        meta: FileMeta,
        out: object,
        digest: xxhash.xxh3_64,
        result: FetchResult,
        on_progress: Callable[[int], object] | None,
    ) -> bool:
        """Append the body; True when it ended cleanly (the connection may be reused).

        Reads into one buffer, which the TLS layer decrypts into (``response.read(n)``
        allocates and copies every chunk twice more, measured at about 15% of the apply's
        CPU), through :class:`BodyReader`."""
        raw = getattr(response, "_fp", None)
        if raw is None or not hasattr(raw, "readinto"):
            raise _Transient("the HTTP library gave no readable body")
        reader = BodyReader(raw)
        buffer = bytearray(self.chunk)
        view = memoryview(buffer)
        write = out.write  # type: ignore[attr-defined]
        while True:
            try:
                n = reader.readinto(view)
            except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
                raise _Transient(f"connection broke ({type(exc).__name__}: {_why(exc)})") from None
            if not n:
                if getattr(raw, "length", None):  # http.client returns 0 at a premature EOF
                    raise _Transient(f"connection closed {raw.length} bytes early")
                return True
            if result.corrupt and result.size <= meta.size // 2 < result.size + n:
                buffer[meta.size // 2 - result.size] ^= 0xFF  # mid-file: a data page
                result.corrupt = False
            data = view[:n]
            digest.update(data)
            write(data)
            result.size += n
            result.transferred += n
            if on_progress is not None:
                on_progress(n)
            if result.size > meta.size:
                return False  # longer than the manifest: the checksum check reports it


def _unframe(
    data: memoryview,
    wanted: Sequence[tuple[str, int, str, FileMeta]],
    corrupt: Callable[[], bool] | None,
) -> list[bytes | None]:
    out: list[bytes | None] = []
    at = 0
    for *_, meta in wanted:
        if at + batch.FRAME.size > len(data):
            out.append(None)
            continue
        (size,) = batch.FRAME.unpack_from(data, at)
        at += batch.FRAME.size
        if size < 0 or at + size > len(data):
            out.append(None)
            at = len(data) if size > 0 else at  # a size past the end: the rest is unframed
            continue
        piece: memoryview | bytearray = data[at : at + size]
        at += size
        if corrupt is not None and size and corrupt():
            piece = bytearray(piece)
            piece[size // 2] ^= 0xFF  # mid-file: a data page, as in the single-file path
        ok = size == meta.size and xxhash.xxh3_64_hexdigest(piece) == meta.checksum
        out.append(bytes(piece) if ok else None)
    return out


def _continue_partial(out: Any, meta: FileMeta, digest: xxhash.xxh3_64, chunk: int) -> int:
    """Hash what ``out`` already holds and leave it positioned at its end; returns how many
    bytes are there. Longer than the file, or complete with the wrong checksum: emptied."""
    have = os.fstat(out.fileno()).st_size
    if have == 0:  # the usual case: nothing to hash, and no buffer to zero (1 MiB a file)
        return 0
    view = memoryview(bytearray(min(chunk, have)))
    done = 0
    while done < have <= meta.size:
        n = out.readinto(view[: min(chunk, have - done)])
        if not n:
            break
        digest.update(view[:n])
        done += n
    if have > meta.size or (done == meta.size and digest.hexdigest() != meta.checksum):
        digest.reset()
        done = 0
    out.seek(done)
    out.truncate(done)
    return done


def _why(exc: BaseException) -> str:
    """The innermost reason of a connection error, short and without any header value."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return names.show(tokens.redact(str(exc)))
