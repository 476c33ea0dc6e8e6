"""photo_embeddings as 1, 4 and 8 hash partitions of photo id, side by side on one data set (issue 16, item 3).

    .venv/bin/python -m bench.partitions --n 100000                      # ~15 min on 2 shared cores
    .venv/bin/python -m bench.partitions --n 1000000 --partitions 1,4,8  # ~2 h: six HNSW builds of 1M

One database with N vectors (bench/search_data.py's data set and filters). For each partition count the table
is rebuilt with repartition_photo_embeddings() (the product's own function: copy, keys, triggers, one HNSW index
per partition; "build" is its whole time), and search_photos(q, 10, region) is measured at one client: recall@10
against an exact top 10 over the same visible rows, p50/p95. The unfiltered and 10% cases run in phase A, the 1%
case in phase B (bench/search_data.py); each layout is measured in the phase the table is in first, so each
layout costs one phase change (9% of the rows rewritten by the moderation, then VACUUM). The 1-partition build is
the loader's index build (the table is one partition already). Stops by itself; the data folder is removed unless
--keep.

    nice -n 10 .venv/bin/python -m bench.partitions --from-search-filters /work/bench1m/wspart1m \
        --maintenance-work-mem 4GB          # 1M: a COPY of a bench/search_filters.py --keep folder (it is rebuilt)

With --from-search-filters DIR the database is one that `bench/search_filters.py --n N --keep DIR` made (loaded
and its one-table HNSW index built, so neither is repeated; the 1-partition build time is the one that run
recorded). All its photos are visible and the region is the restricted default; the cases are unfiltered
(search_photos and search_photos_filtered) and one of its 1% metadata filters (--filter-case, default "tag 1%",
search_photos_filtered in semantic mode, which keeps its own choice of exact distances or the index scan, and the
index scan forced with `withsense.exact_scan = off`). The folder is left in the last layout of --partitions: run
it on a copy.
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
    SEARCH_SQL,
    VectorSource,
    VectorSpec,
    connect,
    exact_top_k,
    photo_ids,
    recall_at_k,
    run_clients,
    set_phase,
    vector_params,
    visible_mask,
)
from cli.local_services import LocalPostgres


def repartition(dsn: str, partitions: int, maintenance_work_mem: str, workers: int) -> dict[str, Any]:
    """Rebuild the table as `partitions` partitions; seconds, and the sizes of the table and its HNSW indexes."""
    with connect(dsn) as conn:
        conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {int(workers)}")
        started = time.perf_counter()
        conn.execute("SELECT repartition_photo_embeddings(%s)", (partitions,))
        seconds = time.perf_counter() - started
        conn.execute("VACUUM (ANALYZE) photo_embeddings")
        row = conn.execute(
            "SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'hnsw'"
        ).fetchone()
        hnsw_bytes = int(row[0]) if row else 0
        # pg_prewarm each partition and its index: a serving database is warm.
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        for (relation,) in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE (c.relname LIKE '%photo_embeddings%' "
            "OR c.relname IN ('photos', 'pk_photos')) AND c.relkind IN ('r', 'i')"
        ).fetchall():
            conn.execute("SELECT pg_prewarm(%s)", (relation,))
    return {"repartition_s": round(seconds, 1), "hnsw_mb": round(hnsw_bytes / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--partitions", default="1,4,8")
    parser.add_argument("--m", type=int, default=MIGRATED_M)
    parser.add_argument("--ef-construction", type=int, default=MIGRATED_EF_CONSTRUCTION)
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--maintenance-work-mem", default="2GB")
    parser.add_argument("--shared-buffers", default="2GB")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--from-search-filters",
        type=Path,
        default=None,
        metavar="DIR",
        help="a copy of a bench.search_filters --keep folder",
    )
    parser.add_argument("--filter-case", default="tag 1%", help="with --from-search-filters: its 1%% filter")
    parser.add_argument("--queries-1pct", type=int, default=50, help="with --from-search-filters: queries at 1%%")
    args = parser.parse_args()
    counts = [int(c) for c in args.partitions.split(",")]
    if args.from_search_filters is not None:
        run_from_search_filters(args, counts)
        return

    info = machine_info()
    warn_if_busy()
    home = args.data_dir or short_tmp_dir(f"wspart{args.n // 1000}k-")
    home.mkdir(parents=True, exist_ok=True)
    postgres = LocalPostgres(home / "pg", server_settings=server_settings(args.shared_buffers))
    spec = VectorSpec(clusters=max(50, args.n // 1000))
    source = VectorSource(spec)
    results: dict[str, Any] = {"machine": info, "n": args.n, "k": args.k, "queries": args.queries}
    postgres.start()
    try:
        meta, corpus = prepare_database(args, postgres, home / "bench-meta.json", source)
        results.update(load=meta["load"], index_one_table=meta["index"])
        ids = photo_ids(args.n, spec.seed)
        index_of: dict[uuid.UUID, int] = {photo_id: i for i, photo_id in enumerate(ids)}
        u = np.load(home / "buckets.npy")
        queries = source.draw(args.queries, stream=1)
        figures: dict[str, Any] = {}
        rows: list[list[object]] = []

        def measure(partitions: int, case: str, phase: str) -> None:
            entry = figures[str(partitions)]
            region = CASES[case][1]
            mask = visible_mask(u, case, phase)
            truth, _ = exact_top_k(corpus, queries, mask, args.k)
            params = vector_params(queries, args.k, region)
            run_clients(postgres.dsn, SEARCH_SQL, params, 1)  # warm
            stats, found = run_clients(postgres.dsn, SEARCH_SQL, params, 1)
            recall = recall_at_k([[index_of[p] for p in row] for row in found], truth, args.k)
            entry[case] = {**stats, **recall}
            print(f"{partitions} partitions, {case}: {entry[case]}", file=sys.stderr)
            built = entry["build"]
            figures_row = [recall["recall_at_10"], stats["p50_ms"], stats["p95_ms"], built["s"], built["hnsw_mb"]]
            rows.append([partitions, case, *figures_row])

        def switch(phase: str) -> None:
            with connect(postgres.dsn) as conn:
                set_phase(conn, ids, u, phase)
                conn.execute("VACUUM (ANALYZE) photo_embeddings")

        phase = "A"
        switch(phase)
        for number, partitions in enumerate(counts):
            built = repartition(postgres.dsn, partitions, args.maintenance_work_mem, args.build_workers)
            if number == 0 and built["repartition_s"] < 1:  # already this layout: the loader's build
                built["repartition_s"] = meta["index"].get("build_s")
            figures[str(partitions)] = {"build": {"s": built["repartition_s"], "hnsw_mb": built["hnsw_mb"]}}
            # Both phases on each layout, the one the table is in first: one phase change per layout.
            order = ["none", "10pct", "1pct"] if phase == "A" else ["1pct", "none", "10pct"]
            for case in order:
                wanted = CASES[case][0]
                if wanted != phase:
                    switch(wanted)
                    phase = wanted
                measure(partitions, case, phase)
        results["by_partitions"] = figures
        emit(f"partitions_{args.n}", results)
        print()
        print_table(["partitions", "filter", "recall@10", "p50 ms", "p95 ms", "build s", "HNSW MB"], rows)
    finally:
        postgres.stop()
        if not args.keep and args.data_dir is None:
            shutil.rmtree(home, ignore_errors=True)


def run_from_search_filters(args: argparse.Namespace, counts: list[int]) -> None:
    """Each layout of `counts` on a kept bench/search_filters.py database (see the module docstring)."""
    from bench.binary_index import FUNCTIONS, literal
    from bench.search_filters import Metadata, adopt_kept, filter_cases

    info = machine_info()
    warn_if_busy()
    home: Path = args.from_search_filters
    saved = json.loads((home / "loaded.json").read_text())  # read again by adopt_kept once the server runs
    n, seed, model_id = int(saved["n"]), int(saved["seed"]), int(saved["model_id"])
    source = VectorSource(VectorSpec(clusters=max(50, n // 1000), seed=seed))
    corpus = source.draw(n, stream=0)  # what bench/search_filters.py loaded
    queries = source.draw(args.queries, stream=1)
    index_of: dict[uuid.UUID, int] = {photo_id: i for i, photo_id in enumerate(photo_ids(n, seed))}
    filters, mask = filter_cases(Metadata(n, seed))[args.filter_case]
    few = min(args.queries, args.queries_1pct)
    # case: (filters as JSON, mask of the rows it may return, queries, setup statements, functions measured)
    cases: dict[str, tuple[str, np.ndarray | None, int, tuple[str, ...], tuple[str, ...]]] = {
        "none": ("{}", None, args.queries, (), ("search_photos", "search_photos_filtered")),
        "1pct": (json.dumps(filters), mask, few, (), ("search_photos_filtered",)),
        "1pct, index scan": (
            json.dumps(filters),
            mask,
            few,
            ("SET withsense.exact_scan = off",),
            ("search_photos_filtered",),
        ),
    }
    truths = {
        case: exact_top_k(corpus, queries[:count], kept, args.k)[0] for case, (_, kept, count, _, _) in cases.items()
    }
    del corpus
    results: dict[str, Any] = {
        "machine": info,
        "n": n,
        "k": args.k,
        "queries": args.queries,
        "database": f"a copy of bench/search_filters.py --keep (loaded {saved})",
        "filter_1pct": {"case": args.filter_case, "filters": filters, "share": round(float(mask.mean()), 4)},
    }
    postgres = LocalPostgres(home / "pg", server_settings=server_settings(args.shared_buffers))
    postgres.start()
    figures: dict[str, Any] = {}
    rows: list[list[object]] = []
    try:
        adopt_kept(postgres, home)
        with connect(postgres.dsn) as conn:
            conn.execute("SELECT set_embedding_index_kind(%s, 'halfvec')", (model_id,))
            current = int(
                fetch_value(
                    conn,
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = 'photo_embeddings'::regclass",
                )
            )
        for partitions in counts:
            print(f"{partitions} partitions from {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
            built = repartition(postgres.dsn, partitions, args.maintenance_work_mem, args.build_workers)
            if partitions == 1 and current == 0:  # one table already: the loader's build
                built["repartition_s"] = saved["load"].get("index_build_s")
            entry = figures.setdefault(str(partitions), {"build": built})
            for case, (filter_json, _, count, setup, functions) in cases.items():
                for function in functions:
                    statement = FUNCTIONS[function]
                    params = [
                        (literal(q), None) if function == "search_photos" else (literal(q), None, filter_json)
                        for q in queries[:count]
                    ]
                    run_clients(postgres.dsn, statement, params[: min(10, count)], 1, setup=setup)  # warm
                    stats, found = run_clients(postgres.dsn, statement, params, 1, setup=setup)
                    recall = recall_at_k([[index_of[p] for p in row] for row in found], truths[case], args.k)
                    entry.setdefault(case, {})[function] = {**stats, **recall}
                    rows.append(
                        [
                            partitions,
                            case,
                            function,
                            recall["recall_at_10"],
                            stats["p50_ms"],
                            stats["p95_ms"],
                            built["repartition_s"],
                            built["hnsw_mb"],
                        ]
                    )
                    print(rows[-1], time.strftime("%H:%M:%S"), file=sys.stderr, flush=True)
    finally:
        postgres.stop()
    results["by_partitions"] = figures
    emit(f"partitions_{n}_search_filters", results)
    print()
    print_table(["partitions", "filter", "function", "recall@10", "p50 ms", "p95 ms", "build s", "HNSW MB"], rows)


if __name__ == "__main__":
    main()
