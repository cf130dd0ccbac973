"""The wire form of a batch download: many small files in one request.

Request: ``POST /v1/{backend}/files`` with a JSON body ``{"tokens": [token, ...], "files":
[[i, tablet, rowset, file], ...]}``: each file names, by its index ``i``, the token that grants
it (tokens are minted per task, each naming exactly its task's files, and a batch spans many
tasks), at most ``MAX_FILES`` files in a body of at most ``MAX_BODY`` bytes. Response: for each
file named, in order, an 8-byte big-endian signed size (-1: not on this backend) and then that
many bytes.

Why: an apply of 10,000 files of 3 KiB spent most of its time in one HTTPS request per file
(round trip, headers, token check, TLS records: about 5 ms each, cProfile of bench small). The
file path of ``GET`` stays for large files, which need ``Range`` to resume after a break.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

from app.errors import InvalidRequest
from app.transfer import names

MAX_FILES = 1024
# Under aiohttp's own limit on a request body (1 MiB); a one-file token is about 300 bytes.
MAX_BODY = 1000 * 1000
FRAME = struct.Struct(">q")

FileRef = tuple[int, int, str, str]  # (token index, tablet id, rowset id, file name)


def request_body(tokens: Sequence[str], refs: Sequence[FileRef]) -> bytes:
    body = {"tokens": list(tokens), "files": [list(r) for r in refs]}
    return json.dumps(body, separators=(",", ":")).encode()


def parse_request(body: bytes) -> tuple[list[str], list[FileRef]]:
    """The tokens and validated file references of a request body; InvalidRequest names what
    is wrong. (The tokens themselves are verified by the server.)"""
    if len(body) > MAX_BODY:
        raise InvalidRequest(f"a batch request's body is limited to {MAX_BODY} bytes")
    try:
        parsed = json.loads(body)
        tokens, files = parsed["tokens"], parsed["files"]
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest(
            'a batch request\'s body must be {"tokens": [...], "files": [...]}'
        ) from None
    if not isinstance(tokens, list) or not all(isinstance(x, str) for x in tokens):
        raise InvalidRequest("'tokens' must be a list of strings")
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise InvalidRequest(f"'files' must list 1 to {MAX_FILES} files")
    refs = []
    for ref in files:
        if not isinstance(ref, list) or len(ref) != 4:
            raise InvalidRequest("each file must be [token index, tablet, rowset, file]")
        i = ref[0]
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(tokens):
            raise InvalidRequest(f"token index {names.show(i)} is not in 'tokens'")
        refs.append((i, names.tablet_id(ref[1]), names.rowset_id(ref[2]), names.file_name(ref[3])))
    return tokens, refs
