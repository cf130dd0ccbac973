"""workers.nudge.nudge_soon: snapshots that finish one after another wake the coordinator at
most once per NUDGE_EVERY_SEC per job, through a key in the real broker; a broker that cannot
be reached costs no error (the beat's tick covers)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from frontends.supervise import free_port

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import workers.nudge as n

    sent = []
    n.nudge = lambda cluster, job_id: sent.append([cluster, job_id])
    job = int(sys.argv[1])
    burst = [n.nudge_soon("c", job, every_sec=0.3) for _ in range(5)]
    other = n.nudge_soon("c", job + 1, every_sec=0.3)
    time.sleep(0.45)
    later = n.nudge_soon("c", job, every_sec=0.3)
    print(json.dumps({"burst": burst, "other": other, "later": later, "sent": sent}))
    """
)


def _run(env: dict[str, str], job: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(job)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_one_nudge_per_window_per_job(test_env: dict[str, str]) -> None:
    got = _run(test_env, 777001)
    assert got["burst"] == [True, False, False, False, False]
    assert got["other"] is True  # another job has its own window
    assert got["later"] is True  # the window has passed
    assert got["sent"] == [["c", 777001], ["c", 777002], ["c", 777001]]


def test_an_unreachable_broker_is_no_error(test_env: dict[str, str]) -> None:
    env = test_env | {"REPLICATOR_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    got = _run(env, 777100)
    assert got["burst"] == [False] * 5 and got["sent"] == []


GC_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import workers.tasks as t

    sent = []
    t.storage_gc.collect = lambda cluster, backend: type("R", (), {"__dict__": {}})()
    backend = sys.argv[1]
    first = [t._gc_due("c", backend) for _ in range(3)]
    t.gc_backend.run("c", backend)  # the run ends: the claim is released
    after = t._gc_due("c", backend)
    t.gc_backend.run("c", backend)
    print(json.dumps({"first": first, "after": after}))
    """
)


def test_at_most_one_gc_run_pending_per_backend(test_env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", GC_SCRIPT, f"be-{free_port()}"],
        env=test_env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"first": [True, False, False], "after": True}


PENDING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import workers.nudge as n

    sent = []
    n.celery.send_task = lambda name, kwargs, **kw: sent.append(kwargs["job_id"])
    job = int(sys.argv[1])
    first = [n.nudge("c", job) for _ in range(3)]  # one tick waits: the others are not sent
    other = n.nudge("c", job + 1)
    n.tick_started("c", job)  # the tick began: what happens now needs a tick of its own
    again = n.nudge("c", job)
    print(json.dumps({"first": first, "other": other, "again": again, "sent": sent}))
    """
)


def test_at_most_one_tick_waits_per_job(test_env: dict[str, str]) -> None:
    """The beat and the workers nudging the same job send one tick message while none has
    started; a tick that starts gives the job back, so a later change gets its own tick."""
    out = subprocess.run(
        [sys.executable, "-c", PENDING_SCRIPT, str(free_port() + 900000)],
        env=test_env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    job = got["sent"][0]
    assert got["first"] == [True, False, False]
    assert got["other"] is True and got["again"] is True
    assert got["sent"] == [job, job + 1, job]


def test_without_the_broker_s_keys_a_tick_is_still_sent(test_env: dict[str, str]) -> None:
    """Redis for the dedupe unreachable: every nudge is sent (kombu then says whether the
    broker is there); the dedupe is an economy, never a reason to drop a tick."""
    env = test_env | {"REPLICATOR_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    out = subprocess.run(
        [sys.executable, "-c", PENDING_SCRIPT, "5"], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["first"] == [True, True, True] and got["sent"] == [5, 5, 5, 6, 5]


MANY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import workers.nudge as n

    sent = []
    n.celery.send_task = lambda name, kwargs, **kw: sent.append(kwargs)
    base = int(sys.argv[1])
    jobs = list(range(base, base + 60))
    n.nudge("c", base + 1)  # a worker's tick of one of them waits already
    count = n.nudge_many("c", jobs)
    again = n.nudge_many("c", jobs)  # all of them wait now: nothing is sent
    print(json.dumps({"count": count, "again": again, "sent": sent}))
    """
)


def test_the_beat_sends_its_jobs_in_chunks_skipping_those_a_tick_waits_for(
    test_env: dict[str, str],
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", MANY_SCRIPT, str(free_port() * 100 + 3_000_000)],
        env=test_env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    single, *chunks = got["sent"]
    base = single["job_id"] - 1
    assert got["count"] == 59 and got["again"] == 0
    assert [len(c["job_ids"]) for c in chunks] == [25, 25, 9]  # BEAT_CHUNK a message
    sent = [j for c in chunks for j in c["job_ids"]]
    assert sent == [j for j in range(base, base + 60) if j != base + 1]
