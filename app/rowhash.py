"""Deterministic per-row hashes: bucket routing and order-independent content checksums.

Both must give the same answer in every process and on every cluster, so they use pandas'
``hash_array`` (SipHash with a fixed key) on values normalised by Arrow type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pandas.util import hash_array

_NULL_MARK = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0x100000001B3)
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def _values(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pc.fill_null(arr.cast(pa.int64()), 0).to_numpy()
    if pa.types.is_date32(t):
        return pc.fill_null(arr.cast(pa.int32()).cast(pa.int64()), 0).to_numpy()
    if pa.types.is_timestamp(t) or pa.types.is_date64(t):
        return pc.fill_null(arr.cast(pa.int64()), 0).to_numpy()
    if pa.types.is_floating(t):
        return pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy()
    return pc.fill_null(arr.cast(pa.string()), "").to_numpy(zero_copy_only=False)


def _decimal_hashes(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Hash decimal128 values from their two 64-bit words: no conversion to text."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    words = np.frombuffer(
        arr.buffers()[1], dtype=np.int64, count=2 * len(arr), offset=arr.offset * 16
    ).reshape(-1, 2)
    return hash_array(words[:, 0].copy()) * _MIX + hash_array(words[:, 1].copy())


def column_hashes(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    h: np.ndarray
    if pa.types.is_decimal128(arr.type):
        h = _decimal_hashes(arr)
    else:
        values = _values(arr)
        # Most string columns are nearly unique: factorizing them first only costs time.
        h = hash_array(values, categorize=values.dtype != object)
    if arr.null_count:
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        # The bytes under a null are undefined: hash every null alike.
        h = np.where(nulls, np.uint64(0), h) ^ (nulls.astype(np.uint64) * _NULL_MARK)
    return h


def row_hashes(
    batch: pa.RecordBatch | pa.Table, columns: Sequence[str] | None = None
) -> np.ndarray:
    names = list(columns) if columns is not None else batch.schema.names
    out = np.zeros(batch.num_rows, dtype=np.uint64)
    for name in names:
        out = out * _MIX + column_hashes(batch.column(name))
    return out


def _finalize(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer. A row hash is linear in its column hashes, so a plain sum
    of row hashes would only see each column's multiset of values (rows (1,2),(2,1) would equal
    (1,1),(2,2)); mixing each row hash non-linearly before summing ties the values of a row."""
    h = h ^ (h >> _S33)
    h = h * _FMIX1
    h = h ^ (h >> _S33)
    h = h * _FMIX2
    return h ^ (h >> _S33)


def bucket_of(batch: pa.RecordBatch, columns: Sequence[str], buckets: int) -> np.ndarray:
    if buckets == 1:
        return np.zeros(batch.num_rows, dtype=np.int64)
    return (row_hashes(batch, columns) % np.uint64(buckets)).astype(np.int64)


class ContentChecksum:
    """Row count and wrapping sum of row hashes: equal for equal multisets of rows."""

    def __init__(self) -> None:
        self.rows = 0
        self.total = np.uint64(0)

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        with np.errstate(over="ignore"):
            self.total = np.uint64(self.total + _finalize(row_hashes(batch)).sum(dtype=np.uint64))

    def merge(self, other: ContentChecksum) -> None:
        self.rows += other.rows
        with np.errstate(over="ignore"):
            self.total = np.uint64(self.total + other.total)

    @property
    def hexdigest(self) -> str:
        return f"{int(self.total):016x}"
