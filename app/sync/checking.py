"""The sync beat's part of verification (app/sync/verify.py): after a table's job commits, ask
each target backend to re-hash its files; once all have answered, compare the catalogs, record
what was found, and start a repair of the partitions that differ."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from app.cluster import Cluster
from app.config import Settings
from app.errors import AdmissionRefused, TableBusy
from app.replication import jobs
from app.replication.state import JobState
from app.replication.submit import submit
from app.sync import verify
from app.sync.policies import Policy, SyncedTable

if TYPE_CHECKING:
    from app.sync.tick import Beat

log = logging.getLogger(__name__)


def after_job(
    settings: Settings, src: Cluster, dst: Cluster, policy: Policy, row: SyncedTable, beat: Beat
) -> dict[str, Any]:
    """The row's changes; may add check requests or a started repair job to ``beat``."""
    job_id = row.job_id
    if job_id is None or row.verified_job_id == job_id:
        return {}
    state = jobs.get(settings, dst.name, job_id).state
    if state is JobState.ABORTED:
        return {"verified_job_id": job_id}  # nothing was installed: nothing to verify
    if state is not JobState.COMMITTED:
        return {}
    dst_full = f"{policy.dst_db}.{row.dst_table}"
    asked = f"checking the files after job {job_id}"
    if row.last_check != asked:
        for backend in verify.holders(dst, dst_full):
            beat.checks.append(
                verify.CheckRequest(dst.name, policy.id, row.src_table, dst_full, job_id, backend)
            )
        return {"last_check": asked}
    answers = verify.answers(dst, policy.id, row.src_table, job_id)
    if {a.backend for a in answers} < set(verify.holders(dst, dst_full)):
        return {}  # not every backend has answered yet
    bad = {p for a in answers for p in a.bad}
    theirs = verify.rows_by_partition(src, f"{policy.src_db}.{row.src_table}")
    ours = verify.rows_by_partition(dst, dst_full)
    # Only partitions at the same version on both sides can be compared by their rows.
    bad |= {
        p for p, (v, n) in ours.items() if p in theirs and theirs[p][0] == v and theirs[p][1] != n
    }
    files = sum(a.files for a in answers)
    size = sum(a.bytes for a in answers)
    done: dict[str, Any] = {"verified_job_id": job_id}
    if not bad:
        done["last_check"] = f"after job {job_id}: {files} files ({size} bytes) and rows equal"
        return done
    damaged = sum(len(v) for a in answers for v in a.bad.values())
    found = (
        f"after job {job_id}: partitions {', '.join(sorted(bad))} differ ({damaged} damaged files)"
    )
    log.warning("sync %s, table %s: %s", policy.name, row.src_table, found)
    done |= {"mismatches": row.mismatches + 1, "last_check": f"{found}; repair"}
    try:
        _, repair, _ = submit(
            settings, f"{src.name}:{policy.src_db}.{row.src_table}", f"{dst.name}:{dst_full}",
            partitions=sorted(bad), repair=sorted(bad),
            label=f"sync-{policy.name}-{row.dst_table}-repair-{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
    except (AdmissionRefused, TableBusy) as exc:
        done.pop("verified_job_id")  # found again at a later beat, repaired then
        done["last_check"] = f"{found}; repair waits: {exc}"
        return done
    beat.started.append(repair)
    done["job_id"] = repair
    done["last_check"] = f"{found}; repair job {dst.name}:{repair}"
    return done
