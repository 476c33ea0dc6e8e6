"""Prometheus metrics of the API process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

UPLOADS = Counter("withsense_uploads_total", "Upload requests by outcome", ["result"])
SEARCHES = Counter("withsense_searches_total", "Searches by kind and outcome", ["kind", "outcome"])
SEARCH_LATENCY = Histogram(
    "withsense_search_seconds",
    "Search latency including the query embedding",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
