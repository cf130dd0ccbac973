"""Object storage (S3 and compatible stores) as a backend's storage root.

A root is ``s3://BUCKET/PREFIX?endpoint=URL``: the bucket, a prefix inside it (the backend's
"directory") and the store's endpoint. The endpoint is part of the root so that the catalog says
where the data is for every host that reads it (a target cluster's workers read a source
backend's root from the source's catalog); without one, ``AWS_ENDPOINT_URL`` of the process, then
AWS itself. Credentials never appear in a root, a catalog row or a message: they come from the
process environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``), as every S3 tool reads them.

The client library is obstore (Rust's object_store): measured on this machine against boto3
against the same SeaweedFS, it spent 7-9x less CPU per request on small objects (README,
"Object storage"), which is what a table of many small tablets costs.

What an object store cannot do the way a directory does, and what this does instead:

* No rename: ``rename`` is a server-side copy, then a delete of the source. A reader of the
  destination sees the old object or the new one (a PUT or copy replaces an object whole).
* No directories: a "directory" is a key prefix ending at ``/``; ``list_dirs`` lists the common
  prefixes, ``delete_tree`` deletes every key under one.
* No partial objects: a writer uploads in parts (multipart, ``PART_BYTES`` each) and publishes
  the object when it is closed; an upload abandoned by an exception publishes nothing.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import S3Store

from app.errors import InvalidRequest, StorageUnavailable
from app.storage.objectio import ObjectReader, ObjectWriter

if TYPE_CHECKING:
    pass

SCHEME = "s3://"
PART_BYTES = 8 * 1024 * 1024  # a writer's buffer (in memory), and a multipart upload's part size
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DELETE_BATCH = 1000  # S3's DeleteObjects takes at most 1,000 keys a request
# obstore raises the builtin FileNotFoundError for a missing object (its own NotFoundError too,
# in some versions and calls): both mean "missing", never "unreachable".
_MISSING = (NotFoundError, FileNotFoundError)
ROOT_SEEN_SEC = 2.0
_root_seen: dict[str, float] = {}  # root -> when it was last listed fine (monotonic)


def is_object_root(root: str) -> bool:
    return root.startswith(SCHEME)


@dataclass(frozen=True)
class ObjectRoot:
    """A parsed ``s3://`` root."""

    bucket: str
    prefix: str  # without leading or trailing "/"; may be empty
    endpoint: str | None  # scheme://host[:port], or None for AWS itself

    @staticmethod
    def parse(root: str) -> ObjectRoot:
        """The root's parts, validated; InvalidRequest (one line, what to give) otherwise."""
        if "@" in root:  # said without the root: what is before the @ may be a secret
            raise InvalidRequest(
                "an s3:// root carries no credentials (it is kept in catalogs and jobs): put "
                "them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and give s3://BUCKET/PREFIX"
            )
        parts = urlsplit(root)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidRequest(f"storage root {root!r} is not s3://BUCKET/PREFIX")
        if not _BUCKET.match(parts.netloc):
            raise InvalidRequest(
                f"storage root {root!r}: {parts.netloc!r} is not a bucket name (3-63 lowercase "
                "letters, digits, dots and hyphens)"
            )
        prefix = parts.path.strip("/")
        if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
            raise InvalidRequest(f"storage root {root!r}: the prefix is not a clean path")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(options) - {"endpoint"}
        if unknown or parts.fragment:
            raise InvalidRequest(
                f"storage root {root!r}: only ?endpoint=URL may follow the prefix, not "
                f"{', '.join(sorted(unknown)) or '#' + parts.fragment}"
            )
        endpoint = options.get("endpoint") or None
        return ObjectRoot(parts.netloc, prefix, _endpoint(endpoint, root) if endpoint else None)

    @property
    def resolved_endpoint(self) -> str | None:
        """Where requests go: the root's endpoint, else ``AWS_ENDPOINT_URL``, else AWS."""
        return self.endpoint or _env_endpoint()

    def canonical(self) -> str:
        """The root as the catalog records it: the endpoint spelled out (``AWS_ENDPOINT_URL``
        when the root named none), so that every host that reads the catalog finds the same
        store whatever its own environment says."""
        body = f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")
        endpoint = self.resolved_endpoint
        # Not percent-encoded: an endpoint has no "&" or "=", and the catalog stays readable.
        return f"{body}?endpoint={endpoint}" if endpoint else body

    def same_store(self, other: ObjectRoot) -> bool:
        """Whether a server-side copy can go from one to the other: one endpoint and one
        bucket (a copy request names its source by a key of the same store)."""
        return self.resolved_endpoint == other.resolved_endpoint and self.bucket == other.bucket

    def overlaps(self, other: ObjectRoot) -> bool:
        """One root is the other or lies inside it: two backends must never share keys."""
        if not self.same_store(other):
            return False
        a, b = self.prefix + "/", other.prefix + "/"
        return not self.prefix or not other.prefix or a.startswith(b) or b.startswith(a)


