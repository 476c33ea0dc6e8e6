"""Small state that API processes share in Redis and that no request may depend on: the query-embedding cache
and the "this key just wrote" marks that keep its searches on the primary.

Every call fails open: with Redis down or slow (250 ms timeouts), the caller gets None and goes on without it. An
outage is logged once when it starts and once when it ends, and Redis is left alone for a few seconds after a
failure, so a dead server costs searches nothing but the first timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from core.runtime import runtime
from core.settings import get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_S = 0.25
BACKOFF_S = 5.0


class FailOpenRedis:
    """A Redis client whose calls answer None instead of raising while the server is unreachable."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down = False

    def run(self, call: Callable[[redis.Redis], T]) -> T | None:
        """`call(client)`, or None when Redis is unreachable or refuses (and for a few seconds after that)."""
        if time.monotonic() < self._down_until:
            return None
        try:
            result = call(self.client)
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                self._down_until = time.monotonic() + BACKOFF_S
                first = not self._down
                self._down = True
            if first:
                log.warning("Redis at %s unavailable, going on without it: %s", _safe(self.url), exc)
            return None
        if self._down:
            with self._lock:
                recovered, self._down = self._down, False
            if recovered:
                log.warning("Redis at %s is back", _safe(self.url))
        return result

    @property
    def available(self) -> bool:
        return not self._down

    def close(self) -> None:
        self.client.close()


def _safe(url: str) -> str:
    """The URL without its password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}" if rest else url


def _shared_redis() -> FailOpenRedis:
    settings = get_settings()
    return FailOpenRedis(settings.query_cache_url or settings.broker_url or "redis://127.0.0.1:6379/0")


_redis = runtime.slot("shared-state-redis", _shared_redis, close=lambda client: client.close())


def shared_redis() -> FailOpenRedis:
    """This process's fail-open client of WITHSENSE_QUERY_CACHE_URL (default: the broker)."""
    return _redis.get()
