"""A hand-made transfer client, run on a host to send what an attacker could: one JSON request a
line on stdin, one JSON answer a line on stdout.

request: {"host", "port", "path" (sent as is), "token" (or null), "range" (or null),
          "mode": "mtls" | "nocert" | "plain"}
answer:  {"status", "length", "head"} or {"error"}

``python -m tests.multihost.probe CA CLIENT_CERT CLIENT_KEY``
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys


def main(ca: str, cert: str, key: str) -> None:
    mtls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    mtls.load_cert_chain(cert, key)
    nocert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(ask(req, mtls, nocert)), flush=True)


def ask(req: dict[str, object], mtls: ssl.SSLContext, nocert: ssl.SSLContext) -> dict[str, object]:
    host, port = str(req["host"]), int(req["port"])  # type: ignore[call-overload]
    conn: http.client.HTTPConnection
    if req["mode"] == "plain":
        conn = http.client.HTTPConnection(host, port, timeout=10)
    else:
        ctx = mtls if req["mode"] == "mtls" else nocert
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=ctx)
    headers = {}
    if req.get("token"):
        headers["Authorization"] = f"Bearer {req['token']}"
    if req.get("range"):
        headers["Range"] = str(req["range"])
    try:
        conn.request("GET", str(req["path"]), headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return {
            "status": resp.status,
            "length": len(body),
            "head": body[:120].decode("utf-8", "replace"),
        }
    except (OSError, http.client.HTTPException) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
