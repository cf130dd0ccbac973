"""The replication job state machine, as a pure function.

    INITIALIZING --plan--> SNAPSHOTING --all snapshots done--> REPLICATING --all applies done-->
    COMMITTED;  any non-final state --cancel / failed task / transaction ended--> ABORTED

``step(facts)`` looks at what Postgres says about one job and returns the transition to make and
the actions that go with it. It reads no clock and touches nothing: the coordinator gathers the
facts, calls it, and performs the decision in one Postgres transaction with compare-and-set.
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
    ABORT = "ABORT"  # abort the transaction, clean up, release holds


@dataclass(frozen=True)
class TaskCounts:
    """Tasks of the job's current phase."""

    total: int = 0
    done: int = 0
    failed: int = 0

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
    if f.state is JobState.INITIALIZING:
        # PLAN decides between SNAPSHOTING, COMMITTED (nothing to do) and ABORTED itself.
        return Decision(None, (Action.PLAN,), "planning")
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
        return Decision(None, (Action.DISPATCH,), "waiting for snapshots")
    if f.state is JobState.REPLICATING:
        if f.tasks.all_done:
            return Decision(JobState.COMMITTED, (Action.COMMIT,), "all replicas applied")
        return Decision(None, (Action.DISPATCH,), "waiting for applies")
    raise AssertionError(f"unhandled state {f.state}")


def check_edge(frm: JobState, to: JobState) -> None:
    if to not in ALLOWED[frm]:
        raise AssertionError(f"illegal job transition {frm} -> {to}")
