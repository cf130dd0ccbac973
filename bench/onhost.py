"""What the cross-host bench (bench/transfer.py) runs *on a host*, inside its network and mount
namespaces where that host's storage roots are: ``python -m bench.onhost COMMAND ...``; prints
one JSON value on its last line. Settings come from the environment (REPLICATOR_*).

  init CLUSTER BACKEND=ROOT=URL...          cluster init, then each backend with its transfer URL
  lineitem CLUSTER TABLE BUCKETS REPLICAS   create a TPC-H lineitem table
  load CLUSTER TABLE LABEL PARQUET...       one load (one transaction) of the Parquet files
  checksum CLUSTER TABLE                    [[partition, version, epoch, rows, checksum]]
  digests CLUSTER TABLE                     sorted [[size, xxh3]] of every file of the table
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> object:
    from frontends.connect import replicator

    cmd, cluster, *args = argv
    handle = replicator().cluster(cluster)
    if cmd == "init":
        handle.init()
        for spec in args:
            name, root, url = spec.split("=", 2)
            handle.add_backend(name, root, url)
        return "ok"
    if cmd == "lineitem":
        from frontends.tpch import create_lineitem

        create_lineitem(handle, args[0], buckets=int(args[1]), replication_num=int(args[2]))
        return "ok"
    if cmd == "load":
        from frontends.tpch import load_source

        t0 = time.perf_counter()
        res = handle.load(args[0], load_source([Path(p) for p in args[2:]]), label=args[1])
        return {"rows": res.rows, "bytes": res.bytes, "seconds": time.perf_counter() - t0}
    if cmd == "checksum":
        return [
            [c.partition, c.version, c.epoch, c.rows, c.checksum] for c in handle.checksum(args[0])
        ]
    if cmd == "digests":
        from bench.run import table_files

        return sorted(_digest(p) for p in table_files(handle, args[0]))
    raise SystemExit(f"unknown command {cmd!r}")


def _digest(path: Path) -> tuple[int, str]:
    """(size, xxh3-64) of one file. (bench.common.file_digests walks directories: given a
    file it finds nothing.)"""
    import xxhash

    h = xxhash.xxh3_64()
    size = 0
    buf = memoryview(bytearray(8 * 1024 * 1024))
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
            size += n
    return size, h.hexdigest()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
