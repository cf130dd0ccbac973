"""``replicator transfer ...``: the transfer server of a backend host, and development certs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.errors import InvalidRequest
from frontends.cli.apps import connect, err, out, transfer_cli


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"--listen {value!r} must be HOST:PORT, e.g. 0.0.0.0:8470")
    return host.strip("[]"), int(port)


@transfer_cli.command("serve")
def transfer_serve(
    cluster: Annotated[str, typer.Option(help="The cluster whose backends this host holds")],
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", help="A backend on this host (repeat; default: all)"),
    ] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on")] = "0.0.0.0:8470",
) -> None:
    """Serve this host's backends' files to the target clusters' apply tasks (HTTPS)."""
    import logging

    from app.transfer import service

    host, port = _listen(listen)
    settings = connect().settings
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    scheme = "http" if settings.transfer_mode == "http" else "https"
    if scheme == "http":
        err.print("[yellow]warning:[/] transfer_mode = http: files are served without TLS")
    err.print(f"transfer server for {cluster} on {scheme}://{host}:{port}")
    service.serve(settings, cluster, backend or [], host, port)


@transfer_cli.command("dev-certs")
def transfer_dev_certs(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the certificates into")],
    backend: Annotated[
        list[str],
        typer.Option(
            "--backend",
            help="CLUSTER:BACKEND=HOST[,HOST...] (repeat): a server certificate for those names",
        ),
    ],
) -> None:
    """A development CA per cluster and a server and client certificate per backend."""
    from app.transfer import tls

    spec: dict[str, dict[str, list[str]]] = {}
    for item in backend:
        who, sep, hosts = item.partition("=")
        cluster, colon, name = who.partition(":")
        if not (sep and colon and cluster and name and hosts):
            raise InvalidRequest(
                f"--backend {item!r} must be CLUSTER:BACKEND=HOST[,HOST...], "
                "e.g. prod:be1=10.0.0.5,be1.prod.internal"
            )
        spec.setdefault(cluster, {})[name] = [h for h in hosts.split(",") if h]
    pki = tls.make_dev_pki(out_dir, spec)
    for cluster, made in pki.items():
        out.print(f"{cluster}: CA {made.ca_cert}")
        for name, certs in made.backends.items():
            out.print(f"  {name}: server {certs.server_cert}, client {certs.client_cert}")
