"""Filtered and hybrid search at scale: recall@10 and SQL latency of search_photos_filtered() on N photos with
realistic metadata, for hybrid search and for each filter at about 10% and 1% of the catalogue.

    .venv/bin/python -m bench.search_filters --n 100000     # a first run
    .venv/bin/python -m bench.search_filters --n 1000000 --queries 100

The catalogue: CLIP-like vectors (bench/search_data.py), a few thousand photographers with a long-tail (Zipf)
share of the photos, capture dates over ten years (10% unknown), upload dates over three, 3-8 tags per photo from
a 2,000-word vocabulary with Zipf frequencies, 60 camera models (Zipf), sizes and orientations as photographers'
files have them, and titles made of each photo's own tags. Each filter's values are chosen from the generated
data to keep 10% and 1% of the photos.

recall@10: the function's results against the same call with `withsense.exact_scan = on` (exact distances over
every photo that qualifies, the same fusion): what the HNSW scan costs, nothing else. Latency: one client,
`SELECT * FROM search_photos_filtered(...)` with k = 10, warm caches, p50/p95 over the queries.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pgvector import Vector

from bench.common import emit, latency_stats, machine_info, print_table, short_tmp_dir, warn_if_busy
from bench.search_data import (
    VectorSource,
    VectorSpec,
    build_index,
    connect,
    create_model_row,
    load_embeddings,
    photo_ids,
    prewarm,
)

TAKEN_START = datetime(2015, 1, 1, tzinfo=UTC)
TAKEN_DAYS = 3652
UPLOADED_START = datetime(2023, 1, 1, tzinfo=UTC)
UPLOADED_MINUTES = 3 * 365 * 1440
PHOTOGRAPHERS = 3000
VOCABULARY = 2000
CAMERAS = 60
SQL = "SELECT photo_id FROM search_photos_filtered(%s, %s, 10, NULL, %s::jsonb, %s::jsonb)"


class Metadata:
    """The catalogue's metadata, as arrays (row i is photo i)."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 9])
        self.n = n
        self.photographer = rng.choice(PHOTOGRAPHERS, size=n, p=_zipf(PHOTOGRAPHERS, 1.1))
        self.taken_known = rng.random(n) >= 0.10
        self.taken_days = rng.uniform(0, TAKEN_DAYS, n)
        self.uploaded_minutes = rng.uniform(0, UPLOADED_MINUTES, n)
        self.camera = rng.choice(CAMERAS, size=n, p=_zipf(CAMERAS, 1.2))
        counts = rng.integers(3, 9, n)
        drawn = rng.choice(VOCABULARY, size=int(counts.sum()), p=_zipf(VOCABULARY, 1.0))
        self.tags: list[list[int]] = []
        start = 0
        for count in counts:
            self.tags.append(sorted(set(drawn[start : start + count].tolist())))
            start += count
        shape = rng.random(n)  # 60% landscape, 30% portrait, 10% square
        long_side = np.exp(rng.uniform(np.log(2000), np.log(9000), n)).astype(np.int64)
        short_side = (long_side * rng.choice([2 / 3, 3 / 4, 4 / 5, 9 / 16], n)).astype(np.int64)
        self.width = np.where(shape < 0.6, long_side, np.where(shape < 0.9, short_side, long_side))
        self.height = np.where(shape < 0.6, short_side, long_side)
        self.orientation = np.where(shape < 0.6, "landscape", np.where(shape < 0.9, "portrait", "square"))

    def tag_share(self) -> np.ndarray:
        share = np.zeros(VOCABULARY)
        for tags in self.tags:
            share[tags] += 1
        return share / self.n


