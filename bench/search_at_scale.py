"""Search latency and recall at scale, through the real schema and the real search_photos().

    .venv/bin/python -m bench.search_at_scale                 # 1,000,000 vectors (load + build ~30-60 min)
    .venv/bin/python -m bench.search_at_scale --n 100000      # smaller, same figures
    .venv/bin/python -m bench.search_at_scale --data-dir /tmp/wsb1m --keep   # keep the database to rerun

What it does:
1. starts the embedded Postgres (its own data folder under /tmp), runs the Alembic migrations;
2. inserts a 512-d embedding_models row, COPYs N photo rows with moderation flags and N synthetic
   CLIP-like vectors (binary COPY, pgvector's halfvec dumper), then builds the HNSW index with
   ensure_embedding_index() (build time, index size, peak backend memory);
3. measures `SELECT * FROM search_photos(q, 10, region)` at 1 and 8 concurrent clients for three
   filters (no filter, one keeping 10% of rows, one keeping 1%), with recall@10 against an exact
   scan of the same halfvec values restricted to the same visible rows;
4. runs uvicorn api.app:app on that database with the random-weights ViT-B/32 and measures
   `GET /v1/search` end to end (text encoder included) at 1 and 8 concurrent clients.

Filters go through search_photos unchanged: the 10% and 1% cases are the minors rule of a
restricted region (see bench/search_data.py for the row buckets).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    ROOT,
    emit,
    fetch_value,
    latency_stats,
    machine_info,
    print_table,
    random_vit_b32,
    running_pid,
    short_tmp_dir,
    warn_if_busy,
)
from bench.search_data import (
    MIGRATED_EF_CONSTRUCTION,
    MIGRATED_M,
    RESTRICTED_REGION,
    SEARCH_SQL,
    UNRESTRICTED_REGION,
    VectorSource,
    VectorSpec,
    build_index,
    connect,
    create_model_row,
    data_stats,
    exact_top_k,
    explain_search,
    load_embeddings,
    load_photos,
    photo_ids,
    plan_summary,
    prewarm,
    recall_at_k,
    row_buckets,
    run_clients,
    set_phase,
    vector_params,
    visible_mask,
)
from cli.local_services import LocalPostgres

CASES: dict[str, tuple[str, str | None]] = {
    # case: (phase, region)
    "none": ("A", UNRESTRICTED_REGION),
    "10pct": ("A", RESTRICTED_REGION),
    "1pct": ("B", RESTRICTED_REGION),
}

# Everyday stock-photo queries; none of them asks for children (the policy would block those).
QUERY_SUBJECTS = [
    "a dog",
    "a black cat",
    "two horses",
    "a red car",
    "an old bicycle",
    "a sailing boat",
    "a lighthouse",
    "a mountain lake",
    "a city street",
    "a bowl of ramen",
    "a woman with an umbrella",
    "a man cooking",
    "a wooden bridge",
    "a snowy forest",
    "a desert road",
    "fresh bread",
    "a cup of coffee",
    "a yellow taxi",
    "an eagle",
    "wind turbines",
]
QUERY_SETTINGS = [
    "at sunset",
    "in the rain",
    "on the grass",
    "at night",
    "in winter",
    "from above",
    "close up",
    "in black and white",
    "on a beach",
    "in autumn",
]


def server_settings(shared_buffers: str) -> dict[str, str]:
    return {
        "shared_buffers": shared_buffers,
        "effective_cache_size": "8GB",
        "max_parallel_maintenance_workers": "2",
        "max_wal_size": "8GB",
        "checkpoint_timeout": "30min",
        # Load speed only (a throwaway database); nothing here changes how a search runs.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "jit": "off",
    }


def prepare_database(
    args: argparse.Namespace, postgres: LocalPostgres, meta_path: Path, source: VectorSource
) -> tuple[dict[str, Any], np.ndarray]:
    """Load and index N vectors, or reuse a folder that already holds exactly this data set.

    The metadata is a JSON document (kept in ``meta_path``), hence Any.
    """
    from migrations.apply import upgrade

    wanted = {"n": args.n, "spec": source.spec.as_dict(), "m": args.m, "ef_construction": args.ef_construction}
    if getattr(args, "load_phase", "A") != "A":
        wanted["load_phase"] = args.load_phase
    corpus_path = meta_path.with_name("corpus.npy")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        same_data = all(meta.get(key) == wanted.get(key) for key in ("n", "spec", "load_phase"))
        if not same_data or not corpus_path.is_file():
            raise SystemExit(f"{meta_path.parent} holds a different data set; choose another --data-dir")
        print(f"reusing the loaded database in {meta_path.parent}", file=sys.stderr)
        if (meta.get("m"), meta.get("ef_construction")) != (args.m, args.ef_construction):
            # Same rows, other index parameters: rebuild only the index.
            print(
                f"rebuilding the HNSW index with m={args.m}, ef_construction={args.ef_construction} ...",
                file=sys.stderr,
            )
            with connect(postgres.dsn) as conn:
                meta["index"] = build_index(
                    conn,
                    int(meta["model_id"]),
                    postmaster_pid=running_pid(postgres),
                    m=args.m,
                    ef_construction=args.ef_construction,
                    workers=args.build_workers,
                    maintenance_work_mem=args.maintenance_work_mem,
                )
            meta.update(m=args.m, ef_construction=args.ef_construction)
            meta_path.write_text(json.dumps(meta, indent=2))
        return meta, np.load(corpus_path, mmap_mode="r")

    upgrade(postgres.url)
    started = time.perf_counter()
    corpus = source.draw(args.n, stream=0)
    generate_s = time.perf_counter() - started
    ids = photo_ids(args.n, source.spec.seed)
    u = row_buckets(args.n, source.spec.seed)
    with connect(postgres.dsn) as conn:
        model_id = create_model_row(conn, source.spec.dim)
        photos_s = load_photos(conn, ids, u)
        print(f"photos loaded in {photos_s:.0f}s", file=sys.stderr)
        if getattr(args, "load_phase", "A") == "B":  # moderated before the vectors exist: no rows to rewrite
            set_phase(conn, ids, u, "B")
        embeddings_s = load_embeddings(
            conn, model_id, ids, corpus, progress=lambda i: print(f"  embeddings: {i:,}", file=sys.stderr)
        )
        print(f"embeddings loaded in {embeddings_s:.0f}s", file=sys.stderr)
        analyze_started = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) photos")
        conn.execute("VACUUM (ANALYZE) photo_embeddings")
        analyze_s = time.perf_counter() - analyze_started
        print("building the HNSW index ...", file=sys.stderr)
        index = build_index(
            conn,
            model_id,
            postmaster_pid=running_pid(postgres),
            m=args.m,
            ef_construction=args.ef_construction,
            workers=args.build_workers,
            maintenance_work_mem=args.maintenance_work_mem,
        )
        sizes = conn.execute(
            "SELECT pg_total_relation_size('photos'), pg_total_relation_size('photo_embeddings'), "
            "pg_relation_size('photo_embeddings'), pg_database_size(current_database())"
        ).fetchone()
    assert sizes is not None  # a SELECT without FROM returns exactly one row
    meta = {
        **wanted,
        "model_id": model_id,
        "load": {
            "generate_vectors_s": round(generate_s, 1),
            "copy_photos_s": round(photos_s, 1),
            "copy_embeddings_s": round(embeddings_s, 1),
            "copy_embeddings_rows_per_s": round(args.n / embeddings_s),
            "vacuum_analyze_s": round(analyze_s, 1),
        },
        "index": index,
        "sizes_mb": {
            "photos_total": round(sizes[0] / 2**20),
            "photo_embeddings_total": round(sizes[1] / 2**20),
            "photo_embeddings_heap": round(sizes[2] / 2**20),
            "database": round(sizes[3] / 2**20),
        },
    }
    np.save(corpus_path, corpus)
    np.save(meta_path.with_name("buckets.npy"), u)
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta, corpus


def sql_latency(
    dsn: str,
    queries: np.ndarray,
    truth: np.ndarray,
    index_of: dict[uuid.UUID, int],
    region: str | None,
    clients: list[int],
    k: int,
    rounds_8: int,
) -> dict[str, Any]:
    """Latency of search_photos at each client count, and recall@k of client 0's answers (JSON figures)."""
    out: dict[str, Any] = {}
    params = vector_params(queries, k, region)
    for count in clients:
        stats, results = run_clients(dsn, SEARCH_SQL, params, count, rounds=1 if count == 1 else rounds_8)
        out[f"clients_{count}"] = stats
        if count == clients[0]:
            found = [[index_of[photo_id] for photo_id in row] for row in results]
            out.update(recall_at_k(found, truth, k))
            out["mean_rows_returned"] = round(float(np.mean([len(r) for r in found])), 2)
    return out


