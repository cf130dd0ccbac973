"""The transfer server and the download client, over real sockets with mutual TLS."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from app.errors import ChecksumMismatch, SetupError, SourceDataGone, TransferRefused
from app.storage.checksum import FileMeta, checksum_file
from app.storage.marker import write_marker
from app.transfer import client, server, tokens
from app.transfer.server import BackendRoot, InMemoryRevocations
from tests.harness import wait_until
from tests.integration.transfer_rig import (
    SECRETS,
    ProcessServer,
    Source,
    ThreadServer,
    client_ssl,
    grant_for,
    make_source,
    pki,
    revocations,
    server_ssl,
    thread_server,
    token_for,
)

__all__ = ["pki", "revocations"]
MiB = 1 << 20


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Source, Source]:
    a = make_source(tmp_path / "root", 3 * MiB + 17)
    b = make_source(tmp_path / "root", 1000, name="1.parquet", tablet=8)
    return a, b


@pytest.fixture
def live(
    two_files: tuple[Source, Source], pki: dict, revocations: InMemoryRevocations
) -> Iterator[ThreadServer]:  # type: ignore[type-arg]
    s = thread_server(two_files[0].root, server_ssl(pki), revocations)
    yield s
    s.stop()


def test_full_download_verified_on_a_kept_alive_connection(
    live: ThreadServer, two_files: tuple[Source, Source], pki: dict, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    downloader = client.Downloader(client_ssl(pki))
    token = token_for(*two_files)
    seen: list[int] = []
    for source in two_files:
        dst = tmp_path / f"got-{source.name}"
        result = downloader.fetch_to(
            live.base, "be1", source.tablet, source.rowset, source.meta, token, dst, seen.append
        )
        assert checksum_file(dst) == (source.meta.size, source.meta.checksum)
        assert result.transferred == result.size == source.meta.size and result.resumes == 0
    assert sum(seen) == sum(s.meta.size for s in two_files)
    pool = downloader.pool.connection_from_url(live.base)
    assert pool.num_connections == 1  # keep-alive: the second file reused the connection
    assert live.stats.opened == 2


def test_a_body_is_read_straight_from_the_tls_object(
    live: ThreadServer,
    two_files: tuple[Source, Source],
    pki: dict,  # type: ignore[type-arg]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One call into the TLS object per record, not http.client's layers: SSLSocket.recv_into
    (the layered path, once per 16 KiB record) runs only for what the buffered reader takes
    first, about once per MiB, and the connection is still kept alive."""
    layered: list[int] = []
    recv_into = ssl.SSLSocket.recv_into

    def counting(self: ssl.SSLSocket, *args: object, **kwargs: object) -> int:
        layered.append(1)
        return recv_into(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLSocket, "recv_into", counting)
    source = two_files[0]  # 3 MiB + 17 bytes: about 190 records
    downloader = client.Downloader(client_ssl(pki))
    for i in range(2):
        dst = tmp_path / f"got-{i}"
        downloader.fetch_to(
            live.base, "be1", source.tablet, source.rowset, source.meta, token_for(source), dst
        )
        assert checksum_file(dst) == (source.meta.size, source.meta.checksum)
    assert 0 < len(layered) <= 2 * 8, len(layered)
    assert downloader.pool.connection_from_url(live.base).num_connections == 1


def test_plain_http_bodies_for_loopback_tests(
    two_files: tuple[Source, Source], tmp_path: Path
) -> None:
    """Without TLS (transfer_mode = http, loopback tests only) the same reader uses recv_into."""
    source = two_files[0]
    plain = thread_server(source.root, None)
    try:
        base = f"http://127.0.0.1:{plain.port}"
        downloader = client.Downloader(None)
        for i in range(2):
            dst = tmp_path / f"plain-{i}"
            result = downloader.fetch_to(
                base, "be1", source.tablet, source.rowset, source.meta, token_for(source), dst
            )
            assert checksum_file(dst) == (source.meta.size, source.meta.checksum)
            assert result.transferred == source.meta.size
        assert downloader.pool.connection_from_url(base).num_connections == 1
    finally:
        plain.stop()


