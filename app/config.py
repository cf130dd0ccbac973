"""Settings: one TOML file plus ``REPLICATOR_*`` environment variables.

Lookup order (later wins): built-in defaults, the TOML file (``REPLICATOR_CONFIG`` or
``./replicator.toml``), environment variables.

A cluster is a catalog database. Clusters named in ``[clusters.NAME] dsn = ...`` use that DSN; any
other name uses ``dsn_template`` (``{cluster}`` is replaced by the name), so a developer machine
needs no file at all.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from app.errors import InvalidRequest

CLUSTER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

DEFAULT_DSN_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/olap_{cluster}"


@dataclass(frozen=True)
class Settings:
    broker_url: str = "redis://127.0.0.1:6379/0"
    dsn_template: str = DEFAULT_DSN_TEMPLATE
    clusters: dict[str, str] = field(default_factory=dict)
    # Transactions and jobs (names follow StarRocks).
    load_transaction_timeout_sec: int = 3600
    replication_transaction_timeout_sec: int = 86400
    history_job_keep_max_second: int = 604800
    replication_max_parallel_table_count: int = 100
    replication_max_parallel_replica_count: int = 10240
    replication_max_parallel_data_size_mb: int = 1048576
    # Tasks.
    task_lease_sec: int = 60
    task_max_attempts: int = 5
    # A task whose message nobody picked up in this time is sent again (lost in Redis).
    task_queued_timeout_sec: int = 60
    tablets_per_message: int = 256
    coordinator_tick_sec: float = 1.0
    # Target clusters this coordinator serves, comma-separated; empty: every catalog found.
    coordinator_clusters: str = ""
    # Minimum lease of a source hold; holds also last as long as their job's transaction.
    hold_lease_sec: int = 3600
    copy_buffer_bytes: int = 8 * 1024 * 1024
    # Per worker process; 0 = unlimited. Keeps replication from starving a backend's disk.
    transfer_bandwidth_mb_per_sec: float = 0.0
    # Garbage collection: files no catalog row mentions are deleted once this old.
    orphan_file_grace_sec: int = 3600

    def dsn(self, cluster: str) -> str:
        check_cluster_name(cluster)
        if cluster in self.clusters:
            return self.clusters[cluster]
        return self.dsn_template.format(cluster=cluster)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def check_cluster_name(name: str) -> None:
    if not CLUSTER_NAME.match(name):
        raise InvalidRequest(
            f"cluster name {name!r} is not valid: use lower-case letters, digits and '_', "
            "starting with a letter (at most 40 characters)"
        )


def _coerce(kind: Any, raw: Any, key: str) -> Any:
    try:
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
    except (TypeError, ValueError):
        raise InvalidRequest(f"setting {key} must be a number, got {raw!r}") from None
    return raw


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    values: dict[str, Any] = {}
    kinds = {f.name: f.type for f in fields(Settings)}
    config_path = Path(path or os.environ.get("REPLICATOR_CONFIG", "replicator.toml"))
    if config_path.exists():
        try:
            data = tomllib.loads(config_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequest(f"settings file {config_path} is not valid TOML: {exc}") from None
        for key, raw in data.items():
            if key == "clusters":
                for name, c in raw.items():
                    if not isinstance(c, dict) or not isinstance(c.get("dsn"), str):
                        raise InvalidRequest(
                            f"clusters.{name} needs a dsn in {config_path}: "
                            f'write [clusters.{name}] dsn = "postgresql+psycopg://..."'
                        )
                values["clusters"] = {name: c["dsn"] for name, c in raw.items()}
            elif key in kinds:
                values[key] = _coerce(kinds[key], raw, key)
            else:
                raise InvalidRequest(f"unknown setting {key!r} in {config_path}")
    clusters = dict(values.get("clusters", {}))
    for env_key, raw in os.environ.items():
        if not env_key.startswith("REPLICATOR_") or env_key == "REPLICATOR_CONFIG":
            continue
        key = env_key.removeprefix("REPLICATOR_").lower()
        if key.startswith("cluster_") and key.endswith("_dsn"):
            clusters[key.removeprefix("cluster_").removesuffix("_dsn")] = raw
        elif key in kinds and key != "clusters":
            values[key] = _coerce(kinds[key], raw, env_key)
    values["clusters"] = clusters
    for name in clusters:
        check_cluster_name(name)
    return Settings(**values)
