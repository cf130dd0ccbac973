"""Hosts made of Linux network namespaces and private mount namespaces, for the multi-host suite
(tests/multihost) and the cross-host benchmark (bench/transfer.py).

A run makes (names carry a run id, so two runs never collide):

* a bridge ``mh<id>br`` in the root namespace with ``10.213.<n>.1/24``, where this suite's own
  Postgres and Redis listen (``<n>`` is chosen so that no interface already has that subnet);
* per host a network namespace ``mh<id>-<host>`` with one veth into the bridge (root side
  ``mh<id>-<host>``, ``eth0`` inside) and its own address;
* per host a **holder** process, started inside that network namespace under
  ``unshare --mount``, which mounts a tmpfs at ``/run/olap-mh-<id>`` (the parent of every storage
  root of the run) and then sleeps. Every process of the host enters both namespaces of the
  holder (``nsenter -t PID -m -n``), so a host sees its own roots and nobody else's: in the root
  namespace and on the other hosts that directory is empty or another host's tmpfs.

:meth:`Net.destroy` removes all of it, also after a failure half-way (each step is recorded
as it is made).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from frontends.supervise import ROOT, Proc, Supervisor, spawn

STATE_DIR = Path("/run/olap-mh-state")  # one file per live run: its id and its process' pid


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _used_subnets() -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = ip("-4", "-o", "addr", "show").stdout
    nets: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.add(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    routes = ip("-4", "route", "show", "table", "all").stdout
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if "/" in word:
                nets.add(ipaddress.ip_network(word, strict=False))
    return nets


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _used_subnets()
    for _ in range(200):
        n = 16 + secrets.randbelow(224)
        net = ipaddress.IPv4Network(f"10.213.{n}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.213.x.0/24 subnet for the network namespaces")


@dataclass
class Host:
    name: str  # short: src, dst, coord
    netns: str
    veth: str  # root side of its link into the bridge
    address: str
    mount_dir: Path  # where the host's private tmpfs is mounted
    holder: subprocess.Popen[bytes] | None = None

    def prefix(self) -> list[str]:
        """Run a command on this host: in its network and mount namespaces."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", f"--wd={ROOT}", "--"]

    def argv(self, args: Sequence[str]) -> list[str]:
        return [*self.prefix(), *args]

    def run(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.argv(args), env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"on {self.name}: {' '.join(args)} exited {res.returncode}\n"
                f"stdout: {res.stdout[-3000:]}\nstderr: {res.stderr[-3000:]}"
            )
        return res

    def link(self, up: bool) -> None:
        """Bring this host's link into the bridge down or up (the root-side veth)."""
        ip("link", "set", self.veth, "up" if up else "down")

    def rx_bytes(self) -> int:
        """Bytes this host has sent over its link (received by the bridge side of its veth; the
        same count as tx_bytes of eth0 inside the host)."""
        return int(Path(f"/sys/class/net/{self.veth}/statistics/rx_bytes").read_text())


@dataclass
class Net:
    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: dict[str, Host] = field(default_factory=dict)
    subnet: ipaddress.IPv4Network | None = None
    bridge: str = ""
    made: list[tuple[str, str]] = field(default_factory=list)  # what to undo, in order made

    @property
    def prefix(self) -> str:
        return f"mh{self.run_id}"

    @property
    def mount_dir(self) -> Path:
        return Path(f"/run/olap-mh-{self.run_id}")

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def create(self, names: Sequence[str]) -> Net:
        reap_stale()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / self.prefix).write_text(f"{os.getpid()}\n")
        self.made.append(("state", str(STATE_DIR / self.prefix)))
        self.subnet = _pick_subnet()
        self.bridge = f"{self.prefix}br"
        ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        self.mount_dir.mkdir(parents=True, exist_ok=True)
        self.made.append(("dir", str(self.mount_dir)))
        for i, name in enumerate(names):
            self.add_host(name, str(self.subnet.network_address + 2 + i))
        return self

    def add_host(self, name: str, address: str) -> Host:
        assert self.subnet is not None
        netns = f"{self.prefix}-{name}"
        veth = f"{self.prefix}-{name}"[:15]
        ip("netns", "add", netns)
        self.made.append(("netns", netns))
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self.made.append(("link", veth))
        ip("link", "set", veth, "master", self.bridge, "up")
        ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        host = Host(name, netns, veth, address, self.mount_dir)
        script = (
            f"mount -t tmpfs -o size=4g,mode=0755 olap-mh-{name} {self.mount_dir} "
            "&& echo ready && exec sleep 1000000"
        )
        host.holder = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", script],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.made.append(("holder", str(host.holder.pid)))
        assert host.holder.stdout is not None
        line = host.holder.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"host {name}: its private mount did not come up ({line!r})")
        self.hosts[name] = host
        return host

    def destroy(self) -> None:
        """Undo everything made, newest first; every step is tried whatever the others do."""
        for kind, what in reversed(self.made):
            with contextlib.suppress(Exception):
                if kind == "holder":
                    pid = int(what)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    for h in self.hosts.values():
                        if h.holder is not None and h.holder.pid == pid:
                            h.holder.wait(10)
                elif kind == "link":
                    ip("link", "del", what, check=False)
                elif kind == "netns":
                    ip("netns", "del", what, check=False)
                elif kind == "dir":
                    os.rmdir(what)
                elif kind == "state":
                    os.unlink(what)
        self.made.clear()


def reap_stale() -> None:
    """Remove what an earlier run left behind if it was killed before its own clean-up: only
    runs recorded under STATE_DIR whose process (pytest or the bench) is gone."""
    if not STATE_DIR.is_dir():
        return
    for state in STATE_DIR.iterdir():
        try:
            pid = int(state.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if Path(f"/proc/{pid}").exists():
            continue
        prefix = state.name
        if not prefix.startswith("mh"):
            continue
        for line in ip("netns", "list", check=False).stdout.splitlines():
            netns = line.split()[0] if line.split() else ""
            if netns.startswith(f"{prefix}-"):
                pids = ip("netns", "pids", netns, check=False).stdout.split()
                for p in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(p), signal.SIGKILL)
                time.sleep(0.2)
                ip("netns", "del", netns, check=False)
        for line in ip("-o", "link", "show", check=False).stdout.splitlines():
            parts = line.split(":")
            if len(parts) > 1:
                name = parts[1].strip().split("@")[0]
                if name.startswith(prefix):
                    ip("link", "del", name, check=False)
        with contextlib.suppress(OSError):
            os.rmdir(f"/run/olap-mh-{prefix.removeprefix('mh')}")
        state.unlink(missing_ok=True)


# -- processes on hosts ---------------------------------------------------------------------


def tcp_answers(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=0.5).close()
    except OSError:
        return False
    return True


@dataclass
class HostProcs(Supervisor):
    """The supervisor, with a command prefix (its host) and an environment per process."""

    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def start(self, proc: Proc) -> Proc:
        proc.popen = spawn(proc.args, proc.log, env=self.envs.get(proc.name, self.env))
        self.procs[proc.name] = proc
        return proc

    def on(
        self,
        host: Host,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        ready: Callable[[Proc], bool] | None = None,
    ) -> Proc:
        self.envs[name] = env
        return self.spawn(name, host.argv(args), ready)
