"""A backup's manifest: what it holds, in one JSON document, and the checks that let a
manifest read back from a repository be trusted.

It names the table (columns, partitioning, distribution), and per partition its version, its
version epoch, the commit times of the versions the source still knew, and per bucket the
rowsets (version ranges, rows, files with size and checksum). A file is the repository object
``objects/<checksum>-<size>``, so the manifest is all a restore needs besides the objects.

The document carries a checksum of its body: a manifest garbled in the repository is refused
as a whole rather than half-trusted. Every name and number in it is checked as the catalog
checks its own before anything is built from it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

import xxhash

from app.backup.repo import check_backup_name, object_key
from app.catalog import names as catalog_names
from app.errors import CorruptBackup, ReplicatorError
from app.schema import ColumnDef, columns_from
from app.storage.checksum import FileMeta
from app.transfer import names

FORMAT = 1
_CHECKSUM = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Rowset:
    id: str
    start: int
    end: int
    num_rows: int
    data_size: int
    files: tuple[FileMeta, ...]


@dataclass(frozen=True)
class Tablet:
    bucket: int
    rowsets: tuple[Rowset, ...]


@dataclass(frozen=True)
class Partition:
    name: str
    lower: Any
    upper: Any
    version: int
    epoch: int
    history: tuple[tuple[int, dt.datetime], ...]  # (version, committed at), oldest first
    tablets: tuple[Tablet, ...]

    def files(self) -> list[FileMeta]:
        return [f for t in self.tablets for r in t.rowsets for f in r.files]


@dataclass(frozen=True)
class Manifest:
    name: str
    cluster: str
    table: str
    taken_at: dt.datetime
    job_id: int
    columns: tuple[ColumnDef, ...]
    partition_column: str | None
    distribution_columns: tuple[str, ...]
    buckets: int
    replication_num: int
    partitions: tuple[Partition, ...]
    uploaded_bytes: int = 0  # what this backup's own uploads moved (the rest was there)
    uploaded_objects: int = 0

    @property
    def bytes(self) -> int:
        return sum(f.size for p in self.partitions for f in p.files())

    def objects(self) -> dict[str, FileMeta]:
        """The repository objects this backup needs, by key."""
        return {object_key(f): f for p in self.partitions for f in p.files()}

    def partition(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)

    def to_text(self) -> str:
        body = _body(self)
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return json.dumps(
            {
                "format": FORMAT,
                "checksum": xxhash.xxh3_64(text.encode()).hexdigest(),
                "backup": body,
            },
            sort_keys=True,
            indent=1,
        )


def _body(m: Manifest) -> dict[str, Any]:
    return {
        "name": m.name,
        "cluster": m.cluster,
        "table": m.table,
        "taken_at": m.taken_at.isoformat(),
        "job_id": m.job_id,
        "columns": [c.to_json() for c in m.columns],
        "partition_column": m.partition_column,
        "distribution_columns": list(m.distribution_columns),
        "buckets": m.buckets,
        "replication_num": m.replication_num,
        "uploaded_bytes": m.uploaded_bytes,
        "uploaded_objects": m.uploaded_objects,
        "partitions": [
            {
                "name": p.name,
                "lower": p.lower,
                "upper": p.upper,
                "version": p.version,
                "epoch": p.epoch,
                "history": [[v, at.isoformat()] for v, at in p.history],
                "tablets": [
                    {
                        "bucket": t.bucket,
                        "rowsets": [
                            {
                                "id": r.id,
                                "start": r.start,
                                "end": r.end,
                                "num_rows": r.num_rows,
                                "data_size": r.data_size,
                                "files": [f.to_json() for f in r.files],
                            }
                            for r in t.rowsets
                        ],
                    }
                    for t in p.tablets
                ],
            }
            for p in m.partitions
        ],
    }


def parse(name: str, text: str) -> Manifest:
    """The manifest of backup ``name``; CorruptBackup naming the first thing that is wrong."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        body = doc["backup"]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        if xxhash.xxh3_64(canonical.encode()).hexdigest() != doc.get("checksum"):
            raise ValueError("its checksum does not match its contents")
        m = _manifest(body)
        if m.name != name:
            raise ValueError(f"it names itself {m.name!r}")
        return m
    except (ValueError, KeyError, TypeError, ReplicatorError) as exc:
        raise CorruptBackup(
            f"backup {name}: its manifest is not valid ({str(exc)[:300]}); "
            "the backup cannot be used (`replicator backup verify` checks the others)"
        ) from None


