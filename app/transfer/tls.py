"""TLS for the transfer service: contexts for servers and clients, and a development PKI.

Mutual TLS decides which backends may connect at all; tokens decide which files they may read.

Development PKI: **one CA per cluster**. Each cluster's CA signs its own backends' server and
client certificates. A transfer server trusts, for client certificates, the CAs of the clusters
allowed to pull from it (a bundle: :func:`write_bundle`); a downloader trusts the CAs of the
clusters it pulls from. So trust between clusters is granted per cluster, by which CA files a
host is given, and a leaked CA key lets one impersonate only that cluster's backends. (One dev CA
for everything would make every backend trust every other, which is not the shape of production.)
Client certificates carry ``O=<cluster>, CN=<backend>``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.transfer import names

PathLike = str | os.PathLike[str]
DEV_VALIDITY = dt.timedelta(days=365)


def server_context(cert: PathLike, key: PathLike, client_ca: PathLike | None) -> ssl.SSLContext:
    """A server context (TLS >= 1.2). ``client_ca`` given: clients must present a certificate
    signed by one of its CAs (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=os.fspath(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    ca: PathLike, cert: PathLike | None = None, key: PathLike | None = None
) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` (a file, possibly a bundle) and checks the
    server's host name; ``cert``/``key``: the client certificate for mutual TLS."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
    return ctx


@dataclass(frozen=True)
class BackendCerts:
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class ClusterPki:
    ca_cert: Path
    ca_key: Path
    backends: dict[str, BackendCerts] = field(default_factory=dict)


def _name(cluster: str, common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # also when the file existed with wider permissions


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + DEV_VALIDITY)
    )


def _make_ca(out: Path, cluster: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cluster, f"olap-replicator dev CA {cluster}")
    cert = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(out / "ca.key", key)
    _write_cert(out / "ca.pem", cert)
    return key, cert


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _leaf(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    cluster: str,
    backend: str,
    hosts: Sequence[str] | None,
    out: Path,
) -> tuple[Path, Path]:
    """A server certificate (``hosts`` given, SAN = hosts) or a client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if hosts is not None else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        _builder(_name(cluster, backend), ca[1].subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts is not None:
        builder = builder.add_extension(_san(hosts), critical=False)
    kind = "server" if hosts is not None else "client"
    _write_key(out / f"{kind}.key", key)
    _write_cert(out / f"{kind}.pem", builder.sign(ca[0], hashes.SHA256()))
    return out / f"{kind}.pem", out / f"{kind}.key"


def make_dev_pki(
    out_dir: PathLike, clusters: Mapping[str, Mapping[str, Sequence[str]] | Sequence[str]]
) -> dict[str, ClusterPki]:
    """Write a development PKI under ``out_dir``::

        <cluster>/ca.pem, ca.key
        <cluster>/<backend>/server.pem, server.key, client.pem, client.key

    ``clusters`` maps a cluster to ``{backend: [host names / IPs]}``, or to a list of host
    names / IPs, each then a backend of that name. Keys are written 0600."""
    out = Path(out_dir)
    result: dict[str, ClusterPki] = {}
    for cluster, spec in clusters.items():
        names.cluster_name(cluster)
        backends = {h: [h] for h in spec} if not isinstance(spec, Mapping) else dict(spec)
        cdir = out / cluster
        cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = _make_ca(cdir, cluster)
        pki = ClusterPki(cdir / "ca.pem", cdir / "ca.key")
        for backend, hosts in backends.items():
            bdir = cdir / _dir_name(backend)
            bdir.mkdir(exist_ok=True, mode=0o700)
            server = _leaf(ca, cluster, backend, list(hosts), bdir)
            client = _leaf(ca, cluster, backend, None, bdir)
            pki.backends[backend] = BackendCerts(*server, *client)
        result[cluster] = pki
    return result


def _dir_name(backend: str) -> str:
    """A backend name, or a host name / IP used as one, as a safe directory name."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in backend)
    return names.file_name(safe.lstrip(".") or "_")


def write_bundle(out: PathLike, ca_files: Sequence[PathLike]) -> Path:
    """Concatenate CA certificates into one file (the trust list of a server or a client)."""
    path = Path(out)
    path.write_bytes(b"".join(Path(f).read_bytes() for f in ca_files))
    return path
