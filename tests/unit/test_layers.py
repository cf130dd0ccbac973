"""The shape of the code: what may import what, and where each idea lives.

These read the source as text and syntax trees; they fail when a change puts an idea in a second
home or makes the library reach up into its front ends.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "workers", "frontends", "bench", "tests", "scripts")
# The library knows nothing of Celery, of its front ends, of the benchmarks or of the tests.
FORBIDDEN_IN_APP = {"celery", "kombu", "workers", "bench", "tests", "frontends"}
TASK_STATES = {"PENDING", "QUEUED", "RUNNING", "DONE", "FAILED"}
TASK_KINDS = {"SNAPSHOT", "APPLY"}


def _sources(*tops: str) -> Iterator[Path]:
    for top in tops:
        base = ROOT / top
        if base.is_dir():
            yield from (p for p in sorted(base.rglob("*.py")) if "migrations" not in p.parts)


def _imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):  # every import, also the ones inside functions
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield node.lineno, str(node.args[0].value)


def test_the_library_imports_neither_celery_nor_its_front_ends() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _sources("app")
        for line, name in _imports(ast.parse(path.read_text()))
        if name.split(".")[0] in FORBIDDEN_IN_APP
    ]
    assert found == []


def test_nothing_in_the_project_patches_sys_path() -> None:
    found = []
    for path in _sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def _string_constants(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def _spells_a_task_state(text: str) -> bool:
    if text in TASK_STATES | TASK_KINDS:
        return True
    # SQL written by hand: state = 'RUNNING', kind = 'APPLY'
    return any(f"'{word}'" in text for word in TASK_STATES | TASK_KINDS)


def test_task_states_and_kinds_are_spelled_only_in_taskrows() -> None:
    """One module owns the task row's states (``app/replication/taskrows.py``). Rowset states
    share the word PENDING and have their own single home in ``app/storage/rowsets.py``; the
    table definitions (``app/catalog/schema.py``, the migrations' metadata) spell the rowsets'
    database default, as the migrations do."""
    homes = {
        ROOT / "app/replication/taskrows.py",
        ROOT / "app/storage/rowsets.py",
        ROOT / "app/catalog/schema.py",
        ROOT / "tests/unit/test_states.py",  # pins the enums to the strings the catalog stores
        Path(__file__),
    }
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text[:60]!r}"
        for path in _sources(*PACKAGES)
        if path not in homes
        for line, text in _string_constants(ast.parse(path.read_text()))
        if _spells_a_task_state(text)
    ]
    assert found == []


def test_library_and_workers_files_stay_small_and_functions_short() -> None:
    long_files = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in _sources("app", "workers")
        if (n := len(p.read_text().splitlines())) > 400
    ]
    long_functions = [
        f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)"
        for p in _sources("app", "workers", "frontends", "bench", "scripts")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (n := (node.end_lineno or node.lineno) - node.lineno + 1) > 60
    ]
    assert long_files == [] and long_functions == []
