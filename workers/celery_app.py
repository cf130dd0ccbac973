"""The Celery application: Redis broker, one queue per backend, a coordinator queue, beat tick.

Settings follow the reliability notes in DESIGN.md: late acks with requeue on a lost worker
(bounded by the attempt cap kept in Postgres), prefetch 1, a visibility timeout longer than any
task, results ignored (Postgres is the truth), events on for Flower.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from app.catalog.engine import dispose_all
from app.config import load_settings
from app.queues import BEAT_QUEUE, COORDINATOR_QUEUE
from workers.security import configure

TASK_TIME_LIMIT_SEC = 3600
VISIBILITY_TIMEOUT_SEC = 2 * TASK_TIME_LIMIT_SEC

settings = load_settings()

celery = Celery("olap_replicator", broker=settings.broker_url, include=["workers.tasks"])
celery.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=TASK_TIME_LIMIT_SEC,
    task_soft_time_limit=TASK_TIME_LIMIT_SEC - 60,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_SEC},
    broker_connection_retry_on_startup=True,
    # False: with True, a broker connection lost while a task runs can crash the worker's main
    # process on reconnect (celery/celery#7185; seen here: "Unrecoverable error: AttributeError
    # ... 'hostname'" when Redis restarted, and the coordinator was gone). A task left running
    # finishes; its message is delivered again and finds its rows claimed or done (Postgres
    # holds the truth, so a second delivery does nothing twice).
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_soft_shutdown_timeout=10.0,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    task_default_queue=COORDINATOR_QUEUE,
    task_create_missing_queues=True,
    worker_hijack_root_logger=False,
    beat_schedule={
        "coordinator-tick": {
            "task": "replication.tick",
            "schedule": settings.coordinator_tick_sec,
            # A tick that waited longer than one period is useless: drop it, the next one comes.
            "options": {"queue": BEAT_QUEUE, "expires": max(settings.coordinator_tick_sec, 5.0)},
        },
        "maintenance-gc": {
            "task": "maintenance.gc",
            "schedule": 300.0,
            "options": {"queue": BEAT_QUEUE, "expires": 300.0},
        },
    },
)
configure(celery, settings)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # Pooled Postgres connections must never cross a fork.
    dispose_all()
