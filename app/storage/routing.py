"""Routing a load's rows to partitions by the partition column's value."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa

from app.catalog.model import PartitionInfo, TableInfo
from app.errors import RowsOutsidePartitions
from app.timestamps import bound_micros, zone_of


class PartitionRouter:
    """Maps partition-key values to partition indexes with one ``searchsorted``."""

    def __init__(self, table: TableInfo, partitions: list[PartitionInfo]) -> None:
        self.table = table
        self.partitions = partitions
        self.column = table.partition_column
        if self.column is None:
            return
        col_type = table.column(self.column).type
        self._kind = col_type
        order = sorted(
            range(len(partitions)),
            key=lambda i: (partitions[i].lower is not None, partitions[i].lower),
        )
        self._order = np.array(order, dtype=np.int64)
        lows = [partitions[i].lower for i in order]
        highs = [partitions[i].upper for i in order]
        self._lower = self._bounds(lows, low=True)
        self._upper = self._bounds(highs, low=False)
        self._unbounded = np.array([h is None for h in highs], dtype=bool)

    def _convert(self, value: Any) -> Any:
        if self._kind == "date":
            return (dt.date.fromisoformat(value) - dt.date(1970, 1, 1)).days
        if self._kind == "datetime" or zone_of(self._kind) is not None:
            return bound_micros(value)
        return value

    def _bounds(self, values: list[Any], *, low: bool) -> np.ndarray:
        if self._kind == "string":
            big = "\U0010ffff" * 8
            return np.array(
                [("" if low else big) if v is None else v for v in values], dtype=object
            )
        lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        return np.array(
            [(lo if low else hi) if v is None else self._convert(v) for v in values], dtype=np.int64
        )

    def _keys(self, arr: pa.Array) -> np.ndarray:
        if self._kind == "string":
            return arr.to_numpy(zero_copy_only=False).astype(object)
        if self._kind == "date":
            return arr.cast(pa.int32()).cast(pa.int64()).to_numpy()
        return arr.cast(pa.int64()).to_numpy()

    def route(self, batch: pa.RecordBatch) -> np.ndarray:
        if self.column is None:
            return np.zeros(batch.num_rows, dtype=np.int64)
        arr = batch.column(self.column)
        if arr.null_count:
            raise RowsOutsidePartitions(
                f"{arr.null_count} rows have a NULL {self.column}, which fits no partition of "
                f"{self.table.full_name}; nothing was loaded"
            )
        keys = self._keys(arr)
        pos = np.searchsorted(self._lower, keys, side="right") - 1
        safe = np.clip(pos, 0, len(self._lower) - 1)
        ok = (pos >= 0) & ((keys < self._upper[safe]) | self._unbounded[safe])
        if not ok.all():
            bad = int((~ok).sum())
            example = arr[int(np.flatnonzero(~ok)[0])].as_py()
            ranges = ", ".join(f"{p.name} [{p.lower}, {p.upper})" for p in self.partitions)
            raise RowsOutsidePartitions(
                f"{bad} rows fit no partition of {self.table.full_name} (e.g. {self.column}="
                f"{example}); partitions are {ranges}. Add a partition or filter the rows; "
                "nothing was loaded"
            )
        return self._order[safe]
