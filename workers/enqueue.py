"""Enqueue work by task name, so the API never imports the worker's model code."""

from __future__ import annotations

import uuid

from kombu.exceptions import OperationalError as BrokerError

from workers.celery_app import celery_app


class QueueUnavailable(RuntimeError):
    """The broker refused or could not be reached: the caller answers 503."""


def enqueue_ingest(photo_id: uuid.UUID) -> None:
    """Queue one photo (an upload): indexed as soon as a worker is free."""
    _send("photos.ingest", [str(photo_id)])


def enqueue_ingest_batch(photo_ids: list[uuid.UUID]) -> None:
    """Queue several photos as one task: one forward pass per chunk, for backfills and the reconciler."""
    if photo_ids:
        _send("photos.ingest_batch", [[str(p) for p in photo_ids]])


def enqueue_reindex_batch(photo_ids: list[uuid.UUID]) -> None:
    """Queue indexed photos for the upgrade worker (queue `reindex`) to embed with its model."""
    if photo_ids:
        _send("reindex.embed", [[str(p) for p in photo_ids]])


def _send(task_name: str, args: list[object]) -> None:
    try:
        celery_app.send_task(
            task_name,
            args=args,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        )
    except (BrokerError, OSError) as exc:
        raise QueueUnavailable(f"the indexing queue is unavailable: {exc}") from exc
    except Exception as exc:
        # redis-py raises its own errors (OOM "command not allowed when used memory > maxmemory", etc.).
        import redis.exceptions

        if isinstance(exc, redis.exceptions.RedisError):
            raise QueueUnavailable(f"the indexing queue refused the task: {exc}") from exc
        raise
