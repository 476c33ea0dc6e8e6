"""Synthetic CLIP-like vectors, loading them into the real schema, exact ground truth, and timed queries.

Shared by ``bench/search_at_scale.py`` (1M vectors, the production settings) and
``bench/search_tuning.py`` (smaller N, one tuning choice at a time).

The vectors imitate what makes CLIP image embeddings easy or hard for HNSW, rather than uniform
noise (which has no neighbourhood structure and makes every ANN index look bad):
- they sit in a cone around one mean direction (random image pairs of CLIP ViT-B/32 have a
  cosine around 0.4-0.5, the "modality gap" literature);
- they form clusters (subjects), each point a centre plus anisotropic noise;
- variance decays like a power law over principal directions, so the data is 512-d but most of
  the variance lives in ~100-150 directions.
Queries are fresh draws from the same mixture. `data_stats` prints what the draw looks like.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector, Vector
from pgvector.psycopg import register_vector

from bench.common import fetch_value, latency_stats

# Row "buckets": u ~ U(0,1) per row decides its flags, so each filter keeps an exact share of rows.
#   u <  0.01          approved, not a minor  -> visible everywhere (the 1% filter keeps these)
#   0.01 <= u < 0.10   approved, not a minor  -> visible everywhere (the 10% filter keeps u < 0.10)
#                      (phase B moves these to pending_review, leaving 1% visible in restricted regions)
#   0.10 <= u < 0.985  approved, depicts a minor without consent -> hidden only in restricted regions
#   u >= 0.985         hidden everywhere: pending review 0.8%, rejected 0.4%, private 0.3%
# The minors rule is the only region-dependent predicate inside search_photos, so it is how one
# loaded table yields several selectivities through the function unchanged.
UNRESTRICTED_REGION = "ZZ"  # a region_rules row with minors_restricted = false
RESTRICTED_REGION: str | None = None  # the '*' default: restricted


@dataclass(frozen=True)
class VectorSpec:
    """Parameters of the synthetic mixture (see the module docstring)."""

    dim: int = 512
    clusters: int = 1000
    decay: float = 0.5  # variance of principal direction i ~ i^-(2*decay)
    spread: float = 0.8  # within-cluster noise relative to the spread of centres
    cone: float = 1.2  # weight of the shared mean direction
    seed: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class VectorSource:
    """Draws vectors from one fixed mixture: the same centres for the corpus and the queries."""

    def __init__(self, spec: VectorSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 1])
        scale = np.arange(1, spec.dim + 1, dtype=np.float32) ** (-spec.decay)
        self.scale = (scale / np.sqrt((scale**2).sum())).astype(np.float32)  # E|scale*z|^2 = 1
        self.basis = np.linalg.qr(rng.standard_normal((spec.dim, spec.dim)))[0].astype(np.float32)
        mean = rng.standard_normal(spec.dim).astype(np.float32)
        mean /= np.linalg.norm(mean)
        centres = (rng.standard_normal((spec.clusters, spec.dim)).astype(np.float32) * self.scale) @ self.basis.T
        self.centres = centres + spec.cone * mean

    def draw(self, n: int, stream: int, chunk: int = 100_000) -> np.ndarray:
        """`n` unit vectors as float16 (what halfvec stores); `stream` picks an independent sample."""
        rng = np.random.default_rng([self.spec.seed, 2, stream])
        out = np.empty((n, self.spec.dim), dtype=np.float16)
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            labels = rng.integers(self.spec.clusters, size=size)
            noise = (rng.standard_normal((size, self.spec.dim)).astype(np.float32) * self.scale) @ self.basis.T
            x = self.centres[labels] + self.spec.spread * noise
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start : start + size] = x.astype(np.float16)
        return out


def data_stats(corpus: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """How CLIP-like the draw is: neighbour and random-pair cosines, and how many principal
    directions hold 50% / 90% of the variance."""
    sample = corpus[: min(len(corpus), 20_000)].astype(np.float32)
    rng = np.random.default_rng(0)
    a, b = rng.choice(len(sample), (2, 2000))
    random_pair = float(np.mean(np.sum(sample[a] * sample[b], axis=1)))
    eigen = np.sort(np.linalg.eigvalsh(np.cov(sample.T)))[::-1]
    cumulative = np.cumsum(eigen) / eigen.sum()
    top = exact_top_k(corpus, queries[:50], None, 10)[1]
    return {
        "random_pair_cosine": round(random_pair, 3),
        "query_nn1_cosine": round(float(top[:, 0].mean()), 3),
        "query_nn10_cosine": round(float(top[:, 9].mean()), 3),
        "pcs_for_50pct_variance": int(np.searchsorted(cumulative, 0.5) + 1),
        "pcs_for_90pct_variance": int(np.searchsorted(cumulative, 0.9) + 1),
    }


def exact_top_k(
    corpus: np.ndarray, queries: np.ndarray, mask: np.ndarray | None, k: int, chunk: int = 131_072
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k (indices, scores) among rows where `mask` is true, computed in the
    halfvec-rounded values Postgres stores, so the only difference from SQL is the index."""
    q = queries.astype(np.float32)
    best_idx = np.full((len(q), k), -1, dtype=np.int64)
    best_val = np.full((len(q), k), -np.inf, dtype=np.float32)
    for start in range(0, len(corpus), chunk):
        block = corpus[start : start + chunk].astype(np.float32)
        scores = q @ block.T
        if mask is not None:
            scores[:, ~mask[start : start + chunk]] = -np.inf
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        vals = np.take_along_axis(scores, part, axis=1)
        merged_idx = np.concatenate([best_idx, part + start], axis=1)
        merged_val = np.concatenate([best_val, vals], axis=1)
        order = np.argsort(-merged_val, axis=1)[:, :k]
        best_idx = np.take_along_axis(merged_idx, order, axis=1)
        best_val = np.take_along_axis(merged_val, order, axis=1)
    return best_idx, best_val


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray, k: int) -> dict[str, float]:
    """Mean recall@k (|found ∩ true top-k| / k) and the share of queries that got fewer than k rows."""
    recalls, short = [], 0
    for got, want in zip(found, truth, strict=True):
        want_set = {int(i) for i in want[:k] if i >= 0}
        recalls.append(len(want_set.intersection(got[:k])) / max(1, len(want_set)))
        short += len(got) < len(want_set)
    return {
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "min_recall": round(float(np.min(recalls)), 2),
        # Queries the index all but missed (greedy search stuck in the wrong region of the graph).
        "queries_below_half": int(np.sum(np.asarray(recalls) < 0.5)),
        "queries_short_of_k": int(short),
    }


