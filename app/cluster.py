"""A cluster: its catalog, backends and tables."""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from app.catalog import model
from app.catalog import names as catalog_names
from app.catalog import schema as s
from app.catalog.engine import database_exists, engine_for, known_ready, mark_ready
from app.catalog.migrate import current_revision, head_revision, upgrade
from app.config import Settings, check_cluster_name
from app.errors import AlreadyExists, InvalidRequest, NotFound
from app.partition_spec import PartitionSpec as PartitionSpec
from app.schema import ColumnDef, columns_from, parse_value, schema_hash
from app.storage import roots
from app.storage.marker import write_marker
from app.transfer import names


def new_epoch() -> int:
    """A version epoch nobody else has: equal (version, epoch) then means equal history."""
    return secrets.randbits(62) + 1


class Cluster:
    """Catalog operations of one cluster. Cheap to build; engines are shared per process."""

    def __init__(self, settings: Settings, name: str) -> None:
        check_cluster_name(name)
        self.settings = settings
        self.name = name
        self.dsn = settings.dsn(name)
        self._checked = known_ready(self.dsn)

    # -- lifecycle -------------------------------------------------------------------------
    def init(self) -> tuple[bool, str | None, str]:
        created, before, after = upgrade(self.dsn)
        self._checked = True
        mark_ready(self.dsn)
        return created, before, after

    @property
    def engine(self) -> Engine:
        if not self._checked:
            self.ensure_ready()
        return engine_for(self.dsn)

    def ensure_ready(self) -> None:
        """NotFound unless the catalog exists at the head revision (as recently seen)."""
        if known_ready(self.dsn):
            self._checked = True
            return
        if not database_exists(self.dsn):
            raise NotFound(
                f"cluster {self.name!r} is not initialised: "
                f"run `replicator cluster init {self.name}`"
            )
        revision = current_revision(self.dsn)
        if revision != head_revision():
            raise NotFound(
                f"cluster {self.name!r} has catalog revision {revision}, this version needs "
                f"{head_revision()}: run `replicator cluster init {self.name}` to migrate it"
            )
        self._checked = True
        mark_ready(self.dsn)

    # -- backends --------------------------------------------------------------------------
    def add_backend(
        self, name: str, storage_root: str, transfer_url: str | None = None
    ) -> model.Backend:
        """Register a backend (idempotent). ``transfer_url`` is where other hosts reach its
        transfer server; giving it again for an existing backend updates it. Everything is
        checked (the cluster too) before the storage directory is made."""
        catalog_names.check_backend_name(name)
        url = names.transfer_url(transfer_url) if transfer_url is not None else None
        root = roots.normalize(storage_root)
        with self.engine.connect() as conn:
            existing = conn.execute(sa.select(s.backends).where(s.backends.c.name == name)).first()
        if existing is not None and (existing.storage_root != root or existing.state != "ACTIVE"):
            raise AlreadyExists(
                f"backend {name!r} already exists in cluster {self.name!r} "
                f"with storage {existing.storage_root} ({existing.state})"
            )
        roots.check_new_root(self.settings, self.name, name, root)
        roots.make_root(root)
        with self.engine.begin() as conn:
            if existing is not None:
                if url is not None and url != existing.transfer_url:
                    conn.execute(
                        sa.update(s.backends)
                        .where(s.backends.c.id == existing.id)
                        .values(transfer_url=url)
                    )
                backend_id, url = existing.id, url or existing.transfer_url
            else:
                backend_id = self._insert_backend(conn, name, root, url)
        write_marker(root, self.name, name)
        return model.Backend(backend_id, name, root, "ACTIVE", url)

    def _insert_backend(self, conn: sa.Connection, name: str, root: str, url: str | None) -> int:
        """Insert the backend's row; AlreadyExists if another `backend add` just took the name."""
        try:
            with conn.begin_nested():
                return int(
                    conn.execute(
                        sa.insert(s.backends)
                        .values(name=name, storage_root=root, transfer_url=url)
                        .returning(s.backends.c.id)
                    ).scalar_one()
                )
        except sa.exc.IntegrityError:
            raise AlreadyExists(
                f"backend {name!r} was just added to cluster {self.name!r} by another command"
            ) from None

    def backends(self) -> list[model.Backend]:
        with self.engine.connect() as conn:
            return list(model.list_backends(conn).values())

    def backend(self, name: str) -> model.Backend:
        for b in self.backends():
            if b.name == name:
                return b
        raise NotFound(
            f"backend {name!r} does not exist in cluster {self.name!r} "
            f"(see `replicator backend list {self.name}`)"
        )

    def decommission_backend(self, name: str) -> model.Backend:
        backend = self.backend(name)
        with self.engine.begin() as conn:
            held = conn.execute(
                sa.select(sa.func.count()).where(s.replicas.c.backend_id == backend.id)
            ).scalar_one()
            if held:
                raise InvalidRequest(
                    f"backend {name!r} still holds {held} tablet replicas; drop or move those "
                    "tables before decommissioning it"
                )
            conn.execute(
                sa.update(s.backends)
                .where(s.backends.c.id == backend.id)
                .values(state="DECOMMISSIONED")
            )
        return model.Backend(backend.id, name, backend.storage_root, "DECOMMISSIONED")

    # -- tables ----------------------------------------------------------------------------
    def create_table(
        self,
        full_name: str,
        columns: Sequence[ColumnDef | str | tuple[str, str]],
        *,
        partition_by: str | None = None,
        partitions: Sequence[PartitionSpec | tuple[str, Any, Any]] = (),
        distributed_by: Sequence[str] = (),
        buckets: int = 1,
        replication_num: int = 1,
    ) -> model.TableInfo:
        db_name, table_name = catalog_names.check_table_name(full_name)
        cols = columns_from(columns)
        dist = _check_distribution(full_name, cols, distributed_by, buckets, replication_num)
        specs = [p if isinstance(p, PartitionSpec) else PartitionSpec(*p) for p in partitions]
        bounds = self._check_partitions(full_name, cols, partition_by, specs)

        with self.engine.begin() as conn:
            active = self._active_backends(conn, replication_num)
            db_id = _database_id(conn, db_name)
            h = schema_hash(cols)
            table_id = self._insert_table(
                conn,
                full_name,
                db_id=db_id,
                name=table_name,
                columns=[c.to_json() for c in cols],
                schema_hash=h,
                partition_column=partition_by,
                distribution_columns=dist,
                buckets=buckets,
                replication_num=replication_num,
            )
            conn.execute(
                sa.insert(s.schema_versions).values(
                    table_id=table_id,
                    version=1,
                    columns=[c.to_json() for c in cols],
                    schema_hash=h,
                    change="created",
                )
            )
            index_id = conn.execute(
                sa.insert(s.indexes)
                .values(table_id=table_id, name="base", is_base=True, schema_hash=h)
                .returning(s.indexes.c.id)
            ).scalar_one()
            load = _replica_counts(conn, active)
            order = [b.id for b in active]
            replica_rows: list[dict[str, int]] = []
            for name, lower, upper in bounds:
                tablet_ids = _insert_partition(
                    conn, table_id, index_id, name, lower, upper, buckets
                )
                order = _place_replicas(tablet_ids, order, load, replication_num, replica_rows)
            conn.execute(sa.insert(s.replicas), replica_rows)
            return model.table_by_id(conn, table_id)

    def _insert_table(self, conn: sa.Connection, full_name: str, **values: Any) -> int:
        """Insert the table's row; AlreadyExists if the database has a table of that name."""
        try:
            with conn.begin_nested():
                return int(
                    conn.execute(
                        sa.insert(s.tables).values(**values).returning(s.tables.c.id)
                    ).scalar_one()
                )
        except sa.exc.IntegrityError:
            raise AlreadyExists(
                f"table {full_name} already exists in cluster {self.name!r}"
            ) from None

    def _active_backends(self, conn: sa.Connection, replication_num: int) -> list[model.Backend]:
        """The ACTIVE backends; InvalidRequest if fewer than ``replication_num``."""
        active = [b for b in model.list_backends(conn).values() if b.state == "ACTIVE"]
        if len(active) < replication_num:
            raise InvalidRequest(
                f"replication_num {replication_num} needs {replication_num} active backends, "
                f"cluster {self.name!r} has {len(active)}: add backends with "
                f"`replicator backend add {self.name} NAME --storage DIR`"
            )
        return active

    def _check_partitions(
        self,
        full_name: str,
        cols: list[ColumnDef],
        partition_by: str | None,
        specs: list[PartitionSpec],
    ) -> list[tuple[str, Any, Any]]:
        if partition_by is None:
            if specs:
                raise InvalidRequest(
                    "partitions were given without a partition column (partition_by)"
                )
            # Its one partition is named after the table (StarRocks does the same).
            return [(full_name.split(".")[1], None, None)]
        col = next((c for c in cols if c.name == partition_by), None)
        if col is None:
            raise InvalidRequest(
                f"partition column {partition_by!r} is not a column of {full_name}"
            )
        if not specs:
            raise InvalidRequest(
                f"table {full_name} is partitioned by {partition_by} but has no partitions"
            )
        seen: set[str] = set()
        out: list[tuple[str, Any, Any]] = []
        for spec in specs:
            catalog_names.check_name("partition", spec.name)
            if spec.name in seen:
                raise InvalidRequest(f"partition {spec.name!r} is defined twice")
            seen.add(spec.name)
            lower = parse_value(col.type, spec.lower)
            upper = parse_value(col.type, spec.upper)
            if lower is not None and upper is not None and (lower) >= (upper):
                raise InvalidRequest(
                    f"partition {spec.name!r}: lower bound {lower} must be below "
                    f"upper bound {upper}"
                )
            out.append((spec.name, lower, upper))
        ordered = sorted(out, key=lambda p: (p[1] is not None, (p[1])))
        for prev, cur in itertools.pairwise(ordered):
            if prev[2] is None or cur[1] is None or (prev[2]) > (cur[1]):
                raise InvalidRequest(f"partitions {prev[0]!r} and {cur[0]!r} overlap")
        return out

    def tables(self) -> list[model.TableInfo]:
        with self.engine.connect() as conn:
            return model.list_tables(conn)

    def table(self, full_name: str) -> model.TableInfo:
        with self.engine.connect() as conn:
            return model.get_table(conn, full_name, self.name)

    def partitions(self, full_name: str) -> list[model.PartitionInfo]:
        with self.engine.connect() as conn:
            table = model.get_table(conn, full_name, self.name)
            return model.list_partitions(conn, table.id)


