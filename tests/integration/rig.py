"""A source and a target cluster with real worker processes, shared by replication tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
import xxhash

from app.catalog import model
from app.catalog import schema as s
from app.client import ClusterHandle, Replicator
from app.config import Settings
from frontends.connect import replicator as connect
from frontends.supervise import free_port
from frontends.transfer_setup import local_transfer
from tests.harness import RedisServer, Workers

COLUMNS = ["id:int64", "day:date", "qty:int32", "price:float64", "note:string"]
PARTITIONS = [
    ("p2023q1", "2023-01-01", "2023-04-01"),
    ("p2023q2", "2023-04-01", "2023-07-01"),
    ("p2023q3", "2023-07-01", "2023-10-01"),
    ("p2023q4", "2023-10-01", "2024-01-01"),
]


def rows(n: int, seed: int, wide: bool = False) -> pa.Table:
    """``n`` rows spread over the four partitions; ``wide`` makes them big and incompressible."""
    rng = np.random.default_rng(seed)
    table = pa.table(
        {
            "id": pa.array(rng.integers(0, 2**62, n), pa.int64()),
            "day": pa.array(
                np.datetime64("2023-01-01") + rng.integers(0, 365, n).astype("timedelta64[D]")
            ).cast(pa.date32()),
            "qty": pa.array(rng.integers(1, 50, n), pa.int32()),
            "price": pa.array(rng.random(n) * 1000, pa.float64()),
            "note": pa.array(
                [f"n{int(x):x}" * (8 if wide else 1) for x in rng.integers(0, 2**40, n)],
                pa.string(),
            ),
        }
    )
    return table


def create_test_table(handle: ClusterHandle, full: str, buckets: int, replication_num: int) -> None:
    """The tests' table: COLUMNS, the four PARTITIONS of 2023, hashed by id."""
    handle.create_table(
        full,
        COLUMNS,
        partition_by="day",
        partitions=PARTITIONS,
        distributed_by=["id"],
        buckets=buckets,
        replication_num=replication_num,
    )


def replica_paths(handle: ClusterHandle, rowsets: list[Any]) -> list[Path]:
    """Where each rowset's data file must be, on every replica of its tablet."""
    with handle.catalog.engine.connect() as conn:
        backends = model.list_backends(conn)
        homes = conn.execute(sa.select(s.replicas.c.tablet_id, s.replicas.c.backend_id)).all()
    return [
        Path(backends[h.backend_id].storage_root, "data", str(r.tablet_id), r.id, "0.parquet")
        for r in rowsets
        for h in homes
        if h.tablet_id == r.tablet_id
    ]


def replica_files(handle: ClusterHandle, table: str) -> dict[tuple[str, int], list[Any]]:
    """Per (partition, bucket): for every replica, the sorted (name, size, xxh3) of the files of
    its visible rowsets as they are on that replica's disk (None for a missing file)."""
    out: dict[tuple[str, int], list[Any]] = {}
    with handle.catalog.engine.connect() as conn:
        info = model.get_table(conn, table)
        parts = {p.id: p.name for p in model.list_partitions(conn, info.id)}
        tablets = model.list_tablets(conn, info.id)
        backends = model.list_backends(conn)
        visible = model.visible_rowsets(conn, [t.id for t in tablets])
    for t in tablets:
        per_replica = []
        for b in t.backend_ids:
            files = []
            for r in visible[t.id]:
                for f in r.files:
                    path = Path(backends[b].storage_root, "data", str(t.id), r.id, f["name"])
                    if not path.exists():
                        files.append((f["name"], -1, None))
                        continue
                    data = path.read_bytes()
                    files.append((f["name"], len(data), xxhash.xxh3_64(data).hexdigest()))
            per_replica.append(sorted(files))
        out[(parts[t.partition_id], t.bucket)] = per_replica
    return out


def replica_mismatches(handle: ClusterHandle, table: str) -> list[str]:
    """Files of visible rowsets whose bytes on some replica differ from what the catalog
    records for them (size and xxh3: for a replicated rowset, the source's), or are missing."""
    bad = []
    with handle.catalog.engine.connect() as conn:
        info = model.get_table(conn, table)
        tablets = model.list_tablets(conn, info.id)
        backends = model.list_backends(conn)
        visible = model.visible_rowsets(conn, [t.id for t in tablets])
    for t in tablets:
        for b in t.backend_ids:
            for r in visible[t.id]:
                for f in r.files:
                    path = Path(backends[b].storage_root, "data", str(t.id), r.id, f["name"])
                    data = path.read_bytes() if path.exists() else None
                    if data is None or (len(data), xxhash.xxh3_64(data).hexdigest()) != (
                        f["size"], f["checksum"],
                    ):  # fmt: skip
                        bad.append(str(path))
    return bad


