"""Small files fetched ahead, many to a request: the shortcut of an apply batch.

An apply message carries many tablets; when their files are small, one HTTPS request per file
cost more than the bytes (10,000 files of 3 KiB: about 5 ms each of round trip, headers, token
check and TLS records, cProfile of ``bench small``). Before its tablets are applied one by one,
a batch asks each source replica for all of its small files at once (``app.transfer.batch``) and
writes every one that arrives verified straight to its installed name: its bytes were checked
in memory, so the staging directory and the rename that protect a file while it streams in
would only cost a create, a rename and a re-read per file (10,000 files of 3 KiB: the most of an
apply's CPU, cProfile of ``bench small``). A write cut off by a crash leaves a file that fails
``verify_file`` on the next attempt, which fetches it again.

It is only a shortcut and never decides an outcome: the per-file path skips the files it names
as installed and fetches whatever the batch did not bring (absent, damaged, a refused or broken
request) with its own failover, resume and error rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from app import faults
from app.catalog import model
from app.config import Settings
from app.errors import ReplicatorError
from app.replication.finish import target_rowset_id
from app.replication.sources import Download, sources_for
from app.replication.taskrows import Claimed
from app.storage.checksum import FileMeta
from app.storage.client import StorageClient, receiving_path, rowset_dir, storage_for
from app.transfer import batch, names
from app.units import MB

log = logging.getLogger(__name__)

SMALL_FILE = 1 * MB  # larger files keep their own request, which can resume with Range
REQUEST_BYTES = 8 * MB  # a response is held in memory whole


@dataclass(frozen=True)
class _Item:
    target: StorageClient
    token: str  # its task's
    tablet: int  # the source's
    rowset: str  # the source's
    meta: FileMeta
    final: str


def prefetch(
    settings: Settings,
    job: Any,
    job_id: int,
    claims: list[Claimed],
    backends: dict[int, model.Backend],
    throttle: Callable[[int], object],
    received: Callable[[int], object],
) -> set[tuple[str, str]]:
    """Install the claims' small files that are neither installed nor staged yet; returns
    what it installed as (storage root, path): verified, the per-file path need not read them
    again. ``throttle(n)`` takes a request's bytes from the link's budget before
    it is sent; ``received(n)`` is told what arrived (it renews the leases, and may raise
    LeaseLost)."""
    if settings.transfer_mode == "shared":
        return set()  # a local read per file costs no round trip
    # By the replica each task tries first: the only one asked here. (The replicas of one
    # target tablet rotate their lists; grouping by the whole list made two requests.)
    groups: dict[int, list[_Item]] = {}
    for claim in claims:
        task = claim.row
        if task.transfer_token and task.src_backend_ids:
            key = int(task.src_backend_ids[0])
            groups.setdefault(key, []).extend(_wanted(job.txn_id, job_id, claim, backends))
    installed: set[tuple[str, str]] = set()
    for backend_id, items in groups.items():
        if not items:  # its tasks' files are all large, or there already
            continue
        try:  # the token is per request in the body: any one here makes the source
            sources = sources_for(settings, job.src_cluster, [backend_id], items[0].token)
        except ReplicatorError:  # e.g. no transfer address: the per-file path says so per task
            continue
        if sources and isinstance(sources[0], Download):
            for chunk in _chunks(items):
                throttle(sum(item.meta.size for item in chunk))
                installed.update(_fetch_chunk(sources[0], chunk, received))
    return installed


def windows(claims: list[Claimed]) -> Iterator[list[Claimed]]:
    """The claims in runs whose small files make about one request (``REQUEST_BYTES``,
    ``batch.MAX_FILES``): fetched just before they are applied, so that progress and flushes
    keep their pace whatever the message's size, and staged files wait briefly."""
    window: list[Claimed] = []
    size = files = 0
    for claim in claims:
        sizes = [f.get("size") for rs in _rowsets(claim) for f in rs.get("files") or ()
                 if isinstance(f, dict)]  # fmt: skip
        small = [n for n in sizes if isinstance(n, int) and n <= SMALL_FILE]
        if window and (size + sum(small) > REQUEST_BYTES or files + len(small) > batch.MAX_FILES):
            yield window
            window, size, files = [], 0, 0
        window.append(claim)
        size += sum(small)
        files += len(small)
    if window:
        yield window


def _rowsets(claim: Claimed) -> list[dict[str, Any]]:
    manifest = claim.row.manifest
    rowsets = manifest.get("rowsets") if isinstance(manifest, dict) else None
    return [r for r in rowsets if isinstance(r, dict)] if isinstance(rowsets, list) else []


def _wanted(
    txn_id: int, job_id: int, claim: Claimed, backends: dict[int, model.Backend]
) -> list[_Item]:
    task, items = claim.row, []
    try:  # names came from the source cluster: a bad one is left to the per-file path to refuse
        target = storage_for(backends[task.dst_backend_id].storage_root)
        tablet = names.tablet_id(task.src_tablet_id)
        for rs in task.manifest["rowsets"]:
            rowset = names.rowset_id(rs["id"])
            dst_rowset = target_rowset_id(job_id, task.dst_tablet_id, rowset)
            for f in rs["files"]:
                meta = FileMeta.from_json(f)
                names.file_name(meta.name)
                final = f"{rowset_dir(task.dst_tablet_id, dst_rowset)}/{meta.name}"
                staged = receiving_path(target, txn_id, dst_rowset, final)
                # A first attempt staged nothing yet; a later one may have left a partial file,
                # which the per-file path continues with Range.
                absent = target.size(final) is None and (
                    claim.attempt <= 1 or staged == final or target.size(staged) is None
                )
                if meta.size <= SMALL_FILE and absent:
                    items.append(_Item(target, task.transfer_token, tablet, rowset, meta, final))
    except (ReplicatorError, OSError, KeyError, TypeError, ValueError):
        return []  # an unreachable root, a bad name: the per-file path fails the task
    return items


def _chunks(items: list[_Item]) -> Iterator[list[_Item]]:
    """Requests within the limits: files, bytes held, and the body (tokens and names)."""
    chunk: list[_Item] = []
    size = body = 0
    for item in items:
        item_body = len(item.token) + len(item.rowset) + len(item.meta.name) + 64
        full = len(chunk) >= batch.MAX_FILES or size + item.meta.size > REQUEST_BYTES
        if chunk and (full or body + item_body > batch.MAX_BODY // 2):
            yield chunk
            chunk, size, body = [], 0, 0
        chunk.append(item)
        size += item.meta.size
        body += item_body
    if chunk:
        yield chunk


def _fetch_chunk(
    source: Download, chunk: list[_Item], received: Callable[[int], object]
) -> list[tuple[str, str]]:
    try:
        files, n = source.downloader.fetch_many(
            source.url,
            source.name,
            [(item.token, item.tablet, item.rowset, item.meta) for item in chunk],
            corrupt=lambda: faults.fire("transfer.corrupt"),
        )
    except ReplicatorError as exc:
        log.info("batch of %d files from %s: %s; one request each", len(chunk), source.name, exc)
        return []
    received(n)
    installed = []
    for item, data in zip(chunk, files, strict=True):
        if data is None:
            continue
        try:
            with item.target.open_write(item.final) as out:
                out.write(data)
            installed.append((item.target.root, item.final))
        except (OSError, ReplicatorError):  # a full disk: the per-file path reports it
            item.target.delete_tree(item.final)
    return installed
