"""app.replication.placement.place: snapshots go to the least loaded source replica."""

from __future__ import annotations

from app.replication.placement import place
from app.replication.plan import TabletPair


def _tablets(n: int, replicas: tuple[int, ...] = (1, 2)) -> list[TabletPair]:
    return [TabletPair("p", i, 100 + i, 200 + i, replicas, (9,)) for i in range(n)]


def queue_of(backend: int) -> str:
    return f"q{backend}"


def test_an_idle_cluster_alternates_replicas() -> None:
    got = place(_tablets(4), queue_of, {"q1": 0, "q2": 0})
    assert got == [[1, 2], [2, 1], [1, 2], [2, 1]]


def test_a_backend_behind_with_other_jobs_gets_new_work_only_once_the_other_caught_up() -> None:
    got = place(_tablets(6), queue_of, {"q1": 4, "q2": 0})
    firsts = [g[0] for g in got]
    assert firsts[:4] == [2, 2, 2, 2]  # q2 catches up with q1's 4 queued snapshots
    assert sorted(firsts[4:]) == [1, 2]  # then they alternate again
    assert all(sorted(g) == [1, 2] for g in got)  # the other replica stays a fallback


def test_a_tablet_on_one_replica_has_no_choice() -> None:
    got = place(_tablets(3, replicas=(1,)), queue_of, {"q1": 50, "q2": 0})
    assert got == [[1], [1], [1]]
