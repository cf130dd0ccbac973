"""``s3://`` storage roots: parsed, validated, recorded with their endpoint, compared."""

from __future__ import annotations

import re

import pytest

from app.errors import InvalidRequest
from app.storage.objects import ObjectRoot
from app.storage.roots import normalize


def test_a_root_records_the_endpoint_it_was_given_or_the_environments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.0.0.5:8333/")
    assert normalize("s3://lake/a/b/") == "s3://lake/a/b?endpoint=http://10.0.0.5:8333"
    given = "s3://lake/a?endpoint=https://s3.example:9000"
    assert normalize(given) == given
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert normalize("s3://lake/a") == "s3://lake/a"  # AWS itself


@pytest.mark.parametrize(
    ("root", "says"),
    [
        ("s3://Lake/x", "is not a bucket name"),
        ("s3://ab/x", "is not a bucket name"),
        ("s3:///x", "is not s3://BUCKET/PREFIX"),
        ("s3://lake/a//b", "the prefix is not a clean path"),
        ("s3://lake/a/../b", "the prefix is not a clean path"),
        ("s3://lake/a?region=eu-west-1", "only ?endpoint=URL may follow the prefix"),
        ("s3://lake/a#frag", "only ?endpoint=URL may follow the prefix"),
        ("s3://lake/a?endpoint=ftp://h", "is not http(s)://HOST[:PORT]"),
        ("s3://lake/a?endpoint=http://h/path", "is not http(s)://HOST[:PORT]"),
    ],
)
def test_a_malformed_root_is_refused_with_what_is_wrong(root: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(says)):
        ObjectRoot.parse(root)


@pytest.mark.parametrize(
    "root", ["s3://AKIAXYZ:s3cr3t@lake/x", "s3://lake/x?endpoint=http://AKIAXYZ:s3cr3t@h:1"]
)
def test_a_root_with_credentials_is_refused_without_repeating_them(root: str) -> None:
    with pytest.raises(InvalidRequest, match="carries no credentials") as exc:
        ObjectRoot.parse(root)
    assert "s3cr3t" not in str(exc.value) and "AKIAXYZ" not in str(exc.value)


def test_roots_overlap_only_in_one_store_and_one_bucket_along_the_prefix() -> None:
    def root(text: str) -> ObjectRoot:
        return ObjectRoot.parse(text + "?endpoint=http://h:1")

    assert root("s3://lake/a").overlaps(root("s3://lake/a/b"))
    assert root("s3://lake/a/b").overlaps(root("s3://lake/a"))
    assert root("s3://lake").overlaps(root("s3://lake/a"))  # the whole bucket holds it
    assert not root("s3://lake/a").overlaps(root("s3://lake/ab"))  # a text prefix, not a path
    assert not root("s3://lake/a").overlaps(root("s3://other/a"))
    assert not root("s3://lake/a").overlaps(ObjectRoot.parse("s3://lake/a?endpoint=http://h:2"))


def test_a_copy_inside_the_store_needs_one_endpoint_and_one_bucket() -> None:
    a = ObjectRoot.parse("s3://lake/src?endpoint=http://h:1")
    assert a.same_store(ObjectRoot.parse("s3://lake/dst?endpoint=http://h:1"))
    assert not a.same_store(ObjectRoot.parse("s3://other/dst?endpoint=http://h:1"))
    assert not a.same_store(ObjectRoot.parse("s3://lake/dst?endpoint=http://h:2"))
