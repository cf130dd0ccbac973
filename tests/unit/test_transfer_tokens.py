"""app.transfer.tokens: scoped, expiring, rotating HMAC tokens that never leak into messages."""

from __future__ import annotations

import base64
import json
import uuid
import zlib

import pytest

from app.errors import InvalidRequest, TokenRejected
from app.transfer import tokens
from app.transfer.tokens import Grant

SECRET = b"s" * 32
OTHER = b"o" * 32
NOW = 1_700_000_000
R1, R2 = uuid.uuid4().hex, uuid.uuid4().hex


def grant(**changes: object) -> Grant:
    fields: dict[str, object] = {
        "source_cluster": "prod",
        "target_cluster": "dr",
        "job_id": 12,
        "hold_owner": "job:dr:12",
        "expires_at": NOW + 600,
        "files": ((7, R1, "0.parquet"), (7, R1, "1.parquet"), (8, R2, "0.parquet")),
    }
    fields.update(changes)
    return Grant(**fields)  # type: ignore[arg-type]


def rejected(
    token: object, reason: str, secrets: dict[str, bytes] | None = None, **kw: object
) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        tokens.verify(secrets or {"k1": SECRET}, token, now=NOW, **kw)  # type: ignore[arg-type]
    assert info.value.reason == reason
    if isinstance(token, str) and len(token) > 8:
        assert token not in str(info.value)
    assert "s" * 16 not in str(info.value)
    return info.value


def test_round_trip_and_allows() -> None:
    token = tokens.mint(SECRET, grant())
    assert token.startswith("v1.") and token.count(".") == 2
    got = tokens.verify({"k1": SECRET}, token, now=NOW, source_cluster="prod", target_cluster="dr")
    assert got == grant()
    assert got.allows(7, R1, "1.parquet") and got.allows(8, R2, "0.parquet")
    assert not got.allows(8, R1, "0.parquet")
    assert not got.allows(7, R1, "2.parquet")
    assert not got.allows(7, R2, "0.parquet")


def test_the_token_does_not_contain_the_secret() -> None:
    token = tokens.mint(SECRET, grant())
    raw = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert SECRET not in raw and SECRET not in token.encode()
    assert b"s" * 8 not in zlib.decompress(raw.partition(b"\x00")[2])


def test_rotation_by_key_id() -> None:
    token = tokens.mint(OTHER, grant(), key_id="2024-b")
    assert tokens.verify({"k1": SECRET, "2024-b": OTHER}, token, now=NOW) == grant()
    rejected(token, "unknown_key", {"k1": SECRET})
    rejected(token, "bad_signature", {"2024-b": SECRET})


def test_forged_and_tampered_tokens() -> None:
    token = tokens.mint(SECRET, grant())
    rejected(tokens.mint(OTHER, grant()), "bad_signature")
    _, payload, sig = token.split(".")
    rejected(f"v1.{payload}.{sig[:-2]}AA", "bad_signature")
    # Re-sign a widened grant without the secret: the payload changes, the signature does not.
    widened = tokens.mint(OTHER, grant(files=((9, R1, "0.parquet"),))).split(".")[1]
    rejected(f"v1.{widened}.{sig}", "bad_signature")


@pytest.mark.parametrize(
    "token",
    ["", "v1", "v1..", "v2.abc.def", "v1.abc", "v1.a.b.c", "v1.abc.de f", "Bearer v1.a.b",
     "v1.!!.??", None, 5, "v1." + "A" * (tokens.MAX_TOKEN_CHARS + 1) + ".A"],
)  # fmt: skip
def test_malformed(token: object) -> None:
    rejected(token, "malformed")


def test_a_signed_but_unreadable_payload_is_malformed() -> None:
    def signed(raw: bytes) -> str:
        payload = tokens._b64(b"k1\x00" + raw)
        return f"v1.{payload}.{tokens._b64(tokens._sign(SECRET, payload))}"

    rejected(signed(b"not zlib"), "malformed")
    rejected(signed(zlib.compress(b"[1,2]")), "malformed")
    rejected(signed(zlib.compress(json.dumps({"src": "prod"}).encode())), "malformed")
    bomb = zlib.compress(b"{" + b" " * (tokens.MAX_PAYLOAD_BYTES + 10) + b"}")
    rejected(signed(bomb), "malformed")
    body = json.loads(tokens._encode(grant()))
    body["files"] = {"7": {R1: ["../../etc/passwd"]}}
    rejected(signed(zlib.compress(json.dumps(body).encode())), "malformed")
    rejected(tokens._b64(b"k1") + "." + "x", "malformed")


def test_expiry() -> None:
    token = tokens.mint(SECRET, grant(expires_at=NOW))
    error = rejected(token, "expired")
    assert "job 12" in str(error)
    assert tokens.verify({"k1": SECRET}, token, now=NOW - 1).job_id == 12


def test_wrong_cluster() -> None:
    token = tokens.mint(SECRET, grant())
    rejected(token, "wrong_cluster", source_cluster="qa")
    rejected(token, "wrong_cluster", target_cluster="prod")


def test_grants_are_validated() -> None:
    for bad in (
        {"source_cluster": "Prod"},
        {"job_id": 0},
        {"hold_owner": "job dr 12"},
        {"expires_at": "soon"},
        {"files": ((7, R1, ".."),)},
        {"files": ((7, R1.upper(), "0.parquet"),)},
        {"files": ((-7, R1, "0.parquet"),)},
    ):
        with pytest.raises(InvalidRequest):
            grant(**bad)
    with pytest.raises(InvalidRequest, match="16 bytes"):
        tokens.mint(b"short", grant())
    with pytest.raises(InvalidRequest, match="key id"):
        tokens.mint(SECRET, grant(), key_id="a.b")


def test_a_batch_of_tablets_stays_small() -> None:
    files = tuple((1000 + i, uuid.uuid4().hex, "0.parquet") for i in range(200))
    token = tokens.mint(SECRET, grant(files=files))
    assert len(token) < 8190  # aiohttp's default header field limit
    assert tokens.verify({"k1": SECRET}, token, now=NOW).files == tuple(sorted(files))


def test_redact() -> None:
    token = tokens.mint(SECRET, grant())
    line = f"GET /v1/be1/7/{R1}/0.parquet Authorization: Bearer {token} failed; v1.2.3 ok"
    cleaned = tokens.redact(line)
    assert token not in cleaned and token.split(".")[1][:20] not in cleaned
    assert "Bearer v1.<redacted> failed; v1.2.3 ok" in cleaned
    assert tokens.redact(f"cut: {token[:60]}") == "cut: v1.<redacted>"
