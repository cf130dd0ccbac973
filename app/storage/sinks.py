"""Where a load's rows wait and are written: one sink per tablet, flushed in row groups when
it holds enough (or when the load as a whole holds too much), with a bound on the files open
at once. app/storage/load.py routes rows here; app/storage/rowsets.py writes the files."""

from __future__ import annotations

from collections import OrderedDict

import pyarrow as pa

from app.storage.checksum import FileMeta
from app.storage.rowsets import RowsetWriter

# Read at every flush decision (tests lower them with monkeypatch).
FLUSH_TABLET_BYTES = 16 * 1024 * 1024
FLUSH_TOTAL_BYTES = 256 * 1024 * 1024
# Tablets whose file may be open at once (each holds a descriptor until its file is closed).
MAX_OPEN_FILES = 256


class OpenFiles:
    """At most ``limit`` tablets' files open at once. Writing to a tablet whose file is not
    open, at the limit, first closes the file written least recently (``suspend``: that
    tablet's later rows go into its rowset's next file). A load into 100,000 tablets kept a
    file open per tablet and failed with "Too many open files"."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.open: OrderedDict[str, RowsetWriter] = OrderedDict()

    def write(self, writer: RowsetWriter, table: pa.Table) -> None:
        if not writer.is_open:
            while len(self.open) >= self.limit:
                self.open.popitem(last=False)[1].suspend()
        writer.write(table)
        self.open[writer.rowset_id] = writer
        self.open.move_to_end(writer.rowset_id)

    def finish(self, writer: RowsetWriter) -> list[FileMeta]:
        self.open.pop(writer.rowset_id, None)
        return writer.finish()


class TabletSink:
    def __init__(self, writer: RowsetWriter, files: OpenFiles) -> None:
        self.writer = writer
        self.files = files
        self.pending: list[pa.RecordBatch] = []
        self.pending_bytes = 0

    def add(self, part: pa.RecordBatch) -> int:
        """Queue ``part``; flush when this tablet holds enough. Returns the change in bytes
        pending (negative after a flush)."""
        self.pending.append(part)
        self.pending_bytes += part.nbytes
        if self.pending_bytes >= FLUSH_TABLET_BYTES:
            flushed = self.pending_bytes
            self.flush()
            return part.nbytes - flushed
        return part.nbytes

    def flush(self) -> None:
        if self.pending:
            self.files.write(self.writer, pa.Table.from_batches(self.pending))
            self.pending = []
            self.pending_bytes = 0


def shed(sinks: dict[int, TabletSink], total_pending: int) -> int:
    """Flush the biggest sinks while more than FLUSH_TOTAL_BYTES wait; returns what is left."""
    while total_pending > FLUSH_TOTAL_BYTES:
        biggest = max(sinks.values(), key=lambda x: x.pending_bytes)
        total_pending -= biggest.pending_bytes
        biggest.flush()
    return total_pending
