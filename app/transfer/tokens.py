"""Per-job scoped, expiring transfer tokens.

The snapshot task (source side, which holds the source cluster's transfer secrets) mints one
token per task; it names exactly the files the target may download and expires with the job's
transaction. The target only carries it; it never needs a secret.

Wire form: ``v1.<payload>.<signature>``, both parts base64url without padding.

- ``payload`` = base64url(key id ``\\x00`` zlib(compact JSON, sorted keys)). The key id rides in
  the payload so secrets can rotate (verify takes ``{key id: secret}``) and the signature covers
  it. Files are grouped ``{tablet: {rowset: [names]}}`` and compressed, so a batch of a few
  hundred files fits an HTTP header (see ``server.MAX_TOKEN_BYTES``).
- ``signature`` = HMAC-SHA256(secret, ``b"v1." + payload``), compared in constant time, and
  checked *before* the payload is decompressed or parsed.

Refusals raise :class:`TokenRejected` whose ``reason`` is one of :data:`REASONS`; no message
ever contains the token or a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidRequest, TokenRejected
from app.transfer import names

VERSION = "v1"
MAX_TOKEN_CHARS = 1024 * 1024
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024  # decompressed: a bound against zlib bombs
REASONS = ("malformed", "unknown_key", "bad_signature", "expired", "wrong_cluster")

_B64 = r"[A-Za-z0-9_-]+"
_TOKEN = re.compile(rf"v1\.{_B64}\.{_B64}", re.ASCII)
# In logs: also a token cut short (no signature, or a truncated one); not "v1.2.3".
_TOKEN_IN_TEXT = re.compile(r"v1\.[A-Za-z0-9_-]{16,}(?:\.[A-Za-z0-9_-]*)?", re.ASCII)

FileRef = tuple[int, str, str]  # (tablet id, rowset id, file name)


@dataclass(frozen=True)
class Grant:
    """What a token allows: these files of this job, from this source to this target, until
    ``expires_at`` (unix seconds). Every field is validated on construction."""

    source_cluster: str
    target_cluster: str
    job_id: int
    hold_owner: str
    expires_at: int
    files: tuple[FileRef, ...]
    _index: frozenset[FileRef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names.cluster_name(self.source_cluster)
        names.cluster_name(self.target_cluster)
        object.__setattr__(self, "job_id", names.job_id(self.job_id))
        names.hold_owner(self.hold_owner)
        if isinstance(self.expires_at, bool) or not isinstance(self.expires_at, int):
            raise InvalidRequest(f"expiry {names.show(self.expires_at)} must be unix seconds")
        files = tuple(
            (names.tablet_id(t), names.rowset_id(r), names.file_name(n)) for t, r, n in self.files
        )
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "_index", frozenset(files))

    def allows(self, tablet: int, rowset: str, name: str) -> bool:
        return (tablet, rowset, name) in self._index


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _group(files: Iterable[FileRef]) -> dict[str, dict[str, list[str]]]:
    grouped: dict[str, dict[str, list[str]]] = {}
    for tablet, rowset, name in files:
        grouped.setdefault(str(tablet), {}).setdefault(rowset, []).append(name)
    return grouped


def _encode(grant: Grant) -> bytes:
    body = {
        "src": grant.source_cluster,
        "dst": grant.target_cluster,
        "job": grant.job_id,
        "owner": grant.hold_owner,
        "exp": grant.expires_at,
        "files": _group(sorted(set(grant.files))),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _sign(secret: bytes, payload: str) -> bytes:
    return hmac.new(secret, f"{VERSION}.{payload}".encode("ascii"), hashlib.sha256).digest()


def mint(secret: bytes, grant: Grant, *, key_id: str = "k1") -> str:
    """A token for ``grant``, signed with ``secret`` under ``key_id``."""
    if len(secret) < 16:
        raise InvalidRequest("a transfer secret must be at least 16 bytes")
    kid = names.key_id(key_id).encode("ascii")
    payload = _b64(kid + b"\x00" + zlib.compress(_encode(grant), 9))
    return f"{VERSION}.{payload}.{_b64(_sign(secret, payload))}"


def _malformed(what: str) -> TokenRejected:
    return TokenRejected("malformed", f"transfer token refused: malformed ({what})")


def _split(token: object) -> tuple[str, bytes, bytes, bytes]:
    """(payload text, key id, compressed body, signature); nothing here is trusted yet."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        raise _malformed("not v1.<payload>.<signature>")
    _, payload, signature = token.split(".")
    try:
        raw, sig = _unb64(payload), _unb64(signature)
    except (binascii.Error, ValueError):
        raise _malformed("bad base64") from None
    kid, sep, body = raw.partition(b"\x00")
    if not sep:
        raise _malformed("no key id")
    return payload, kid, body, sig


def _decode(body: bytes) -> dict[str, Any]:
    try:
        unzip = zlib.decompressobj()
        data = unzip.decompress(body, MAX_PAYLOAD_BYTES)
        if unzip.unconsumed_tail or not unzip.eof:
            raise _malformed("payload too large or truncated")
        parsed = json.loads(data)
    except (zlib.error, ValueError):
        raise _malformed("payload is not compressed JSON") from None
    if not isinstance(parsed, dict):
        raise _malformed("payload is not an object")
    return parsed


def _grant(body: Mapping[str, Any]) -> Grant:
    try:
        files = tuple(
            (names.tablet_id(tablet), rowset, name)
            for tablet, rowsets in body["files"].items()
            for rowset, file_names in rowsets.items()
            for name in file_names
        )
        return Grant(
            source_cluster=body["src"],
            target_cluster=body["dst"],
            job_id=body["job"],
            hold_owner=body["owner"],
            expires_at=body["exp"],
            files=files,
        )
    except (KeyError, TypeError, AttributeError, InvalidRequest) as exc:
        # A signed payload we cannot read: a bug or a version skew on the minting side.
        raise _malformed(f"unreadable grant: {type(exc).__name__}") from None


def verify(
    secrets: Mapping[str, bytes],
    token: object,
    *,
    now: float,
    source_cluster: str | None = None,
    target_cluster: str | None = None,
) -> Grant:
    """The grant ``token`` carries, if a secret in ``secrets`` (by key id) signed it, it has
    not expired at ``now`` (unix seconds) and it names the expected clusters (when given)."""
    payload, kid, body, signature = _split(token)
    secret = secrets.get(kid.decode("ascii", "replace"))
    if secret is None:
        raise TokenRejected("unknown_key", "transfer token refused: unknown key id")
    if not hmac.compare_digest(_sign(secret, payload), signature):
        raise TokenRejected("bad_signature", "transfer token refused: bad signature")
    grant = _grant(_decode(body))
    if now >= grant.expires_at:
        raise TokenRejected(
            "expired", f"transfer token refused: job {grant.job_id}'s token has expired"
        )
    for want, got, side in (
        (source_cluster, grant.source_cluster, "source"),
        (target_cluster, grant.target_cluster, "target"),
    ):
        if want is not None and want != got:
            raise TokenRejected(
                "wrong_cluster",
                f"transfer token refused: it is for {side} cluster {got!r}, not {want!r}",
            )
    return grant


def redact(text: str) -> str:
    """``text`` with everything shaped like a token replaced by ``v1.<redacted>``."""
    return _TOKEN_IN_TEXT.sub("v1.<redacted>", text)