def test_a_partial_file_of_an_earlier_attempt_is_continued_not_fetched_again(
    live: ThreadServer, two_files: tuple[Source, Source], pki: dict, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    source = two_files[0]
    whole = source.path.read_bytes()
    token = token_for(source)
    downloader = client.Downloader(client_ssl(pki))
    dst = tmp_path / "partial"
    dst.write_bytes(whole[: 2 * MiB + 5])  # what an attempt cut off by a dead server left
    result = downloader.fetch_to(
        live.base, "be1", source.tablet, source.rowset, source.meta, token, dst
    )
    assert dst.read_bytes() == whole
    assert result.transferred == source.meta.size - (2 * MiB + 5)  # only the rest crossed

    # Wrong bytes in the partial file are not trusted: the whole-file checksum refuses them
    # (and fetch() then removes the staged file, so the next try starts from nothing).
    damaged = bytearray(whole[:MiB])
    damaged[100] ^= 0xFF
    dst.write_bytes(bytes(damaged))
    with pytest.raises(ChecksumMismatch):
        downloader.fetch_to(live.base, "be1", source.tablet, source.rowset, source.meta, token, dst)
    # A complete file that verifies needs no request; one with wrong bytes is fetched again.
    dst.write_bytes(whole)
    result = downloader.fetch_to(
        live.base, "be1", source.tablet, source.rowset, source.meta, token, dst
    )
    assert result.transferred == 0 and result.requests == 0 and dst.read_bytes() == whole
    dst.write_bytes(bytes(damaged) + whole[MiB:])
    result = downloader.fetch_to(
        live.base, "be1", source.tablet, source.rowset, source.meta, token, dst
    )
    assert result.transferred == source.meta.size and dst.read_bytes() == whole
    # A partial file longer than the source's is dropped and the file fetched whole.
    dst.write_bytes(whole + b"extra")
    result = downloader.fetch_to(
        live.base, "be1", source.tablet, source.rowset, source.meta, token, dst
    )
    assert dst.read_bytes() == whole and result.transferred == source.meta.size


def test_range_requests_under_tls(
    live: ThreadServer, two_files: tuple[Source, Source], pki: dict
) -> None:  # type: ignore[type-arg]
    source = two_files[0]
    http = urllib3.PoolManager(ssl_context=client_ssl(pki), retries=False)
    url = f"{live.base}/v1/be1/{source.tablet}/{source.rowset}/{source.name}"
    auth = {"Authorization": f"Bearer {token_for(source)}"}
    data = source.path.read_bytes()
    r = http.request("GET", url, headers={**auth, "Range": "bytes=10-19"})
    assert (r.status, r.data, r.headers["Content-Range"]) == (
        206,
        data[10:20],
        f"bytes 10-19/{len(data)}",
    )
    r = http.request("GET", url, headers={**auth, "Range": f"bytes={len(data) - 5}-"})
    assert (r.status, r.data) == (206, data[-5:])
    r = http.request("GET", url, headers={**auth, "Range": "bytes=-7"})
    assert (r.status, r.data) == (206, data[-7:])
    r = http.request("GET", url, headers={**auth, "Range": f"bytes={len(data)}-"})
    assert r.status == 416


def test_resume_after_the_server_is_killed_mid_file(tmp_path: Path, pki: dict) -> None:  # type: ignore[type-arg]
    source = make_source(tmp_path / "root", 48 * MiB)
    proc = ProcessServer(source.root, pki, cap=16)  # slow enough to kill it mid-file
    proc.start()
    dst = tmp_path / "got"
    downloader = client.Downloader(client_ssl(pki), retries=20, backoff=0.1, max_backoff=0.5)
    outcome: dict[str, object] = {}

    def fetch() -> None:
        try:
            outcome["result"] = downloader.fetch_to(
                proc.base, "be1", source.tablet, source.rowset, source.meta, token_for(source), dst
            )
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=fetch)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while (not dst.exists() or dst.stat().st_size < 6 * MiB) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()
        killed_at = dst.stat().st_size
        assert 0 < killed_at < source.meta.size
        time.sleep(0.3)
        proc.start()
        worker.join(60)
    finally:
        proc.kill()
    assert "error" not in outcome, outcome
    result = outcome["result"]
    assert isinstance(result, client.FetchResult)
    assert result.resumes >= 1 and result.requests >= 2
    assert result.transferred - result.size < client.CHUNK  # verified bytes not fetched again
    assert checksum_file(dst) == (source.meta.size, source.meta.checksum)


