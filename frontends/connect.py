"""A Replicator wired to the workers: submitting or cancelling a job nudges the coordinator."""

from __future__ import annotations

from app.client import Notify, Replicator
from app.config import Settings, load_settings


def notifier(settings: Settings) -> Notify:
    """``workers.nudge.notifier(settings)``, imported at the first nudge: a command that never
    submits a job does not pay for importing Celery."""
    found: list[Notify] = []

    def notify(cluster: str, job_id: int) -> None:
        if not found:
            from workers.nudge import notifier as nudge_notifier

            found.append(nudge_notifier(settings))
        found[0](cluster, job_id)

    return notify


def replicator(settings: Settings | None = None) -> Replicator:
    """``Replicator(settings)`` whose nudges go to the broker that ``settings`` names."""
    settings = settings or load_settings()
    return Replicator(settings, notifier(settings))
