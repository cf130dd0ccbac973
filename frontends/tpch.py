"""TPC-H lineitem for the demo and the benchmarks: generated with tpchgen-cli, cached, loaded.

bench/out/data/sf<N>/lineitem.parquet       generated once, reused by later runs
bench/out/data/sf<N>_parts<P>/lineitem/     the same in P files (``parts``)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.client import ClusterHandle

DATA_DIR = Path(__file__).resolve().parents[1] / "bench" / "out" / "data"


def tpchgen_executable() -> str:
    """``tpchgen-cli`` next to the running interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "tpchgen-cli"
    if local.exists():
        return str(local)
    found = shutil.which("tpchgen-cli")
    if found is None:
        raise RuntimeError("tpchgen-cli is not installed: pip install tpchgen-cli")
    return found


def _sf_label(scale_factor: float) -> str:
    return f"{scale_factor:g}".replace(".", "_")


def lineitem_files(scale_factor: float = 1, parts: int | None = None) -> list[Path]:
    """Parquet file(s) of TPC-H lineitem at ``scale_factor``, generated once and cached.

    With ``parts`` tpchgen writes ``parts`` files; without it, one file. Scale factor 1 is
    6,001,215 rows (about 220 MB of snappy Parquet).
    """
    base = DATA_DIR / f"sf{_sf_label(scale_factor)}"
    if parts:
        base = base.with_name(f"{base.name}_parts{parts}")
        target_dir = base / "lineitem"
        pattern = "lineitem.*.parquet"
    else:
        target_dir = base
        pattern = "lineitem.parquet"
    done = base / ".complete"
    if not done.exists():
        tmp = base.with_name(base.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cmd = [
            tpchgen_executable(),
            "parquet",
            "--scale-factor",
            f"{scale_factor:g}",
            "--tables",
            "lineitem",
            "--output-dir",
            str(tmp),
            "--quiet",
        ]
        if parts:
            cmd += ["--parts", str(parts)]
        subprocess.run(cmd, check=True)
        shutil.rmtree(base, ignore_errors=True)
        base.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(base)
        done.touch()
    files = sorted(target_dir.glob(pattern))
    if not files:
        raise RuntimeError(f"tpchgen-cli wrote no lineitem files under {target_dir}")
    return files


def parquet_rows(files: Sequence[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def load_source(files: Sequence[Path]) -> Any:
    """What to pass to ``ClusterHandle.load``: the path of a single file, or one
    RecordBatchReader over all of them so that several files still load as one transaction."""
    if len(files) == 1:
        return str(files[0])
    import pyarrow.dataset as ds

    return ds.dataset([str(f) for f in files], format="parquet").scanner().to_reader()


# The table schema matching tpchgen-cli's Parquet (all its columns are NOT NULL; its strings are
# Arrow string_view, which a load converts to string).
LINEITEM_COLUMNS: list[str] = [
    "l_orderkey:int64:not null",
    "l_partkey:int64:not null",
    "l_suppkey:int64:not null",
    "l_linenumber:int32:not null",
    "l_quantity:decimal(15,2):not null",
    "l_extendedprice:decimal(15,2):not null",
    "l_discount:decimal(15,2):not null",
    "l_tax:decimal(15,2):not null",
    "l_returnflag:string:not null",
    "l_linestatus:string:not null",
    "l_shipdate:date:not null",
    "l_commitdate:date:not null",
    "l_receiptdate:date:not null",
    "l_shipinstruct:string:not null",
    "l_shipmode:string:not null",
    "l_comment:string:not null",
]

# Ship dates span 1992-01-02 .. 1998-12-01; the outer partitions are unbounded so that any
# generated row has a home, and the four are roughly equal in size.
LINEITEM_PARTITIONS: list[tuple[str, str | None, str | None]] = [
    ("p1992_1993", None, "1994-01-01"),
    ("p1994_1995", "1994-01-01", "1996-01-01"),
    ("p1996_1997", "1996-01-01", "1998-01-01"),
    ("p1998", "1998-01-01", None),
]


def create_lineitem(
    cluster: ClusterHandle,
    full_name: str = "tpch.lineitem",
    *,
    buckets: int = 16,
    replication_num: int = 1,
) -> Any:
    return cluster.create_table(
        full_name,
        LINEITEM_COLUMNS,
        partition_by="l_shipdate",
        partitions=LINEITEM_PARTITIONS,
        distributed_by=["l_orderkey"],
        buckets=buckets,
        replication_num=replication_num,
    )
