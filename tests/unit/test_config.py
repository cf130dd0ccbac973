"""Settings from defaults, a TOML file and REPLICATOR_* environment variables (no database)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config import DEFAULT_DSN_TEMPLATE, Settings, load_settings
from app.errors import InvalidRequest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No inherited REPLICATOR_* variables, and a working directory without replicator.toml."""
    for key in list(os.environ):
        if key.startswith("REPLICATOR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "replicator.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_apply_without_a_file_or_environment() -> None:
    s = load_settings()
    assert s == Settings()
    assert s.load_transaction_timeout_sec == 3600
    assert s.dsn("prod") == DEFAULT_DSN_TEMPLATE.format(cluster="prod")


def test_the_toml_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        broker_url = "redis://broker:6379/2"
        load_transaction_timeout_sec = 60
        coordinator_tick_sec = 0.5
        dsn_template = "postgresql+psycopg://u@db/x_{cluster}"

        [clusters.prod]
        dsn = "postgresql+psycopg://u@prod-db/catalog"
        """,
    )
    s = load_settings()
    assert s.broker_url == "redis://broker:6379/2"
    assert s.load_transaction_timeout_sec == 60
    assert s.coordinator_tick_sec == 0.5
    assert s.dsn("prod") == "postgresql+psycopg://u@prod-db/catalog"
    assert s.dsn("dr") == "postgresql+psycopg://u@db/x_dr"


def test_replicator_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "task_lease_sec = 5\n")  # in the working directory, but not the named file
    named = write(tmp_path, "task_lease_sec = 9\n", "other.toml")
    monkeypatch.setenv("REPLICATOR_CONFIG", str(named))
    assert load_settings().task_lease_sec == 9
    assert load_settings(tmp_path / "replicator.toml").task_lease_sec == 5


def test_environment_variables_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        """
        load_transaction_timeout_sec = 60
        hold_lease_sec = 10
        [clusters.prod]
        dsn = "postgresql+psycopg://u@file-db/catalog"
        """,
    )
    monkeypatch.setenv("REPLICATOR_LOAD_TRANSACTION_TIMEOUT_SEC", "1")
    monkeypatch.setenv("REPLICATOR_COORDINATOR_TICK_SEC", "0.25")
    monkeypatch.setenv("REPLICATOR_CLUSTER_PROD_DSN", "postgresql+psycopg://u@env-db/catalog")
    monkeypatch.setenv("REPLICATOR_CLUSTER_DR_DSN", "postgresql+psycopg://u@dr-db/catalog")
    monkeypatch.setenv("REPLICATOR_DSN_TEMPLATE", "postgresql+psycopg://u@t/{cluster}_db")
    monkeypatch.setenv("REPLICATOR_SOMETHING_ELSE", "ignored")
    s = load_settings()
    assert s.load_transaction_timeout_sec == 1
    assert isinstance(s.load_transaction_timeout_sec, int)
    assert s.coordinator_tick_sec == 0.25
    assert s.hold_lease_sec == 10  # from the file, not overridden
    assert s.dsn("prod") == "postgresql+psycopg://u@env-db/catalog"
    assert s.dsn("dr") == "postgresql+psycopg://u@dr-db/catalog"
    assert s.dsn("other") == "postgresql+psycopg://u@t/other_db"


def test_with_overrides_returns_a_changed_copy() -> None:
    s = Settings()
    short = s.with_overrides(load_transaction_timeout_sec=1)
    assert short.load_transaction_timeout_sec == 1
    assert s.load_transaction_timeout_sec == 3600
    assert short.dsn_template == s.dsn_template


def test_a_non_numeric_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATOR_TASK_LEASE_SEC", "soon")
    with pytest.raises(InvalidRequest, match="REPLICATOR_TASK_LEASE_SEC must be a number"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("no_such_setting = 1\n", "unknown setting 'no_such_setting'"),
        ("task_lease_sec = \n", "is not valid TOML"),
        ('task_lease_sec = "x"\n', "task_lease_sec must be a number"),
        ('[clusters.Bad]\ndsn = "postgresql://x/y"\n', "cluster name 'Bad' is not valid"),
        ("[clusters.prod]\nurl = 'postgresql://x/y'\n", "clusters.prod needs a dsn"),
    ],
)
def test_a_bad_settings_file_is_refused_with_a_clear_message(
    tmp_path: Path, text: str, words: str
) -> None:
    write(tmp_path, text)
    with pytest.raises(InvalidRequest) as info:
        load_settings()
    assert words in str(info.value)


def test_an_invalid_cluster_name_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="is not valid"):
        Settings().dsn("Prod-1")
    with pytest.raises(InvalidRequest):
        Settings().dsn("x" * 41)


def test_the_metrics_exporter_listens_on_loopback_unless_told() -> None:
    """It has no authentication: both the library call and the CLI default to 127.0.0.1."""
    import inspect

    import typer

    from frontends.cli import cli
    from frontends.metrics import server

    assert inspect.signature(server.serve).parameters["addr"].default == "127.0.0.1"
    group: typer.core.TyperGroup = typer.main.get_command(cli)  # type: ignore[assignment]
    ctx = group.make_context("replicator", ["metrics"], resilient_parsing=True)
    metrics = group.get_command(ctx, "metrics")
    serve = metrics.get_command(ctx, "serve")  # type: ignore[union-attr]
    assert {p.name: p.default for p in serve.params}["addr"] == "127.0.0.1"  # type: ignore[union-attr]
