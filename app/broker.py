"""The broker's Redis as every process reaches it: one set of TLS options for Celery's
``broker_use_ssl`` and for redis-py clients, and a check that says in one line why the broker
cannot be used.

``rediss://`` always verifies the server's certificate (against ``broker_ca_file``, or the
system's CAs) and its host name. Without explicit options kombu would connect to a ``rediss://``
URL with ``CERT_NONE`` (it only warns), and a URL's ``?ssl_cert_reqs=none`` would switch
verification off in redis-py; both are refused here rather than silently accepted. kombu also
lets any ``ssl_*`` parameter of the URL replace ``broker_use_ssl`` as a whole (dropping the CA),
so Celery is given the URL without them (:func:`celery_url`).
"""

from __future__ import annotations

import functools
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from app.config import Settings
from app.errors import BrokerRefused, BrokerUnavailable, InvalidRequest, redact

_REQUIRED = {"required", "cert_required"}


def tls_options(settings: Settings) -> dict[str, Any] | None:
    """redis-py's SSL keyword arguments for the broker (kombu's ``broker_use_ssl`` and Celery's
    ``redis_backend_use_ssl`` take the same), or None for a plain ``redis://`` broker."""
    url = urlsplit(settings.broker_url)
    files = {
        "broker_ca_file": settings.broker_ca_file,
        "broker_cert_file": settings.broker_cert_file,
        "broker_key_file": settings.broker_key_file,
    }
    if url.scheme == "redis":
        if given := [k for k, v in files.items() if v]:
            raise InvalidRequest(
                f"{', '.join(given)} set but broker_url is redis:// (no TLS): "
                "use rediss://host:port/db to reach the broker over TLS"
            )
        return None
    if url.scheme != "rediss":
        raise InvalidRequest(
            f"broker_url must be redis:// or rediss://, got {redact(settings.broker_url)!r}"
        )
    for name, value in parse_qsl(url.query):
        if name == "ssl_cert_reqs" and value.lower() not in _REQUIRED:
            raise InvalidRequest(
                f"broker_url asks for ssl_cert_reqs={value}: the broker's certificate is always "
                "verified; drop the parameter, or set broker_ca_file to the CA that signs it"
            )
        if name.startswith("ssl_") and name != "ssl_cert_reqs":
            raise InvalidRequest(
                f"broker_url sets {name}: give TLS files as settings (broker_ca_file, "
                "broker_cert_file, broker_key_file), not in the URL"
            )
    if bool(settings.broker_cert_file) != bool(settings.broker_key_file):
        raise InvalidRequest("broker_cert_file and broker_key_file go together: set both or none")
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    if settings.broker_ca_file:
        options["ssl_ca_certs"] = settings.broker_ca_file
    if settings.broker_cert_file:
        options["ssl_certfile"] = settings.broker_cert_file
        options["ssl_keyfile"] = settings.broker_key_file
    return options


def celery_url(settings: Settings) -> str:
    """``broker_url`` without its ``ssl_*`` parameters, which :func:`tls_options` has checked
    and which kombu would otherwise let replace every TLS option."""
    url = urlsplit(settings.broker_url)
    query = [(k, v) for k, v in parse_qsl(url.query) if not k.startswith("ssl_")]
    return urlunsplit(url._replace(query=urlencode(query)))


def client(settings: Settings, **kwargs: Any) -> redis.Redis:
    """A redis-py client of the broker, with the same TLS options as the Celery app."""
    return redis.Redis.from_url(settings.broker_url, **kwargs, **(tls_options(settings) or {}))


@functools.cache
def _shared(url: str, ca: str, cert: str, key: str) -> redis.Redis:
    return client(
        Settings(broker_url=url, broker_ca_file=ca, broker_cert_file=cert, broker_key_file=key)
    )


def shared_client(settings: Settings) -> redis.Redis:
    """One client (and connection pool) per broker in this process."""
    s = settings
    return _shared(s.broker_url, s.broker_ca_file, s.broker_cert_file, s.broker_key_file)


def claim_key(settings: Settings, key: str, ttl_sec: float) -> bool:
    """Set ``key`` in the broker's Redis if it is absent, expiring after ``ttl_sec``: True for
    the one caller among all processes that set it. The dedupe behind "at most one of these per
    interval" (early nudges, pending GC runs). A Redis error propagates: the caller decides
    whether skipping is safe."""
    ttl_ms = max(1, int(ttl_sec * 1000))
    return bool(shared_client(settings).set(key, "1", nx=True, px=ttl_ms))


def claim_keys(settings: Settings, keys: list[str], ttl_sec: float) -> list[bool]:
    """:func:`claim_key` of each key, in one round trip (a pipeline, not a transaction: each
    claim stands on its own)."""
    ttl_ms = max(1, int(ttl_sec * 1000))
    pipe = shared_client(settings).pipeline(transaction=False)
    for key in keys:
        pipe.set(key, "1", nx=True, px=ttl_ms)
    return [bool(ok) for ok in pipe.execute()]


def release_key(settings: Settings, key: str) -> None:
    """Give up a claim early (the work it stood for has ended)."""
    shared_client(settings).delete(key)


def check(settings: Settings, timeout: float = 5.0) -> None:
    """PING the broker; a one-line error naming the cause (never the password) if that fails."""
    where = redact(settings.broker_url)
    try:
        client(settings, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        raise BrokerRefused(
            f"the broker at {where} refused the credentials ({_first_line(exc)}): "
            "check the password in REPLICATOR_BROKER_URL (redis://:PASSWORD@host:port/db)"
        ) from None
    except redis.ResponseError as exc:
        if "NOAUTH" not in str(exc):
            raise
        raise BrokerRefused(
            f"the broker at {where} requires a password: put it in REPLICATOR_BROKER_URL "
            "(redis://:PASSWORD@host:port/db)"
        ) from None
    except redis.ConnectionError as exc:
        if isinstance(exc.__context__, ssl.SSLError) or "SSL" in str(exc):
            raise BrokerRefused(
                f"TLS with the broker at {where} failed ({_first_line(exc)}): check "
                "broker_ca_file (the CA that signs the broker's certificate) and the host name"
            ) from None
        raise BrokerUnavailable(
            f"cannot reach the broker at {where}: {_first_line(exc)} (is Redis running?)"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = redact(str(exc)).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


def signing_files(settings: Settings) -> tuple[str, str, str] | None:
    """(key, certificate, cert store) for Celery's message signing, or None when it is off."""
    files = (
        settings.message_signing_key_file,
        settings.message_signing_cert_file,
        settings.message_signing_cert_store,
    )
    if not any(files):
        return None
    if not all(files):
        raise InvalidRequest(
            "message signing needs message_signing_key_file, message_signing_cert_file and "
            "message_signing_cert_store (the certificates whose signatures are accepted): "
            "set all three, or none to send messages unsigned"
        )
    return files
