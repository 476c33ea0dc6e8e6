"""Where a vector search's time goes, layer by layer, side by side in one run: the SQL alone, the db layer, the
service layer, the API key check, and `POST /v1/search/vector` over HTTP.

    .venv/bin/python -m bench.api_overhead                 # 20,000 vectors, 300 queries
    .venv/bin/python -m bench.api_overhead --n 5000 --queries 200
    git worktree add /tmp/ws-base <commit before a change>
    .venv/bin/python -m bench.api_overhead --baseline-tree /tmp/ws-base   # that code beside this one
    .venv/bin/python -m bench.api_overhead --from-search-filters /work/bench1m/wsf1m --shared-buffers 2GB  # 1M

What it does:
1. starts the embedded Postgres (its own folder under /tmp), loads N synthetic CLIP-like vectors under a model
   row of the random-weights ViT-B/32 and builds the HNSW index (bench/query_cache.py's index);
2. starts one API process (uvicorn api.app:app with its own Valkey for the rate limiter), one client, keep-alive;
3. for each query vector, in turn (so that the layers share the machine's load; in a new random order for each
   query, so that none is always the one that brings the vector's part of the graph into the CPU caches):
   - `SQL`: `SELECT * FROM search_photos_filtered(...)` on one psycopg connection, as the service sends it;
   - `db layer`: db.search.search_filtered() in a session (SQLAlchemy, the per-call settings, the savepoint);
   - `service layer`: services.search.search_vector() in the session a search reads from (checks, cursor, page);
   - `API key check`: services.access.authenticate() of the bench's key (what every request pays first);
   - `HTTP`: `POST /v1/search/vector` to the API (everything: parsing, auth, rate limit, session, search, JSON);
   - `HTTP text, cache hit`: `GET /v1/search?q=...` with a text asked once before (the query cache's warm case:
     no text tower; the query policy, the cache's Redis, the hybrid search with the words);
   - `SQL hybrid, words match nothing`: search_photos_filtered in hybrid mode with the query's words (which match
     no photo in these databases), and the same with the function as it was before migration 0015 (installed
     for the run as search_photos_filtered_0014): what running the keyword query first saves;
   - with --baseline-tree DIR, `HTTP, baseline`: the same request to a second API process running the code of
     another checkout (say the commit before a change) against the same database: the change measured side by
     side with what it replaces;
   with --from-search-filters DIR the database is a `bench/search_filters.py --keep DIR` one (1M vectors: no load,
   no build; its model row renamed to the random ViT-B/32 for the run and named back after), prewarmed;
4. prints p50/p95 of each and the differences between the layers, with the CPU and its vector extensions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from bench.common import emit, latency_stats, machine_info, print_table, random_vit_b32, short_tmp_dir, warn_if_busy
from bench.query_cache import cpu_line, query_texts
from bench.search_at_scale import ApiServer, create_api_key, server_settings
from bench.search_data import UNRESTRICTED_REGION, VectorSource, connect
from bench.text_encoder import serving_index
from cli.local_services import LocalPostgres

LAYERS = ("SQL", "db layer", "service layer", "API key check", "HTTP")
BASELINE = "HTTP, baseline"
TEXT = "HTTP text, cache hit"
TEXT_BASELINE = "HTTP text, cache hit, baseline"
HYBRID = "SQL hybrid, words match nothing"
# The function as it was before migration 0015, installed beside today's for the run under this name.
BEFORE_0015 = "search_photos_filtered_0014"
HYBRID_0014 = "SQL hybrid, words match nothing, 0014"


def _renamed(definition: str, name: str) -> str:
    """A search_photos_filtered definition of another revision, as a function called `name`."""
    renamed = re.sub(r"\bsearch_photos_filtered\(", f"{name}(", definition)
    if renamed == definition:
        raise SystemExit("search_photos_filtered: definition not found")
    return renamed


def measure(
    database_url: str,
    dsn: str,
    base_url: str,
    api_key: str,
    vectors: list[np.ndarray],
    texts: list[str],
    k: int,
    baseline_url: str | None = None,
) -> dict[str, dict[str, float]]:
    """Each query through each layer in turn; per-layer latency figures."""
    import json

    from pgvector.psycopg import register_vector

    from core.runtime import runtime
    from core.settings import get_settings
    from db import sql as sql_surface
    from services import access
    from services import search as search_service

    os.environ["WITHSENSE_DATABASE_URL"] = database_url
    runtime.reset()  # settings read again, with that database
    options = search_service.SearchOptions(mode="semantic")
    sql_options = json.dumps({"mode": "semantic", "sort": "relevance", "offset": 0})
    raw = connect(dsn)
    register_vector(raw)
    raw.execute(_renamed(sql_surface.definition("search_photos_filtered", at="0014"), BEFORE_0015))
    headers = {"Authorization": f"Bearer {api_key}"}
    client = httpx.Client(base_url=base_url, headers=headers, timeout=60)
    baseline = httpx.Client(base_url=baseline_url, headers=headers, timeout=60) if baseline_url else None

    def sql(vector: np.ndarray) -> int:
        rows = raw.execute(
            "SELECT * FROM search_photos_filtered(%s::vector, NULL, %s, %s, '{}'::jsonb, %s::jsonb)",
            (vector.astype(np.float32), k + 1, UNRESTRICTED_REGION, sql_options),
            prepare=True,
        ).fetchall()
        return len(rows)

    hybrid_options = json.dumps({"mode": "hybrid", "sort": "relevance", "offset": 0})

    def hybrid_sql(function: str) -> Callable[[np.ndarray], int]:
        def run(vector: np.ndarray) -> int:
            rows = raw.execute(
                f"SELECT * FROM {function}(%s::vector, %s, %s, %s, '{{}}'::jsonb, %s::jsonb)",
                (vector.astype(np.float32), texts[query_index[id(vector)]], k + 1, UNRESTRICTED_REGION, hybrid_options),
                prepare=True,
            ).fetchall()
            return len(rows)

        return run

    def db_layer(vector: np.ndarray) -> int:
        from db import search as search_sql
        from db.engine import session_scope

        with session_scope() as session:
            settings = get_settings()
            rows = search_sql.search_filtered(
                session,
                vector,
                None,
                k + 1,
                UNRESTRICTED_REGION,
                {},
                json.loads(sql_options),
                ef_search=settings.hnsw_ef_search,
                binary_rerank=settings.binary_rerank,
            )
            return len(rows)

    def service_layer(vector: np.ndarray) -> int:
        with contextmanager_session() as session:
            outcome = search_service.search_vector(session, vector, k, UNRESTRICTED_REGION, options)
        return len(outcome.hits)

    def auth(_vector: np.ndarray) -> int:
        return 1 if access.authenticate(api_key) is not None else 0

    def over_http(to: httpx.Client) -> Callable[[np.ndarray], int]:
        def http(vector: np.ndarray) -> int:
            body = {"embedding": vector.tolist(), "k": k, "region": UNRESTRICTED_REGION}
            response = to.post("/v1/search/vector", json=body)
            return len(response.json()["results"]) if response.status_code == 200 else -1

        return http

    def text_over_http(to: httpx.Client) -> Callable[[np.ndarray], int]:
        def text_search(vector: np.ndarray) -> int:
            params: dict[str, str | int] = {"q": texts[query_index[id(vector)]], "k": k, "region": UNRESTRICTED_REGION}
            response = to.get("/v1/search", params=params)
            return len(response.json()["results"]) if response.status_code == 200 else -1

        return text_search

    query_index = {id(vector): i for i, vector in enumerate(vectors)}
    contextmanager_session = search_service.search_session
    layers: dict[str, Callable[[np.ndarray], int]] = dict(
        zip(LAYERS, (sql, db_layer, service_layer, auth, over_http(client)), strict=True)
    )
    layers[TEXT] = text_over_http(client)
    layers[HYBRID] = hybrid_sql("search_photos_filtered")
    layers[HYBRID_0014] = hybrid_sql(BEFORE_0015)
    expected = {layer: k for layer in (*LAYERS, BASELINE, TEXT, TEXT_BASELINE, HYBRID, HYBRID_0014)}
    # The service asks for one row more than the page (is there a next page?): so do the layers under it.
    expected |= {"SQL": k + 1, "db layer": k + 1, HYBRID: k + 1, HYBRID_0014: k + 1, "API key check": 1}
    if baseline is not None:
        layers[BASELINE] = over_http(baseline)
        layers[TEXT_BASELINE] = text_over_http(baseline)
    seconds: dict[str, list[float]] = {layer: [] for layer in layers}
    failures = dict.fromkeys(layers, 0)
    try:
        client.get("/healthz")
        if baseline is not None:
            baseline.get("/healthz")
        for vector in vectors:  # warm-up: connections, prepared statements; each text once, into the query cache
            for run in layers.values():
                run(vector)
        names = list(layers)
        order = np.random.default_rng(0)
        for vector in vectors:
            # The first layer to meet a query vector pays for its part of the graph coming into the CPU's caches,
            # and the next ones find it there: the layers go in a new random order for each query.
            for layer in (names[i] for i in order.permutation(len(names))):
                run = layers[layer]
                started = time.perf_counter()
                found = run(vector)
                seconds[layer].append(time.perf_counter() - started)
                failures[layer] += found != expected[layer]
    finally:
        client.close()
        if baseline is not None:
            baseline.close()
        raw.execute(f"DROP FUNCTION IF EXISTS {BEFORE_0015}(vector, text, integer, text, jsonb, jsonb)")
        raw.close()
    return {layer: {**latency_stats(seconds[layer]), "failures": failures[layer]} for layer in layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="vectors in the index")
    parser.add_argument("--queries", type=int, default=300, help="query vectors")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--baseline-tree", type=Path, default=None, metavar="DIR", help="another checkout to compare")
    parser.add_argument(
        "--from-search-filters", type=Path, default=None, metavar="DIR", help="a bench.search_filters --keep folder"
    )
    parser.add_argument("--shared-buffers", default="512MB")
    args = parser.parse_args()

    info = machine_info()
    warn_if_busy()
    print(f"CPU: {cpu_line(info)}", file=sys.stderr)
    home = short_tmp_dir("wsbao-")
    kept: Path | None = args.from_search_filters
    postgres = LocalPostgres((kept or home) / "pg", server_settings=server_settings(args.shared_buffers))
    model_dir = random_vit_b32()
    env = {"WITHSENSE_API_TORCH_THREADS": "1"}
    apis = [ApiServer(home, "", model_dir, label="overhead", extra_env=env)]
    if args.baseline_tree is not None:
        apis.append(ApiServer(home, "", model_dir, label="baseline", extra_env=env, root=args.baseline_tree.resolve()))
    results: dict[str, object] = {"machine": info, "cpu": cpu_line(info), "queries": args.queries}
    results["baseline_tree"] = str(args.baseline_tree) if args.baseline_tree else None
    results["load_average_at_start"] = os.getloadavg()
    postgres.start()
    try:
        with serving_index(postgres, kept, args.n, model_dir) as (spec, results["index"], vectors_n):
            api_key = create_api_key(postgres.url)
            for api in apis:
                api.database_url = postgres.url
                api.start(api_key)
            vectors = list(VectorSource(spec).draw(args.queries, stream=1))
            texts = query_texts(args.queries)
            baseline_url = apis[1].base_url if len(apis) > 1 else None
            figures = measure(
                postgres.url, postgres.dsn, apis[0].base_url, api_key, vectors, texts, args.k, baseline_url
            )
    finally:
        for api in apis:
            api.stop()
        postgres.stop()
        shutil.rmtree(home, ignore_errors=True)
    results["layers"], results["vectors"] = figures, vectors_n
    results["load_average_at_end"] = os.getloadavg()
    emit("api_overhead", results)
    print()
    print(f"CPU: {results['cpu']}")
    print(f"load average at start {results['load_average_at_start']}, at end {results['load_average_at_end']}")
    print(f"one vector search, 1 client, {vectors_n:,} vectors, k={args.k}, {args.queries} queries, layers interleaved")
    previous = 0.0
    rows = []
    for layer, stats in figures.items():
        added = round(stats["p50_ms"] - previous, 2) if layer in LAYERS and layer != "API key check" else ""
        rows.append([layer, stats["p50_ms"], stats["p95_ms"], added, stats["failures"]])
        if layer in LAYERS and layer != "API key check":
            previous = stats["p50_ms"]
    print_table(["layer", "p50 (ms)", "p95 (ms)", "p50 added (ms)", "failures"], rows)


if __name__ == "__main__":
    main()