def _check_distribution(
    full_name: str,
    cols: list[ColumnDef],
    distributed_by: Sequence[str],
    buckets: int,
    replication_num: int,
) -> list[str]:
    """Check buckets, replication_num and the distribution columns; returns the distribution
    columns (default: the first column)."""
    names = {c.name for c in cols}
    if buckets < 1 or buckets > 4096:
        raise InvalidRequest(f"buckets must be between 1 and 4096, got {buckets}")
    if replication_num < 1:
        raise InvalidRequest(f"replication_num must be at least 1, got {replication_num}")
    dist = list(distributed_by) or [cols[0].name]
    for col in dist:
        if col not in names:
            raise InvalidRequest(f"distribution column {col!r} is not a column of {full_name}")
    return dist


def _database_id(conn: sa.Connection, db_name: str) -> int:
    """The database's id, creating it on first use."""
    conn.execute(
        pg_insert(s.databases).values(name=db_name).on_conflict_do_nothing(index_elements=["name"])
    )
    return int(
        conn.execute(sa.select(s.databases.c.id).where(s.databases.c.name == db_name)).scalar_one()
    )


def _replica_counts(conn: sa.Connection, active: list[model.Backend]) -> Counter[int]:
    """Replicas each active backend holds already: new tablets go to the least loaded first."""
    load: Counter[int] = Counter({b.id: 0 for b in active})
    for backend_id, count in conn.execute(
        sa.select(s.replicas.c.backend_id, sa.func.count()).group_by(s.replicas.c.backend_id)
    ):
        if backend_id in load:
            load[backend_id] = count
    return load


