"""Model-based property test: the REAL coordinator and the real task-row and worker code, against
real Postgres catalogs and real storage roots, driven through random interleavings of ticks,
deliveries (some twice, some late), crashed and stalled workers, cancels, coordinator restarts and
a target partition moved after planning. The invariants are checked on the catalogs and the files
after every move, and once more when everything in flight has been delivered.

Each example replicates a fresh table pair; the clusters are shared by the examples of one test.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.catalog import model
from app.catalog import schema as s
from app.client import ClusterHandle, Job, Replicator
from app.config import Settings
from app.errors import LeaseLost
from app.replication import taskrows
from app.replication.apply import apply_batch
from app.replication.coordinator import Coordinator, Message
from app.replication.finish import hold_owner
from app.replication.runner import BatchOutcome, TaskRunner
from app.replication.snapshot import snapshot_batch
from app.replication.state import ALLOWED, JobState
from app.replication.taskrows import Claimed, TaskKind, TaskState
from app.replication.work import deliver
from app.storage.rowsets import RowsetState
from tests.conftest import ClusterFactory
from tests.harness import wait_until
from tests.integration.rig import create_test_table, replica_files, rows

S = JobState
MAX_ATTEMPTS = 3
FINAL_TASK_STATES = {TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED}
MOVES = [
    "tick", "tick", "tick", "deliver", "deliver", "deliver", "duplicate", "late", "crash",
    "stall", "resume", "cancel", "restart", "move_target",
]  # fmt: skip
ALL = 1023
_tables = itertools.count(1)
_workers = itertools.count(1)
Content = list[tuple[str, int, int, int, str]]


def _no_nudge(_cluster: str, _job_id: int) -> None:
    return None


def content(handle: ClusterHandle, table: str) -> Content:
    return [(c.partition, c.version, c.epoch, c.rows, c.checksum) for c in handle.checksum(table)]


@dataclass
class Stalled:
    """A worker that claimed a message's tasks and has not run them yet (a slow worker)."""

    runner: TaskRunner
    kind: TaskKind
    claims: list[Claimed]


