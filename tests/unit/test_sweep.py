"""The beat's round over active jobs: bounded slices, every job in turn."""

from __future__ import annotations

from app.replication.sweep import MAX_SLICE, Sweep


def test_a_first_beat_sweeps_all_it_may_then_a_share_per_beat() -> None:
    sweep = Sweep(period=10.0)
    jobs = list(range(1, 51))
    assert sweep.slice(jobs, now=0.0) == jobs  # a coordinator that just started looks at all
    assert sweep.slice(jobs, now=1.0) == [1, 2, 3, 4, 5]  # a tenth a second: 10 s a round
    assert sweep.slice(jobs, now=2.0) == [6, 7, 8, 9, 10]


def test_every_job_comes_round_within_the_period_and_a_beat_is_bounded() -> None:
    sweep = Sweep(period=10.0)
    jobs = list(range(1, 1001))
    seen: list[int] = []
    sizes = []
    for beat in range(1, 12):
        got = sweep.slice(jobs, now=float(beat))
        sizes.append(len(got))
        seen += got
    assert max(sizes) == MAX_SLICE  # 1,000 jobs: 100 a beat, never all of them
    assert set(seen[: MAX_SLICE * 10 + MAX_SLICE]) == set(jobs)  # the first round + one slice
    assert seen[MAX_SLICE * 10 : MAX_SLICE * 11] == list(range(1, MAX_SLICE + 1))  # wraps


def test_jobs_that_end_or_arrive_keep_the_round_going() -> None:
    sweep = Sweep(period=2.0)
    assert sweep.slice([1, 2, 3, 4], now=0.0) == [1, 2, 3, 4]
    assert sweep.slice([1, 2, 3, 4], now=1.0) == [1, 2]
    assert sweep.slice([1, 4, 7, 9], now=2.0) == [4, 7]  # 2 and 3 ended; past the cursor (2)
    assert sweep.slice([1, 4, 7, 9], now=3.0) == [9, 1]  # wraps round
    assert sweep.slice([], now=4.0) == []
    assert sweep.slice([5], now=4.0) == [5]  # at least one, however short the beat
