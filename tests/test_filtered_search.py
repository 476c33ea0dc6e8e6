"""Filtered k-NN must not come back short: pgvector iterative index scans under a 1%-selective filter
return k rows and the same ids as an exact scan."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from pgvector import HalfVector, Vector
from sqlalchemy import text

from db.models import EmbeddingModel
from tests.conftest import Services

pytestmark = pytest.mark.usefixtures("clean_db")

N = 4000
K = 10

# The model, the photo ids, their unit vectors (N, dimension) and which of them moderation approved.
ManyVectors = tuple[EmbeddingModel, Sequence[uuid.UUID], np.ndarray, np.ndarray]


@pytest.fixture()
def many_vectors(services: Services) -> ManyVectors:
    """N indexed photos with random vectors of the active model; 1% approved, the rest hidden by moderation."""
    from db.engine import session_scope
    from services.indexing import registered_model

    model = registered_model()
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(N, model.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    approved = np.zeros(N, dtype=bool)
    approved[rng.choice(N, size=N // 100, replace=False)] = True
    with session_scope() as session:
        rows = (
            session.execute(
                text(
                    "INSERT INTO photos (storage_key, sha256, format, width, height, bytes, status, moderation_status) "
                    "SELECT 'bench/' || g, lpad(to_hex(g), 64, '0'), 'JPEG', 1, 1, 1, 'indexed', "
                    "CASE WHEN g = ANY(:approved) THEN 'approved' ELSE 'pending_review' END "
                    "FROM generate_series(0, :n - 1) g ORDER BY g RETURNING id"
                ),
                {"approved": [int(i) for i in np.flatnonzero(approved)], "n": N},
            )
            .scalars()
            .all()
        )
        session.execute(
            text(
                "INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (:photo_id, :model_id, :embedding)"
            ),
            [
                {"photo_id": pid, "model_id": model.id, "embedding": HalfVector(v.tolist())}
                for pid, v in zip(rows, vectors, strict=True)
            ],
        )
        session.execute(text("ANALYZE photos; ANALYZE photo_embeddings"))
    return model, rows, vectors, approved


def test_one_percent_filter_returns_k_rows_matching_the_exact_scan(many_vectors: ManyVectors) -> None:
    from db.engine import session_scope
    from db.search import search_by_vector

    model, ids, _vectors, approved = many_vectors
    rng = np.random.default_rng(11)
    eligible = [str(i) for i, ok in zip(ids, approved, strict=True) if ok]
    recalls = []
    for _ in range(20):
        query = rng.normal(size=model.dimension).astype(np.float32)
        query /= np.linalg.norm(query)
        with session_scope() as session:
            # At 4,000 rows the planner would rightly pick an exact scan (a bitmap scan of the 40 eligible
            # photos, then a sort, even without sequential scans); force the HNSW index so that this test
            # exercises the iterative index scan a production-sized table gets.
            session.execute(text("SET LOCAL enable_seqscan = off"))
            session.execute(text("SET LOCAL enable_sort = off"))
            session.execute(text("SET LOCAL withsense.exact_scan = off"))  # not the exact path of few visible rows
            hits = search_by_vector(session, query, K, "RU")
            exact = (
                session.execute(
                    text(
                        f"SELECT e.photo_id FROM photo_embeddings e JOIN searchable_photos p ON p.id = e.photo_id "
                        f"WHERE e.model_id = :m ORDER BY e.embedding::vector({model.dimension}) <=> "
                        f"CAST(:q AS vector({model.dimension})) LIMIT :k"
                    ),
                    {"m": model.id, "q": Vector(query.tolist()), "k": K},
                )
                .scalars()
                .all()
            )
        got = [str(h.photo_id) for h in hits]
        assert len(got) == K, "the filtered search came back short"
        assert set(got) <= set(eligible)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        recalls.append(len(set(got) & {str(e) for e in exact}) / K)
    assert np.mean(recalls) >= 0.95, recalls


def test_the_search_uses_the_models_hnsw_index(many_vectors: ManyVectors) -> None:
    from db.engine import session_scope

    model, *_ = many_vectors
    query = "[" + ",".join(["0.125"] * model.dimension) + "]"
    with session_scope() as session:
        session.execute(text("SET LOCAL hnsw.iterative_scan = 'relaxed_order'"))
        session.execute(text("SET LOCAL enable_seqscan = off"))
        session.execute(text("SET LOCAL enable_sort = off"))
        # The shape of search_photos' inner query: the model's partial expression index must match it.
        plan = "\n".join(
            session.execute(
                text(
                    f"EXPLAIN SELECT e.photo_id FROM photo_embeddings e WHERE e.model_id = {model.id} "
                    f"ORDER BY e.embedding::halfvec({model.dimension}) <=> '{query}'::halfvec({model.dimension}) "
                    "LIMIT 10"
                )
            ).scalars()
        )
    assert f"ix_photo_embeddings_hnsw_model_{model.id}" in plan, plan


def _plans_inside(conn: psycopg.Connection, query: str, params: tuple[object, ...]) -> tuple[int, list[str]]:
    """Run `query` and return its row count and the plans of the statements run inside it (auto_explain)."""
    plans: list[str] = []
    conn.add_notice_handler(lambda notice: plans.append(str(notice.message_primary)))
    rows = conn.execute(query, params).fetchall()
    return len(rows), [plan for plan in plans if "photo_embeddings" in plan]


def test_search_photos_runs_the_rule_inside_the_models_hnsw_scan(many_vectors: ManyVectors, services: Services) -> None:
    """The real plan of search_photos' own query: the model's partial HNSW index drives the nearest-neighbour
    scan, and the visibility rule, as kept on the embedding rows (migration 0009), filters inside it with no lookup
    into photos; photos is joined only for the k rows found, where the rule, inlined to plain column tests, is
    tested once more (for the minors condition, only where the region restricts)."""
    model, *_ = many_vectors
    query = "[" + ",".join(["0.125"] * model.dimension) + "]"
    with psycopg.connect(services.database_url.replace("+psycopg", "")) as conn:
        conn.execute("LOAD 'auto_explain'")
        for name, value in {
            "auto_explain.log_min_duration": "0",
            "auto_explain.log_nested_statements": "on",
            "auto_explain.log_level": "notice",
            "enable_seqscan": "off",  # as in the recall test: the plan a production-sized table gets
            "enable_sort": "off",
            "withsense.exact_scan": "off",  # 1% of 4,000 visible: search_photos would rank them exactly
        }.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        conn.execute("INSERT INTO region_rules (region, minors_restricted) VALUES ('XE', false)")  # rolled back
        for region, restricted in (("RU", True), ("XE", False)):
            count, plans = _plans_inside(conn, "SELECT * FROM search_photos(%s::vector, %s, %s)", (query, K, region))
            assert count == K and len(plans) == 1, plans
            # The plan's nodes, without the query text that auto_explain prints first.
            lines = [line.strip() for line in plans[0].splitlines()]
            lines = lines[next(i for i, line in enumerate(lines) if "(cost=" in line) :]
            plan = "\n".join(lines)
            scan = next(
                i
                for i, line in enumerate(lines)
                if f"Index Scan using ix_photo_embeddings_hnsw_model_{model.id}" in line
            )
            node = {
                marker: next(i for i, line in enumerate(lines) if marker in line)
                for marker in ("Nested Loop", "Limit", f"Index Scan using ix_photo_embeddings_hnsw_model_{model.id}")
            }
            # Nested Loop (photos for the k rows) > Limit > the HNSW scan: the limit is reached inside the scan.
            assert sorted(node.values()) == list(node.values()), plan
            flag = "visible_restricted" if restricted else "visible_unrestricted"
            scan_filter = next(line for line in lines[scan:] if line.startswith("Filter:"))
            assert scan_filter == f"Filter: {flag}", plan  # the flag alone, on the row the scan reads
            assert "photo_is_visible" not in plan, "the rule is inlined, not called per row"
            rule = next(line for line in lines if line.startswith("Filter:") and "moderation_status" in line)
            assert lines.index(rule) > scan, "the rule on photos runs after the scan, on the rows it returned"
            assert "status = 'indexed'" in rule and "visibility = 'public'" in rule
            assert ("depicts_minor" in rule) is restricted, rule
        conn.rollback()


def test_ef_search_comes_from_the_caller(many_vectors: ManyVectors) -> None:
    """Settings.hnsw_ef_search reaches the scan through db.search: a small one loses recall, a large one keeps
    it; SQL callers who set nothing get 200; it is never below k, and nothing of it outlives the call."""
    from db.engine import get_sessionmaker
    from db.search import search_by_vector

    model, _ids, _vectors, _approved = many_vectors
    rng = np.random.default_rng(23)
    queries = [q / np.linalg.norm(q) for q in rng.normal(size=(30, model.dimension)).astype(np.float32)]
    with get_sessionmaker()() as session:
        # Every photo eligible: a plain k-NN, where ef_search alone decides how close to exact the scan gets.
        session.execute(text("UPDATE photos SET moderation_status = 'approved'"))
        session.execute(text("SET LOCAL enable_seqscan = off"))
        session.execute(text("SET LOCAL enable_sort = off"))
        session.execute(text("SET LOCAL withsense.exact_scan = off"))  # the scan, whatever the statistics say
        exact = [
            set(
                session.scalars(
                    text(
                        f"SELECT photo_id FROM photo_embeddings ORDER BY embedding::vector({model.dimension}) <=> "
                        f"CAST(:q AS vector({model.dimension})) LIMIT :k"
                    ),
                    {"q": Vector(q.tolist()), "k": K},
                )
            )
            for q in queries
        ]

        def found(ef_search: int | None) -> list[list[str]]:
            return [
                [str(h.photo_id) for h in search_by_vector(session, q, K, "RU", ef_search=ef_search)] for q in queries
            ]

        def recall(results: list[list[str]]) -> float:
            return float(
                np.mean([len({uuid.UUID(i) for i in got} & want) / K for got, want in zip(results, exact, strict=True)])
            )

        small, large, default = found(K), found(1000), found(None)
        assert recall(small) < 0.85, recall(small)  # about 0.55 at 4,000 vectors of 64 dimensions
        assert recall(large) >= 0.95, recall(large)
        assert recall(default) >= 0.95
        assert found(1) == small, "ef_search below k is raised to k"

        session.execute(text("SET LOCAL hnsw.ef_search = 77"))
        search_by_vector(session, queries[0], K, ef_search=500)
        assert session.scalar(text("SHOW hnsw.ef_search")) == "77"
        assert session.scalar(text("SELECT current_setting('withsense.ef_search', true)")) == ""
        session.rollback()


def test_wrong_dimension_nan_and_zero_vectors_are_refused(many_vectors: ManyVectors) -> None:
    from sqlalchemy.exc import DBAPIError

    from db.engine import session_scope
    from db.photos import InvalidEmbedding, validate_embedding
    from db.search import DimensionMismatch, search_by_vector

    model, ids, *_ = many_vectors
    bad = {
        "wrong dimension": np.ones(model.dimension + 1, dtype=np.float32) / np.sqrt(model.dimension + 1),
        "zero": np.zeros(model.dimension, dtype=np.float32),
        "NaN": np.full(model.dimension, np.nan, dtype=np.float32),
    }
    for vector in bad.values():
        with pytest.raises(InvalidEmbedding):
            validate_embedding(vector, model.dimension)
        literal = "[" + ",".join("NaN" if np.isnan(x) else str(float(x)) for x in vector) + "]"
        with pytest.raises(DBAPIError), session_scope() as session:  # the database refuses them too
            session.execute(
                text("UPDATE photo_embeddings SET embedding = CAST(:v AS halfvec) WHERE photo_id = :id"),
                {"v": literal, "id": ids[0]},
            )
    with pytest.raises(DimensionMismatch, match="dimensions"), session_scope() as session:
        search_by_vector(session, np.ones(model.dimension + 3, dtype=np.float32), 5)
    with pytest.raises(DBAPIError, match="NULL"), session_scope() as session:
        session.execute(text("UPDATE photo_embeddings SET embedding = NULL WHERE photo_id = :id"), {"id": ids[0]})


def test_query_vector_of_another_dimension_is_a_clear_422(api: TestClient, many_vectors: ManyVectors) -> None:
    model, *_ = many_vectors
    wrong = api.post("/v1/search/vector", json={"embedding": [0.1] * (model.dimension * 2), "k": 5})
    assert wrong.status_code == 422
    assert f"produces {model.dimension}" in wrong.json()["detail"]
    right = api.post("/v1/search/vector", json={"embedding": [0.1] * model.dimension, "k": 5, "region": "RU"})
    assert right.status_code == 200 and len(right.json()["results"]) == 5
    assert api.post("/v1/search/vector", json={"embedding": [0.0] * model.dimension}).status_code == 422


def test_the_read_only_role_can_call_every_function_it_is_granted(
    many_vectors: ManyVectors, services: Services
) -> None:
    """region_is_restricted runs with its owner's rights; similar_photos takes k up to 1000 like search_photos."""
    import uuid

    import psycopg

    _model, rows, _vectors, approved = many_vectors
    source = rows[int(np.flatnonzero(approved)[0])]
    role = f"catalogue_{uuid.uuid4().hex[:8]}"
    admin_dsn = services.database_url.replace("+psycopg", "")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role}-pw' IN ROLE withsense_reader")
    try:
        with psycopg.connect(services.postgres.dsn_for(role, f"{role}-pw"), autocommit=True) as conn:
            assert conn.execute("SELECT region_is_restricted('*')").fetchone() == (True,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM region_rules")
            similar = conn.execute("SELECT photo_id FROM similar_photos(%s, 1000, 'RU')", (source,)).fetchall()
            assert len(similar) == int(approved.sum()) - 1  # every other approved photo, the source left out
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def _explain_nested(conn: psycopg.Connection, *, analyze: bool = False) -> None:
    """auto_explain for the rest of this transaction: every statement's plan, those inside functions too, as a
    notice (with the rows each node returned when `analyze`)."""
    conn.execute("LOAD 'auto_explain'")
    settings = {
        "auto_explain.log_min_duration": "0",
        "auto_explain.log_nested_statements": "on",
        "auto_explain.log_analyze": "on" if analyze else "off",
        "auto_explain.log_level": "notice",
    }
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def _with_plans(conn: psycopg.Connection, statement: str, params: Sequence[object]) -> tuple[list[tuple], list[str]]:
    """A statement's rows, and the plans auto_explain sent while it ran (_explain_nested)."""
    plans: list[str] = []

    def keep(notice: psycopg.errors.Diagnostic) -> None:
        plans.append(str(notice.message_primary))

    conn.add_notice_handler(keep)
    try:
        rows = conn.execute(statement, params).fetchall()
    finally:
        conn.remove_notice_handler(keep)
    return rows, plans


def test_where_few_photos_are_visible_the_search_reads_only_those_and_ranks_them_exactly(
    many_vectors: ManyVectors, services: Services
) -> None:
    """Where the rule leaves 1% of the catalogue (migration 0014): search_photos and search_photos_filtered read
    the visible rows from the flag's own index, never the graph, and return the true top k; once most photos are
    visible, the same searches go back to the HNSW scan. The choice follows the planner's statistics."""
    model, *_ = many_vectors
    dim = model.dimension
    rng = np.random.default_rng(41)
    queries = [q / np.linalg.norm(q) for q in rng.normal(size=(15, dim)).astype(np.float32)]
    searches = {
        "search_photos": "SELECT photo_id FROM search_photos(%s::vector, %s, %s)",
        "search_photos_filtered": (
            "SELECT photo_id FROM search_photos_filtered(%s::vector, NULL, %s, %s, '{}', "
            '\'{"mode": "semantic", "min_score": null}\')'
        ),
    }
    with psycopg.connect(services.database_url.replace("+psycopg", "")) as conn:
        conn.execute("INSERT INTO region_rules (region, minors_restricted) VALUES ('XE', false)")  # rolled back
        _explain_nested(conn)

        def exact_top(query: np.ndarray, region: str) -> list[uuid.UUID]:
            flag = "visible_restricted" if region == "RU" else "visible_unrestricted"
            conn.execute("SET LOCAL enable_indexscan = off")  # no graph: every visible row's distance
            rows = conn.execute(
                f"SELECT photo_id FROM photo_embeddings WHERE model_id = %s AND {flag} "
                f"ORDER BY embedding::halfvec({dim}) <=> %s::halfvec({dim}), photo_id LIMIT %s",
                (model.id, Vector(query.tolist()).to_text(), K),
            ).fetchall()
            conn.execute("SET LOCAL enable_indexscan = on")
            return [row[0] for row in rows]

        def run(name: str, query: np.ndarray, region: str) -> tuple[list[uuid.UUID], list[str]]:
            rows, plans = _with_plans(conn, searches[name], (Vector(query.tolist()).to_text(), K, region))
            return [row[0] for row in rows], [plan for plan in plans if "photo_embeddings" in plan]

        for region, flag in (("RU", "visible_restricted"), ("XE", "visible_unrestricted")):
            for name in searches:
                for query in queries:
                    found, plans = run(name, query, region)
                    assert found == exact_top(query, region), f"{name} in {region}: not the true top {K}"
                    used = "\n".join(plans)
                    assert f"ix_photo_embeddings_{flag}" in used, used
                    assert f"ix_photo_embeddings_hnsw_model_{model.id}" not in used, used
        # Most photos visible: the graph again, for both functions.
        conn.execute("UPDATE photos SET moderation_status = 'approved'")
        conn.execute("ANALYZE photo_embeddings")
        for name in searches:
            found, plans = run(name, queries[0], "RU")
            assert len(found) == K
            assert f"ix_photo_embeddings_hnsw_model_{model.id}" in "\n".join(plans), plans
        conn.rollback()


def test_hybrid_words_that_match_nothing_cost_a_semantic_search_and_rank_as_one(
    many_vectors: ManyVectors, services: Services
) -> None:
    """Migration 0015: when a hybrid search's words match no photo, the results are the semantic search's, in its
    order, and its scan goes no deeper than a semantic search's (not 200 rows deeper); once some photos match the
    words, they are fused in again and the scan goes deep."""
    import re

    model, ids, _vectors, _approved = many_vectors
    rng = np.random.default_rng(43)
    queries = [q / np.linalg.norm(q) for q in rng.normal(size=(8, model.dimension)).astype(np.float32)]
    search = "SELECT photo_id, matched FROM search_photos_filtered(%s::vector, %s, %s, 'XE', '{}', %s::jsonb)"
    scanned = re.compile(r"Limit .*?\(actual time=[\d.]+\.\.[\d.]+ rows=([\d.]+)")
    with psycopg.connect(services.database_url.replace("+psycopg", "")) as conn:
        conn.execute("UPDATE photos SET moderation_status = 'approved'")  # rolled back
        conn.execute("ANALYZE photo_embeddings")
        conn.execute("SET LOCAL withsense.exact_scan = off")  # the graph, as at scale
        _explain_nested(conn, analyze=True)

        def run(query: np.ndarray, words: str | None, mode: str) -> tuple[list[tuple[uuid.UUID, str]], int]:
            """The rows, and how many rows the semantic scan brought."""
            params = (Vector(query.tolist()).to_text(), words, K, f'{{"mode": "{mode}"}}')
            rows, plans = _with_plans(conn, search, params)
            scans = [plan for plan in plans if f"ix_photo_embeddings_hnsw_model_{model.id}" in plan]
            assert len(scans) == 1, plans
            found = scanned.search(scans[0])
            assert found is not None, scans[0]
            return [(row[0], row[1]) for row in rows], int(float(found.group(1)))

        for query in queries:
            semantic, semantic_depth = run(query, None, "semantic")
            hybrid, hybrid_depth = run(query, "zebra crossing", "hybrid")
            assert [photo for photo, _ in hybrid] == [photo for photo, _ in semantic]
            assert {how for _, how in hybrid} == {"semantic"}
            assert len(hybrid) == K
            assert hybrid_depth == semantic_depth < 100, (hybrid_depth, semantic_depth)

        # Words that some photos carry: fused in (matched 'keyword' or 'both'), the semantic list 200 deeper again.
        titled = list(ids[:3])
        conn.execute("UPDATE photos SET title = 'zebra crossing' WHERE id = ANY(%s)", (titled,))
        hybrid, hybrid_depth = run(queries[0], "zebra crossing", "hybrid")
        assert {photo for photo, how in hybrid if how in ("keyword", "both")} == set(titled)
        assert hybrid_depth > 200, hybrid_depth
        conn.rollback()
