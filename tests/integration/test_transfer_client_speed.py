"""Client library comparison (opt-in: TRANSFER_BENCH=1): 1 GiB over TLS on loopback from the
transfer server (its own process) into a file with xxh3 in the same pass, against curl."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import xxhash

from app.transfer import client
from tests.integration.transfer_rig import (
    ProcessServer,
    client_ssl,
    make_source,
    pki,
    token_for,
)

__all__ = ["pki"]
SIZE = int(os.environ.get("TRANSFER_BENCH_BYTES", str(1 << 30)))
ROUNDS = int(os.environ.get("TRANSFER_BENCH_ROUNDS", "3"))

pytestmark = pytest.mark.skipif(
    os.environ.get("TRANSFER_BENCH") != "1", reason="benchmark: set TRANSFER_BENCH=1"
)


def _httpx(ctx: object, url: str, token: str, dst: Path) -> str:
    import httpx

    digest = xxhash.xxh3_64()
    with (
        httpx.Client(verify=ctx) as http,  # type: ignore[arg-type]
        http.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as response,
        open(dst, "wb") as out,
    ):
        for data in response.iter_raw(client.CHUNK):
            digest.update(data)
            out.write(data)
    return digest.hexdigest()


def test_client_libraries_against_curl(tmp_path: Path, pki: dict) -> None:  # type: ignore[type-arg]
    source = make_source(tmp_path / "root", SIZE)
    server = ProcessServer(source.root, pki)
    server.start()
    try:
        _compare(tmp_path, pki, server, source)
    finally:
        server.kill()


def _compare(tmp_path: Path, pki: dict, server: ProcessServer, source: object) -> None:  # type: ignore[type-arg]
    token = token_for(source)  # type: ignore[arg-type]
    certs = pki["dr"].backends["be1"]
    dst = tmp_path / "out.bin"
    downloader = client.Downloader(client_ssl(pki))
    url = downloader.url(server.base, "be1", source.tablet, source.rowset, source.name)  # type: ignore[attr-defined]
    curl = [
        shutil.which("curl") or "curl", "-s", "-f", "--cacert", str(pki["prod"].ca_cert),
        "--cert", str(certs.client_cert), "--key", str(certs.client_key),
        "-H", f"Authorization: Bearer {token}", "-o", str(dst), url,
    ]  # fmt: skip
    runs: dict[str, list[float]] = {"curl": [], "urllib3": [], "httpx": []}
    for _ in range(ROUNDS):
        for name in runs:
            dst.unlink(missing_ok=True)
            began = time.perf_counter()
            if name == "curl":
                subprocess.run(curl, check=True)
            elif name == "urllib3":
                downloader.fetch_to(server.base, "be1", source.tablet, source.rowset,  # type: ignore[attr-defined]
                                    source.meta, token, dst)  # type: ignore[attr-defined]  # fmt: skip
            else:
                assert _httpx(client_ssl(pki), url, token, dst) == source.meta.checksum  # type: ignore[attr-defined]
            runs[name].append(time.perf_counter() - began)
    best = {name: min(times) for name, times in runs.items()}
    for name, times in runs.items():
        print(f"BENCH {name:8s} best {best[name]:.2f}s  ({best[name] / best['curl']:.2f}x curl)"
              f"  runs {', '.join(f'{t:.2f}' for t in times)}")  # fmt: skip
