"""`GET /v1/search` at 1 client with and without the query-embedding cache, side by side in one run.

    .venv/bin/python -m bench.query_cache                      # 20,000 vectors, 300 distinct queries
    .venv/bin/python -m bench.query_cache --n 5000 --queries 200

What it does:
1. starts the embedded Postgres (its own folder under /tmp), runs the migrations, loads N synthetic CLIP-like
   vectors (bench/search_data.py) under a model row of the random-weights ViT-B/32 (the real architecture: the
   text tower costs what it costs with trained weights) and builds the HNSW index;
2. starts two API processes (uvicorn api.app:app, each with its own Valkey): today's configuration with the cache
   off (WITHSENSE_QUERY_CACHE_TTL_S=0), and one with the cache on;
3. sends Q distinct text queries, one client, keep-alive, loopback, interleaved query by query so that the
   three cases share the machine's load (it is shared): each text to the API without the cache, then to the API
   with the cache (cold: a miss, embedded and stored), then to it again (warm: a hit), and a query vector of the
   same mixture to `POST /v1/search/vector` (no text at all: the API and SQL cost that a warm cache leaves);
4. prints p50/p95 of each, the cache's hit/miss counters from /metrics, and the CPU with its vector extensions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import emit, latency_stats, machine_info, print_table, random_vit_b32, short_tmp_dir, warn_if_busy
from bench.search_at_scale import QUERY_SETTINGS, QUERY_SUBJECTS, ApiServer, create_api_key, server_settings
from bench.search_data import (
    UNRESTRICTED_REGION,
    VectorSource,
    VectorSpec,
    build_index,
    connect,
    create_model_row,
    load_embeddings,
    load_photos,
    photo_ids,
    row_buckets,
)
from cli.local_services import LocalPostgres

MODIFIERS = ["", "at dusk", "in the rain", "from above", "close up", "in black and white", "at night", "in winter"]


def query_texts(count: int) -> list[str]:
    """`count` distinct everyday queries (none asks for children: the policy would block those)."""
    texts = [
        " ".join(part for part in (subject, setting, modifier) if part)
        for modifier in MODIFIERS
        for subject in QUERY_SUBJECTS
        for setting in QUERY_SETTINGS
    ]
    if count > len(texts):
        raise SystemExit(f"at most {len(texts)} distinct queries")
    return texts[:count]


def cpu_line(info: dict[str, object]) -> str:
    flags = set(info.get("cpu_flags") or [])  # type: ignore[call-overload]

    def has(*names: str) -> str:
        return "yes" if any(name in flags for name in names) else "no"

    return (
        f"{info['cpu_model']}, {info['nproc']} cores; AVX2 {has('avx2')}, AVX-512 {has('avx512f')}, "
        f"AVX-512 VNNI {has('avx512_vnni')}, AVX-VNNI {has('avx_vnni')}, AMX {has('amx_tile')}"
    )


CASES = (
    "text, cache off (today)",
    "text, cache on, cold (a miss)",
    "text, cache on, warm (a hit)",
    "vector search (no text tower)",
)


def run_interleaved(
    plain_url: str, cached_url: str, api_key: str, texts: list[str], vectors: np.ndarray, k: int
) -> dict[str, object]:
    """One client per server; for each text: the cache-less API, then the cached API twice (miss, then hit), then
    a vector search. Latency of each request as the client sees it."""
    latencies: dict[str, list[float]] = {case: [] for case in CASES}
    failures = dict.fromkeys(CASES, 0)
    headers = {"Authorization": f"Bearer {api_key}"}
    with (
        httpx.Client(base_url=plain_url, headers=headers, timeout=60) as plain,
        httpx.Client(base_url=cached_url, headers=headers, timeout=60) as cached,
    ):
        plain.get("/healthz")  # open the keep-alive connections outside the measurement
        cached.get("/healthz")
        for text, vector in zip(texts, vectors, strict=True):
            params: dict[str, str | int] = {"q": text, "k": k, "region": UNRESTRICTED_REGION}
            body = {"embedding": vector.tolist(), "k": k, "region": UNRESTRICTED_REGION}
            for case, http in zip(CASES, (plain, cached, cached, plain), strict=True):
                started = time.perf_counter()
                if case.startswith("vector"):
                    response = http.post("/v1/search/vector", json=body)
                else:
                    response = http.get("/v1/search", params=params)
                latencies[case].append(time.perf_counter() - started)
                if response.status_code != 200 or len(response.json()["results"]) != k:
                    failures[case] += 1
    return {case: {**latency_stats(latencies[case]), "failures": failures[case]} for case in CASES}


def cache_counters(base_url: str) -> dict[str, float]:
    counters: dict[str, float] = {}
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        for name in ("hits", "misses", "errors"):
            if line.startswith(f"withsense_query_cache_{name}_total "):
                counters[name] = float(line.split()[1])
    return counters


def load_search_index(postgres: LocalPostgres, n: int, model_dir: Path) -> tuple[VectorSpec, dict[str, object]]:
    """Migrate the running `postgres`, load `n` synthetic vectors under a model row named after `model_dir` (the API
    serves search only with the active model's vectors) with their photos, and build the HNSW index; returns the
    vector spec (for query vectors of the same mixture) and the index build's figures."""
    from core.embedding import folder_content_hash
    from migrations.apply import upgrade

    upgrade(postgres.url)
    spec = VectorSpec(clusters=max(50, n // 1000))
    corpus = VectorSource(spec).draw(n, stream=0)
    ids = photo_ids(n, spec.seed)
    with connect(postgres.dsn) as conn:
        model_id = create_model_row(conn, spec.dim)
        conn.execute(
            "UPDATE embedding_models SET name = %s, revision = %s WHERE id = %s",
            (str(model_dir), folder_content_hash(model_dir), model_id),
        )
        load_photos(conn, ids, row_buckets(n, spec.seed))
        load_embeddings(conn, model_id, ids, corpus)
        conn.execute("VACUUM (ANALYZE) photos")
        conn.execute("VACUUM (ANALYZE) photo_embeddings")
        index: dict[str, object] = build_index(conn, model_id, postmaster_pid=postgres.process.pid)  # type: ignore[union-attr]
    return spec, index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="vectors in the index")
    parser.add_argument("--queries", type=int, default=300, help="distinct text queries per case")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--threads", default="1", help="torch threads of each API process (WITHSENSE_API_TORCH_THREADS)"
    )
    args = parser.parse_args()

    info = machine_info()
    warn_if_busy()
    print(f"CPU: {cpu_line(info)}", file=sys.stderr)
    home = short_tmp_dir("wsbqc-")
    postgres = LocalPostgres(home / "pg", server_settings=server_settings("512MB"))
    model_dir = random_vit_b32()
    texts = query_texts(args.queries)
    apis = {
        "cache off (today)": ApiServer(
            home,
            "",
            model_dir,
            label="nocache",
            extra_env={"WITHSENSE_QUERY_CACHE_TTL_S": "0", "WITHSENSE_API_TORCH_THREADS": args.threads},
        ),
        "cache on": ApiServer(
            home, "", model_dir, label="cache", extra_env={"WITHSENSE_API_TORCH_THREADS": args.threads}
        ),
    }
    results: dict[str, object] = {"machine": info, "cpu": cpu_line(info), "n": args.n, "queries": args.queries}
    postgres.start()
    try:
        spec, results["index"] = load_search_index(postgres, args.n, model_dir)
        api_key = create_api_key(postgres.url)
        for api in apis.values():
            api.database_url = postgres.url
            api.start(api_key)
        cached = apis["cache on"]
        before = cache_counters(cached.base_url)
        vectors = VectorSource(spec).draw(len(texts), stream=1)  # query vectors of the corpus's mixture
        figures = run_interleaved(apis["cache off (today)"].base_url, cached.base_url, api_key, texts, vectors, args.k)
        after = cache_counters(cached.base_url)
        results["api_1_client"] = figures
        results["cache_counters"] = {
            name: after.get(name, 0) - before.get(name, 0) for name in ("hits", "misses", "errors")
        }
    finally:
        for api in apis.values():
            api.stop()
        postgres.stop()
        shutil.rmtree(home, ignore_errors=True)

    emit("query_cache", results)
    print()
    print(f"CPU: {results['cpu']}")
    print(f"index: {args.n:,} vectors, {args.queries} distinct queries, k={args.k}, 1 client, loopback")
    rows = [
        [case, stats["p50_ms"], stats["p95_ms"], stats["p99_ms"], stats["failures"]]  # type: ignore[index]
        for case, stats in figures.items()
    ]
    print_table(["GET /v1/search, 1 client", "p50 (ms)", "p95 (ms)", "p99 (ms)", "failures"], rows)
    counters = results["cache_counters"]
    print(f"cache counters of the cached API during the run (/metrics): {counters}")


if __name__ == "__main__":
    main()
