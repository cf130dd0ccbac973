#!/usr/bin/env python3
"""Network for scripts/fresh-machine-check.sh: the check runs in a network namespace of its own
(only loopback, so Postgres and Redis may take their default ports), and apt and pip reach the
mirrors through an HTTP proxy made of two halves joined by a Unix socket:

    serve SOCKET        on the host: a minimal forward proxy (CONNECT for https, absolute-URI
                        requests for http) listening on SOCKET
    relay PORT SOCKET   inside the namespace: 127.0.0.1:PORT -> SOCKET, byte for byte
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def join(a: socket.socket, b: socket.socket) -> None:
    threading.Thread(target=pump, args=(a, b), daemon=True).start()
    pump(b, a)
    a.close()
    b.close()


def handle(client: socket.socket) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(65536)
        if not chunk:
            client.close()
            return
        head += chunk
    method, target = head.split(b" ", 2)[:2]
    try:
        if method == b"CONNECT":
            host, port = target.decode().rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)), timeout=30)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # GET http://host[:port]/path: origin servers accept the absolute form
            hostport = target.decode().split("://", 1)[1].split("/", 1)[0]
            host, _, port = hostport.partition(":")
            upstream = socket.create_connection((host, int(port or 80)), timeout=30)
            upstream.sendall(head)
    except (OSError, ValueError, IndexError) as exc:
        client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        client.close()
        print(f"[proxy] {method.decode(errors='replace')} {target!r}: {exc}", file=sys.stderr)
        return
    upstream.settimeout(None)
    join(client, upstream)


def serve(listener: socket.socket, handler) -> None:  # type: ignore[no-untyped-def]
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "serve":
        path = args[0]
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(64)
        serve(listener, handle)
    elif mode == "relay":
        port, path = int(args[0]), args[1]
        listener = socket.create_server(("127.0.0.1", port))

        def relay(conn: socket.socket) -> None:
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(path)
            join(conn, upstream)

        serve(listener, relay)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
