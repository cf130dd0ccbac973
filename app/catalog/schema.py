"""Catalog tables (SQLAlchemy Core). Migrations in ``migrations/versions`` create exactly these."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()


def _created() -> Column[Any]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


backends = Table(
    "backends",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("storage_root", Text, nullable=False),
    Column("state", Text, nullable=False, server_default="ACTIVE"),  # ACTIVE | DECOMMISSIONED
    Column("transfer_url", Text),  # where other hosts download from: https://host:port
    _created(),
)

databases = Table(
    "databases",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    _created(),
)

tables = Table(
    "tables",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("db_id", Integer, ForeignKey("databases.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("columns", JSONB, nullable=False),  # [{"name", "type", "nullable"}]
    Column("schema_hash", BigInteger, nullable=False),
    Column("partition_column", Text),  # NULL: one partition holds every row
    Column("distribution_columns", JSONB, nullable=False),
    Column("buckets", Integer, nullable=False),
    Column("replication_num", Integer, nullable=False),
    Column("schema_version", Integer, nullable=False, server_default="1"),
    _created(),
    UniqueConstraint("db_id", "name"),
)

# Every schema a table has had (app/evolve.py): version 1 at its creation, one more per alter.
schema_versions = Table(
    "schema_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("table_id", Integer, ForeignKey("tables.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("columns", JSONB, nullable=False),
    Column("schema_hash", BigInteger, nullable=False),
    Column("change", Text, nullable=False),  # what made it, in words: "created", "add column x"
    Column("spec", JSONB),  # the change as data (app.evolve.spec_of); NULL for "created"
    _created(),
    UniqueConstraint("table_id", "version"),
)

partitions = Table(
    "partitions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("table_id", Integer, ForeignKey("tables.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("lower", JSONB),  # inclusive; NULL = unbounded
    Column("upper", JSONB),  # exclusive; NULL = unbounded
    Column("visible_version", BigInteger, nullable=False, server_default="1"),
    Column("version_epoch", BigInteger, nullable=False),
    # Kind of the transaction that made visible_version; a load after a replication starts a
    # new epoch, because the partition's history then differs from the source's.
    Column("version_txn_kind", Text, nullable=False, server_default="CREATE"),
    Column("visible_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    _created(),
    UniqueConstraint("table_id", "name"),
)

indexes = Table(
    "indexes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("table_id", Integer, ForeignKey("tables.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("is_base", Boolean, nullable=False, server_default=text("true")),
    Column("schema_hash", BigInteger, nullable=False),
    UniqueConstraint("table_id", "name"),
)

tablets = Table(
    "tablets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "partition_id", Integer, ForeignKey("partitions.id", ondelete="CASCADE"), nullable=False
    ),
    Column("index_id", Integer, ForeignKey("indexes.id", ondelete="CASCADE"), nullable=False),
    Column("bucket", Integer, nullable=False),
    UniqueConstraint("partition_id", "index_id", "bucket"),
)

replicas = Table(
    "replicas",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tablet_id", Integer, ForeignKey("tablets.id", ondelete="CASCADE"), nullable=False),
    Column("backend_id", Integer, ForeignKey("backends.id"), nullable=False),
    UniqueConstraint("tablet_id", "backend_id"),
)

transactions = Table(
    "transactions",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("db_id", Integer, ForeignKey("databases.id"), nullable=False),
    Column("table_id", Integer, ForeignKey("tables.id", ondelete="CASCADE"), nullable=False),
    Column("label", Text, nullable=False),
    Column("kind", Text, nullable=False),  # LOAD | OVERWRITE | COMPACTION | REPLICATION
    Column("state", Text, nullable=False, server_default="PREPARE"),
    Column("content_digest", Text),  # what the label stands for, to refuse reuse with other data
    Column("timeout_sec", Integer, nullable=False),
    Column("deadline", DateTime(timezone=True), nullable=False),
    Column("reason", Text),
    Column("finished_at", DateTime(timezone=True)),
    _created(),
)
# A label names one live transaction per database; an aborted one frees its label.
Index(
    "transactions_label_live",
    transactions.c.db_id,
    transactions.c.label,
    unique=True,
    postgresql_where=text("state <> 'ABORTED'"),
)
Index("transactions_open", transactions.c.table_id, postgresql_where=text("state = 'PREPARE'"))

rowsets = Table(
    "rowsets",
    metadata,
    Column("id", Text, primary_key=True),  # also the directory name of its files
    Column("tablet_id", Integer, ForeignKey("tablets.id", ondelete="CASCADE"), nullable=False),
    Column("txn_id", BigInteger, ForeignKey("transactions.id"), nullable=False),
    Column("start_version", BigInteger),  # set when its transaction commits
    Column("end_version", BigInteger),
    # PENDING (not visible) | VISIBLE | STALE (replaced, files kept until GC) | DELETED
    Column("state", Text, nullable=False, server_default="PENDING"),
    Column("num_rows", BigInteger, nullable=False, server_default="0"),
    Column("data_size", BigInteger, nullable=False, server_default="0"),
    Column("files", JSONB, nullable=False, server_default="[]"),  # [{"name","size","checksum"}]
    Column("stale_at", DateTime(timezone=True)),
    _created(),
)
Index("rowsets_tablet_state", rowsets.c.tablet_id, rowsets.c.state)
Index("rowsets_txn", rowsets.c.txn_id)

holds = Table(
    "holds",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("rowset_id", Text, ForeignKey("rowsets.id", ondelete="CASCADE"), nullable=False),
    Column("owner", Text, nullable=False),  # e.g. "job:<cluster>:<job id>"
    Column("expires_at", DateTime(timezone=True), nullable=False),
    _created(),
    UniqueConstraint("rowset_id", "owner"),
)
Index("holds_owner", holds.c.owner)


# -- replication jobs (they live in the target cluster's catalog) ------------------------------

jobs = Table(
    "jobs",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("label", Text, nullable=False, unique=True),
    # REPLICATION | BACKUP (app/replication/state.py JobKind): which flow the coordinator runs.
    Column("kind", Text, nullable=False, server_default="REPLICATION"),
    Column("state", Text, nullable=False, server_default="INITIALIZING"),
    Column("src_cluster", Text, nullable=False),
    Column("src_table", Text, nullable=False),
    Column("dst_table", Text, nullable=False),
    Column("options", JSONB, nullable=False),  # partitions, create_target, replication_num
    Column("args_digest", Text, nullable=False),  # refuses a label reused with other arguments
    Column("txn_id", BigInteger, ForeignKey("transactions.id")),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("message", Text),  # why it ended, in words for users
    _created(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
)
Index(
    "jobs_active",
    jobs.c.state,
    postgresql_where=text("state IN ('INITIALIZING','SNAPSHOTING','REPLICATING')"),
)

job_partitions = Table(
    "job_partitions",
    metadata,
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("partition_name", Text, primary_key=True),
    Column("src_partition_id", Integer, nullable=False),
    Column("dst_partition_id", Integer, nullable=False),
    Column("src_version", BigInteger, nullable=False),
    Column("src_epoch", BigInteger, nullable=False),
    Column("dst_version", BigInteger, nullable=False),
    Column("dst_epoch", BigInteger, nullable=False),
    Column("mode", Text, nullable=False),  # INCREMENTAL (if the source still can) | FULL
)

job_tasks = Table(
    "job_tasks",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("kind", Text, nullable=False),  # SNAPSHOT (one per target tablet) | APPLY (per replica)
    Column("partition_name", Text, nullable=False),
    Column("bucket", Integer, nullable=False),
    Column("src_tablet_id", Integer, nullable=False),
    Column("dst_tablet_id", Integer, nullable=False),
    Column("dst_backend_id", Integer),  # APPLY only
    Column("src_backend_ids", JSONB, nullable=False),  # candidates, in the order to try
    Column("queue", Text, nullable=False),
    Column("transfer_token", Text),  # the snapshot's download grant; never shown, cleared at end
    # app/replication/taskrows.py owns the states and sets one on every insert (the database
    # default of migration 0002 is never used).
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("lease_until", DateTime(timezone=True)),
    Column("dispatched_at", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("worker", Text),
    Column("manifest", JSONB),  # SNAPSHOT result: rowsets, versions, files with size and checksum
    Column("incremental", Boolean),
    Column("bytes_total", BigInteger, nullable=False, server_default="0"),
    Column("bytes_done", BigInteger, nullable=False, server_default="0"),
    Column("error", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("job_tasks_job_kind_state", job_tasks.c.job_id, job_tasks.c.kind, job_tasks.c.state)
# Snapshots taken without applies: an anti-join by target tablet (migration 0006).
Index("job_tasks_job_kind_tablet", job_tasks.c.job_id, job_tasks.c.kind, job_tasks.c.dst_tablet_id)

job_events = Table(
    "job_events",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("from_state", Text),
    Column("to_state", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", Text),  # which process made the change
)
Index("job_events_job", job_events.c.job_id, job_events.c.id)

# Continuous sync (app/sync/): a policy keeps the tables of a source database in sync with a
# database of this cluster; a row per table it follows, with its state and lag.
sync_policies = Table(
    "sync_policies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("src_cluster", Text, nullable=False),
    Column("src_db", Text, nullable=False),
    Column("dst_db", Text, nullable=False),
    Column("include", JSONB, nullable=False),  # globs over table names; [] = every table
    Column("exclude", JSONB, nullable=False),
    Column("renames", JSONB, nullable=False),  # {source table: target table}
    Column("state", Text, nullable=False),  # ACTIVE | PAUSED
    Column("drop_tables", Boolean, nullable=False, server_default=text("false")),
    Column("last_tick_at", DateTime(timezone=True)),
    # A failback policy's target as it was when promoted away: {table: {partition: [v, epoch]}}
    Column("baseline", JSONB),
    _created(),
)

sync_tables = Table(
    "sync_tables",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "policy_id", Integer, ForeignKey("sync_policies.id", ondelete="CASCADE"), nullable=False
    ),
    Column("src_table", Text, nullable=False),  # names within the policy's databases
    Column("dst_table", Text, nullable=False),
    Column("state", Text, nullable=False),  # SYNCING | STOPPED | SOURCE_DROPPED
    Column("reason", Text),
    Column("job_id", BigInteger),  # the newest job the policy started for it
    Column("versions_behind", BigInteger, nullable=False, server_default="0"),
    # Commit time of the oldest source version not yet on the target (NULL: caught up), and the
    # source versions seen but not yet on the target: {partition: [[version, committed at]]}.
    Column("behind_since", DateTime(timezone=True)),
    Column("pending", JSONB, nullable=False, server_default="{}"),
    Column("synced_at", DateTime(timezone=True)),
    Column("verified_job_id", BigInteger),  # the newest job whose result was verified
    Column("mismatches", BigInteger, nullable=False, server_default="0"),  # checks that failed
    Column("last_check", Text),  # what the last verification found, in words
    _created(),
    UniqueConstraint("policy_id", "src_table"),
)

# A target backend's re-hash of one synced table's files after one job (app/sync/verify.py).
sync_checks = Table(
    "sync_checks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "policy_id", Integer, ForeignKey("sync_policies.id", ondelete="CASCADE"), nullable=False
    ),
    Column("src_table", Text, nullable=False),
    Column("job_id", BigInteger, nullable=False),
    Column("backend", Text, nullable=False),
    Column("files", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("bad", JSONB, nullable=False),  # {partition: [file path, ...]}
    _created(),
    UniqueConstraint("policy_id", "src_table", "job_id", "backend"),
)