# The API ---------------------------------------------------------------------------------------


class ApiServer:
    """uvicorn api.app:app on loopback, against the benchmark database, with a Valkey for the rate limiter."""

    def __init__(
        self,
        home: Path,
        database_url: str,
        model: Path,
        *,
        label: str = "default",
        extra_env: dict[str, str] | None = None,
        root: Path = ROOT,
    ) -> None:
        from cli.local_services import LocalRedis, free_port

        self.root = root  # the checkout whose code it runs (another one: a side-by-side baseline)
        self.home = home / f"api-{label}"
        self.extra_env = extra_env or {}
        self.redis = LocalRedis(self.home / "redis")
        self.port = free_port()
        self.database_url = database_url
        self.model = model
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.home / "api.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, api_key: str, timeout: float = 180.0) -> None:
        import httpx

        self.home.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        env = {key: value for key, value in os.environ.items() if not key.startswith("WITHSENSE_")}
        env.update(
            {
                "PYTHONPATH": str(self.root),
                "WITHSENSE_HOME": str(self.home / "data"),
                "WITHSENSE_DATABASE_URL": self.database_url,
                "WITHSENSE_BROKER_URL": self.redis.url,
                "WITHSENSE_MODEL": str(self.model),
                "WITHSENSE_DEVICE": "cpu",
                # The limiter's Redis round trip stays in the measurement; its limit must not throttle the run.
                "WITHSENSE_RATE_LIMIT_SEARCH": "1000000/second",
            }
        )
        env.update(self.extra_env)
        log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {api_key}"}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                # The first search waits for the model load; it answers 200 once everything is up.
                response = httpx.get(
                    f"{self.base_url}/v1/search", params={"q": "warm up", "k": 10}, headers=headers, timeout=120
                )
                if response.status_code == 200:
                    return
                raise RuntimeError(f"warm-up search answered {response.status_code}: {response.text[:500]}")
            except httpx.TransportError:
                time.sleep(0.5)
        raise TimeoutError(f"the API did not answer in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.redis.stop()


def create_api_key(database_url: str) -> str:
    from sqlalchemy.orm import Session

    from db.api_keys import create_key
    from db.engine import build_engine

    engine = build_engine(database_url, pool_size=1)
    try:
        with Session(engine) as session:
            _, key = create_key(session, "bench", ["search"])
            session.commit()
        return key
    finally:
        engine.dispose()


def api_latency(
    base_url: str, api_key: str, region: str | None, clients: list[int], requests_1: int, requests_8: int, k: int
) -> dict[str, Any]:
    """GET /v1/search from `clients` concurrent httpx clients (keep-alive, loopback); JSON figures."""
    import httpx

    texts = [f"{subject} {setting}" for subject in QUERY_SUBJECTS for setting in QUERY_SETTINGS]
    out: dict[str, Any] = {}
    for count in clients:
        total = requests_1 if count == 1 else requests_8
        per_client = max(1, total // count)
        latencies: list[list[float]] = [[] for _ in range(count)]
        failures: list[str] = []
        barrier = threading.Barrier(count)

        def client(
            number: int,
            per_client: int = per_client,
            latencies: list[list[float]] = latencies,
            barrier: threading.Barrier = barrier,
            failures: list[str] = failures,
        ) -> None:
            params_base: dict[str, str | int] = {"k": k}
            if region:
                params_base["region"] = region
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as http:
                http.get("/v1/search", params={**params_base, "q": texts[number]})
                barrier.wait()
                for i in range(per_client):
                    q = texts[(number * 37 + i) % len(texts)]
                    started = time.perf_counter()
                    response = http.get("/v1/search", params={**params_base, "q": q})
                    latencies[number].append(time.perf_counter() - started)
                    if response.status_code != 200 or len(response.json()["results"]) != k:
                        failures.append(f"{response.status_code}: {response.text[:200]}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        stats: dict[str, Any] = dict(latency_stats([x for per in latencies for x in per]))
        stats["throughput_qps"] = round(stats["n"] / wall, 1)
        stats["failures"] = len(failures)
        if failures:
            stats["first_failure"] = failures[0]
        out[f"clients_{count}"] = stats
    return out


# Main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors to load (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=200, help="distinct query vectors per case")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--rounds-8", type=int, default=1, help="passes over the queries per client at 8 clients")
    parser.add_argument("--m", type=int, default=MIGRATED_M)
    parser.add_argument("--ef-construction", type=int, default=MIGRATED_EF_CONSTRUCTION)
    parser.add_argument(
        "--build-workers",
        type=int,
        default=2,
        help="max_parallel_maintenance_workers for the build (the leader works too; 2 built fastest in search_tuning)",
    )
    parser.add_argument("--maintenance-work-mem", default="4GB")
    parser.add_argument("--shared-buffers", default="2GB")
    parser.add_argument("--data-dir", type=Path, default=None, help="reused when it already holds this data set")
    parser.add_argument("--keep", action="store_true", help="keep the database folder afterwards")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--api-requests-1", type=int, default=200)
    parser.add_argument("--api-requests-8", type=int, default=400)
    parser.add_argument(
        "--api-threads",
        default="default,1",
        help="torch intra-op threads of the API process, one server each: 'default' (all cores) "
        "and/or a number (OMP_NUM_THREADS)",
    )
    parser.add_argument("--name", default=None, help="results file name (default search_at_scale_<n>)")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    info = machine_info()
    warn_if_busy()
    home = args.data_dir or short_tmp_dir(f"wsb{args.n // 1000}k-")
    home.mkdir(parents=True, exist_ok=True)
    postgres = LocalPostgres(home / "pg", server_settings=server_settings(args.shared_buffers))
    spec = VectorSpec(clusters=max(50, args.n // 1000))
    source = VectorSource(spec)
    results: dict[str, Any] = {
        "machine": info,
        "n": args.n,
        "k": args.k,
        "queries": args.queries,
        "data_spec": spec.as_dict(),
        "server_settings": server_settings(args.shared_buffers),
    }
    apis: dict[str, ApiServer] = {}
    postgres.start()
    try:
        meta, corpus = prepare_database(args, postgres, home / "bench-meta.json", source)
        results["load"] = meta["load"]
        results["index"] = meta["index"]
        results["sizes_mb"] = meta["sizes_mb"]
        model_id = int(meta["model_id"])
        ids = photo_ids(args.n, spec.seed)
        index_of = {photo_id: i for i, photo_id in enumerate(ids)}
        u = np.load(home / "buckets.npy")
        queries = source.draw(args.queries, stream=1)
        results["data_stats"] = data_stats(corpus, queries)

        with connect(postgres.dsn) as conn:
            set_phase(conn, ids, u, "A")
            prewarm(conn, model_id)
            results["function_settings"] = fetch_value(
                conn, "SELECT proconfig FROM pg_proc WHERE proname = 'search_photos'"
            )

        sql: dict[str, dict[str, Any]] = {}
        plans: dict[str, str] = {}
        api_results: dict[str, dict[str, Any]] = {}
        if not args.skip_api:
            model_dir = random_vit_b32()
            for label in args.api_threads.split(","):
                extra = {} if label == "default" else {"OMP_NUM_THREADS": label, "MKL_NUM_THREADS": label}
                name = "threads-default" if label == "default" else f"threads-{label}"
                apis[name] = ApiServer(home, postgres.url, model_dir, label=name, extra_env=extra)
            api_key = create_api_key(postgres.url)
        phase = "A"
        for case, (case_phase, region) in CASES.items():
            if case_phase != phase:
                with connect(postgres.dsn) as conn:
                    results[f"phase_{case_phase}_update_s"] = round(set_phase(conn, ids, u, case_phase), 1)
                phase = case_phase
            mask = visible_mask(u, case, phase)
            truth, _ = exact_top_k(corpus, queries, mask, args.k)
            print(f"SQL {case} ({mask.mean():.2%} of rows visible) ...", file=sys.stderr)
            sql[case] = {
                "visible_share": round(float(mask.mean()), 4),
                "region": region,
                **sql_latency(postgres.dsn, queries, truth, index_of, region, clients, args.k, args.rounds_8),
            }
            plans[case] = explain_search(postgres.dsn, queries[0], args.k, region)
            sql[case]["plan"] = plan_summary(plans[case])
            for name, api in apis.items():
                if api.process is None:
                    api.start(api_key)
                print(f"API {case} ({name}) ...", file=sys.stderr)
                api_results.setdefault(case, {})[name] = api_latency(
                    api.base_url, api_key, region, clients, args.api_requests_1, args.api_requests_8, args.k
                )
        with connect(postgres.dsn) as conn:
            set_phase(conn, ids, u, "A")  # leave the database as loaded, so a rerun measures the same thing
        results["sql"] = sql
        results["api"] = api_results
        results["plans"] = plans
    finally:
        for api in apis.values():
            api.stop()
        postgres.stop()
        if not args.keep and args.data_dir is None:
            import shutil

            shutil.rmtree(home, ignore_errors=True)

    name = args.name or f"search_at_scale_{args.n}"
    emit(name, results)
    print()
    headers = [
        "case",
        "visible",
        "recall@10",
        "short",
        "SQL p50/p95/p99 1c (ms)",
        "SQL p50/p95/p99 8c (ms)",
        "SQL qps 8c",
    ]
    rows = []
    for case, figures in sql.items():
        rows.append(
            [
                case,
                f"{figures['visible_share']:.1%}",
                figures["recall_at_10"],
                figures["queries_short_of_k"],
                _pcts(figures.get("clients_1")),
                _pcts(figures.get("clients_8")),
                figures.get("clients_8", {}).get("throughput_qps", "-"),
            ]
        )
    print_table(headers, rows)
    if api_results:
        print()
        rows = []
        for case, per_server in api_results.items():
            for name, figures in per_server.items():
                rows.append(
                    [
                        case,
                        name,
                        _pcts(figures.get("clients_1")),
                        _pcts(figures.get("clients_8")),
                        figures.get("clients_8", {}).get("throughput_qps", "-"),
                        figures["clients_1"].get("failures", 0) + figures.get("clients_8", {}).get("failures", 0),
                    ]
                )
        print_table(
            ["case", "API process", "API p50/p95/p99 1c (ms)", "API p50/p95/p99 8c (ms)", "API qps 8c", "failures"],
            rows,
        )
    index = results["index"]
    print(
        f"\nindex: {index['build_s']}s build, {index['index_size_mb']} MB, peak backend RSS "
        f"{index['peak_backend_rss_mb']} MB ({index['parallel_workers']} parallel workers + leader)"
    )


def _pcts(stats: dict[str, float] | None) -> str:
    if not stats or not stats.get("n"):
        return "-"
    return f"{stats['p50_ms']:.1f} / {stats['p95_ms']:.1f} / {stats['p99_ms']:.1f}"


if __name__ == "__main__":
    main()
