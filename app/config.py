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

TRANSFER_MODES = ("https", "http", "shared")

DEFAULT_DSN_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/olap_{cluster}"


@dataclass(frozen=True)
class Settings:
    broker_url: str = "redis://127.0.0.1:6379/0"
    dsn_template: str = DEFAULT_DSN_TEMPLATE
    clusters: dict[str, str] = field(default_factory=dict, repr=False)  # DSNs hold passwords
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
    # -- Transfer between clusters (README: "Hosts and ports") --------------------------------
    # https: apply tasks download from the source backend's transfer server over TLS (default);
    # http: the same without TLS, only when asked for (the demo prints that it is insecure);
    # shared: read source files through their storage roots, for roots every host mounts.
    transfer_mode: str = "https"
    transfer_ca_file: str = ""  # the CA bundle that signs the source transfer servers
    # This host's transfer server certificate and key.
    transfer_cert_file: str = ""
    transfer_key_file: str = ""
    # The client certificate and key downloads present when the source requires mutual TLS.
    transfer_client_cert_file: str = ""
    transfer_client_key_file: str = ""
    # Transfer server: when set, only clients with a certificate signed by it may download.
    transfer_client_ca_file: str = ""
    # One budget per (source cluster -> target cluster) link, shared by every apply process
    # through Redis; 0 = unlimited.
    transfer_bandwidth_mb_per_sec: float = 0.0
    # Per transfer server (source side), to protect the source's own queries; 0 = unlimited.
    transfer_serving_cap_mb_per_sec: float = 0.0
    # Per source cluster: the secret its snapshot tasks sign download tokens with and its
    # transfer servers check them with. Only that cluster's hosts need it.
    transfer_secrets: dict[str, str] = field(default_factory=dict, repr=False)
    # Garbage collection: files no catalog row mentions are deleted once this old.
    orphan_file_grace_sec: int = 3600
    # -- The broker over TLS (README "Broker security"; a rediss:// broker_url) ----------------
    # The CA bundle that signs the Redis server's certificate (empty: the system's CAs), and a
    # client certificate and key for a Redis that requires them (tls-auth-clients yes).
    broker_ca_file: str = ""
    broker_cert_file: str = ""
    broker_key_file: str = ""
    # Celery message signing (its `auth` serializer), off unless the key is set: every task and
    # control message is signed with this RSA key and certificate, and only messages signed by
    # a certificate in the store (a directory or a glob of PEM files) are accepted.
    message_signing_key_file: str = ""
    message_signing_cert_file: str = ""
    message_signing_cert_store: str = ""

    def dsn(self, cluster: str) -> str:
        check_cluster_name(cluster)
        if cluster in self.clusters:
            return self.clusters[cluster]
        return self.dsn_template.format(cluster=cluster)

    def __post_init__(self) -> None:
        _check_dsn_template(self.dsn_template)
        if self.transfer_mode not in TRANSFER_MODES:
            raise InvalidRequest(
                f"transfer_mode must be one of {', '.join(TRANSFER_MODES)}, "
                f"got {self.transfer_mode!r}"
            )

    def transfer_secret(self, cluster: str) -> bytes:
        secret = self.transfer_secrets.get(cluster, "")
        if not secret:
            raise InvalidRequest(
                f"cluster {cluster!r} has no transfer secret: set "
                f"REPLICATOR_CLUSTER_{cluster.upper()}_TRANSFER_SECRET (or transfer_secret under "
                f"[clusters.{cluster}]) on its hosts, e.g. to the output of `openssl rand -hex 32`"
            )
        return secret.encode()

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _check_dsn_template(template: str) -> None:
    """``{cluster}`` is the only field: a stray brace would fail every command later, deep in."""
    try:
        template.format(cluster="x")
    except (ValueError, KeyError, IndexError) as exc:
        raise InvalidRequest(
            f"dsn_template {template!r} is not valid ({type(exc).__name__}: {exc}): write "
            "{cluster} where the cluster name goes, and no other braces"
        ) from None


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
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(f"setting {key} must be a number, got {raw!r}") from None
    return raw


