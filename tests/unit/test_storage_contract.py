"""The StorageClient contract, checked on LocalStorage over a real temporary directory.

Every test takes a client from ``storage``; an object-storage client can be added to that
fixture's parameters later and must pass the same tests. "Unreachable" roots are paths below a
regular file (ENOTDIR) and roots that do not exist; mode 000 would not do, tests run as root.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.errors import InvalidRequest, RetryableError, StorageUnavailable
from app.storage.client import LocalStorage, StorageClient, storage_for


@pytest.fixture
def storage(tmp_path: Path) -> StorageClient:
    root = tmp_path / "root"
    root.mkdir()
    return LocalStorage(str(root))


def put(storage: StorageClient, path: str, data: bytes = b"x") -> None:
    with storage.open_write(path) as f:
        f.write(data)


def read(storage: StorageClient, path: str) -> bytes:
    with storage.open_read(path) as f:
        return f.read()


UNREACHABLE_KINDS = ["below-a-file", "gone"]


@pytest.fixture(params=UNREACHABLE_KINDS)
def unreachable(request: pytest.FixtureRequest, tmp_path: Path) -> StorageClient:
    if request.param == "below-a-file":
        blocker = tmp_path / "a-file"
        blocker.write_bytes(b"not a directory")
        return LocalStorage(str(blocker / "root"))
    return LocalStorage(str(tmp_path / "unplugged"))


# -- the happy path ------------------------------------------------------------------------


def test_storage_for_a_directory_is_local_storage(tmp_path: Path) -> None:
    assert isinstance(storage_for(str(tmp_path)), LocalStorage)


def test_write_creates_parents_and_read_returns_the_bytes(storage: StorageClient) -> None:
    put(storage, "data/1/rs/0.parquet", b"hello")
    assert read(storage, "data/1/rs/0.parquet") == b"hello"
    assert storage.size("data/1/rs/0.parquet") == 5


def test_write_replaces_an_existing_file(storage: StorageClient) -> None:
    put(storage, "a/f", b"long content")
    put(storage, "a/f", b"short")
    assert read(storage, "a/f") == b"short"


def test_local_path_names_the_file_without_touching_anything(storage: StorageClient) -> None:
    path = storage.local_path("data/9/nothing/here")
    assert path is not None and path == os.path.join(storage.root, "data/9/nothing/here")
    assert not os.path.exists(path)
    put(storage, "data/1/f", b"abc")
    local = storage.local_path("data/1/f")
    assert local is not None and Path(local).read_bytes() == b"abc"


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


def test_rename_onto_a_path_below_a_file_is_unavailable_not_missing(
    storage: StorageClient,
) -> None:
    put(storage, "src")
    put(storage, "blocker")
    with pytest.raises(StorageUnavailable):
        storage.rename("src", "blocker/dst")
    assert read(storage, "src") == b"x"


# -- delete, list, walk --------------------------------------------------------------------


def test_delete_tree_removes_a_prefix_and_is_idempotent(storage: StorageClient) -> None:
    put(storage, "data/1/a/f")
    put(storage, "data/1/b/g")
    put(storage, "data/10/c/h")  # shares the text "data/1" but not the prefix "data/1/"
    storage.delete_tree("data/1")
    storage.delete_tree("data/1")
    assert storage.size("data/1/a/f") is None and storage.size("data/1/b/g") is None
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
    old = time.time() - 7200
    local = storage.local_path("data/2/s/0.parquet")
    assert local is not None
    os.utime(local, (old, old))
    assert dict(storage.walk_files("data/2"))["data/2/s/0.parquet"] == pytest.approx(old)


def test_walk_files_skips_files_that_vanish_during_the_walk(storage: StorageClient) -> None:
    for i in range(4):
        put(storage, f"d/{i}/f")
    seen = []
    for path, _mtime in storage.walk_files("d"):
        seen.append(path)
        storage.delete_tree("d")  # everything not yet visited disappears
    assert len(seen) == 1


# -- an unreachable root -------------------------------------------------------------------

CALLS: dict[str, Callable[[StorageClient], object]] = {
    "check": lambda st: st.check(),
    "open_read": lambda st: st.open_read("data/1/r/0.parquet"),
    "open_write": lambda st: st.open_write("data/1/r/0.parquet"),
    "size": lambda st: st.size("data/1/r/0.parquet"),
    "rename": lambda st: st.rename("staging/1/r.0.parquet", "data/1/r/0.parquet"),
    "delete_tree": lambda st: st.delete_tree("data/1"),
    "list_dirs": lambda st: st.list_dirs("data"),
    "walk_files": lambda st: list(st.walk_files("data")),
}


@pytest.mark.parametrize("method", sorted(CALLS))
def test_an_unreachable_root_raises_storage_unavailable(
    unreachable: StorageClient, method: str
) -> None:
    with pytest.raises(StorageUnavailable) as caught:
        CALLS[method](unreachable)
    assert isinstance(caught.value, RetryableError)
    assert not isinstance(caught.value, OSError)


def test_local_path_never_raises_even_for_an_unreachable_root(
    unreachable: StorageClient,
) -> None:
    assert unreachable.local_path("data/1") == os.path.join(unreachable.root, "data/1")


def test_a_failure_that_is_not_a_missing_file_is_unavailable(storage: StorageClient) -> None:
    put(storage, "blocker")
    with pytest.raises(StorageUnavailable):
        storage.open_write("blocker/below")  # a file where a directory must be
    os.mkdir(os.path.join(storage.root, "a-dir"))
    with pytest.raises(StorageUnavailable):
        storage.open_write("a-dir")  # a directory where a file must be


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
