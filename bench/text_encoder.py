"""The query text tower on torch vs ONNX Runtime fp32 vs int8 (WITHSENSE_TEXT_ENCODER), side by side in one run:
the tower alone per query, then `GET /v1/search` at 1 client with the cache off (every query embedded: cold).

    .venv/bin/python -m bench.text_encoder                          # 20,000 vectors, 200 distinct queries
    .venv/bin/python -m bench.text_encoder --queries 100 --skip-api  # the tower alone
    .venv/bin/python -m bench.text_encoder --threads 1 --from-search-filters /work/bench1m/wsf1m  # 1M vectors

What it does:
1. the tower: the random-weights ViT-B/32 (the real architecture: bench/common.py) loaded three times by
   ``ClipEmbedder`` with text_encoder torch, onnx and onnx-int8 (the exports made and parity-checked as an API
   makes them, in --onnx-dir); each distinct query embedded alone (batch 1, as a request does), the three
   encoders interleaved query by query so that they share the machine's load, at each torch/ORT thread count of
   --threads (an API uses WITHSENSE_API_TORCH_THREADS=1);
2. the API: one embedded Postgres holding N synthetic vectors under that model (bench/query_cache.py's index),
   three API processes (uvicorn api.app:app) with the query cache off and WITHSENSE_TEXT_ENCODER torch / onnx /
   onnx-int8, one client, keep-alive, loopback, k=10, and a fourth with onnx-int8 and the query cache on; each
   query to the three cache-less APIs in turn, then twice to the cached one (the second is the warm case: a hit),
   then its vector to `POST /v1/search/vector` (no text tower: the floor that the API and the SQL cost);
   with --from-search-filters DIR the database is a `bench/search_filters.py --keep DIR` one (1M vectors: no
   load, no build; its model row is renamed to the random ViT-B/32 for the run and named back after), with
   --shared-buffers and its index prewarmed, as a serving database is;
3. prints p50/p95 of each, the parity of the exports (min cosine against torch over the queries), the CPU with
   its vector extensions and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from bench.common import (
    MODEL_CACHE,
    emit,
    latency_stats,
    machine_info,
    print_table,
    random_vit_b32,
    short_tmp_dir,
    warn_if_busy,
)
from bench.query_cache import cpu_line, load_search_index, query_texts
from bench.search_at_scale import ApiServer, create_api_key, server_settings
from bench.search_data import UNRESTRICTED_REGION, VectorSource, VectorSpec, connect
from cli.local_services import LocalPostgres

ENCODERS = ("torch", "onnx", "onnx-int8")


def tower_latency(model_dir: Path, onnx_dir: Path, texts: list[str], threads: int) -> dict[str, object]:
    """Per-query latency of `ClipEmbedder.embed_texts([text])` with each encoder, interleaved; and the parity."""
    import torch

    from core.embedding import ClipEmbedder

    torch.set_num_threads(threads)  # the ONNX sessions take torch's thread count, as in an API
    embedders = {}
    loads = {}
    for encoder in ENCODERS:
        started = time.perf_counter()
        embedder = ClipEmbedder(str(model_dir), device="cpu", text_encoder=encoder, onnx_cache_dir=onnx_dir)
        embedder.load()
        loads[encoder] = round(time.perf_counter() - started, 1)
        embedders[encoder] = embedder
    for embedder in embedders.values():  # warm-up: first calls allocate
        for text in texts[:10]:
            embedder.embed_texts([text])
    seconds: dict[str, list[float]] = {encoder: [] for encoder in ENCODERS}
    vectors: dict[str, list[np.ndarray]] = {encoder: [] for encoder in ENCODERS}
    for text in texts:
        for encoder, embedder in embedders.items():
            started = time.perf_counter()
            vector = embedder.embed_texts([text])
            seconds[encoder].append(time.perf_counter() - started)
            vectors[encoder].append(vector[0])
    reference = np.stack(vectors["torch"])
    figures: dict[str, object] = {}
    for encoder, embedder in embedders.items():
        cosines = np.sum(reference * np.stack(vectors[encoder]), axis=1)
        figures[encoder] = {
            **latency_stats(seconds[encoder]),
            "used": embedder.text_encoder,
            "fallback": embedder.text_encoder_fallback,
            "min_cosine_vs_torch": round(float(cosines.min()), 6),
            "load_s": loads[encoder],
        }
    return figures


WARM = "text, onnx-int8, cache on, warm (a hit)"


def api_latency(
    urls: dict[str, str], cached_url: str, api_key: str, texts: list[str], vectors: np.ndarray, k: int
) -> dict[str, dict[str, float]]:
    """One client per API; each query to the three cache-less APIs in turn, then twice to the cached one (the
    second a hit), then a vector search (no text tower)."""
    cases = [*(f"text, {encoder}" for encoder in urls), WARM, "vector search (no text tower)"]
    seconds: dict[str, list[float]] = {case: [] for case in cases}
    failures = dict.fromkeys(cases, 0)
    headers = {"Authorization": f"Bearer {api_key}"}
    clients = {encoder: httpx.Client(base_url=url, headers=headers, timeout=60) for encoder, url in urls.items()}
    cached = httpx.Client(base_url=cached_url, headers=headers, timeout=60)
    try:
        for client in (*clients.values(), cached):
            client.get("/healthz")  # the keep-alive connections open outside the measurement
        first = next(iter(clients.values()))
        for text, vector in zip(texts, vectors, strict=True):
            params: dict[str, str | int] = {"q": text, "k": k, "region": UNRESTRICTED_REGION}
            for encoder, client in clients.items():
                started = time.perf_counter()
                response = client.get("/v1/search", params=params)
                seconds[f"text, {encoder}"].append(time.perf_counter() - started)
                failures[f"text, {encoder}"] += response.status_code != 200 or len(response.json()["results"]) != k
            cached.get("/v1/search", params=params)  # a miss: embedded and stored
            started = time.perf_counter()
            response = cached.get("/v1/search", params=params)
            seconds[WARM].append(time.perf_counter() - started)
            failures[WARM] += response.status_code != 200 or len(response.json()["results"]) != k
            body = {"embedding": vector.tolist(), "k": k, "region": UNRESTRICTED_REGION}
            started = time.perf_counter()
            response = first.post("/v1/search/vector", json=body)
            seconds[cases[-1]].append(time.perf_counter() - started)
            failures[cases[-1]] += response.status_code != 200 or len(response.json()["results"]) != k
    finally:
        for client in (*clients.values(), cached):
            client.close()
    return {case: {**latency_stats(seconds[case]), "failures": failures[case]} for case in cases}


def adopt_kept_index(
    postgres: LocalPostgres, home: Path, model_dir: Path
) -> tuple[VectorSpec, dict[str, object], tuple[object, ...]]:
    """Serve a kept bench/search_filters.py database (running `postgres`, folder `home`) with `model_dir`: its model
    row renamed to that model for the run (the API serves only the active model's vectors), its index prewarmed.
    Returns the vector spec it was drawn from, its figures, and the row's (name, revision, id) to put back."""
    import json

    from core.embedding import folder_content_hash
    from migrations.apply import upgrade

    saved = json.loads((home / "loaded.json").read_text())
    n, seed, model_id = int(saved["n"]), int(saved["seed"]), int(saved["model_id"])
    upgrade(postgres.url)
    with connect(postgres.dsn) as conn:
        row = conn.execute("SELECT name, revision FROM embedding_models WHERE id = %s", (model_id,)).fetchone()
        if row is None:
            raise SystemExit(f"{home}: no model row {model_id}")
        conn.execute(
            "UPDATE embedding_models SET name = %s, revision = %s WHERE id = %s",
            (str(model_dir), folder_content_hash(model_dir), model_id),
        )
        conn.execute("DELETE FROM embedding_text_models WHERE model_id = %s", (model_id,))
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        for relation in (f"ix_photo_embeddings_hnsw_model_{model_id}", "photo_embeddings", "photos"):
            conn.execute("SELECT pg_prewarm(%s)", (relation,))
    index = {
        "n": n,
        "database": f"bench/search_filters.py --keep {home}",
        "build_s": saved["load"].get("index_build_s"),
    }
    return VectorSpec(clusters=max(50, n // 1000), seed=seed), index, (row[0], row[1], model_id)


@contextmanager
def serving_index(
    postgres: LocalPostgres, kept: Path | None, n: int, model_dir: Path
) -> Iterator[tuple[VectorSpec, dict[str, object], int]]:
    """The index an API benchmark searches, in the running `postgres`: `n` synthetic vectors loaded under a model
    row named after `model_dir`, or the kept bench/search_filters.py database in folder `kept` adopted for the run
    (adopt_kept_index; its model row named back when the block ends). Yields the vector spec (for query vectors
    of the same mixture), the index's figures and how many vectors it holds."""
    if kept is None:
        spec, index = load_search_index(postgres, n, model_dir)
        yield spec, index, n
        return
    spec, index, restore = adopt_kept_index(postgres, kept, model_dir)
    try:
        yield spec, index, int(str(index["n"]))
    finally:
        with connect(postgres.dsn) as conn:
            conn.execute("UPDATE embedding_models SET name = %s, revision = %s WHERE id = %s", restore)


def print_towers(towers: dict[int, dict[str, object]], queries: int) -> None:
    rows = []
    for threads, figures in towers.items():
        for encoder, stats in figures.items():
            s: dict[str, object] = stats  # type: ignore[assignment]
            rows.append([threads, encoder, s["used"], s["p50_ms"], s["p95_ms"], s["min_cosine_vs_torch"]])
    print(f"text tower alone, random-weights ViT-B/32, batch 1, {queries} distinct queries, interleaved", flush=True)
    print_table(["threads", "encoder", "used", "p50 (ms)", "p95 (ms)", "min cosine vs torch"], rows)
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="vectors in the index")
    parser.add_argument("--queries", type=int, default=200, help="distinct text queries")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", default="1,2", help="torch/ORT thread counts for the tower alone")
    parser.add_argument("--onnx-dir", type=Path, default=MODEL_CACHE / "onnx-text", help="where exports are kept")
    parser.add_argument("--skip-api", action="store_true", help="measure the tower alone")
    parser.add_argument(
        "--from-search-filters", type=Path, default=None, metavar="DIR", help="a bench.search_filters --keep folder"
    )
    parser.add_argument("--shared-buffers", default="512MB")
    args = parser.parse_args()

    info = machine_info()
    warn_if_busy()
    print(f"CPU: {cpu_line(info)}", file=sys.stderr)
    model_dir = random_vit_b32()
    texts = query_texts(args.queries)
    results: dict[str, object] = {
        "machine": info,
        "cpu": cpu_line(info),
        "queries": args.queries,
        "load_average_at_start": os.getloadavg(),
    }
    towers = {}
    for threads in (int(t) for t in args.threads.split(",")):
        towers[threads] = tower_latency(model_dir, args.onnx_dir, texts, threads)
    results["tower_batch_1"] = towers
    print_towers(towers, args.queries)

    api_figures: dict[str, dict[str, float]] | None = None
    if not args.skip_api:
        home = short_tmp_dir("wsbte-")
        kept: Path | None = args.from_search_filters
        postgres = LocalPostgres((kept or home) / "pg", server_settings=server_settings(args.shared_buffers))
        settings = {
            "WITHSENSE_API_TORCH_THREADS": "1",
            "WITHSENSE_ONNX_CACHE_DIR": str(args.onnx_dir),
        }
        apis = {
            encoder: ApiServer(
                home,
                "",
                model_dir,
                label=encoder,
                # cold: every query goes through the text tower
                extra_env={**settings, "WITHSENSE_QUERY_CACHE_TTL_S": "0", "WITHSENSE_TEXT_ENCODER": encoder},
            )
            for encoder in ENCODERS
        }
        cached_api = ApiServer(
            home, "", model_dir, label="int8-cache", extra_env={**settings, "WITHSENSE_TEXT_ENCODER": "onnx-int8"}
        )
        postgres.start()
        try:
            with serving_index(postgres, kept, args.n, model_dir) as (spec, results["index"], results["vectors"]):
                api_key = create_api_key(postgres.url)
                for api in (*apis.values(), cached_api):
                    api.database_url = postgres.url
                    api.start(api_key)
                fallbacks = {
                    encoder: "is not used" in api.log_path.read_text(errors="replace") for encoder, api in apis.items()
                }
                vectors = VectorSource(spec).draw(len(texts), stream=1)
                api_figures = api_latency(
                    {e: a.base_url for e, a in apis.items()}, cached_api.base_url, api_key, texts, vectors, args.k
                )
                results["api_1_client_cache_off"] = api_figures
                results["api_fell_back_to_torch"] = fallbacks
        finally:
            for api in (*apis.values(), cached_api):
                api.stop()
            postgres.stop()
            shutil.rmtree(home, ignore_errors=True)
    results["load_average_at_end"] = os.getloadavg()

    emit("text_encoder", results)
    print()
    print(f"CPU: {results['cpu']}")
    print(f"load average at start {results['load_average_at_start']}, at end {results['load_average_at_end']}")
    print_towers(towers, args.queries)
    if api_figures is not None:
        print()
        vectors_n = results.get("vectors", args.n)
        print(f"GET /v1/search, 1 client, cache off unless named, {vectors_n:,} vectors, k={args.k}, API threads 1")
        print_table(
            ["case", "p50 (ms)", "p95 (ms)", "p99 (ms)", "failures"],
            [[case, s["p50_ms"], s["p95_ms"], s["p99_ms"], s["failures"]] for case, s in api_figures.items()],
        )


if __name__ == "__main__":
    main()
