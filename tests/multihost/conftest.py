"""The multi-host rig: a source host, a target host and a coordinator host, each a network
namespace with a private storage mount, talking over a bridge to this suite's own Postgres and
Redis; the transfer service with a CA per cluster and mutual TLS. ``make multihost``.

    root namespace   bridge mh<id>br 10.213.n.1: Postgres, Redis (and pytest)
    src  10.213.n.2  workers be.mhsrc.be1, be.mhsrc.be2; transfer servers :8471 (be1), :8472 (be2)
    dst  10.213.n.3  workers be.mhdst.be1, be.mhdst.be2; transfer server :8471 (both)
    coord 10.213.n.4 coordinator + beat

Storage roots live under /run/olap-mh-<id>/<host>/<backend>, on a tmpfs that only that host's
processes see. Everything is made and removed by the session fixture ``mh``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.catalog.engine import dispose_all
from app.client import Replicator
from app.config import Settings
from app.queues import queue_name
from app.transfer import tls
from frontends.netns import Host, HostProcs, Net, tcp_answers
from frontends.servers import RedisServer, SeaweedServer
from frontends.supervise import QUIET, Proc, free_port
from tests.harness import PostgresServer
from workers.commands import backend_worker_argv, coordinator_argv

SRC, DST = "mhsrc", "mhdst"
BACKENDS = ("be1", "be2")
# A third cluster whose backends keep their files in object storage: a SeaweedFS on the bridge
# (its own "host", as Postgres and Redis are), its workers on the target host.
LAKE = "mhlake"
SRC_PORTS = {"be1": 8471, "be2": 8472}
DST_PORT = 8471
TABLE = "tpch.lineitem"  # the source table every test replicates from
SCALE = 0.3
INCREMENT_SCALE = 0.01
REPORT = Path(__file__).resolve().parents[2] / "var" / "multihost-report.jsonl"


def record(test: str, **numbers: object) -> None:
    """Append what a test measured to var/multihost-report.jsonl."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as f:
        f.write(json.dumps({"test": test, "at": time.time(), **numbers}) + "\n")


class BridgePostgres(PostgresServer):
    """The harness' private Postgres, listening on the bridge too, trusting the run's subnet."""

    def __init__(self, address: str, subnet: str) -> None:
        super().__init__()
        self.address = address
        self.subnet = subnet

    @property
    def bridge_url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}"

    def start(self) -> BridgePostgres:
        hba = self.datadir / "pg_hba.conf"
        line = f"host all all {self.subnet} trust\n"
        if line not in hba.read_text():
            with hba.open("a") as f:
                f.write(line)
        opts = (
            f"-p {self.port} -k {self.datadir.parent} -c fsync=off -c max_connections=300 "
            f"-c listen_addresses=127.0.0.1,{self.address}"
        )
        self._run(
            self.bindir / "pg_ctl", "-D", str(self.datadir), "-o", opts,
            "-l", str(self.datadir.parent / "server.log"), "-w", "start",
        )  # fmt: skip
        return self


@dataclass
class Config:
    """Settings of the processes a test may want changed (restarting them)."""

    bandwidth: float = 40.0  # the link budget, MB/s (REPLICATOR_TRANSFER_BANDWIDTH_MB_PER_SEC)
    serving_cap: float = 0.0  # per source transfer server, MB/s
    dst_concurrency: int = 2  # apply processes per target backend worker


