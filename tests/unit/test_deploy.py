"""The deployment files agree with the code: every command a container runs exists with those
options, every REPLICATOR_* variable is a setting, workers can scale, the broker keeps messages,
KEDA scales Deployments that exist on the queues they consume, and the Grafana dashboard only
queries metrics that `replicator metrics serve` exports. No Docker or Kubernetes needed."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
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
IMAGE = "olap-replicator"
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


def registered_backends(argv: list[str]) -> dict[tuple[str, str], str]:
    """(cluster, backend) -> storage root, from the `backend add` steps of a migrate command."""
    found = {}
    for cmd in split_commands(argv):
        if cmd[:3] == ["replicator", "backend", "add"]:
            storage = cmd[cmd.index("--storage") + 1]
            found[(cmd[3], cmd[4])] = storage
    return found


def initialised_clusters(argv: list[str]) -> set[str]:
    return {c[3] for c in split_commands(argv) if c[:3] == ["replicator", "cluster", "init"]}


def check_env_names(where: str, names: list[str]) -> None:
    from app.config import Settings

    settings = {f.name for f in fields(Settings)} - {"clusters"}
    for name in names:
        if name.startswith("REPLICATOR_"):
            key = name.removeprefix("REPLICATOR_").lower()
            ok = (
                name == "REPLICATOR_CONFIG"
                or key in settings
                or re.fullmatch(r"cluster_[a-z][a-z0-9_]*_dsn", key) is not None
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


def test_compose_has_every_role(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "migrate", "coordinator", "beat", "flower", "metrics"):
        assert name in services, name
    workers = [backend_of(as_argv(s["command"])) for _n, s in ours(compose) if "command" in s]
    clusters = {w[0] for w in workers if w}
    assert {"prod", "dr"} <= clusters, "source and target backend workers"
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
    ):
        with pytest.raises(AssertionError):
            check_command(bad)


def test_compose_environment_names_are_settings(compose: dict[str, Any]) -> None:
    for name, svc in ours(compose):
        env = svc.get("environment") or {}
        names = list(env) if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        check_env_names(f"service {name}", names)
        assert {"REPLICATOR_BROKER_URL", "REPLICATOR_DSN_TEMPLATE"} <= set(names), name
        values = env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)
        assert "{cluster}" in values["REPLICATOR_DSN_TEMPLATE"]
        assert values["REPLICATOR_BROKER_URL"].startswith("redis://redis:")
        assert "@postgres:" in values["REPLICATOR_DSN_TEMPLATE"]


def test_workers_can_scale_and_reach_their_storage(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = as_argv(services["migrate"]["command"])
    registered = registered_backends(migrate)
    clusters = initialised_clusters(migrate)
    served = set()
    for name, svc in ours(compose):
        argv = as_argv(svc.get("command", []))
        backend = backend_of(argv)
        if backend is None and argv[:2] != ["replicator", "coordinator"]:
            continue
        assert "container_name" not in svc, f"{name}: a container_name forbids --scale"
        assert not svc.get("ports"), f"{name}: a fixed host port forbids --scale"
        mounts = {str(v).split(":")[1] for v in svc.get("volumes", [])}
        assert "/data" in mounts, f"{name}: needs the backend storage volume"
        depends = svc.get("depends_on") or {}
        assert depends.get("migrate", {}).get("condition") == "service_completed_successfully"
        if backend is not None:
            served.add(backend)
            assert backend[0] in clusters, f"{name}: migrate does not init cluster {backend[0]}"
            assert backend in registered, f"{name}: migrate does not add backend {backend}"
            assert registered[backend].startswith("/data/"), registered[backend]
    assert served == set(registered), "every registered backend has a worker service"


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
    secrets = by_kind(manifests, "Secret")
    for secret in secrets.values():
        check_env_names(f"secret {secret['metadata']['name']}", list(secret.get("stringData", {})))
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
    assert checked >= 8


def test_every_worker_deployment_scales_on_its_own_queue(manifests: list[dict[str, Any]]) -> None:
    deployments = by_kind(manifests, "Deployment")
    scaled = by_kind(manifests, "ScaledObject")
    migrate = containers(by_kind(manifests, "Job")["migrate"])[0]["command"]
    registered = registered_backends(migrate)
    workers = {}
    for name, d in deployments.items():
        backend = backend_of(containers(d)[0]["command"])
        if backend is not None:
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
