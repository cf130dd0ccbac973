"""Replication across hosts against the link's limit: network namespaces, mutual TLS.

    .venv/bin/python -m bench.transfer [--quick] [--scale SF] [--rounds N] [--results PATH]
    (make bench-transfer; needs root, ip, nsenter, curl, rsync)

Three hosts made of network namespaces with private tmpfs storage (frontends/netns.py), on a
bridge to the run's own Postgres and Redis (root namespace):

    src    source backends be1, be2: their Celery workers, a transfer server each (HTTPS :8471,
           :8472, clients must present a certificate of the target cluster's CA) and, for the
           rsync baseline only, an rsync daemon (one read-only module per backend root)
    dst    target backends be1, be2: their Celery workers (apply), ``--apply`` processes each
    coord  the coordinator (2 processes + beat)

The source table is TPC-H lineitem (4 partitions x 16 buckets, 1 replica, loaded on the source
host in ``--parts`` transactions). Each round measures, on the same files:

  curl   the source's table files fetched from the same transfer servers by as many parallel
         ``curl`` processes (run on dst, with the target's client certificate) as the target
         has apply processes, each over one kept-alive connection per server, with a token
         minted for its share of the files (holds for a bench owner placed on their rowsets
         first, released after): the link's limit for this service.
  rsync  ``rsync -a`` from the dst host pulling the same tablet directories from the daemon
         (one client per backend module, in parallel; no TLS).
  rsync-tls  the same through mutual TLS (when socat is installed): socat on src terminates
         TLS in front of the daemon with the source's server certificate, socat on dst carries
         the clients' connections with the target's client certificate. The job must encrypt;
         plain rsync does not, so this is the like-for-like "faster than rsync".
  bulk   a full replication job src -> dst, submit -> COMMITTED, into a fresh target table;
         then the target's per-partition checksums and the (size, xxh3) of every file are
         compared with the source's, each computed on its own host.

The best of ``--rounds`` is reported for each. CPU seconds come from /proc/<pid>/stat
(utime+stime, children included) of the processes of each side: source = transfer servers +
source workers (rsync: the daemon), target = target workers (curl/rsync: the client processes).
The table is printed and written to the "Across hosts" section of bench/RESULTS.md (kept after
the other benchmarks' sections); raw results are appended to bench/out/transfer.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.catalog import model
from app.catalog.engine import dispose_all
from app.client import Replicator
from app.config import Settings
from app.queues import queue_name
from app.storage import holds
from app.transfer import tls, tokens
from app.transfer.service import KEY_ID
from bench.common import (
    BENCH_DIR,
    OUT_DIR,
    PrivatePostgres,
    lineitem_files,
    machine_info,
    parquet_rows,
    write_section,
)
from bench.run import CpuMeter, GiB, _proc_tree, apply_bytes, log, phases, proc_cpu, wait_jobs
from frontends.connect import replicator
from frontends.netns import Host, HostProcs, Net, tcp_answers
from frontends.servers import RedisServer
from frontends.supervise import QUIET, Proc
from workers.commands import backend_worker_argv, coordinator_argv

MB = 1024 * 1024
SRC, DST = "xbsrc", "xbdst"
BACKENDS = ("be1", "be2")
SRC_PORTS = {"be1": 8471, "be2": 8472}
RSYNC_PORT = 8873
RSYNC_TLS_PORT = 8874  # the daemon behind socat's mutual TLS (_tls_tunnel)
TABLE = "tpch.lineitem"
WARM = "tpch.warmup"
BUCKETS = 16
SECTION = "## Across hosts (network namespaces, TLS)"


# -- the run's own Postgres and Redis, reachable from the hosts over the bridge ----------------


class BridgePostgres(PrivatePostgres):
    """bench.common's private Postgres, listening on the bridge too, trusting its subnet."""

    def __init__(self, workdir: Path, address: str, subnet: str) -> None:
        super().__init__(workdir, max_connections=300)
        self.address = address
        self.subnet = subnet

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}"

    def start(self) -> BridgePostgres:
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.workdir, "postgres", "postgres")
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync"]  # fmt: skip
        subprocess.run(self._as_owner(initdb), check=True, capture_output=True)
        with open(self.data / "pg_hba.conf", "a") as f:
            f.write(f"host all all {self.subnet} trust\n")
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1,{self.address} "
            f"-c max_connections={self.max_connections} -c unix_socket_directories={self.workdir} "
            "-c fsync=on -c synchronous_commit=on -c shared_buffers=128MB"
        )
        pg_ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.workdir / "postgres.log"), "-o", opts, "-w", "start"]  # fmt: skip
        subprocess.run(self._as_owner(pg_ctl), check=True, capture_output=True)
        return self


