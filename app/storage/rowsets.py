"""Writing one rowset's Parquet file to every replica, and reading rowsets back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from app.errors import ChecksumMismatch, SourceDataGone, StorageUnavailable
from app.schema import ColumnDef, adapt
from app.storage.checksum import FileMeta, checksum_stream, copy_verified
from app.storage.client import StorageClient, rowset_dir, storage_for

if TYPE_CHECKING:
    # Annotations only: app.catalog.model imports RowsetState from here.
    from app.catalog.model import Backend, RowsetInfo


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
    """Streams row groups of one tablet into Parquet on the first replica's backend; each file,
    once closed, is checksummed and copied, verified, to the other replicas.

    The file is opened at the first ``write``, not before, and ``suspend`` closes it early:
    a later ``write`` goes on in the rowset's next file (``1.parquet``, ...). That is how a
    load into many tablets keeps a bounded number of files open (app/storage/load.py); a
    rowset of several files is read, replicated and exported as one (its ``files`` list)."""

    def __init__(
        self, tablet_id: int, rowset_id: str, schema: pa.Schema, replicas: Sequence[Backend]
    ) -> None:
        self.tablet_id = tablet_id
        self.rowset_id = rowset_id
        self.schema = schema
        self.replicas = list(replicas)
        self.primary = storage_for(self.replicas[0].storage_root)
        self.files: list[FileMeta] = []  # closed, checksummed and copied
        self._sink: BinaryIO | None = None
        self._writer: pq.ParquetWriter | None = None
        self._name = ""
        self.num_rows = 0

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def _open(self) -> pq.ParquetWriter:
        self._name = f"{len(self.files)}.parquet"  # 0.parquet, then 1.parquet after a suspend
        self._sink = self.primary.open_write(
            f"{rowset_dir(self.tablet_id, self.rowset_id)}/{self._name}"
        )
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="snappy")
        return self._writer

    def write(self, table: pa.Table) -> None:
        writer = self._writer or self._open()
        writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.num_rows += table.num_rows

    def suspend(self) -> None:
        """Close the open file (if any) for good: checksummed and on every replica."""
        if not self.abandon():
            return
        path = f"{rowset_dir(self.tablet_id, self.rowset_id)}/{self._name}"
        with self.primary.open_read(path) as f:
            size, digest = checksum_stream(f)
        meta = FileMeta(self._name, size, digest)
        for backend in self.replicas[1:]:
            copy_file(self.primary, storage_for(backend.storage_root), path, path, meta)
        self.files.append(meta)

    def abandon(self) -> bool:
        """Close the open file as it is (a failed load: nothing records it); False if none."""
        if self._writer is None or self._sink is None:
            return False
        try:
            self._writer.close()
        finally:
            self._sink.close()
            self._writer = self._sink = None
        return True

    def finish(self) -> list[FileMeta]:
        """Close the last file; the rowset's files, in order. A rowset that got no rows has
        one file of no rows, as every rowset has at least one."""
        if not self.files and self._writer is None:
            self._open()
        self.suspend()
        return list(self.files)


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
    rowset: RowsetInfo, replicas: Sequence[Backend], columns: Sequence[ColumnDef] | None = None
) -> Iterator[pa.RecordBatch]:
    """Batches of a rowset, read from the first replica that has its files; with the table's
    ``columns``, as the table is now whatever schema wrote them (app/evolve.py)."""
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
                    for batch in pq.ParquetFile(fh).iter_batches(batch_size=65536):
                        yield batch if columns is None else adapt(batch, columns)
            return
        except StorageUnavailable as exc:
            last_error = exc
    if last_error is None:
        last_error = ChecksumMismatch(f"rowset {rowset.id} has no readable replica")
    raise last_error