# Loading -------------------------------------------------------------------------------------


def row_buckets(n: int, seed: int) -> np.ndarray:
    """u ~ U(0,1) per row; see the bucket table at the top of this module."""
    return np.random.default_rng([seed, 3]).random(n)


def photo_ids(n: int, seed: int) -> list[uuid.UUID]:
    """Random-looking UUIDs (like gen_random_uuid()), reproducible from the seed."""
    raw = np.random.default_rng([seed, 4]).integers(0, 256, size=(n, 16), dtype=np.uint8)
    return [uuid.UUID(bytes=row.tobytes()) for row in raw]


def visible_mask(u: np.ndarray, case: str, phase: str) -> np.ndarray:
    """Which rows search_photos may return for a filter case ('none', '10pct', '1pct') in a phase."""
    hidden_everywhere = u >= 0.985
    minor = (u >= 0.10) & ~hidden_everywhere
    if case == "none":
        visible = ~hidden_everywhere
        if phase == "B":
            visible &= ~((u >= 0.01) & (u < 0.10))
        return visible
    if case == "10pct":
        assert phase == "A", "the 10% case is measured in phase A"
        return ~hidden_everywhere & ~minor
    if case == "1pct":
        assert phase == "B", "the 1% case is measured in phase B"
        return u < 0.01
    raise ValueError(case)


def connect(dsn: str, *, autocommit: bool = True) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=autocommit)
    register_vector(conn)
    return conn