@dataclass
class MultiHost:
    net: Net
    pg: BridgePostgres
    redis: RedisServer
    pki: dict[str, tls.ClusterPki]
    secrets: dict[str, str]
    base_env: dict[str, str]
    procs: HostProcs
    settings: Settings
    replicator: Replicator
    base: Path
    store: SeaweedServer
    config: Config = field(default_factory=Config)
    _source_content: dict[tuple[str, str, tuple[str, ...]], list[list[Any]]] = field(
        default_factory=dict
    )

    # -- hosts ---------------------------------------------------------------------------
    @property
    def src(self) -> Host:
        return self.net.hosts["src"]

    @property
    def dst(self) -> Host:
        return self.net.hosts["dst"]

    @property
    def coord(self) -> Host:
        return self.net.hosts["coord"]

    def root(self, host: str, backend: str) -> str:
        return f"{self.net.mount_dir}/{host}/{backend}"

    def env(self, host: str, backend: str = "be1") -> dict[str, str]:
        """What a process on ``host`` is configured with: only its own cluster's secret, the
        CA of the clusters it downloads from, its own certificates."""
        env = dict(self.base_env)
        env["REPLICATOR_TRANSFER_BANDWIDTH_MB_PER_SEC"] = str(self.config.bandwidth)
        env["REPLICATOR_TRANSFER_SERVING_CAP_MB_PER_SEC"] = str(self.config.serving_cap)
        if host == "coord":
            return env
        cluster, peer = (SRC, DST) if host == "src" else (DST, SRC)
        certs = self.pki[cluster].backends[backend]
        env |= {
            f"REPLICATOR_CLUSTER_{cluster.upper()}_TRANSFER_SECRET": self.secrets[cluster],
            "REPLICATOR_TRANSFER_MODE": "https",
            "REPLICATOR_TRANSFER_CA_FILE": str(self.pki[peer].ca_cert),
            "REPLICATOR_TRANSFER_CERT_FILE": str(certs.server_cert),
            "REPLICATOR_TRANSFER_KEY_FILE": str(certs.server_key),
            "REPLICATOR_TRANSFER_CLIENT_CERT_FILE": str(certs.client_cert),
            "REPLICATOR_TRANSFER_CLIENT_KEY_FILE": str(certs.client_key),
            # Only the other cluster's backends may pull from this host (mutual TLS).
            "REPLICATOR_TRANSFER_CLIENT_CA_FILE": str(self.pki[peer].ca_cert),
        }
        return env

    def cli(self, host: str, *args: str, backend: str = "be1") -> str:
        h = self.net.hosts[host]
        return h.run([sys.executable, "-m", "frontends.cli", *args], self.env(host, backend)).stdout

    def hostcmd(self, host: str, *args: str, timeout: float = 600) -> Any:
        h = self.net.hosts[host]
        out = h.run(
            [sys.executable, "-m", "tests.multihost.hostcmd", *args],
            self.env(host),
            timeout=timeout,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    def content(self, cluster: str, table: str, *partitions: str) -> list[list[Any]]:
        """Per partition (name, version, epoch, rows, checksum), read on the host that holds
        the files. The source table's is cached until the next :meth:`load_source`."""
        key = (cluster, table, partitions)
        if cluster == SRC and key in self._source_content:
            return self._source_content[key]
        host = "src" if cluster == SRC else "dst"
        got: list[list[Any]] = self.hostcmd(host, "checksum", cluster, table, *partitions)
        if cluster == SRC:
            self._source_content[key] = got
        return got

    def both(self, target: str, *partitions: str) -> tuple[list[list[Any]], list[list[Any]]]:
        """(source content, target content), each read on its own host at the same time."""
        with ThreadPoolExecutor(2) as pool:
            src = pool.submit(self.content, SRC, TABLE, *partitions)
            dst = pool.submit(self.content, DST, target, *partitions)
            return src.result(), dst.result()

    def load_source(self, scale: float, label: str) -> object:
        self._source_content.clear()
        return self.hostcmd("src", "load", SRC, TABLE, str(scale), label)

    # -- processes -----------------------------------------------------------------------
    def transfer_name(self, host: str, backend: str | None = None) -> str:
        return f"transfer.{host}" + (f".{backend}" if backend else "")

    def start_src_transfer(self, backend: str) -> Proc:
        port = SRC_PORTS[backend]
        args = [sys.executable, "-m", "frontends.cli", "transfer", "serve", "--cluster", SRC,
                "--backend", backend, "--listen", f"{self.src.address}:{port}"]  # fmt: skip
        address = self.src.address
        return self.procs.on(
            self.src, self.transfer_name("src", backend), args, self.env("src", backend),
            lambda _p: tcp_answers(address, port),
        )  # fmt: skip

    def start_dst_transfer(self) -> Proc:
        args = [sys.executable, "-m", "frontends.cli", "transfer", "serve", "--cluster", DST,
                "--listen", f"{self.dst.address}:{DST_PORT}"]  # fmt: skip
        address = self.dst.address
        return self.procs.on(
            self.dst, self.transfer_name("dst"), args, self.env("dst"),
            lambda _p: tcp_answers(address, DST_PORT),
        )  # fmt: skip

    def start_worker(self, host: str, backend: str) -> Proc:
        cluster = SRC if host == "src" else DST
        queue = queue_name(cluster, backend)
        conc = self.config.dst_concurrency if host == "dst" else 1
        argv = backend_worker_argv(queue, f"{queue}@%h", conc, QUIET)
        return self.procs.on(self.net.hosts[host], queue, argv, self.env(host, backend))

    def start_lake_worker(self, backend: str) -> Proc:
        queue = queue_name(LAKE, backend)
        argv = backend_worker_argv(queue, f"{queue}@%h", 1, QUIET)
        return self.procs.on(self.dst, queue, argv, self.env("dst", backend))

    def start_coordinator(self) -> Proc:
        argv = coordinator_argv("coordinator@%h", 2, str(self.base / "beat-schedule"), QUIET)
        return self.procs.on(self.coord, "coordinator", argv, self.env("coord"))

    def restart(self, names: Sequence[str], timeout: float = 90) -> None:
        for n in names:
            self.procs.kill(n)
        for n in names:
            proc = self.procs.procs[n]
            if n.startswith("transfer.src."):
                self.start_src_transfer(n.rsplit(".", 1)[1])
            elif n == "transfer.dst":
                self.start_dst_transfer()
            elif n.startswith(f"be.{LAKE}."):
                self.start_lake_worker(n.rsplit(".", 1)[1])
            elif n.startswith("be."):
                _, cluster, backend = n.split(".")
                self.start_worker("src" if cluster == SRC else "dst", backend)
            else:
                self.procs.start(proc)
        self.procs.wait_ready(timeout, list(names))

    def configure(self, **changes: object) -> None:
        """Change the settings of the affected processes (restarting only those)."""
        new = Config(**{**self.config.__dict__, **changes})
        if new == self.config:
            self.ensure_running()
            return
        old, self.config = self.config, new
        names: list[str] = []
        if new.serving_cap != old.serving_cap:
            names += [self.transfer_name("src", b) for b in BACKENDS]
        if new.bandwidth != old.bandwidth or new.dst_concurrency != old.dst_concurrency:
            names += [queue_name(DST, b) for b in BACKENDS]
        self.restart(names)
        self.ensure_running()

    def ensure_running(self) -> None:
        dead = [n for n, p in self.procs.procs.items() if not p.running]
        if dead:
            self.restart(dead)

    def log(self, name: str) -> str:
        return self.procs.procs[name].log.read_text(errors="replace")

    # -- catalogs ------------------------------------------------------------------------
    def scalar(self, cluster: str, sql: str, **params: object) -> object:
        with self.replicator.cluster(cluster).catalog.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar_one()

    def rows(self, cluster: str, sql: str, **params: object) -> list[sa.Row[tuple[object, ...]]]:
        with self.replicator.cluster(cluster).catalog.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def target_tables(self, names: Sequence[str], buckets: int, replicas: int) -> list[str]:
        """Target tables shaped like the source table, created on the target host."""
        full = [f"tpch.{n}" for n in names]
        self.hostcmd("dst", "lineitem", DST, str(buckets), str(replicas), *full)
        return full


def _stop_quietly(what: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as exc:  # clean-up goes on whatever fails
        print(f"multihost clean-up: {what}: {exc}", file=sys.stderr)


@pytest.fixture(scope="session")
def mh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiHost]:
    if os.geteuid() != 0 or shutil.which("nsenter") is None or shutil.which("ip") is None:
        pytest.skip("the multi-host suite needs root, ip and nsenter (network namespaces)")
    base = tmp_path_factory.mktemp("multihost")
    net = Net()
    pg: BridgePostgres | None = None
    redis: RedisServer | None = None
    procs: HostProcs | None = None
    store: SeaweedServer | None = None
    try:
        net.create(["src", "dst", "coord"])
        assert net.subnet is not None
        pg = BridgePostgres(net.gateway, str(net.subnet))
        pg.init()
        redis = RedisServer(base / "redis", bind=net.gateway).start()
        store = SeaweedServer(base / "seaweed", bind=net.gateway).start()
        store.make_bucket("lake")
        pki = tls.make_dev_pki(
            base / "pki",
            {
                SRC: {b: [net.hosts["src"].address] for b in BACKENDS},
                DST: {b: [net.hosts["dst"].address] for b in BACKENDS},
            },
        )
        keys = {c: secrets.token_hex(32) for c in (SRC, DST)}
        dsn_template = f"{pg.bridge_url}/olap_{{cluster}}"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
        base_env |= {
            "REPLICATOR_DSN_TEMPLATE": dsn_template,
            "REPLICATOR_BROKER_URL": redis.url,
            "REPLICATOR_COORDINATOR_CLUSTERS": f"{SRC},{DST},{LAKE}",
            "REPLICATOR_COORDINATOR_TICK_SEC": "0.5",
            "REPLICATOR_TASK_LEASE_SEC": "20",
            # Small messages, so that four apply processes share a job's tablets.
            "REPLICATOR_TABLETS_PER_MESSAGE": "4",
            "PYTHONUNBUFFERED": "1",
        }
        base_env |= store.env()  # the store's endpoint and keys, for every process
        settings = Settings(broker_url=redis.url, dsn_template=dsn_template)
        from workers.nudge import notifier

        replicator = Replicator(settings, notifier(settings))
        procs = HostProcs(base_env, base / "logs")
        rig = MultiHost(
            net, pg, redis, pki, keys, base_env, procs, settings, replicator, base, store
        )
        _init_clusters(rig)
        for b in BACKENDS:
            rig.start_src_transfer(b)
            rig.start_worker("src", b)
            rig.start_worker("dst", b)
            rig.start_lake_worker(b)
        rig.start_dst_transfer()
        rig.start_coordinator()
        procs.wait_ready(120)
        yield rig
    finally:
        if procs is not None:
            _stop_quietly("processes", procs.stop_all)
        dispose_all()
        if redis is not None:
            _stop_quietly("redis", redis.stop)
        if store is not None:
            _stop_quietly("seaweedfs", store.stop)
        if pg is not None:
            _stop_quietly("postgres", pg.destroy)
        _stop_quietly("namespaces", net.destroy)


def _init_clusters(rig: MultiHost) -> None:
    """``cluster init``, ``backend add``, the source table and its load, each run on the host
    whose storage it writes."""
    t0 = time.monotonic()
    # Generated in the root namespace (input data, not storage): cached under bench/out/data.
    from frontends.tpch import lineitem_files

    lineitem_files(SCALE)
    lineitem_files(INCREMENT_SCALE)

    def target_side() -> None:
        rig.cli("dst", "cluster", "init", DST)
        for b in BACKENDS:
            url = f"https://{rig.dst.address}:{DST_PORT}"
            rig.cli("dst", "backend", "add", DST, b, "--storage", rig.root("dst", b),
                    "--transfer-url", url)  # fmt: skip
        rig.cli("dst", "cluster", "init", LAKE)
        for b in BACKENDS:  # the endpoint comes from AWS_ENDPOINT_URL, and is recorded
            rig.cli("dst", "backend", "add", LAKE, b, "--storage", f"s3://lake/{b}")

    with ThreadPoolExecutor(1) as pool:
        dst_done = pool.submit(target_side)
        rig.cli("src", "cluster", "init", SRC)
        for b in BACKENDS:
            url = f"https://{rig.src.address}:{SRC_PORTS[b]}"
            rig.cli("src", "backend", "add", SRC, b, "--storage", rig.root("src", b),
                    "--transfer-url", url)  # fmt: skip
        rig.hostcmd("src", "lineitem", SRC, "4", "2", TABLE)
        loaded = rig.load_source(SCALE, "sf-main")
        dst_done.result()
    record("setup", init_and_load_sec=round(time.monotonic() - t0, 1), load=loaded)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "multihost: needs root and network namespaces")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "multihost" in str(item.fspath):
            item.add_marker(pytest.mark.multihost)


__all__ = [
    "BACKENDS", "DST", "LAKE", "SRC", "TABLE", "MultiHost", "free_port", "record", "subprocess",
]  # fmt: skip
