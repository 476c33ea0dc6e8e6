"""The worker's Celery application: the shared configuration (services.queue) plus the task modules and signals.

Configured lazily, when Celery first reads its configuration, so importing this module reads no settings.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, worker_process_init, worker_ready

from core.runtime import runtime
from core.settings import get_settings
from services.queue import celery_config

log = logging.getLogger(__name__)

celery_app = Celery("withsense", include=["workers.tasks"])


@celery_app.on_configure.connect
def _configure(sender: Celery, **_kwargs: Any) -> None:
    sender.conf.update(celery_config(get_settings()))


def _reconfigure() -> None:
    # After a reset (tests change WITHSENSE_BROKER_URL): settings read again, the old broker's pools dropped.
    if celery_app.configured:
        celery_app.close()
        celery_app.conf.update(celery_config(get_settings()))


runtime.on_reset(_reconfigure)

# The pool size this worker was started with (`celery worker -c N`), read in the parent before it forks.
_pool = runtime.slot("worker-pool-size", lambda: 0)


@celeryd_init.connect
def _remember_pool_size(options: dict[str, object] | None = None, **_kwargs: object) -> None:
    concurrency = (options or {}).get("concurrency")
    _pool.set(int(str(concurrency)) if concurrency else 0)


@worker_process_init.connect
def _configure_child(**_kwargs: object) -> None:
    """Cheap per-child setup after fork: thread count and fresh DB connections. The model loads lazily.

    The cores are shared by the pool's processes: `-c N` when the worker was started with it,
    WITHSENSE_WORKER_CONCURRENCY otherwise, so N children never run N x cores threads.
    """
    import torch

    from db.engine import dispose_engine

    threads = get_settings().torch_threads_for(_pool.get() or None)
    torch.set_num_threads(threads)
    dispose_engine()
    log.info("worker child %d: torch threads %d", os.getpid(), threads)


@worker_ready.connect
def _resume_photos_waiting_for_a_model(**_kwargs: object) -> None:
    """A worker (re)started, perhaps with the model fixed: photos left pending for want of one need not wait for
    the reconciler. One task; a child loads its model for it and queues them (services.indexing)."""
    from services.queue import QueueUnavailable, enqueue_resume_after_model_failure

    try:
        enqueue_resume_after_model_failure()
    except QueueUnavailable as exc:
        log.warning("could not queue the resume of photos waiting for the model: %s", exc)
