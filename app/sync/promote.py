"""Promotion: the target of a sync policy becomes the writable copy, and optionally the policy
turns round so that the old source can later be brought back (failback).

Waiting (the default) lets the coordinator's beat finish syncing: the promotion happens once
every followed table is caught up and no job runs, and is refused after ``timeout`` seconds if
the source keeps moving (stop writes there first). With ``now`` it stops at once: the policy's
running jobs are cancelled (an abort leaves the target as it was) and what was not copied is
reported per table.

The reverse policy records the old source's partitions as they are at the promotion (its
baseline): those, and only those, it may later replace. A partition the promoted side did not
change keeps the same version and epoch on both sides and is never copied back; one it changed
has a new epoch there and is copied in full; any other write found on the old source stops
that table, as for any policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from app.catalog import schema as s
from app.cluster import Cluster
from app.config import Settings
from app.errors import InvalidRequest
from app.replication.jobs import request_cancel
from app.replication.state import ACTIVE_STATES
from app.sync import policies
from app.sync.policies import Policy, PolicyState
from app.sync.tick import tables_of


@dataclass
class Promotion:
    policy: str
    caught_up: bool
    not_copied: dict[str, int] = field(default_factory=dict)  # table -> versions behind
    cancelled_jobs: list[int] = field(default_factory=list)
    reverse: str | None = None  # the failback policy, in the old source's cluster


def promote(
    settings: Settings,
    cluster: str,
    name: str,
    *,
    now: bool = False,
    reverse: bool = False,
    timeout: float = 300.0,
    poll: float = 0.5,
) -> Promotion:
    policy = policies.show(settings, cluster, name)
    src, dst = Cluster(settings, policy.src_cluster), Cluster(settings, cluster)
    result = Promotion(policy.name, caught_up=True)
    if now:
        policies.set_state(settings, cluster, name, PolicyState.PAUSED)
        for job_id in _running(dst, policy):
            if request_cancel(settings, cluster, job_id):
                result.cancelled_jobs.append(job_id)
        _wait_for_no_jobs(dst, policy, timeout, poll)
    else:
        policies.set_state(settings, cluster, name, PolicyState.ACTIVE)  # to catch up
        _wait_until_caught_up(settings, src, dst, policy, timeout, poll)
    result.not_copied = {t: n for t, n in behind(src, dst, policy).items() if n}
    result.caught_up = not result.not_copied
    baseline = {
        table: {p: [v.version, v.epoch] for p, v in view.parts.items()}
        for table, view in tables_of(src, policy.src_db).items()
        if policy.follows(table)
    }
    policies.drop(settings, cluster, name)  # the target is writable from here on
    if reverse:
        back = policies.create(
            settings,
            _reverse_name(policy),
            f"{cluster}:{policy.dst_db}",
            f"{policy.src_cluster}:{policy.src_db}",
            include=[policy.target_of(t) for t in baseline],
            renames={policy.target_of(t): t for t in baseline if policy.target_of(t) != t},
            baseline=baseline,
        )
        # It starts paused: nothing may flow back before the promoted side is in use.
        policies.set_state(settings, policy.src_cluster, back.name, PolicyState.PAUSED)
        result.reverse = back.name
    return result


def _reverse_name(policy: Policy) -> str:
    return f"{policy.name}_back"[:63]


def behind(src: Cluster, dst: Cluster, policy: Policy) -> dict[str, int]:
    """Versions each followed table lacks on the target, read now from both catalogs."""
    theirs, ours = tables_of(src, policy.src_db), tables_of(dst, policy.dst_db)
    out: dict[str, int] = {}
    for table, view in theirs.items():
        if not policy.follows(table):
            continue
        mine = ours.get(policy.target_of(table))
        n = 0
        for p, v in view.parts.items():
            have = mine.parts.get(p) if mine else None
            same_history = have is not None and have.epoch == v.epoch
            n += max(v.version - (have.version if have and same_history else 1), 0)
        out[table] = n
    return out


def _running(dst: Cluster, policy: Policy) -> list[int]:
    targets = [f"{policy.dst_db}.{policy.target_of(t.src_table)}" for t in policy.tables]
    j = s.jobs.c
    with dst.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(j.id).where(
                    j.src_cluster == policy.src_cluster,
                    j.dst_table.in_(targets),
                    j.state.in_([str(x) for x in ACTIVE_STATES]),
                )
            ).scalars()
        )


def _wait_for_no_jobs(dst: Cluster, policy: Policy, timeout: float, poll: float) -> None:
    deadline = time.monotonic() + timeout
    while _running(dst, policy):
        if time.monotonic() > deadline:
            raise InvalidRequest(
                f"sync policy {policy.name!r}: its jobs did not end within {timeout:.0f} s "
                "(is the coordinator running?); nothing was promoted"
            )
        time.sleep(poll)


def _wait_until_caught_up(
    settings: Settings, src: Cluster, dst: Cluster, policy: Policy, timeout: float, poll: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not any(behind(src, dst, policy).values()) and not _running(dst, policy):
            # Pause, then look again: a beat between the look and the pause may have started
            # a job for a version that came meanwhile.
            policies.set_state(settings, dst.name, policy.name, PolicyState.PAUSED)
            if not any(behind(src, dst, policy).values()) and not _running(dst, policy):
                return
            policies.set_state(settings, dst.name, policy.name, PolicyState.ACTIVE)
        if time.monotonic() > deadline:
            lag = {t: n for t, n in behind(src, dst, policy).items() if n}
            raise InvalidRequest(
                f"sync policy {policy.name!r} is still behind after {timeout:.0f} s ({lag}): "
                "stop writes on the source first, or promote with --now; nothing was promoted"
            )
        time.sleep(poll)
