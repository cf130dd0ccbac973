"""Mutation check: every guarantee has a test that fails when the guarantee breaks.

``make mutants`` (``python -m tests.mutants [NAME...]``; not part of CI). Each mutant is a small
textual patch of the product, applied to a throw-away copy of this tree (never to the tree
itself); the tests that should catch it then run against that copy. A mutant the tests do not
catch SURVIVES, and the script exits 1. The unmutated copy must pass the same tests first.
The table is written to tests/MUTANTS.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IT = "tests/integration/"
MODEL = IT + "test_coordinator_model.py::test_no_interleaving_breaks_a_guarantee"
CORRUPT = (
    IT + "test_coordinator_model.py::test_a_byte_damaged_in_flight_is_fetched_again_and_"
    "lands_intact"
)
EDGES = IT + "test_coordinator_edges.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    patches: tuple[tuple[str, str, str], ...]  # (file, old text, new text)
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "apply: no checksum verification",
        (
            ("app/storage/checksum.py",
             "if size != expected.size or digest.hexdigest() != expected.checksum:",
             "if False:"),
            ("app/transfer/client.py",
             "if result.size != meta.size or digest.hexdigest() != meta.checksum:",
             "if False:"),
        ),
        (CORRUPT, IT + "test_transfer_server.py::test_a_wrong_checksum_is_reported_by_file_name"),
    ),
    Mutant(
        "commit: no version check",
        (("app/replication/finish.py",
          "if (now.visible_version, now.version_epoch) != (p.dst_version, p.dst_epoch):",
          "if False:"),),
        (MODEL, EDGES),
    ),
    Mutant(
        "taskrows.complete: unconditional compare-and-set",
        (("app/replication/taskrows.py",
          '''                _t.c.attempts == sa.bindparam("attempt"),
                _t.c.state == TaskState.RUNNING,
''', ""),),
        (MODEL,),
    ),
    Mutant(
        "gc: holds ignored",
        (("app/storage/gc.py",
          ".where(s.rowsets.c.state == RowsetState.STALE, s.rowsets.c.id.not_in(held))",
          ".where(s.rowsets.c.state == RowsetState.STALE)"),),
        (IT + "test_compaction_gc.py::test_a_held_rowset_survives_gc_until_its_hold_expires",),
    ),
    Mutant(
        "taskrows: no attempt cap",
        (
            ("app/replication/taskrows.py", "            _t.c.attempts < max_attempts,\n", ""),
            ("app/replication/taskrows.py", "_t.c.attempts >= max_attempts,",
             "_t.c.attempts >= max_attempts + 1000,"),
        ),
        (MODEL,),
    ),
    Mutant(
        "abort: staged files kept",
        (("app/replication/finish.py", "for path in [*paths, staging_dir(txn_id)]:",
          "for path in paths:"),),
        (MODEL,),
    ),
    Mutant(
        "cancelled job: a late apply keeps its files",
        (("app/replication/apply.py", "    if state == TxnState.PREPARE:\n        return",
          "    if True:\n        return"),),
        (MODEL,),
    ),
    Mutant(
        "apply: rowsets visible before the commit",
        (("app/replication/apply.py", '"state": RowsetState.PENDING,',
          '"state": RowsetState.VISIBLE,'),),
        (MODEL, EDGES),
    ),
    Mutant(
        "plan: divergence not refused",
        (("app/replication/plan.py", "if diverged and not overwrite:", "if False:"),),
        (IT + "test_replication.py::test_a_diverged_target_is_refused_and_overwritten_only_when_"
         "asked",),
    ),
    Mutant(
        "apply: manifest names not validated",
        (
            ("app/replication/apply.py", 'src_rowset = names.rowset_id(rs["id"])',
             'src_rowset = rs["id"]'),
            ("app/replication/apply.py", "            names.file_name(meta.name)\n", ""),
        ),
        (IT + "test_trust_boundary.py::test_a_tampered_manifest_is_refused_again_where_it_lands",),
    ),
    Mutant(
        "gc: crosses roots (no marker check)",
        (("app/storage/gc.py", "if owner_of(b.storage_root) == (cluster, b.name):", "if True:"),),
        (IT + "test_roots.py::test_gc_of_one_cluster_never_deletes_in_a_root_marked_as_another",),
    ),
    Mutant(
        "cli: user errors exit 1",
        (("frontends/cli/__init__.py", "_fail(2, str(exc))", "_fail(1, str(exc))"),),
        (IT + "test_cli_exit_codes.py::test_a_user_mistake_exits_2_with_one_error_line",),
    ),
]  # fmt: skip


def copy_tree(dest: Path) -> None:
    """The working tree as it is (uncommitted changes included), without venv, git or caches."""
    ignore = shutil.ignore_patterns(".venv", ".git", "var", "__pycache__", ".mypy_cache",
                                    ".ruff_cache", ".hypothesis", ".pytest_cache")  # fmt: skip
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


def apply(tree: Path, m: Mutant) -> None:
    for rel, old, new in m.patches:
        path = tree / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"mutant {m.name!r}: {rel} has {text.count(old)} copies of {old!r}")
        path.write_text(text.replace(old, new))


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[bool, str, float]:
    """(passed, the first test that failed, seconds). One test at a time, in order, stopping at
    the first failure; the copy's own modules win over the editable install (PYTHONPATH)."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    started = time.monotonic()
    for test in tests:
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
               "--hypothesis-seed=0", test]  # fmt: skip
        res = subprocess.run(["nice", "-n", "10", *cmd], cwd=tree, env=env,
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0:
            return False, test, time.monotonic() - started
    return True, "", time.monotonic() - started


def check_isolation(tree: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree))
    where = subprocess.run([sys.executable, "-c", "import app; print(app.__file__)"], cwd=tree,
                           env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    if not where.startswith(str(tree)):
        raise SystemExit(f"the copy's tests would import the product from {where.strip()}")


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTANTS if not argv or any(a in m.name for a in argv)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        base = Path(tmp) / "unmutated"
        copy_tree(base)
        check_isolation(base)
        needed = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        green, failed, secs = run_tests(base, needed)
        print(f"unmutated tree: {'green' if green else 'RED at ' + failed} ({secs:.0f} s)")
        if not green:
            return 2
        for m in chosen:
            tree = Path(tmp) / f"m{len(rows)}"
            copy_tree(tree)
            apply(tree, m)
            passed, caught_by, secs = run_tests(tree, m.tests)
            verdict = "SURVIVED" if passed else "caught"
            print(f"{verdict:8}  {m.name}  {caught_by}  ({secs:.0f} s)", flush=True)
            rows.append((m, caught_by, secs))
            shutil.rmtree(tree)
    if not argv:
        write_table(rows)
    return 1 if any(not caught for _m, caught, _s in rows) else 0


def write_table(rows: list[tuple[Mutant, str, float]]) -> None:
    lines = [
        "# Mutants",
        "",
        "Written by `make mutants` (`python -m tests.mutants`): each mutant is a small patch of",
        "the product applied to a copy of the tree; the tests listed for it in tests/mutants.py",
        "run against the copy (the unmutated copy passed them first). Seconds: until the first",
        "failing test (or the whole list, for a survivor).",
        "",
        "| mutant | caught by | seconds |",
        "| --- | --- | --- |",
    ]
    for m, caught_by, secs in rows:
        lines.append(f"| {m.name} | {caught_by or '**SURVIVED**'} | {secs:.0f} |")
    (ROOT / "tests" / "MUTANTS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
