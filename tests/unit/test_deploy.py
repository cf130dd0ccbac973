"""The deployment files agree with the code: every command a container runs exists with those
options, every REPLICATOR_* variable is a setting, workers can scale, the broker keeps messages,
KEDA scales Deployments that exist on the queues they consume, and the Grafana dashboard only
queries metrics that `replicator metrics serve` exports.

And the topology holds: each backend's storage volume is mounted by that backend's worker and
transfer server only (never by two backends, two clusters, or the coordinator); each backend
registers the address its transfer server is reached at; certificates, token secrets and the
Flower login come from secrets, and a cluster's token secret reaches only that cluster's
processes. Each topology check is also run against a broken copy, to show that it fails.
No Docker or Kubernetes needed (`kubectl kustomize` is used when it is installed)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from app.queues import queue_name

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deployment files")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "olap-replicator.json"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "secrets-env.sh"
IMAGE = "olap-replicator"
NAMESPACE = "olap-replicator"
TOKEN_SECRET = re.compile(r"REPLICATOR_CLUSTER_([A-Z][A-Z0-9_]*)_TRANSFER_SECRET")
DSN_VAR = re.compile(r"REPLICATOR_CLUSTER_([A-Z][A-Z0-9_]*)_DSN")
SHELL_SEPARATORS = {"&&", "||", ";"}


# -- commands -----------------------------------------------------------------------------------


def _click_errors() -> tuple[type[BaseException], ...]:
    import click

    found: list[type[BaseException]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException

        found.append(ClickException)
    except ImportError:
        pass
    return tuple(found)


def split_commands(argv: list[str]) -> list[list[str]]:
    """``["sh", "-c", "a x && b y"]`` -> ``[["a", "x"], ["b", "y"]]``; anything else as it is."""
    if len(argv) == 3 and argv[0] in ("sh", "bash", "/bin/sh") and argv[1] == "-c":
        out: list[list[str]] = [[]]
        for token in shlex.split(argv[2]):
            if token in SHELL_SEPARATORS:
                out.append([])
            elif not (token == "exec" and not out[-1]):
                out[-1].append(token)
        return [c for c in out if c]
    return [argv]


def check_replicator(argv: list[str]) -> None:
    """Resolve ``replicator ...`` through the real typer/click tree and parse its options."""
    import typer

    from frontends.cli import cli

    cmd: Any = typer.main.get_command(cli)
    args = list(argv[1:])
    ctx = cmd.make_context("replicator", [], resilient_parsing=True)
    while hasattr(cmd, "commands"):
        if not args and getattr(cmd, "invoke_without_command", False):
            break  # e.g. `replicator jobs` lists jobs
        assert args, f"{argv}: a command group needs a subcommand"
        name = args.pop(0)
        assert not name.startswith("-"), f"{argv}: group options are not used in deployments"
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"{argv}: `replicator` has no command {name!r}"
        cmd = sub
        ctx = cmd.make_context(name, [], parent=ctx, resilient_parsing=True)
    try:
        ctx = cmd.make_context(ctx.info_name, args, parent=ctx.parent)
    except _click_errors() as exc:
        raise AssertionError(f"{argv}: {exc}") from None
    if ctx.args:  # worker / coordinator pass extra arguments on to `celery worker`
        check_celery(["celery", "-A", "workers", "worker", "-Q", "q", *ctx.args])


def check_celery(argv: list[str]) -> None:
    import click
    from celery.bin.celery import celery as group

    try:
        ctx = group.make_context("celery", list(argv[1:]))
    except click.ClickException as exc:
        raise AssertionError(f"{argv}: {exc}") from None
    assert ctx.params.get("app") == "workers", f"{argv}: the Celery app is `-A workers`"
    # Option callbacks of the subcommands read the app's defaults from here; a bare app will do
    # (importing `workers` would be fine too, but needs none of its settings).
    from celery import Celery
    from celery.bin.base import CLIContext

    ctx.obj = CLIContext(app=Celery("deploy-check"), no_color=True, workdir=None, quiet=True)
    rest = [*ctx._protected_args, *ctx.args]
    assert rest, f"{argv}: no celery subcommand"
    sub = group.get_command(ctx, rest[0])
    assert sub is not None, f"{argv}: celery has no command {rest[0]!r}"
    try:
        sub_ctx = sub.make_context(rest[0], rest[1:], parent=ctx)
    except click.ClickException as exc:
        raise AssertionError(f"{argv}: {exc}") from None
    if rest[0] == "flower":
        check_flower_options(argv, list(sub_ctx.params.get("tornado_argv") or ()))


def check_flower_options(argv: list[str], tornado_argv: list[str]) -> None:
    from flower.options import options

    known = set(options._options)
    for arg in tornado_argv:
        assert arg.startswith("--"), f"{argv}: flower takes --name=value options, not {arg!r}"
        name = arg[2:].partition("=")[0].replace("_", "-")
        assert name in known, f"{argv}: flower has no option --{name}"


def check_command(argv: list[str]) -> None:
    for cmd in split_commands(argv):
        if cmd[0] == "replicator":
            check_replicator(cmd)
            if cmd[1:3] == ["transfer", "serve"]:
                transfer_of(cmd)  # --listen is parsed in the command's body: parse it here too
        elif cmd[0] == "celery":
            check_celery(cmd)
        else:
            raise AssertionError(f"{argv}: our image runs `replicator` or `celery`, not {cmd[0]}")


def backend_of(argv: list[str]) -> tuple[str, str] | None:
    """(cluster, backend) that a `replicator worker` command serves."""
    if argv[:2] != ["replicator", "worker"]:
        return None
    opts = dict(zip(argv[2::2], argv[3::2], strict=False))
    return opts["--cluster"], opts["--backend"]


def transfer_of(argv: list[str]) -> tuple[str, str, int] | None:
    """(cluster, backend, port) that a `replicator transfer serve` command serves; exactly one
    backend per server (a server serves its own host's backend)."""
    if argv[:3] != ["replicator", "transfer", "serve"]:
        return None
    from frontends.cli.transfer import _listen

    opts: dict[str, list[str]] = {}
    for key, value in zip(argv[3::2], argv[4::2], strict=False):
        opts.setdefault(key, []).append(value)
    assert len(opts.get("--backend", [])) == 1, f"{argv}: one --backend per transfer server"
    try:
        _host, port = _listen(opts.get("--listen", ["0.0.0.0:8470"])[0])
    except Exception as exc:
        raise AssertionError(f"{argv}: {exc}") from None
    return opts["--cluster"][0], opts["--backend"][0], port


def registered_backends(argv: list[str]) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(cluster, backend) -> (storage root, transfer URL), from `backend add` steps."""
    found = {}
    for cmd in split_commands(argv):
        if cmd[:3] == ["replicator", "backend", "add"]:
            storage = cmd[cmd.index("--storage") + 1]
            url = cmd[cmd.index("--transfer-url") + 1] if "--transfer-url" in cmd else None
            found[(cmd[3], cmd[4])] = (storage, url)
    return found


def roles(argv: list[str]) -> dict[str, tuple[str, str]]:
    """What a command does for which backend: {"worker"|"transfer"|"register": (cluster, b)}."""
    found: dict[str, tuple[str, str]] = {}
    for cmd in split_commands(argv):
        if (w := backend_of(cmd)) is not None:
            found["worker"] = w
        if (s := transfer_of(cmd)) is not None:
            found["transfer"] = s[:2]
        for key in registered_backends(cmd):
            found["register"] = key
    assert len(set(found.values())) <= 1, f"{argv}: one process serves one backend: {found}"
    return found


def is_under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def initialised_clusters(argv: list[str]) -> set[str]:
    return {c[3] for c in split_commands(argv) if c[:3] == ["replicator", "cluster", "init"]}


def check_env_names(where: str, names: list[str]) -> None:
    from app.config import Settings

    settings = {f.name for f in fields(Settings)} - {"clusters", "transfer_secrets"}
    for name in names:
        if name.startswith("REPLICATOR_"):
            key = name.removeprefix("REPLICATOR_").lower()
            ok = (
                name == "REPLICATOR_CONFIG"
                or key in settings
                or re.fullmatch(r"cluster_[a-z][a-z0-9_]*_(dsn|transfer_secret)", key) is not None
            )
            assert ok, f"{where}: {name} is not a setting of app/config.py"
        elif name.startswith("FLOWER_"):
            from flower.options import default_options

            key = name.removeprefix("FLOWER_").lower()
            assert key in default_options or name == "FLOWER_UNAUTHENTICATED_API", (
                f"{where}: Flower fails on start with the unknown option {name}"
            )


# -- docker-compose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and "services" in data
    return data


def ours(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, svc in compose["services"].items():
        if str(svc.get("image", "")).startswith(IMAGE) or "build" in svc:
            yield name, svc


def as_argv(command: Any) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(command)


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    return dict(env) if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def service_secrets(svc: dict[str, Any]) -> dict[str, str]:
    """target file name under /run/secrets -> top-level secret name."""
    found = {}
    for s in svc.get("secrets", []):
        source, target = (
            (s, s) if isinstance(s, str) else (s["source"], s.get("target", s["source"]))
        )
        found[target] = source
    return found


def named_volumes(compose: dict[str, Any], svc: dict[str, Any]) -> dict[str, str]:
    """named volume -> mount path (bind mounts of host paths are reported by their path)."""
    found = {}
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            source, target = v.get("source", ""), v["target"]
        else:
            source, target = str(v).split(":")[:2]
        found[source] = target
    return found


def compose_roles(svc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return roles(as_argv(svc["command"])) if "command" in svc else {}


def compose_cluster(svc: dict[str, Any]) -> str | None:
    r = compose_roles(svc)
    return next(iter(r.values()))[0] if r else None


def compose_registered(compose: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str | None]]:
    found: dict[tuple[str, str], tuple[str, str | None]] = {}
    for _name, svc in ours(compose):
        found.update(registered_backends(as_argv(svc.get("command", []))))
    return found


def test_compose_has_every_role(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "migrate", "coordinator", "beat", "flower", "metrics"):
        assert name in services, name
    workers = [backend_of(as_argv(s["command"])) for _n, s in ours(compose) if "command" in s]
    clusters = {w[0] for w in workers if w}
    assert {"prod", "dr"} <= clusters, "source and target backend workers"
    servers = [compose_roles(s).get("transfer") for _n, s in ours(compose)]
    assert {s[0] for s in servers if s} == clusters, "a transfer server on every cluster"
    build = next(s["build"] for _n, s in ours(compose) if "build" in s)
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_commands_exist(compose: dict[str, Any]) -> None:
    checked = 0
    for _name, svc in ours(compose):
        if "command" in svc:
            check_command(as_argv(svc["command"]))
            checked += 1
    assert checked >= 8
    coordinator = as_argv(compose["services"]["coordinator"]["command"])
    assert coordinator[:3] == ["replicator", "coordinator", "--no-beat"], "beat runs on its own"
    beat = as_argv(compose["services"]["beat"]["command"])
    assert beat[:4] == ["celery", "-A", "workers", "beat"]
    flower = as_argv(compose["services"]["flower"]["command"])
    assert flower[:4] == ["celery", "-A", "workers", "flower"] and "--port=5555" in flower
    assert as_argv(compose["services"]["metrics"]["command"])[:3] == [
        "replicator",
        "metrics",
        "serve",
    ]


def test_a_bad_command_is_caught() -> None:
    for bad in (
        ["replicator", "worker", "--cluster", "prod"],  # --backend missing
        ["replicator", "metrics", "serve", "--prot", "1"],
        ["replicator", "nosuch"],
        ["celery", "-A", "workers", "flower", "--prot=1"],
        ["celery", "-A", "workers", "beet"],
        ["sh", "-c", "replicator cluster init prod && replicator cluster create dr"],
        ["replicator", "transfer", "serve", "--backend", "be1"],  # --cluster missing
        ["replicator", "transfer", "serve", "--cluster", "prod", "--lisen", "0.0.0.0:8470"],
        [
            "replicator",
            "transfer",
            "serve",
            "--cluster",
            "prod",
            "--backend",
            "be1",
            "--listen",
            "8470",
        ],  # not HOST:PORT
        ["replicator", "transfer", "serve", "--cluster", "prod"],  # which backend?
        ["replicator", "backend", "add", "prod", "be1", "--storage", "/d", "--transfer", "x"],
    ):
        with pytest.raises(AssertionError):
            check_command(bad)


def test_compose_environment_names_are_settings(compose: dict[str, Any]) -> None:
    for name, svc in ours(compose):
        values = service_env(svc)
        # Secrets whose file is named like a variable become that variable (secrets-env.sh).
        exported = [t for t in service_secrets(svc) if re.fullmatch(r"[A-Z][A-Z0-9_]*", t)]
        check_env_names(f"service {name}", [*values, *exported])
        # Both hold passwords: secrets (exported by the entry point), never plain environment.
        assert {"REPLICATOR_BROKER_URL", "REPLICATOR_DSN_TEMPLATE"} <= set(exported), name
        assert not {"REPLICATOR_BROKER_URL", "REPLICATOR_DSN_TEMPLATE"} & set(values), name
        assert values.get("REPLICATOR_TRANSFER_MODE", "https") == "https", name
        for key, value in values.items():
            assert not TOKEN_SECRET.fullmatch(key), f"{name}: {key} must come from a secret"
            assert "BEGIN" not in value, f"{name}: {key} holds key material"


def test_compose_broker_and_catalog_require_passwords_from_secrets(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    redis = services["redis"]
    argv = as_argv(redis["command"])
    acl = argv[argv.index("--aclfile") + 1]
    assert acl.removeprefix("/run/secrets/") in service_secrets(redis)
    assert "requirepass" not in argv  # a password on a command line shows in `ps`
    assert "REDISCLI_AUTH" in " ".join(as_argv(redis["healthcheck"]["test"]))
    pg_env = service_env(services["postgres"])
    assert "POSTGRES_PASSWORD" not in pg_env
    assert pg_env["POSTGRES_PASSWORD_FILE"].removeprefix("/run/secrets/") in service_secrets(
        services["postgres"]
    )
    text = COMPOSE.read_text()
    assert ":replicator@" not in text and "POSTGRES_PASSWORD: " not in text


def test_workers_can_scale_and_reach_their_storage(compose: dict[str, Any]) -> None:
    services = compose["services"]
    registered = compose_registered(compose)
    clusters = initialised_clusters(as_argv(services["migrate"]["command"]))
    served = set()
    for name, svc in ours(compose):
        argv = as_argv(svc.get("command", []))
        backend = backend_of(argv)
        if backend is None and argv[:2] != ["replicator", "coordinator"]:
            continue
        assert "container_name" not in svc, f"{name}: a container_name forbids --scale"
        assert not svc.get("ports"), f"{name}: a fixed host port forbids --scale"
        depends = svc.get("depends_on") or {}
        assert depends.get("migrate", {}).get("condition") == "service_completed_successfully"
        if backend is None:
            assert not svc.get("volumes"), f"{name}: the coordinator mounts no backend storage"
            continue
        served.add(backend)
        assert backend[0] in clusters, f"{name}: migrate does not init cluster {backend[0]}"
        assert backend in registered, f"{name}: nothing registers backend {backend}"
        root = registered[backend][0]
        mounts = named_volumes(compose, svc).values()
        assert any(is_under(root, m) for m in mounts), f"{name}: {root} is not mounted here"
    assert served == set(registered), "every registered backend has a worker service"


def check_compose_topology(compose: dict[str, Any]) -> None:
    """Each backend: one worker service and one transfer server service; both mount the same
    named volume, which holds the registered root and which no other service mounts; the
    registration runs in the transfer service before it serves, with the address other
    services reach it at; and no volume is mounted by services of two clusters."""
    services = dict(ours(compose))
    registered = compose_registered(compose)
    by_volume: dict[str, set[str]] = {}
    for name, svc in compose["services"].items():
        for vol in named_volumes(compose, svc):
            by_volume.setdefault(vol, set()).add(name)
    for vol, users in by_volume.items():
        clusters = {compose_cluster(compose["services"][u]) for u in users}
        assert len(clusters) == 1, f"volume {vol} is mounted by services of {clusters}: {users}"
    assert registered, "no backend is registered"
    for backend, (root, url) in registered.items():
        mine = {n: compose_roles(s) for n, s in services.items()}
        workers = [n for n, r in mine.items() if r.get("worker") == backend]
        servers = [n for n, r in mine.items() if r.get("transfer") == backend]
        assert len(workers) == 1 and len(servers) == 1, f"{backend}: {workers} {servers}"
        worker, server = services[workers[0]], services[servers[0]]
        assert mine[servers[0]].get("register") == backend, (
            f"{servers[0]}: registers {backend} on its own host at start-up"
        )
        steps = split_commands(as_argv(server["command"]))
        assert steps[-1][:3] == ["replicator", "transfer", "serve"], "serve after registering"
        vols_w, vols_s = named_volumes(compose, worker), named_volumes(compose, server)
        assert len(vols_w) == 1 and vols_w == vols_s, f"{backend}: {vols_w} != {vols_s}"
        ((vol, mount),) = vols_w.items()
        assert vol in (compose.get("volumes") or {}), f"{backend}: {vol} is not a named volume"
        assert is_under(root, mount), f"{backend}: root {root} is not on volume {vol} ({mount})"
        assert by_volume[vol] == {workers[0], servers[0]}, f"{vol} is mounted by {by_volume[vol]}"
        _c, _b, port = transfer_of(steps[-1]) or ("", "", 0)
        assert url == f"https://{servers[0]}:{port}", (
            f"{backend}: registered {url}, served at https://{servers[0]}:{port}"
        )
        cond = (worker.get("depends_on") or {}).get(servers[0], {}).get("condition")
        assert cond == "service_healthy", f"{workers[0]}: waits for its backend's registration"
        assert server.get("healthcheck"), f"{servers[0]}: needs a healthcheck to be waited for"
    for name, svc in services.items():
        if not compose_roles(svc):
            assert not named_volumes(compose, svc), f"{name} serves no backend: mounts no volume"


def check_compose_secrets(compose: dict[str, Any]) -> None:
    """TLS files and tokens come from secret files; a cluster's token secret and certificates
    reach only that cluster's (that backend's) services; the peer CA is the other cluster's."""
    declared = compose.get("secrets") or {}
    registered = compose_registered(compose)
    clusters = {c for c, _b in registered}
    for name, svc in ours(compose):
        secrets = service_secrets(svc)
        for source in secrets.values():
            assert source in declared, f"{name}: secret {source} is not declared"
        for key, value in service_env(svc).items():
            if key.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), f"{name}: {key} is not a secret file"
                assert value.removeprefix("/run/secrets/") in secrets, f"{name}: {key} -> {value}"
        r = compose_roles(svc)
        cluster = compose_cluster(svc)
        for target, source in secrets.items():
            file = str(declared[source]["file"])
            if m := TOKEN_SECRET.fullmatch(target):
                assert m.group(1).lower() == cluster, f"{name} ({cluster}) gets {target}"
                assert Path(file).name.startswith(f"{cluster}-"), f"{source}: {file}"
                for other, svc2 in ours(compose):
                    if source in service_secrets(svc2).values():
                        assert compose_cluster(svc2) == cluster, f"{source} is in {other}"
            parts = Path(file).parts
            if "pki" in parts:
                rel = parts[parts.index("pki") + 1 :]
                if rel[-1] == "ca.pem":
                    assert rel[0] != cluster and rel[0] in clusters, (
                        f"{name} ({cluster}) must trust the peer cluster's CA, not {file}"
                    )
                else:
                    assert cluster is not None and (cluster, rel[1]) in r.values(), (
                        f"{name}: {file} belongs to another backend"
                    )
                    kind = "transfer" if rel[-1].startswith("server") else "worker"
                    assert kind in r, f"{name}: {file} belongs to the {kind}"
        env = service_env(svc)
        if "transfer" in r:
            tokens = [t for t in secrets if TOKEN_SECRET.fullmatch(t)]
            assert tokens == [f"REPLICATOR_CLUSTER_{cluster.upper()}_TRANSFER_SECRET"], name  # type: ignore[union-attr]
            for key in ("CERT_FILE", "KEY_FILE", "CLIENT_CA_FILE"):
                assert env.get(f"REPLICATOR_TRANSFER_{key}"), f"{name}: mutual TLS needs {key}"
        if "worker" in r:
            tokens = [t for t in secrets if TOKEN_SECRET.fullmatch(t)]
            assert tokens == [f"REPLICATOR_CLUSTER_{cluster.upper()}_TRANSFER_SECRET"], name  # type: ignore[union-attr]
            for key in ("CA_FILE", "CLIENT_CERT_FILE", "CLIENT_KEY_FILE"):
                assert env.get(f"REPLICATOR_TRANSFER_{key}"), f"{name}: downloads need {key}"
        if not r:
            assert not any(TOKEN_SECRET.fullmatch(t) for t in secrets), f"{name}: no token"
            assert not any(TOKEN_SECRET.fullmatch(k) for k in env), f"{name}: no token"
    for source, spec in declared.items():
        path = ROOT / spec["file"]
        assert path.is_relative_to(ROOT / "deploy" / "secrets"), f"{source}: {spec['file']}"
    ignore = (ROOT / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore, "deploy/secrets/ must stay out of git"


def check_compose_exposure(compose: dict[str, Any]) -> None:
    """Flower requires basic auth from a secret; Flower and the exporter are published on the
    host's loopback only."""
    flower = compose["services"]["flower"]
    argv = as_argv(flower["command"])
    from_secret = "FLOWER_BASIC_AUTH" in service_secrets(flower)
    assert from_secret, "flower: --basic-auth from the FLOWER_BASIC_AUTH secret"
    assert not any("basic_auth" in a or "basic-auth" in a for a in argv), "not on the command line"
    assert "FLOWER_BASIC_AUTH" not in service_env(flower), "flower: the login comes from a secret"
    for name in ("flower", "metrics"):
        for port in compose["services"][name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: publishes {port} beyond the host"


def test_compose_topology(compose: dict[str, Any]) -> None:
    check_compose_topology(compose)
    check_compose_secrets(compose)
    check_compose_exposure(compose)


def _compose_breakages() -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    def mount(service: str, volume: str) -> Callable[[dict[str, Any]], None]:
        return lambda c: c["services"][service].setdefault("volumes", []).append(f"{volume}:/x")

    def secret(service: str, source: str, target: str) -> Callable[[dict[str, Any]], None]:
        return lambda c: (
            c["services"][service]
            .setdefault("secrets", [])
            .append({"source": source, "target": target})
        )

    def swap_volume(c: dict[str, Any]) -> None:
        c["services"]["worker-dr-be1"]["volumes"] = ["storage-dr-be2:/data"]

    def wrong_url(c: dict[str, Any]) -> None:
        svc = c["services"]["transfer-prod-be1"]
        svc["command"] = [a.replace("transfer-prod-be1:8470", "worker-prod-be1:8470")
                          for a in svc["command"]]  # fmt: skip

    def wrong_ca(c: dict[str, Any]) -> None:
        c["secrets"]["prod_peer_ca"]["file"] = "./deploy/secrets/pki/prod/ca.pem"

    def no_auth(c: dict[str, Any]) -> None:
        c["services"]["flower"].pop("secrets")

    def public_metrics(c: dict[str, Any]) -> None:
        c["services"]["metrics"]["ports"] = ["9808:9808"]

    def token_in_env(c: dict[str, Any]) -> None:
        c["services"]["coordinator"]["environment"] = {
            **c["services"]["coordinator"]["environment"],
            "REPLICATOR_CLUSTER_PROD_TRANSFER_SECRET": "x",
        }

    return [
        ("coordinator mounts a backend", mount("coordinator", "storage-prod-be1")),
        ("two clusters share a volume", mount("worker-dr-be1", "storage-prod-be1")),
        ("worker on another backend's volume", swap_volume),
        ("registered address is not the server", wrong_url),
        ("prod token secret in a dr worker", secret("worker-dr-be1", "prod_transfer_secret",
                                                    "REPLICATOR_CLUSTER_PROD_TRANSFER_SECRET")),
        ("prod token secret in flower", secret("flower", "prod_transfer_secret",
                                               "REPLICATOR_CLUSTER_PROD_TRANSFER_SECRET")),
        ("another backend's server key", secret("transfer-prod-be2", "prod_be1_server_key",
                                                "other.key")),
        ("server key in the worker", secret("worker-prod-be1", "prod_be1_server_key", "s.key")),
        ("trusting its own CA", wrong_ca),
        ("flower without basic auth", no_auth),
        ("metrics on every interface", public_metrics),
        ("a token secret in plain env", token_in_env),
    ]  # fmt: skip


@pytest.mark.parametrize("breakage", _compose_breakages(), ids=lambda b: b[0])
def test_a_broken_compose_topology_is_caught(
    compose: dict[str, Any], breakage: tuple[str, Callable[[dict[str, Any]], None]]
) -> None:
    broken = copy.deepcopy(compose)
    breakage[1](broken)
    with pytest.raises(AssertionError):
        check_compose_topology(broken)
        check_compose_secrets(broken)
        check_compose_exposure(broken)
        test_compose_environment_names_are_settings(broken)


def test_entrypoint_exports_secret_files(tmp_path: Path) -> None:
    """The image's entry point turns /run/secrets/<SETTING> files into variables (run here by
    the system's sh, as the image's /bin/sh would)."""
    text = DOCKERFILE.read_text()
    (dest,) = re.findall(r"^COPY\s+deploy/secrets-env\.sh\s+(\S+)", text, re.M)
    (entry,) = re.findall(r"^ENTRYPOINT\s+(\[.*\])", text, re.M)
    assert json.loads(entry) == [dest]
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    (tmp_path / "REPLICATOR_CLUSTER_PROD_TRANSFER_SECRET").write_text("s3cret\n")
    (tmp_path / "FLOWER_BASIC_AUTH").write_text("admin:pw")
    (tmp_path / "transfer-server.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"PATH": os.environ["PATH"], "SECRETS_DIR": str(tmp_path)}
    out = subprocess.run(
        [sh, str(ENTRYPOINT), "env"], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "REPLICATOR_CLUSTER_PROD_TRANSFER_SECRET=s3cret" in out
    assert "FLOWER_BASIC_AUTH=admin:pw" in out
    assert not any("BEGIN" in line for line in out), "certificates stay files"
    env["SECRETS_DIR"] = str(tmp_path / "none")
    done = subprocess.run([sh, str(ENTRYPOINT), "true"], env=env, check=False)
    assert done.returncode == 0, "no secrets at all is fine"


def test_redis_keeps_every_message(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    argv = as_argv(redis["command"])
    opts = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert opts.get("--appendonly") == "yes"
    assert opts.get("--maxmemory-policy") == "noeviction"
    assert redis.get("volumes"), "the append-only file must survive a container restart"


def test_one_beat(compose: dict[str, Any]) -> None:
    beats = [
        n
        for n, s in ours(compose)
        if as_argv(s.get("command", []))[:4] == ["celery", "-A", "workers", "beat"]
        or "-B" in as_argv(s.get("command", []))
        or (
            "replicator" in as_argv(s.get("command", []))[:1]
            and "coordinator" in as_argv(s.get("command", []))
            and "--no-beat" not in as_argv(s.get("command", []))
        )
    ]
    assert beats == ["beat"], beats
    assert (compose["services"]["beat"].get("deploy") or {}).get("replicas", 1) == 1


# -- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), path
                assert doc["metadata"].get("name"), path
                doc["_file"] = path.name
                docs.append(doc)
    return docs


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests if d["kind"] == kind}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def known_secrets(manifests: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Secret name -> {key: value or source file}: Secret manifests and the secretGenerator."""
    found: dict[str, dict[str, str]] = {}
    for name, doc in by_kind(manifests, "Secret").items():
        found[name] = {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
    for gen in kustomization().get("secretGenerator", []):
        keys = {}
        for spec in gen.get("files", []):
            key, _, path = spec.rpartition("=")
            keys[key or Path(path).name] = path
        for spec in gen.get("literals", []):
            key, _, value = spec.partition("=")
            keys[key] = value
        found[gen["name"]] = keys
    return found


def pod(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def workloads(manifests: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (d for d in manifests if d["kind"] in ("Deployment", "Job", "StatefulSet"))


def container_roles(c: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return roles(c["command"]) if c["image"].startswith(IMAGE) and "command" in c else {}


def pod_roles(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for c in containers(doc):
        found.update(container_roles(c))
    assert len(set(found.values())) <= 1, f"{doc['metadata']['name']}: one backend per pod"
    return found


def pod_cluster(doc: dict[str, Any]) -> str | None:
    r = pod_roles(doc)
    return next(iter(r.values()))[0] if r else None


def claims(doc: dict[str, Any]) -> dict[str, str]:
    """volume name -> claim name."""
    return {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod(doc).get("volumes", [])
        if "persistentVolumeClaim" in v
    }


def secret_refs(doc: dict[str, Any]) -> set[str]:
    """Every Secret a pod reads, whichever way."""
    found = {v["secret"]["secretName"] for v in pod(doc).get("volumes", []) if "secret" in v}
    for c in containers(doc):
        found |= {r["secretRef"]["name"] for r in c.get("envFrom", []) if "secretRef" in r}
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                found.add(ref["name"])
    return found


def file_in_secret(doc: dict[str, Any], c: dict[str, Any], path: str) -> tuple[str, str]:
    """(secret, key) a file path of container ``c`` comes from; AssertionError if none."""
    volumes = {v["name"]: v for v in pod(doc).get("volumes", [])}
    for m in c.get("volumeMounts", []):
        if not is_under(path, m["mountPath"]) or path == m["mountPath"]:
            continue
        vol = volumes[m["name"]]
        assert "secret" in vol, f"{c['name']}: {path} is not on a Secret volume"
        rel = path[len(m["mountPath"].rstrip("/")) + 1 :]
        items = vol["secret"].get("items")
        key = next((i["key"] for i in items if i["path"] == rel), None) if items else rel
        assert key is not None, f"{c['name']}: {path}: no item of {vol['secret']['secretName']}"
        return vol["secret"]["secretName"], key
    raise AssertionError(f"{c['name']}: {path} is on no mounted volume")


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_k8s_has_every_role(manifests: list[dict[str, Any]]) -> None:
    deployments = by_kind(manifests, "Deployment")
    for name in ("coordinator", "beat", "flower", "metrics"):
        assert name in deployments, name
    assert "migrate" in by_kind(manifests, "Job")
    beat = deployments["beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    for name, d in deployments.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_k8s_commands_and_env_exist(manifests: list[dict[str, Any]]) -> None:
    for secret in by_kind(manifests, "Secret").values():
        check_env_names(f"secret {secret['metadata']['name']}", list(secret.get("stringData", {})))
    secrets = known_secrets(manifests)
    checked = 0
    for doc in manifests:
        if doc["kind"] not in ("Deployment", "Job", "StatefulSet"):
            continue
        for c in containers(doc):
            if not c["image"].startswith(IMAGE):
                continue
            check_command(c["command"])
            checked += 1
            for probe in ("livenessProbe", "readinessProbe"):
                exec_ = (c.get(probe) or {}).get("exec")
                if exec_:
                    check_command(exec_["command"])
            check_env_names(doc["metadata"]["name"], [e["name"] for e in c.get("env", [])])
            for ref in c.get("envFrom", []):
                assert ref["secretRef"]["name"] in secrets, doc["metadata"]["name"]
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], {}), f"{e['name']}: {ref}"
        for v in pod(doc).get("volumes", []):
            if "secret" in v:
                keys = secrets.get(v["secret"]["secretName"])
                assert keys is not None, f"{doc['metadata']['name']}: {v['secret']}"
                for item in v["secret"].get("items", []):
                    assert item["key"] in keys, f"{doc['metadata']['name']}: {item}"
    assert checked >= 8


def test_every_worker_deployment_scales_on_its_own_queue(manifests: list[dict[str, Any]]) -> None:
    deployments = by_kind(manifests, "Deployment")
    scaled = by_kind(manifests, "ScaledObject")
    registered = k8s_registered(manifests)
    workers = {}
    for name, d in deployments.items():
        backend = pod_roles(d).get("worker")
        if backend is not None:
            assert backend not in workers.values(), f"{backend}: two Deployments"
            workers[name] = backend
    assert set(workers.values()) == set(registered), "one worker Deployment per backend"
    targets = set()
    for name, so in scaled.items():
        target = so["spec"]["scaleTargetRef"]["name"]
        assert target in deployments, f"ScaledObject {name} targets no Deployment {target}"
        assert target in workers, f"ScaledObject {name} must target a backend worker"
        cluster, backend = workers[target]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == queue_name(cluster, backend)
        assert int(trigger["metadata"]["listLength"]) > 0
        assert so["spec"].get("minReplicaCount", 0) >= 1, "keep a consumer for each backend"
        targets.add(target)
    assert targets == set(workers), "every worker Deployment has a ScaledObject"


def k8s_registered(
    manifests: list[dict[str, Any]],
) -> dict[tuple[str, str], tuple[str, str | None]]:
    found: dict[tuple[str, str], tuple[str, str | None]] = {}
    for doc in workloads(manifests):
        for c in containers(doc):
            if c["image"].startswith(IMAGE):
                found.update(registered_backends(c["command"]))
    return found


def check_k8s_topology(manifests: list[dict[str, Any]]) -> None:
    """Each backend: one pod template with a `register` init container, a worker and a transfer
    server, all mounting its own claim at one path that holds the registered root; nothing else
    mounts that claim, no claim is mounted by two clusters' pods; the registered address is the
    Service in front of the transfer container; replicas of one backend share its node."""
    registered = k8s_registered(manifests)
    assert registered, "no backend is registered"
    users: dict[str, set[str]] = {}
    for doc in workloads(manifests):
        for claim in claims(doc).values():
            users.setdefault(claim, set()).add(doc["metadata"]["name"])
        if not pod_roles(doc):
            assert not claims(doc), f"{doc['metadata']['name']} serves no backend: mounts no claim"
    docs = {d["metadata"]["name"]: d for d in workloads(manifests)}
    for claim, names in users.items():
        clusters = {pod_cluster(docs[n]) for n in names}
        assert len(clusters) == 1, f"claim {claim} is mounted by pods of {clusters}: {names}"
    pvcs = by_kind(manifests, "PersistentVolumeClaim")
    services = by_kind(manifests, "Service")
    migrate = containers(by_kind(manifests, "Job")["migrate"])[0]["command"]
    for backend, (root, url) in registered.items():
        assert backend[0] in initialised_clusters(migrate), f"migrate does not init {backend[0]}"
        (doc,) = [d for d in workloads(manifests) if pod_roles(d).get("worker") == backend]
        name = doc["metadata"]["name"]
        r = pod_roles(doc)
        assert r.get("transfer") == backend and r.get("register") == backend, f"{name}: {r}"
        inits = [container_roles(c) for c in pod(doc).get("initContainers", [])]
        assert {"register": backend} in inits, f"{name}: registers in an init container"
        mounts = {}
        for c in containers(doc):
            if container_roles(c):
                mine = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
                got = {claims(doc)[v]: p for v, p in mine.items() if v in claims(doc)}
                assert len(got) == 1, f"{name}/{c['name']}: mounts {got}, one backend's claim"
                mounts[c["name"]] = got
        assert len(mounts) == 3 and len({tuple(m.items()) for m in mounts.values()}) == 1, mounts
        ((claim, path),) = next(iter(mounts.values())).items()
        assert is_under(root, path), f"{name}: root {root} is not on claim {claim} ({path})"
        assert users[claim] == {name}, f"claim {claim} is mounted by {users[claim]}"
        assert claim in pvcs, f"{name}: no PersistentVolumeClaim {claim}"
        assert doc["spec"].get("replicas", 1) == 1 or "ReadWriteMany" not in str(pvcs[claim])
        (server,) = [c for c in containers(doc) if "transfer" in container_roles(c)]
        _c, _b, listen = transfer_of(server["command"]) or ("", "", 0)
        ports = {p.get("name"): p["containerPort"] for p in server.get("ports", [])}
        assert listen in ports.values(), f"{name}: transfer listens on {listen}, exposes {ports}"
        labels = doc["spec"]["template"]["metadata"]["labels"]
        reach = set()
        for svc_name, svc in services.items():
            if (
                not svc["spec"].get("selector")
                or not svc["spec"]["selector"].items() <= labels.items()
            ):
                continue
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                if target == listen or ports.get(target) == listen:
                    ns = svc["metadata"].get("namespace", NAMESPACE)
                    reach.add(f"https://{svc_name}.{ns}.svc.cluster.local:{p['port']}")
        assert url in reach, f"{name}: registers {url}, reachable at {reach or 'no Service'}"
        if doc["kind"] == "Deployment":
            terms = pod(doc).get("affinity", {}).get("podAffinity", {})
            terms = terms.get("requiredDuringSchedulingIgnoredDuringExecution", [])
            assert any(
                t["topologyKey"] == "kubernetes.io/hostname"
                and t["labelSelector"]["matchLabels"].items() <= labels.items()
                for t in terms
            ), f"{name}: replicas of one backend must share the node that holds its volume"


def check_k8s_secrets(manifests: list[dict[str, Any]]) -> None:
    """A cluster's token secret is read only by that cluster's backend pods (worker and
    transfer server); certificate files come from Secret volumes: a backend's server cert only
    in its transfer container, its client cert only in its worker, the peer cluster's CA in
    both; the catalogs are reached with sslmode=require."""
    secrets = known_secrets(manifests)
    registered = k8s_registered(manifests)
    clusters = {c for c, _b in registered}
    token_of: dict[str, str] = {}
    for doc in workloads(manifests):
        for c in containers(doc):
            for e in c.get("env", []):
                m = TOKEN_SECRET.fullmatch(e["name"])
                if m:
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    assert ref, f"{doc['metadata']['name']}: {e['name']} must come from a Secret"
                    owner = token_of.setdefault(ref["name"], m.group(1).lower())
                    assert owner == m.group(1).lower(), f"{ref['name']} is two clusters' token"
    for secret, keys in secrets.items():
        for key in keys:
            assert not TOKEN_SECRET.fullmatch(key), f"{secret}: {key} would reach every pod"
    for secret, cluster in token_of.items():
        for path in secrets[secret].values():
            assert Path(path).name.startswith(f"{cluster}-"), f"{secret}: {path}"
    for doc in workloads(manifests):
        name = doc["metadata"]["name"]
        cluster = pod_cluster(doc)
        for secret in secret_refs(doc):
            if secret in token_of:
                assert token_of[secret] == cluster, f"{name} ({cluster}) reads {secret}"
        for c in containers(doc):
            r = container_roles(c)
            env = {e["name"]: e for e in c.get("env", [])}
            for key, e in env.items():
                if m := TOKEN_SECRET.fullmatch(key):
                    assert m.group(1).lower() == cluster, f"{name}/{c['name']}: {key}"
                if not key.endswith("_FILE"):
                    continue
                assert "value" in e, f"{name}: {key} is a path"
                secret, item = file_in_secret(doc, c, e["value"])
                source = secrets[secret][item]
                parts = Path(source).parts
                assert "pki" in parts, f"{name}: {key} -> {source}"
                rel = parts[parts.index("pki") + 1 :]
                if rel[-1] == "ca.pem":
                    assert rel[0] != cluster and rel[0] in clusters, (
                        f"{name} ({cluster}) must trust the peer cluster's CA, not {source}"
                    )
                else:
                    assert (cluster, rel[1]) in r.values(), f"{name}/{c['name']}: {source}"
                    kind = "transfer" if rel[-1].startswith("server") else "worker"
                    assert kind in r, f"{name}/{c['name']}: {source} belongs to the {kind}"
            needs = {
                "transfer": ("CERT_FILE", "KEY_FILE", "CLIENT_CA_FILE"),
                "worker": ("CA_FILE", "CLIENT_CERT_FILE", "CLIENT_KEY_FILE"),
            }
            for role, keys in needs.items():
                if role in r:
                    token = f"REPLICATOR_CLUSTER_{r[role][0].upper()}_TRANSFER_SECRET"
                    assert token in env, f"{name}/{c['name']}: needs {token}"
                    for k in keys:
                        assert f"REPLICATOR_TRANSFER_{k}" in env, f"{name}/{c['name']}: {k}"
    dsns = 0
    for secret in by_kind(manifests, "Secret").values():
        for key, value in (secret.get("stringData") or {}).items():
            if DSN_VAR.fullmatch(key) or key == "REPLICATOR_DSN_TEMPLATE":
                assert "sslmode=require" in value or "sslmode=verify-" in value, f"{key}: TLS"
                dsns += 1
            if key == "REPLICATOR_TRANSFER_MODE":
                assert value == "https", key
    assert dsns, "the catalogs' DSNs"


def check_k8s_exposure(manifests: list[dict[str, Any]]) -> None:
    """Flower requires basic auth from a Secret; nothing is exposed outside the cluster; each
    cluster's transfer servers accept connections from the other cluster's backend pods only."""
    flower = by_kind(manifests, "Deployment")["flower"]
    (c,) = containers(flower)
    env = {e["name"]: e for e in c.get("env", [])}
    ref = (env.get("FLOWER_BASIC_AUTH", {}).get("valueFrom") or {}).get("secretKeyRef")
    assert ref, "flower: --basic-auth from FLOWER_BASIC_AUTH, fed by a Secret"
    assert not any("basic" in a for a in c["command"]), "flower: no password on the command line"
    assert not [d for d in manifests if d["kind"] == "Ingress"], "no Ingress"
    for name, svc in by_kind(manifests, "Service").items():
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"Service {name} is exposed"
    policies = by_kind(manifests, "NetworkPolicy").values()
    for doc in workloads(manifests):
        r = pod_roles(doc)
        if "transfer" not in r:
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        mine = [
            p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert mine, f"{doc['metadata']['name']}: no NetworkPolicy guards its transfer port"
        for policy in mine:
            for rule in policy["spec"]["ingress"]:
                for peer in rule["from"]:
                    sel = peer.get("podSelector", {}).get("matchLabels", {})
                    allowed = [
                        pod_cluster(d)
                        for d in workloads(manifests)
                        if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                    ]
                    assert sel and r["transfer"][0] not in allowed and all(allowed), (
                        f"{policy['metadata']['name']}: lets {allowed} in"
                    )


def test_k8s_topology(manifests: list[dict[str, Any]]) -> None:
    check_k8s_topology(manifests)
    check_k8s_secrets(manifests)
    check_k8s_exposure(manifests)


def _k8s_breakages() -> list[tuple[str, Callable[[list[dict[str, Any]]], None]]]:
    def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
        return by_kind(docs, kind)[name]

    def container(docs: list[dict[str, Any]], dep: str, name: str) -> dict[str, Any]:
        return next(c for c in containers(find(docs, "Deployment", dep)) if c["name"] == name)

    def coordinator_mounts(docs: list[dict[str, Any]]) -> None:
        spec = pod(find(docs, "Deployment", "coordinator"))
        spec["volumes"] = [
            {"name": "s", "persistentVolumeClaim": {"claimName": "storage-prod-be1"}}
        ]
        spec["containers"][0]["volumeMounts"] = [{"name": "s", "mountPath": "/data"}]

    def dr_on_prod_claim(docs: list[dict[str, Any]]) -> None:
        vols = pod(find(docs, "Deployment", "backend-dr-be1"))["volumes"]
        vols[0]["persistentVolumeClaim"]["claimName"] = "storage-prod-be1"

    def transfer_without_volume(docs: list[dict[str, Any]]) -> None:
        c = container(docs, "backend-prod-be2", "transfer")
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "storage"]

    def wrong_url(docs: list[dict[str, Any]]) -> None:
        c = pod(find(docs, "Deployment", "backend-dr-be2"))["initContainers"][0]
        c["command"] = [a.replace("transfer-dr-be2", "transfer-dr-be1") for a in c["command"]]

    def prod_token_in_dr(docs: list[dict[str, Any]]) -> None:
        c = container(docs, "backend-dr-be1", "worker")
        c["env"].append(
            {
                "name": "REPLICATOR_CLUSTER_PROD_TRANSFER_SECRET",
                "valueFrom": {"secretKeyRef": {"name": "transfer-secret-prod", "key": "secret"}},
            }
        )

    def token_for_everyone(docs: list[dict[str, Any]]) -> None:
        find(docs, "Secret", "replicator-env")["stringData"][
            "REPLICATOR_CLUSTER_PROD_TRANSFER_SECRET"
        ] = "x"

    def server_key_in_worker(docs: list[dict[str, Any]]) -> None:
        c = container(docs, "backend-prod-be1", "worker")
        for e in c["env"]:
            if e["name"] == "REPLICATOR_TRANSFER_CLIENT_KEY_FILE":
                e["value"] = "/etc/replicator/server-tls/server.key"
        c["volumeMounts"].append({"name": "server-tls", "mountPath": "/etc/replicator/server-tls"})

    def plain_dsn(docs: list[dict[str, Any]]) -> None:
        env = find(docs, "Secret", "replicator-env")["stringData"]
        env["REPLICATOR_CLUSTER_DR_DSN"] = env["REPLICATOR_CLUSTER_DR_DSN"].split("?")[0]

    def no_flower_auth(docs: list[dict[str, Any]]) -> None:
        containers(find(docs, "Deployment", "flower"))[0].pop("env")

    def open_transfer(docs: list[dict[str, Any]]) -> None:
        for p in by_kind(docs, "NetworkPolicy").values():
            for rule in p["spec"]["ingress"]:
                rule["from"] = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": IMAGE}}}]

    def no_affinity(docs: list[dict[str, Any]]) -> None:
        pod(find(docs, "Deployment", "backend-prod-be1")).pop("affinity")

    return [
        ("coordinator mounts a backend", coordinator_mounts),
        ("dr pod on prod's claim", dr_on_prod_claim),
        ("transfer server without the volume", transfer_without_volume),
        ("registered address is another backend's", wrong_url),
        ("prod token secret in a dr pod", prod_token_in_dr),
        ("a token secret in the shared env", token_for_everyone),
        ("server key in the worker", server_key_in_worker),
        ("a DSN without TLS", plain_dsn),
        ("flower without basic auth", no_flower_auth),
        ("transfer port open to its own cluster", open_transfer),
        ("scaled replicas may leave the volume's node", no_affinity),
    ]


@pytest.mark.parametrize("breakage", _k8s_breakages(), ids=lambda b: b[0])
def test_a_broken_k8s_topology_is_caught(
    manifests: list[dict[str, Any]],
    breakage: tuple[str, Callable[[list[dict[str, Any]]], None]],
) -> None:
    broken = copy.deepcopy(manifests)
    breakage[1](broken)
    with pytest.raises(AssertionError):
        check_k8s_topology(broken)
        check_k8s_secrets(broken)
        check_k8s_exposure(broken)


def test_kustomize_renders_and_every_secret_resolves(
    tmp_path: Path, manifests: list[dict[str, Any]]
) -> None:
    """`kubectl kustomize` (when installed) builds the manifests with stand-in secret files:
    the generated Secrets exist and every reference to them was rewritten to a generated name;
    and the development certificates that `replicator transfer dev-certs` writes for the
    registered addresses verify with the files each side mounts."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    from app.transfer import tls

    work = tmp_path / "k8s"
    shutil.copytree(K8S, work)
    hosts: dict[str, dict[str, list[str]]] = {}
    for (cluster, backend), (_root, url) in k8s_registered(manifests).items():
        host = (url or "").split("//")[1].rsplit(":", 1)[0]
        hosts.setdefault(cluster, {})[backend] = [host]
    tls.make_dev_pki(work / "secrets" / "pki", hosts)
    for gen in kustomization()["secretGenerator"]:
        for spec in gen.get("files", []):
            path = work / spec.rpartition("=")[2]
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("stand-in")
    out = subprocess.run(
        [kubectl, "kustomize", str(work)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    names = {d["metadata"]["name"] for d in rendered if d["kind"] == "Secret"}
    for gen in kustomization()["secretGenerator"]:
        assert any(n.startswith(gen["name"] + "-") for n in names), gen["name"]
    for doc in workloads(rendered):
        for ref in secret_refs(doc):
            assert ref in names, f"{doc['metadata']['name']}: {ref} was not generated"
    assert len(list(workloads(rendered))) == len(list(workloads(manifests)))
    # The files each side mounts (backends.yaml: the peer CA, the backend's own server or
    # client cert) complete a mutual-TLS handshake under the registered host name, in memory;
    # the own cluster's CA, which a misconfigured pod would mount, does not.
    pki = work / "secrets" / "pki"
    for (cluster, backend), (_root, url) in k8s_registered(manifests).items():
        host = (url or "").split("//")[1].rsplit(":", 1)[0]
        server = tls.server_context(
            pki / cluster / backend / "server.pem",
            pki / cluster / backend / "server.key",
            pki / next(c for c in hosts if c != cluster) / "ca.pem",  # transfer-peer-ca-<cluster>
        )
        for peer in hosts:
            if peer == cluster:
                continue
            for peer_backend in hosts[peer]:
                client = tls.client_context(
                    pki / cluster / "ca.pem",  # transfer-peer-ca-<peer> holds <cluster>'s CA
                    pki / peer / peer_backend / "client.pem",
                    pki / peer / peer_backend / "client.key",
                )
                handshake(client, server, host)
        own = tls.client_context(pki / next(c for c in hosts if c != cluster) / "ca.pem")
        with pytest.raises(ssl.SSLError):
            handshake(own, server, host)


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, host: str) -> None:
    """A TLS handshake between two contexts through memory buffers (no sockets)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done: set[str] = set()
    for _ in range(10):
        for name, side in (("client", c), ("server", s)):
            if name not in done:
                try:
                    side.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            # TLS 1.3: the server checks the client certificate after the client finished.
            s.write(b"ok")
            c_in.write(s_out.read())
            assert c.read(2) == b"ok"
            return
    raise AssertionError(f"handshake with {host} did not finish")


def test_k8s_redis_keeps_every_message(manifests: list[dict[str, Any]]) -> None:
    (redis,) = by_kind(manifests, "StatefulSet").values()
    args = containers(redis)[0]["args"]
    opts = dict(zip(args[::2], args[1::2], strict=False))
    assert opts["--appendonly"] == "yes" and opts["--maxmemory-policy"] == "noeviction"


# -- Grafana and the image ------------------------------------------------------------------------


def test_dashboard_queries_exported_metrics() -> None:
    from frontends.metrics import family_names

    dash = json.loads(DASHBOARD.read_text())
    exported = family_names()
    used = set()
    ids = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            ids.append(p["id"])
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                names = set(re.findall(r"\breplicator_[a-z_]+", t["expr"]))
                assert names, f"panel {p['title']!r} queries no replicator metric"
                assert names <= exported, f"panel {p['title']!r}: {names - exported}"
                used.update(names)

    walk(dash["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for must in (
        "replicator_replicated_bytes_total",
        "replicator_table_version_lag",
        "replicator_table_lag_seconds",
        "replicator_queue_length",
        "replicator_queue_consumers",
        "replicator_jobs",
    ):
        assert must in used, must
    variables = {v["name"] for v in dash["templating"]["list"]}
    for var in re.findall(r"\$(\w+)", json.dumps(dash["panels"])):
        assert var in variables or var.startswith("__"), var


def test_metric_labels_do_not_clash_with_target_labels() -> None:
    from frontends.metrics import FAMILIES

    for name, (_kind, _help, labels) in FAMILIES.items():
        # Prometheus renames a scraped `job` or `instance` label to exported_*.
        assert not {"job", "instance", "le"} & set(labels), name


def test_dockerfile_installs_the_package() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install .*\s\.(\s|$)", text, re.M)
    for src in re.findall(r"^COPY\s+(\S+)\s", text, re.M):
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


# -- the broker and the catalogs over TLS (README "Broker and catalog security") ---------------


def check_k8s_service_tls(manifests: list[dict[str, Any]]) -> None:
    """Every replicator pod reaches Redis by rediss:// with a password and the broker's CA, and
    the catalogs with sslmode=verify-full against a CA file; both CA files are on a Secret volume
    in every container that reads replicator-env. Redis listens only with TLS and reads its
    password from a Secret file, never from its command line; KEDA speaks TLS with the password
    from a Secret."""
    from app import broker
    from app.config import Settings

    env = by_kind(manifests, "Secret")["replicator-env"]["stringData"]
    url = env["REPLICATOR_BROKER_URL"]
    assert url.startswith("rediss://:") and "@" in url, "the broker: rediss:// with a password"
    settings = Settings(broker_url=url, broker_ca_file=env.get("REPLICATOR_BROKER_CA_FILE", ""))
    assert broker.tls_options(settings), url
    files = {settings.broker_ca_file}
    assert settings.broker_ca_file, "REPLICATOR_BROKER_CA_FILE: the CA that signs Redis"
    for key, value in env.items():
        if DSN_VAR.fullmatch(key) or key == "REPLICATOR_DSN_TEMPLATE":
            query = dict(p.split("=", 1) for p in value.partition("?")[2].split("&") if p)
            assert query.get("sslmode") == "verify-full", f"{key}: sslmode=verify-full"
            assert query.get("sslrootcert"), f"{key}: sslrootcert, the catalogs' CA"
            files.add(query["sslrootcert"])
    for doc in workloads(manifests):
        for c in containers(doc):
            refs = {r["secretRef"]["name"] for r in c.get("envFrom", []) if "secretRef" in r}
            if "replicator-env" in refs:
                for path in files:
                    file_in_secret(doc, c, path)  # AssertionError when not mounted
    (redis,) = by_kind(manifests, "StatefulSet").values()
    args = containers(redis)[0]["args"]
    opts = dict(zip(args[::2], args[1::2], strict=False))
    assert opts.get("--port") == "0" and opts.get("--tls-port") == "6379", "Redis: TLS only"
    assert "--requirepass" not in opts, "Redis: the password is not on its command line"
    acl = opts.get("--aclfile", "")
    assert acl, "Redis: a password (ACL file)"
    file_in_secret(redis, containers(redis)[0], acl)
    for so in by_kind(manifests, "ScaledObject").values():
        (trigger,) = so["spec"]["triggers"]
        assert trigger["metadata"].get("enableTLS") == "true", so["metadata"]["name"]
        auth = by_kind(manifests, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
        params = {t["parameter"] for t in auth["spec"]["secretTargetRef"]}
        assert {"password", "ca"} <= params, auth["metadata"]["name"]


def test_k8s_broker_and_catalogs_use_tls_and_passwords_from_secrets(
    manifests: list[dict[str, Any]],
) -> None:
    check_k8s_service_tls(manifests)


def _service_tls_breakages() -> list[tuple[str, Callable[[list[dict[str, Any]]], None]]]:
    def env(docs: list[dict[str, Any]]) -> dict[str, str]:
        return dict(by_kind(docs, "Secret")["replicator-env"]["stringData"])

    def set_env(docs: list[dict[str, Any]], key: str, value: str | None) -> None:
        data = by_kind(docs, "Secret")["replicator-env"]["stringData"]
        if value is None:
            data.pop(key)
        else:
            data[key] = value

    def redis_args(docs: list[dict[str, Any]]) -> list[str]:
        (redis,) = by_kind(docs, "StatefulSet").values()
        return containers(redis)[0]["args"]  # type: ignore[no-any-return]

    def plain_broker(docs: list[dict[str, Any]]) -> None:
        url = env(docs)["REPLICATOR_BROKER_URL"]
        set_env(docs, "REPLICATOR_BROKER_URL", url.replace("rediss://", "redis://"))
        set_env(docs, "REPLICATOR_BROKER_CA_FILE", None)

    def no_password(docs: list[dict[str, Any]]) -> None:
        url = env(docs)["REPLICATOR_BROKER_URL"]
        set_env(docs, "REPLICATOR_BROKER_URL", "rediss://" + url.split("@", 1)[1])

    def unverified_catalog(docs: list[dict[str, Any]]) -> None:
        dsn = env(docs)["REPLICATOR_CLUSTER_PROD_DSN"]
        set_env(docs, "REPLICATOR_CLUSTER_PROD_DSN", dsn.replace("verify-full", "require"))

    def ca_not_mounted(docs: list[dict[str, Any]]) -> None:
        c = containers(by_kind(docs, "Deployment")["coordinator"])[0]
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "service-ca"]

    def plaintext_redis_port(docs: list[dict[str, Any]]) -> None:
        args = redis_args(docs)
        args[args.index("--port") + 1] = "6379"
        args[args.index("--tls-port") + 1] = "6380"

    def password_on_command_line(docs: list[dict[str, Any]]) -> None:
        args = redis_args(docs)
        i = args.index("--aclfile")
        args[i : i + 2] = ["--requirepass", "secret"]

    def keda_without_tls(docs: list[dict[str, Any]]) -> None:
        so = next(iter(by_kind(docs, "ScaledObject").values()))
        so["spec"]["triggers"][0]["metadata"].pop("enableTLS")

    return [
        ("broker without TLS", plain_broker),
        ("broker without a password", no_password),
        ("catalog certificate not verified", unverified_catalog),
        ("CA file not mounted in a pod", ca_not_mounted),
        ("Redis with a plaintext port", plaintext_redis_port),
        ("Redis password on its command line", password_on_command_line),
        ("KEDA without TLS", keda_without_tls),
    ]


@pytest.mark.parametrize("breakage", _service_tls_breakages(), ids=lambda b: b[0])
def test_a_broken_service_tls_is_caught(
    manifests: list[dict[str, Any]],
    breakage: tuple[str, Callable[[list[dict[str, Any]]], None]],
) -> None:
    broken = copy.deepcopy(manifests)
    breakage[1](broken)
    with pytest.raises(AssertionError):
        check_k8s_service_tls(broken)
