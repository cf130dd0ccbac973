"""app.transfer.names: every name and id from another cluster is checked, every path resolved."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from app.errors import InvalidRequest
from app.transfer import names

GOOD_ROWSET = uuid.uuid4().hex


@pytest.mark.parametrize("value", ["0.parquet", "a", "A-b_c.1", "x" * 128, "a..b"])
def test_good_file_names(value: str) -> None:
    assert names.file_name(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "../x",
        "/etc/passwd",
        "a\x00b",
        "a b",
        "x" * 129,
        "\u0440\u0430rquet",  # Cyrillic er and a
        "\uff10.parquet",  # full-width digit
        "a\\b",
        "a\n",
        5,
        None,
    ],
)
def test_bad_file_names(value: object) -> None:
    with pytest.raises(InvalidRequest, match="file name"):
        names.file_name(value)


def test_message_is_one_line_with_a_truncated_repr() -> None:
    with pytest.raises(InvalidRequest) as info:
        names.file_name("\n" + "y" * 500)
    message = str(info.value)
    assert "\n" not in message
    assert "'\\nyyy" in message and "..." in message
    assert len(message) < 200


def test_rowset_ids() -> None:
    assert names.rowset_id(GOOD_ROWSET) == GOOD_ROWSET
    assert names.rowset_id(uuid.uuid5(uuid.NAMESPACE_OID, "x").hex)
    for bad in [GOOD_ROWSET.upper(), GOOD_ROWSET[:-1], GOOD_ROWSET + "0", str(uuid.uuid4()), ""]:
        with pytest.raises(InvalidRequest, match="rowset id"):
            names.rowset_id(bad)


@pytest.mark.parametrize("value,expected", [(1, 1), ("1", 1), ("9223372036854775807", 2**63 - 1)])
def test_good_ids(value: object, expected: int) -> None:
    assert names.tablet_id(value) == expected
    assert names.job_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**63, "0", "01", "+1", "-1", " 1", "1 ", "1_000", "9223372036854775808",
     "\u0661\u0662", "\uff11", True, 1.0, "", None, "1e3"],
)  # fmt: skip
def test_bad_ids(value: object) -> None:
    with pytest.raises(InvalidRequest, match="tablet id"):
        names.tablet_id(value)


def test_cluster_and_backend_names() -> None:
    assert names.cluster_name("prod_1") == "prod_1"
    assert names.backend_name("be-1_A") == "be-1_A"
    for bad in ["Prod", "1prod", "", "p" * 41, "pr\u043ed", "a-b"]:  # Cyrillic o
        with pytest.raises(InvalidRequest, match="cluster name"):
            names.cluster_name(bad)
    for bad in ["", "be.1", "be/1", "bé", "b" * 65, "be 1", "..", "be\x00"]:
        with pytest.raises(InvalidRequest, match="backend name"):
            names.backend_name(bad)


def test_rowset_file() -> None:
    assert names.rowset_file("7", GOOD_ROWSET, "0.parquet") == f"data/7/{GOOD_ROWSET}/0.parquet"
    with pytest.raises(InvalidRequest):
        names.rowset_file(7, GOOD_ROWSET, "..")


def test_resolve_under_inside(tmp_path: Path) -> None:
    (tmp_path / "data" / "1").mkdir(parents=True)
    assert names.resolve_under(tmp_path, "data/1/x") == tmp_path.resolve() / "data/1/x"
    assert names.resolve_under(str(tmp_path), Path("data/1/../1/x")).name == "x"


@pytest.mark.parametrize(
    "relative",
    ["..", "../x", "a/../../x", "/etc/passwd", "//etc/passwd", "", ".", "a/..", "a\x00b",
     "data/../../" + "x"],
)  # fmt: skip
def test_resolve_under_refuses(tmp_path: Path, relative: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InvalidRequest, match="path"):
        names.resolve_under(root, relative)


def test_resolve_under_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.write_text("no")
    os.symlink(outside, root / "data" / "link")
    os.symlink(tmp_path, root / "data" / "dirlink")
    with pytest.raises(InvalidRequest, match="leaves the storage root"):
        names.resolve_under(root, "data/link")
    with pytest.raises(InvalidRequest, match="leaves the storage root"):
        names.resolve_under(root, "data/dirlink/secret")


def test_resolve_under_follows_a_symlinked_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "data").mkdir(parents=True)
    os.symlink(real, tmp_path / "alias")
    assert names.resolve_under(tmp_path / "alias", "data/f") == real.resolve() / "data/f"


def test_resolve_under_refuses_a_sibling_with_the_root_as_prefix(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root2").mkdir()
    os.symlink(tmp_path / "root2", tmp_path / "root" / "l")
    with pytest.raises(InvalidRequest):
        names.resolve_under(tmp_path / "root", "l/x")