def _endpoint(url: str, root: str) -> str:
    e = urlsplit(url)
    if "@" in e.netloc:
        raise InvalidRequest(
            "an S3 endpoint carries no credentials: put them in AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY and give http(s)://HOST[:PORT]"
        )
    if e.scheme not in ("http", "https") or not e.hostname or e.path not in ("", "/") or e.query:
        raise InvalidRequest(
            f"storage root {root!r}: endpoint {url!r} is not http(s)://HOST[:PORT]"
        )
    return f"{e.scheme}://{e.netloc}"


def _env_endpoint() -> str | None:
    url = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
    return _endpoint(url, "AWS_ENDPOINT_URL") if url else None


@lru_cache(maxsize=64)
def _store(bucket: str, endpoint: str | None, prefix: str) -> S3Store:
    """One client per (bucket, endpoint, prefix) in a process: its connections are reused."""
    config: dict[str, Any] = {"region": os.environ.get("AWS_REGION", "us-east-1")}
    for key, env in (
        ("access_key_id", "AWS_ACCESS_KEY_ID"),
        ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ("session_token", "AWS_SESSION_TOKEN"),
    ):
        if os.environ.get(env):
            config[key] = os.environ[env]
    if endpoint:
        config["endpoint"] = endpoint
    return S3Store(
        bucket,
        prefix=prefix or None,
        client_options={
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "connect_timeout": "5s",
            "timeout": "120s",
        },
        # A few quick retries inside a call; the task's own retry policy does the rest.
        retry_config={
            "max_retries": 3,
            "retry_timeout": timedelta(seconds=20),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
        },
        **config,
    )


