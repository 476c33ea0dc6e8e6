"""The binary-quantised HNSW index with re-ranking (issue 16, item 4), beside today's halfvec index.

A model's searches use the index kind recorded on embedding_models.vector_index; `withsense embeddings index
--kind binary` builds the bit index, switches the searches, and drops the halfvec one (and back). These tests,
on the real stack: the searches return the exact nearest visible photos before, during and after a switch, on
one table and on hash partitions, through search_photos and search_photos_filtered for the reader role (the
re-ranking made deep enough to be exact at this size, so that any mistake of the plumbing shows); the bit index
is the one the scans use; the minors law holds with the flags; pages join to the unpaged list with small blocks;
recall of binary + re-ranking stays high on a clustered catalogue of a few thousand vectors; and over HTTP, with
the tiny trained CLIP, text, similar, filtered and hybrid search find the right photos.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from pgvector import HalfVector
from sqlalchemy import text
from typer.testing import CliRunner

from tests.conftest import Services, create_api_key, reset_cached_state, sample_of, upload, wait_for_status
from tests.vector_catalogue import Catalogue, K, literal, random_catalogue

N = 300
FREE = "XB"  # a region where the minors law does not apply (this module only)
DISCLAIMER = "This image is unavailable in your country in compliance with local laws."


def _kinds() -> dict[int, tuple[str, tuple[str, ...]]]:
    from services.vector_index import current

    return {m.model_id: (m.kind, m.built) for m in current()}


@pytest.fixture()
def catalogue(services: Services) -> Iterator[Catalogue]:
    from services.partitions import repartition
    from services.vector_index import switch

    with random_catalogue(
        services,
        n=N,
        seed=16,
        minor_every=5,
        minor_at=2,
        prefix="bq/",
        free_region=FREE,
        tags_sql="CASE WHEN g % 3 = 0 THEN ARRAY['harbour'] ELSE ARRAY['field'] END",
        analyze=True,
    ) as catalogue:
        try:
            yield catalogue
        finally:
            switch("halfvec")  # the layout every other test expects
            repartition(1)


# Every search through the HNSW scan (search_photos_filtered would rank 300 photos exactly by itself, and the
# planner would sort 300 rows rather than scan an index), with a re-ranking deep enough to hold every photo: then
# binary + re-ranking is exact too, whatever the Hamming order, and any mistake of the plumbing shows.
EXACT_SETUP = (
    "SET withsense.exact_scan = 'off'",
    f"SET withsense.binary_rerank = {N}",
    "SET enable_seqscan = off",
    "SET enable_bitmapscan = off",
    "SET enable_sort = off",
)


def _searches(dsn: str, query: np.ndarray, region: str, setup: tuple[str, ...] = EXACT_SETUP) -> dict[str, list]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in setup:
            conn.execute(statement)
        plain = [
            r[0]
            for r in conn.execute("SELECT photo_id FROM search_photos(%s::vector, %s, %s)", (literal(query), K, region))
        ]
        filtered = [
            r[0]
            for r in conn.execute(
                "SELECT photo_id FROM search_photos_filtered(%s::vector, NULL, %s, %s, '{}', "
                '\'{"mode": "semantic", "min_score": null}\')',
                (literal(query), K, region),
            )
        ]
    return {"search_photos": plain, "search_photos_filtered": filtered}


def _query(seed: int, dimension: int) -> np.ndarray:
    query = np.random.default_rng(seed).normal(size=dimension).astype(np.float32)
    return query / np.linalg.norm(query)


def _check_exact(cat: Catalogue, seeds: range) -> None:
    for seed in seeds:
        query = _query(seed, int(cat.vectors.shape[1]))
        for region, restricted in (("RU", True), (FREE, False)):
            want = cat.exact(query, restricted)
            for name, got in _searches(cat.reader_dsn, query, region).items():
                assert got == want, f"{name} in {region}, query {seed}"


def _bit_index_scan(plan: str) -> bool:
    """An index scan ordered by Hamming distance: the model's bit index, or a partition's (named by Postgres)."""
    lines = plan.splitlines()
    return any(
        "Index Scan using" in line
        and ("_bq_model_" in line or "photo_embeddings_p" in line)
        and any(
            "Order By:" in after and "binary_quantize" in after and "<~>" in after for after in lines[i + 1 : i + 4]
        )
        for i, line in enumerate(lines)
    )


def _scans_bit_index(cat: Catalogue, seed: int) -> bool:
    """Whether both search functions' scans use the model's bit index (auto_explain of the statements inside)."""
    query = literal(_query(seed, int(cat.vectors.shape[1])))
    seen = []
    with psycopg.connect(cat.admin_dsn, autocommit=True) as conn:
        plans: list[str] = []
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        for statement in (
            *EXACT_SETUP,
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_level = notice",
        ):
            conn.execute(statement)
        for call in (
            "SELECT count(*) FROM search_photos(%(q)s::vector, 10, 'RU')",
            "SELECT count(*) FROM search_photos_filtered(%(q)s::vector, NULL, 10, 'RU', '{}', "
            '\'{"mode": "semantic"}\')',
        ):
            plans.clear()
            conn.execute(call, {"q": query})
            seen.append(any(_bit_index_scan(plan) for plan in plans))
    return all(seen)


def test_switching_kinds_keeps_every_search_exact_on_a_table_and_on_partitions(catalogue: Catalogue) -> None:
    from services.partitions import repartition
    from services.vector_index import switch

    cat = catalogue
    assert _kinds()[cat.model_id] == ("halfvec", ("halfvec",))
    _check_exact(cat, range(3))

    # Searches run all through the switch and never miss: build, flip, drop while they go on.
    failures: list[str] = []
    stop = threading.Event()
    query = _query(99, int(cat.vectors.shape[1]))
    want = cat.exact(query, True)

    def keep_searching() -> None:
        while not stop.is_set():
            try:
                for name, got in _searches(cat.reader_dsn, query, "RU").items():
                    if got != want:
                        failures.append(f"{name}: {len(got)} rows, not the exact top {K}")
            except Exception as exc:  # noqa: BLE001 - any error mid-switch is a failure of the switch
                failures.append(repr(exc))

    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    lines: list[str] = []
    try:
        result = switch("binary", progress=lines.append)
    finally:
        stop.set()
        searcher.join(timeout=60)
    assert failures == []
    assert [(r.before, r.after) for r in result if r.model_id == cat.model_id] == [("halfvec", "binary")]
    assert any("building its binary index" in line for line in lines) and any("dropped" in line for line in lines)
    assert _kinds()[cat.model_id] == ("binary", ("binary",))
    with psycopg.connect(cat.admin_dsn, autocommit=True) as conn:
        centre = conn.execute("SELECT binary_centre IS NOT NULL FROM embedding_models WHERE id = %s", (cat.model_id,))
        assert centre.fetchone() == (True,)  # built on the mean of the vectors

    _check_exact(cat, range(3))
    assert _scans_bit_index(cat, 1), "the searches did not scan the bit index"

    # Hash partitions: each partition gets its own bit index, searches stay exact.
    assert repartition(4).after == 4
    assert _kinds()[cat.model_id] == ("binary", ("binary",))
    with psycopg.connect(cat.admin_dsn, autocommit=True) as conn:
        parts = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass(%s)",
            (f"ix_photo_embeddings_bq_model_{cat.model_id}",),
        ).fetchone()
    assert parts == (4,)
    _check_exact(cat, range(3, 5))
    assert _scans_bit_index(cat, 2)

    # The flags on the partitioned rows: a photo turned minor is hidden where the law applies at once.
    index = int(np.flatnonzero(~cat.minor)[0])
    photo, vector = cat.ids[index], cat.vectors[index]
    assert photo in _searches(cat.reader_dsn, vector, "RU")["search_photos"]
    with psycopg.connect(cat.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE photos SET depicts_minor = true WHERE id = %s", (photo,))
    found = _searches(cat.reader_dsn, vector, "RU")
    assert photo not in found["search_photos"] and photo not in found["search_photos_filtered"]
    assert photo in _searches(cat.reader_dsn, vector, FREE)["search_photos_filtered"]
    with psycopg.connect(cat.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE photos SET depicts_minor = false WHERE id = %s", (photo,))

    # Back to halfvec on the partitions, then to one table: still exact, the bit index gone.
    switch("halfvec")
    assert _kinds()[cat.model_id] == ("halfvec", ("halfvec",))
    _check_exact(cat, range(2))
    assert repartition(1).after == 1
    _check_exact(cat, range(1))


def test_pages_filters_and_hybrid_with_the_binary_index(catalogue: Catalogue) -> None:
    from services.vector_index import switch

    cat = catalogue
    switch("binary", model_id=cat.model_id)
    query = _query(5, int(cat.vectors.shape[1]))
    # A small re-ranking (blocks of 7) so that the pages cross blocks.
    setup = ("SET withsense.exact_scan = 'off'", "SET withsense.binary_rerank = 7", "SET enable_seqscan = off")

    def call(conn: psycopg.Connection, query_text: str | None, k: int, filters: str, options: str) -> list:
        return [
            (r[0], r[1], r[3])
            for r in conn.execute(
                "SELECT photo_id, rank, score, matched FROM search_photos_filtered(%s::vector, %s, %s, 'RU', %s, %s)",
                (literal(query), query_text, k, filters, options),
            )
        ]

    with psycopg.connect(cat.reader_dsn, autocommit=True) as conn:
        for statement in setup:
            conn.execute(statement)
        for mode, words in (("semantic", None), ("hybrid", "harbour")):
            whole = call(conn, words, 30, "{}", f'{{"mode": "{mode}", "min_score": null}}')
            assert len(whole) == 30 and [r[1] for r in whole] == list(range(1, 31)), mode
            paged = []
            for offset in range(0, 30, 4):
                paged += call(
                    conn,
                    words,
                    min(4, 30 - offset),
                    "{}",
                    f'{{"mode": "{mode}", "min_score": null, "offset": {offset}}}',
                )
            assert paged == whole, mode  # the pages join to the unpaged list: no duplicates, no gaps
            shown = {r[0] for r in whole}
            assert not shown & {cat.ids[i] for i in np.flatnonzero(cat.minor)}, "a minor shown in RU"
        # The best of the first block is the exact best (block 0 holds the 7 nearest by Hamming distance).
        semantic = call(conn, None, 3, "{}", '{"mode": "semantic", "min_score": null}')
        scores = [
            r[0]
            for r in conn.execute(
                "SELECT score FROM search_photos_filtered(%s::vector, NULL, 7, 'RU', '{}', "
                '\'{"mode": "semantic", "min_score": null}\')',
                (literal(query),),
            )
        ]
        assert scores == sorted(scores, reverse=True) and len(semantic) == 3
        # A filter on photos' columns inside the bit scan: only harbour photos, the exact nearest ones when the
        # re-ranking covers them all.
        conn.execute(f"SET withsense.binary_rerank = {N}")
        tagged = [r[0] for r in call(conn, None, K, '{"tag": "harbour"}', '{"mode": "semantic", "min_score": null}')]
        harbour = np.array([i % 3 == 0 and not cat.minor[i] for i in range(N)])
        stored = cat.vectors.astype(np.float16).astype(np.float32)
        scores_all = stored @ query.astype(np.float16).astype(np.float32) / np.linalg.norm(stored, axis=1)
        scores_all[~harbour] = -np.inf
        assert tagged == [cat.ids[i] for i in np.argsort(-scores_all, kind="stable")[:K]]
        # Hybrid: a photo found by its words alone is fused in.
        with psycopg.connect(cat.admin_dsn, autocommit=True) as admin:
            admin.execute("UPDATE photos SET title = 'Lighthouse at dawn' WHERE id = %s", (cat.ids[8],))
        hybrid = call(conn, "lighthouse", 5, "{}", '{"mode": "hybrid", "min_score": null}')
        assert cat.ids[8] in [r[0] for r in hybrid]
        assert next(r[2] for r in hybrid if r[0] == cat.ids[8]) in ("keyword", "both")
        # The re-ranking depth is checked like ef_search.
        conn.execute("SET withsense.binary_rerank = 'many'")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="binary_rerank"):
            conn.execute("SELECT * FROM search_photos(%s::vector, 5, 'RU')", (literal(query),))


def test_an_index_kind_cannot_be_switched_to_before_it_is_built_nor_dropped_while_used(catalogue: Catalogue) -> None:
    from services.errors import InvalidRequest
    from services.vector_index import switch

    cat = catalogue
    with psycopg.connect(cat.admin_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no binary index yet"):
            conn.execute("SELECT set_embedding_index_kind(%s, 'binary')", (cat.model_id,))
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="switch them first"):
            conn.execute("SELECT drop_embedding_index(%s, 'halfvec')", (cat.model_id,))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="halfvec or binary"):
            conn.execute("SELECT build_embedding_index(%s, 'pq')", (cat.model_id,))
    with pytest.raises(InvalidRequest, match="halfvec or binary"):
        switch("pq")
    assert _kinds()[cat.model_id] == ("halfvec", ("halfvec",))
    # The reader role may search but not switch.
    with psycopg.connect(cat.reader_dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT build_embedding_index(%s, 'binary')", (cat.model_id,))

    from cli.main import app

    result = CliRunner().invoke(app, ["embeddings", "index", "--kind", "binary", "--model", str(cat.model_id)])
    assert result.exit_code == 0, result.output
    assert f"model {cat.model_id}" in result.output and "halfvec -> binary" in result.output
    assert _kinds()[cat.model_id] == ("binary", ("binary",))
    again = CliRunner().invoke(app, ["embeddings", "index", "--kind", "binary", "--model", str(cat.model_id)])
    assert again.exit_code == 0 and "already binary" in again.output
    wrong = CliRunner().invoke(app, ["embeddings", "index", "--kind", "ivf"])
    assert wrong.exit_code == 1 and "halfvec or binary" in wrong.output


def test_recall_of_binary_with_reranking_on_clustered_vectors(services: Services) -> None:
    """3,000 vectors around 30 centres sharing one direction (as CLIP's do): recall@10 of the product path."""
    from db.engine import session_scope
    from services.indexing import registered_model
    from services.vector_index import switch

    model = registered_model()
    dim = model.dimension
    rng = np.random.default_rng(8)
    n = 3000
    common = rng.normal(size=dim)
    common /= np.linalg.norm(common)
    centres = rng.normal(size=(30, dim)) / np.sqrt(dim) + 1.2 * common
    vectors = (centres[rng.integers(0, 30, n)] + rng.normal(size=(n, dim)) * 0.8 / np.sqrt(dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with session_scope() as session:
        session.execute(text("TRUNCATE photos CASCADE"))
        ids = list(
            session.execute(
                text(
                    "INSERT INTO photos (storage_key, sha256, format, width, height, bytes, status, moderation_status)"
                    " SELECT 'bqr/' || g, lpad(to_hex(g), 64, '0'), 'JPEG', 1, 1, 1, 'indexed', 'approved'"
                    " FROM generate_series(0, :n - 1) g ORDER BY g RETURNING id"
                ),
                {"n": n},
            ).scalars()
        )
        session.execute(
            text("INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (:p, :m, :e)"),
            [{"p": p, "m": model.id, "e": HalfVector(v.tolist())} for p, v in zip(ids, vectors, strict=True)],
        )
        session.execute(text("ANALYZE photos; ANALYZE photo_embeddings"))
    dsn = services.database_url.replace("+psycopg", "")
    stored = vectors.astype(np.float16).astype(np.float32)
    queries = centres[rng.integers(0, 30, 40)] + rng.normal(size=(40, dim)) * 0.8 / np.sqrt(dim)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)

    def recall(rerank: int) -> float:
        hits = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET enable_seqscan = off")
            conn.execute(f"SET withsense.binary_rerank = {rerank}")
            for q in queries:
                found = conn.execute("SELECT photo_id FROM search_photos(%s::vector, %s)", (literal(q), K))
                got = {r[0] for r in found}
                truth = {ids[i] for i in np.argsort(-(stored @ q.astype(np.float16).astype(np.float32)))[:K]}
                hits.append(len(got & truth) / K)
        return float(np.mean(hits))

    try:
        halfvec = recall(200)
        switch("binary", model_id=model.id)
        shallow, deep = recall(10), recall(200)
    finally:
        switch("halfvec")
        with session_scope() as session:
            session.execute(text("TRUNCATE photos CASCADE"))
    assert halfvec >= 0.98
    assert deep >= 0.95, (halfvec, shallow, deep)
    assert deep > shallow, "re-ranking more candidates must find more of the true neighbours"


# --- Over HTTP with the tiny trained CLIP: what a photo buyer sees with the binary index. ---


@pytest.fixture()
def binary_api(services: Services, api: TestClient, worker: object, clean_db: None) -> Iterator[TestClient]:
    """The API with the active model on its binary index, every semantic search through the bit index's scan."""
    from db.engine import session_scope
    from db.policy import delete_region_rule, set_region_rule

    with session_scope() as session:
        set_region_rule(session, FREE, minors_restricted=False, note="test")
    admin_dsn = services.database_url.replace("+psycopg", "")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        user = conn.execute("SELECT current_user").fetchone()
        assert user is not None
        # A few photos only: search_photos_filtered would rank them exactly; make it scan the bit index.
        conn.execute(f"ALTER ROLE \"{user[0]}\" SET withsense.exact_scan = 'off'")
    reset_cached_state()
    try:
        with session_scope() as session:  # what the app's own connections now run with
            assert session.execute(text("SHOW withsense.exact_scan")).scalar_one() == "off"
        yield api
    finally:
        from services.vector_index import switch

        switch("halfvec")
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER ROLE "{user[0]}" RESET withsense.exact_scan')
        reset_cached_state()
        with session_scope() as session:
            delete_region_rule(session, FREE)


def _ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def test_text_similar_filtered_and_hybrid_search_over_http(binary_api: TestClient) -> None:
    from tests.images import jpeg_bytes

    api = binary_api
    searcher = TestClient(api.app, headers={"Authorization": f"Bearer {create_api_key('search')}"})
    shapes = [("red", "circle"), ("green", "square"), ("blue", "triangle"), ("purple", "cross"), ("pink", "star")]
    ids = [upload(api, sample_of(c, s, 20 + i).image).json()["id"] for i, (c, s) in enumerate(shapes)]
    tagged = api.post(
        "/v1/photos",
        files={"file": ("photo.jpg", jpeg_bytes(sample_of("orange", "square", 40).image), "image/jpeg")},
        data={"tags": "Baikal"},
    ).json()["id"]
    child = api.post(
        "/v1/photos",
        files={"file": ("photo.jpg", jpeg_bytes(sample_of("red", "circle", 45).image), "image/jpeg")},
        data={"depicts_minor": "true"},
    ).json()["id"]
    final = wait_for_status(api, [*ids, tagged, child])
    assert {body["status"] for body in final.values()} == {"indexed"}, final

    from services.vector_index import switch

    def answers() -> dict[str, list[str]]:
        requests: dict[str, tuple[str, dict[str, str | int]]] = {
            "red": ("/v1/search", {"q": "a red circle", "mode": "semantic", "k": 7, "region": FREE}),
            "blue": ("/v1/search", {"q": "a blue triangle", "mode": "semantic", "k": 7, "region": "RU"}),
            "similar": (f"/v1/photos/{ids[0]}/similar", {"k": 5, "region": FREE}),
            "hybrid": ("/v1/search", {"q": "a red circle at Baikal", "k": 4}),
            "filtered": ("/v1/search", {"q": "a square", "tag": "baikal"}),
        }
        return {name: _ids(searcher.get(path, params=params)) for name, (path, params) in requests.items()}

    with_halfvec = answers()
    switch("binary")
    assert {kind for kind, _ in _kinds().values()} == {"binary"}
    # Every photo re-ranked at this size: the same answers, in the same order, as with the halfvec index.
    assert answers() == with_halfvec
    for i, (colour, shape) in enumerate(shapes):
        got = _ids(searcher.get("/v1/search", params={"q": f"a {colour} {shape}", "mode": "semantic", "k": 1}))
        assert got == [ids[i]], (colour, shape)
    # The minors law: the red-circle child is shown where the law does not apply, never in RU.
    free = _ids(searcher.get("/v1/search", params={"q": "a red circle", "mode": "semantic", "k": 2, "region": FREE}))
    assert set(free) == {ids[0], child}
    ru = _ids(searcher.get("/v1/search", params={"q": "a red circle", "mode": "semantic", "k": 7, "region": "RU"}))
    assert child not in ru and ru[0] == ids[0]
    blocked = searcher.get(f"/v1/photos/{child}/similar", params={"region": "RU"}).json()
    assert blocked["blocked"] is True and blocked["disclaimer"] == DISCLAIMER
    # Similar photos, filtered search, hybrid fusion.
    similar = _ids(searcher.get(f"/v1/photos/{ids[0]}/similar", params={"k": 3, "region": FREE}))
    assert ids[0] not in similar and len(similar) == 3
    assert _ids(searcher.get("/v1/search", params={"q": "a square", "tag": "baikal"})) == [tagged]
    both = _ids(searcher.get("/v1/search", params={"q": "a red circle at Baikal", "k": 2}))
    assert set(both) == {ids[0], tagged}
    keyword = _ids(searcher.get("/v1/search", params={"q": "Baikal", "mode": "keyword"}))
    assert keyword == [tagged]
    # Pages join to the unpaged list.
    first = searcher.get("/v1/search", params={"q": "a circle", "k": 2, "mode": "semantic"}).json()
    second = searcher.get(
        "/v1/search", params={"q": "a circle", "k": 2, "mode": "semantic", "cursor": first["next_cursor"]}
    )
    whole = _ids(searcher.get("/v1/search", params={"q": "a circle", "k": 4, "mode": "semantic"}))
    assert [r["id"] for r in first["results"]] + _ids(second) == whole


def test_migration_0011_applies_the_setting_and_its_downgrade_restores_halfvec() -> None:
    """WITHSENSE_VECTOR_INDEX=binary at upgrade: each indexed model gets its bit index and loses the halfvec one;
    the downgrade to 0010 builds the halfvec index again before it drops the bit index."""
    import tempfile
    from pathlib import Path

    from cli.local_services import LocalPostgres
    from migrations.apply import downgrade, upgrade
    from tests.conftest import environment

    server = LocalPostgres(Path(tempfile.mkdtemp(prefix="wsbq-", dir="/tmp")) / "pg")
    server.start()
    try:
        dsn = server.url.replace("+psycopg", "")
        upgrade(server.url, "0010")
        rng = np.random.default_rng(11)
        vectors = rng.normal(size=(60, 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "INSERT INTO embedding_models (name, revision, dimension, active) VALUES ('m', 'r', 16, true) "
                "RETURNING id"
            ).fetchone()
            assert row is not None
            model_id = int(row[0])
            ids = [
                r[0]
                for r in conn.execute(
                    "INSERT INTO photos (storage_key, sha256, format, width, height, bytes, status, moderation_status)"
                    " SELECT 'm/' || g, lpad(to_hex(g), 64, '0'), 'JPEG', 1, 1, 1, 'indexed', 'approved'"
                    " FROM generate_series(0, 59) g ORDER BY g RETURNING id"
                )
            ]
            for photo, vector in zip(ids, vectors, strict=True):
                conn.execute(
                    "INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (%s, %s, %s::halfvec)",
                    (photo, model_id, literal(vector)),
                )
            conn.execute("SELECT ensure_embedding_index(%s)", (model_id,))

        def state() -> tuple[set[str], list[uuid.UUID]]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                names = {
                    r[0]
                    for r in conn.execute(
                        "SELECT indexname FROM pg_indexes WHERE tablename = 'photo_embeddings' "
                        "AND indexname ~ '^ix_photo_embeddings_(hnsw|bq)_'"
                    )
                }
                conn.execute("SET withsense.binary_rerank = 60")
                conn.execute("SET withsense.exact_scan = 'off'")  # the index, not the exact path of 60 rows
                found = [
                    r[0]
                    for r in conn.execute("SELECT photo_id FROM search_photos(%s::vector, 5)", (literal(vectors[3]),))
                ]
            return names, found

        stored = vectors.astype(np.float16).astype(np.float32)
        want = [ids[i] for i in np.argsort(-(stored @ stored[3]), kind="stable")[:5]]
        with environment({"WITHSENSE_VECTOR_INDEX": "binary"}):
            upgrade(server.url)
        assert state() == ({f"ix_photo_embeddings_bq_model_{model_id}"}, want)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT vector_index, binary_centre IS NOT NULL FROM embedding_models").fetchone()
        assert row == ("binary", True)
        downgrade(server.url, "0010")
        assert state()[0] == {f"ix_photo_embeddings_hnsw_model_{model_id}"}
        upgrade(server.url)  # the default: halfvec, nothing rebuilt
        assert state() == ({f"ix_photo_embeddings_hnsw_model_{model_id}"}, want)
    finally:
        server.destroy()


def test_a_selective_filter_takes_exact_distances_sooner_with_the_binary_index(services: Services) -> None:
    """10,000 photos, 4,000 of them visible in RU (the rule alone, so the threshold of migration 0014:
    sqrt(20 x depth x catalogue)): below sqrt(20 x 200 x 10,000) = 6,325, so exact with the bit index (its scan
    would need 200 qualifying candidates), above the halfvec kind's sqrt(20 x 40 x 10,000) = 2,828, so its HNSW
    scan; the same exact nearest photos either way."""
    from db.engine import session_scope
    from services.indexing import registered_model
    from services.vector_index import switch

    model = registered_model()
    n, shown = 10_000, 4_000
    rng = np.random.default_rng(21)
    vectors = rng.normal(size=(n, model.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with session_scope() as session:
        session.execute(text("TRUNCATE photos CASCADE"))
        ids = list(
            session.execute(
                text(
                    "INSERT INTO photos (storage_key, sha256, format, width, height, bytes, status, moderation_status,"
                    " depicts_minor) SELECT 'bqx/' || g, lpad(to_hex(g), 64, '0'), 'JPEG', 1, 1, 1, 'indexed',"
                    " 'approved', g >= :shown FROM generate_series(0, :n - 1) g ORDER BY g RETURNING id"
                ),
                {"n": n, "shown": shown},
            ).scalars()
        )
        session.execute(
            text("INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (:p, :m, :e)"),
            [{"p": p, "m": model.id, "e": HalfVector(v.tolist())} for p, v in zip(ids, vectors, strict=True)],
        )
        session.execute(text("ANALYZE photos; ANALYZE photo_embeddings"))
    dsn = services.database_url.replace("+psycopg", "")
    query = _query(4, model.dimension)
    stored = vectors[:shown].astype(np.float16).astype(np.float32)
    want = [ids[i] for i in np.argsort(-(stored @ query.astype(np.float16).astype(np.float32)), kind="stable")[:K]]

    def search() -> tuple[list[uuid.UUID], bool]:
        """The photos found in RU, and whether an HNSW index scan ranked them."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            plans: list[str] = []
            conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
            for statement in (
                "LOAD 'auto_explain'",
                "SET auto_explain.log_min_duration = 0",
                "SET auto_explain.log_nested_statements = on",
                "SET auto_explain.log_level = notice",
            ):
                conn.execute(statement)
            found = [
                r[0]
                for r in conn.execute(
                    "SELECT photo_id FROM search_photos_filtered(%s::vector, NULL, 10, 'RU', '{}', "
                    '\'{"mode": "semantic", "min_score": null}\')',
                    (literal(query),),
                )
            ]
        scanned = any("Index Scan using" in p and "Order By:" in p and "photo_embeddings e" in p for p in plans)
        return found, scanned

    try:
        halfvec_found, halfvec_scanned = search()
        switch("binary", model_id=model.id)
        binary_found, binary_scanned = search()
    finally:
        switch("halfvec")
        with session_scope() as session:
            session.execute(text("TRUNCATE photos CASCADE"))
    assert halfvec_scanned and not binary_scanned
    assert binary_found == want  # exact
    assert len(set(halfvec_found) & set(want)) >= 9