def _int(value: object, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 1 << 63:
        raise ValueError(f"{what} {value!r} is not an integer >= {low}")
    return value


def _time(value: object) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError(f"time {value!r} is not a string")
    at = dt.datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone")
    return at


def _manifest(b: dict[str, Any]) -> Manifest:
    db, table = catalog_names.check_table_name(b["table"])
    columns = tuple(columns_from([ColumnDef.from_json(c) for c in b["columns"]]))
    known = {c.name for c in columns}
    part_col = b["partition_column"]
    if part_col is not None and part_col not in known:
        raise ValueError(f"partition column {part_col!r} is not a column")
    dist = tuple(str(c) for c in b["distribution_columns"])
    if not set(dist) <= known:
        raise ValueError("a distribution column is not a column")
    buckets = _int(b["buckets"], "buckets", 1)
    return Manifest(
        name=check_backup_name(b["name"]),
        cluster=names.cluster_name(b["cluster"]),
        table=f"{db}.{table}",
        taken_at=_time(b["taken_at"]),
        job_id=_int(b["job_id"], "job id", 1),
        columns=columns,
        partition_column=part_col,
        distribution_columns=dist,
        buckets=buckets,
        replication_num=_int(b["replication_num"], "replication_num", 1),
        partitions=tuple(_partition(p, buckets) for p in b["partitions"]),
        uploaded_bytes=_int(b.get("uploaded_bytes", 0), "uploaded bytes"),
        uploaded_objects=_int(b.get("uploaded_objects", 0), "uploaded objects"),
    )


def _partition(p: dict[str, Any], buckets: int) -> Partition:
    version = _int(p["version"], "version", 1)
    tablets = tuple(_tablet(t, buckets, version) for t in p["tablets"])
    if sorted(t.bucket for t in tablets) != list(range(buckets)):
        raise ValueError(f"partition {p['name']!r} does not have one tablet per bucket")
    return Partition(
        name=catalog_names.check_name("partition", p["name"]),
        lower=p["lower"],
        upper=p["upper"],
        version=version,
        epoch=_int(p["epoch"], "epoch", 1),
        history=tuple((_int(v, "version", 1), _time(at)) for v, at in p["history"]),
        tablets=tablets,
    )


def _tablet(t: dict[str, Any], buckets: int, version: int) -> Tablet:
    bucket = _int(t["bucket"], "bucket")
    if bucket >= buckets:
        raise ValueError(f"bucket {bucket} is not below {buckets}")
    rowsets = tuple(_rowset(r) for r in t["rowsets"])
    for r in rowsets:
        if not 0 <= r.start <= r.end <= version:
            raise ValueError(f"rowset {r.id} covers [{r.start}, {r.end}], outside 0..{version}")
    return Tablet(bucket, rowsets)


def _rowset(r: dict[str, Any]) -> Rowset:
    files = []
    for f in r["files"]:
        meta = FileMeta(names.file_name(f["name"]), _int(f["size"], "size"), str(f["checksum"]))
        if not _CHECKSUM.fullmatch(meta.checksum):
            raise ValueError(f"checksum {meta.checksum!r} is not 16 hex digits")
        files.append(meta)
    return Rowset(
        id=names.rowset_id(r["id"]),
        start=_int(r["start"], "start version"),
        end=_int(r["end"], "end version"),
        num_rows=_int(r["num_rows"], "rows"),
        data_size=_int(r["data_size"], "data size"),
        files=tuple(files),
    )