def _insert_partition(
    conn: sa.Connection,
    table_id: int,
    index_id: int,
    name: str,
    lower: Any,
    upper: Any,
    buckets: int,
) -> list[int]:
    """Insert a partition with a fresh version epoch and its tablets; returns the tablet ids
    in bucket order."""
    pid = conn.execute(
        sa.insert(s.partitions)
        .values(table_id=table_id, name=name, lower=lower, upper=upper, version_epoch=new_epoch())
        .returning(s.partitions.c.id)
    ).scalar_one()
    return list(
        conn.execute(
            sa.insert(s.tablets).returning(s.tablets.c.id, sort_by_parameter_order=True),
            [{"partition_id": pid, "index_id": index_id, "bucket": b} for b in range(buckets)],
        )
        .scalars()
        .all()
    )


def _place_replicas(
    tablet_ids: list[int],
    order: list[int],
    load: Counter[int],
    replication_num: int,
    replica_rows: list[dict[str, int]],
) -> list[int]:
    """Choose ``replication_num`` backends for each tablet, counting them in ``load`` and
    appending to ``replica_rows``; returns the rotated order for the next partition."""
    for tablet_id in tablet_ids:
        # Least-loaded backends first; ties broken by a rotating order so that
        # replicas spread evenly over equally loaded backends.
        chosen = sorted(order, key=lambda b: (load[b], order.index(b)))[:replication_num]
        for b in chosen:
            load[b] += 1
            replica_rows.append({"tablet_id": tablet_id, "backend_id": b})
        order = order[1:] + order[:1]
    return order
