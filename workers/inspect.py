"""An inspect handle (``celery inspect`` as an object) for the workers behind a broker URL."""

from __future__ import annotations

from typing import Any

from celery import Celery

_clients: dict[str, Celery] = {}


def _client(broker_url: str) -> Celery:
    client = _clients.get(broker_url)
    if client is None:
        # A client that gives up fast: a scrape must not hang on a broker that is down.
        client = Celery("olap_replicator_inspect", broker=broker_url)
        client.conf.update(
            accept_content=["json"],
            broker_connection_timeout=2.0,
            broker_connection_retry=False,
            broker_connection_max_retries=1,
            broker_transport_options={"socket_timeout": 2.0, "socket_connect_timeout": 1.0},
        )
        _clients[broker_url] = client
    return client


def inspector(broker_url: str, timeout: float) -> Any:
    """``control.inspect(timeout=...)`` over the broker at ``broker_url``, through a client app
    that fails fast when the broker is down (one per URL, reused)."""
    return _client(broker_url).control.inspect(timeout=timeout)
