"""R@5 of semantic, keyword and hybrid search on synthetic photos whose titles, tags and photographers carry facts
the pixels do not (evaluation/hybrid.py), through the real search: a Postgres migrated to head, the catalogue
indexed with a CLIP (the tiny trained test CLIP by default), and services.search in each mode.

    .venv/bin/python -m bench.hybrid_recall                   # the tiny CLIP the tests build (WITHSENSE_TEST_CACHE)
    .venv/bin/python -m bench.hybrid_recall --model /models/clip  # any sentence-transformers CLIP folder

Also prints the relevance floor the evaluation data suggests for the model (the cosine that keeps 95% of the
relevant photo-query pairs of the queries the pixels can answer) and R@5 with that floor as the model's default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from bench.common import emit, machine_info, print_table, short_tmp_dir, tiny_trained_clip, warn_if_busy

MODES = ("semantic", "keyword", "hybrid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="sentence-transformers CLIP folder (default: the tiny test CLIP)")
    parser.add_argument("--database-url", help="a Postgres with pgvector to use (default: an embedded one)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    warn_if_busy()

    model = args.model or tiny_trained_clip()
    if model is None:
        from evaluation.tiny_clip import ensure_tiny_clip

        cache = Path(
            os.environ.get("WITHSENSE_TEST_CACHE") or Path(__file__).resolve().parents[1] / ".cache/test-models"
        )
        model = ensure_tiny_clip(cache)
    home = short_tmp_dir("wsh-")
    postgres = None
    url = args.database_url
    if url is None:
        from cli.local_services import LocalPostgres

        postgres = LocalPostgres(home / "pg")
        postgres.start()
        url = postgres.url
    os.environ.update(
        {
            "WITHSENSE_DATABASE_URL": url,
            "WITHSENSE_MODEL": str(model),
            "WITHSENSE_HOME": str(home / "data"),
            "WITHSENSE_DEVICE": "cpu",
        }
    )
    try:
        payload = run(url, args.seed, args.k, str(model))
    finally:
        from core.runtime import runtime

        runtime.reset()
        if postgres is not None:
            postgres.destroy()
    emit("hybrid_recall", payload)


def run(url: str, seed: int, k: int, model_name: str) -> dict[str, object]:
    from sqlalchemy import text

    from core.embedding import get_embedder
    from core.images import make_derivative
    from core.runtime import runtime
    from db import photos as photo_sql
    from db.engine import session_scope
    from evaluation.hybrid import catalogue, queries, suggest_floor, summarise
    from migrations.apply import upgrade
    from services import search as search_service

    runtime.reset()
    upgrade(url)
    entries = catalogue(seed)
    query_set = queries(entries)
    embedder = get_embedder()
    started = time.perf_counter()
    image_vectors = embedder.embed_images([make_derivative(e.image.image) for e in entries])
    ids = [uuid.uuid4() for _ in entries]
    with session_scope() as session:
        session.execute(text("TRUNCATE photos CASCADE"))
        model = photo_sql.register_model(session, embedder.model_name, embedder.revision, embedder.dimension)
        session.flush()
        model.min_score = None
        for photo_id, entry in zip(ids, entries, strict=True):
            session.execute(
                text(
                    "INSERT INTO photos (id, storage_key, sha256, format, width, height, bytes, status, "
                    "moderation_status, title, tags, photographer, indexed_at) VALUES (:id, :key, :sha, 'JPEG', "
                    "320, 240, 1, 'indexed', 'approved', :title, :tags, :photographer, now())"
                ),
                {
                    "id": photo_id,
                    "key": f"synthetic/{photo_id}",
                    "sha": photo_id.hex * 2,
                    "title": entry.title,
                    "tags": list(entry.tags),
                    "photographer": entry.photographer,
                },
            )
        photo_sql.add_embeddings(session, model, dict(zip(ids, image_vectors, strict=True)))
        session.execute(text("ANALYZE photos"))
        model_id = model.id
    indexed_s = time.perf_counter() - started
    index_of = {photo_id: i for i, photo_id in enumerate(ids)}

    # The floor from the evaluation data: the cosine that keeps 95% of the relevant pairs of the queries whose
    # answer the pixels show (alone, or with words).
    visual = [q for q in query_set if q.kind in ("pixels", "pixels and words")]
    text_vectors = embedder.embed_texts([q.text for q in visual])
    relevant_scores = [
        float(image_vectors[i] @ v) for q, v in zip(visual, text_vectors, strict=True) for i in q.relevant
    ]
    others = [
        float(image_vectors[i] @ v)
        for q, v in zip(visual, text_vectors, strict=True)
        for i in range(len(entries))
        if i not in q.relevant
    ]
    floor = suggest_floor(relevant_scores)
    irrelevant_above = float(np.mean(np.asarray(others) >= floor))

    def measure(mode: str, default_floor: float | None) -> tuple[object, float]:
        with session_scope() as session:
            session.execute(
                text("UPDATE embedding_models SET min_score = :floor WHERE id = :id"),
                {"floor": default_floor, "id": model_id},
            )
        results = []
        began = time.perf_counter()
        for query in query_set:
            with session_scope() as session:
                outcome = search_service.search_text(
                    session,
                    query.text,
                    k,
                    None,
                    search_service.SearchOptions(mode=mode),  # type: ignore[arg-type]
                )
            results.append((query, [index_of[hit.photo_id] for hit in outcome.hits]))
        return summarise(mode, results, k), (time.perf_counter() - began) / len(query_set)

    rows: list[list[object]] = []
    figures: dict[str, object] = {}
    kinds: list[str] = []
    for label, mode, default_floor in (
        ("semantic", "semantic", None),
        ("keyword", "keyword", None),
        ("hybrid", "hybrid", None),
        ("semantic, floor", "semantic", floor),
        ("hybrid, floor", "hybrid", floor),
    ):
        summary, seconds = measure(mode, default_floor)
        kinds = list(summary.by_kind)  # type: ignore[attr-defined]
        figures[label] = {
            "r_at_k": round(summary.overall, 4),  # type: ignore[attr-defined]
            "by_kind": {kind: round(value, 4) for kind, value in summary.by_kind.items()},  # type: ignore[attr-defined]
            "ms_per_query": round(seconds * 1000, 1),
        }
        rows.append([label, summary.overall, *summary.by_kind.values()])  # type: ignore[attr-defined]
    print_table(["mode", f"R@{k} all", *kinds], rows)
    print(
        f"suggested floor (keeps 95% of relevant pairs): {floor:.3f}; irrelevant pairs above it: "
        f"{irrelevant_above:.1%}",
        file=sys.stderr,
    )
    return {
        "benchmark": "hybrid_recall",
        "machine": machine_info(),
        "model": model_name,
        "photos": len(entries),
        "queries": {kind: sum(1 for q in query_set if q.kind == kind) for kind in sorted({q.kind for q in query_set})},
        "k": k,
        "index_seconds": round(indexed_s, 1),
        "suggested_floor": round(floor, 4),
        "irrelevant_pairs_above_floor": round(irrelevant_above, 4),
        "recall": figures,
    }


if __name__ == "__main__":
    main()
