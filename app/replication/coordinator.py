"""The coordinator: one tick advances one job by the state machine's decision.

A tick locks the job row with ``FOR UPDATE SKIP LOCKED`` (a second coordinator skips it), gathers
the facts, asks ``state.step`` what to do, performs it in the same Postgres transaction, and
returns the messages to send once that transaction has committed. Messages carry only ids.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from app import txn as txns
from app.catalog import model
from app.catalog import schema as s
from app.catalog.engine import scan_engine
from app.cluster import Cluster
from app.config import Settings
from app.errors import ReplicatorError, UserError
from app.queues import queue_name
from app.replication import finish
from app.replication.plan import TablePair, make_plan
from app.replication.state import (
    ACTIVE_STATES,
    Action,
    JobFacts,
    JobState,
    TaskCounts,
    check_edge,
    step,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    kind: str  # "snapshot" | "apply"
    queue: str
    cluster: str  # the target cluster, where the job lives
    job_id: int
    task_ids: tuple[int, ...]


@dataclass
class TickResult:
    state: JobState | None = None
    messages: list[Message] = field(default_factory=list)
    finished: bool = False


class Coordinator:
    def __init__(self, settings: Settings, actor: str = "coordinator") -> None:
        self.settings = settings
        self.actor = actor

    # -- discovery -------------------------------------------------------------------------
    def active_jobs(self, cluster: str) -> list[int]:
        # Unpooled: the beat scans every cluster each second, and a pool per idle cluster per
        # process would hold connections for nothing.
        engine = scan_engine(self.settings.dsn(cluster))
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(s.jobs.c.id)
                    .where(s.jobs.c.state.in_([str(x) for x in ACTIVE_STATES]))
                    .order_by(s.jobs.c.id)
                ).scalars()
            )

    # -- one tick of one job -----------------------------------------------------------------
    def tick(self, cluster: str, job_id: int) -> TickResult:
        dst = Cluster(self.settings, cluster)
        result = TickResult()
        cleanup: tuple[str, int | None] | None = None
        with dst.engine.begin() as conn:
            job = conn.execute(
                sa.select(s.jobs).where(s.jobs.c.id == job_id).with_for_update(skip_locked=True)
            ).first()
            if job is None:
                return result  # another coordinator holds it, or it is gone
            state = JobState(job.state)
            result.state = state
            if state.final:
                return result
            decision = step(self._facts(conn, job, state))
            target = decision.to
            reason = decision.reason
            for action in decision.actions:
                if action is Action.PLAN:
                    target, reason = self._plan(conn, job, dst)
                    if target is JobState.SNAPSHOTING:
                        result.messages += self._dispatch(conn, cluster, job.id, "SNAPSHOT")
                elif action is Action.START_APPLY:
                    self._start_apply(conn, job, dst)
                elif action is Action.DISPATCH:
                    kind = "SNAPSHOT" if (target or state) is JobState.SNAPSHOTING else "APPLY"
                    result.messages += self._dispatch(conn, cluster, job.id, kind)
                elif action is Action.COMMIT:
                    try:
                        with conn.begin_nested():
                            versions = finish.commit(conn, job.id, job.txn_id)
                        reason = "committed: " + ", ".join(
                            f"{p}=v{v}" for p, v in sorted(versions.items())
                        )
                    except ReplicatorError as exc:
                        target, reason = JobState.ABORTED, f"commit refused: {exc}"
                        finish.abort_txn(conn, job.txn_id, reason)
                    cleanup = (job.src_cluster, job.txn_id if target is JobState.ABORTED else None)
                elif action is Action.ABORT:
                    finish.abort_txn(conn, job.txn_id, reason)
                    cleanup = (job.src_cluster, job.txn_id)
            if target is not None and target is not state:
                if target is JobState.ABORTED and cleanup is None:
                    finish.abort_txn(conn, job.txn_id, reason)
                    cleanup = (job.src_cluster, job.txn_id)
                self._move(conn, job.id, state, target, reason)
                result.state = target
                result.finished = target.final
        if cleanup is not None:
            self._cleanup(dst, job_id, *cleanup)
        return result

    def _facts(self, conn: sa.Connection, job: Any, state: JobState) -> JobFacts:
        txn_state, expired = None, False
        if job.txn_id is not None:
            row = conn.execute(
                sa.select(
                    s.transactions.c.state, (s.transactions.c.deadline < sa.func.now())
                ).where(s.transactions.c.id == job.txn_id)
            ).first()
            if row is not None:
                txn_state, expired = row[0], bool(row[1]) and row[0] == "PREPARE"
        kind = "SNAPSHOT" if state is JobState.SNAPSHOTING else "APPLY"
        counts = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.count().filter(s.job_tasks.c.state == "DONE"),
                sa.func.count().filter(s.job_tasks.c.state == "FAILED"),
                sa.func.min(s.job_tasks.c.error).filter(s.job_tasks.c.state == "FAILED"),
            ).where(s.job_tasks.c.job_id == job.id, s.job_tasks.c.kind == kind)
        ).one()
        return JobFacts(
            state=state,
            cancel_requested=job.cancel_requested,
            txn_state=txn_state,
            txn_expired=expired,
            tasks=TaskCounts(counts[0], counts[1], counts[2]),
            failure=counts[3],
        )

    def _move(
        self, conn: sa.Connection, job_id: int, frm: JobState, to: JobState, reason: str
    ) -> None:
        check_edge(frm, to)
        done = conn.execute(
            sa.update(s.jobs)
            .where(s.jobs.c.id == job_id, s.jobs.c.state == str(frm))
            .values(
                state=str(to),
                updated_at=sa.func.now(),
                finished_at=sa.func.now() if to.final else None,
                message=reason if to.final else s.jobs.c.message,
            )
        ).rowcount
        if done != 1:
            raise AssertionError(f"job {job_id} was not {frm}")
        record_event(conn, job_id, frm, to, reason, self.actor)

    # -- actions ---------------------------------------------------------------------------
    def _plan(self, conn: sa.Connection, job: Any, dst: Cluster) -> tuple[JobState, str]:
        src = Cluster(self.settings, job.src_cluster)
        pair = TablePair(job.src_cluster, job.src_table, dst.name, job.dst_table)
        try:
            plan = make_plan(src, dst, pair, partitions=job.options.get("partitions"))
        except UserError as exc:
            return JobState.ABORTED, f"planning failed: {exc}"
        if plan.up_to_date:
            return JobState.COMMITTED, "nothing to replicate: target is up to date"
        assert plan.dst is not None
        table = plan.dst
        other = txns.open_replication(conn, table.id)
        if other is not None:
            return JobState.ABORTED, f"table {table.full_name} is being replicated by {other.label}"
        txn = txns.begin(
            conn,
            table,
            label=f"REPLICATION_{table.db_name}_{table.name}_{job.id}",
            kind="REPLICATION",
            timeout_sec=job.options.get("timeout_sec")
            or self.settings.replication_transaction_timeout_sec,
        )
        conn.execute(sa.update(s.jobs).where(s.jobs.c.id == job.id).values(txn_id=txn.id))
        conn.execute(
            sa.insert(s.job_partitions),
            [
                {
                    "job_id": job.id,
                    "partition_name": p.name,
                    "src_partition_id": p.src_partition_id,
                    "dst_partition_id": p.dst_partition_id,
                    "src_version": p.src_version,
                    "src_epoch": p.src_epoch,
                    "dst_version": p.dst_version,
                    "dst_epoch": p.dst_epoch,
                    "mode": p.mode,
                }
                for p in plan.partitions
            ],
        )
        with src.engine.connect() as sconn:
            src_backends = model.list_backends(sconn)
        rows = []
        for i, t in enumerate(plan.tablets):
            # Spread snapshots over the source replicas whatever order placement left them in.
            candidates = _rotate(sorted(t.src_backend_ids), i)
            rows.append(
                {
                    "job_id": job.id,
                    "kind": "SNAPSHOT",
                    "partition_name": t.partition,
                    "bucket": t.bucket,
                    "src_tablet_id": t.src_tablet_id,
                    "dst_tablet_id": t.dst_tablet_id,
                    "src_backend_ids": candidates,
                    "queue": queue_name(src.name, src_backends[candidates[0]].name),
                }
            )
        conn.execute(sa.insert(s.job_tasks), rows)
        modes = sorted({p.mode.lower() for p in plan.partitions})
        return JobState.SNAPSHOTING, (
            f"planned {len(plan.partitions)} partitions ({'/'.join(modes)}), "
            f"{len(plan.tablets)} tablets; skipped {len(plan.skipped)} up-to-date partitions; "
            f"transaction {txn.label}"
        )

    def _start_apply(self, conn: sa.Connection, job: Any, dst: Cluster) -> None:
        snaps = conn.execute(
            sa.select(s.job_tasks).where(
                s.job_tasks.c.job_id == job.id, s.job_tasks.c.kind == "SNAPSHOT"
            )
        ).all()
        backends = model.list_backends(conn)
        replicas: dict[int, list[int]] = defaultdict(list)
        for r in conn.execute(
            sa.select(s.replicas.c.tablet_id, s.replicas.c.backend_id)
            .where(s.replicas.c.tablet_id.in_([t.dst_tablet_id for t in snaps]))
            .order_by(s.replicas.c.id)
        ):
            replicas[r.tablet_id].append(r.backend_id)
        rows = []
        for snap in snaps:
            manifest = snap.manifest
            sources = list(manifest["src_backend_ids"])
            fallback = list(manifest.get("fallback_backend_ids", []))
            for i, backend_id in enumerate(replicas[snap.dst_tablet_id]):
                rows.append(
                    {
                        "job_id": job.id,
                        "kind": "APPLY",
                        "partition_name": snap.partition_name,
                        "bucket": snap.bucket,
                        "src_tablet_id": snap.src_tablet_id,
                        "dst_tablet_id": snap.dst_tablet_id,
                        "dst_backend_id": backend_id,
                        # Spread the replicas of one tablet over different source replicas.
                        "src_backend_ids": _rotate(sources, i) + fallback,
                        "queue": queue_name(dst.name, backends[backend_id].name),
                        "manifest": manifest,
                        "incremental": snap.incremental,
                        "bytes_total": snap.bytes_total,
                    }
                )
        if rows:
            conn.execute(sa.insert(s.job_tasks), rows)

    def _dispatch(self, conn: sa.Connection, cluster: str, job_id: int, kind: str) -> list[Message]:
        t = s.job_tasks
        now = sa.func.now()
        # Tasks that ran out of attempts fail the job instead of looping for ever.
        conn.execute(
            sa.update(t)
            .where(
                t.c.job_id == job_id,
                t.c.kind == kind,
                t.c.attempts >= self.settings.task_max_attempts,
                sa.or_(
                    t.c.state == "PENDING",
                    sa.and_(t.c.state == "RUNNING", t.c.lease_until < now),
                ),
            )
            .values(
                state="FAILED",
                error=sa.func.concat(
                    f"gave up after {self.settings.task_max_attempts} attempts; last error: ",
                    sa.func.coalesce(t.c.error, "worker lost"),
                ),
                updated_at=now,
            )
        )
        due = conn.execute(
            sa.update(t)
            .where(
                t.c.job_id == job_id,
                t.c.kind == kind,
                sa.or_(
                    sa.and_(t.c.state == "PENDING", t.c.next_attempt_at <= now),
                    sa.and_(
                        t.c.state == "QUEUED",
                        t.c.dispatched_at
                        < now - dt.timedelta(seconds=self.settings.task_queued_timeout_sec),
                    ),
                    sa.and_(t.c.state == "RUNNING", t.c.lease_until < now),
                ),
            )
            .values(state="QUEUED", dispatched_at=now, updated_at=now)
            .returning(t.c.id, t.c.queue)
        ).all()
        by_queue: dict[str, list[int]] = defaultdict(list)
        for task_id, queue in due:
            by_queue[queue].append(task_id)
        messages = []
        for queue, ids in sorted(by_queue.items()):
            ids.sort()
            # Several messages per queue let several worker processes share a backend's work.
            chunks = max(math.ceil(len(ids) / self.settings.tablets_per_message), min(4, len(ids)))
            size = math.ceil(len(ids) / chunks)
            for i in range(0, len(ids), size):
                messages.append(
                    Message(kind.lower(), queue, cluster, job_id, tuple(ids[i : i + size]))
                )
        return messages

    def _cleanup(self, dst: Cluster, job_id: int, src_cluster: str, txn_id: int | None) -> None:
        try:
            if txn_id is not None:
                finish.clean_target(dst, txn_id)
            finish.release_holds(Cluster(self.settings, src_cluster), dst.name, job_id)
        except Exception:
            log.exception("cleanup after job %s on %s did not finish", job_id, dst.name)


def record_event(
    conn: sa.Connection, job_id: int, frm: JobState | None, to: JobState, reason: str, actor: str
) -> None:
    conn.execute(
        sa.insert(s.job_events).values(
            job_id=job_id,
            from_state=str(frm) if frm else None,
            to_state=str(to),
            reason=reason,
            actor=actor,
        )
    )


def _rotate(items: list[int], n: int) -> list[int]:
    if not items:
        return items
    k = n % len(items)
    return items[k:] + items[:k]
