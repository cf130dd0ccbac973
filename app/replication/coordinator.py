"""The coordinator: one tick advances one job by the state machine's decision.

A tick locks the job row with ``FOR UPDATE SKIP LOCKED`` (a second coordinator skips it), gathers
the facts, asks ``state.step`` what to do, performs the actions in the same Postgres transaction,
and returns the messages to send once that transaction has committed. Messages carry only ids.
The coordinator decides nothing itself: when PLAN or COMMIT reports a ``Result`` (done, nothing
to do, refused), it asks ``step`` again with that result and performs the new decision.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from app import txn as txns
from app.backup import flow as backup_flow
from app.backup import view as restore_view
from app.catalog import model
from app.catalog import schema as s
from app.catalog.engine import scan_engine
from app.cluster import Cluster
from app.config import Settings
from app.errors import ReplicatorError, UserError, redact
from app.queues import queue_name
from app.replication import changed, due, finish, placement, taskrows
from app.replication.applies import start_applies
from app.replication.plan import TablePair, make_plan
from app.replication.state import (
    ACTIVE_STATES,
    Action,
    Decision,
    JobFacts,
    JobKind,
    JobState,
    Outcome,
    Result,
    check_edge,
    step,
)
from app.replication.taskrows import TaskKind
from app.txn import TxnState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    kind: TaskKind | None  # None: clean up what an aborted job left on the queue's backend
    queue: str
    cluster: str  # the target cluster, where the job lives
    job_id: int
    task_ids: tuple[int, ...]
    backend: str | None = None  # for a clean-up: the backend whose storage it cleans
    # Which worker tasks carry it, so Flower and the logs tell the flows apart: replication,
    # backup (snapshot and upload) or restore (a replication from a repository).
    flow: str = "replication"

    @property
    def task(self) -> str:
        """The worker task's name: replication.snapshot, .apply or .cleanup; backup.snapshot,
        backup.upload; restore.snapshot, restore.apply."""
        if self.kind is None:
            return "replication.cleanup"
        if self.flow == "backup" and self.kind is TaskKind.APPLY:
            return "backup.upload"
        return f"{self.flow}.{self.kind.lower()}"


def flow_of(job: Any) -> str:
    if job.kind == JobKind.BACKUP:
        return "backup"
    return "restore" if job.options.get("restore") else "replication"


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

    def due_jobs(self, cluster: str) -> list[int]:
        """The active jobs a tick would move now, in one query (app/replication/due.py)."""
        return due.due_jobs(scan_engine(self.settings.dsn(cluster)), self.settings)

    # -- one tick of one job -----------------------------------------------------------------
    def tick(self, cluster: str, job_id: int) -> TickResult:
        dst = Cluster(self.settings, cluster)
        result = TickResult()
        cleanup: list[Action] = []
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
            facts = self._facts(conn, job, state)
            decision = step(facts)
            while True:
                outcome = self._perform(conn, job, dst, decision, result, cleanup)
                if outcome is None:
                    break
                # PLAN or COMMIT reported what it found: the state machine decides what follows.
                facts = dataclasses.replace(facts, result=outcome)
                decision = step(facts)
            if decision.to is not None:
                self._move(conn, job.id, state, decision.to, decision.reason)
                if decision.to.final:
                    taskrows.forget_tokens(conn, job.id)
                result.state = decision.to
                result.finished = decision.to.final
        if cleanup or result.finished:
            self._cleanup(dst, job, cleanup, result.finished)
        return result

    def _perform(
        self,
        conn: sa.Connection,
        job: Any,
        dst: Cluster,
        decision: Decision,
        result: TickResult,
        cleanup: list[Action],
    ) -> Result | None:
        """Perform the decision's actions in order; stop at the first that reports a Result."""
        phase = decision.to if decision.to in ACTIVE_STATES else JobState(job.state)
        # A backup plans, starts its second phase and commits its own way (app/backup/flow.py).
        backup = job.kind == JobKind.BACKUP
        for action in decision.actions:
            if action is Action.PLAN:
                return (
                    backup_flow.plan(self.settings, conn, job)
                    if backup
                    else self._plan(conn, job, dst)
                )
            if action is Action.COMMIT:
                return backup_flow.commit(conn, job) if backup else self._commit(conn, job)
            if action is Action.START_APPLY:
                (backup_flow.start_uploads if backup else start_applies)(conn, job.id, dst.name)
            elif action is Action.DISPATCH:
                for kind in TaskKind.open_in(phase):
                    result.messages += self._dispatch(conn, dst.name, job, kind)
            elif action is Action.ABORT:
                finish.abort_txn(conn, job.txn_id, decision.reason)
                taskrows.cancel_open(conn, job.id)
                cleanup.append(Action.ABORT)
                # A backup wrote nothing on any backend; its uploaded objects stay for a rerun.
                if job.txn_id is not None and not backup:
                    result.messages += self._cleanups(conn, dst.name, job.id)
            elif action is Action.RELEASE:
                cleanup.append(Action.RELEASE)
        return None

    def _facts(self, conn: sa.Connection, job: Any, state: JobState) -> JobFacts:
        txn_state, expired = None, False
        if job.txn_id is not None:
            row = conn.execute(
                sa.select(
                    s.transactions.c.state, (s.transactions.c.deadline < sa.func.now())
                ).where(s.transactions.c.id == job.txn_id)
            ).first()
            if row is not None:
                txn_state, expired = row[0], bool(row[1]) and row[0] == TxnState.PREPARE
        counts, failure = taskrows.counts(conn, job.id, TaskKind.of_phase(state))
        return JobFacts(
            state=state,
            cancel_requested=job.cancel_requested,
            txn_state=txn_state,
            txn_expired=expired,
            tasks=counts,
            failure=failure,
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
                message=redact(reason) if to.final else s.jobs.c.message,
            )
        ).rowcount
        if done != 1:
            raise AssertionError(f"job {job_id} was not {frm}")
        record_event(conn, job_id, frm, to, reason, self.actor)

    # -- actions ---------------------------------------------------------------------------
    def _plan(self, conn: sa.Connection, job: Any, dst: Cluster) -> Result:
        """Plan, begin the target transaction and create the snapshot tasks; or say why not."""
        src = Cluster(self.settings, job.src_cluster)
        pair = TablePair(job.src_cluster, job.src_table, dst.name, job.dst_table)
        try:
            plan = make_plan(
                src,
                dst,
                pair,
                partitions=job.options.get("partitions"),
                overwrite=bool(job.options.get("overwrite")),
                repair=job.options.get("repair"),
                schema_changes=job.options.get("schema_changes"),
            )
        except UserError as exc:
            return Result(Action.PLAN, Outcome.REFUSED, f"planning failed: {exc}")
        if plan.up_to_date:
            return Result(
                Action.PLAN, Outcome.NOTHING, "nothing to replicate: target is up to date"
            )
        assert plan.dst is not None
        table = plan.dst
        other = txns.open_replication(conn, table.id)
        if other is not None:
            return Result(
                Action.PLAN,
                Outcome.REFUSED,
                f"table {table.full_name} is being replicated by {other.label}",
            )
        txn = txns.begin(
            conn,
            table,
            label=f"REPLICATION_{table.db_name}_{table.name}_{job.id}",
            kind="REPLICATION",
            timeout_sec=job.options.get("timeout_sec")
            or self.settings.replication_transaction_timeout_sec,
        )
        conn.execute(sa.update(s.jobs).where(s.jobs.c.id == job.id).values(txn_id=txn.id))
        unchanged = changed.drop_unchanged(src, plan)
        placement.record_plan(conn, job.id, plan, src, dst.name)
        modes = sorted({p.mode.lower() for p in plan.partitions})
        replaced = (
            f"; OVERWRITING partitions {', '.join(plan.overwritten)} that were written on the "
            "target (asked for with overwrite)"
            if plan.overwritten
            else ""
        )
        return Result(
            Action.PLAN,
            Outcome.OK,
            f"planned {len(plan.partitions)} partitions ({'/'.join(modes)}), "
            f"{len(plan.tablets)} tablets ({unchanged} more without new rows need nothing); "
            f"skipped {len(plan.skipped)} up-to-date partitions; "
            f"transaction {txn.label}{replaced}",
        )

    def _commit(self, conn: sa.Connection, job: Any) -> Result:
        try:
            with conn.begin_nested():  # a refused commit leaves no trace
                finish.replay_schema(conn, job.txn_id, job.options.get("schema_changes"))
                versions = finish.commit(conn, job.id, job.txn_id)
        except ReplicatorError as exc:
            return Result(Action.COMMIT, Outcome.REFUSED, str(exc))
        detail = ", ".join(f"{p}=v{v}" for p, v in sorted(versions.items()))
        return Result(Action.COMMIT, Outcome.OK, f"committed: {detail}")

    def _dispatch(
        self, conn: sa.Connection, cluster: str, job: Any, kind: TaskKind
    ) -> list[Message]:
        job_id, flow = job.id, flow_of(job)
        # Tasks that ran out of attempts fail the job instead of looping for ever.
        taskrows.give_up(conn, job_id, kind, self.settings.task_max_attempts)
        due = taskrows.mark_due(conn, job_id, kind, self.settings.task_queued_timeout_sec)
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
                    Message(kind, queue, cluster, job_id, tuple(ids[i : i + size]), None, flow)
                )
        return messages

    def _cleanups(self, conn: sa.Connection, cluster: str, job_id: int) -> list[Message]:
        """A clean-up message for every target backend: an aborted job's files are removed by
        the workers on the hosts that hold them (the coordinator may reach no storage at all)."""
        return [
            Message(None, queue_name(cluster, b.name), cluster, job_id, (), b.name)
            for b in model.list_backends(conn).values()
        ]

    def _cleanup(self, dst: Cluster, job: Any, actions: list[Action], finished: bool) -> None:
        """After the tick's transaction: remove what an aborted job left on the target, and
        release the source holds of a finished job (each step on its own: a target that cannot
        be cleaned now must not keep the source's files pinned)."""
        src = Cluster(self.settings, job.src_cluster)
        # The source's files first: releasing the holds is quick, the target's cleanup is not.
        steps: list[tuple[str, Callable[[], object]]] = [
            ("hold release", lambda: finish.release_holds(src, dst.name, job.id))
        ]
        if Action.ABORT in actions and job.txn_id is not None and job.kind != JobKind.BACKUP:
            steps.append(("target catalog", lambda: finish.forget_target(dst, job.txn_id)))
        if finished and restore_view.is_view(job.src_cluster):  # a restore's source goes too
            steps.append(
                (
                    "restore source",
                    lambda: restore_view.drop(self.settings, job.src_cluster, job.src_table),
                )
            )
        for what, run in steps:
            try:
                run()
            except Exception:
                log.exception("%s after job %s on %s did not finish", what, job.id, dst.name)


def record_event(
    conn: sa.Connection, job_id: int, frm: JobState | None, to: JobState, reason: str, actor: str
) -> None:
    conn.execute(
        sa.insert(s.job_events).values(
            job_id=job_id,
            from_state=str(frm) if frm else None,
            to_state=str(to),
            reason=redact(reason),
            actor=actor,
        )
    )
