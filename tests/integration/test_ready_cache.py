"""Readiness of a catalog (it exists, at the head revision) is checked against Postgres once
per READY_TTL_SEC in a process, and forgotten when the process drops the catalog."""

from __future__ import annotations

import pytest

from app import cluster as cluster_module
from app.catalog import engine as engine_module
from app.cluster import Cluster
from app.config import Settings
from app.errors import NotFound
from tests.conftest import ClusterFactory

pytestmark = pytest.mark.usefixtures("drop_created_catalogs")


def test_readiness_is_asked_once_per_ttl_and_forgotten_on_drop(
    settings: Settings, make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = make_cluster(backends=1)
    asked: list[str] = []
    exists = cluster_module.database_exists

    def counting(dsn: str) -> bool:
        asked.append(dsn)
        return exists(dsn)

    monkeypatch.setattr(cluster_module, "database_exists", counting)
    for _ in range(3):
        Cluster(settings, handle.name).ensure_ready()
    assert asked == []  # seen ready at init, moments ago

    monkeypatch.setattr(engine_module, "READY_TTL_SEC", 0.0)
    Cluster(settings, handle.name).ensure_ready()
    assert len(asked) == 1  # expired: asked again (and found ready)

    monkeypatch.setattr(engine_module, "READY_TTL_SEC", 60.0)
    engine_module.drop_database(handle.catalog.dsn)
    with pytest.raises(NotFound, match="is not initialised"):
        Cluster(settings, handle.name).ensure_ready()
