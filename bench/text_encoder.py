"""The query text tower on torch vs ONNX Runtime fp32 vs int8 (WITHSENSE_TEXT_ENCODER), side by side in one run:
the tower alone per query, then `GET /v1/search` at 1 client with the cache off (every query embedded: cold).

    .venv/bin/python -m bench.text_encoder                          # 20,000 vectors, 200 distinct queries
    .venv/bin/python -m bench.text_encoder --queries 100 --skip-api  # the tower alone

What it does:
1. the tower: the random-weights ViT-B/32 (the real architecture: bench/common.py) loaded three times by
   ``ClipEmbedder`` with text_encoder torch, onnx and onnx-int8 (the exports made and parity-checked as an API
   makes them, in --onnx-dir); each distinct query embedded alone (batch 1, as a request does), the three
   encoders interleaved query by query so that they share the machine's load, at each torch/ORT thread count of
   --threads (an API uses WITHSENSE_API_TORCH_THREADS=1);
2. the API: one embedded Postgres holding N synthetic vectors under that model (bench/query_cache.py's index),
   three API processes (uvicorn api.app:app) with the query cache off and WITHSENSE_TEXT_ENCODER torch / onnx /
   onnx-int8, one client, keep-alive, loopback, k=10; each query to the three in turn, then its vector to
   `POST /v1/search/vector` (no text tower: the floor that the API and the SQL cost);
3. prints p50/p95 of each, the parity of the exports (min cosine against torch over the queries), the CPU with
   its vector extensions and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
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
from bench.search_data import UNRESTRICTED_REGION, VectorSource
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


def api_latency(
    urls: dict[str, str], api_key: str, texts: list[str], vectors: np.ndarray, k: int
) -> dict[str, dict[str, float]]:
    """One client per API; each query to the three APIs in turn, then a vector search (no text tower)."""
    cases = [*(f"text, {encoder}" for encoder in urls), "vector search (no text tower)"]
    seconds: dict[str, list[float]] = {case: [] for case in cases}
    failures = dict.fromkeys(cases, 0)
    headers = {"Authorization": f"Bearer {api_key}"}
    clients = {encoder: httpx.Client(base_url=url, headers=headers, timeout=60) for encoder, url in urls.items()}
    try:
        for client in clients.values():
            client.get("/healthz")  # the keep-alive connections open outside the measurement
        first = next(iter(clients.values()))
        for text, vector in zip(texts, vectors, strict=True):
            params: dict[str, str | int] = {"q": text, "k": k, "region": UNRESTRICTED_REGION}
            for encoder, client in clients.items():
                started = time.perf_counter()
                response = client.get("/v1/search", params=params)
                seconds[f"text, {encoder}"].append(time.perf_counter() - started)
                failures[f"text, {encoder}"] += response.status_code != 200 or len(response.json()["results"]) != k
            body = {"embedding": vector.tolist(), "k": k, "region": UNRESTRICTED_REGION}
            started = time.perf_counter()
            response = first.post("/v1/search/vector", json=body)
            seconds[cases[-1]].append(time.perf_counter() - started)
            failures[cases[-1]] += response.status_code != 200 or len(response.json()["results"]) != k
    finally:
        for client in clients.values():
            client.close()
    return {case: {**latency_stats(seconds[case]), "failures": failures[case]} for case in cases}


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
        postgres = LocalPostgres(home / "pg", server_settings=server_settings("512MB"))
        apis = {
            encoder: ApiServer(
                home,
                "",
                model_dir,
                label=encoder,
                extra_env={
                    "WITHSENSE_QUERY_CACHE_TTL_S": "0",  # cold: every query goes through the text tower
                    "WITHSENSE_API_TORCH_THREADS": "1",
                    "WITHSENSE_TEXT_ENCODER": encoder,
                    "WITHSENSE_ONNX_CACHE_DIR": str(args.onnx_dir),
                },
            )
            for encoder in ENCODERS
        }
        postgres.start()
        try:
            spec, results["index"] = load_search_index(postgres, args.n, model_dir)
            api_key = create_api_key(postgres.url)
            for api in apis.values():
                api.database_url = postgres.url
                api.start(api_key)
            fallbacks = {
                encoder: "is not used" in api.log_path.read_text(errors="replace") for encoder, api in apis.items()
            }
            vectors = VectorSource(spec).draw(len(texts), stream=1)
            api_figures = api_latency({e: a.base_url for e, a in apis.items()}, api_key, texts, vectors, args.k)
            results["api_1_client_cache_off"] = api_figures
            results["api_fell_back_to_torch"] = fallbacks
        finally:
            for api in apis.values():
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
        print(f"GET /v1/search, 1 client, cache off, {args.n:,} vectors, k={args.k}, API torch/ORT threads 1")
        print_table(
            ["case", "p50 (ms)", "p95 (ms)", "p99 (ms)", "failures"],
            [[case, s["p50_ms"], s["p95_ms"], s["p99_ms"], s["failures"]] for case, s in api_figures.items()],
        )


if __name__ == "__main__":
    main()
