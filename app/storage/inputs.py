"""Reading a load's input, whatever its form, as a stream of Arrow record batches."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.errors import InvalidRequest, NotFound

BATCH_ROWS = 65536

LoadSource: TypeAlias = (
    str
    | os.PathLike[str]
    | pa.Table
    | pa.RecordBatch
    | pa.RecordBatchReader
    | Iterable[Mapping[str, Any]]
)


def read_batches(
    source: LoadSource, schema: pa.Schema, fmt: str | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream the input as record batches, whatever its form. Never reads a file whole."""
    if isinstance(source, pa.Table):
        yield from source.to_batches(max_chunksize=BATCH_ROWS)
        return
    if isinstance(source, pa.RecordBatch):
        yield source
        return
    if isinstance(source, pa.RecordBatchReader):
        yield from source
        return
    if isinstance(source, str | os.PathLike):
        yield from _read_file(Path(source), schema, fmt)
        return
    rows = list(source)
    if rows:
        try:
            yield pa.Table.from_pylist(rows).combine_chunks().to_batches()[0]
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InvalidRequest(f"rows cannot be read as a table: {exc}") from None


FORMATS = {
    "parquet": "parquet",
    "pq": "parquet",
    "csv": "csv",
    "tbl": "csv",
    "txt": "csv",
    "arrow": "arrow",
    "feather": "arrow",
    "ipc": "arrow",
    "arrows": "arrow",
}


def check_source(source: LoadSource, fmt: str | None) -> None:
    """Refuse at once what cannot be read at all: an unknown format, a missing file, a
    directory."""
    if fmt is not None and fmt.lower() not in FORMATS:
        raise InvalidRequest(f"unknown format {fmt!r}: use parquet, csv or arrow")
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            raise InvalidRequest(f"input {path} is a directory: name a file")
        if not path.is_file():
            raise NotFound(f"input file {path} does not exist")
        if fmt is None and path.suffix.lstrip(".").lower() not in FORMATS:
            raise InvalidRequest(
                f"cannot tell the format of {path}: name it .parquet, .csv or .arrow, "
                "or pass the format explicitly"
            )


def _read_file(path: Path, schema: pa.Schema, fmt: str | None) -> Iterator[pa.RecordBatch]:
    check_source(path, fmt)
    kind = FORMATS[(fmt or path.suffix.lstrip(".")).lower()]
    try:
        if kind == "parquet":
            with pq.ParquetFile(path) as pf:
                yield from pf.iter_batches(batch_size=BATCH_ROWS)
        elif kind == "csv":
            convert = pacsv.ConvertOptions(
                column_types={f.name: f.type for f in schema}, strings_can_be_null=True
            )
            read = pacsv.ReadOptions(block_size=16 * 1024 * 1024)
            with pacsv.open_csv(path, read_options=read, convert_options=convert) as csv_reader:
                yield from csv_reader
        else:
            with pa.memory_map(str(path)) as mm:
                try:
                    ipc_file = pa.ipc.open_file(mm)
                    for i in range(ipc_file.num_record_batches):
                        yield ipc_file.get_batch(i)
                except pa.ArrowInvalid:
                    mm.seek(0)
                    yield from pa.ipc.open_stream(mm)
    except (pa.ArrowException, OSError) as exc:
        reason = _zone_hint(str(exc).splitlines()[0])
        raise InvalidRequest(f"cannot read {path} as {kind}: {reason}") from None


def _zone_hint(reason: str) -> str:
    """Arrow's CSV message for a timestamp with or without a zone offset where the column wants
    the other, with our fix instead of Arrow's (which names its own API)."""
    if "expected a zone offset" in reason:
        return reason.split(". If these")[0] + (
            ": a timestamptz column needs an offset on every value "
            "(2026-01-01T06:00:00+02:00, or Z for UTC)"
        )
    if "expected no zone offset" in reason:
        return reason + (
            ": a datetime column has no time zone and a value's offset would be dropped; "
            "declare the column timestamptz, or write local times without an offset"
        )
    return reason