def _get(live: ThreadServer, pki: dict, path: str, token: str | None) -> urllib3.BaseHTTPResponse:  # type: ignore[type-arg]
    http = urllib3.PoolManager(ssl_context=client_ssl(pki), retries=False)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.request("GET", f"{live.base}{path}", headers=headers)


def _refusal_cases(a: Source, b: Source) -> list[tuple[str, str, str | None, int]]:
    path_a = f"/v1/be1/{a.tablet}/{a.rowset}/{a.name}"
    path_b = f"/v1/be1/{b.tablet}/{b.rowset}/{b.name}"
    other_job = token_for(b, job=99)
    forged = tokens.mint(b"not-the-secret-of-this-server!!!", grant_for(a))
    return [
        ("no token", path_a, None, 401),
        ("forged", path_a, forged, 401),
        ("expired", path_a, token_for(a, expires_in=-1), 401),
        ("garbage token", path_a, "v1.abc.def", 401),
        ("token for A used for B", path_b, token_for(a), 403),
        ("another job's token", path_a, other_job, 403),
        ("wrong source cluster", path_a, token_for(a, source_cluster="qa"), 403),
        ("dot-dot name", f"/v1/be1/{a.tablet}/{a.rowset}/%2E%2E", token_for(a), 400),
        ("encoded traversal", f"/v1/be1/{a.tablet}/{a.rowset}/..%2F..%2F.olap-replicator-root",
         token_for(a), 400),
        ("encoded absolute path", f"/v1/be1/{a.tablet}/{a.rowset}/%2Fetc%2Fpasswd",
         token_for(a), 400),
        ("bad rowset", f"/v1/be1/{a.tablet}/{a.rowset.upper()}/{a.name}", token_for(a), 400),
        ("bad tablet", f"/v1/be1/07/{a.rowset}/{a.name}", token_for(a), 400),
        ("too deep", f"/v1/be1/{a.tablet}/{a.rowset}/x/{a.name}", token_for(a), 400),
        ("unknown backend", f"/v1/be2/{a.tablet}/{a.rowset}/{a.name}", token_for(a), 404),
    ]  # fmt: skip


def test_refusals_read_nothing_and_log_one_line_without_the_token(
    live: ThreadServer,
    two_files: tuple[Source, Source],
    pki: dict,
    caplog: pytest.LogCaptureFixture,
) -> None:  # type: ignore[type-arg]
    for what, path, token, status in _refusal_cases(*two_files):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="app.transfer.server"):
            response = _get(live, pki, path, token)
        assert response.status == status, what
        lines = [r.getMessage() for r in caplog.records if r.name == "app.transfer.server"]
        assert len(lines) == 1 and "\n" not in lines[0], (what, lines)
        assert token is None or token not in lines[0] + response.data.decode(), what
        assert live.stats.opened == 0, what
    assert sum(live.stats.refused.values()) == len(_refusal_cases(*two_files))


def test_revoked_token(
    live: ThreadServer,
    two_files: tuple[Source, Source],
    pki: dict,
    revocations: InMemoryRevocations,
) -> None:  # type: ignore[type-arg]
    a = two_files[0]
    token = token_for(a)
    path = f"/v1/be1/{a.tablet}/{a.rowset}/{a.name}"
    assert _get(live, pki, path, token).status == 200
    revocations.revoke("job:dr:12")
    assert _get(live, pki, path, token).status == 403
    assert live.stats.opened == 1
    with pytest.raises(TransferRefused) as info:
        client.Downloader(client_ssl(pki)).fetch_to(
            live.base, "be1", a.tablet, a.rowset, a.meta, token, Path(a.root, "x")
        )
    assert info.value.status == 403 and token not in str(info.value)


