"""What the multi-host suite runs *on a host* (inside its network and mount namespaces), where
the storage roots are: ``python -m tests.multihost.hostcmd COMMAND ...``; prints JSON.

  lineitem CLUSTER BUCKETS REPLICAS TABLE...     create TPC-H lineitem tables (frontends.tpch)
  load CLUSTER TABLE SF LABEL                    load lineitem at scale factor SF
  checksum CLUSTER TABLE [PARTITION...]          [[partition, version, epoch, rows, checksum]]
  staged                                         staged files under every root below a dir
  files CLUSTER                                  every data file of every root: [[path, size]]
  probe PATH                                     what opening PATH raises (or "opened")
  compact CLUSTER TABLE [PARTITION...]           compact: [rowsets merged, rowsets written]
  dirs CLUSTER                                   rowset directories of every root: [path]
  beat-gc                                        send the beat's maintenance.gc, as beat does

Settings come from the environment (REPLICATOR_*), as for every process of the host.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> object:
    cmd, *args = argv
    if cmd == "probe":
        try:
            with open(args[0], "rb"):
                return "opened"
        except OSError as exc:
            return type(exc).__name__
    if cmd == "staged":
        return [
            [str(p), p.stat().st_size]
            for p in sorted(Path(args[0]).rglob("staging/*/*"))
            if p.is_file()
        ]
    if cmd == "beat-gc":
        from app.queues import BEAT_QUEUE
        from workers.celery_app import celery

        return celery.send_task("maintenance.gc", queue=BEAT_QUEUE, routing_key=BEAT_QUEUE).id
    from frontends.connect import replicator

    handle = replicator().cluster(args[0])
    if cmd == "lineitem":
        from frontends.tpch import create_lineitem

        for table in args[3:]:
            create_lineitem(handle, table, buckets=int(args[1]), replication_num=int(args[2]))
        return "ok"
    if cmd == "load":
        from frontends.tpch import lineitem_files, load_source

        res = handle.load(args[1], load_source(lineitem_files(float(args[2]))), label=args[3])
        return {"rows": res.rows, "bytes": res.bytes, "versions": res.versions}
    if cmd == "checksum":
        return [
            [c.partition, c.version, c.epoch, c.rows, c.checksum]
            for c in handle.checksum(args[1], args[2:] or None)
        ]
    if cmd == "files":
        return [
            [str(p), p.stat().st_size]
            for b in handle.backends()
            for p in sorted(Path(b.storage_root, "data").rglob("*"))
            if p.is_file()
        ]
    if cmd == "compact":
        report = handle.compact(args[1], partitions=args[2:] or None)
        return [report.rowsets_merged, report.rowsets_written]
    if cmd == "dirs":
        return sorted(
            str(p) for b in handle.backends() for p in Path(b.storage_root).glob("data/*/*")
        )
    raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
