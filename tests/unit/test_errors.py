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
