"""app.transfer.tls: handshakes against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509

from app.transfer import tls
from tests.integration.transfer_rig import ThreadServer


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tls.ClusterPki]:
    return tls.make_dev_pki(
        tmp_path_factory.mktemp("pki"),
        {"prod": {"be1": ["127.0.0.1", "localhost"]}, "dr": ["127.0.0.1"], "evil": ["127.0.0.1"]},
    )


CALLS: list[str] = []


def _app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        CALLS.append(request.path)
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


@pytest.fixture(scope="module")
def mtls_server(dev_pki: dict[str, tls.ClusterPki]) -> Iterator[ThreadServer]:
    certs = dev_pki["prod"].backends["be1"]
    ctx = tls.server_context(certs.server_cert, certs.server_key, dev_pki["dr"].ca_cert)
    server = ThreadServer(_app(), ctx)
    yield server
    server.stop()


def _get(port: int, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as conn,
    ):
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        return data


def _refused(port: int, ctx: ssl.SSLContext) -> None:
    """Under TLS 1.3 the server checks the client's certificate after the client has finished
    its handshake: the client then sees an alert, a reset, or just the end of the stream."""
    before = len(CALLS)
    try:
        reply = _get(port, ctx)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        reply = b""
    assert b"hello" not in reply and len(CALLS) == before


def test_files_and_permissions(dev_pki: dict[str, tls.ClusterPki]) -> None:
    prod = dev_pki["prod"]
    keys = [prod.ca_key, prod.backends["be1"].server_key, prod.backends["be1"].client_key]
    for key in keys:
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(prod.backends["be1"].server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(dev_pki["dr"].backends) == {"127.0.0.1"}


def test_mutual_tls_ok(mtls_server: ThreadServer, dev_pki: dict[str, tls.ClusterPki]) -> None:
    dr = dev_pki["dr"].backends["127.0.0.1"]
    ctx = tls.client_context(dev_pki["prod"].ca_cert, dr.client_cert, dr.client_key)
    assert _get(mtls_server.port, ctx).endswith(b"hello")
    assert _get(mtls_server.port, ctx, host="localhost").endswith(b"hello")


def test_plain_http_to_the_tls_port_is_refused(mtls_server: ThreadServer) -> None:
    with socket.create_connection(("127.0.0.1", mtls_server.port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = conn.recv(65536)
        except ConnectionResetError:
            reply = b""
    assert b"hello" not in reply and not reply.startswith(b"HTTP/1.1 200")


def test_a_client_without_a_certificate_is_refused(
    mtls_server: ThreadServer, dev_pki: dict[str, tls.ClusterPki]
) -> None:
    _refused(mtls_server.port, tls.client_context(dev_pki["prod"].ca_cert))


def test_a_client_certificate_of_another_ca_is_refused(
    mtls_server: ThreadServer, dev_pki: dict[str, tls.ClusterPki]
) -> None:
    evil = dev_pki["evil"].backends["127.0.0.1"]
    ctx = tls.client_context(dev_pki["prod"].ca_cert, evil.client_cert, evil.client_key)
    _refused(mtls_server.port, ctx)


def test_the_client_refuses_a_server_of_another_ca(
    mtls_server: ThreadServer, dev_pki: dict[str, tls.ClusterPki]
) -> None:
    dr = dev_pki["dr"].backends["127.0.0.1"]
    ctx = tls.client_context(dev_pki["evil"].ca_cert, dr.client_cert, dr.client_key)
    with pytest.raises(ssl.SSLCertVerificationError):
        _get(mtls_server.port, ctx)


def test_the_client_checks_the_host_name(
    mtls_server: ThreadServer, dev_pki: dict[str, tls.ClusterPki]
) -> None:
    dr = dev_pki["dr"].backends["127.0.0.1"]
    ctx = tls.client_context(dev_pki["prod"].ca_cert, dr.client_cert, dr.client_key)
    with pytest.raises(ssl.SSLCertVerificationError):
        _get(mtls_server.port, ctx, host="prod-be2.example")


def test_bundle_trusts_several_clusters(tmp_path: Path, dev_pki: dict[str, tls.ClusterPki]) -> None:
    bundle = tls.write_bundle(
        tmp_path / "trust.pem", [dev_pki["dr"].ca_cert, dev_pki["evil"].ca_cert]
    )
    certs = dev_pki["prod"].backends["be1"]
    server = ThreadServer(_app(), tls.server_context(certs.server_cert, certs.server_key, bundle))
    try:
        for cluster in ("dr", "evil"):
            leaf = dev_pki[cluster].backends["127.0.0.1"]
            ctx = tls.client_context(dev_pki["prod"].ca_cert, leaf.client_cert, leaf.client_key)
            assert _get(server.port, ctx).endswith(b"hello")
    finally:
        server.stop()
