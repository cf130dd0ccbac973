"""An inspect handle (``celery inspect`` as an object) for the workers behind a broker."""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.config import Settings
from workers.security import client_key, configure

_clients: dict[tuple[str, ...], Celery] = {}


def _client(settings: Settings) -> Celery:
    key = client_key(settings)
    client = _clients.get(key)
    if client is None:
        # A client that gives up fast: a scrape must not hang on a broker that is down.
        client = Celery("olap_replicator_inspect", broker=settings.broker_url)
        client.conf.update(
            accept_content=["json"],
            broker_connection_timeout=2.0,
            broker_connection_retry=False,
            broker_connection_max_retries=1,
            broker_transport_options={"socket_timeout": 2.0, "socket_connect_timeout": 1.0},
        )
        # The broker's TLS, and with signing on, signed requests and replies like the workers'.
        configure(client, settings)
        _clients[key] = client
    return client


def inspector(settings: Settings, timeout: float) -> Any:
    """``control.inspect(timeout=...)`` over the broker ``settings`` name, through a client app
    that fails fast when the broker is down (one per broker, reused)."""
    return _client(settings).control.inspect(timeout=timeout)