class ObjectStorage:
    """A storage root that is a prefix of an S3 bucket (see the module's text)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.where = ObjectRoot.parse(root)
        self.store = _store(self.where.bucket, self.where.resolved_endpoint, self.where.prefix)

    # -- errors ----------------------------------------------------------------------------
    def _unavailable(self, doing: str, path: str, exc: BaseException) -> StorageUnavailable:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StorageUnavailable(f"cannot {doing} {path} under {self.root}: {first[:300]}")

    def _gone(self, doing: str, path: str) -> Exception:
        """What a "not found" answer means: a missing object when the root can be listed, an
        unreachable root (StorageUnavailable) when it cannot, e.g. the bucket is gone: a root
        that is away must never be taken for data that is gone. A root listed in the last
        ROOT_SEEN_SEC is taken as there: an apply asks about every file it is about to write
        (absent, mostly), and a LIST after each such HEAD doubled its requests."""
        seen = _root_seen.get(self.root)
        if seen is None or time.monotonic() - seen > ROOT_SEEN_SEC:
            try:
                self.check()
            except StorageUnavailable as exc:
                return exc
        return FileNotFoundError(f"no object {path} under {self.root} (cannot {doing} it)")

    def _key(self, path: str) -> str:
        parts = path.split("/")
        if not path or "\x00" in path or any(p in ("", ".", "..") for p in parts):
            raise InvalidRequest(
                f"storage path {path[:80]!r} is not a clean relative path under {self.root}"
            )
        return path

    # -- the StorageClient interface (app/storage/client.py has each method's contract) ----
    def check(self) -> None:
        try:
            obstore.list_with_delimiter(self.store, None)
        except Exception as exc:
            _root_seen.pop(self.root, None)
            raise self._unavailable("list", "the root", exc) from None
        _root_seen[self.root] = time.monotonic()

    def open_read(self, path: str) -> BinaryIO:
        key = self._key(path)
        try:
            return io.BufferedReader(ObjectReader(self.store, key), buffer_size=64 * 1024)
        except _MISSING:
            raise self._gone("read", path) from None
        except Exception as exc:
            raise self._unavailable("read", path, exc) from None

    def open_write(self, path: str) -> BinaryIO:
        key = self._key(path)
        try:
            f = obstore.open_writer(self.store, key, buffer_size=PART_BYTES, max_concurrency=4)
        except Exception as exc:
            raise self._unavailable("write", path, exc) from None
        return ObjectWriter(f, self, path)  # type: ignore[return-value]

    def local_path(self, path: str) -> str | None:
        return None

    def size(self, path: str) -> int | None:
        key = self._key(path)
        try:
            return int(obstore.head(self.store, key)["size"])
        except _MISSING:
            gone = self._gone("stat", path)
            if isinstance(gone, FileNotFoundError):
                return None
            raise gone from None
        except Exception as exc:
            raise self._unavailable("stat", path, exc) from None

    def rename(self, src: str, dst: str) -> None:
        a, b = self._key(src), self._key(dst)
        try:
            obstore.copy(self.store, a, b)
        except _MISSING:
            raise self._gone("rename", src) from None
        except Exception as exc:
            raise self._unavailable("rename", f"{src} to {dst}", exc) from None
        try:
            obstore.delete(self.store, a)
        except _MISSING:
            pass  # removed meanwhile: the copy is what counts
        except Exception as exc:
            raise self._unavailable("delete", src, exc) from None

    def delete_tree(self, path: str) -> None:
        key = self._key(path)
        try:
            batch = [key]  # the object at ``path`` itself, if there is one
            for chunk in obstore.list(self.store, key + "/", chunk_size=_DELETE_BATCH):
                batch += [m["path"] for m in chunk]
                while len(batch) >= _DELETE_BATCH:
                    obstore.delete(self.store, batch[:_DELETE_BATCH])
                    batch = batch[_DELETE_BATCH:]
            if batch:
                obstore.delete(self.store, batch)
        except _MISSING:
            return
        except Exception as exc:
            raise self._unavailable("delete", path, exc) from None

    def list_dirs(self, path: str) -> list[str]:
        # From the keys below, not from the store's "common prefixes": SeaweedFS keeps listing
        # a folder after its last object is deleted (S3 does not), and a prefix with nothing
        # under it is no directory here (GC took each such one for an orphan, every run).
        key = self._key(path) + "/"
        names: set[str] = set()
        try:
            for chunk in obstore.list(self.store, key, chunk_size=_DELETE_BATCH):
                for m in chunk:
                    rest = m["path"][len(key) :]
                    if "/" in rest:
                        names.add(rest.split("/", 1)[0])
        except _MISSING:
            return []
        except Exception as exc:
            raise self._unavailable("list", path, exc) from None
        return sorted(names)

    def walk_files(self, path: str) -> Iterator[tuple[str, float]]:
        key = self._key(path)
        try:
            for chunk in obstore.list(self.store, key + "/", chunk_size=_DELETE_BATCH):
                for m in chunk:
                    yield m["path"], m["last_modified"].timestamp()
        except _MISSING:
            return
        except Exception as exc:
            raise self._unavailable("walk", path, exc) from None

    # -- beyond the interface ----------------------------------------------------------------
    def copy_from(self, src: ObjectStorage, src_path: str, dst_path: str) -> int:
        """Copy ``src_path`` of ``src`` to ``dst_path`` here inside the store (no byte passes
        through this process); returns the size copied. Only when ``same_store``: the caller
        checks. FileNotFoundError if the source object is missing."""
        a = f"{src.where.prefix}/{src._key(src_path)}".lstrip("/")
        b = f"{self.where.prefix}/{self._key(dst_path)}".lstrip("/")
        bucket = _store(self.where.bucket, self.where.resolved_endpoint, "")
        try:
            obstore.copy(bucket, a, b)
            return int(obstore.head(bucket, b)["size"])
        except _MISSING:
            raise FileNotFoundError(f"no object {src_path} under {src.root}") from None
        except Exception as exc:
            raise self._unavailable("copy", f"{src.root}/{src_path} to {dst_path}", exc) from None
