"""The producer side of the queue: tasks are sent by name, so nothing but the worker imports the worker's code.

The Celery configuration lives here once; the worker's app (workers/celery_app.py) is built from the same
function, adding the task modules and the worker signals.
"""

from __future__ import annotations

import uuid

import redis.exceptions
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from core.runtime import runtime
from core.settings import Settings, get_settings


class QueueUnavailable(RuntimeError):
    """The broker refused or could not be reached: the caller answers 503 (or leaves the photo to the reconciler)."""


def celery_config(settings: Settings) -> dict[str, object]:
    """Every Celery setting, from WITHSENSE_* settings (shared by the producer and the worker)."""
    return {
        "broker_url": settings.broker_url or "redis://127.0.0.1:6379/0",
        "task_acks_late": True,  # a task is acknowledged only after it finished: a crash means redelivery
        "task_reject_on_worker_lost": True,  # ... including a worker child killed mid-task
        "worker_prefetch_multiplier": 1,  # never hoard tasks that another worker could run
        "worker_concurrency": settings.worker_concurrency,  # `celery worker -c N` overrides it
        "task_ignore_result": True,  # status lives in the photos table, not in a result backend
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": max(5, settings.task_time_limit_s - 30),
        # One visibility timeout above the longest task, so Redis does not redeliver a running task.
        "broker_transport_options": {"visibility_timeout": settings.broker_visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "task_default_queue": "photos",
        # `reindex` is consumed only by workers started for a model upgrade (`-Q reindex`): a worker
        # still on the old model must never take those tasks.
        "task_routes": {
            "photos.*": {"queue": "photos"},
            "maintenance.*": {"queue": "maintenance"},
            "reindex.*": {"queue": "reindex"},
        },
        "worker_send_task_events": True,  # Flower
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        # The reconciler re-enqueues photos whose task was lost (Redis restarted, worker gone).
        "beat_schedule": {
            "reconcile-stale-photos": {
                "task": "maintenance.reconcile",
                "schedule": float(settings.reconcile_every_s),
                "kwargs": {"older_than_s": settings.reconcile_after_s},
            }
        },
        "enable_utc": True,
    }


def _producer() -> Celery:
    app = Celery("withsense")
    app.conf.update(celery_config(get_settings()))
    return app


_celery = runtime.slot("celery-producer", _producer, close=lambda app: app.close())


def enqueue_ingest(photo_id: uuid.UUID) -> None:
    """Queue one photo (an upload): indexed as soon as a worker is free."""
    _send("photos.ingest", [str(photo_id)])


def enqueue_ingest_batch(photo_ids: list[uuid.UUID]) -> None:
    """Queue several photos as one task: one forward pass per chunk, for backfills and the reconciler."""
    if photo_ids:
        _send("photos.ingest_batch", [[str(p) for p in photo_ids]])


def enqueue_in_batches(photo_ids: list[uuid.UUID], batch_size: int) -> None:
    """Queue photos as batch tasks of `batch_size` (the reconciler, redrive of many photos)."""
    for start in range(0, len(photo_ids), batch_size):
        enqueue_ingest_batch(photo_ids[start : start + batch_size])


def enqueue_reindex_batch(photo_ids: list[uuid.UUID]) -> None:
    """Queue indexed photos for the upgrade worker (queue `reindex`) to embed with its model."""
    if photo_ids:
        _send("reindex.embed", [[str(p) for p in photo_ids]])


def enqueue_resume_after_model_failure(countdown_s: float = 0.0) -> None:
    """Queue the task that tries the model again and, once it loads, indexes the photos that waited for it."""
    _send("photos.resume_waiting", [], countdown=countdown_s)


def _send(task_name: str, args: list[object], countdown: float | None = None) -> None:
    try:
        _celery.get().send_task(
            task_name,
            args=args,
            countdown=countdown or None,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        )
    except (BrokerError, OSError) as exc:
        raise QueueUnavailable(f"the indexing queue is unavailable: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        # redis-py's own errors: OOM "command not allowed when used memory > maxmemory", read-only replica, ...
        raise QueueUnavailable(f"the indexing queue refused the task: {exc}") from exc
