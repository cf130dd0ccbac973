"""The one set of rules for names and labels (app/catalog/names.py), and the CLI's safe text."""

from __future__ import annotations

import pytest

from app.catalog import names
from app.errors import InvalidRequest
from app.schema import ColumnDef, columns_from, parse_value
from frontends.cli.render import safe


@pytest.mark.parametrize("name", ["t", "_t", "orders_2024", "T" * names.NAME_MAX])
def test_good_names_pass(name: str) -> None:
    assert names.check_name("table", name) == name


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "table name '' is not valid"),
        ("1t", "is not valid"),
        ("a-b", "is not valid"),
        ("[/]", "table name '[/]' is not valid"),
        ("t\x1b[31m", r"'t\x1b[31m'"),
        ("t\u202e", r"'t\u202e'"),
        ("\uff54", "is not valid"),  # a full-width letter: look-alikes are refused
        ("x" * 65, "is 65 characters long; at most 64"),
    ],
)
def test_bad_names_are_refused_on_one_line(name: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        names.check_name("table", name)
    assert words in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_a_long_value_is_cut_in_messages() -> None:
    assert names.shown("x" * 9000) == "'" + "x" * 40 + "…'"


def test_table_names_check_both_parts_and_the_shape() -> None:
    assert names.check_table_name("db.t") == ("db", "t")
    for bad in ("db", "db.", ".t", "a.b.c"):
        with pytest.raises(InvalidRequest, match=r"must be written DATABASE\.TABLE"):
            names.check_table_name(bad)
    with pytest.raises(InvalidRequest, match="database name"):
        names.check_table_name("d-b.t")


@pytest.mark.parametrize(
    ("label", "words"),
    [
        ("", "must not be empty"),
        ("l" * 129, "is 129 characters long; a label has at most 128"),
        ("a\nb", "holds a control character"),
        ("a\x00", "holds a control character"),
    ],
)
def test_bad_labels(label: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        names.check_label(label)


def test_good_labels() -> None:
    for label in ("orders-2024-06-01", "l" * 128, "with space", "ünïcode [ok]"):
        assert names.check_label(label) == label


def test_backend_names() -> None:
    assert names.check_backend_name("be-1_x") == "be-1_x"
    for bad in ("", "be 1", "bé", "b" * 65):
        with pytest.raises(InvalidRequest, match="backend name"):
            names.check_backend_name(bad)


def test_column_names_follow_the_same_rule() -> None:
    with pytest.raises(InvalidRequest, match="column name"):
        columns_from([ColumnDef("c" * 65, "int64")])


@pytest.mark.parametrize(
    ("type_name", "raw"), [("int8", "128"), ("int8", "-129"), ("int64", str(2**63))]
)
def test_integer_bounds_must_fit_their_column(type_name: str, raw: str) -> None:
    with pytest.raises(InvalidRequest, match=f"out of range for {type_name}"):
        parse_value(type_name, raw)
    assert parse_value("int64", str(2**63 - 1)) == 2**63 - 1


def test_safe_text_escapes_markup_and_control_characters() -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(safe("[/]\x1b[31m[bold]\nx"))
    assert console.export_text().strip() == r"[/]\x1b[31m[bold]\nx"
    assert safe(None) == ""
