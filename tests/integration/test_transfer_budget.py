"""The link bandwidth budget, with a real redis-server and real processes."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest
import redis

from app.errors import InvalidRequest, StorageUnavailable
from app.transfer.budget import MAX_TAKE, Budget, link_key
from app.units import MB
from tests.integration.transfer_rig import free_port, redis_url

__all__ = ["redis_url"]
RATE_MB = 40
SECONDS = 5.0


def _pull(url: str, ready: Any, go: Any, start: Any, out: Any) -> None:
    budget = Budget(redis.Redis.from_url(url), ("prod", "dr"), RATE_MB)
    ready.put(1)  # imported and connected: a slow spawn must not shorten its pull
    go.wait(60)
    while time.time() < start.value:
        time.sleep(0.001)
    got = 0
    while time.time() < start.value + SECONDS:
        budget.take(256 * 1024)  # taken in pieces, like an apply writing 256 KiB chunks
        got += 256 * 1024
    out.put(got)


def test_four_processes_share_one_link_budget(redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, out, go, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_pull, args=(redis_url, ready, go, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    start.value = time.time() + 0.2
    go.set()
    totals = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    rate = sum(totals) / SECONDS / MB
    print(f"budget: {rate:.1f} MB/s for a budget of {RATE_MB} MB/s; per process {totals}")
    assert RATE_MB * 0.85 <= rate <= RATE_MB * 1.15, (rate, totals)
    # Fair: nobody got less than half an equal share.
    assert min(totals) > sum(totals) / 4 / 2, totals


def test_takes_are_split_and_the_key_names_the_link(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    slept: list[float] = []
    budget = Budget(client, ("prod", "dr"), 10, burst=MAX_TAKE, sleep=slept.append)
    budget.take(3 * MAX_TAKE + 1)
    assert budget.key == "olap:bw:prod:dr" == link_key("prod", "dr")
    assert client.exists("olap:bw:prod:dr") and client.ttl("olap:bw:prod:dr") > 0
    # The first MiB came from the burst; the rest is debt at 10 MiB/s. The fake sleep does not
    # let time pass, so each wait is the whole debt so far: 1, 2, then 2 MiB + 1 byte.
    assert len(slept) == 3 and [round(w, 1) for w in slept] == [0.1, 0.2, 0.2], slept


def test_unlimited_and_bad_arguments(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    Budget(client, ("prod", "dr"), 0).take(10 * MB)
    assert not client.exists("olap:bw:prod:dr")
    with pytest.raises(InvalidRequest):
        Budget(client, ("prod", "dr"), -1)
    with pytest.raises(InvalidRequest):
        Budget(client, ("prod", "../dr"), 1)


def test_redis_down_is_retryable() -> None:
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    with pytest.raises(StorageUnavailable, match=r"olap:bw:prod:dr"):
        Budget(dead, ("prod", "dr"), 1).take(1)