# -- the rig -------------------------------------------------------------------------------------


@dataclass
class Rig:
    run_id: str
    base: Path
    net: Net
    pki: dict[str, tls.ClusterPki]
    keys: dict[str, str]
    base_env: dict[str, str]
    procs: HostProcs
    settings: Settings
    replicator: Replicator
    apply_per_backend: int

    @property
    def src(self) -> Host:
        return self.net.hosts["src"]

    @property
    def dst(self) -> Host:
        return self.net.hosts["dst"]

    def root(self, host: str, backend: str) -> str:
        return f"{self.net.mount_dir}/{host}/{backend}"

    def env(self, host: str, backend: str = "be1") -> dict[str, str]:
        """A host's process sees only its own cluster's secret, the peer cluster's CA, its own
        certificates (as in tests/multihost)."""
        env = dict(self.base_env)
        if host == "coord":
            return env
        cluster, peer = (SRC, DST) if host == "src" else (DST, SRC)
        certs = self.pki[cluster].backends[backend]
        env |= {
            f"REPLICATOR_CLUSTER_{cluster.upper()}_TRANSFER_SECRET": self.keys[cluster],
            "REPLICATOR_TRANSFER_MODE": "https",
            "REPLICATOR_TRANSFER_CA_FILE": str(self.pki[peer].ca_cert),
            "REPLICATOR_TRANSFER_CERT_FILE": str(certs.server_cert),
            "REPLICATOR_TRANSFER_KEY_FILE": str(certs.server_key),
            "REPLICATOR_TRANSFER_CLIENT_CERT_FILE": str(certs.client_cert),
            "REPLICATOR_TRANSFER_CLIENT_KEY_FILE": str(certs.client_key),
            "REPLICATOR_TRANSFER_CLIENT_CA_FILE": str(self.pki[peer].ca_cert),
        }
        return env

    def onhost(self, host: str, *args: str, timeout: float = 900) -> Any:
        res = self.net.hosts[host].run(
            [sys.executable, "-m", "bench.onhost", *args], self.env(host), timeout=timeout
        )
        return json.loads(res.stdout.strip().splitlines()[-1])

    def group(self, prefix: str) -> list[Proc]:
        return [p for n, p in self.procs.procs.items() if n.startswith(prefix)]


@contextlib.contextmanager
def rig(apply_per_backend: int, tablets_per_message: int) -> Iterator[Rig]:
    run_id = f"{time.strftime('%m%d%H%M%S')}_{secrets.token_hex(2)}"
    base = OUT_DIR / "xbench" / run_id
    with contextlib.ExitStack() as stack:
        net = Net()
        stack.callback(net.destroy)
        net.create(["src", "dst", "coord"])
        assert net.subnet is not None
        pg_dir = Path(tempfile.mkdtemp(prefix="olap-xbench-pg-"))
        pg = BridgePostgres(pg_dir, net.gateway, str(net.subnet))
        stack.callback(pg.stop)
        pg.start()
        redis = RedisServer(base / "redis", bind=net.gateway)
        stack.callback(redis.stop)
        redis.start()
        stack.callback(dispose_all)
        hosts = {c: net.hosts[h].address for c, h in ((SRC, "src"), (DST, "dst"))}
        pki = tls.make_dev_pki(
            base / "pki", {c: {b: [addr] for b in BACKENDS} for c, addr in hosts.items()}
        )
        keys = {c: secrets.token_hex(32) for c in (SRC, DST)}
        dsn_template = f"{pg.url}/olap_{{cluster}}"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
        base_env |= {
            "REPLICATOR_DSN_TEMPLATE": dsn_template,
            "REPLICATOR_BROKER_URL": redis.url,
            "REPLICATOR_COORDINATOR_CLUSTERS": f"{SRC},{DST}",
            # 64 tablets in small messages: every apply process of the target gets a share,
            # and a process that finishes early takes the next message (the default, 256,
            # would give each target backend one message, i.e. one busy apply process).
            "REPLICATOR_TABLETS_PER_MESSAGE": str(tablets_per_message),
            "PYTHONUNBUFFERED": "1",
        }
        settings = Settings(broker_url=redis.url, dsn_template=dsn_template)
        procs = HostProcs(base_env, base / "logs")
        stack.callback(procs.stop_all)
        yield Rig(
            run_id, base, net, pki, keys, base_env, procs, settings, replicator(settings),
            apply_per_backend,
        )  # fmt: skip


