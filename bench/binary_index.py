"""The product's two index kinds side by side (WITHSENSE_VECTOR_INDEX=halfvec|binary, issue 16 item 4).

    nice -n 10 .venv/bin/python -m bench.binary_index --n 100000
    nice -n 10 .venv/bin/python -m bench.binary_index --n 100000 --data-dir /tmp/wsbi100k --keep   # reuse a folder
    nice -n 19 .venv/bin/python -m bench.binary_index --from-search-filters /work/bench1m/wsf1m \
        --maintenance-work-mem 4GB --index-scan --halfvec-again   # 1M: a bench/search_filters.py --keep folder

Unlike bench/binary_quantize.py (raw SQL), this measures what the service runs: the migrated schema, the
model's indexes made by build_embedding_index() (the halfvec one by ensure_embedding_index() when loading), the
kind switched by set_embedding_index_kind(), and the real search_photos() and search_photos_filtered() (semantic
mode, no floor) at one client, k = 10, warm caches, for each kind in one run:
- halfvec (today's index);
- binary, centred (what `withsense embeddings index --kind binary` builds: the mean of the vectors subtracted
  before binary_quantize), re-ranking `withsense.binary_rerank` = each of --reranks;
- binary, not centred (the same index on the raw signs, binary_centre NULL), re-ranking --plain-rerank.
Filters: none (an unrestricted region) and the 1% of phase B (bench/search_data.py). recall@10 is against an
exact top 10 over the same visible rows. Index sizes and build times come from the same run. search_photos_filtered
keeps its own choice between exact distances and the index scan (the same for both kinds); search_photos always
scans the index.

With --from-search-filters DIR the database is one that `bench/search_filters.py --n N --keep DIR` made (its
halfvec index already built, so the load and the halfvec build are not repeated; the halfvec build time is the one
that run recorded): all its photos are visible, the region is the restricted default, the 1% case is one of its
1% metadata filters (--filter-case, default "tag 1%"), passed to search_photos_filtered (search_photos takes no
filters: it is measured unfiltered only), and only the centred bit index is built.
--index-scan adds the 1% case with `withsense.exact_scan = off` (the index scan forced);
--halfvec-again measures halfvec once more after the bit index (the pair under the same load, on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

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

FUNCTIONS = {
    "search_photos": "SELECT photo_id FROM search_photos(%s::vector, 10, %s)",
    "search_photos_filtered": (
        "SELECT photo_id FROM search_photos_filtered(%s::vector, NULL, 10, %s, %s::jsonb, "
        '\'{"mode": "semantic", "min_score": null}\')'
    ),
}


def size_mb(conn: Any, name: str) -> float:
    return round(int(fetch_value(conn, "SELECT pg_relation_size(%s::regclass)", (name,))) / 2**20, 1)


def literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6g}" for x in vector.astype(np.float32).tolist()) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--queries-1pct", type=int, default=50, help="queries at the 1%% filter (slower)")
    parser.add_argument("--reranks", default="100,200,400")
    parser.add_argument("--plain-rerank", type=int, default=200, help="re-ranking of the uncentred bit index")
    parser.add_argument("--m", type=int, default=MIGRATED_M)
    parser.add_argument("--ef-construction", type=int, default=MIGRATED_EF_CONSTRUCTION)
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--maintenance-work-mem", default="2GB")
    parser.add_argument("--shared-buffers", default="2GB")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--from-search-filters", type=Path, default=None, metavar="DIR", help="a bench.search_filters --keep folder"
    )
    parser.add_argument("--filter-case", default="tag 1%", help="with --from-search-filters: its 1%% filter")
    parser.add_argument("--index-scan", action="store_true", help="also the 1%% case with the index scan forced")
    parser.add_argument("--halfvec-again", action="store_true", help="halfvec measured again after the bit index")
    args = parser.parse_args()
    reranks = [int(r) for r in args.reranks.split(",")]
    if args.from_search_filters is not None:
        run_from_search_filters(args, reranks)
        return

    info = machine_info()
    warn_if_busy()
    home = args.data_dir or short_tmp_dir(f"wsbi{args.n // 1000}k-")
    home.mkdir(parents=True, exist_ok=True)
    postgres = LocalPostgres(home / "pg", server_settings=server_settings(args.shared_buffers))
    spec = VectorSpec(clusters=max(50, args.n // 1000))
    source = VectorSource(spec)
    results: dict[str, Any] = {"machine": info, "n": args.n, "queries": args.queries}
    postgres.start()
    try:
        meta, corpus = prepare_database(args, postgres, home / "bench-meta.json", source)
        from migrations.apply import upgrade

        upgrade(postgres.url)  # a reused folder migrated before 0011 gets it (nothing to do otherwise)
        from db import sql

        with connect(postgres.dsn) as conn:  # and a reused folder runs this tree's definitions (idempotent)
            for name in sql.names():
                conn.execute(sql.current(name)[1])
        model_id, dim = int(meta["model_id"]), spec.dim
        ids = photo_ids(args.n, spec.seed)
        index_of: dict[uuid.UUID, int] = {photo_id: i for i, photo_id in enumerate(ids)}
        u = np.load(home / "buckets.npy")
        queries = source.draw(args.queries, stream=1)
        halfvec_index = f"ix_photo_embeddings_hnsw_model_{model_id}"
        bq_index = f"ix_photo_embeddings_bq_model_{model_id}"
        sizes: dict[str, Any] = {"halfvec": {"build_s": meta["index"].get("build_s")}}
        with connect(postgres.dsn) as conn:
            conn.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
            conn.execute(f"SET max_parallel_maintenance_workers = {int(args.build_workers)}")
            if fetch_value(conn, "SELECT relkind::text FROM pg_class WHERE oid = 'photo_embeddings'::regclass") == "p":
                started = time.perf_counter()
                conn.execute("SELECT repartition_photo_embeddings(1)")
                sizes["halfvec"]["build_s"] = round(time.perf_counter() - started, 1)
            conn.execute("SELECT build_embedding_index(%s, 'halfvec')", (model_id,))
            conn.execute("SELECT set_embedding_index_kind(%s, 'halfvec')", (model_id,))
            conn.execute("SELECT drop_embedding_index(%s, 'binary')", (model_id,))
            set_phase(conn, ids, u, "B")
            conn.execute("VACUUM (ANALYZE) photo_embeddings")
            sizes["halfvec"]["size_mb"] = size_mb(conn, halfvec_index)
            sizes["heap_mb"] = size_mb(conn, "photo_embeddings")
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")

        def build_binary(centred: bool) -> dict[str, float]:
            with connect(postgres.dsn) as conn:
                conn.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
                conn.execute(f"SET max_parallel_maintenance_workers = {int(args.build_workers)}")
                conn.execute("SELECT set_embedding_index_kind(%s, 'halfvec')", (model_id,))
                conn.execute("SELECT drop_embedding_index(%s, 'binary')", (model_id,))
                started = time.perf_counter()
                if centred:  # the product's build: the centre, then the index on it
                    conn.execute("SELECT build_embedding_index(%s, 'binary')", (model_id,))
                else:  # the same index on the raw signs (no centre recorded: the functions use the raw form)
                    conn.execute("UPDATE embedding_models SET binary_centre = NULL WHERE id = %s", (model_id,))
                    conn.execute(
                        f"CREATE INDEX {bq_index} ON photo_embeddings USING hnsw "
                        f"((binary_quantize(embedding::halfvec({dim}))::bit({dim})) bit_hamming_ops) "
                        f"WITH (m = {args.m}, ef_construction = {args.ef_construction}) WHERE model_id = {model_id}"
                    )
                built = round(time.perf_counter() - started, 1)
                conn.execute("SELECT set_embedding_index_kind(%s, 'binary')", (model_id,))
                return {"build_s": built, "size_mb": size_mb(conn, bq_index)}

        def prewarm(*relations: str) -> None:
            with connect(postgres.dsn) as conn:
                for relation in relations:
                    conn.execute("SELECT pg_prewarm(%s)", (relation,))

        truths: dict[str, np.ndarray] = {}
        for case in ("none", "1pct"):
            truths[case], _ = exact_top_k(corpus, queries, visible_mask(u, case, "B"), 10)

        rows: list[list[object]] = []
        figures: dict[str, Any] = {}

        def measure(kind: str, rerank: int | None) -> None:
            label = kind if rerank is None else f"{kind}, re-rank {rerank}"
            setup = () if rerank is None else (f"SET withsense.binary_rerank = {rerank}",)
            for case in ("none", "1pct"):
                region = CASES[case][1]
                count = args.queries if case == "none" else min(args.queries, args.queries_1pct)
                for function, statement in FUNCTIONS.items():
                    params = [
                        (literal(q), region) if function == "search_photos" else (literal(q), region, "{}")
                        for q in queries[:count]
                    ]
                    stats, found = run_clients(postgres.dsn, statement, params, 1, setup=setup)
                    recall = recall_at_k([[index_of[p] for p in row] for row in found], truths[case][:count], 10)
                    figures.setdefault(case, {}).setdefault(function, {})[label] = {**stats, **recall}
                    rows.append([case, function, label, recall["recall_at_10"], stats["p50_ms"], stats["p95_ms"]])
                    print(rows[-1], file=sys.stderr, flush=True)

        prewarm(halfvec_index, "photo_embeddings")
        measure("halfvec", None)
        sizes["binary, centred"] = build_binary(centred=True)
        print(f"binary index (centred): {sizes['binary, centred']}", file=sys.stderr, flush=True)
        prewarm(bq_index, "photo_embeddings")
        for rerank in reranks:
            measure("binary, centred", rerank)
        sizes["binary, not centred"] = build_binary(centred=False)
        print(f"binary index (not centred): {sizes['binary, not centred']}", file=sys.stderr, flush=True)
        prewarm(bq_index, "photo_embeddings")
        measure("binary, not centred", args.plain_rerank)
        with connect(postgres.dsn) as conn:  # the database as it was: halfvec
            conn.execute("SELECT set_embedding_index_kind(%s, 'halfvec')", (model_id,))
            conn.execute("SELECT drop_embedding_index(%s, 'binary')", (model_id,))
        results["index"], results["sql"] = sizes, figures
        emit(f"binary_index_{args.n}", results)
        print()
        print_table(["filter", "function", "index", "recall@10", "p50 ms", "p95 ms"], rows)
        print()
        print_table(
            ["index", "size MB", "build s", "per vector KB"],
            [
                [name, s["size_mb"], s["build_s"], round(s["size_mb"] * 1024 / args.n, 2)]
                for name, s in sizes.items()
                if isinstance(s, dict)
            ],
        )
        print(f"heap {sizes['heap_mb']} MB")
    finally:
        postgres.stop()
        if not args.keep and args.data_dir is None:
            shutil.rmtree(home, ignore_errors=True)


def run_from_search_filters(args: argparse.Namespace, reranks: list[int]) -> None:
    """The same measurement on a kept bench/search_filters.py database (see the module docstring)."""
    from bench.search_filters import Metadata, filter_cases
    from db import sql
    from migrations.apply import upgrade

    info = machine_info()
    warn_if_busy()
    home: Path = args.from_search_filters
    saved = json.loads((home / "loaded.json").read_text())
    n, seed, model_id = int(saved["n"]), int(saved["seed"]), int(saved["model_id"])
    spec = VectorSpec(clusters=max(50, n // 1000), seed=seed)
    source = VectorSource(spec)
    corpus = source.draw(n, stream=0)  # what bench/search_filters.py loaded (float16, as halfvec stores it)
    queries = source.draw(args.queries, stream=1)
    ids = photo_ids(n, seed)
    index_of: dict[uuid.UUID, int] = {photo_id: i for i, photo_id in enumerate(ids)}
    filters, mask = filter_cases(Metadata(n, seed))[args.filter_case]
    print(f"{args.filter_case}: {filters}, {mask.mean():.2%} of {n}", file=sys.stderr, flush=True)
    # case: (region, filters, mask of the rows it may return, count of queries, setup statements)
    cases: dict[str, tuple[str | None, str, np.ndarray | None, int, tuple[str, ...]]] = {
        "none": (None, "{}", None, args.queries, ()),
        "1pct": (None, json.dumps(filters), mask, min(args.queries, args.queries_1pct), ()),
    }
    if args.index_scan:
        cases["1pct, index scan"] = (*cases["1pct"][:4], ("SET withsense.exact_scan = off",))
    truths = {case: exact_top_k(corpus, queries[:count], kept, 10)[0] for case, (_, _, kept, count, _) in cases.items()}
    del corpus
    results: dict[str, Any] = {
        "machine": info,
        "n": n,
        "queries": args.queries,
        "database": f"bench/search_filters.py --keep {home}",
        "filter_1pct": {"case": args.filter_case, "filters": filters, "share": round(float(mask.mean()), 4)},
    }
    halfvec_index = f"ix_photo_embeddings_hnsw_model_{model_id}"
    bq_index = f"ix_photo_embeddings_bq_model_{model_id}"
    postgres = LocalPostgres(home / "pg", server_settings=server_settings(args.shared_buffers))
    postgres.start()
    try:
        upgrade(postgres.url)  # to this tree's head (0011 onwards: nothing heavy)
        with connect(postgres.dsn) as conn:  # and this tree's definitions, as bench/search_filters.py applies them
            for name in sql.names():
                if name not in ("searchable_photos", "photo_search_document"):
                    conn.execute(sql.current(name)[1])
            if fetch_value(conn, "SELECT to_regclass(%s)::text", (halfvec_index,)) is None:
                raise SystemExit(f"{home}: no {halfvec_index}; run bench.search_filters --keep there first")
            conn.execute("SELECT set_embedding_index_kind(%s, 'halfvec')", (model_id,))
            conn.execute("SELECT drop_embedding_index(%s, 'binary')", (model_id,))
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            sizes: dict[str, Any] = {
                "halfvec": {"build_s": saved["load"].get("index_build_s"), "size_mb": size_mb(conn, halfvec_index)},
                "heap_mb": size_mb(conn, "photo_embeddings"),
            }

        def prewarm(*relations: str) -> None:
            with connect(postgres.dsn) as conn:
                for relation in relations:
                    conn.execute("SELECT pg_prewarm(%s)", (relation,))

        rows: list[list[object]] = []
        figures: dict[str, Any] = {}

        def measure(label: str, rerank: int | None) -> None:
            rerank_setup = () if rerank is None else (f"SET withsense.binary_rerank = {rerank}",)
            for case, (region, filter_json, _, count, case_setup) in cases.items():
                for function, statement in FUNCTIONS.items():
                    if function == "search_photos" and case != "none":
                        continue  # search_photos takes no metadata filters
                    params = [
                        (literal(q), region) if function == "search_photos" else (literal(q), region, filter_json)
                        for q in queries[:count]
                    ]
                    stats, found = run_clients(postgres.dsn, statement, params, 1, setup=rerank_setup + case_setup)
                    recall = recall_at_k([[index_of[p] for p in row] for row in found], truths[case], 10)
                    figures.setdefault(case, {}).setdefault(function, {})[label] = {**stats, **recall}
                    rows.append([case, function, label, recall["recall_at_10"], stats["p50_ms"], stats["p95_ms"]])
                    print(rows[-1], time.strftime("%H:%M:%S"), file=sys.stderr, flush=True)

        prewarm(halfvec_index, "photo_embeddings", "photos")
        measure("halfvec", None)
        with connect(postgres.dsn) as conn:
            conn.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
            conn.execute(f"SET max_parallel_maintenance_workers = {int(args.build_workers)}")
            print(f"building the bit index from {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
            started = time.perf_counter()
            conn.execute("SELECT build_embedding_index(%s, 'binary')", (model_id,))
            sizes["binary, centred"] = {
                "build_s": round(time.perf_counter() - started, 1),
                "size_mb": size_mb(conn, bq_index),
            }
            conn.execute("SELECT set_embedding_index_kind(%s, 'binary')", (model_id,))
        print(f"binary index (centred): {sizes['binary, centred']}", file=sys.stderr, flush=True)
        prewarm(bq_index, "photo_embeddings", "photos")
        for rerank in reranks:
            measure(f"binary, centred, re-rank {rerank}", rerank)
        with connect(postgres.dsn) as conn:  # the database as it was: halfvec (the bit index kept only if asked)
            conn.execute("SELECT set_embedding_index_kind(%s, 'halfvec')", (model_id,))
        if args.halfvec_again:
            prewarm(halfvec_index, "photo_embeddings", "photos")
            measure("halfvec (again)", None)
        with connect(postgres.dsn) as conn:
            conn.execute("SELECT drop_embedding_index(%s, 'binary')", (model_id,))
    finally:
        postgres.stop()
    results["index"], results["sql"] = sizes, figures
    emit(f"binary_index_{n}_search_filters", results)
    print()
    print_table(["filter", "function", "index", "recall@10", "p50 ms", "p95 ms"], rows)
    print()
    print_table(
        ["index", "size MB", "build s", "per vector KB"],
        [
            [name, s["size_mb"], s["build_s"], round(s["size_mb"] * 1024 / n, 3)]
            for name, s in sizes.items()
            if isinstance(s, dict)
        ],
    )
    print(f"heap {sizes['heap_mb']} MB")


if __name__ == "__main__":
    main()
