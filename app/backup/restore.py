"""Submitting a restore: choose the backup and versions, check the repository has every object
they need, build the source catalog (app/backup/view.py) and submit a replication job from it.

Bad input raises a UserError and leaves nothing behind: the choice and the object check come
first, and a refused submit drops the source catalog it had built.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from app.backup import view
from app.backup.choose import Choice, choose
from app.backup.repo import Repository
from app.catalog import model
from app.catalog import schema as s
from app.catalog.names import check_label
from app.cluster import Cluster
from app.config import Settings
from app.errors import CorruptBackup, InvalidRequest, LabelConflict
from app.replication.state import JobState
from app.replication.submit import submit


def submit_restore(
    settings: Settings,
    repo_url: str,
    table: str,
    to: str,
    *,
    partitions: list[str] | None = None,
    version: int | None = None,
    at: dt.datetime | None = None,
    backup: str | None = None,
    label: str | None = None,
    replication_num: int | None = None,
    timeout_sec: int | None = None,
) -> tuple[str, int, bool, Choice]:
    """Returns (target cluster, job id, created, what is restored)."""
    model.split_table_name(table)
    dst_cluster, _, dst_table = to.partition(":")
    dst_table = dst_table or table
    model.split_table_name(dst_table)
    if label is not None:
        check_label(label)
    if partitions is not None and not partitions:
        raise InvalidRequest("an empty list of partitions restores nothing: name one or more")
    repo = Repository(repo_url)
    choice = choose(repo, table, backup=backup, partitions=partitions, version=version, at=at)
    restore = {
        "repo": repo.url,
        "backup": choice.manifest.name,
        "versions": dict(sorted(choice.versions.items())),
    }
    dst = Cluster(settings, dst_cluster)
    dst.ensure_ready()
    if label is not None and (found := _labelled(dst, label, restore)) is not None:
        return dst_cluster, found, False, choice
    _check_objects(repo, choice)
    src_cluster, src_table = view.build(settings, repo, choice)
    try:
        cluster, job_id, created = submit(
            settings,
            f"{src_cluster}:{src_table}",
            f"{dst_cluster}:{dst_table}",
            label=label,
            create_target=True,
            replication_num=replication_num,
            timeout_sec=timeout_sec,
            restore=restore,
        )
    except BaseException:
        view.drop(settings, src_cluster, src_table)
        raise
    if not created or _finished(dst, job_id):  # up to date already: no job reads the source
        view.drop(settings, src_cluster, src_table)
    return cluster, job_id, created, choice


def _finished(dst: Cluster, job_id: int) -> bool:
    with dst.engine.connect() as conn:
        state = conn.execute(sa.select(s.jobs.c.state).where(s.jobs.c.id == job_id)).scalar_one()
    return JobState(state).final


def _labelled(dst: Cluster, label: str, restore: dict[str, Any]) -> int | None:
    """The job ``label`` names, if it restores the same; LabelConflict if it does not."""
    with dst.engine.connect() as conn:
        row = conn.execute(
            sa.select(s.jobs.c.id, s.jobs.c.options).where(s.jobs.c.label == label)
        ).first()
    if row is None:
        return None
    if row.options.get("restore") != restore:
        raise LabelConflict(
            f"label {label!r} already names job {dst.name}:{row.id} with other arguments; "
            "use a new label"
        )
    return int(row.id)


def _check_objects(repo: Repository, choice: Choice) -> None:
    """CorruptBackup if the repository lacks an object the restore needs: said now, in one
    line, rather than by a job that aborts."""
    needed = {
        f.checksum + str(f.size): f
        for p in choice.manifest.partitions
        if p.name in choice.versions
        for t in p.tablets
        for r in t.rowsets
        if r.end <= choice.versions[p.name]
        for f in r.files
    }
    missing = repo.missing(list(needed.values()))
    if missing:
        raise CorruptBackup(
            f"backup {choice.manifest.name} lacks {len(missing)} of the {len(needed)} objects "
            f"this restore needs (first: objects/{missing[0].checksum}-{missing[0].size}); "
            "`replicator backup verify` names them all"
        )