def start_processes(r: Rig) -> None:
    for b in BACKENDS:
        port = SRC_PORTS[b]
        args = [sys.executable, "-m", "frontends.cli", "transfer", "serve", "--cluster", SRC,
                "--backend", b, "--listen", f"{r.src.address}:{port}"]  # fmt: skip
        address = r.src.address
        r.procs.on(
            r.src, f"transfer.src.{b}", args, r.env("src", b),
            lambda _p, a=address, p=port: tcp_answers(a, p),  # type: ignore[misc]
        )  # fmt: skip
        for host, cluster, conc in (("src", SRC, 1), ("dst", DST, r.apply_per_backend)):
            queue = queue_name(cluster, b)
            argv = backend_worker_argv(queue, f"{queue}@%h", conc, QUIET)
            r.procs.on(r.net.hosts[host], f"worker.{host}.{b}", argv, r.env(host, b))
    argv = coordinator_argv("coordinator@%h", 2, str(r.base / "beat-schedule"), QUIET)
    r.procs.on(r.net.hosts["coord"], "coordinator", argv, r.env("coord"))
    conf = r.base / "rsyncd.conf"
    conf.write_text(
        "use chroot = no\nuid = root\ngid = root\nread only = yes\n"
        + "".join(f"[{b}]\n  path = {r.root('src', b)}\n  read only = yes\n" for b in BACKENDS)
    )
    args = ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--address={r.src.address}",
            f"--port={RSYNC_PORT}", f"--log-file={r.base / 'logs' / 'rsyncd.log'}"]  # fmt: skip
    address = r.src.address
    r.procs.on(r.src, "rsyncd", args, r.env("src"), lambda _p: tcp_answers(address, RSYNC_PORT))
    if shutil.which("socat"):
        _tls_tunnel(r)
    r.procs.wait_ready(120)


def _tls_tunnel(r: Rig) -> None:
    """The rsync daemon behind mutual TLS, as the transfer servers are: socat on src terminates
    TLS (the source's server certificate, the target's CA) in front of the daemon; socat on dst
    offers plain rsync on the dst host's address and carries it over TLS (the target's client
    certificate, the source's CA). The fair baseline for "faster than rsync" with TLS on."""
    src_cert, dst_cert = r.pki[SRC].backends["be1"], r.pki[DST].backends["be1"]
    listen = (f"OPENSSL-LISTEN:{RSYNC_TLS_PORT},bind={r.src.address},reuseaddr,fork,"
              f"cert={src_cert.server_cert},key={src_cert.server_key},"
              f"cafile={r.pki[DST].ca_cert},verify=1")  # fmt: skip
    r.procs.on(r.src, "rsync-tls.src", ["socat", listen, f"TCP:{r.src.address}:{RSYNC_PORT}"],
               r.env("src"), lambda _p: tcp_answers(r.src.address, RSYNC_TLS_PORT))  # fmt: skip
    connect = (f"OPENSSL:{r.src.address}:{RSYNC_TLS_PORT},cert={dst_cert.client_cert},"
               f"key={dst_cert.client_key},cafile={r.pki[SRC].ca_cert},verify=1,"
               f"commonname={r.src.address}")  # fmt: skip
    local = f"TCP-LISTEN:{RSYNC_TLS_PORT},bind={r.dst.address},reuseaddr,fork"
    r.procs.on(r.dst, "rsync-tls.dst", ["socat", local, connect], r.env("dst"),
               lambda _p: tcp_answers(r.dst.address, RSYNC_TLS_PORT))  # fmt: skip