def create_model_row(conn: psycopg.Connection, dim: int) -> int:
    """The embedding_models row, inserted directly: register_model would build the HNSW index before the
    bulk load, and inserting 1M rows into a live HNSW index is far slower than building it afterwards."""
    row = conn.execute(
        "INSERT INTO embedding_models (name, revision, dimension, active) VALUES ('bench-synthetic', 'v1', %s, true) "
        "ON CONFLICT (name, revision) DO UPDATE SET active = true RETURNING id",
        (dim,),
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO region_rules (region, minors_restricted, note) VALUES (%s, false, 'bench') "
        "ON CONFLICT (region) DO NOTHING",
        (UNRESTRICTED_REGION,),
    )
    return int(row[0])


def load_photos(conn: psycopg.Connection, ids: Sequence[uuid.UUID], u: np.ndarray) -> float:
    """COPY the photo rows (binary format) with flags from the buckets; returns seconds."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    columns = (
        "id",
        "sha256",
        "storage_key",
        "format",
        "width",
        "height",
        "bytes",
        "status",
        "visibility",
        "moderation_status",
        "depicts_minor",
        "parental_consent",
        "indexed_at",
    )
    types = [
        "uuid",
        "varchar",
        "text",
        "text",
        "int4",
        "int4",
        "int8",
        "text",
        "text",
        "text",
        "bool",
        "bool",
        "timestamptz",
    ]
    with (
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy(f"COPY photos ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(types)
        for photo_id, value in zip(ids, u, strict=True):
            moderation = "approved"
            visibility = "public"
            if value >= 0.985:
                if value < 0.993:
                    moderation = "pending_review"
                elif value < 0.997:
                    moderation = "rejected"
                else:
                    visibility = "private"
            minor = bool(0.10 <= value < 0.985)
            copy.write_row(
                (
                    photo_id,
                    hashlib.sha256(photo_id.bytes).hexdigest(),
                    f"bench/{photo_id}.jpg",
                    "JPEG",
                    4000,
                    3000,
                    3_500_000,
                    "indexed",
                    visibility,
                    moderation,
                    minor,
                    False,
                    now,
                )
            )
    return time.perf_counter() - started


def load_embeddings(
    conn: psycopg.Connection,
    model_id: int,
    ids: Sequence[uuid.UUID],
    vectors: np.ndarray,
    progress: Callable[[int], None] | None = None,
) -> float:
    """COPY the embeddings in binary format through pgvector's halfvec dumper; returns seconds.

    The table's check trigger (dimension, norm) and foreign key run for every row, as in production.
    """
    started = time.perf_counter()
    with (
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy("COPY photo_embeddings (photo_id, model_id, embedding) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(["uuid", "int4", "halfvec"])
        for index, photo_id in enumerate(ids):
            copy.write_row((photo_id, model_id, HalfVector(vectors[index])))
            if progress and index % 100_000 == 0:
                progress(index)
    return time.perf_counter() - started


def set_phase(conn: psycopg.Connection, ids: Sequence[uuid.UUID], u: np.ndarray, phase: str) -> float:
    """Phase A: rows with 0.01 <= u < 0.10 approved; phase B: pending review (so the restricted-region
    filter keeps 1% instead of 10%). Touches only `photos`, never the HNSW index. Returns seconds."""
    started = time.perf_counter()
    subset = [ids[int(i)] for i in np.flatnonzero((u >= 0.01) & (u < 0.10))]
    status = "approved" if phase == "A" else "pending_review"
    conn.execute(
        "UPDATE photos SET moderation_status = %s WHERE id = ANY(%s) AND moderation_status <> %s",
        (status, subset, status),
    )
    conn.execute("VACUUM (ANALYZE) photos")
    return time.perf_counter() - started


def backend_rss_bytes(postmaster_pid: int) -> tuple[int, int]:
    """(largest backend RSS, sum of PSS over all of the server's processes).

    RSS counts shared memory (shared_buffers, the parallel build's shared graph) once per process that
    touched it; PSS splits shared pages among the processes, so its sum is the server's real footprint.
    """
    import psutil

    try:
        server = psutil.Process(postmaster_pid)
        processes = [server, *server.children()]
    except psutil.NoSuchProcess:
        return 0, 0
    largest, total = 0, 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        largest = max(largest, info.rss)
        total += getattr(info, "pss", info.rss)
    return largest, total


# The index parameters ensure_embedding_index() uses (migration 0005).
MIGRATED_M, MIGRATED_EF_CONSTRUCTION = 16, 128


def build_index(
    conn: psycopg.Connection,
    model_id: int,
    *,
    postmaster_pid: int,
    m: int = MIGRATED_M,
    ef_construction: int = MIGRATED_EF_CONSTRUCTION,
    workers: int = 1,
    maintenance_work_mem: str = "4GB",
    use_function: bool = True,
    opclass: str = "halfvec",
) -> dict[str, Any]:
    """Build the model's partial HNSW index and report time, size, peak backend memory and notices.

    With `use_function` and the default m/ef_construction this is exactly ensure_embedding_index();
    otherwise an index of the same name, expression and predicate with other parameters (the search
    function uses whichever exists). `opclass='vector'` indexes the full-precision cast instead.
    """
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    dim = fetch_value(conn, "SELECT dimension FROM embedding_models WHERE id = %s", (model_id,))
    name = f"ix_photo_embeddings_hnsw_model_{model_id}"
    conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
    conn.execute(f"SET max_parallel_maintenance_workers = {int(workers)}")
    conn.execute(f"DROP INDEX IF EXISTS {name}")
    conn.execute(f"DROP INDEX IF EXISTS {name}_vector")
    notices.clear()  # "does not exist, skipping" from the drops says nothing about the build
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            largest, total = backend_rss_bytes(postmaster_pid)
            peak[0], peak[1] = max(peak[0], largest), max(peak[1], total)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        if use_function and (m, ef_construction) == (MIGRATED_M, MIGRATED_EF_CONSTRUCTION) and opclass == "halfvec":
            conn.execute("SELECT ensure_embedding_index(%s)", (model_id,))
        elif opclass == "halfvec":
            conn.execute(
                f"CREATE INDEX {name} ON photo_embeddings USING hnsw ((embedding::halfvec({dim})) halfvec_cosine_ops) "
                f"WITH (m = {m}, ef_construction = {ef_construction}) WHERE model_id = {model_id}"
            )
        else:
            name = f"{name}_vector"
            conn.execute(
                f"CREATE INDEX {name} ON photo_embeddings USING hnsw ((embedding::vector({dim})) vector_cosine_ops) "
                f"WITH (m = {m}, ef_construction = {ef_construction}) WHERE model_id = {model_id}"
            )
        seconds = time.perf_counter() - started
    finally:
        done.set()
        sampler.join()
    size = fetch_value(conn, "SELECT pg_relation_size(%s::regclass)", (name,))
    conn.execute("RESET maintenance_work_mem")
    conn.execute("RESET max_parallel_maintenance_workers")
    return {
        "index": name,
        "opclass": opclass,
        "m": m,
        "ef_construction": ef_construction,
        "parallel_workers": workers,
        "maintenance_work_mem": maintenance_work_mem,
        "build_s": round(seconds, 1),
        "index_size_mb": round(size / 2**20, 1),
        "peak_backend_rss_mb": round(peak[0] / 2**20),
        "peak_server_pss_mb": round(peak[1] / 2**20),
        "notices": notices[-5:],
    }


def prewarm(conn: psycopg.Connection, model_id: int) -> None:
    """Load the index and tables into shared buffers / the OS cache: a serving database is warm."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    for relation in (
        f"ix_photo_embeddings_hnsw_model_{model_id}",
        "photo_embeddings",
        "photos",
        "photos_pkey",
        "pk_photos",
        "photo_embeddings_pkey",
        "pk_photo_embeddings",
    ):
        exists = fetch_value(conn, "SELECT to_regclass(%s)", (relation,))
        if exists:
            conn.execute("SELECT pg_prewarm(%s::regclass)", (relation,))


# Timed queries -------------------------------------------------------------------------------

SEARCH_SQL = "SELECT photo_id FROM search_photos(%s, %s, %s)"


def run_clients(
    dsn: str,
    sql: str,
    params: Sequence[tuple[object, ...]],
    clients: int,
    *,
    rounds: int = 1,
    setup: Sequence[str] = (),
    prepare: bool = True,
) -> tuple[dict[str, float], list[list[Any]]]:
    """Run `params` through `sql` from `clients` concurrent connections, each going through the whole list
    `rounds` times from its own starting offset. Returns latency stats (all calls) and client 0's first
    round of results (the first column of each row, as psycopg returns it: for recall). Every connection runs each
    query once untimed first (warm caches)."""
    barrier = threading.Barrier(clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    results: list[list[Any]] = []
    errors: list[BaseException] = []

    def client(number: int) -> None:
        try:
            with connect(dsn) as conn:
                conn.prepare_threshold = 0 if prepare else None
                for statement in setup:
                    conn.execute(statement)
                offset = (number * len(params)) // clients
                order = [params[(offset + i) % len(params)] for i in range(len(params))]
                for p in order[: min(len(order), 20)]:
                    conn.execute(sql, p).fetchall()
                barrier.wait()
                for round_number in range(rounds):
                    for p in order:
                        started = time.perf_counter()
                        rows = conn.execute(sql, p).fetchall()
                        latencies[number].append(time.perf_counter() - started)
                        if number == 0 and round_number == 0:
                            results.append([row[0] for row in rows])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    flat = [x for per in latencies for x in per]
    stats = latency_stats(flat)
    stats["throughput_qps"] = round(len(flat) / max(wall, 1e-9), 1)
    # Rotate results back into the caller's order (client 0 starts at offset 0, so they already are).
    return stats, results


def vector_params(queries: np.ndarray, k: int, region: str | None) -> list[tuple[object, ...]]:
    return [(Vector(q.astype(np.float32)), k, region) for q in queries]


def explain_search(dsn: str, query: np.ndarray, k: int, region: str | None) -> str:
    """The plan search_photos' inner dynamic query really ran with (auto_explain of nested statements)."""
    messages: list[str] = []
    with connect(dsn) as conn:
        conn.add_notice_handler(lambda diag: messages.append(str(diag.message_primary)))
        conn.execute("LOAD 'auto_explain'")
        for setting in (
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_nested_statements = on",
            "auto_explain.log_analyze = on",
            "auto_explain.log_buffers = on",
            "auto_explain.log_timing = off",
            "client_min_messages = log",
        ):
            conn.execute(f"SET {setting}")
        conn.execute(SEARCH_SQL, (Vector(query.astype(np.float32)), k, region)).fetchall()
    plans = [m for m in messages if "photo_embeddings" in m and "Limit" in m]
    plan = plans[0] if plans else (messages[0] if messages else "")
    # The 512 numbers of the query vector say nothing about the plan.
    plan = re.sub(r"\[[-0-9.,e]{100,}\]", "[...]", plan)
    return "\n".join(line for line in plan.splitlines() if not line.startswith("Query Parameters"))


def explain_raw(dsn: str, sql: str, params: tuple[object, ...], setup: Sequence[str] = ()) -> str:
    """EXPLAIN ANALYZE of a plain query (not a function), with the vector literal elided."""
    with connect(dsn) as conn:
        for statement in setup:
            conn.execute(statement)
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + sql, params).fetchall()
    return re.sub(r"\[[-0-9.,e]{100,}\]", "[...]", "\n".join(row[0] for row in rows))


def plan_summary(plan: str) -> str:
    """One line: which scan fed the LIMIT (index vs exact) and how many rows it visited."""
    lines = [line.strip() for line in plan.splitlines()]
    scan = next((line for line in lines if "Index Scan using ix_photo_embeddings_hnsw" in line), None)
    if scan:
        return "hnsw index scan: " + scan.split("(actual")[-1].rstrip(")").strip() if "(actual" in scan else scan
    sort = next((line for line in lines if line.startswith("->  Sort") or "Sort Method" in line), None)
    return "exact (no HNSW): " + (sort or (lines[1] if len(lines) > 1 else ""))


def cpu_count() -> int:
    return os.cpu_count() or 1
