"""obstore against boto3, the same requests to the same SeaweedFS, in one run.

    .venv/bin/python -m bench.s3clients [--small N] [--big N] [--big-mib M]

Why: app/storage/objects.py needed one S3 client library; this is the measurement it was chosen
by (README, "Object storage"). Each client puts, gets and copies N small objects (4 KiB, the size
of a small tablet's rowset file) and a few big ones, one request at a time from one thread, as a
worker does; wall time and this process's CPU time are printed per step, with the ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from frontends.servers import SeaweedServer


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _boto(server: SeaweedServer, bucket: str) -> dict[str, Callable[[str, bytes | None], Any]]:
    import boto3

    c = boto3.client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name="us-east-1",
    )  # fmt: skip

    def put(key: str, data: bytes | None) -> None:
        c.upload_fileobj(io.BytesIO(data or b""), bucket, key)  # multipart above 8 MiB

    return {
        "put": put,
        "get": lambda key, _d: c.get_object(Bucket=bucket, Key=key)["Body"].read(),
        "copy": lambda key, _d: c.copy_object(
            Bucket=bucket, Key=key + ".copy", CopySource={"Bucket": bucket, "Key": key}
        ),
    }


def _obstore(server: SeaweedServer, bucket: str) -> dict[str, Callable[[str, bytes | None], Any]]:
    import obstore
    from obstore.store import S3Store

    s = S3Store(
        bucket, endpoint=server.endpoint, access_key_id=server.access_key,
        secret_access_key=server.secret_key, region="us-east-1",
        client_options={"allow_http": True},
    )  # fmt: skip
    return {
        "put": lambda key, data: obstore.put(s, key, data or b""),  # multipart above 5 MiB
        "get": lambda key, _d: bytes(obstore.get(s, key).bytes()),
        "copy": lambda key, _d: obstore.copy(s, key, key + ".copy"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2000, help="small objects (4 KiB) per client")
    ap.add_argument("--big", type=int, default=4, help="big objects per client")
    ap.add_argument("--big-mib", type=int, default=64, help="size of a big object, MiB")
    args = ap.parse_args(argv)
    small, big = os.urandom(4096), os.urandom(args.big_mib * 2**20)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        server = SeaweedServer(Path(tmp)).start()
        try:
            for name, make in (("boto3", _boto), ("obstore", _obstore)):
                server.make_bucket(f"bench-{name}")
                ops = make(server, f"bench-{name}")
                steps: dict[str, tuple[float, float]] = {}
                for op in ("put", "get", "copy"):
                    call = ops[op]
                    keys = [f"small/{i}" for i in range(args.small)]
                    steps[f"{op} {args.small} x 4 KiB"] = _timed(
                        lambda call=call, keys=keys: [call(k, small) for k in keys]
                    )
                    keys = [f"big/{i}" for i in range(args.big)]
                    steps[f"{op} {args.big} x {args.big_mib} MiB"] = _timed(
                        lambda call=call, keys=keys: [call(k, big) for k in keys]
                    )
                results[name] = steps
        finally:
            server.stop()
    print(f"{'step':<24} {'boto3 wall/cpu s':>18} {'obstore wall/cpu s':>20} {'cpu ratio':>10}")
    for step in results["boto3"]:
        (bw, bc), (ow, oc) = results["boto3"][step], results["obstore"][step]
        ratio = f"{bc / oc:.1f}x" if oc > 0 else "-"
        print(f"{step:<24} {bw:>8.2f} / {bc:>6.2f} {ow:>10.2f} / {oc:>6.2f} {ratio:>10}")
    print(json.dumps({"bench": "s3clients", **{k: {s: list(v) for s, v in r.items()}
                                               for k, r in results.items()}}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
