"""The replication job state machine, as a pure function.

Every transition the coordinator makes, and why (nothing else moves a job; the client's submit
records INITIALIZING, or INITIALIZING -> COMMITTED at once when there is nothing to replicate):

    INITIALIZING --PLAN done-----------------------------------------> SNAPSHOTING
    INITIALIZING --PLAN found nothing to do (target up to date)------> COMMITTED
    INITIALIZING --PLAN refused (bad input, table busy) / cancel-----> ABORTED
    SNAPSHOTING  --some snapshots DONE: START_APPLY for them, DISPATCH  (stays)
    SNAPSHOTING  --every snapshot DONE: START_APPLY, DISPATCH--------> REPLICATING
    SNAPSHOTING  --cancel / failed task / txn aborted, missing, timed out--> ABORTED
    REPLICATING  --every apply DONE: COMMIT done, RELEASE holds------> COMMITTED
    REPLICATING  --COMMIT refused (a target partition moved)---------> ABORTED
    REPLICATING  --cancel / failed task / txn aborted, missing, timed out--> ABORTED
    COMMITTED, ABORTED: final; nothing moves them.

``step(facts)`` looks at what Postgres says about one job and returns the transition to make and
the actions that go with it. It reads no clock and touches nothing: the coordinator gathers the
facts, calls it, and performs the decision in one Postgres transaction with compare-and-set.
Two actions can be refused by the world (PLAN and COMMIT); the coordinator then asks ``step``
again with the action's ``Result`` among the facts, so even those outcomes are decided here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    INITIALIZING = "INITIALIZING"
    SNAPSHOTING = "SNAPSHOTING"
    REPLICATING = "REPLICATING"
    COMMITTED = "COMMITTED"
    ABORTED = "ABORTED"

    @property
    def final(self) -> bool:
        return self in (JobState.COMMITTED, JobState.ABORTED)


class JobKind(StrEnum):
    """What a job moves (``jobs.kind``); both kinds take the states and edges below.

    REPLICATION: a table's partitions from a source cluster into a target cluster, where the job
    lives. BACKUP: a table's partitions into a repository (app/backup/); the job lives in the
    cluster it backs up, its snapshots are a replication's, its second phase uploads from the
    source backends, and its commit writes the backup's manifest."""

    REPLICATION = "REPLICATION"
    BACKUP = "BACKUP"


ACTIVE_STATES = (JobState.INITIALIZING, JobState.SNAPSHOTING, JobState.REPLICATING)

# Every edge the machine may take; anything else is a bug.
ALLOWED = {
    JobState.INITIALIZING: {JobState.SNAPSHOTING, JobState.COMMITTED, JobState.ABORTED},
    JobState.SNAPSHOTING: {JobState.REPLICATING, JobState.ABORTED},
    JobState.REPLICATING: {JobState.COMMITTED, JobState.ABORTED},
    JobState.COMMITTED: set(),
    JobState.ABORTED: set(),
}


class Action(StrEnum):
    PLAN = "PLAN"  # begin the target transaction, create snapshot task rows
    DISPATCH = "DISPATCH"  # (re)send messages for tasks that are due
    START_APPLY = "START_APPLY"  # create apply task rows from the snapshots' manifests
    COMMIT = "COMMIT"  # one catalog transaction makes everything visible
    RELEASE = "RELEASE"  # release the source holds (after a commit)
    ABORT = "ABORT"  # abort the transaction, remove what it left, release holds


class Outcome(StrEnum):
    OK = "OK"  # the action did its work
    NOTHING = "NOTHING"  # there was nothing to do (PLAN: the target is up to date)
    REFUSED = "REFUSED"  # the world said no; the detail says why


@dataclass(frozen=True)
class Result:
    """What performing PLAN or COMMIT found; ``detail`` becomes the event's reason."""

    action: Action
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True)
class TaskCounts:
    """Tasks of the job's current phase; ``failed`` counts every kind, and ``ready`` the
    snapshots taken whose applies are not created yet."""

    total: int = 0
    done: int = 0
    failed: int = 0
    ready: int = 0

    @property
    def all_done(self) -> bool:
        return self.total > 0 and self.done == self.total


@dataclass(frozen=True)
class JobFacts:
    state: JobState
    cancel_requested: bool = False
    txn_state: str | None = None  # PREPARE | VISIBLE | ABORTED | None (not begun)
    txn_expired: bool = False
    tasks: TaskCounts = TaskCounts()
    failure: str | None = None  # the first failed task's error
    result: Result | None = None  # what the PLAN or COMMIT just performed found


@dataclass(frozen=True)
class Decision:
    to: JobState | None  # None: stay
    actions: tuple[Action, ...]
    reason: str

    @property
    def moves(self) -> bool:
        return self.to is not None


STAY = Decision(None, (), "")


def step(f: JobFacts) -> Decision:
    if f.state.final:
        return STAY
    if f.cancel_requested:
        return Decision(JobState.ABORTED, (Action.ABORT,), "cancelled by user")
    r = f.result
    if f.state is JobState.INITIALIZING:
        return _after_plan(r) if r is not None and r.action is Action.PLAN else PLANNING
    if r is not None and r.action is Action.COMMIT:
        if r.outcome is Outcome.REFUSED:
            return Decision(JobState.ABORTED, (Action.ABORT,), f"commit refused: {r.detail}")
        return Decision(JobState.COMMITTED, (Action.RELEASE,), r.detail)
    if f.txn_state == "ABORTED":
        return Decision(JobState.ABORTED, (Action.ABORT,), "transaction was aborted")
    if f.txn_expired or f.txn_state is None:
        reason = "transaction timeout reached" if f.txn_expired else "transaction is missing"
        return Decision(JobState.ABORTED, (Action.ABORT,), reason)
    if f.tasks.failed:
        return Decision(
            JobState.ABORTED, (Action.ABORT,), f"task failed: {f.failure or 'unknown error'}"
        )
    if f.state is JobState.SNAPSHOTING:
        if f.tasks.all_done:
            return Decision(
                JobState.REPLICATING, (Action.START_APPLY, Action.DISPATCH), "all snapshots taken"
            )
        # A tablet's applies start as soon as its snapshot is taken (START_APPLY only creates
        # what is missing), so the target works while the slower snapshots finish.
        actions = (Action.START_APPLY, Action.DISPATCH) if f.tasks.ready else (Action.DISPATCH,)
        return Decision(None, actions, "waiting for snapshots")
    if f.state is JobState.REPLICATING:
        if f.tasks.all_done:
            # COMMITTED if the commit goes through; asked again with its Result either way.
            return Decision(JobState.COMMITTED, (Action.COMMIT,), "all replicas applied")
        return Decision(None, (Action.DISPATCH,), "waiting for applies")
    raise AssertionError(f"unhandled state {f.state}")


PLANNING = Decision(None, (Action.PLAN,), "planning")


def _after_plan(r: Result) -> Decision:
    if r.outcome is Outcome.REFUSED:
        return Decision(JobState.ABORTED, (Action.ABORT,), r.detail)
    if r.outcome is Outcome.NOTHING:
        return Decision(JobState.COMMITTED, (), r.detail)
    return Decision(JobState.SNAPSHOTING, (Action.DISPATCH,), r.detail)


def check_edge(frm: JobState, to: JobState) -> None:
    if to not in ALLOWED[frm]:
        raise AssertionError(f"illegal job transition {frm} -> {to}")
