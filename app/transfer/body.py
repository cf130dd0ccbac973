"""Reading an HTTP response body straight from the socket's TLS object (see ``BodyReader``)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any


class BodyReader:
    """``readinto`` for a response body with a Content-Length, straight from the socket.

    http.client reads a body through five Python layers (HTTPResponse, BufferedReader,
    SocketIO, SSLSocket.recv_into, SSLSocket.read) for every TLS record of 16 KiB; measured
    with cProfile in bench.transfer they cost about as much CPU as the decryption itself.
    Here each record is one call into the TLS object (or ``recv_into`` without TLS), after
    whatever the buffered reader already holds. http.client's own bookkeeping is kept:
    ``length`` counts down, and at the end the response is closed as its ``readinto`` would,
    so that urllib3 reuses the connection. The socket's timeout applies to every read as
    before (the TLS object waits on its socket's timeout). A body of another shape (chunked,
    no length) is read through http.client."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        fp: Any = getattr(raw, "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
        self.fp = fp
        self.read: Callable[[int, memoryview], int] | None = None
        if getattr(raw, "chunked", True) or getattr(raw, "length", None) is None:
            return
        if not hasattr(fp, "readinto1") or sock is None:
            return
        sslobj = getattr(sock, "_sslobj", None)
        if isinstance(sock, ssl.SSLSocket) and sslobj is not None:
            self.read = sslobj.read
        elif not isinstance(sock, ssl.SSLSocket):
            self.read = lambda n, view: sock.recv_into(view, n)

    def readinto(self, view: memoryview) -> int:
        if self.read is None:
            return int(self.raw.readinto(view))
        want = min(len(view), self.raw.length)
        if not want:
            return 0
        n = self.fp.readinto1(view[:want])  # what is buffered already, or one read
        while 0 < n < want:
            try:
                got = self.read(want - n, view[n:want])
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                got = 0  # closed: the caller sees the length left and says so
            if not got:
                break
            n += got
        self.raw.length -= n
        if not self.raw.length:
            self.raw._close_conn()  # as http.client does at the end of a body
        return n