def test_missing_file_and_symlink_out_of_the_root(
    live: ThreadServer, two_files: tuple[Source, Source], pki: dict, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    a, b = two_files
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    b.path.unlink()
    b.path.symlink_to(outside)
    gone = make_source(a.root, 10, tablet=9)
    gone.path.unlink()
    token = token_for(a, b, gone)
    downloader = client.Downloader(client_ssl(pki))
    for source in (b, gone):
        with pytest.raises(SourceDataGone):
            downloader.fetch_to(
                live.base, "be1", source.tablet, source.rowset, source.meta, token, tmp_path / "x"
            )
    assert live.stats.opened == 0 and live.stats.refused[404] == 2


def test_a_wrong_checksum_is_reported_by_file_name(
    live: ThreadServer, two_files: tuple[Source, Source], pki: dict, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    a = two_files[0]
    token = token_for(a)
    wrong = FileMeta(a.name, a.meta.size, "0" * 16)
    with pytest.raises(ChecksumMismatch) as info:
        client.Downloader(client_ssl(pki)).fetch_to(
            live.base, "be1", a.tablet, a.rowset, wrong, token, tmp_path / "x"
        )
    assert a.name in str(info.value) and token not in str(info.value)


def test_plain_http_and_bad_client_certificates_are_refused(
    live: ThreadServer,
    pki: dict,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="app.transfer.server")
    before = live.stats.refused[0]
    plain = urllib3.PoolManager(retries=False, timeout=5)
    with pytest.raises(urllib3.exceptions.HTTPError):
        plain.request("GET", f"http://127.0.0.1:{live.port}/healthz")
    for ctx in (client_ssl(pki, cert=False), client_ssl(pki, cluster="evil")):
        http = urllib3.PoolManager(ssl_context=ctx, retries=False, timeout=5)
        with pytest.raises((urllib3.exceptions.HTTPError, ssl.SSLError)):
            http.request("GET", f"{live.base}/healthz")
    ok = urllib3.PoolManager(ssl_context=client_ssl(pki), retries=False)
    assert ok.request("GET", f"{live.base}/healthz").json() == {"ok": True}
    assert live.stats.opened == 0
    # Each refused handshake is counted and logged, one line each.
    wait_until(lambda: live.stats.refused[0] - before == 3, 5, "three refused handshakes")
    lines = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(lines) == 3, lines


def test_the_serving_cap_is_shared_by_connections(tmp_path: Path, pki: dict) -> None:  # type: ignore[type-arg]
    sources = [make_source(tmp_path / "root", 8 * MiB, tablet=t) for t in (1, 2)]
    s = thread_server(sources[0].root, server_ssl(pki), cap=16)
    try:
        token = token_for(*sources)
        threads = [
            threading.Thread(
                target=client.Downloader(client_ssl(pki)).fetch_to,
                args=(s.base, "be1", x.tablet, x.rowset, x.meta, token, tmp_path / f"{x.tablet}"),
            )
            for x in sources
        ]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - began
    finally:
        s.stop()
    # 16 MiB at 16 MiB/s, less the bucket's initial burst (1.6 MiB)
    assert 0.75 < elapsed < 1.5, elapsed
    for x in sources:
        assert checksum_file(tmp_path / f"{x.tablet}") == (x.meta.size, x.meta.checksum)


def test_the_server_refuses_a_root_without_its_marker(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    backends = {"be1": BackendRoot("prod", "be1", root)}
    with pytest.raises(SetupError, match=r"no \.olap-replicator-root"):
        server.make_app(backends, SECRETS, InMemoryRevocations())
    write_marker(root, "prod", "be2")
    with pytest.raises(SetupError, match="is marked"):
        server.make_app(backends, SECRETS, InMemoryRevocations())
    write_marker(root, "prod", "be1")
    server.make_app(backends, SECRETS, InMemoryRevocations())


def test_a_token_for_a_large_batch_fits_the_header_limit(
    live: ThreadServer, two_files: tuple[Source, Source], pki: dict
) -> None:  # type: ignore[type-arg]
    a = two_files[0]
    files = [(a.tablet, a.rowset, a.name)]
    files += [(1000 + i, f"{i:032x}", "0.parquet") for i in range(2000)]
    token = tokens.mint(SECRETS["k1"], grant_for(files=tuple(files)))
    assert len(token) > 8190  # aiohttp's default limit for one header field
    assert _get(live, pki, f"/v1/be1/{a.tablet}/{a.rowset}/{a.name}", token).status == 200
