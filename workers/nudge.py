"""Wake the coordinator for one job at once, instead of waiting for the next beat tick."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from app.config import Settings
from app.queues import COORDINATOR_QUEUE
from workers.celery_app import celery
from workers.celery_app import settings as own_settings
from workers.security import client_key, configure

_clients: dict[tuple[str, ...], Celery] = {}


def _send(client: Celery, cluster: str, job_id: int) -> None:
    client.send_task(
        "replication.tick",
        kwargs={"cluster": cluster, "job_id": job_id},
        queue=COORDINATOR_QUEUE,
        expires=60,
    )


def nudge(cluster: str, job_id: int) -> None:
    _send(celery, cluster, job_id)


def notifier(settings: Settings) -> Callable[[str, int], None]:
    """A nudge for the broker that ``settings`` names (the workers' own app if it is the same)."""
    key = client_key(settings)
    if key == client_key(own_settings):
        return nudge
    client = _clients.get(key)
    if client is None:
        client = Celery("olap_replicator_client", broker=settings.broker_url)
        client.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
        configure(client, settings)
        _clients[key] = client
    return lambda cluster, job_id: _send(client, cluster, job_id)
