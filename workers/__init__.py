"""Celery workers: ``celery -A workers worker -Q be.<cluster>.<backend>``.

Thin by design: tasks receive ids, call into ``app``, and nudge the coordinator.
"""

from workers.celery_app import celery

__all__ = ["celery"]
