"""Planning a replication: pair tables, partitions and tablets, and check they can be paired.

Runs twice: when the job is submitted (so bad input is refused before any job exists) and when
the coordinator starts it (the source may have moved on since).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.catalog import model
from app.catalog.model import TableInfo
from app.cluster import Cluster, PartitionSpec
from app.errors import (
    InvalidRequest,
    NotFound,
    SchemaMismatch,
    TargetDiverged,
    VersionConflict,
)
from app.evolve import replayed
from app.replication.catalogread import CatalogRead


@dataclass(frozen=True)
class TablePair:
    src_cluster: str
    src_table: str
    dst_cluster: str
    dst_table: str

    @staticmethod
    def parse(src: str, dst: str) -> TablePair:
        src_cluster, src_table = _split(src, "source", None)
        dst_cluster, dst_table = _split(dst, "target", src_table)
        if src_cluster == dst_cluster and src_table == dst_table:
            raise InvalidRequest(f"source and target are the same table {src}")
        return TablePair(src_cluster, src_table, dst_cluster, dst_table)


def _split(spec: str, what: str, default_table: str | None) -> tuple[str, str]:
    cluster, sep, table = spec.partition(":")
    if not sep:
        table = default_table or ""
    if not cluster or not table:
        raise InvalidRequest(
            f"{what} {spec!r} must be written CLUSTER:DATABASE.TABLE"
            + (" (or just CLUSTER for the same table name)" if default_table else "")
        )
    model.split_table_name(table)
    return cluster, table


@dataclass(frozen=True)
class PartitionPlan:
    name: str
    src_partition_id: int
    dst_partition_id: int
    src_version: int
    src_epoch: int
    dst_version: int
    dst_epoch: int
    mode: str  # INCREMENTAL | FULL


@dataclass(frozen=True)
class TabletPair:
    partition: str
    bucket: int
    src_tablet_id: int
    dst_tablet_id: int
    src_backend_ids: tuple[int, ...]
    dst_backend_ids: tuple[int, ...]


@dataclass
class Plan:
    src: TableInfo
    dst: TableInfo | None  # None: will be created
    partitions: list[PartitionPlan] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tablets: list[TabletPair] = field(default_factory=list)
    data_size: int = 0
    overwritten: list[str] = field(default_factory=list)  # diverged partitions to be replaced

    @property
    def up_to_date(self) -> bool:
        return not self.partitions


def make_plan(src: Cluster, dst: Cluster, pair: TablePair, **options: Any) -> Plan:
    """What replicating ``pair`` would do now: per partition skip, incremental or full, and the
    tablet pairs. Raises a UserError naming what is wrong; changes nothing. ``options``: those
    of :func:`plan_from`."""
    return plan_from(
        CatalogRead.read(src, [pair.src_table], sizes=True),
        CatalogRead.read(dst, [pair.dst_table], sizes=False),
        pair,
        **options,
    )


def plan_from(
    source: CatalogRead,
    target: CatalogRead,
    pair: TablePair,
    *,
    partitions: list[str] | None = None,
    create_target: bool = False,
    overwrite: bool = False,
    repair: list[str] | None = None,
    schema_changes: list[dict[str, Any]] | None = None,
) -> Plan:
    """:func:`make_plan` from catalogs already read (``source`` with sizes)."""
    src_table = source.tables.get(pair.src_table)
    if src_table is None:
        raise NotFound(
            f"source table {pair.src_table} does not exist in cluster {pair.src_cluster!r}"
        )
    src_parts, src_tablets = source.parts[src_table.id], source.tablets[src_table.id]
    src_sizes = source.sizes.get(src_table.id, {})
    dst_table = target.tables.get(pair.dst_table)
    dst_parts = target.parts[dst_table.id] if dst_table else []
    dst_tablets = target.tablets[dst_table.id] if dst_table else []
    # Changes the job replays on the target at its commit: the target must then match.
    evolved = replayed(dst_table, schema_changes) if dst_table and schema_changes else dst_table
    _check_target(pair, src_table, evolved, target.backends, create_target)
    plan = Plan(src_table, dst_table)
    dst_by_name = _dst_by_name(src_table, src_parts, dst_table, dst_parts)
    wanted = _wanted(pair, src_parts, partitions)
    plan.overwritten = _overwritten(pair, wanted, dst_by_name, overwrite)
    for sp in wanted:
        dp = dst_by_name.get(sp.name)
        # A repair copies a partition in full although the versions say it is up to date (a
        # verification found the target's files damaged).
        forced = (_diverged(dp) and overwrite) or sp.name in (repair or [])
        pp = _plan_partition(pair, sp, dp, dst_table is not None, forced)
        if pp is None:
            plan.skipped.append(sp.name)
            continue
        plan.partitions.append(pp)
        plan.data_size += src_sizes.get(sp.id, 0)
    if dst_table is not None:
        plan.tablets = _pair_tablets(plan.partitions, src_table.buckets, src_tablets, dst_tablets)
    return plan


def _overwritten(
    pair: TablePair, wanted: list[Any], dst_by_name: dict[str, Any], overwrite: bool
) -> list[str]:
    """The diverged target partitions an overwrite replaces; TargetDiverged without one."""
    diverged = [
        _divergence(sp, dst_by_name[sp.name])
        for sp in wanted
        if sp.name in dst_by_name
        and _diverged(dst_by_name[sp.name])
        # A target ahead of its source is refused on its own (VersionConflict), as before.
        and (overwrite or dst_by_name[sp.name].visible_version <= sp.visible_version)
    ]
    if diverged and not overwrite:
        raise TargetDiverged(
            f"target {pair.dst_cluster}:{pair.dst_table} was written on its own since it was "
            f"last replicated: {'; '.join(diverged)}. Replicating would replace its rows: ask "
            "for that explicitly (overwrite=True, --overwrite), or replicate other partitions"
        )
    return [d.split(" ", 2)[1] for d in diverged]


def _dst_by_name(
    src: TableInfo, src_parts: list[Any], dst: TableInfo | None, dst_parts: list[Any]
) -> dict[str, Any]:
    """Target partitions by the name of the source partition they pair with: their own name,
    but an unpartitioned table's one partition is named after its table, so two of them pair
    whatever their tables are called."""
    if (
        dst is not None
        and src.partition_column is None
        and dst.partition_column is None
        and len(src_parts) == len(dst_parts) == 1
    ):
        return {src_parts[0].name: dst_parts[0]}
    return {p.name: p for p in dst_parts}


def _check_target(
    pair: TablePair,
    src_table: TableInfo,
    dst_table: TableInfo | None,
    dst_backends: dict[int, Any],
    create_target: bool,
) -> None:
    if dst_table is None and not create_target:
        raise NotFound(
            f"target table {pair.dst_table} does not exist in cluster {pair.dst_cluster!r}; "
            "create it, or ask for it to be created (create_target=True, --create-target)"
        )
    if dst_table is None:
        active = sum(1 for b in dst_backends.values() if b.state == "ACTIVE")
        if active < 1:
            raise InvalidRequest(
                f"cluster {pair.dst_cluster!r} has no active backends to hold the target"
            )
    if dst_table is not None:
        _check_compatible(src_table, dst_table, pair)


def _wanted(pair: TablePair, src_parts: list[Any], partitions: list[str] | None) -> list[Any]:
    """The source partitions asked for (all by default), in the order asked."""
    src_by_name = {p.name: p for p in src_parts}
    wanted = [p.name for p in src_parts] if partitions is None else list(partitions)
    unknown = [n for n in wanted if n not in src_by_name]
    if unknown:
        raise NotFound(
            f"partition(s) {', '.join(unknown)} do not exist in source table {pair.src_table} "
            f"(it has {', '.join(src_by_name)})"
        )
    return [src_by_name[n] for n in wanted]


def _diverged(dp: Any | None) -> bool:
    """The target partition holds writes of its own: its newest version came from a load or
    an overwrite on the target, not from a replication (a fresh partition has version 1)."""
    return dp is not None and dp.visible_version > 1 and dp.version_txn_kind != "REPLICATION"


def _divergence(sp: Any, dp: Any) -> str:
    return (
        f"partition {dp.name} is at version {dp.visible_version} epoch {dp.version_epoch} "
        f"after a {dp.version_txn_kind.lower()} on the target, the source at version "
        f"{sp.visible_version} epoch {sp.version_epoch}"
    )


def _plan_partition(
    pair: TablePair, sp: Any, dp: Any | None, target_exists: bool, overwrite: bool = False
) -> PartitionPlan | None:
    """One partition's plan, or None when there is nothing to copy. ``overwrite``: the target
    diverged and the caller asked for it to be replaced by a full copy."""
    name = sp.name
    if target_exists and dp is None:
        raise SchemaMismatch(
            f"target table {pair.dst_table} has no partition {name!r}; add it or replicate "
            "only the partitions both tables have"
        )
    if dp is not None and (sp.lower, sp.upper) != (dp.lower, dp.upper):
        raise SchemaMismatch(
            f"partition {name!r} covers [{sp.lower}, {sp.upper}) on the source but "
            f"[{dp.lower}, {dp.upper}) on the target"
        )
    dst_version = dp.visible_version if dp else 1
    dst_epoch = dp.version_epoch if dp else 0
    if dst_version > sp.visible_version and not overwrite:
        raise VersionConflict(
            f"target partition {name!r} is at version {dst_version}, ahead of the source's "
            f"{sp.visible_version}: the target has data the source lacks, so replication "
            "would lose it. Drop or truncate the target partition first"
        )
    if sp.visible_version == 1 and dst_version == 1:
        return None  # nothing was ever loaded on either side
    if not overwrite and dst_version == sp.visible_version and dst_epoch == sp.version_epoch:
        return None
    incremental = dst_epoch == sp.version_epoch and dst_version > 1 and not overwrite
    mode = "INCREMENTAL" if incremental else "FULL"
    return PartitionPlan(
        name,
        sp.id,
        dp.id if dp else 0,
        sp.visible_version,
        sp.version_epoch,
        dst_version,
        dst_epoch,
        mode,
    )


def _pair_tablets(
    parts: list[PartitionPlan], buckets: int, src_tablets: list[Any], dst_tablets: list[Any]
) -> list[TabletPair]:
    """Tablets pair by (partition, bucket), never by position."""
    src_by_key = {(t.partition_id, t.bucket): t for t in src_tablets}
    dst_by_key = {(t.partition_id, t.bucket): t for t in dst_tablets}
    pairs = []
    for pp in parts:
        for bucket in range(buckets):
            st = src_by_key[(pp.src_partition_id, bucket)]
            dt_ = dst_by_key[(pp.dst_partition_id, bucket)]
            pairs.append(
                TabletPair(pp.name, bucket, st.id, dt_.id, st.backend_ids, dt_.backend_ids)
            )
    return pairs


def _describe(col: Any) -> str:
    """A column as a schema difference names it: type and nullability."""
    if col is None:
        return "absent"
    return col.type if col.nullable else f"{col.type} not null"


def _check_compatible(src: TableInfo, dst: TableInfo, pair: TablePair) -> None:
    if src.schema_hash != dst.schema_hash:
        s_cols = {c.name: c for c in src.columns}
        d_cols = {c.name: c for c in dst.columns}
        diffs = [
            f"{n}: {_describe(s_cols.get(n))} vs {_describe(d_cols.get(n))}"
            for n in sorted(set(s_cols) | set(d_cols))
            if (s_cols.get(n) != d_cols.get(n))
        ] or ["column order"]
        raise SchemaMismatch(
            f"schema hash of {pair.src_cluster}:{src.full_name} ({src.schema_hash}) differs from "
            f"{pair.dst_cluster}:{dst.full_name} ({dst.schema_hash}); differences: "
            + "; ".join(diffs)
        )
    if src.buckets != dst.buckets:
        raise SchemaMismatch(
            f"bucket counts differ: source {src.full_name} has {src.buckets}, target "
            f"{dst.full_name} has {dst.buckets}; tablets pair by (partition, bucket), "
            "so they must match"
        )
    if (
        src.partition_column != dst.partition_column
        or src.distribution_columns != dst.distribution_columns
    ):
        raise SchemaMismatch(
            f"partitioning differs: source partitions by {src.partition_column} and hashes "
            f"{list(src.distribution_columns)}, target by {dst.partition_column} and "
            f"{list(dst.distribution_columns)}"
        )


def target_replication_num(dst: Cluster, src: TableInfo, replication_num: int | None) -> int:
    """The replicas a created target gets: as asked, or the source's (at most one per active
    backend of the target)."""
    if replication_num is not None:
        return replication_num
    active = [b for b in dst.backends() if b.state == "ACTIVE"]
    return min(src.replication_num, len(active))


def create_target_like(
    dst: Cluster,
    pair: TablePair,
    src: TableInfo,
    src_parts: list[model.PartitionInfo],
    replication_num: int | None,
) -> TableInfo:
    return dst.create_table(
        pair.dst_table,
        list(src.columns),
        partition_by=src.partition_column,
        partitions=[PartitionSpec(p.name, p.lower, p.upper) for p in src_parts]
        if src.partition_column
        else [],
        distributed_by=list(src.distribution_columns),
        buckets=src.buckets,
        replication_num=target_replication_num(dst, src, replication_num),
    )