def _zipf(size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    return weights / weights.sum()


def tag_word(index: int) -> str:
    return f"word{index:04d}"


def _any_of(values: np.ndarray, count: int, target: float) -> list[int]:
    """Values (of a long-tailed column) whose shares add up to about `target`: the largest that still fit."""
    share = np.bincount(values, minlength=count) / len(values)
    chosen, total = [], 0.0
    for value in np.argsort(-share):
        if total + share[value] <= target * 1.05:
            chosen.append(int(value))
            total += share[value]
        if total >= target * 0.95 or len(chosen) == 50:
            break
    return chosen


def adopt_kept(postgres: Any, home: Path) -> dict[str, Any]:
    """A kept database of this script (`--keep DIR`, running as `postgres`) brought to this checkout: migrated to
    head and given this tree's SQL definitions (a kept database measures this checkout's SQL surface). Returns what
    its loaded.json says: n, seed, model_id and the load's figures (JSON, hence Any)."""
    from db import sql
    from migrations.apply import upgrade

    saved: dict[str, Any] = json.loads((home / "loaded.json").read_text())
    upgrade(postgres.url)
    with connect(postgres.dsn) as conn:
        for name in sql.names():
            if name not in ("searchable_photos", "photo_search_document"):
                conn.execute(sql.current(name)[1])
    return saved


def filter_cases(meta: Metadata) -> dict[str, tuple[dict[str, object], np.ndarray]]:
    """{name: (filters, mask of the photos they keep)} for each filter at 10% and 1%."""
    cases: dict[str, tuple[dict[str, object], np.ndarray]] = {}
    tag_share = meta.tag_share()
    for target, label in ((0.10, "10%"), (0.01, "1%")):
        people = _any_of(meta.photographer, PHOTOGRAPHERS, target)
        cases[f"photographer {label}"] = (
            {"photographer": [f"Photographer {p}" for p in people]},
            np.isin(meta.photographer, people),
        )
        tag = int(np.argmin(np.abs(tag_share - target)))
        cases[f"tag {label}"] = ({"tag": tag_word(tag)}, np.array([tag in tags for tags in meta.tags]))
        span = target / 0.9 * TAKEN_DAYS
        start = (TAKEN_DAYS - span) / 2
        after, before = TAKEN_START + timedelta(days=start), TAKEN_START + timedelta(days=start + span)
        cases[f"taken {label}"] = (
            {"taken_after": after.isoformat(), "taken_before": before.isoformat()},
            meta.taken_known & (meta.taken_days >= start) & (meta.taken_days < start + span),
        )
        minutes = target * UPLOADED_MINUTES
        low = UPLOADED_START + timedelta(minutes=UPLOADED_MINUTES / 3)
        cases[f"uploaded {label}"] = (
            {"uploaded_after": low.isoformat(), "uploaded_before": (low + timedelta(minutes=minutes)).isoformat()},
            (meta.uploaded_minutes >= UPLOADED_MINUTES / 3) & (meta.uploaded_minutes < UPLOADED_MINUTES / 3 + minutes),
        )
        width = int(np.quantile(meta.width, 1 - target))
        cases[f"min_width {label}"] = ({"min_width": width}, meta.width >= width)
        cameras = _any_of(meta.camera, CAMERAS, target)
        cases[f"camera {label}"] = ({"camera": [f"Camera {c}" for c in cameras]}, np.isin(meta.camera, cameras))
    cases["orientation 10%"] = ({"orientation": "square"}, meta.orientation == "square")
    cameras = _any_of(meta.camera, CAMERAS, 0.10)
    cases["orientation + camera 1%"] = (
        {"orientation": "square", "camera": [f"Camera {c}" for c in cameras]},
        (meta.orientation == "square") & np.isin(meta.camera, cameras),
    )
    return cases


def load_photos(conn, ids: list[uuid.UUID], meta: Metadata) -> float:
    """COPY the photo rows with their metadata (the generated columns fill themselves); returns seconds."""
    started = time.perf_counter()
    columns = (
        "id, sha256, storage_key, format, width, height, bytes, status, visibility, moderation_status, indexed_at, "
        "created_at, title, photographer, tags, camera, taken_at"
    )
    types = [
        "uuid", "varchar", "text", "text", "int4", "int4", "int8", "text", "text", "text", "timestamptz",
        "timestamptz", "text", "text", "text[]", "text", "timestamptz",
    ]  # fmt: skip
    now = datetime.now(UTC)
    statement = f"COPY photos ({columns}) FROM STDIN (FORMAT BINARY)"
    with conn.transaction(), conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(types)
        for i, photo_id in enumerate(ids):
            tags = [tag_word(t) for t in meta.tags[i]]
            copy.write_row(
                (
                    photo_id,
                    photo_id.hex * 2,
                    f"bench/{photo_id}.jpg",
                    "JPEG",
                    int(meta.width[i]),
                    int(meta.height[i]),
                    3_000_000,
                    "indexed",
                    "public",
                    "approved",
                    now,
                    UPLOADED_START + timedelta(minutes=float(meta.uploaded_minutes[i])),
                    " ".join(tags[:3]) + " photo",
                    f"Photographer {meta.photographer[i]}",
                    tags,
                    f"Camera {meta.camera[i]}",
                    TAKEN_START + timedelta(days=float(meta.taken_days[i])) if meta.taken_known[i] else None,
                )
            )
    return time.perf_counter() - started


def timed(conn, vectors: np.ndarray, words: list[str], filters: dict[str, object], mode: str, scan: str):
    """Run one case over the queries: (ids per query, seconds per query). `scan`: '' (the function decides),
    'on' (exact distances), 'off' (the HNSW scan)."""
    conn.execute("SELECT set_config('withsense.exact_scan', %s, false)", (scan,))
    found, seconds = [], []
    options = json.dumps({"mode": mode})
    for vector, text in zip(vectors, words, strict=True):
        started = time.perf_counter()
        rows = conn.execute(SQL, (Vector(vector.astype(np.float32)), text, json.dumps(filters), options)).fetchall()
        seconds.append(time.perf_counter() - started)
        found.append([row[0] for row in rows])
    conn.execute("SELECT set_config('withsense.exact_scan', '', false)")
    return found, seconds


def _recall(found: list[list[object]], truth: list[list[object]]) -> tuple[float, int]:
    """Mean |found ∩ truth| / |truth| (1.0 when there is nothing to find), and how many came back short."""
    recall = float(np.mean([len(set(f) & set(t)) / len(t) if t else 1.0 for f, t in zip(found, truth, strict=True)]))
    short = sum(len(f) < len(t) for f, t in zip(found, truth, strict=True))
    return recall, short


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--maintenance-work-mem", default="2GB")
    parser.add_argument("--shared-buffers", default="2GB")
    parser.add_argument("--cases", default="", help="comma-separated case names to run (default: all)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the database in this folder (reused if there)")
    args = parser.parse_args()
    warn_if_busy()

    from bench.search_at_scale import server_settings
    from cli.local_services import LocalPostgres
    from migrations.apply import upgrade

    home = args.keep or short_tmp_dir("wsf-")
    postgres = LocalPostgres(home / "pg", server_settings=server_settings(args.shared_buffers))
    postgres.start()
    spec = VectorSpec(clusters=max(50, args.n // 1000), seed=args.seed)
    source = VectorSource(spec)
    meta = Metadata(args.n, args.seed)
    load: dict[str, float] = {}
    try:
        marker = home / "loaded.json"
        if not marker.is_file():
            upgrade(postgres.url)
            ids = photo_ids(args.n, args.seed)
            with connect(postgres.dsn) as conn:
                model_id = create_model_row(conn, spec.dim)
                load["photos_s"] = round(load_photos(conn, ids, meta), 1)
                print(f"photos loaded in {load['photos_s']}s", file=sys.stderr)
                corpus = source.draw(args.n, stream=0)
                load["embeddings_s"] = round(load_embeddings(conn, model_id, ids, corpus), 1)
                print(f"embeddings loaded in {load['embeddings_s']}s", file=sys.stderr)
                conn.execute("VACUUM (ANALYZE) photos")
                conn.execute("VACUUM (ANALYZE) photo_embeddings")
                index = build_index(
                    conn,
                    model_id,
                    postmaster_pid=postgres.process.pid,  # type: ignore[union-attr]
                    workers=args.build_workers,
                    maintenance_work_mem=args.maintenance_work_mem,
                )
                load["index_build_s"] = float(index["build_s"])
                print(f"HNSW index built in {load['index_build_s']}s", file=sys.stderr)
            marker.write_text(json.dumps({"n": args.n, "seed": args.seed, "model_id": model_id, "load": load}))
        saved = adopt_kept(postgres, home)
        model_id, load = int(saved["model_id"]), saved["load"]

        queries = source.draw(args.queries, stream=1)
        rng = np.random.default_rng([args.seed, 11])
        share = meta.tag_share()
        common = np.argsort(-share)[:200]  # query words people type: the vocabulary's common words
        words = [" ".join(tag_word(int(w)) for w in rng.choice(common, 2, replace=False)) for _ in range(args.queries)]
        cases: dict[str, tuple[dict[str, object], np.ndarray | None]] = {"no filter": ({}, None)}
        cases.update(filter_cases(meta))
        wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
        rows: list[list[object]] = []
        figures: dict[str, object] = {}
        with connect(postgres.dsn) as conn:
            prewarm(conn, model_id)
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            for relation in ("ix_photos_search_document", "ix_photos_tags", "photos"):
                conn.execute("SELECT pg_prewarm(%s::regclass)", (relation,))
            timed(conn, queries[:5], words[:5], {}, "hybrid", "")  # warm-up
            for name, (filters, mask) in cases.items():
                if wanted and name not in wanted:
                    continue
                kept = float(mask.mean()) if mask is not None else 1.0
                entry: dict[str, object] = {"filters": filters, "share": round(kept, 4)}
                for mode in ("semantic", "hybrid"):
                    found, seconds = timed(conn, queries, words, filters, mode, "")
                    truth, exact_seconds = timed(conn, queries, words, filters, mode, "on")
                    hnsw, hnsw_seconds = timed(conn, queries, words, filters, mode, "off")
                    recall, short = _recall(found, truth)
                    hnsw_recall, hnsw_short = _recall(hnsw, truth)
                    stats, exact_stats, hnsw_stats = (latency_stats(x) for x in (seconds, exact_seconds, hnsw_seconds))
                    entry[mode] = {
                        "recall_at_10": round(recall, 4),
                        "short_results": short,
                        **stats,
                        "exact_scan": exact_stats,
                        "hnsw_scan": {"recall_at_10": round(hnsw_recall, 4), "short_results": hnsw_short, **hnsw_stats},
                    }
                    rows.append(
                        [name, f"{kept:.1%}", mode, recall, stats["p50_ms"], stats["p95_ms"], short,
                         exact_stats["p50_ms"], hnsw_recall, hnsw_stats["p50_ms"]]
                    )  # fmt: skip
                    print(f"{name} {mode}: recall {recall:.3f}, p50 {stats['p50_ms']} ms", file=sys.stderr)
                figures[name] = entry
    finally:
        postgres.stop()
    print_table(
        ["case", "share", "mode", "recall@10", "p50 ms", "p95 ms", "short", "exact p50", "HNSW recall", "HNSW p50"],
        rows,
    )
    emit(
        f"search_filters_{args.n}",
        {
            "benchmark": "search_filters",
            "machine": machine_info(),
            "n": args.n,
            "queries": args.queries,
            "load": load,
            "cases": figures,
        },
    )


if __name__ == "__main__":
    main()
