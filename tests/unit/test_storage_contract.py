"""The StorageClient contract, checked on every kind: LocalStorage over a real temporary
directory, ObjectStorage over a prefix of a bucket of a real SeaweedFS (the ``seaweed`` fixture).

Every test that takes ``storage`` runs on both; tests of what only a directory has (file names on
this host, symlinks, a file where a directory must be) take ``local``. "Unreachable" roots are,
for directories, paths below a regular file (ENOTDIR) and roots that do not exist (mode 000 would
not do, tests run as root); for object storage, an endpoint where nothing listens and a bucket
that does not exist.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from app.errors import InvalidRequest, RetryableError, StorageUnavailable
from app.storage.client import LocalStorage, StorageClient, receiving_path, storage_for
from app.storage.objects import ObjectStorage
from tests.harness import free_port


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    root = tmp_path / "root"
    root.mkdir()
    return LocalStorage(str(root))


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageClient:
    if request.param == "local":
        return request.getfixturevalue("local")  # type: ignore[no-any-return]
    request.getfixturevalue("seaweed")
    return ObjectStorage(f"s3://olaptest/contract-{uuid.uuid4().hex[:12]}")


def put(storage: StorageClient, path: str, data: bytes = b"x") -> None:
    with storage.open_write(path) as f:
        f.write(data)


def read(storage: StorageClient, path: str) -> bytes:
    with storage.open_read(path) as f:
        return f.read()


UNREACHABLE_KINDS = ["below-a-file", "gone", "s3-no-endpoint", "s3-no-bucket"]


@pytest.fixture(params=UNREACHABLE_KINDS)
def unreachable(request: pytest.FixtureRequest, tmp_path: Path) -> StorageClient:
    if request.param == "below-a-file":
        blocker = tmp_path / "a-file"
        blocker.write_bytes(b"not a directory")
        return LocalStorage(str(blocker / "root"))
    if request.param == "gone":
        return LocalStorage(str(tmp_path / "unplugged"))
    if request.param == "s3-no-endpoint":  # a port where nothing listens
        return ObjectStorage(f"s3://olaptest/x?endpoint=http://127.0.0.1:{free_port()}")
    request.getfixturevalue("seaweed")
    return ObjectStorage(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")


# -- the happy path ------------------------------------------------------------------------


def test_storage_for_a_directory_is_local_storage(tmp_path: Path) -> None:
    assert isinstance(storage_for(str(tmp_path)), LocalStorage)


def test_storage_for_an_s3_root_is_object_storage() -> None:
    store = storage_for("s3://bucket-a/be1?endpoint=http://127.0.0.1:1")
    assert isinstance(store, ObjectStorage) and store.local_path("data/1") is None


def test_write_creates_parents_and_read_returns_the_bytes(storage: StorageClient) -> None:
    put(storage, "data/1/rs/0.parquet", b"hello")
    assert read(storage, "data/1/rs/0.parquet") == b"hello"
    assert storage.size("data/1/rs/0.parquet") == 5


def test_write_replaces_an_existing_file(storage: StorageClient) -> None:
    put(storage, "a/f", b"long content")
    put(storage, "a/f", b"short")
    assert read(storage, "a/f") == b"short"


def test_local_path_names_the_file_without_touching_anything(local: LocalStorage) -> None:
    path = local.local_path("data/9/nothing/here")
    assert path is not None and path == os.path.join(local.root, "data/9/nothing/here")
    assert not os.path.exists(path)
    put(local, "data/1/f", b"abc")
    found = local.local_path("data/1/f")
    assert found is not None and Path(found).read_bytes() == b"abc"


def test_check_passes_on_a_reachable_root(storage: StorageClient) -> None:
    storage.check()


# -- missing things ------------------------------------------------------------------------


def test_open_read_of_a_missing_file_raises_file_not_found(storage: StorageClient) -> None:
    put(storage, "a/file")
    for path in ("nope", "a/nope", "no/such/dir/f", "a/file/below", "a"):
        with pytest.raises(FileNotFoundError):
            storage.open_read(path)


def test_size_of_a_missing_file_or_a_directory_is_none(storage: StorageClient) -> None:
    put(storage, "a/file")
    for path in ("nope", "a/nope", "a/file/below", "a"):
        assert storage.size(path) is None


def test_delete_tree_of_a_missing_path_is_a_no_op(storage: StorageClient) -> None:
    put(storage, "keep/f")
    storage.delete_tree("nope")
    storage.delete_tree("keep/f/below")
    assert read(storage, "keep/f") == b"x"


def test_list_dirs_and_walk_files_of_a_missing_path_are_empty(storage: StorageClient) -> None:
    put(storage, "a/file")
    for path in ("nope", "a/file"):
        assert storage.list_dirs(path) == []
        assert list(storage.walk_files(path)) == []


# -- rename --------------------------------------------------------------------------------


def test_rename_creates_parent_directories(storage: StorageClient) -> None:
    put(storage, "staging/7/rs.0.parquet", b"data")
    storage.rename("staging/7/rs.0.parquet", "data/3/rs/0.parquet")
    assert read(storage, "data/3/rs/0.parquet") == b"data"
    assert storage.size("staging/7/rs.0.parquet") is None


def test_rename_replaces_an_existing_target(storage: StorageClient) -> None:
    put(storage, "new", b"new bytes")
    put(storage, "d/target", b"old bytes")
    with storage.open_read("d/target") as reader:  # opened before the replace
        storage.rename("new", "d/target")
        assert reader.read() == b"old bytes"
    assert read(storage, "d/target") == b"new bytes"


def test_rename_of_a_missing_source_raises_file_not_found(storage: StorageClient) -> None:
    put(storage, "src")
    storage.rename("src", "dst")
    with pytest.raises(FileNotFoundError):
        storage.rename("src", "dst")  # not idempotent: the source is gone
    with pytest.raises(FileNotFoundError):
        storage.rename("no/such/src", "elsewhere")
    assert read(storage, "dst") == b"x"


def test_rename_onto_a_path_below_a_file_is_unavailable_not_missing(local: LocalStorage) -> None:
    put(local, "src")
    put(local, "blocker")
    with pytest.raises(StorageUnavailable):
        local.rename("src", "blocker/dst")
    assert read(local, "src") == b"x"


# -- delete, list, walk --------------------------------------------------------------------


def test_delete_tree_removes_a_prefix_and_is_idempotent(storage: StorageClient) -> None:
    put(storage, "data/1/a/f")
    put(storage, "data/1/b/g")
    put(storage, "data/10/c/h")  # shares the text "data/1" but not the prefix "data/1/"
    storage.delete_tree("data/1")
    storage.delete_tree("data/1")
    assert storage.size("data/1/a/f") is None and storage.size("data/1/b/g") is None
    assert list(storage.walk_files("data/1")) == []
    assert storage.list_dirs("data") == ["10"]
    assert read(storage, "data/10/c/h") == b"x"


def test_delete_tree_removes_a_single_file(storage: StorageClient) -> None:
    put(storage, "d/f")
    put(storage, "d/g")
    storage.delete_tree("d/f")
    assert storage.size("d/f") is None
    assert read(storage, "d/g") == b"x"


def test_list_dirs_names_the_sub_directories_sorted_without_files(
    storage: StorageClient,
) -> None:
    for path in ("data/20/r/f", "data/3/r/f", "data/100/r/f", "data/file"):
        put(storage, path)
    assert storage.list_dirs("data") == ["100", "20", "3"]
    assert storage.list_dirs("data/3") == ["r"]
    assert storage.list_dirs("data/3/r") == []


def test_walk_files_yields_root_relative_slash_paths_and_mtimes(
    storage: StorageClient,
) -> None:
    before = time.time() - 5
    for path in ("data/1/r/0.parquet", "data/1/r/1.parquet", "data/2/s/0.parquet", "other/f"):
        put(storage, path)
    found = dict(storage.walk_files("data"))
    assert sorted(found) == ["data/1/r/0.parquet", "data/1/r/1.parquet", "data/2/s/0.parquet"]
    assert all(before <= m <= time.time() + 5 for m in found.values())
    assert storage.size(next(iter(found))) == 1  # the paths work with the other methods


def test_walk_files_reports_a_files_own_mtime(local: LocalStorage) -> None:
    put(local, "data/2/s/0.parquet")
    old = time.time() - 7200
    os.utime(os.path.join(local.root, "data/2/s/0.parquet"), (old, old))
    assert dict(local.walk_files("data/2"))["data/2/s/0.parquet"] == pytest.approx(old)


def test_walk_files_skips_files_that_vanish_during_the_walk(local: LocalStorage) -> None:
    for i in range(4):
        put(local, f"d/{i}/f")
    seen = []
    for path, _mtime in local.walk_files("d"):
        seen.append(path)
        local.delete_tree("d")  # everything not yet visited disappears
    assert len(seen) == 1


# -- an unreachable root -------------------------------------------------------------------

CALLS: dict[str, Callable[[StorageClient], object]] = {
    "check": lambda st: st.check(),
    "open_read": lambda st: st.open_read("data/1/r/0.parquet"),
    "open_write": lambda st: put(st, "data/1/r/0.parquet"),  # a store may say so at close
    "size": lambda st: st.size("data/1/r/0.parquet"),
    "rename": lambda st: st.rename("staging/1/r.0.parquet", "data/1/r/0.parquet"),
    "delete_tree": lambda st: st.delete_tree("data/1"),
    "list_dirs": lambda st: st.list_dirs("data"),
    "walk_files": lambda st: list(st.walk_files("data")),
}


@pytest.mark.parametrize("method", sorted(CALLS))
def test_an_unreachable_root_raises_storage_unavailable(
    unreachable: StorageClient, method: str, request: pytest.FixtureRequest
) -> None:
    if method == "open_write" and "s3-no-bucket" in request.node.name:
        # SeaweedFS makes a bucket on the first PUT into it (S3 itself answers NoSuchBucket):
        # there is no missing bucket to write into.
        return
    with pytest.raises(StorageUnavailable) as caught:
        CALLS[method](unreachable)
    assert isinstance(caught.value, RetryableError)
    assert not isinstance(caught.value, OSError)


def test_local_path_never_raises_even_for_an_unreachable_root(
    unreachable: StorageClient,
) -> None:
    expected = (
        os.path.join(unreachable.root, "data/1") if isinstance(unreachable, LocalStorage) else None
    )
    assert unreachable.local_path("data/1") == expected


def test_a_failure_that_is_not_a_missing_file_is_unavailable(local: LocalStorage) -> None:
    put(local, "blocker")
    with pytest.raises(StorageUnavailable):
        local.open_write("blocker/below")  # a file where a directory must be
    os.mkdir(os.path.join(local.root, "a-dir"))
    with pytest.raises(StorageUnavailable):
        local.open_write("a-dir")  # a directory where a file must be


@pytest.mark.parametrize(
    "path", ["../x", "data/../../x", "/etc/passwd", "data//x", "./data", "data/\x00x", ""]
)
def test_a_path_that_is_not_clean_and_relative_is_refused_before_any_io(
    tmp_path: Path, path: str
) -> None:
    store = LocalStorage(str(tmp_path / "root"))
    (tmp_path / "root").mkdir()
    for call in (
        lambda: store.open_write(path),
        lambda: store.open_read(path),
        lambda: store.delete_tree(path),
        lambda: store.rename("a", path),
    ):
        with pytest.raises(InvalidRequest):
            call()
    assert list(tmp_path.iterdir()) == [tmp_path / "root"]


def test_a_symlink_that_leaves_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "data" / "escape").symlink_to(outside)
    store = LocalStorage(str(root))
    with pytest.raises(InvalidRequest, match="leaves the root"):
        store.open_write("data/escape/x")
    assert list(outside.iterdir()) == []


def test_a_file_symlink_that_leaves_the_root_is_refused_for_every_use(tmp_path: Path) -> None:
    """The last component a link (the fast path looks at every component, not just dirs)."""
    root = tmp_path / "root"
    (root / "data" / "7").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    (root / "data" / "7" / "f").symlink_to(secret)
    store = LocalStorage(str(root))
    for call in (
        lambda: store.open_read("data/7/f"),
        lambda: store.open_write("data/7/f"),
        lambda: store.size("data/7/f"),
        lambda: store.local_path("data/7/f"),
    ):
        with pytest.raises(InvalidRequest, match="leaves the root"):
            call()
    assert secret.read_bytes() == b"not yours"


def test_links_that_stay_inside_and_a_linked_root_are_allowed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "data" / "7").mkdir(parents=True)
    (real / "data" / "7" / "f").write_bytes(b"abc")
    (real / "data" / "alias").symlink_to(real / "data" / "7")
    linked_root = tmp_path / "root-link"
    linked_root.symlink_to(real)
    store = LocalStorage(str(linked_root))
    assert store.size("data/alias/f") == 3
    assert store.local_path("data/alias/f") == str(real / "data" / "7" / "f")
    with store.open_write("data/8/new") as f:
        f.write(b"x")
    assert (real / "data" / "8" / "new").read_bytes() == b"x"


def test_a_file_is_received_in_staging_in_a_directory_and_in_place_in_a_store(
    storage: StorageClient,
) -> None:
    """A directory shows a file while it is written: it is received in the transaction's
    staging and renamed; a store publishes an object whole on close: it is received in place."""
    final = "data/7/rs1/0.parquet"
    got = receiving_path(storage, 42, "rs1", final)
    assert got == (final if isinstance(storage, ObjectStorage) else "staging/42/rs1.0.parquet")
    with pytest.raises(ValueError), storage.open_write(got) as f:  # a checksum that failed
        f.write(b"partial")
        raise ValueError("bad bytes")
    if isinstance(storage, ObjectStorage):
        assert storage.size(final) is None  # nothing published at the final name
