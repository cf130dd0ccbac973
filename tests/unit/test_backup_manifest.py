"""Manifests read back from a repository are untrusted: each way of being wrong is refused, in one
line; and the choice of a backup and versions for a restore, on manifests made here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from app.backup import choose
from app.backup import manifest as mf
from app.backup.repo import Repository, check_backup_name, object_key, parse_object_name
from app.errors import CorruptBackup, InvalidRequest, NotFound
from app.schema import ColumnDef
from app.storage.checksum import FileMeta

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _rowset(n: int, start: int, end: int) -> mf.Rowset:
    return mf.Rowset(
        id=f"{n:032x}", start=start, end=end, num_rows=10, data_size=100,
        files=(FileMeta("0.parquet", 100 + n, f"{n:016x}"),),
    )  # fmt: skip


def _manifest(
    name: str, taken: dt.datetime, chain: list[tuple[int, int]], version: int
) -> mf.Manifest:
    """One partition p1 of one bucket whose rowsets cover ``chain``; each version committed
    an hour after the one before."""
    part = mf.Partition(
        name="p1", lower=None, upper=None, version=version, epoch=7,
        history=tuple((v, T0 + dt.timedelta(hours=v)) for v in range(1, version + 1)),
        tablets=(mf.Tablet(0, tuple(_rowset(i, s, e) for i, (s, e) in enumerate(chain))),),
    )  # fmt: skip
    return mf.Manifest(
        name=name, cluster="prod", table="sales.orders", taken_at=taken, job_id=3,
        columns=(ColumnDef("id", "int64"),), partition_column=None, distribution_columns=("id",),
        buckets=1, replication_num=2, partitions=(part,),
    )  # fmt: skip


def test_a_manifest_reads_back_as_it_was_written() -> None:
    m = _manifest("b1", T0, [(2, 2), (3, 3)], 3)
    assert mf.parse("b1", m.to_text()) == m


def _tampered(change: Any) -> str:
    doc = json.loads(_manifest("b1", T0, [(2, 2), (3, 3)], 3).to_text())
    change(doc["backup"])
    body = json.dumps(doc["backup"], sort_keys=True, separators=(",", ":"))
    import xxhash

    doc["checksum"] = xxhash.xxh3_64(body.encode()).hexdigest()  # a consistent forgery
    return json.dumps(doc)


def _rs(b: dict[str, Any]) -> dict[str, Any]:
    return b["partitions"][0]["tablets"][0]["rowsets"][0]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda b: _rs(b).update(id="../../etc"), "rowset id"),
        (lambda b: _rs(b)["files"][0].update(name="../x"), "file name"),
        (lambda b: _rs(b)["files"][0].update(size=-1), "is not an integer"),
        (lambda b: _rs(b)["files"][0].update(checksum="zz"), "16 hex digits"),
        (lambda b: _rs(b).update(end=99), "outside"),
        (lambda b: b["partitions"][0]["tablets"][0].update(bucket=5), "below"),
        (lambda b: b.update(table="no_dot"), "DATABASE.TABLE"),
        (lambda b: b.update(cluster="Bad Name!"), "cluster"),
        (lambda b: b.update(partition_column="nope"), "not a column"),
        (lambda b: b["columns"][0].update(type="blob"), "type"),
        (lambda b: b.update(name="b2"), "names itself"),
        (lambda b: b["partitions"][0].update(history=[[1, "2026-01-01T00:00:00"]]), "time zone"),
        (lambda b: b.pop("buckets"), "buckets"),
    ],
)
def test_a_manifest_that_is_wrong_in_any_way_is_refused(change: Any, why: str) -> None:
    with pytest.raises(CorruptBackup, match="backup b1: its manifest is not valid") as exc:
        mf.parse("b1", _tampered(change))
    assert why.lower() in str(exc.value).lower()
    assert "\n" not in str(exc.value)


def test_a_garbled_manifest_fails_its_own_checksum() -> None:
    text = _manifest("b1", T0, [(2, 2)], 2).to_text().replace('"num_rows": 10', '"num_rows": 11')
    with pytest.raises(CorruptBackup, match="checksum does not match"):
        mf.parse("b1", text)
    for junk in ("", "[]", "{", '{"format": 2}', "\x00" * 5):
        with pytest.raises(CorruptBackup):
            mf.parse("b1", junk)


def test_names_of_backups_and_objects() -> None:
    assert check_backup_name("20261203T180218Z-prod-sales.orders-97c3b9")
    for bad in ("", "../x", ".hidden", "a/b", "x" * 129, 5):
        with pytest.raises(InvalidRequest):
            check_backup_name(bad)
    meta = FileMeta("0.parquet", 1234, "0123456789abcdef")
    assert object_key(meta) == "objects/0123456789abcdef-1234"
    assert parse_object_name("0123456789abcdef-1234") == ("0123456789abcdef", 1234)
    assert parse_object_name("0123456789abcdef-1234.ab12.part") is None


def test_the_versions_a_chain_of_rowsets_can_restore() -> None:
    p = _manifest("b", T0, [(2, 2), (3, 3), (4, 6), (7, 7)], 7).partitions[0]
    assert choose.held_versions(p) == [1, 2, 3, 6, 7]
    assert not choose.restorable(p, 5) and not choose.restorable(p, 8)


def _repo(tmp_path: Path, *manifests: mf.Manifest) -> Repository:
    (tmp_path / "repo").mkdir()
    repo = Repository(str(tmp_path / "repo"))
    for m in manifests:
        repo.write_manifest(m.name, m.to_text())
    return repo


def test_a_restore_takes_the_newest_backup_that_holds_the_version(tmp_path: Path) -> None:
    old = _manifest("b-old", T0 + dt.timedelta(hours=4), [(2, 2), (3, 3), (4, 4)], 4)
    # Compaction merged 2..5 before the newer backup: version 3 is only in the older one.
    new = _manifest("b-new", T0 + dt.timedelta(hours=9), [(2, 5), (6, 6), (7, 7)], 7)
    repo = _repo(tmp_path, old, new)
    assert choose.choose(repo, "sales.orders").manifest.name == "b-new"
    c = choose.choose(repo, "sales.orders", version=3)
    assert (c.manifest.name, c.versions) == ("b-old", {"p1": 3})
    assert choose.choose(repo, "sales.orders", version=6).manifest.name == "b-new"
    with pytest.raises(NotFound, match="held at versions 1, 5, 6, 7, not 4"):
        choose.choose(repo, "sales.orders", version=4, backup="b-new")
    # As of 3.5 hours after T0: version 3 had been committed (at +3 h), 4 not yet.
    at = choose.choose(repo, "sales.orders", at=T0 + dt.timedelta(hours=3, minutes=30))
    assert (at.manifest.name, at.versions) == ("b-old", {"p1": 3})
    with pytest.raises(NotFound, match="no version committed by"):
        choose.choose(repo, "sales.orders", at=T0 - dt.timedelta(days=1))
    with pytest.raises(InvalidRequest, match="time zone"):
        choose.choose(repo, "sales.orders", at=dt.datetime(2026, 12, 1))


def test_a_bad_manifest_is_skipped_when_choosing_and_named_when_asked_for(tmp_path: Path) -> None:
    good = _manifest("b-good", T0, [(2, 2)], 2)
    repo = _repo(tmp_path, good, dataclasses.replace(good, name="b-bad"))
    (tmp_path / "repo" / "backups" / "b-bad" / "manifest.json").write_text("{garbage")
    assert choose.choose(repo, "sales.orders").manifest.name == "b-good"
    with pytest.raises(CorruptBackup, match="backup b-bad"):
        choose.choose(repo, "sales.orders", backup="b-bad")


def test_a_repository_that_is_no_directory_is_said_to_be_so(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path / "typo"))
    with pytest.raises(InvalidRequest, match="is not a directory"):
        repo.names()
    with pytest.raises(InvalidRequest, match="is not a directory"):
        choose.choose(repo, "sales.orders")
