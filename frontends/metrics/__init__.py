"""Prometheus metrics, read at scrape time from the catalogs and the broker (see ``collector``).

replicator metrics serve --port 9808            # every cluster the DSN template finds
"""

from __future__ import annotations

from frontends.metrics.broker import active_consumers, queue_lengths
from frontends.metrics.collector import ReplicatorCollector
from frontends.metrics.families import FAMILIES, family_names
from frontends.metrics.server import registry_for, render, serve

__all__ = [
    "FAMILIES",
    "ReplicatorCollector",
    "active_consumers",
    "family_names",
    "queue_lengths",
    "registry_for",
    "render",
    "serve",
]
