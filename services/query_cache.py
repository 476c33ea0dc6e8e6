"""The query-embedding cache: a text query's vector kept in Redis, so a repeated query skips the text tower.

Key: a hash of the model (name, revision, text model) and the normalised text, so another model never reads a
vector of this one. Value: the float32 vector as bytes (2 KB for 512 dimensions). Bounded two ways, both ours
rather than the server's eviction policy (the broker's Redis runs `noeviction`, and a full broker refuses uploads):
each entry expires WITHSENSE_QUERY_CACHE_TTL_S after its last use, and a sorted set of last-use times keeps at most
WITHSENSE_QUERY_CACHE_MAX_ENTRIES, dropping the least recently used. Both updates run in one Lua script per call.
With Redis down the cache is a miss and search goes on (services.shared_state fails open).
"""

from __future__ import annotations

import hashlib
import threading
import time
import unicodedata
from dataclasses import dataclass

import numpy as np

from core.runtime import runtime
from core.settings import get_settings
from services.shared_state import shared_redis

# One hash tag: the entries and their index live in one slot, so the scripts also run on Redis Cluster.
ENTRY_PREFIX = "withsense:{qcache}:"
LRU_INDEX = "withsense:{qcache}:lru"

# KEYS: entry, index. ARGV: now (s), ttl (ms). A hit renews the entry's TTL and its place in the LRU order.
_GET = """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
end
return value
"""

# KEYS: entry, index. ARGV: vector, ttl (ms), now (s), max entries. Drops the least recently used beyond the
# bound, and forgets index members whose entries have expired.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[2]) / 1000)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do redis.call('DEL', oldest[i]) end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return over
"""


def normalise(text: str) -> str:
    """The form that is embedded and cached: Unicode NFC, whitespace runs as one space, no outer spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def cache_key(model_id: str, text: str) -> str:
    digest = hashlib.sha256(f"{model_id}\0{text}".encode()).hexdigest()
    return f"{ENTRY_PREFIX}{digest}"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0  # lookups or stores that Redis did not answer (counted as misses too, for lookups)


class QueryEmbeddingCache:
    """Vectors of query texts by model, in Redis, least recently used dropped first."""

    def __init__(self, ttl_s: int, max_entries: int) -> None:
        self.ttl_ms = ttl_s * 1000
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._lock = threading.Lock()
        client = shared_redis().client
        # EVALSHA, falling back to EVAL once when the server does not know the script yet (after a restart).
        self._get_script = client.register_script(_GET)
        self._put_script = client.register_script(_PUT)

    @property
    def enabled(self) -> bool:
        return self.ttl_ms > 0

    def _count(self, *, hit: bool, error: bool = False) -> None:
        with self._lock:
            if hit:
                self.stats.hits += 1
            else:
                self.stats.misses += 1
            if error:
                self.stats.errors += 1

    def get(self, model_id: str, text: str, dimension: int) -> np.ndarray | None:
        """The cached vector of `text` under `model_id`, or None (a miss, also when Redis does not answer)."""
        if not self.enabled:
            return None
        key = cache_key(model_id, text)
        client = shared_redis()
        value = client.run(lambda _r: self._get_script(keys=[key, LRU_INDEX], args=[time.time(), self.ttl_ms]))
        if not isinstance(value, bytes) or len(value) != dimension * 4:
            self._count(hit=False, error=value is None and not client.available)
            return None
        self._count(hit=True)
        return np.frombuffer(value, dtype=np.float32).copy()

    def put(self, model_id: str, text: str, vector: np.ndarray) -> None:
        """Keep `vector` for `text` (best effort: nothing happens when Redis does not answer)."""
        if not self.enabled:
            return
        data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        key = cache_key(model_id, text)
        stored = shared_redis().run(
            lambda _r: self._put_script(keys=[key, LRU_INDEX], args=[data, self.ttl_ms, time.time(), self.max_entries])
        )
        if stored is None:
            with self._lock:
                self.stats.errors += 1

    def snapshot(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.stats.hits, self.stats.misses, self.stats.errors)


def _cache_from_settings() -> QueryEmbeddingCache:
    settings = get_settings()
    return QueryEmbeddingCache(settings.query_cache_ttl_s, settings.query_cache_max_entries)


_cache = runtime.slot("query-embedding-cache", _cache_from_settings)


def query_cache() -> QueryEmbeddingCache:
    """This process's query-embedding cache (its counters feed /metrics)."""
    return _cache.get()