@dataclass
class World:
    settings: Settings
    src: ClusterHandle
    dst: ClusterHandle
    table: str
    job: Job
    baseline: Content
    dirs_before: set[str]
    coordinator: Coordinator
    pending: list[Message] = field(default_factory=list)  # on the broker, not yet delivered
    delivered: list[Message] = field(default_factory=list)
    last_tick: list[Message] = field(default_factory=list)
    stalled: list[Stalled] = field(default_factory=list)
    moved: bool = False
    restarts: int = 0
    tasks_seen: dict[int, tuple[str, int]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    # -- moves ----------------------------------------------------------------------------
    def act(self, move: str, k: int) -> None:
        self.log.append(f"{move}({k})")
        getattr(self, f"_{move}")(k)

    def _tick(self, _k: int) -> None:
        self.last_tick = self.coordinator.tick(self.dst.name, self.job.id).messages
        self.pending += self.last_tick

    def _deliver(self, k: int) -> None:
        """A random subset of the messages on the broker reaches its workers."""
        chosen = [m for i, m in enumerate(self.pending) if (k >> (i % 10)) & 1]
        for m in chosen or self.pending[:1]:
            self.pending.remove(m)
            self._run(m)
            self.delivered.append(m)

    def _duplicate(self, k: int) -> None:
        if self.delivered:
            self._run(self.delivered[k % len(self.delivered)])

    def _late(self, k: int) -> None:
        """After the job ended, a message delivered again (or for the first time)."""
        late = self.pending + self.delivered
        if self.job.refresh().state.final and late:
            self._run(late[k % len(late)])

    def _crash(self, k: int) -> None:
        """A worker takes a message, claims its tasks and dies: the leases must expire."""
        claimed = self._take(k)
        if claimed is None:
            return
        ids = [c.id for c in claimed.claims]
        if not ids:
            return

        def expired() -> bool:
            with self.dst.catalog.engine.connect() as conn:
                return not conn.execute(
                    sa.select(sa.func.count())
                    .select_from(s.job_tasks)
                    .where(
                        s.job_tasks.c.id.in_(ids),
                        s.job_tasks.c.state == TaskState.RUNNING,
                        s.job_tasks.c.lease_until >= sa.func.now(),
                    )
                ).scalar_one()

        wait_until(expired, 10, "the crashed worker's leases to expire")

    def _stall(self, k: int) -> None:
        claimed = self._take(k)
        if claimed is not None and claimed.claims:
            self.stalled.append(claimed)

    def _resume(self, k: int) -> None:
        """A stalled worker wakes up and runs what it claimed, however late: an attempt that was
        taken over, or a job that ended, must change nothing."""
        if not self.stalled:
            return
        w = self.stalled.pop(k % len(self.stalled))
        before = self._rows({c.id for c in w.claims})
        stale = {c.id for c in w.claims if before[c.id].attempts != c.attempt}
        stale |= {c.id for c in w.claims if before[c.id].state != TaskState.RUNNING}
        job = w.runner.job()
        out = BatchOutcome()
        try:
            if w.kind is TaskKind.SNAPSHOT:
                snapshot_batch(w.runner, job, w.claims, out)
            else:
                apply_batch(w.runner, job, w.claims, out, None)
        except LeaseLost:
            pass
        after = self._rows(stale)
        for task_id in stale:
            was, now = before[task_id], after[task_id]
            assert (now.state, now.attempts, now.worker) == (was.state, was.attempts, was.worker), (
                f"a stale attempt of task {task_id} changed its row: {was.state} -> {now.state}"
            )

    def _cancel(self, _k: int) -> None:
        self.job.cancel()

    def _restart(self, _k: int) -> None:
        """A new coordinator process: what the old one's last tick had not sent yet is lost."""
        self.restarts += 1
        self.coordinator = Coordinator(self.settings, actor=f"model-{self.restarts}")
        for m in self.last_tick:
            if m in self.pending:
                self.pending.remove(m)
        self.last_tick = []

    def _move_target(self, k: int) -> None:
        """A target partition moves after planning (a load on the target, say)."""
        if self.moved or self.job.refresh().state not in (S.SNAPSHOTING, S.REPLICATING):
            return
        planned = [p.partition_name for p in self.job.partitions()]
        name = sorted(planned)[k % len(planned)]
        with self.dst.catalog.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE partitions SET visible_version = visible_version + 1 "
                    "WHERE name = :n AND table_id = (SELECT id FROM tables WHERE name = :t)"
                ),
                {"n": name, "t": self.table.split(".", 1)[1]},
            )
        self.moved = True
        self.baseline = content(self.dst, self.table)

    # -- helpers --------------------------------------------------------------------------
    def _run(self, m: Message) -> None:
        deliver(self.settings, m, f"model-worker-{next(_workers)}")

    def _take(self, k: int) -> Stalled | None:
        """One worker takes a message off the broker and claims its tasks (every message on
        the broker with ``k`` = ALL, as one worker that prefetched them all)."""
        work = [m for m in self.pending if m.kind is not None]
        if not work:
            return None
        taken = work if k == ALL else [work[k % len(work)]]
        runner = TaskRunner(self.settings, self.dst.name, self.job.id, f"w{next(_workers)}")
        claims: list[Claimed] = []
        for m in taken:
            self.pending.remove(m)
            assert m.kind is not None
            claims += runner.claim(list(m.task_ids), m.kind)
        kinds = {m.kind for m in taken}
        return Stalled(runner, taken[0].kind, claims) if len(kinds) == 1 else None  # type: ignore[arg-type]

    def _rows(self, ids: set[int]) -> dict[int, Any]:
        with self.dst.catalog.engine.connect() as conn:
            return {t.id: t for t in taskrows.of_job(conn, self.job.id) if t.id in ids}

    def drain(self) -> None:
        """The faults stop: every message is delivered, the stalled workers finish, and the
        coordinator ticks until the job has ended and nothing is left in flight."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._tick(0)
            if self.job.refresh().state.final and not self.pending:
                break
            while self.pending:
                self._deliver(ALL)
            time.sleep(0.05)  # a re-send waits for the queued timeout or a lease
        else:
            raise AssertionError(f"job {self.job.ref} did not end: {self.job.state} {self.log}")
        while self.stalled:  # the slowest workers of all wake up after the clean-up ran
            self._resume(0)

    # -- invariants -----------------------------------------------------------------------
    def check(self, drained: bool = False) -> None:
        job = self.job.refresh()
        edges = [(e.from_state, e.to_state) for e in job.events if e.from_state is not None]
        for frm, to in edges:
            assert S(to) in ALLOWED[S(frm)], f"{frm} -> {to} is not an edge of state.ALLOWED"
        assert sum(S(to).final for _f, to in edges) <= 1, edges
        self._check_tasks()
        if job.state is S.COMMITTED:
            assert not self.moved, "committed although a target partition moved after planning"
            assert content(self.dst, self.table) == content(self.src, self.table)
            src, dst = replica_files(self.src, self.table), replica_files(self.dst, self.table)
            assert src.keys() == dst.keys()
            for key, replicas in dst.items():
                for files in replicas:
                    assert files == src[key][0], f"target replica of {key} differs from source"
        else:
            assert content(self.dst, self.table) == self.baseline, f"visible before commit: {job}"
        if drained:
            assert job.state.final
            self._check_left_behind(job)

    def _check_tasks(self) -> None:
        with self.dst.catalog.engine.connect() as conn:
            tasks = taskrows.of_job(conn, self.job.id)
        replicas = [(t.dst_tablet_id, t.dst_backend_id) for t in tasks if t.kind == TaskKind.APPLY]
        assert len(replicas) == len(set(replicas)), "a target replica has two apply tasks"
        for t in tasks:
            assert t.attempts <= MAX_ATTEMPTS, f"task {t.id}: {t.attempts} attempts"
            was = self.tasks_seen.get(t.id)
            if was is not None and was[0] in FINAL_TASK_STATES:
                assert (t.state, t.attempts) == was, f"task {t.id} left {was[0]} for {t.state}"
            self.tasks_seen[t.id] = (t.state, t.attempts)

    def _check_left_behind(self, job: Job) -> None:
        with self.src.catalog.engine.connect() as conn:
            holds = conn.execute(
                sa.select(sa.func.count())
                .select_from(s.holds)
                .where(s.holds.c.owner == hold_owner(self.dst.name, job.id))
            ).scalar_one()
        assert holds == 0, f"{job.state} job left {holds} holds on the source"
        with self.dst.catalog.engine.connect() as conn:
            named = set(
                conn.execute(
                    sa.select(s.rowsets.c.id).where(s.rowsets.c.state != RowsetState.DELETED)
                ).scalars()
            )
            pending = conn.execute(
                sa.select(sa.func.count())
                .select_from(s.rowsets)
                .where(s.rowsets.c.state == RowsetState.PENDING)
            ).scalar_one()
            txn_id = conn.execute(sa.select(s.jobs.c.txn_id).where(s.jobs.c.id == job.id)).scalar()
        assert pending == 0, "pending rowsets left on the target"
        for b in self.dst.backends():
            root = Path(b.storage_root)
            unnamed = [d for d in root.glob("data/*/*") if d.name not in named]
            assert not unnamed, f"{job.state} job left rowset directories no row names: {unnamed}"
            staged = [p for p in root.glob("staging/*/*")]
            assert not staged, f"{job.state} job left staged files: {staged}"
            if job.state is S.ABORTED and txn_id is not None:
                assert not (root / "staging" / str(txn_id)).exists(), "abort left its staging"
        if job.state is S.ABORTED:
            assert target_dirs(self.dst, self.table) == self.dirs_before


def target_dirs(handle: ClusterHandle, table: str) -> set[str]:
    with handle.catalog.engine.connect() as conn:
        info = model.get_table(conn, table)
        tablets = {str(t.id) for t in model.list_tablets(conn, info.id)}
    return {
        str(d)
        for b in handle.backends()
        for d in Path(b.storage_root, "data").glob("*/*")
        if d.parent.name in tablets
    }


@pytest.fixture(scope="module")
def model_settings(settings: Settings) -> Settings:
    return settings.with_overrides(
        transfer_mode="shared",  # applies read the source roots in this process
        task_lease_sec=1,
        task_queued_timeout_sec=1,
        task_max_attempts=MAX_ATTEMPTS,
        tablets_per_message=2,
    )


def new_world(settings: Settings, src: ClusterHandle, dst: ClusterHandle, seed: int) -> World:
    table = f"db.model{next(_tables)}"
    for handle in (src, dst):
        create_test_table(handle, table, buckets=1, replication_num=2)
    src.load(table, rows(400, seed=seed), label=f"{table}-1")
    job = Replicator(settings, _no_nudge).replicate(f"{src.name}:{table}", dst.name)
    return World(
        settings, src, dst, table, job, content(dst, table), target_dirs(dst, table),
        Coordinator(settings, actor="model-0"),
    )  # fmt: skip


@hsettings(
    max_examples=10,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Each scenario a guarantee depends on, whatever the random examples happen to reach:
# a target partition moves after planning (the commit must refuse);
@example(seed=1, moves=[("tick", 0), ("deliver", ALL), ("tick", 0), ("move_target", 0)])
# a slow worker holds applies while the job is cancelled and cleaned up, then runs them;
@example(
    seed=2,
    moves=[("tick", 0), ("deliver", ALL), ("tick", 0), ("stall", 0), ("cancel", 0), ("tick", 0),
           ("deliver", ALL), ("resume", 0), ("late", 0)],
)  # fmt: skip
# a slow worker's lease runs out and its task is sent again before it finishes;
@example(
    seed=3,
    moves=[("tick", 0), ("deliver", ALL), ("tick", 0), ("stall", 1), ("crash", 0), ("tick", 0),
           ("resume", 0), ("duplicate", 0), ("restart", 0), ("tick", 0)],
)  # fmt: skip
# every message's worker dies, attempt after attempt (the cap must fail the job).
@example(seed=4, moves=[("tick", 0), ("crash", ALL)] * (MAX_ATTEMPTS + 1))
@given(
    seed=st.integers(0, 1000),
    moves=st.lists(st.tuples(st.sampled_from(MOVES), st.integers(0, 1023)), max_size=24),
)
def test_no_interleaving_breaks_a_guarantee(
    model_settings: Settings, make_cluster: ClusterFactory, seed: int, moves: list[Any]
) -> None:
    clusters = _clusters.get(id(make_cluster))
    if clusters is None:  # one pair of clusters for all the examples of this run
        clusters = (make_cluster(backends=2), make_cluster(backends=2))
        _clusters[id(make_cluster)] = clusters
    world = new_world(model_settings, *clusters, seed)
    world.check()
    for move, k in moves:
        world.act(move, k)
        world.check()
    world.drain()
    world.check(drained=True)
    event(f"ended {world.job.state}" + (" (target moved)" if world.moved else ""))
    if world.moved:
        assert world.job.state is S.ABORTED, world.log
    if world.job.state is S.ABORTED and not world.moved and "cancel" not in str(world.log):
        # Nothing but a cancel, a moved target or the attempt cap may abort a job here.
        assert "gave up after" in (world.job.message or ""), (world.job.message, world.log)


_clusters: dict[int, tuple[ClusterHandle, ClusterHandle]] = {}


def test_a_byte_damaged_in_flight_is_fetched_again_and_lands_intact(
    model_settings: Settings,
    make_cluster: ClusterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ``transfer.corrupt`` failpoint flips a byte in the middle of a file (a data page, not
    the magic header) on its way to the target: only the checksum can notice, and then every
    target replica must hold the source's bytes exactly."""
    failpoints = tmp_path / "failpoints.json"
    failpoints.write_text('{"transfer.corrupt": 1}')
    monkeypatch.setenv("REPLICATOR_FAILPOINTS", str(failpoints))
    world = new_world(model_settings, make_cluster(backends=2), make_cluster(backends=2), seed=5)
    world.drain()
    assert failpoints.read_text() == '{"transfer.corrupt": 0}'  # it did fire
    world.check(drained=True)
    assert world.job.state is S.COMMITTED, world.job.message
    applies = [t for t in world.job.tasks() if t.kind == TaskKind.APPLY]
    assert sum(t.attempts for t in applies) == len(applies)  # re-read within the same attempt
