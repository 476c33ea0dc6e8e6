"""Prometheus metrics of the API process."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services import health

UPLOADS = Counter("withsense_uploads_total", "Upload requests by outcome", ["result"])
SEARCHES = Counter("withsense_searches_total", "Searches by kind and outcome", ["kind", "outcome"])
SEARCH_LATENCY = Histogram(
    "withsense_search_seconds",
    "Search latency including the query embedding",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class ScaleCollector(Collector):
    """Read at each scrape: the query-embedding cache's counters and each read replica's lag and health."""

    def collect(self) -> Iterator[Metric]:
        stats = health.query_cache_stats()
        for name, value, what in (
            ("hits", stats.hits, "Text queries whose embedding came from the Redis cache"),
            ("misses", stats.misses, "Text queries embedded by the text tower (not in the cache)"),
            ("errors", stats.errors, "Cache calls Redis did not answer (search went on without the cache)"),
        ):
            yield CounterMetricFamily(f"withsense_query_cache_{name}", what, value=value)
        states = health.replica_states()
        lag = GaugeMetricFamily(
            "withsense_replica_lag_seconds",
            "Replay lag of each read replica (NaN while unreachable)",
            labels=["replica"],
        )
        usable = GaugeMetricFamily(
            "withsense_replica_usable",
            "1 when the replica serves searches (reachable, lag under the limit)",
            labels=["replica"],
        )
        for state in states:
            lag.add_metric([state.label], state.lag_s if state.lag_s is not None else float("nan"))
            usable.add_metric([state.label], 1.0 if state.usable else 0.0)
        yield lag
        yield usable


REGISTRY.register(ScaleCollector())
