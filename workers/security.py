"""Broker TLS and message signing for every Celery app of the project (the workers' own, the
nudge and inspect clients), from the same settings, so that no client speaks to the broker
differently from the workers.

Signing uses Celery's ``auth`` serializer: task and control (inspect, ping) messages are signed
with the RSA key and carry the signer's certificate id; a worker accepts only ``auth`` content
signed by a certificate in the store, and refuses (and drops) anything else, plain JSON
included. Events stay JSON: they are never executed, and Flower and the exporter read them.
"""

from __future__ import annotations

from celery import Celery

from app import broker
from app.config import Settings
from app.errors import InvalidRequest

# What decides how a client speaks to the broker: clients differing in any are distinct clients.
BROKER_FIELDS = (
    "broker_url",
    "broker_ca_file",
    "broker_cert_file",
    "broker_key_file",
    "message_signing_key_file",
    "message_signing_cert_file",
    "message_signing_cert_store",
)


def client_key(settings: Settings) -> tuple[str, ...]:
    return tuple(getattr(settings, f) for f in BROKER_FIELDS)


def configure(app: Celery, settings: Settings) -> None:
    """Apply ``settings``' broker TLS options and, when set, message signing to ``app``."""
    tls = broker.tls_options(settings)
    if tls is not None:
        # No result backend is used (results are ignored; Postgres is the truth), so there is
        # no redis_backend_use_ssl to set.
        app.conf.broker_use_ssl = tls
        app.conf.broker_url = broker.celery_url(settings)
    files = broker.signing_files(settings)
    if files is None:
        return
    key, cert, store = files
    app.conf.update(
        task_serializer="auth",
        accept_content=["auth"],
        security_key=key,
        security_certificate=cert,
        security_cert_store=store,
        security_digest="sha256",
    )
    try:
        # Every other serializer (pickle, yaml, msgpack) is disabled in kombu's registry; json
        # stays enabled because events are json and the auth serializer wraps json (it is
        # registered after this list is applied). accept_content=["auth"] is what refuses
        # unsigned task and control messages.
        app.setup_security(allowed_serializers=["json"], serializer="json")
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            f"message signing cannot start: {exc} (Celery signs with RSA keys only; "
            f"key {key}, certificate {cert}, store {store})"
        ) from None