@dataclass
class Rig:
    settings: Settings
    replicator: Replicator
    src: ClusterHandle
    dst: ClusterHandle
    redis: RedisServer
    workers: Workers
    base: Path

    def make_tables(
        self,
        name: str,
        *,
        buckets: int = 8,
        src_replicas: int = 2,
        dst_replicas: int = 2,
        create_dst: bool = True,
    ) -> str:
        full = f"db.{name}"
        create_test_table(self.src, full, buckets, src_replicas)
        if create_dst:
            create_test_table(self.dst, full, buckets, dst_replicas)
        return full

    def content(self, handle: ClusterHandle, full: str) -> list[tuple[str, int, int, int, str]]:
        return [
            (c.partition, c.version, c.epoch, c.rows, c.checksum) for c in handle.checksum(full)
        ]

    def count(self, handle: ClusterHandle, sql: str, **params: object) -> int:
        with handle.catalog.engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())

    def missing_replica_files(self, handle: ClusterHandle, full: str) -> list[str]:
        """Files of visible rowsets that some replica of their tablet does not hold intact."""

        missing = []
        with handle.catalog.engine.connect() as conn:
            table = model.get_table(conn, full)
            tablets = model.list_tablets(conn, table.id)
            backends = model.list_backends(conn)
            rowsets = model.visible_rowsets(conn, [t.id for t in tablets])
        for t in tablets:
            for b in t.backend_ids:
                for r in rowsets[t.id]:
                    for f in r.files:
                        path = Path(backends[b].storage_root, "data", str(t.id), r.id, f["name"])
                        if not path.exists() or path.stat().st_size != f["size"]:
                            missing.append(str(path))
        return missing

    def staged_files(self, handle: ClusterHandle) -> list[Path]:
        # os.walk, not rglob: a clean-up may remove a directory while it is being listed.
        return [
            Path(top, name)
            for b in handle.backends()
            for top, _dirs, files in os.walk(Path(b.storage_root, "staging"))
            for name in files
        ]

    def unnamed_rowset_dirs(self, handle: ClusterHandle) -> list[Path]:
        """Rowset directories under any backend's data/ that no catalog row names."""
        with handle.catalog.engine.connect() as conn:
            named = set(conn.execute(sa.select(s.rowsets.c.id)).scalars())
        return [
            d
            for b in handle.backends()
            for d in Path(b.storage_root, "data").glob("*/*")
            if d.is_dir() and d.name not in named
        ]

    def jobs_count(self) -> int:
        with self.dst.catalog.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(s.jobs)).scalar_one())


def start_rig(
    settings: Settings,
    test_env: dict[str, str],
    base: Path,
    prefix: str,
    bandwidth: float,
    redis: RedisServer | None = None,
    overrides: dict[str, str] | None = None,
    coordinator: bool = True,
) -> Iterator[Rig]:
    """A source and a target cluster of two backends each, on this host: a transfer server per
    cluster (mutual TLS), a worker per backend and a coordinator. ``bandwidth``: the link's
    budget in MB/s (0: unlimited). ``redis``: a broker of the caller's (default: a plain one);
    ``overrides``: more settings, for this process and the workers alike; ``coordinator``:
    False starts none (the test ticks)."""
    redis = (redis or RedisServer(base / "redis")).start()
    workers: Workers | None = None
    overrides = overrides or {}
    try:
        src_name, dst_name = f"{prefix}src", f"{prefix}dst"
        transfer = local_transfer(base / "pki", [src_name, dst_name])
        settings = settings.with_overrides(broker_url=redis.url, **transfer.overrides, **overrides)
        replicator = connect(settings)
        src, dst = replicator.cluster(src_name), replicator.cluster(dst_name)
        ports = {src_name: free_port(), dst_name: free_port()}
        for handle in (src, dst):
            handle.init()
            for b in ("be1", "be2"):
                url = transfer.url(ports[handle.name])
                handle.add_backend(b, str(base / handle.name / b), transfer_url=url)
        env = dict(test_env) | transfer.env
        env["REPLICATOR_BROKER_URL"] = redis.url
        env["REPLICATOR_TRANSFER_BANDWIDTH_MB_PER_SEC"] = str(bandwidth)
        env |= {f"REPLICATOR_{key.upper()}": value for key, value in overrides.items()}
        # This rig's coordinator serves this rig's clusters, not every catalog of the test run.
        env["REPLICATOR_COORDINATOR_CLUSTERS"] = f"{src.name},{dst.name}"
        workers = Workers(env, base / "logs")
        for handle in (src, dst):
            workers.transfer(handle.name, ["be1", "be2"], ports[handle.name])
            for b in ("be1", "be2"):
                workers.backend(handle.name, b)
        if coordinator:
            workers.coordinator()
        workers.wait_ready()
        yield Rig(settings, replicator, src, dst, redis, workers, base)
    finally:
        if workers is not None:
            workers.stop_all()
        redis.stop()
