"""Serving the collector: a registry, the HTTP endpoint, one scrape as text."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client.registry import CollectorRegistry

from app.config import Settings
from frontends.metrics.collector import ReplicatorCollector


def registry_for(
    settings: Settings, clusters: Sequence[str] | None = None, **kwargs: Any
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ReplicatorCollector(settings, clusters, **kwargs))
    return registry


def serve(
    settings: Settings,
    port: int = 9808,
    addr: str = "127.0.0.1",  # the exporter has no authentication: loopback unless told
    clusters: Sequence[str] | None = None,
    **kwargs: Any,
) -> tuple[Any, threading.Thread]:
    """Start the HTTP endpoint (``/metrics``) in a daemon thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    registry = registry_for(settings, clusters, **kwargs)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return server, thread


def render(settings: Settings, clusters: Sequence[str] | None = None, **kwargs: Any) -> str:
    """One scrape, as Prometheus text."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(settings, clusters, **kwargs)).decode()
