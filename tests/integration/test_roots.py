"""One cluster's storage roots are its own: overlapping roots are refused at `backend add`, and
GC never deletes in a root whose marker names another backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from app.catalog import schema as s
from app.errors import AlreadyExists, InvalidRequest
from app.storage import gc
from tests.conftest import ClusterFactory
from tests.integration.rig import create_test_table, rows


def _entries(path: Path) -> list[Path]:
    return sorted(path.rglob("*")) if path.exists() else []


def test_a_root_of_another_backend_or_overlapping_one_is_refused(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    a = make_cluster(backends=1)
    b = make_cluster(backends=0)
    a_root = Path(a.backends()[0].storage_root)
    before = _entries(tmp_path)

    with pytest.raises(AlreadyExists, match=rf"belongs to backend {a.name}:be1"):
        b.add_backend("be1", str(a_root))
    with pytest.raises(InvalidRequest, match=r"overlaps .* neither the same nor inside"):
        b.add_backend("be1", str(a_root / "nested"))
    with pytest.raises(InvalidRequest, match=r"overlaps"):
        b.add_backend("be1", str(a_root.parent))
    with pytest.raises(InvalidRequest, match=r"overlaps"):
        a.add_backend("be2", str(a_root / "inside"))  # within one cluster, too
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    with pytest.raises(InvalidRequest, match=r"is a file, not a directory"):
        b.add_backend("be1", str(a_file))

    assert b.backends() == [] and [x.name for x in a.backends()] == ["be1"]
    assert _entries(tmp_path) == sorted([*before, a_file])  # nothing created


def test_gc_of_one_cluster_never_deletes_in_a_root_marked_as_another(
    make_cluster: ClusterFactory,
) -> None:
    a = make_cluster(backends=1)
    b = make_cluster(backends=1)
    for handle in (a, b):
        create_test_table(handle, "db.t", buckets=2, replication_num=1)
    a.load("db.t", rows(3_000, seed=1), label="a-1")
    b.load("db.t", rows(3_000, seed=2), label="b-1")
    a.compact("db.t")  # a's old rowsets are STALE: its own GC may delete them, b's may not
    a_checksum = a.checksum("db.t")
    a_root = a.backends()[0].storage_root
    # A catalog written before roots were checked: b's backend points into a's root.
    with b.catalog.engine.begin() as conn:
        conn.execute(sa.update(s.backends).values(storage_root=a_root))
    a_files = _entries(Path(a_root))

    report = gc.collect(b.catalog, orphan_grace_sec=0)

    assert report.foreign_roots == [a_root]
    assert _entries(Path(a_root)) == a_files  # not one file of a's was touched
    assert a.checksum("db.t") == a_checksum
