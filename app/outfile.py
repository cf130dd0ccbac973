"""One Parquet file written atomically: a temporary name in the same directory, renamed into
place only when complete, and removed on any failure, so the named file is either absent, the
old one, or the whole new one."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from app.errors import AlreadyExists, InvalidRequest


def check_target(path: str | os.PathLike[str], force: bool) -> Path:
    """The absolute output path, or a UserError if a file cannot (or may not) be written there.
    Changes nothing."""
    out = Path(os.path.abspath(path))
    if out.is_dir():
        raise InvalidRequest(f"{out} is a directory: name the file to write, e.g. {out}/t.parquet")
    if not out.parent.is_dir():
        raise InvalidRequest(f"directory {out.parent} does not exist: create it first")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise InvalidRequest(f"cannot write in directory {out.parent}: permission denied")
    if out.exists() and not force:
        raise AlreadyExists(
            f"{out} already exists: remove it, or export with --force to replace it"
        )
    return out


class AtomicParquet:
    """``with AtomicParquet(path, schema, force) as w: w.write(batch)``: the file appears at
    ``path`` when the block ends without an error, and nothing is left if it raises."""

    def __init__(self, path: Path, schema: pa.Schema, force: bool) -> None:
        self.path = path
        self.schema = schema
        self.force = force
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> AtomicParquet:
        try:
            self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="snappy")
        except OSError as exc:
            self._discard()
            raise InvalidRequest(f"cannot write {self.path}: {exc.strerror or exc}") from None
        return self

    def write(self, batch: pa.RecordBatch) -> None:
        assert self._writer is not None
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._publish()
        except BaseException:
            self._discard()
            raise

    def _publish(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        with open(self.tmp, "rb") as f:  # durable before it gets its name
            os.fsync(f.fileno())
        if self.force:
            os.replace(self.tmp, self.path)
        else:
            # A link fails if the name was taken meanwhile: never replace a file not asked to.
            try:
                os.link(self.tmp, self.path)
            except FileExistsError:
                raise AlreadyExists(
                    f"{self.path} appeared while exporting: remove it, or export with --force"
                ) from None
            os.unlink(self.tmp)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _discard(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