def setup_clusters(r: Rig, files: Sequence[Path], warm_files: Sequence[Path]) -> dict[str, Any]:
    """Catalogs, backends and tables, each made on the host whose storage it writes; a warm-up
    job (so that no timed job pays for a worker's first contact with a catalog), then the
    source loads, two at a time."""

    def side(host: str, cluster: str, urls: dict[str, str]) -> None:
        specs = [f"{b}={r.root(host, b)}={urls[b]}" for b in BACKENDS]
        r.onhost(host, "init", cluster, *specs)
        r.onhost(host, "lineitem", cluster, WARM, "4", "1")

    src_urls = {b: f"https://{r.src.address}:{SRC_PORTS[b]}" for b in BACKENDS}
    dst_urls = {b: f"https://{r.dst.address}:8471" for b in BACKENDS}  # nothing serves there
    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(side, "src", SRC, src_urls), pool.submit(side, "dst", DST, dst_urls)]
        for f in done:
            f.result()
    r.onhost("src", "lineitem", SRC, TABLE, str(BUCKETS), "1")
    start_processes(r)
    r.onhost("src", "load", SRC, WARM, "warm", *map(str, warm_files))
    job = r.replicator.replicate(f"{SRC}:{WARM}", f"{DST}:{WARM}")
    _, states = wait_jobs([job], 180)
    if states[job.id] != "COMMITTED":
        raise RuntimeError(f"warm-up job {job.ref} ended {states[job.id]}: {job.refresh().message}")
    log(f"warm-up job committed; loading {len(files)} parts on the source host (2 at a time)")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        loads = [
            pool.submit(r.onhost, "src", "load", SRC, TABLE, f"bulk-{i}", str(f))
            for i, f in enumerate(files)
        ]
        rows = sum(int(f.result()["rows"]) for f in loads)
    return {"rows": rows, "load_seconds": round(time.perf_counter() - t0, 1)}


# -- the source's files -----------------------------------------------------------------------


@dataclass(frozen=True)
class SrcFile:
    backend: str
    tablet: int
    rowset: str
    name: str
    size: int


def source_files(r: Rig) -> list[SrcFile]:
    handle = r.replicator.cluster(SRC)
    with handle.catalog.engine.connect() as conn:
        table = model.get_table(conn, TABLE)
        tablets = model.list_tablets(conn, table.id)
        backends = model.list_backends(conn)
        rowsets = model.visible_rowsets(conn, [t.id for t in tablets])
    return [
        SrcFile(backends[b].name, t.id, rs.id, f["name"], int(f["size"]))
        for t in tablets
        for b in t.backend_ids
        for rs in rowsets[t.id]
        for f in rs.files
    ]


def balanced(files: Sequence[SrcFile], n: int) -> list[list[SrcFile]]:
    """``n`` lists of about equal bytes (largest first into the lightest list)."""
    groups: list[list[SrcFile]] = [[] for _ in range(n)]
    sizes = [0] * n
    for f in sorted(files, key=lambda f: -f.size):
        i = sizes.index(min(sizes))
        groups[i].append(f)
        sizes[i] += f.size
    return [g for g in groups if g]


# -- CPU of each side ---------------------------------------------------------------------------


