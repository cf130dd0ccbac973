"""Snapshot tasks, run on a source backend's queue: choose the rowsets each target tablet
needs, hold them against compaction and GC, and record a manifest.

Incremental when the source still holds a chain of rowsets covering exactly the versions the
target lacks; full otherwise. The holds outlive the job's transaction (which aborts at its
timeout and then releases them), so a dead job never pins files for ever.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from app.backup.repo import VIEW_PREFIX, Repository
from app.catalog import model
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.cluster import Cluster
from app.errors import SourceDataGone, StorageUnavailable
from app.replication import taskrows
from app.replication.finish import hold_owner
from app.replication.runner import BatchOutcome, TaskRunner
from app.replication.state import JobKind, JobState
from app.replication.taskrows import Claimed
from app.storage import holds
from app.storage.checksum import FileMeta
from app.storage.client import rowset_dir, storage_for
from app.storage.objects import is_object_root
from app.storage.rowsets import RowsetState
from app.transfer import names, tokens


def snapshot_batch(runner: TaskRunner, job: Any, claims: list[Claimed], out: BatchOutcome) -> None:
    """One read of the source catalog and one hold for the whole batch; each task's own
    failure is recorded on its row, a failure of the batch (Postgres down) on every row."""
    with runner.dst.engine.connect() as conn:
        plans = {
            p.partition_name: p
            for p in conn.execute(
                sa.select(s.job_partitions).where(s.job_partitions.c.job_id == runner.job_id)
            )
        }
        deadline = conn.execute(
            sa.select(s.transactions.c.deadline).where(s.transactions.c.id == job.txn_id)
        ).scalar_one()
    src = Cluster(runner.settings, job.src_cluster)
    owner = hold_owner(runner.dst.name, runner.job_id)
    failed: list[tuple[Claimed, Exception]] = []
    try:
        with src.engine.begin() as conn:
            backends = model.list_backends(conn)
            done = _manifests(conn, plans, claims, backends, failed)
            in_store = {b.id for b in backends.values() if not_served(b.storage_root)}
            # Rounded up: a token never expires before its job's transaction does.
            _grant(runner, job, done, owner, math.ceil(deadline.timestamp()), in_store)
            # A hold must outlive the job's transaction, which aborts at its timeout and then
            # releases it; the lease only matters if nothing is left to release it.
            timeout = job.options.get("timeout_sec") or (
                runner.settings.replication_transaction_timeout_sec
            )
            held = [r["id"] for d in done for r in d["manifest"]["rowsets"]]
            holds.place(conn, held, owner, max(runner.settings.hold_lease_sec, int(timeout)))
        with runner.dst.engine.begin() as conn:
            out.done += taskrows.complete(
                conn,
                done,
                manifest=s.job_tasks.c.manifest.type,
                incremental=sa.Boolean(),
                bytes_total=sa.BigInteger(),
                transfer_token=sa.Text(),
            )
    except Exception as exc:  # the whole batch failed (e.g. Postgres down)
        failed_ids = {c.id for c, _ in failed}
        runner.fail_all([c for c in claims if c.id not in failed_ids], exc, out)
    finally:
        # The coordinator releases holds when the job ends; holds placed after that release
        # would pin files until they expire, so a late snapshot drops them itself.
        if JobState(runner.job().state).final:
            with src.engine.begin() as conn:
                holds.release(conn, owner)
    for claim, error in failed:
        runner.fail_all([claim], error, out)


def not_served(root: str) -> bool:
    """A root that no transfer server serves: object storage, and a restore's repository
    (app/backup/view.py); apply tasks read those from the store or the repository itself."""
    return is_object_root(root) or root.startswith(VIEW_PREFIX)


def _grant(
    runner: TaskRunner,
    job: Any,
    done: list[dict[str, Any]],
    owner: str,
    expires_at: int,
    in_store: set[int],
) -> None:
    """A download token per task, naming exactly its files and expiring with the job's
    transaction; signed with the source cluster's secret, which only the source side holds.
    (Revoked sooner when the job ends: the transfer server serves only while its holds live.)
    None for a task whose replicas are all in object storage (``in_store``): they are read
    from the store, no transfer server is asked, and such a cluster needs no secret."""
    settings = runner.settings
    secret: bytes | None = None
    for d in done:
        m = d["manifest"]
        replicas = [*m["src_backend_ids"], *m["fallback_backend_ids"]]
        if (
            job.kind == JobKind.BACKUP  # uploaded by the backends that hold the files
            or settings.transfer_mode == "shared"
            or all(int(b) in in_store for b in replicas)
        ):
            d["transfer_token"] = None
            continue
        secret = secret or settings.transfer_secret(job.src_cluster)
        files = tuple(
            (int(m["src_tablet_id"]), r["id"], f["name"]) for r in m["rowsets"] for f in r["files"]
        )
        grant = tokens.Grant(
            job.src_cluster, runner.dst.name, runner.job_id, owner, expires_at, files
        )
        d["transfer_token"] = tokens.mint(secret, grant)


def _manifests(
    conn: sa.Connection,
    plans: dict[str, Any],
    claims: list[Claimed],
    backends: dict[int, model.Backend],
    failed: list[tuple[Claimed, Exception]],
) -> list[dict[str, Any]]:
    """Each claimed task's manifest, read from the source catalog under FOR SHARE (which keeps
    compaction and GC off these rows until the holds are placed)."""
    parts = {
        p.id: p
        for p in conn.execute(
            sa.select(s.partitions).where(
                any_of(s.partitions.c.id, {p.src_partition_id for p in plans.values()})
            )
        )
    }
    by_tablet: dict[int, list[model.RowsetInfo]] = {}
    for r in conn.execute(
        sa.select(s.rowsets)
        .where(
            any_of(s.rowsets.c.tablet_id, {c.row.src_tablet_id for c in claims}),
            s.rowsets.c.state == RowsetState.VISIBLE,
        )
        .order_by(s.rowsets.c.tablet_id, s.rowsets.c.start_version)
        .with_for_update(read=True)
    ):
        by_tablet.setdefault(r.tablet_id, []).append(model.rowset_from_row(r._mapping))
    done = []
    for claim in claims:
        try:
            plan = plans[claim.row.partition_name]
            manifest = manifest_for(claim.row, plan, parts, by_tablet, backends)
        except Exception as exc:  # recorded on that task's row
            failed.append((claim, exc))
            continue
        done.append(
            {
                "task_id": claim.id,
                "attempt": claim.attempt,
                "manifest": manifest,
                "incremental": manifest["incremental"],
                "bytes_total": manifest["bytes"],
            }
        )
    return done


def manifest_for(
    task: Any,
    plan: Any,
    parts: dict[int, Any],
    by_tablet: dict[int, list[model.RowsetInfo]],
    backends: dict[int, model.Backend],
) -> dict[str, Any]:
    """What one target tablet needs: the chosen rowsets, their files and where to read them."""
    part = parts.get(plan.src_partition_id)
    if (
        part is None
        or part.version_epoch != plan.src_epoch
        or part.visible_version < plan.src_version
    ):
        raise SourceDataGone(
            f"source partition {task.partition_name!r} was dropped or overwritten "
            "during the job; submit the replication again"
        )
    chosen, incremental = choose_rowsets(
        by_tablet.get(task.src_tablet_id, []),
        plan.dst_version,
        plan.src_version,
        plan.mode == "INCREMENTAL",
    )
    for r in chosen:  # what leaves this cluster is checked here, and again where it lands
        names.rowset_id(r.id)
        for f in r.files:
            names.file_name(f["name"])
    good, fallback = order_sources(chosen, [backends[int(b)] for b in task.src_backend_ids])
    return {
        "incremental": incremental,
        "src_version": plan.src_version,
        "bytes": sum(int(f["size"]) for r in chosen for f in r.files),
        "src_backend_ids": [b.id for b in good],
        "fallback_backend_ids": [b.id for b in fallback],
        "src_tablet_id": task.src_tablet_id,
        "rowsets": [
            {
                "id": r.id,
                "start": r.start_version,
                "end": r.end_version,
                "num_rows": r.num_rows,
                "data_size": r.data_size,
                "files": list(r.files),
            }
            for r in chosen
        ],
    }


def choose_rowsets(
    rowsets: list[model.RowsetInfo], dst_version: int, src_version: int, want_incremental: bool
) -> tuple[list[model.RowsetInfo], bool]:
    """The rowsets that bring a tablet from ``dst_version`` to ``src_version``.

    Incremental when the visible rowsets still hold a chain covering exactly
    ``(dst_version, src_version]``; otherwise every visible rowset up to ``src_version`` (full).
    """
    upto = [r for r in rowsets if (r.end_version or 0) <= src_version]
    straddling = [
        r for r in rowsets if (r.start_version or 0) <= src_version < (r.end_version or 0)
    ]
    if straddling:
        raise SourceDataGone(
            f"source compaction merged versions across {src_version} during the job "
            f"(rowset {straddling[0].id} covers [{straddling[0].start_version}, "
            f"{straddling[0].end_version}]); submit the replication again"
        )
    if want_incremental:
        chain = [r for r in upto if (r.start_version or 0) > dst_version]
        expected = dst_version + 1
        ok = True
        for r in chain:
            if r.start_version != expected:
                ok = False
                break
            expected = (r.end_version or 0) + 1
        crosses = any((r.start_version or 0) <= dst_version < (r.end_version or 0) for r in upto)
        if ok and not crosses and expected == src_version + 1:
            return chain, True
    return upto, False


def order_sources(
    rowsets: list[model.RowsetInfo], candidates: list[model.Backend]
) -> tuple[list[model.Backend], list[model.Backend]]:
    """(replicas that hold every file, by size; the others as a last resort). Raises if no
    replica holds them all."""
    good: list[model.Backend] = []
    bad: list[model.Backend] = []
    unreachable: list[model.Backend] = []
    for backend in candidates:
        try:
            complete = _holds_all(backend.storage_root, rowsets)
        except StorageUnavailable:
            unreachable.append(backend)
            continue
        (good if complete else bad).append(backend)
    if not good and unreachable:
        # A storage root that cannot be reached may come back: worth another attempt.
        raise StorageUnavailable(
            f"source replicas {', '.join(b.name for b in unreachable)} cannot be reached and "
            f"{', '.join(b.name for b in bad) or 'no other'} lacks files of the snapshot"
        )
    if not good:
        raise SourceDataGone(
            "no source replica holds every file of the snapshot "
            f"(tried {', '.join(b.name for b in candidates)})"
        )
    return good, bad + unreachable


def _holds_all(root: str, rowsets: list[model.RowsetInfo]) -> bool:
    """Whether the replica at ``root`` has every file of ``rowsets`` at its size; a restore's
    repository has them as objects named by content. StorageUnavailable if it cannot say."""
    if root.startswith(VIEW_PREFIX):
        repo = Repository(root.removeprefix(VIEW_PREFIX))
        repo.check()
        return not repo.missing([FileMeta.from_json(f) for r in rowsets for f in r.files])
    storage = storage_for(root)
    storage.check()
    wanted = [
        (f"{rowset_dir(r.tablet_id, r.id)}/{f['name']}", int(f["size"]))
        for r in rowsets
        for f in r.files
    ]
    if not is_object_root(root):  # a stat each: nothing to wait for
        return all(storage.size(path) == size for path, size in wanted)
    return all(_each(lambda w: storage.size(w[0]) == w[1], wanted))


def _each(ask: Callable[[Any], bool], items: list[Any]) -> list[bool]:
    """``ask`` of every item, 16 requests at a time: a store answers a HEAD in milliseconds,
    and one after another they made most of a restore's snapshot phase (80 files: 0.4 s)."""
    if len(items) <= 1:
        return [ask(i) for i in items]
    with ThreadPoolExecutor(min(16, len(items)), thread_name_prefix="head") as pool:
        return list(pool.map(ask, items))