def _service_defaults() -> dict[str, Any]:
    """``REPLICATOR_PG_URL`` and ``REPLICATOR_REDIS_URL`` (README "Ports and services"), the one
    setting per service the scripts and the tests read too: they move the defaults of
    ``dsn_template`` and ``broker_url``; the TOML file and ``REPLICATOR_DSN_TEMPLATE`` /
    ``REPLICATOR_BROKER_URL`` still win."""
    values: dict[str, Any] = {}
    if pg_url := os.environ.get("REPLICATOR_PG_URL", "").rstrip("/"):
        values["dsn_template"] = f"{pg_url}/olap_{{cluster}}"
    if redis_url := os.environ.get("REPLICATOR_REDIS_URL", ""):
        values["broker_url"] = redis_url
    return values


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    values: dict[str, Any] = _service_defaults()
    kinds = {f.name: f.type for f in fields(Settings)}
    named = path or os.environ.get("REPLICATOR_CONFIG")
    config_path = Path(named or "replicator.toml")
    if named or config_path.exists():  # a file asked for by name must be there
        data = _read_toml(config_path)
        for key, raw in data.items():
            if key == "clusters":
                values["clusters"], values["transfer_secrets"] = _clusters(raw, config_path)
            elif key in kinds:
                values[key] = _coerce(kinds[key], raw, key)
            else:
                raise InvalidRequest(f"unknown setting {key!r} in {config_path}")
    clusters = dict(values.get("clusters", {}))
    secrets = dict(values.get("transfer_secrets", {}))
    for env_key, raw in os.environ.items():
        if not env_key.startswith("REPLICATOR_") or env_key == "REPLICATOR_CONFIG":
            continue
        key = env_key.removeprefix("REPLICATOR_").lower()
        if key.startswith("cluster_") and key.endswith("_transfer_secret"):
            secrets[key.removeprefix("cluster_").removesuffix("_transfer_secret")] = raw
        elif key.startswith("cluster_") and key.endswith("_dsn"):
            clusters[key.removeprefix("cluster_").removesuffix("_dsn")] = raw
        elif key in kinds and key not in ("clusters", "transfer_secrets"):
            values[key] = _coerce(kinds[key], raw, env_key)
    values["clusters"] = clusters
    values["transfer_secrets"] = secrets
    for name in (*clusters, *secrets):
        check_cluster_name(name)
    return Settings(**values)


def _read_toml(config_path: Path) -> dict[str, Any]:
    if config_path.is_dir():
        raise InvalidRequest(f"settings file {config_path} is a directory: name a TOML file")
    try:
        return tomllib.loads(config_path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(
            f"settings file {config_path} does not exist (REPLICATOR_CONFIG names it)"
        ) from None
    except OSError as exc:
        raise InvalidRequest(
            f"settings file {config_path} cannot be read: {exc.strerror}"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"settings file {config_path} is not valid TOML: {exc}") from None


def _clusters(raw: Any, config_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``[clusters.NAME]`` tables: a ``dsn`` and/or a ``transfer_secret``."""
    dsns: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for name, c in raw.items():
        if not isinstance(c, dict) or not (set(c) & {"dsn", "transfer_secret"}):
            raise InvalidRequest(
                f"clusters.{name} needs a dsn in {config_path}: "
                f'write [clusters.{name}] dsn = "postgresql+psycopg://..."'
            )
        for k, v in c.items():
            if k not in ("dsn", "transfer_secret") or not isinstance(v, str):
                raise InvalidRequest(
                    f"clusters.{name}.{k} in {config_path}: only dsn and transfer_secret "
                    "(strings) may be set for a cluster"
                )
        if "dsn" in c:
            dsns[name] = c["dsn"]
        if "transfer_secret" in c:
            secrets[name] = c["transfer_secret"]
    return dsns, secrets
