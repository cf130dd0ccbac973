"""Fixtures for integration modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.catalog import engine


@pytest.fixture
def drop_created_catalogs() -> Iterator[None]:
    """Drop the catalogs a test created as soon as it ends, not at the end of the run: each one
    left around holds pooled connections here and in any coordinator that discovers it.

    Only for modules without a module-scoped rig, whose catalogs must outlive each test."""
    before = engine.cached_dsns()
    yield
    for dsn in engine.cached_dsns() - before:
        engine.drop_database(dsn)
