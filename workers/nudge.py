"""Wake the coordinator for one job at once, instead of waiting for the next beat tick."""

from __future__ import annotations

from collections.abc import Callable

from app.config import Settings
from workers.celery_app import COORDINATOR_QUEUE, app


def nudge(cluster: str, job_id: int) -> None:
    app.send_task(
        "replication.tick",
        kwargs={"cluster": cluster, "job_id": job_id},
        queue=COORDINATOR_QUEUE,
        expires=60,
    )


def notifier(settings: Settings) -> Callable[[str, int], None]:
    if settings.broker_url != app.conf.broker_url:
        app.conf.broker_url = settings.broker_url
    return nudge
