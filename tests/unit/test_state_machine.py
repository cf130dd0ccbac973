"""The pure job state machine: every transition, and the ones that must not happen."""

from __future__ import annotations

import itertools

import pytest

from app.replication.state import (
    ALLOWED,
    Action,
    JobFacts,
    JobState,
    TaskCounts,
    check_edge,
    step,
)

S = JobState
ALL_TASKS_DONE = TaskCounts(total=4, done=4)
HALF_DONE = TaskCounts(total=4, done=2)


def facts(state: JobState, **kw: object) -> JobFacts:
    base: dict[str, object] = {"txn_state": "PREPARE", "tasks": HALF_DONE}
    base.update(kw)
    return JobFacts(state=state, **base)  # type: ignore[arg-type]


def test_initializing_plans_and_lets_the_plan_choose_the_next_state() -> None:
    d = step(JobFacts(S.INITIALIZING))
    assert d.to is None and d.actions == (Action.PLAN,)


def test_snapshoting_waits_and_dispatches_while_snapshots_are_missing() -> None:
    d = step(facts(S.SNAPSHOTING))
    assert d.to is None and d.actions == (Action.DISPATCH,)


def test_snapshoting_starts_the_applies_of_the_snapshots_already_taken() -> None:
    d = step(facts(S.SNAPSHOTING, tasks=TaskCounts(total=4, done=2, ready=2)))
    assert d.to is None and d.actions == (Action.START_APPLY, Action.DISPATCH)
    # Once their applies exist, the next tick only dispatches.
    d = step(facts(S.SNAPSHOTING, tasks=TaskCounts(total=4, done=2, ready=0)))
    assert d.to is None and d.actions == (Action.DISPATCH,)


def test_an_apply_failing_while_snapshots_run_aborts() -> None:
    # ``failed`` counts every kind: a failed apply ends the job in SNAPSHOTING too.
    d = step(facts(S.SNAPSHOTING, tasks=TaskCounts(total=4, done=2, failed=1)))
    assert d.to is S.ABORTED


def test_snapshoting_moves_to_replicating_when_every_snapshot_is_done() -> None:
    d = step(facts(S.SNAPSHOTING, tasks=ALL_TASKS_DONE))
    assert d.to is S.REPLICATING
    assert d.actions == (Action.START_APPLY, Action.DISPATCH)


def test_replicating_waits_while_applies_are_missing() -> None:
    d = step(facts(S.REPLICATING))
    assert d.to is None and d.actions == (Action.DISPATCH,)


def test_replicating_commits_when_every_replica_is_applied() -> None:
    d = step(facts(S.REPLICATING, tasks=ALL_TASKS_DONE))
    assert d.to is S.COMMITTED and d.actions == (Action.COMMIT,)


@pytest.mark.parametrize("state", [S.INITIALIZING, S.SNAPSHOTING, S.REPLICATING])
def test_cancel_aborts_from_every_active_state(state: JobState) -> None:
    d = step(facts(state, cancel_requested=True, tasks=ALL_TASKS_DONE))
    assert d.to is S.ABORTED and d.actions == (Action.ABORT,)
    assert d.reason == "cancelled by user"


@pytest.mark.parametrize("state", [S.SNAPSHOTING, S.REPLICATING])
def test_a_failed_task_aborts_with_its_error(state: JobState) -> None:
    d = step(facts(state, tasks=TaskCounts(4, 3, 1), failure="checksum mismatch"))
    assert d.to is S.ABORTED and "checksum mismatch" in d.reason


@pytest.mark.parametrize("state", [S.SNAPSHOTING, S.REPLICATING])
def test_a_timed_out_transaction_aborts_even_when_all_tasks_are_done(state: JobState) -> None:
    d = step(facts(state, txn_expired=True, tasks=ALL_TASKS_DONE))
    assert d.to is S.ABORTED and d.reason == "transaction timeout reached"


@pytest.mark.parametrize("state", [S.SNAPSHOTING, S.REPLICATING])
def test_an_aborted_or_missing_transaction_aborts_the_job(state: JobState) -> None:
    assert step(facts(state, txn_state="ABORTED")).to is S.ABORTED
    assert step(facts(state, txn_state=None)).to is S.ABORTED


@pytest.mark.parametrize("state", [S.COMMITTED, S.ABORTED])
def test_final_states_never_move_whatever_happens(state: JobState) -> None:
    for cancel, expired, tasks in itertools.product(
        [False, True], [False, True], [ALL_TASKS_DONE, HALF_DONE, TaskCounts(4, 0, 4)]
    ):
        d = step(facts(state, cancel_requested=cancel, txn_expired=expired, tasks=tasks))
        assert d.to is None and d.actions == ()


def test_a_phase_with_no_tasks_is_not_complete() -> None:
    # Zero task rows must never count as "all done" (a plan that wrote nothing is a bug).
    assert step(facts(S.REPLICATING, tasks=TaskCounts(0, 0, 0))).to is None


def test_every_decision_of_step_follows_an_allowed_edge() -> None:
    """Exhaustive over the facts that matter: step never proposes an illegal edge."""
    for state, cancel, txn, expired, tasks in itertools.product(
        list(S),
        [False, True],
        [None, "PREPARE", "ABORTED", "VISIBLE"],
        [False, True],
        [TaskCounts(0, 0, 0), HALF_DONE, ALL_TASKS_DONE, TaskCounts(4, 2, 1)],
    ):
        d = step(JobFacts(state, cancel, txn, expired, tasks, "boom"))
        if d.to is not None:
            assert d.to in ALLOWED[state], (state, d)
        if state.final:
            assert d == step(JobFacts(state))


@pytest.mark.parametrize(
    ("frm", "to"),
    [
        (S.INITIALIZING, S.REPLICATING),
        (S.SNAPSHOTING, S.COMMITTED),
        (S.REPLICATING, S.SNAPSHOTING),
        (S.COMMITTED, S.ABORTED),
        (S.ABORTED, S.COMMITTED),
        (S.COMMITTED, S.REPLICATING),
    ],
)
def test_transitions_that_must_not_happen_are_refused(frm: JobState, to: JobState) -> None:
    with pytest.raises(AssertionError, match="illegal job transition"):
        check_edge(frm, to)


@pytest.mark.parametrize(
    ("frm", "to"),
    [
        (S.INITIALIZING, S.SNAPSHOTING),
        (S.INITIALIZING, S.COMMITTED),
        (S.INITIALIZING, S.ABORTED),
        (S.SNAPSHOTING, S.REPLICATING),
        (S.SNAPSHOTING, S.ABORTED),
        (S.REPLICATING, S.COMMITTED),
        (S.REPLICATING, S.ABORTED),
    ],
)
def test_allowed_transitions_pass_the_edge_check(frm: JobState, to: JobState) -> None:
    check_edge(frm, to)
