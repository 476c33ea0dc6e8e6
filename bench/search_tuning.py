"""What each search tuning choice buys: recall@10 and latency side by side, one choice at a time.

    .venv/bin/python -m bench.search_tuning               # 100,000 vectors (about 15-25 minutes)
    .venv/bin/python -m bench.search_tuning --n 50000 --only ef_search,iterative

Runs on a smaller N than bench.search_at_scale so that several HNSW builds fit in one run; the
trends carry over to 1M, the absolute figures do not (recall falls and latency grows with N).
Every variant is measured in the same run on the same data and queries, at 1 client:
- ef_search 40 / 100 / 200 / 400 (ALTER FUNCTION search_photos ... SET hnsw.ef_search, exactly what
  a migration would change), unfiltered and with the 1% filter;
- iterative scan off / strict_order / relaxed_order, for the 10% and 1% filters;
- hnsw.max_scan_tuples 10000 / 50000 / 200000 for the 1% filter;
- index m / ef_construction: (16, 64) as first migrated, (16, 128) as migrated since 0005, (24, 128), (32, 200):
  build time, size, recall and latency at ef_search 40 and 200;
- build parallelism: max_parallel_maintenance_workers 0 / 1 / 2 (the leader also works);
- halfvec vs vector: the same query over an index on embedding::vector(512) instead of halfvec(512).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pgvector import Vector

from bench.common import emit, machine_info, print_table, running_pid, short_tmp_dir, warn_if_busy
from bench.search_at_scale import CASES, prepare_database, server_settings
from bench.search_data import (
    MIGRATED_EF_CONSTRUCTION,
    MIGRATED_M,
    SEARCH_SQL,
    VectorSource,
    VectorSpec,
    build_index,
    connect,
    exact_top_k,
    explain_raw,
    photo_ids,
    plan_summary,
    prewarm,
    recall_at_k,
    run_clients,
    set_phase,
    vector_params,
    visible_mask,
)
from cli.local_services import LocalPostgres

FUNCTION = "search_photos(vector, integer, text)"
# What migration 0003 sets on the function; restored after each experiment.
MIGRATED = {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": "200", "hnsw.max_scan_tuples": "50000"}
EXPERIMENTS = ("ef_search", "iterative", "max_scan_tuples", "build_params", "build_workers", "halfvec_vs_vector")


def set_function(dsn: str, **settings: str) -> None:
    """ALTER FUNCTION search_photos SET ... for the given settings, the migrated values for the rest."""
    values = {**MIGRATED, **{key.replace("__", "."): value for key, value in settings.items()}}
    with connect(dsn) as conn:
        for key, value in values.items():
            conn.execute(f"ALTER FUNCTION {FUNCTION} SET {key} = '{value}'")


class Bench:
    """The loaded database, queries and exact answers for each filter case."""

    def __init__(
        self,
        dsn: str,
        model_id: int,
        corpus: np.ndarray,
        queries: np.ndarray,
        u: np.ndarray,
        index_of: dict[uuid.UUID, int],
        k: int,
    ) -> None:
        self.dsn, self.model_id, self.corpus, self.queries, self.u, self.index_of, self.k = (
            dsn,
            model_id,
            corpus,
            queries,
            u,
            index_of,
            k,
        )
        self.truth: dict[str, np.ndarray] = {}
        self.phase = "A"

    def truth_for(self, case: str) -> np.ndarray:
        if case not in self.truth:
            phase = CASES[case][0]
            self.truth[case] = exact_top_k(self.corpus, self.queries, visible_mask(self.u, case, phase), self.k)[0]
        return self.truth[case]

    def enter_phase(self, case: str, ids: Sequence[uuid.UUID]) -> None:
        phase = CASES[case][0]
        if phase != self.phase:
            with connect(self.dsn) as conn:
                set_phase(conn, ids, self.u, phase)
            self.phase = phase

    def measure(
        self,
        case: str,
        *,
        sql: str = SEARCH_SQL,
        params: Sequence[tuple[object, ...]] | None = None,
        setup: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        region = CASES[case][1]
        stats, results = run_clients(
            self.dsn, sql, params or vector_params(self.queries, self.k, region), 1, setup=setup
        )
        found = [[self.index_of[photo_id] for photo_id in row] for row in results]
        return {
            **recall_at_k(found, self.truth_for(case), self.k),
            "p50_ms": stats["p50_ms"],
            "p95_ms": stats["p95_ms"],
            "mean_rows": round(float(np.mean([len(f) for f in found])), 2),
        }


def raw_sql(model_id: int, dim: int, kind: str, minors_allowed: bool) -> str:
    """search_photos' inner query written out, with the vector cast as `kind` (halfvec or vector)."""
    return (
        "SELECT e.photo_id FROM photo_embeddings e JOIN photos p ON p.id = e.photo_id "
        f"WHERE e.model_id = {model_id} AND p.status = 'indexed' AND p.visibility = 'public' "
        f"AND p.moderation_status = 'approved' AND ({'true' if minors_allowed else 'false'} OR NOT p.depicts_minor "
        f"OR p.parental_consent) ORDER BY e.embedding::{kind}({dim}) <=> %s::{kind}({dim}) LIMIT %s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--only", default=",".join(EXPERIMENTS), help=f"comma-separated subset of {EXPERIMENTS}")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--maintenance-work-mem", default="2GB")
    args = parser.parse_args()
    only = set(args.only.split(","))
    args.m, args.ef_construction, args.build_workers = MIGRATED_M, MIGRATED_EF_CONSTRUCTION, 1

    info = machine_info()
    warn_if_busy()
    home = args.data_dir or short_tmp_dir(f"wst{args.n // 1000}k-")
    spec = VectorSpec(clusters=max(50, args.n // 1000))
    source = VectorSource(spec)
    postgres = LocalPostgres(home / "pg", server_settings=server_settings("1GB"))
    # Any: the JSON document of figures that emit() writes.
    out: dict[str, Any] = {"machine": info, "n": args.n, "queries": args.queries, "data_spec": spec.as_dict()}
    tables: list[tuple[str, list[str], list[list[object]]]] = []
    postgres.start()
    try:
        meta, corpus = prepare_database(args, postgres, home / "bench-meta.json", source)
        model_id = int(meta["model_id"])
        out["baseline_index"] = meta["index"]
        ids = photo_ids(args.n, spec.seed)
        index_of = {photo_id: i for i, photo_id in enumerate(ids)}
        u = np.load(home / "buckets.npy")
        queries = source.draw(args.queries, stream=1)
        bench = Bench(postgres.dsn, model_id, corpus, queries, u, index_of, args.k)
        with connect(postgres.dsn) as conn:
            set_phase(conn, ids, u, "A")
            prewarm(conn, model_id)

        def rebuild(
            *,
            workers: int,
            m: int = MIGRATED_M,
            ef_construction: int = MIGRATED_EF_CONSTRUCTION,
            use_function: bool = True,
        ) -> dict[str, Any]:
            with connect(postgres.dsn) as conn:
                built = build_index(
                    conn,
                    model_id,
                    postmaster_pid=running_pid(postgres),
                    m=m,
                    ef_construction=ef_construction,
                    workers=workers,
                    maintenance_work_mem=args.maintenance_work_mem,
                    use_function=use_function,
                )
                prewarm(conn, model_id)
            return built

        if "ef_search" in only:
            print("experiment: ef_search ...", file=sys.stderr, flush=True)
            rows, figures = [], {}
            for ef in (40, 100, 200, 400):
                set_function(postgres.dsn, hnsw__ef_search=str(ef))
                for case in ("none", "1pct"):
                    bench.enter_phase(case, ids)
                    figures[f"{case}_ef{ef}"] = r = bench.measure(case)
                    rows.append([ef, case, r["recall_at_10"], r["p50_ms"], r["p95_ms"], r["queries_short_of_k"]])
            bench.enter_phase("none", ids)
            out["ef_search"] = figures
            tables.append(
                (
                    "ef_search (relaxed_order)",
                    ["ef_search", "filter", "recall@10", "p50 ms", "p95 ms", "short of k"],
                    rows,
                )
            )

        if "iterative" in only:
            print("experiment: iterative ...", file=sys.stderr, flush=True)
            rows, figures = [], {}
            for mode in ("off", "strict_order", "relaxed_order"):
                set_function(postgres.dsn, hnsw__iterative_scan=mode)
                for case in ("10pct", "1pct"):
                    bench.enter_phase(case, ids)
                    figures[f"{case}_{mode}"] = r = bench.measure(case)
                    rows.append(
                        [
                            mode,
                            case,
                            r["recall_at_10"],
                            r["mean_rows"],
                            r["queries_short_of_k"],
                            r["p50_ms"],
                            r["p95_ms"],
                        ]
                    )
            bench.enter_phase("none", ids)
            out["iterative_scan"] = figures
            tables.append(
                (
                    "iterative scan (ef_search 200)",
                    ["mode", "filter", "recall@10", "mean rows", "short of k", "p50 ms", "p95 ms"],
                    rows,
                )
            )

        if "max_scan_tuples" in only:
            print("experiment: max_scan_tuples ...", file=sys.stderr, flush=True)
            rows, figures = [], {}
            bench.enter_phase("1pct", ids)
            for tuples in (10_000, 50_000, 200_000):
                set_function(postgres.dsn, hnsw__max_scan_tuples=str(tuples))
                figures[f"1pct_{tuples}"] = r = bench.measure("1pct")
                rows.append([tuples, r["recall_at_10"], r["queries_short_of_k"], r["p50_ms"], r["p95_ms"]])
            bench.enter_phase("none", ids)
            out["max_scan_tuples"] = figures
            tables.append(
                (
                    "hnsw.max_scan_tuples, 1% filter",
                    ["max_scan_tuples", "recall@10", "short of k", "p50 ms", "p95 ms"],
                    rows,
                )
            )
        set_function(postgres.dsn)

        if "build_workers" in only:
            print("experiment: build_workers ...", file=sys.stderr, flush=True)
            rows, figures = [], {}
            for workers in (0, 1, 2):
                built = rebuild(workers=workers)
                figures[f"workers_{workers}"] = built
                rows.append([workers, built["build_s"], built["index_size_mb"], built["peak_server_pss_mb"]])
            out["build_workers"] = figures
            tables.append(
                (
                    f"HNSW build parallelism (m={MIGRATED_M}, ef_construction={MIGRATED_EF_CONSTRUCTION})",
                    ["parallel workers", "build s", "size MB", "peak server PSS MB"],
                    rows,
                )
            )

        if "build_params" in only:
            print("experiment: build_params ...", file=sys.stderr, flush=True)
            rows, figures = [], {}
            for m, efc in ((16, 64), (16, 128), (24, 128), (32, 200)):
                built = rebuild(
                    m=m, ef_construction=efc, workers=1, use_function=(m, efc) == (MIGRATED_M, MIGRATED_EF_CONSTRUCTION)
                )
                entry: dict[str, Any] = {"build": built}
                for ef in (40, 200):
                    set_function(postgres.dsn, hnsw__ef_search=str(ef))
                    for case in ("none", "1pct"):
                        bench.enter_phase(case, ids)
                        entry[f"{case}_ef{ef}"] = r = bench.measure(case)
                        rows.append(
                            [
                                m,
                                efc,
                                built["build_s"],
                                built["index_size_mb"],
                                ef,
                                case,
                                r["recall_at_10"],
                                r["p50_ms"],
                                r["p95_ms"],
                            ]
                        )
                    bench.enter_phase("none", ids)
                figures[f"m{m}_efc{efc}"] = entry
            set_function(postgres.dsn)
            rebuild(workers=1)  # back to the migrated index
            out["build_params"] = figures
            tables.append(
                (
                    "index parameters",
                    [
                        "m",
                        "ef_construction",
                        "build s",
                        "size MB",
                        "ef_search",
                        "filter",
                        "recall@10",
                        "p50 ms",
                        "p95 ms",
                    ],
                    rows,
                )
            )

        if "halfvec_vs_vector" in only:
            print("experiment: halfvec_vs_vector ...", file=sys.stderr, flush=True)
            rows, figures = [], {}
            setup = (
                "SET hnsw.ef_search = 200",
                "SET hnsw.iterative_scan = relaxed_order",
                "SET hnsw.max_scan_tuples = 50000",
            )
            builds = {"halfvec": rebuild(workers=1)}
            with connect(postgres.dsn) as conn:
                builds["vector"] = build_index(
                    conn,
                    model_id,
                    postmaster_pid=running_pid(postgres),
                    workers=1,
                    maintenance_work_mem=args.maintenance_work_mem,
                    opclass="vector",
                )
                # build_index drops the other index first: put the halfvec one back so both exist.
                conn.execute("SELECT ensure_embedding_index(%s)", (model_id,))
                prewarm(conn, model_id)
                conn.execute(f"SELECT pg_prewarm('ix_photo_embeddings_hnsw_model_{model_id}_vector')")
            for kind in ("halfvec", "vector"):
                for case in ("none", "1pct"):
                    bench.enter_phase(case, ids)
                    region = CASES[case][1]
                    sql = raw_sql(model_id, spec.dim, kind, minors_allowed=region is not None)
                    params = [(Vector(q.astype(np.float32)), args.k) for q in queries]
                    figures[f"{kind}_{case}"] = r = bench.measure(case, sql=sql, params=params, setup=setup)
                    r["plan"] = plan_summary(explain_raw(postgres.dsn, sql, params[0], setup))
                    rows.append(
                        [
                            kind,
                            builds[kind]["build_s"],
                            builds[kind]["index_size_mb"],
                            case,
                            r["recall_at_10"],
                            r["p50_ms"],
                            r["p95_ms"],
                            r["plan"][:60],
                        ]
                    )
                bench.enter_phase("none", ids)
            with connect(postgres.dsn) as conn:
                conn.execute(f"DROP INDEX IF EXISTS ix_photo_embeddings_hnsw_model_{model_id}_vector")
            out["halfvec_vs_vector"] = {"builds": builds, **figures}
            tables.append(
                (
                    "halfvec vs vector index (same raw query, ef_search 200, relaxed)",
                    ["type", "build s", "size MB", "filter", "recall@10", "p50 ms", "p95 ms", "plan"],
                    rows,
                )
            )
    finally:
        postgres.stop()
        if args.data_dir is None:
            import shutil

            shutil.rmtree(home, ignore_errors=True)

    emit(f"search_tuning_{args.n}", out)
    for title, headers, rows in tables:
        print(f"\n{title}")
        print_table(headers, rows)
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