def children_cpu() -> float:
    """CPU seconds of this process' waited-for children (curl, rsync clients, nsenter)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _tree_delta(procs: Sequence[Proc]) -> Callable[[], float]:
    pids = _proc_tree(procs)
    before = {pid: proc_cpu(pid) for pid in pids()}
    return lambda: sum(proc_cpu(pid) - before.get(pid, 0.0) for pid in pids())


def disk_bytes(host: Host, path: str) -> int:
    out = host.run(["find", path, "-type", "f", "-printf", "%s\\n"]).stdout
    return sum(int(x) for x in out.split())


# -- the three ways -----------------------------------------------------------------------------


def _curl_argvs(
    r: Rig, files: Sequence[SrcFile], parallel: int, tag: str, owner: str, out_dir: str
) -> list[list[str]]:
    """One curl command per share of the files, each with a token naming its share."""
    secret = Settings(transfer_secrets={SRC: r.keys[SRC]}).transfer_secret(SRC)
    client = r.pki[DST].backends["be1"]
    argvs = []
    for i, group in enumerate(balanced(files, parallel)):
        grant = tokens.Grant(SRC, DST, 1, owner, int(time.time()) + 3600,
                             tuple((f.tablet, f.rowset, f.name) for f in group))  # fmt: skip
        token = tokens.mint(secret, grant, key_id=KEY_ID)
        lines = [f'header = "Authorization: Bearer {token}"']
        for f in group:
            port = SRC_PORTS[f.backend]
            lines.append(
                f'url = "https://{r.src.address}:{port}/v1/{f.backend}/{f.tablet}/'
                f'{f.rowset}/{f.name}"'
            )
            lines.append(f'output = "{out_dir}/{i}/{f.tablet}/{f.rowset}/{f.name}"')
        conf = r.base / f"curl-{tag}-{i}.conf"
        conf.write_text("\n".join(lines) + "\n")
        argvs.append(
            r.dst.argv(
                [
                    "curl",
                    "-sS",
                    "--fail",
                    "--create-dirs",
                    "--cacert",
                    str(r.pki[SRC].ca_cert),
                    "--cert",
                    str(client.client_cert),
                    "--key",
                    str(client.client_key),
                    "-K",
                    str(conf),
                ]
            )
        )
    return argvs


def run_curl(r: Rig, files: Sequence[SrcFile], parallel: int, tag: str) -> dict[str, Any]:
    owner = f"bench:curl:{r.run_id}:{tag}"
    src = r.replicator.cluster(SRC)
    with src.catalog.engine.begin() as conn:
        holds.place(conn, sorted({f.rowset for f in files}), owner, 3600)
    out_dir = f"{r.net.mount_dir}/dst/curl-{tag}"
    try:
        argvs = _curl_argvs(r, files, parallel, tag, owner, out_dir)
        servers = _tree_delta(r.group("transfer.src."))
        clients0 = children_cpu()
        t0 = time.perf_counter()
        popens = [subprocess.Popen(a, stderr=subprocess.PIPE) for a in argvs]
        errors = [p.communicate()[1].decode(errors="replace") for p in popens]
        seconds = time.perf_counter() - t0
        cpu_target = children_cpu() - clients0
        cpu_source = servers()
        bad = [
            (p.returncode, e[-500:]) for p, e in zip(popens, errors, strict=True) if p.returncode
        ]
        if bad:
            raise RuntimeError(f"curl failed: {bad}")
        got = disk_bytes(r.dst, out_dir)
    finally:
        with src.catalog.engine.begin() as conn:
            holds.release(conn, owner)
        r.dst.run(["rm", "-rf", out_dir], check=False)
    want = sum(f.size for f in files)
    if got != want:
        raise RuntimeError(f"curl wrote {got} bytes, expected {want}")
    return {"way": "curl", "seconds": seconds, "bytes": got, "processes": len(argvs),
            "cpu_source": cpu_source, "cpu_target": cpu_target}  # fmt: skip


def run_rsync(r: Rig, files: Sequence[SrcFile], tag: str, tls: bool = False) -> dict[str, Any]:
    """rsync -a of the tablet directories from the daemon; with ``tls``, through the tunnel
    (its socat processes count as the source's and the target's CPU)."""
    out_dir = f"{r.net.mount_dir}/dst/rsync-{tag}"
    where = f"{r.dst.address}:{RSYNC_TLS_PORT}" if tls else f"{r.src.address}:{RSYNC_PORT}"
    argvs = []
    for b in BACKENDS:
        tablets = sorted({f.tablet for f in files if f.backend == b})
        if not tablets:
            continue
        sources = [f"rsync://{where}/{b}/data/{t}" for t in tablets]
        r.dst.run(["mkdir", "-p", f"{out_dir}/{b}"])
        argvs.append(r.dst.argv(["rsync", "-a", *sources, f"{out_dir}/{b}/"]))
    daemon = _tree_delta(r.group("rsyncd") + (r.group("rsync-tls.src") if tls else []))
    tunnel = _tree_delta(r.group("rsync-tls.dst") if tls else [])
    clients0 = children_cpu()
    try:
        t0 = time.perf_counter()
        popens = [subprocess.Popen(a, stderr=subprocess.PIPE) for a in argvs]
        errors = [p.communicate()[1].decode(errors="replace") for p in popens]
        seconds = time.perf_counter() - t0
        cpu_target = children_cpu() - clients0
        time.sleep(0.2)  # the daemon reaps its connection children
        cpu_source = daemon()
        cpu_target += tunnel()
        bad = [
            (p.returncode, e[-500:]) for p, e in zip(popens, errors, strict=True) if p.returncode
        ]
        if bad:
            raise RuntimeError(f"rsync failed: {bad}")
        got = disk_bytes(r.dst, out_dir)
    finally:
        r.dst.run(["rm", "-rf", out_dir], check=False)
    want = sum(f.size for f in files)
    if got != want:
        raise RuntimeError(f"rsync wrote {got} bytes, expected {want}")
    way = "rsync-tls" if tls else "rsync"
    return {"way": way, "seconds": seconds, "bytes": got, "processes": len(argvs),
            "cpu_source": cpu_source, "cpu_target": cpu_target}  # fmt: skip


def run_bulk(r: Rig, target: str, want_bytes: int) -> dict[str, Any]:
    r.onhost("dst", "lineitem", DST, target, str(BUCKETS), "1")
    source = _tree_delta(r.group("transfer.src.") + r.group("worker.src."))
    target_cpu = _tree_delta(r.group("worker.dst."))
    coord = CpuMeter({"coordinator": _proc_tree(r.group("coordinator"))})
    wall = time.time()
    t0 = time.perf_counter()
    job = r.replicator.replicate(f"{SRC}:{TABLE}", f"{DST}:{target}")
    t1, states = wait_jobs([job], 900)
    seconds = t1 - t0
    time.sleep(0.3)  # the last nudge tick
    cpu_source, cpu_target = source(), target_cpu()
    cpu_coord = coord.read()
    job.refresh()
    if states[job.id] != "COMMITTED":
        raise RuntimeError(f"job {job.ref} ended {states[job.id]}: {job.message}")
    done, total = apply_bytes(r.replicator.cluster(DST), job.id)
    with ThreadPoolExecutor(4) as pool:
        sums = [pool.submit(r.onhost, h, "checksum", c, t)
                for h, c, t in (("src", SRC, TABLE), ("dst", DST, target))]  # fmt: skip
        digests = [pool.submit(r.onhost, h, "digests", c, t)
                   for h, c, t in (("src", SRC, TABLE), ("dst", DST, target))]  # fmt: skip
        (src_sum, dst_sum), (src_dig, dst_dig) = (
            [x.result() for x in sums],
            [x.result() for x in digests],
        )
    same_checksums = src_sum == dst_sum
    same_files = src_dig == dst_dig and len(src_dig) > 0
    if not (same_checksums and same_files):
        raise RuntimeError(
            f"{DST}:{target} differs from {SRC}:{TABLE}: checksums equal {same_checksums}, "
            f"files equal {same_files}"
        )
    return {
        "way": "bulk", "job": job.ref, "seconds": seconds, "bytes": total,
        "apply_bytes_verified": done, "expected_bytes": want_bytes,
        "processes": len(BACKENDS) * r.apply_per_backend,
        "cpu_source": cpu_source, "cpu_target": cpu_target,
        "cpu_coordinator": cpu_coord["coordinator"],
        "verified_files": len(dst_dig), "verified_bytes": sum(s for s, _ in dst_dig),
        "partitions_checked": len(dst_sum),
        "phases": phases(r.replicator.cluster(DST), job.id, wall),
    }  # fmt: skip


# -- the report -----------------------------------------------------------------------------------


def _ways(r: Rig) -> tuple[str, ...]:
    tls = ("rsync-tls",) if r.group("rsync-tls") else ()  # socat present: rsync through TLS
    return ("curl", "rsync", *tls, "bulk")


def _run_way(
    r: Rig, way: str, files: Sequence[SrcFile], parallel: int, tag: str, nbytes: int
) -> dict[str, Any]:
    if way == "curl":
        return run_curl(r, files, parallel, tag)
    if way.startswith("rsync"):
        return run_rsync(r, files, tag, tls=way == "rsync-tls")
    return run_bulk(r, f"tpch.lineitem_{tag}", nbytes)


def per_gib(cpu: float, nbytes: int) -> float:
    return cpu / (nbytes / GiB)


def best(results: Sequence[dict[str, Any]], way: str) -> dict[str, Any]:
    return min((x for x in results if x["way"] == way), key=lambda x: x["seconds"])


def table(results: Sequence[dict[str, Any]], info: dict[str, Any]) -> list[str]:
    curl, rsync, bulk = best(results, "curl"), best(results, "rsync"), best(results, "bulk")
    rows = [
        "| way | best time | MB/s | vs curl | source CPU s/GiB | target CPU s/GiB | runs (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    labels = {
        "bulk": f"replication job (submit → COMMITTED, {bulk['processes']} apply processes, "
        f"messages of {info.get('tpm', '?')} tablets, xxh3 of every byte)",
        "curl": f"curl, {curl['processes']} in parallel (HTTPS, mutual TLS, same servers)",
        "rsync": f"rsync -a from rsync daemon, {rsync['processes']} in parallel (no TLS)",
        "rsync-tls": f"the same rsync through mutual TLS (socat at both ends), "
        f"{rsync['processes']} in parallel",
    }
    tunnelled = (
        [best(results, "rsync-tls")] if any(x["way"] == "rsync-tls" for x in results) else []
    )
    for x in (bulk, curl, rsync, *tunnelled):
        runs = " ".join(f"{y['seconds']:.2f}" for y in results if y["way"] == x["way"])
        rows.append(
            f"| {labels[x['way']]} | {x['seconds']:.2f} s | {x['bytes'] / MB / x['seconds']:.0f} "
            f"| {x['seconds'] / curl['seconds']:.2f}x | {per_gib(x['cpu_source'], x['bytes']):.2f} "
            f"| {per_gib(x['cpu_target'], x['bytes']):.2f} | {runs} |"
        )
    r_curl = bulk["seconds"] / curl["seconds"]
    r_rsync = bulk["seconds"] / rsync["seconds"]
    ok_bytes = bulk["apply_bytes_verified"] == bulk["bytes"] == bulk["verified_bytes"]
    start = float(bulk["phases"].get("REPLICATING", 0.0))
    moving = float(bulk["phases"].get("COMMITTED", bulk["seconds"])) - start

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    rows += [
        "",
        "| target | measured | met? |",
        "| --- | --- | --- |",
        f"| bulk ≤ 1.2x curl | {r_curl:.2f}x curl | {met(r_curl <= 1.2)} |",
        f"| bulk faster than rsync | {r_rsync:.2f}x rsync | {met(r_rsync < 1)} |",
        *(
            f"| bulk faster than rsync with TLS on too | "
            f"{bulk['seconds'] / t['seconds']:.2f}x rsync through TLS | "
            f"{met(bulk['seconds'] < t['seconds'])} |"
            for t in tunnelled
        ),
        f"| (where the bulk time goes) | submit → last snapshot taken (REPLICATING; the beat's "
        f"tick may start applies before) {start:.2f} s, REPLICATING → COMMITTED {moving:.2f} s"
        f" | — |",
        f"| every byte checksummed | {bulk['apply_bytes_verified']:,} of {bulk['bytes']:,} bytes "
        f"verified by apply (xxh3); target's {bulk['verified_files']} files equal the source's "
        f"(size + xxh3, on each host) and {bulk['partitions_checked']} partition checksums "
        f"equal | {met(ok_bytes)} |",
        f"| bulk ≥ 1 GiB | {bulk['bytes'] / GiB:.2f} GiB in {info['files']} files "
        f"({info['rows']:,} rows, SF {info['scale']:g}) | {met(bulk['bytes'] >= GiB)} |",
    ]
    return rows


def section(results: Sequence[dict[str, Any]], info: dict[str, Any], machine: dict[str, str],
            argv: Sequence[str]) -> str:  # fmt: skip
    lines = [
        SECTION,
        "",
        f"`{' '.join(['.venv/bin/python -m bench.transfer', *argv])}` (`make bench-transfer`) — "
        f"run `{info['run_id']}`, {machine.get('date', '')}, best of {info['rounds']} rounds, "
        f"total {info['total_seconds'] / 60:.1f} min.",
        "",
        "Hosts are network namespaces on one machine (`src`, `dst`, `coord`, each with a private "
        "tmpfs for its storage roots) joined by veth pairs through a bridge, where the run's own "
        "Postgres and Redis listen. The source's two backends each have a transfer server "
        "(aiohttp, HTTPS, mutual TLS: a CA per cluster); the target's apply tasks download with "
        "a per-task token. curl fetches the same files from the same servers with the target's "
        "client certificate; rsync pulls the same tablet directories from an rsync daemon on "
        "`src`, once in the clear and once through mutual TLS (socat at both ends, the same "
        "certificates). CPU: source = transfer servers + source workers (rsync: its daemon and "
        "the src socat), target = target workers (curl, rsync: the clients and the dst socat); "
        "utime+stime from /proc, children included. MB = 2^20 bytes.",
        "",
        *table(results, info),
        "",
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('ram')} RAM, "
        f"kernel {machine.get('kernel')}, Python {machine.get('python')}, "
        f"{machine.get('postgres')}, {machine.get('rsync')}, {machine.get('curl')}, load average "
        f"at start {machine.get('load')}; commit {machine.get('commit')}.",
        "",
        "Raw results:",
        "",
        "```",
        *[json.dumps(x, default=str) for x in results],
        "```",
        "",
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def _raise_on_term(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def preflight() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench.transfer needs root (network namespaces, mounts)")
    missing = [t for t in ("ip", "nsenter", "unshare", "curl", "rsync") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"bench.transfer needs {', '.join(missing)} (apt-get install ...)")


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="SF 0.3 in 2 parts, 1 round: a smoke run")
    ap.add_argument("--scale", type=float, default=5.0, help="TPC-H scale factor (5: ~1.2 GiB)")
    ap.add_argument("--parts", type=int, default=5, help="source loads (rowsets per tablet)")
    ap.add_argument("--rounds", type=int, default=3, help="curl, rsync, bulk this many times")
    ap.add_argument("--apply", type=int, default=2, help="apply processes per target backend")
    ap.add_argument(
        "--tablets-per-message",
        type=int,
        default=4,
        help="REPLICATOR_TABLETS_PER_MESSAGE of the workers (64 tablets: 4 gives 16 messages)",
    )
    ap.add_argument("--results", type=Path, default=None, help="markdown file to write into")
    args = ap.parse_args(argv)
    if args.quick:
        args.scale, args.parts, args.rounds = 0.3, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    results_path = args.results or (
        OUT_DIR / "RESULTS.transfer-quick.md" if args.quick else BENCH_DIR / "RESULTS.md"
    )
    preflight()
    signal.signal(signal.SIGTERM, _raise_on_term)
    started = time.perf_counter()
    files = lineitem_files(args.scale, args.parts)
    warm = lineitem_files(0.01)
    rows_in = parquet_rows(files)
    log(f"lineitem SF{args.scale:g}: {len(files)} files, {rows_in:,} rows")
    machine = machine_info()  # at the start: the commit measured
    machine["load"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    machine["curl"] = " ".join(_first_words(["curl", "--version"], 2))
    machine["rsync"] = " ".join(_first_words(["rsync", "--version"], 3))
    machine["postgres"] = "Postgres " + _pg_version()
    results: list[dict[str, Any]] = []
    with rig(args.apply, args.tablets_per_message) as r:
        log(
            f"run {r.run_id}: hosts "
            + ", ".join(f"{h.name} {h.address}" for h in r.net.hosts.values())
            + f"; logs {r.base / 'logs'}"
        )
        loaded = setup_clusters(r, files, warm)
        sfiles = source_files(r)
        nbytes = sum(f.size for f in sfiles)
        log(f"loaded {loaded['rows']:,} rows in {loaded['load_seconds']}s: "
            f"{nbytes / MB:.0f} MB in {len(sfiles)} files")  # fmt: skip
        parallel = len(BACKENDS) * args.apply
        for i in range(1, args.rounds + 1):
            tag = f"r{i}"
            for way in _ways(r):
                res = _run_way(r, way, sfiles, parallel, tag, nbytes)
                res["round"] = i
                res["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
                results.append(res)
                log(f"round {i}: {res['way']} {res['seconds']:.2f}s for {res['bytes'] / MB:.0f} MB "
                    f"({res['bytes'] / MB / res['seconds']:.0f} MB/s; CPU source "
                    f"{res['cpu_source']:.1f}s, target {res['cpu_target']:.1f}s)")  # fmt: skip
        info = {"run_id": r.run_id, "rounds": args.rounds, "tpm": args.tablets_per_message,
                "files": len(sfiles),
                "rows": loaded["rows"], "scale": args.scale, "load_seconds": loaded["load_seconds"],
                "total_seconds": time.perf_counter() - started}  # fmt: skip
    text = section(results, info, machine, argv)
    print(text)
    write_section(results_path, SECTION, text)
    with open(OUT_DIR / "transfer.jsonl", "a") as f:
        for x in results:
            f.write(json.dumps({"run": info["run_id"], **x}, default=str) + "\n")
    log(f"wrote {results_path}")
    return 0


def _first_words(argv: list[str], n: int) -> list[str]:
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return (out.splitlines() or [""])[0].split()[:n]


def _pg_version() -> str:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        return "unknown"
    out = subprocess.run([found[-1], "--version"], capture_output=True, text=True).stdout
    words = out.split()  # postgres (PostgreSQL) 15.20 (Debian ...)
    return words[2] if len(words) > 2 else "unknown"


if __name__ == "__main__":
    sys.exit(main())
