"""Writing one rowset's Parquet file to every replica, and reading rowsets back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from app.errors import ChecksumMismatch, SourceDataGone, StorageUnavailable
from app.storage.checksum import FileMeta, checksum_stream, copy_verified
from app.storage.client import StorageClient, rowset_dir, storage_for

if TYPE_CHECKING:
    # Annotations only: app.catalog.model imports RowsetState from here.
    from app.catalog.model import Backend, RowsetInfo

DATA_FILE = "0.parquet"


class RowsetState(StrEnum):
    """The life of a rowset (``rowsets.state``)::

        PENDING --commit--> VISIBLE --replaced--> STALE --gc--> DELETED
        PENDING --abort---> STALE

    PENDING: written by an open transaction (a load, a compaction, a replication apply);
    nothing reads it. VISIBLE: part of its tablet at versions [start_version, end_version].
    STALE: replaced by a compaction, an overwrite or a full replication, or left by an aborted
    transaction; its files stay until GC deletes them, and as long as a hold covers them.
    DELETED: its files are gone (or being removed); the row remains as a record.
    """

    PENDING = "PENDING"
    VISIBLE = "VISIBLE"
    STALE = "STALE"
    DELETED = "DELETED"


def new_rowset_id() -> str:
    return uuid.uuid4().hex


class RowsetWriter:
    """Streams row groups of one tablet into a Parquet file on the first replica's backend;
    ``finish`` checksums it and copies it, verified, to the other replicas."""

    def __init__(
        self, tablet_id: int, rowset_id: str, schema: pa.Schema, replicas: Sequence[Backend]
    ) -> None:
        self.tablet_id = tablet_id
        self.rowset_id = rowset_id
        self.replicas = list(replicas)
        self.path = f"{rowset_dir(tablet_id, rowset_id)}/{DATA_FILE}"
        self.primary = storage_for(self.replicas[0].storage_root)
        self._sink = self.primary.open_write(self.path)
        self._writer = pq.ParquetWriter(self._sink, schema, compression="snappy")
        self.num_rows = 0

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.num_rows += table.num_rows

    def abandon(self) -> None:
        try:
            self._writer.close()
        finally:
            self._sink.close()

    def finish(self) -> FileMeta:
        self._writer.close()
        self._sink.close()
        with self.primary.open_read(self.path) as f:
            size, digest = checksum_stream(f)
        meta = FileMeta(DATA_FILE, size, digest)
        for backend in self.replicas[1:]:
            copy_file(self.primary, storage_for(backend.storage_root), self.path, self.path, meta)
        return meta


def copy_file(
    src: StorageClient, dst: StorageClient, src_path: str, dst_path: str, meta: FileMeta
) -> int:
    tmp = dst_path + ".part"
    with src.open_read(src_path) as fin, dst.open_write(tmp) as fout:
        copied = copy_verified(fin, fout, meta)
    dst.rename(tmp, dst_path)
    return copied


def verify_file(storage: StorageClient, path: str, meta: FileMeta) -> bool:
    if storage.size(path) != meta.size:
        return False
    with storage.open_read(path) as f:
        return checksum_stream(f, size_hint=meta.size) == (meta.size, meta.checksum)


def read_rowset(
    rowset: RowsetInfo, replicas: Sequence[Backend], columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Batches of a rowset, read from the first replica that has its files."""
    last_error: Exception | None = None
    for backend in replicas:
        storage = storage_for(backend.storage_root)
        base = rowset_dir(rowset.tablet_id, rowset.id)
        try:
            files = [f"{base}/{f['name']}" for f in rowset.files]
            if any(storage.size(p) is None for p in files):
                last_error = SourceDataGone(f"rowset {rowset.id} is missing on {backend.name}")
                continue
            for path in files:
                with storage.open_read(path) as fh:
                    yield from pq.ParquetFile(fh).iter_batches(batch_size=65536, columns=columns)
            return
        except StorageUnavailable as exc:
            last_error = exc
    if last_error is None:
        last_error = ChecksumMismatch(f"rowset {rowset.id} has no readable replica")
    raise last_error
