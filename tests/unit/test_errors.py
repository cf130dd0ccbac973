"""The error tree: whether an error is worth retrying is read off its branch."""

from __future__ import annotations

import inspect

from app import errors
from app.errors import FatalError, ReplicatorError, RetryableError, UserError

BRANCHES = {UserError: False, RetryableError: True, FatalError: False}


def _all_errors() -> list[type[ReplicatorError]]:
    return [
        obj
        for _name, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, ReplicatorError) and obj is not ReplicatorError
    ]


def test_every_error_hangs_on_exactly_one_branch() -> None:
    for cls in _all_errors():
        branches = [b for b in BRANCHES if issubclass(cls, b)]
        assert len(branches) == 1, f"{cls.__name__} is on {branches}"


def test_no_error_overrides_what_its_branch_says_about_retrying() -> None:
    for cls in _all_errors():
        branch = next(b for b in BRANCHES if issubclass(cls, b))
        assert cls.retryable is BRANCHES[branch], cls.__name__
        if cls not in BRANCHES:
            assert "retryable" not in vars(cls), f"{cls.__name__} sets retryable itself"


def test_errors_of_the_project_live_in_errors_py() -> None:
    import pathlib

    root = pathlib.Path(errors.__file__).parents[1]
    stray = [
        f"{p.relative_to(root)}: {line.strip()}"
        for top in ("app", "workers", "frontends")
        for p in sorted((root / top).rglob("*.py"))
        if p.name != "errors.py"
        for line in p.read_text().splitlines()
        if line.startswith("class ")
        and not line.startswith("class _")  # a module's private control flow
        and any(f"({b}" in line for b in ("ReplicatorError", "UserError", "RetryableError",
                                           "FatalError", "Exception"))
    ]  # fmt: skip
    assert stray == []


def test_secrets_are_redacted_from_what_is_kept_or_shown() -> None:
    from app.errors import redact

    text = (
        "cannot connect to postgresql+psycopg://replicator:s3cr%40t@db.example:5432/olap_dr; "
        "token v1.aGVsbG8td29ybGQtdGhpcy1pcy1sb25n.c2lnbmF0dXJlLWJ5dGVz in flight"
    )
    out = redact(text)
    assert "s3cr" not in out and "aGVsbG8" not in out and "c2lnbmF0" not in out
    assert "postgresql+psycopg://replicator:***@db.example:5432/olap_dr" in out
    assert "v1.<redacted>" in out
    assert redact("no secrets in here: 1.2.3 v1.2") == "no secrets in here: 1.2.3 v1.2"
