"""``sync plan``: what a policy's next beat would do, per followed table, changing nothing
(app.replication.dryrun for each table: skip, incremental, full, create; bytes, estimate)."""

from __future__ import annotations

from dataclasses import dataclass

from app.cluster import Cluster
from app.config import Settings
from app.errors import UserError
from app.replication.dryrun import DryRun, dry_run
from app.sync.policies import show
from app.sync.tick import tables_of


@dataclass(frozen=True)
class TablePlan:
    table: str
    preview: DryRun | None
    refused: str | None  # what a job would be refused for (the beat would stop the table)


def plan(settings: Settings, cluster: str, name: str) -> list[TablePlan]:
    policy = show(settings, cluster, name)
    src = Cluster(settings, policy.src_cluster)
    ours = tables_of(Cluster(settings, cluster), policy.dst_db)
    out = []
    for table in sorted(t for t in tables_of(src, policy.src_db) if policy.follows(t)):
        target = policy.target_of(table)
        try:
            preview = dry_run(
                settings,
                f"{policy.src_cluster}:{policy.src_db}.{table}",
                f"{cluster}:{policy.dst_db}.{target}",
                create_target=target not in ours,
            )
        except UserError as exc:
            out.append(TablePlan(table, None, str(exc)))
            continue
        out.append(TablePlan(table, preview, None))
    return out
