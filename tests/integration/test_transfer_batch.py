"""Batch downloads (many small files, one request) over real sockets with mutual TLS."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from app.errors import StorageUnavailable, TransferRefused
from app.storage.checksum import FileMeta
from app.transfer import batch, client
from app.transfer.server import InMemoryRevocations
from tests.integration.transfer_rig import (
    Source,
    ThreadServer,
    client_ssl,
    make_source,
    pki,
    revocations,
    server_ssl,
    thread_server,
    token_for,
)

__all__ = ["pki", "revocations"]


@pytest.fixture
def files(tmp_path: Path) -> list[Source]:
    root = tmp_path / "root"
    return [make_source(root, 1000 + 37 * i, name=f"{i}.parquet", tablet=10 + i) for i in range(5)]


@pytest.fixture
def live(
    files: list[Source], pki: dict, revocations: InMemoryRevocations
) -> Iterator[ThreadServer]:  # type: ignore[type-arg]
    s = thread_server(files[0].root, server_ssl(pki), revocations)
    yield s
    s.stop()


def _wanted(sources: list[Source], tokens: list[str]) -> list[tuple[str, int, str, FileMeta]]:
    return [(tok, s.tablet, s.rowset, s.meta) for tok, s in zip(tokens, sources, strict=True)]


def test_a_batch_brings_each_file_verified_in_one_request_with_a_token_per_task(
    live: ThreadServer, files: list[Source], pki: dict
) -> None:  # type: ignore[type-arg]
    downloader = client.Downloader(client_ssl(pki))
    tokens = [token_for(s) for s in files]  # one per task, as snapshots mint them
    got, received = downloader.fetch_many(live.base, "be1", _wanted(files, tokens))

    assert got == [s.path.read_bytes() for s in files]
    assert received == sum(batch.FRAME.size + s.meta.size for s in files)
    assert live.stats.opened == len(files) and live.stats.served_bytes == sum(
        s.meta.size for s in files
    )
    assert downloader.pool.connection_from_url(live.base).num_connections == 1


def test_missing_damaged_and_escaping_files_come_back_as_none_the_rest_arrive(
    live: ThreadServer, files: list[Source], pki: dict, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    files[1].path.unlink()  # gone from this backend
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    files[2].path.unlink()
    files[2].path.symlink_to(outside)  # a symlink out of the root is never served
    wrong = FileMeta(files[3].name, files[3].meta.size, "0" * 16)  # the manifest disagrees
    wanted = _wanted(files, [token_for(s) for s in files])
    wanted[3] = (wanted[3][0], files[3].tablet, files[3].rowset, wrong)
    asked: list[int] = []  # the failpoint is asked per file that arrived: 0, 3 and 4

    def corrupt() -> bool:
        asked.append(1)
        return len(asked) == 3  # strikes the last file

    got, _ = client.Downloader(client_ssl(pki)).fetch_many(
        live.base, "be1", wanted, corrupt=corrupt
    )

    assert got[0] == files[0].path.read_bytes()
    assert got[1:] == [None, None, None, None] and len(asked) == 3
    assert live.stats.opened == 3  # 0, 3 and 4: the missing and escaping ones are not opened


def _post(live: ThreadServer, pki: dict, body: bytes) -> urllib3.BaseHTTPResponse:  # type: ignore[type-arg]
    pool = urllib3.PoolManager(ssl_context=client_ssl(pki), retries=False)
    return pool.request("POST", f"{live.base}/v1/be1/files", body=body)


def _cases(files: list[Source]) -> list[tuple[str, bytes, int]]:
    a, b = files[0], files[1]
    tok_a = token_for(a)

    def ref(s: Source) -> list[object]:
        return [s.tablet, s.rowset, s.name]

    def body(tokens: object, refs: object) -> bytes:
        return json.dumps({"tokens": tokens, "files": refs}).encode()

    return [
        ("not json", b"{", 400),
        ("no files", body([tok_a], []), 400),
        ("a ref of three", body([tok_a], [[a.tablet, a.rowset, a.name]]), 400),
        ("index past the tokens", body([tok_a], [[1, a.tablet, a.rowset, a.name]]), 400),
        ("a bad file name", body([tok_a], [[0, a.tablet, a.rowset, "../x"]]), 400),
        (
            "too many files",
            body([tok_a], [[0, a.tablet, a.rowset, a.name]] * (batch.MAX_FILES + 1)),
            400,
        ),
        ("a body too large", body(["x" * batch.MAX_BODY], [[0, 1, "0", "a"]]), 400),
        ("a forged token", body([tok_a[:-4] + "AAAA"], [[0, a.tablet, a.rowset, a.name]]), 401),
        ("another cluster's", body([token_for(a, source_cluster="qa")], [[0, *ref(a)]]), 403),
        # One file its token does not name refuses the whole request: nothing is served.
        (
            "a file not granted",
            body([tok_a], [[0, a.tablet, a.rowset, a.name], [0, b.tablet, b.rowset, b.name]]),
            403,
        ),
    ]  # fmt: skip


def test_refusals_serve_nothing_and_log_one_line_without_a_token(
    live: ThreadServer, files: list[Source], pki: dict, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[type-arg]
    cases = _cases(files)
    for what, body, status in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="app.transfer.server"):
            response = _post(live, pki, body)
        assert response.status == status, (what, response.data[:200])
        lines = [r.getMessage() for r in caplog.records if r.name == "app.transfer.server"]
        assert len(lines) == 1 and "\n" not in lines[0], (what, lines)
        assert "v1." not in lines[0] + response.data.decode(), what
    assert live.stats.opened == 0
    assert sum(live.stats.refused.values()) == len(cases)


def test_the_client_says_refused_or_unavailable_and_returns_nothing(
    live: ThreadServer, files: list[Source], pki: dict, revocations: InMemoryRevocations
) -> None:  # type: ignore[type-arg]
    downloader = client.Downloader(client_ssl(pki))
    tokens = [token_for(s) for s in files]
    with pytest.raises(TransferRefused) as info:  # a token that does not name the file
        downloader.fetch_many(live.base, "be1", _wanted(files[:2], [tokens[1], tokens[0]]))
    assert info.value.status == 403 and "does not name" in str(info.value)
    revocations.revoke("job:dr:12")  # the job ended: its holds are gone
    with pytest.raises(TransferRefused) as info:
        downloader.fetch_many(live.base, "be1", _wanted(files, tokens))
    assert info.value.status == 403 and "revoked" in str(info.value)
    assert not any(t in str(info.value) for t in tokens)
    live.stop()
    with pytest.raises(StorageUnavailable):
        downloader.fetch_many(live.base, "be1", _wanted(files, tokens))
    live.stop = lambda: None  # type: ignore[method-assign]
    assert live.stats.opened == 0
