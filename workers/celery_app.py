"""The Celery application, configured in one place from settings."""

from __future__ import annotations

from celery import Celery
from celery.signals import celeryd_init, worker_process_init

from core.settings import get_settings


def make_celery() -> Celery:
    settings = get_settings()
    broker = settings.broker_url or "redis://127.0.0.1:6379/0"
    app = Celery("withsense", broker=broker, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,  # a task is acknowledged only after it finished: a crash means redelivery
        task_reject_on_worker_lost=True,  # ... including a worker child killed mid-task
        worker_prefetch_multiplier=1,  # never hoard tasks that another worker could run
        worker_concurrency=settings.worker_concurrency,  # `celery worker -c N` overrides it
        task_ignore_result=True,  # status lives in the photos table, not in a result backend
        task_serializer="json",
        accept_content=["json"],
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(5, settings.task_time_limit_s - 30),
        # One visibility timeout above the longest task, so Redis does not redeliver a running task.
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_default_queue="photos",
        # `reindex` is consumed only by workers started for a model upgrade (`-Q reindex`): a worker
        # still on the old model must never take those tasks.
        task_routes={
            "photos.*": {"queue": "photos"},
            "maintenance.*": {"queue": "maintenance"},
            "reindex.*": {"queue": "reindex"},
        },
        worker_send_task_events=True,  # Flower
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        # The reconciler re-enqueues photos whose task was lost (Redis restarted, worker gone).
        beat_schedule={
            "reconcile-stale-photos": {
                "task": "maintenance.reconcile",
                "schedule": float(settings.reconcile_every_s),
                "kwargs": {"older_than_s": settings.reconcile_after_s},
            }
        },
        enable_utc=True,
    )
    return app


celery_app = make_celery()


# The pool size this worker was started with (`celery worker -c N`), read in the parent before it forks.
_pool_processes: int | None = None


@celeryd_init.connect
def _remember_pool_size(options: dict[str, object] | None = None, **_kwargs: object) -> None:
    global _pool_processes
    concurrency = (options or {}).get("concurrency")
    _pool_processes = int(concurrency) if concurrency else None  # type: ignore[call-overload]


@worker_process_init.connect
def _configure_child(**_kwargs: object) -> None:
    """Cheap per-child setup after fork: thread count and fresh DB connections. The model loads lazily.

    The cores are shared by the pool's processes: `-c N` when the worker was started with it,
    WITHSENSE_WORKER_CONCURRENCY otherwise, so N children never run N x cores threads.
    """
    import logging
    import os

    import torch

    from db.engine import dispose_engine

    threads = get_settings().torch_threads_for(_pool_processes)
    torch.set_num_threads(threads)
    dispose_engine()
    logging.getLogger(__name__).info("worker child %d: torch threads %d", os.getpid(), threads)
