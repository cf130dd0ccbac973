"""Transfer settings for processes that all run on this host: the demo, the tests, the bench.

Each cluster gets a development CA and a token secret; every process trusts every cluster's CA
and presents a client certificate, so downloads use TLS with mutual authentication, as across
real hosts. (The multi-host suite gives each host its own certificates.)
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.transfer import tls

HOSTS = ["127.0.0.1", "localhost"]


@dataclass
class LocalTransfer:
    mode: str
    overrides: dict[str, Any] = field(default_factory=dict)  # Settings fields
    env: dict[str, str] = field(default_factory=dict)  # the same, for subprocesses

    def url(self, port: int) -> str:
        scheme = "http" if self.mode == "http" else "https"
        return f"{scheme}://127.0.0.1:{port}"


def local_transfer(base: Path, clusters: Sequence[str], mode: str = "https") -> LocalTransfer:
    """Certificates under ``base`` and secrets for ``clusters``; ``mode`` is transfer_mode."""
    setup = LocalTransfer(mode)
    keys = {c: secrets.token_hex(32) for c in clusters}
    setup.overrides["transfer_mode"] = mode
    setup.overrides["transfer_secrets"] = dict(keys)
    for cluster, key in keys.items():
        setup.env[f"REPLICATOR_CLUSTER_{cluster.upper()}_TRANSFER_SECRET"] = key
    if mode == "https":
        pki = tls.make_dev_pki(base, {c: {"host": HOSTS} for c in clusters})
        bundle = tls.write_bundle(base / "ca-bundle.pem", [pki[c].ca_cert for c in clusters])
        certs = pki[clusters[0]].backends["host"]
        setup.overrides |= {
            "transfer_ca_file": str(bundle),
            "transfer_cert_file": str(certs.server_cert),
            "transfer_key_file": str(certs.server_key),
            "transfer_client_cert_file": str(certs.client_cert),
            "transfer_client_key_file": str(certs.client_key),
            "transfer_client_ca_file": str(bundle),
        }
    for key, value in setup.overrides.items():
        if key != "transfer_secrets":
            setup.env[f"REPLICATOR_{key.upper()}"] = str(value)
    return setup
