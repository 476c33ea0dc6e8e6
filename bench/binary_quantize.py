"""A binary-quantised HNSW index with re-ranking against today's halfvec index, on one data set (issue 16, item 4).

    .venv/bin/python -m bench.binary_quantize --n 100000
    .venv/bin/python -m bench.binary_quantize --n 100000 --data-dir /tmp/wspart --keep   # a loaded folder reused

Beside the model's halfvec HNSW index (m 16, ef_construction 128, as migrated) it builds
`hnsw ((binary_quantize(embedding::halfvec(D))::bit(D)) bit_hamming_ops)` on the same rows, and measures, at one
client, k = 10, warm caches, the visibility rule on the embedding rows (migration 0009) in both:
- halfvec: `ORDER BY embedding::halfvec(D) <=> q LIMIT 10` (what search_photos runs);
- binary + re-rank: the nearest `candidates` by Hamming distance from the bit index (iterative scan), then
  ordered by the exact halfvec cosine, top 10.
recall@10 is against an exact top 10 over the same visible rows; index sizes and build times come from the same
run. The filters are bench/search_data.py's (none, and the 1% of phase B). Stops by itself; the data folder is
removed unless --keep.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pgvector import HalfVector

from bench.common import emit, fetch_value, machine_info, print_table, short_tmp_dir, warn_if_busy
from bench.search_at_scale import CASES, prepare_database, server_settings
from bench.search_data import (
    MIGRATED_EF_CONSTRUCTION,
    MIGRATED_M,
    VectorSource,
    VectorSpec,
    connect,
    exact_top_k,
    photo_ids,
    recall_at_k,
    run_clients,
    set_phase,
    visible_mask,
)
from cli.local_services import LocalPostgres

SETUP = ("SET hnsw.iterative_scan = 'relaxed_order'", "SET hnsw.max_scan_tuples = 1000000", "SET enable_seqscan = off")


def halfvec_sql(dim: int, model_id: int, flag: str) -> str:
    return (
        f"SELECT photo_id FROM (SELECT e.photo_id, e.embedding::halfvec({dim}) <=> %s AS d FROM photo_embeddings e "
        f"WHERE e.model_id = {model_id} AND e.{flag} ORDER BY e.embedding::halfvec({dim}) <=> %s LIMIT 10) nn "
        "ORDER BY d"
    )


def binary_sql(dim: int, model_id: int, flag: str, candidates: int) -> str:
    return (
        "SELECT photo_id FROM (SELECT e.photo_id, e.embedding FROM photo_embeddings e "
        f"WHERE e.model_id = {model_id} AND e.{flag} "
        f"ORDER BY binary_quantize(e.embedding::halfvec({dim}))::bit({dim}) <~> binary_quantize(%s)::bit({dim}) "
        f"LIMIT {candidates}) c ORDER BY c.embedding::halfvec({dim}) <=> %s LIMIT 10"
    )


def index_size_mb(conn: Any, name: str) -> float:
    row = conn.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()
    return round(int(row[0]) / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--candidates", default="40,100,200")
    parser.add_argument("--m", type=int, default=MIGRATED_M)
    parser.add_argument("--ef-construction", type=int, default=MIGRATED_EF_CONSTRUCTION)
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--maintenance-work-mem", default="2GB")
    parser.add_argument("--shared-buffers", default="2GB")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    candidate_counts = [int(c) for c in args.candidates.split(",")]

    info = machine_info()
    warn_if_busy()
    home = args.data_dir or short_tmp_dir(f"wsbq{args.n // 1000}k-")
    home.mkdir(parents=True, exist_ok=True)
    postgres = LocalPostgres(home / "pg", server_settings=server_settings(args.shared_buffers))
    spec = VectorSpec(clusters=max(50, args.n // 1000))
    source = VectorSource(spec)
    results: dict[str, Any] = {"machine": info, "n": args.n, "queries": args.queries}
    postgres.start()
    try:
        meta, corpus = prepare_database(args, postgres, home / "bench-meta.json", source)
        model_id, dim = int(meta["model_id"]), spec.dim
        ids = photo_ids(args.n, spec.seed)
        index_of: dict[uuid.UUID, int] = {photo_id: i for i, photo_id in enumerate(ids)}
        u = np.load(home / "buckets.npy")
        queries = source.draw(args.queries, stream=1)
        bq_index = f"ix_bench_bq_model_{model_id}"
        halfvec_build_s = meta["index"].get("build_s")
        with connect(postgres.dsn) as conn:
            conn.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
            conn.execute(f"SET max_parallel_maintenance_workers = {int(args.build_workers)}")
            # Today's layout, one table (a folder left by bench.partitions may hold partitions): rebuilt if not.
            started = time.perf_counter()
            if fetch_value(conn, "SELECT relkind::text FROM pg_class WHERE oid = 'photo_embeddings'::regclass") == "p":
                conn.execute("SELECT repartition_photo_embeddings(1)")
                halfvec_build_s = round(time.perf_counter() - started, 1)  # copy + keys + the index build
            set_phase(conn, ids, u, "B")
            conn.execute("VACUUM (ANALYZE) photo_embeddings")
            halfvec_index = f"ix_photo_embeddings_hnsw_model_{model_id}"
            conn.execute(f"DROP INDEX IF EXISTS {bq_index}")
            started = time.perf_counter()
            conn.execute(
                f"CREATE INDEX {bq_index} ON photo_embeddings USING hnsw "
                f"((binary_quantize(embedding::halfvec({dim}))::bit({dim})) bit_hamming_ops) "
                f"WITH (m = {args.m}, ef_construction = {args.ef_construction}) WHERE model_id = {model_id}"
            )
            results["index"] = {
                "halfvec": {"build_s": halfvec_build_s, "size_mb": index_size_mb(conn, halfvec_index)},
                "binary": {
                    "build_s": round(time.perf_counter() - started, 1),
                    "size_mb": index_size_mb(conn, bq_index),
                },
                "heap_mb": index_size_mb(conn, "photo_embeddings"),
            }
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            for relation in (halfvec_index, bq_index, "photo_embeddings"):
                conn.execute("SELECT pg_prewarm(%s)", (relation,))
        print(f"indexes: {results['index']}", file=sys.stderr)
        rows: list[list[object]] = []
        figures: dict[str, Any] = {}
        for case in ("none", "1pct"):
            region = CASES[case][1]
            flag = "visible_unrestricted" if region == "ZZ" else "visible_restricted"
            mask = visible_mask(u, case, "B")
            truth, _ = exact_top_k(corpus, queries, mask, 10)
            params = [(HalfVector(q.astype(np.float32)),) * 2 for q in queries]  # the query twice: %s, %s
            variants = {"halfvec": (halfvec_sql(dim, model_id, flag), 200)}
            for count in candidate_counts:
                # ef_search at least the candidates wanted: the bit index's list is the re-ranking pool.
                variants[f"binary, re-rank {count}"] = (binary_sql(dim, model_id, flag, count), max(200, count))
            for name, (statement, ef) in variants.items():
                setup = (*SETUP, f"SET hnsw.ef_search = {ef}")
                run_clients(postgres.dsn, statement, params, 1, setup=setup)  # warm
                stats, found = run_clients(postgres.dsn, statement, params, 1, setup=setup)
                recall = recall_at_k([[index_of[p] for p in row] for row in found], truth, 10)
                figures.setdefault(case, {})[name] = {**stats, **recall}
                rows.append(
                    [case, f"{mask.mean():.1%}", name, recall["recall_at_10"], stats["p50_ms"], stats["p95_ms"]]
                )
                print(rows[-1], file=sys.stderr)
        results["sql"] = figures
        with connect(postgres.dsn) as conn:
            conn.execute(f"DROP INDEX IF EXISTS {bq_index}")
        emit(f"binary_quantize_{args.n}", results)
        print()
        print_table(["filter", "visible", "index", "recall@10", "p50 ms", "p95 ms"], rows)
        idx = results["index"]
        print(
            f"\nhalfvec index {idx['halfvec']['size_mb']} MB (build {idx['halfvec']['build_s']} s); "
            f"binary index {idx['binary']['size_mb']} MB (build {idx['binary']['build_s']} s); "
            f"heap {idx['heap_mb']} MB"
        )
    finally:
        postgres.stop()
        if not args.keep and args.data_dir is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
