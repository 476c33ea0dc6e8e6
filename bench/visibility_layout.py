"""The visibility rule on the embedding rows against today's layout, side by side on one database (issue 16, item 5).

    .venv/bin/python -m bench.visibility_layout --n 200000          # load + build ~10 min on 2 shared cores
    .venv/bin/python -m bench.visibility_layout --n 1000000 --maintenance-work-mem 4GB
    .venv/bin/python -m bench.visibility_layout --n 1000000 --maintenance-work-mem 4GB --load-phase B  # ~35 min

One database, one HNSW index, the same queries. Two versions of each search function run against it:
- "heap" (today until migration 0009): the scan joins each graph candidate to `photos` and tests
  photo_is_visible() there: search_photos and search_photos_filtered as revision 0008 left them, installed under
  the names search_photos_heap / search_photos_filtered_heap;
- "flags, graph only" (0009-0013): the scan tests the flag on the embedding row it reads (visible_restricted /
  visible_unrestricted, kept by triggers) and joins photos only for the k rows it returns; today's functions
  with `withsense.exact_scan = off`;
- "flags" (0014, today): the same, except that where the planner's statistics say few rows are visible the
  distances are computed exactly over the rows of the flag's own index (ix_photo_embeddings_<flag>).
Filters are the ones bench/search_at_scale.py uses (the minors rule of a restricted region, see
bench/search_data.py): none (98.5% of rows visible), 10% and 1%. recall@10 is against an exact top 10 over the
same visible rows; latency is one client, k = 10, warm caches, the three alternated (heap, graph only, flags, and
again), each figure from the second pass. Stops by itself; the data folder is removed unless --keep.

--load-phase B loads the photos already moderated as phase B has them (9% pending review) before the vectors
are loaded and indexed, and measures the 1% case and the unrestricted region in that phase only: no rows are
rewritten (the phase change costs ~30 min at 1M on 2 cores: every moved photo rewrites its embedding row and
its graph entry), so a 1M run is the load, one build and the queries. The 10% case needs phase A: not measured.
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

from bench.common import emit, machine_info, print_table, running_pid, short_tmp_dir, warn_if_busy
from bench.search_at_scale import CASES, prepare_database, server_settings
from bench.search_data import (
    MIGRATED_EF_CONSTRUCTION,
    MIGRATED_M,
    VectorSource,
    VectorSpec,
    connect,
    exact_top_k,
    photo_ids,
    prewarm,
    recall_at_k,
    run_clients,
    set_phase,
    vector_params,
    visible_mask,
)
from cli.local_services import LocalPostgres
from db import sql

VARIANTS: dict[str, dict[str, str]] = {
    "search_photos": {
        "heap": "SELECT photo_id FROM search_photos_heap(%s, %s, %s)",
        "flags": "SELECT photo_id FROM search_photos(%s, %s, %s)",
    },
    "search_photos_filtered": {
        "heap": "SELECT photo_id FROM search_photos_filtered_heap(%s, NULL, %s, %s, '{}', '{\"mode\": \"semantic\"}')",
        "flags": "SELECT photo_id FROM search_photos_filtered(%s, NULL, %s, %s, '{}', '{\"mode\": \"semantic\"}')",
    },
}


# "flags, graph only": today's functions with the exact path of migration 0014 switched off (what 0009-0013 ran);
# "flags": today's functions as they choose (exact distances where few rows are visible).
GRAPH_ONLY = "flags, graph only"
LAYOUTS = ("heap", GRAPH_ONLY, "flags")


def install_heap_variants(dsn: str) -> None:
    """Today's functions (revision 0008) under other names, on the same tables and index."""
    with connect(dsn) as conn:
        for name in VARIANTS:
            statement = sql.definition(name, "0008").replace(f"{name}(", f"{name}_heap(")
            conn.execute(statement)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--m", type=int, default=MIGRATED_M)
    parser.add_argument("--ef-construction", type=int, default=MIGRATED_EF_CONSTRUCTION)
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--maintenance-work-mem", default="2GB")
    parser.add_argument("--shared-buffers", default="2GB")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--load-phase", choices=("A", "B"), default="A", help="B: see the module docstring")
    args = parser.parse_args()

    info = machine_info()
    warn_if_busy()
    home = args.data_dir or short_tmp_dir(f"wsvis{args.n // 1000}k-")
    home.mkdir(parents=True, exist_ok=True)
    postgres = LocalPostgres(home / "pg", server_settings=server_settings(args.shared_buffers))
    spec = VectorSpec(clusters=max(50, args.n // 1000))
    source = VectorSource(spec)
    results: dict[str, Any] = {"machine": info, "n": args.n, "k": args.k, "queries": args.queries}
    postgres.start()
    try:
        meta, corpus = prepare_database(args, postgres, home / "bench-meta.json", source)
        results.update(load=meta["load"], index=meta["index"], sizes_mb=meta["sizes_mb"])
        model_id = int(meta["model_id"])
        install_heap_variants(postgres.dsn)
        ids = photo_ids(args.n, spec.seed)
        index_of: dict[uuid.UUID, int] = {photo_id: i for i, photo_id in enumerate(ids)}
        u = np.load(home / "buckets.npy")
        queries = source.draw(args.queries, stream=1)
        phase = args.load_phase
        with connect(postgres.dsn) as conn:
            if phase == "A":
                results["phase_A_update_s"] = round(set_phase(conn, ids, u, "A"), 1)
            conn.execute("VACUUM (ANALYZE) photo_embeddings")
            prewarm(conn, model_id)
        rows: list[list[object]] = []
        figures: dict[str, Any] = {}
        # (case, phase, region): phase B's loads measure the 1% case and the unrestricted region in phase B only.
        plan = [(case, case_phase, region) for case, (case_phase, region) in CASES.items()]
        if phase == "B":
            plan = [("1pct", "B", CASES["1pct"][1]), ("none", "B", CASES["none"][1])]
        for case, case_phase, region in plan:
            if case_phase != phase:
                with connect(postgres.dsn) as conn:
                    # The moderation of 9% of the photos: the trigger rewrites their embedding rows, then VACUUM
                    # (as autovacuum would) clears the old versions from the heap and the graph.
                    started = time.perf_counter()
                    set_phase(conn, ids, u, case_phase)
                    conn.execute("VACUUM (ANALYZE) photo_embeddings")
                    results[f"phase_{case_phase}_update_and_vacuum_s"] = round(time.perf_counter() - started, 1)
                    prewarm(conn, model_id)
                phase = case_phase
            mask = visible_mask(u, case, phase)
            truth, _ = exact_top_k(corpus, queries, mask, args.k)
            params = vector_params(queries, args.k, region)
            print(f"{case}: {mask.mean():.2%} of rows visible", file=sys.stderr)
            for function, variants in VARIANTS.items():
                measured: dict[str, Any] = {}
                for layout in LAYOUTS * 2:  # alternated: all see the same load; the second pass is kept
                    statement = variants["heap" if layout == "heap" else "flags"]
                    setup = ("SET withsense.exact_scan = 'off'",) if layout == GRAPH_ONLY else ()
                    stats, found = run_clients(postgres.dsn, statement, params, 1, setup=setup)
                    recall = recall_at_k([[index_of[p] for p in row] for row in found], truth, args.k)
                    measured[layout] = {**stats, **recall}
                figures.setdefault(case if phase == "A" else f"{case} (phase B)", {})[function] = measured
                for layout in LAYOUTS:
                    m = measured[layout]
                    rows.append(
                        [case, f"{mask.mean():.1%}", function, layout, m["recall_at_10"], m["p50_ms"], m["p95_ms"]]
                    )
        results["sql"] = figures
        with connect(postgres.dsn) as conn:
            size = conn.execute("SELECT pg_relation_size('photo_embeddings')").fetchone()
            results["photo_embeddings_heap_mb_after"] = round(int(size[0]) / 2**20) if size else None
        results["postmaster_pid"] = running_pid(postgres)
        results["load_phase"] = args.load_phase
        emit(f"visibility_layout_{args.n}" + ("" if args.load_phase == "A" else "_phase_b"), results)
        print()
        print_table(["filter", "visible", "function", "layout", "recall@10", "p50 ms", "p95 ms"], rows)
    finally:
        postgres.stop()
        if not args.keep and args.data_dir is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
