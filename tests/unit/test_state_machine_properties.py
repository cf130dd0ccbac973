"""Property test: the pure state machine, driven through random interleavings of task
completions, failures, lost messages, crashed workers, restarts, cancels and timeouts."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from app.replication.state import Action, JobFacts, JobState, TaskCounts, check_edge, step
from app.replication.taskrows import TaskState

OLD, NEW = {"p1": 3, "p2": 5}, {"p1": 7, "p2": 9}


@dataclass
class World:
    """What Postgres would hold for one job, changed only the way the real actors change it."""

    snapshot_tasks: int
    replicas_per_tablet: int
    state: JobState = JobState.INITIALIZING
    txn: str | None = None
    txn_expired: bool = False
    cancel: bool = False
    tasks: list[TaskState] = field(default_factory=list)
    visible: dict[str, int] = field(default_factory=lambda: dict(OLD))
    history: list[JobState] = field(default_factory=lambda: [JobState.INITIALIZING])

    def facts(self) -> JobFacts:
        return JobFacts(
            state=self.state,
            cancel_requested=self.cancel,
            txn_state=self.txn,
            txn_expired=self.txn_expired,
            tasks=TaskCounts(
                len(self.tasks),
                self.tasks.count(TaskState.DONE),
                self.tasks.count(TaskState.FAILED),
            ),
            failure="boom" if TaskState.FAILED in self.tasks else None,
        )

    def tick(self) -> None:
        decision = step(self.facts())
        target = decision.to
        for action in decision.actions:
            if action is Action.PLAN:
                self.txn = "PREPARE"
                self.tasks = [TaskState.PENDING] * self.snapshot_tasks
                target = JobState.SNAPSHOTING
            elif action is Action.START_APPLY:
                self.tasks = [TaskState.PENDING] * (self.snapshot_tasks * self.replicas_per_tablet)
            elif action is Action.DISPATCH:
                self.tasks = [TaskState.QUEUED if t == TaskState.PENDING else t for t in self.tasks]
            elif action is Action.COMMIT:
                assert self.txn == "PREPARE" and not self.txn_expired
                self.visible = dict(NEW)  # one catalog transaction: all partitions at once
                self.txn = "VISIBLE"
            elif action is Action.ABORT and self.txn == "PREPARE":
                self.txn = "ABORTED"
        if target is not None and target is not self.state:
            check_edge(self.state, target)
            self.state = target
            self.history.append(target)

    def act(self, event: str, index: int) -> None:
        if event == "tick":
            self.tick()
            return
        if event == "cancel":
            self.cancel = True
            return
        if event == "expire":
            self.txn_expired = self.txn == "PREPARE" or self.txn_expired
            return
        if event == "restart":
            return  # the coordinator keeps nothing in memory: a restart changes no fact
        if not self.tasks or self.state.final:
            return
        i = index % len(self.tasks)
        moves = {
            "deliver": (TaskState.QUEUED, TaskState.RUNNING),
            "complete": (TaskState.RUNNING, TaskState.DONE),
            "fail_retryable": (TaskState.RUNNING, TaskState.PENDING),
            "fail_permanent": (TaskState.RUNNING, TaskState.FAILED),
            "lose_message": (
                TaskState.QUEUED,
                TaskState.PENDING,
            ),  # re-sent after the queued timeout
            "crash_worker": (TaskState.RUNNING, TaskState.PENDING),  # the lease expires
        }
        frm, to = moves[event]
        if self.tasks[i] == frm:
            self.tasks[i] = to


EVENTS = st.sampled_from(
    [
        "tick",
        "deliver",
        "complete",
        "fail_retryable",
        "fail_permanent",
        "lose_message",
        "crash_worker",
        "restart",
        "cancel",
        "expire",
    ]
)
RARE = {"cancel", "expire", "fail_permanent"}


@settings(max_examples=400, deadline=None)
@given(
    tablets=st.integers(1, 4),
    replicas=st.integers(1, 3),
    events=st.lists(st.tuples(EVENTS, st.integers(0, 11)), max_size=200),
)
def test_no_interleaving_breaks_the_invariants(
    tablets: int, replicas: int, events: list[tuple[str, int]]
) -> None:
    world = World(tablets, replicas)
    for event, index in events:
        world.act(event, index)
        _check(world)


@settings(max_examples=200, deadline=None)
@given(
    tablets=st.integers(1, 4),
    replicas=st.integers(1, 3),
    events=st.lists(
        st.tuples(EVENTS.filter(lambda e: e not in RARE), st.integers(0, 11)), max_size=120
    ),
)
def test_without_cancel_timeout_or_permanent_failure_the_job_commits(
    tablets: int, replicas: int, events: list[tuple[str, int]]
) -> None:
    world = World(tablets, replicas)
    for event, index in events:
        world.act(event, index)
        _check(world)
    # Then the faults stop: workers get every message and finish it.
    for _ in range(10):
        world.tick()
        world.tasks = [TaskState.DONE for _ in world.tasks]
        world.tick()
    assert world.state is JobState.COMMITTED
    _check(world)


def _check(world: World) -> None:
    finals = [s for s in world.history if s.final]
    assert len(finals) <= 1, f"more than one final state: {world.history}"
    assert world.visible in (OLD, NEW), f"a partial version is visible: {world.visible}"
    if world.state is JobState.COMMITTED:
        assert world.tasks == [TaskState.DONE] * (world.snapshot_tasks * world.replicas_per_tablet)
        assert world.visible == NEW and world.txn == "VISIBLE"
    else:
        assert world.visible == OLD, f"{world.state} job made data visible"
    if world.state is JobState.ABORTED:
        assert world.txn in (None, "ABORTED")
