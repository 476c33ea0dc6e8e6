"""Filters, keyword and hybrid ranking, the floor, the order and pages of search_photos_filtered(), on a catalogue
of 3,000 photos with metadata written straight into Postgres (random vectors of the active model).

Every filter keeps about 1% of the photos; each must still return k results, the same as an exact scan over what
the filters and the minors law leave, whether the function takes its exact path or the HNSW scan.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector
from sqlalchemy import text

from services.errors import InvalidRequest

N = 3000
K = 10
EPOCH = datetime(2015, 1, 1, tzinfo=UTC)
CAMERAS = ("Canon EOS R5", "NIKON D850", "FUJIFILM X-T4")


@dataclass
class Catalogue:
    model_id: int
    dimension: int
    ids: list[uuid.UUID]
    vectors: np.ndarray
    index_of: dict[uuid.UUID, int]

    def query(self, seed: int) -> np.ndarray:
        vector = np.random.default_rng(seed).normal(size=self.dimension).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def exact(self, query: np.ndarray, keep: Callable[[int], bool], k: int = K) -> list[uuid.UUID]:
        """The true top k among the photos `keep` lets through (by row number), best first."""
        rows = [g for g in range(N) if keep(g)]
        # As Postgres computes it: halfvec values (the column and the cast query), cosine in float32.
        stored = self.vectors[rows].astype(np.float16).astype(np.float32)
        asked = query.astype(np.float16).astype(np.float32)
        scores = (stored @ asked) / (np.linalg.norm(stored, axis=1) * np.linalg.norm(asked))
        return [self.ids[rows[i]] for i in np.argsort(-scores, kind="stable")[:k]]


# Row g's metadata, in SQL and in Python (the truth the tests check the search against).
def photographer_of(g: int) -> str:
    return f"Person {g % 100}"


def tags_of(g: int) -> list[str]:
    return [f"t{g % 100}", "even" if g % 2 == 0 else "odd"]


def camera_of(g: int) -> str | None:
    return CAMERAS[g % 3] if g % 4 else None


def taken_of(g: int) -> datetime:
    return EPOCH + timedelta(days=g)


def size_of(g: int) -> tuple[int, int]:
    return 1000 + (g % 50) * 100, 800 + (g % 7) * 200


def minor(g: int) -> bool:
    return g % 10 == 9  # hidden where the minors law applies (RU); shown in unrestricted regions


@pytest.fixture(scope="module")
def catalogue(services) -> Iterator[Catalogue]:  # type: ignore[no-untyped-def]
    """Written once for the module (the tests only read it); no other photo exists meanwhile."""
    from db.engine import session_scope
    from services.indexing import registered_model

    model = registered_model()
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(N, model.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with session_scope() as session:
        session.execute(text("TRUNCATE photos CASCADE"))
        ids = list(
            session.execute(
                text(
                    "INSERT INTO photos (storage_key, sha256, format, width, height, bytes, status, moderation_status, "
                    "depicts_minor, title, photographer, tags, camera, taken_at, created_at) "
                    "SELECT 'cat/' || g, lpad(to_hex(g), 64, '0'), 'JPEG', 1000 + (g % 50) * 100, 800 + (g % 7) * 200, "
                    "1, 'indexed', 'approved', g % 10 = 9, "
                    "'Photo ' || g || CASE WHEN g % 100 = 42 THEN ' at Lake Baikal' ELSE '' END, "
                    "'Person ' || (g % 100), ARRAY['t' || (g % 100), CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END], "
                    "CASE WHEN g % 4 = 0 THEN NULL ELSE (ARRAY[:c0, :c1, :c2])[g % 3 + 1] END, "
                    ":epoch + g * interval '1 day', :epoch + g * interval '1 minute' "
                    "FROM generate_series(0, :n - 1) g ORDER BY g RETURNING id"
                ),
                {"n": N, "epoch": EPOCH, "c0": CAMERAS[0], "c1": CAMERAS[1], "c2": CAMERAS[2]},
            ).scalars()
        )
        session.execute(
            text("INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (:p, :m, :e)"),
            [{"p": p, "m": model.id, "e": HalfVector(v.tolist())} for p, v in zip(ids, vectors, strict=True)],
        )
        session.execute(text("ANALYZE photos; ANALYZE photo_embeddings"))
    yield Catalogue(model.id, model.dimension, ids, vectors, {p: i for i, p in enumerate(ids)})
    with session_scope() as session:
        session.execute(text("TRUNCATE photos CASCADE"))


def _search(
    vector: np.ndarray | None,
    k: int = K,
    region: str | None = "RU",
    text_query: str | None = None,
    *,
    exact_below: int | None = None,
    **filters_and_options: Any,
) -> list[Any]:
    """search_photos_filtered() through db/search.py (filters and options as the SQL function takes them)."""
    from db.engine import session_scope
    from db.search import search_filtered

    options = {key: filters_and_options.pop(key) for key in list(filters_and_options) if key in OPTION_KEYS}
    with session_scope() as session:
        return search_filtered(
            session, vector, text_query, k, region, dict(filters_and_options), options, exact_below=exact_below
        )


OPTION_KEYS = {"mode", "sort", "min_score", "offset", "exclude", "negative_text"}

# Filters that keep about 1% of the catalogue, and the same rule in Python.
ONE_PERCENT: dict[str, tuple[dict[str, Any], Callable[[int], bool]]] = {
    "photographer": ({"photographer": ["person 7"]}, lambda g: g % 100 == 7),
    "tag": ({"tag": "t13"}, lambda g: g % 100 == 13),
    "two tags, both required": ({"tag": ["t26", "even"]}, lambda g: g % 100 == 26),
    "taken in a month": (
        {"taken_after": "2019-01-01", "taken_before": "2019-02-01"},
        lambda g: datetime(2019, 1, 1, tzinfo=UTC) <= taken_of(g) < datetime(2019, 2, 1, tzinfo=UTC),
    ),
    "uploaded in half an hour": (
        {"uploaded_after": (EPOCH + timedelta(minutes=600)).isoformat(), "uploaded_before": "2015-01-01T10:30:00Z"},
        lambda g: 600 <= g < 630,
    ),
    "wide and tall": ({"min_width": 5800, "min_height": 1600}, lambda g: g % 50 >= 48 and g % 7 >= 4),
    "camera and orientation": (
        {"camera": ["canon eos r5"], "orientation": "portrait", "tag": "odd"},
        lambda g: camera_of(g) == "Canon EOS R5" and size_of(g)[0] < size_of(g)[1] and g % 2 == 1,
    ),
}


@pytest.mark.parametrize("path", ["exact", "hnsw"])
@pytest.mark.parametrize("case", list(ONE_PERCENT))
def test_a_one_percent_filter_returns_k_results_of_the_exact_scan(catalogue: Catalogue, case: str, path: str) -> None:
    filters, keep = ONE_PERCENT[case]
    eligible = [g for g in range(N) if keep(g) and not minor(g)]
    assert K <= len(eligible) <= 0.02 * N, f"{case} keeps {len(eligible)} photos"
    recalls = []
    for seed in range(5):
        query = catalogue.query(seed)
        # exact_below=0: the HNSW scan whatever the count (production's path for filters that keep many photos).
        hits = _search(query, exact_below=0 if path == "hnsw" else None, mode="semantic", **filters)
        got = [hit.photo_id for hit in hits]
        assert len(got) == K, f"{case}: {len(got)} results"
        assert all(keep(catalogue.index_of[p]) and not minor(catalogue.index_of[p]) for p in got)
        truth = catalogue.exact(query, lambda g: keep(g) and not minor(g))
        if path == "exact":
            assert got == truth
        recalls.append(len(set(got) & set(truth)) / K)
    assert np.mean(recalls) >= 0.95, recalls


def test_the_scans_first_40_finds_are_in_exact_order_on_every_page(catalogue: Catalogue) -> None:
    """The HNSW path: pgvector's relaxed iterative scan returns its finds in loose order once it needs more than one
    batch (a filter, a small ef_search), so the function puts its first 40 finds (fetched whatever the page's depth)
    in exact order. Revision 0009 returned them as found: unsorted for each of these queries."""
    from db.engine import session_scope
    from db.search import search_filtered

    half: dict[str, Any] = {"tag": "even"}  # 50% of the photos, 45% without the minors: the HNSW path

    def search(query: np.ndarray, k: int, offset: int = 0) -> list[Any]:
        options = {"mode": "semantic", "offset": offset}
        with session_scope() as session:
            return search_filtered(session, query, None, k, "RU", half, options, exact_below=0, ef_search=10)

    for seed in range(5):
        query = catalogue.query(100 + seed)
        deep, first, second = search(query, 40), search(query, 10), search(query, 10, offset=10)
        scores = [hit.score for hit in deep]
        assert len(scores) == 40
        assert scores == sorted(scores, reverse=True), "the head is in exact order"
        assert [h.photo_id for h in first + second] == [h.photo_id for h in deep[:20]], "pages are slices of it"
        assert all(catalogue.index_of[h.photo_id] % 2 == 0 for h in deep)


def test_where_the_law_does_not_apply_the_minors_are_back(catalogue: Catalogue, free_region: str) -> None:
    query = catalogue.query(3)
    people: dict[str, Any] = {"photographer": ["person 13", "person 19"]}  # Person 19's photos all show minors

    def keep(g: int) -> bool:
        return g % 100 in (13, 19)

    restricted = {h.photo_id for h in _search(query, k=100, mode="semantic", **people)}
    free = {h.photo_id for h in _search(query, k=100, region=free_region, mode="semantic", **people)}
    assert restricted == {catalogue.ids[g] for g in range(N) if keep(g) and not minor(g)}
    assert free == {catalogue.ids[g] for g in range(N) if keep(g)}
    assert len(free) == 2 * len(restricted)


@pytest.mark.parametrize(
    ("mode", "words", "filters"),
    [
        ("semantic", None, {}),
        ("semantic", None, {"tag": "even"}),
        ("semantic", None, {"photographer": [f"Person {p}" for p in range(5)]}),  # 135 qualify: the exact path
        ("keyword", "photo baikal", {}),
        ("hybrid", "photo baikal", {}),
        ("hybrid", "photo baikal", {"orientation": ["landscape", "square"]}),
        ("hybrid", "lake", {"photographer": ["Person 42", "Person 1", "Person 2"]}),
    ],
)
def test_pages_join_to_the_unpaged_top_n(
    catalogue: Catalogue, mode: Any, words: str | None, filters: dict[str, Any]
) -> None:
    from db.engine import session_scope
    from services.search import SearchFilters, SearchOptions, search_vector

    query = catalogue.query(11)
    search_filters = SearchFilters.parse(**filters)
    with session_scope() as session:
        whole = search_vector(session, query, 63, "RU", SearchOptions(filters=search_filters, mode=mode), words)
        pages, cursor = [], None
        for _ in range(20):
            page = search_vector(
                session, query, 7, "RU", SearchOptions(filters=search_filters, mode=mode, cursor=cursor), words
            )
            pages.extend(page.hits)
            cursor = page.next_cursor
            if cursor is None or len(pages) >= 63:
                break
    assert len(whole.hits) == 63
    assert [h.photo_id for h in pages[:63]] == [h.photo_id for h in whole.hits]
    assert [h.rank for h in pages[:63]] == list(range(1, 64))
    assert len({h.photo_id for h in pages}) == len(pages), "no photo on two pages"


def test_pages_end_at_1000_results_with_no_duplicates(catalogue: Catalogue) -> None:
    from db.engine import session_scope
    from services.search import SearchOptions, search_vector

    seen: list[uuid.UUID] = []
    cursor = None
    with session_scope() as session:
        for _ in range(12):
            page = search_vector(session, catalogue.query(5), 100, None, SearchOptions(mode="semantic", cursor=cursor))
            seen.extend(h.photo_id for h in page.hits)
            cursor = page.next_cursor
            if cursor is None:
                break
    assert len(seen) == 1000 and len(set(seen)) == 1000
    assert cursor is None, "no page after the 1,000th result"


def test_the_last_page_has_no_cursor(catalogue: Catalogue) -> None:
    from db.engine import session_scope
    from services.search import SearchFilters, SearchOptions, search_vector

    options = SearchOptions(filters=SearchFilters.parse(tag=["t13"]), mode="semantic")
    with session_scope() as session:
        first = search_vector(session, catalogue.query(1), 20, "RU", options)
        assert first.next_cursor is not None and len(first.hits) == 20
        second = search_vector(
            session, catalogue.query(1), 20, "RU", dataclasses.replace(options, cursor=first.next_cursor)
        )
    assert len(second.hits) == 10 and second.next_cursor is None  # 30 photos are tagged t13
    assert {h.photo_id for h in first.hits}.isdisjoint({h.photo_id for h in second.hits})


def test_a_cursor_from_another_query_or_filter_set_is_refused(catalogue: Catalogue) -> None:
    from db.engine import session_scope
    from services.search import SearchFilters, SearchOptions, search_vector

    query = catalogue.query(2)
    with session_scope() as session:
        cursor = search_vector(session, query, 5, "RU", SearchOptions(mode="semantic")).next_cursor
        assert cursor
        for vector, region, options in (
            (catalogue.query(3), "RU", SearchOptions(mode="semantic", cursor=cursor)),
            (query, "DE", SearchOptions(mode="semantic", cursor=cursor)),
            (query, "RU", SearchOptions(mode="semantic", cursor=cursor, filters=SearchFilters.parse(tag=["even"]))),
            (query, "RU", SearchOptions(mode="semantic", cursor=cursor, min_score=0.1)),
            (query, "RU", SearchOptions(mode="semantic", cursor=cursor, sort="newest")),
        ):
            with pytest.raises(InvalidRequest, match="another query or filter set"):
                search_vector(session, vector, 5, region, options)
        payload, signature = cursor.split(".")
        for forged in (payload + "." + signature[::-1], "eyJvIjo5MDAsImYiOiJ4In0." + signature, "x", cursor + "x"):
            with pytest.raises(InvalidRequest, match="not a cursor this service issued"):
                search_vector(session, query, 5, "RU", SearchOptions(mode="semantic", cursor=forged))


def test_keyword_mode_finds_words_and_hybrid_puts_them_with_the_picture(catalogue: Catalogue) -> None:
    baikal = {catalogue.ids[g] for g in range(N) if g % 100 == 42 and not minor(g)}
    keyword = _search(catalogue.query(4), k=50, text_query="Baikal lakes", mode="keyword")
    assert {h.photo_id for h in keyword} == baikal
    assert {h.matched for h in keyword} == {"keyword"}
    hybrid = _search(catalogue.query(4), k=70, text_query="Baikal lakes", mode="hybrid")
    assert baikal <= {h.photo_id for h in hybrid[:70]}, "fused: the word matches rank with the best pictures"
    assert len(baikal) == 30
    assert {h.matched for h in hybrid if h.photo_id in baikal} <= {"keyword", "both"}
    assert all(h.score is not None for h in hybrid), "every result keeps its cosine similarity"


def test_a_callers_floor_holds_for_every_result_and_the_models_floor_keeps_keyword_matches(
    catalogue: Catalogue,
) -> None:
    from db.engine import session_scope

    query = catalogue.query(8)
    scores = np.sort(catalogue.vectors @ query)[::-1]
    floor = float(scores[40])  # about 40 photos (fewer after the minors law) are above it
    semantic = _search(query, k=100, mode="semantic", min_score=floor)
    assert 20 <= len(semantic) < 45 and all(h.score >= floor - 1e-3 for h in semantic)
    hybrid = _search(query, k=100, text_query="baikal", mode="hybrid", min_score=floor)
    assert all(h.score >= floor - 1e-3 for h in hybrid)

    with session_scope() as session:
        session.execute(
            text("UPDATE embedding_models SET min_score = :f WHERE id = :m"), {"f": floor, "m": catalogue.model_id}
        )
    try:
        defaulted = _search(query, k=100, text_query="baikal", mode="hybrid")
        baikal = {catalogue.ids[g] for g in range(N) if g % 100 == 42 and not minor(g)}
        assert baikal <= {h.photo_id for h in defaulted}, "keyword matches pass the model's default floor"
        assert all(h.score >= floor - 1e-3 for h in defaulted if h.photo_id not in baikal)
        assert len(_search(query, k=100, mode="semantic")) == len(semantic)
        assert len(_search(query, k=100, mode="semantic", min_score=None)) == 100, "null: no floor"
    finally:
        with session_scope() as session:
            session.execute(
                text("UPDATE embedding_models SET min_score = NULL WHERE id = :m"), {"m": catalogue.model_id}
            )


def test_newest_first_among_the_relevant(catalogue: Catalogue) -> None:
    query = catalogue.query(9)
    newest = _search(query, k=30, mode="semantic", sort="newest", tag="even")
    assert len(newest) == 30
    taken = [h.taken_at for h in newest]
    assert taken == sorted(taken, reverse=True)
    page_two = _search(query, k=30, mode="semantic", sort="newest", tag="even", offset=30)
    assert page_two[0].taken_at <= taken[-1] and {h.photo_id for h in page_two}.isdisjoint(h.photo_id for h in newest)


def test_excluded_photos_and_negative_words(catalogue: Catalogue) -> None:
    query = catalogue.query(10)
    top = _search(query, k=5, mode="semantic")
    without = _search(query, k=5, mode="semantic", exclude=[str(top[0].photo_id)])
    assert top[0].photo_id not in {h.photo_id for h in without}
    assert [h.photo_id for h in without[:4]] == [h.photo_id for h in top[1:]]
    hits = _search(query, k=200, text_query="photo", mode="hybrid", negative_text="baikal")
    assert not any("Baikal" in (h.title or "") for h in hits)


@pytest.mark.parametrize(
    ("filters", "options", "message"),
    [
        ({"colour": "red"}, {}, 'unknown filter "colour"'),
        ({"orientation": "diagonal"}, {}, "orientation must be landscape, portrait or square"),
        ({"taken_after": "last tuesday"}, {}, 'filter "taken_after" is not an ISO date'),
        ({"min_width": -3}, {}, "whole number of pixels"),
        ({"tag": []}, {}, "needs at least one value"),
        ({"tag": [1, 2]}, {}, "string or an array of strings"),
        ({}, {"mode": "fuzzy"}, "mode must be hybrid, semantic or keyword"),
        ({}, {"sort": "oldest"}, "sort must be relevance or newest"),
        ({}, {"offset": 1000}, "offset must be an integer from 0 to 999"),
        ({}, {"min_score": 3}, "min_score must be a number from -1 to 1"),
        ({}, {"page": 2}, 'unknown option "page"'),
    ],
)
def test_the_sql_function_refuses_what_it_cannot_read(
    catalogue: Catalogue, filters: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    from db.engine import session_scope
    from db.search import InvalidSearch, search_filtered

    with session_scope() as session, pytest.raises(InvalidSearch, match=message):
        search_filtered(session, catalogue.query(0), "x", K, "RU", filters, options)


def test_the_reader_role_gets_filters_keywords_and_pages(catalogue: Catalogue, services) -> None:  # type: ignore[no-untyped-def]
    role = f"catalogue_{uuid.uuid4().hex[:8]}"
    admin_dsn = services.database_url.replace("+psycopg", "")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role}-pw' IN ROLE withsense_reader")
    vector = "[" + ",".join(f"{x:.6f}" for x in catalogue.query(12)) + "]"
    try:
        with psycopg.connect(services.postgres.dsn_for(role, f"{role}-pw"), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT photo_id, rank, matched FROM search_photos_filtered(%s::vector, 'Baikal', 10, 'RU', "
                '%s::jsonb, \'{"mode": "hybrid"}\')',
                (vector, '{"tag": "t42"}'),
            ).fetchall()
            expected = {catalogue.ids[g] for g in range(N) if g % 100 == 42 and not minor(g)}
            assert {r[0] for r in rows} <= expected
            assert len(rows) == 10 and [r[1] for r in rows] == list(range(1, 11))
            assert {r[2] for r in rows} == {"both"}
            second = conn.execute(
                "SELECT photo_id FROM search_photos_filtered(%s::vector, 'Baikal', 10, 'RU', %s::jsonb, "
                "'{\"offset\": 10}')",
                (vector, '{"tag": "t42"}'),
            ).fetchall()
            assert len(second) == 10 and {r[0] for r in second} <= expected
            assert {r[0] for r in second}.isdisjoint({r[0] for r in rows})
            source = next(iter(expected))
            similar = conn.execute(
                "SELECT photo_id FROM similar_photos_filtered(%s, 5, 'RU', '{\"tag\": \"t42\"}')", (source,)
            ).fetchall()
            assert len(similar) == 5 and source not in {r[0] for r in similar}
            hidden = catalogue.ids[49]  # a minor: not a starting point in RU
            assert conn.execute("SELECT count(*) FROM similar_photos_filtered(%s, 5, 'RU')", (hidden,)).fetchone() == (
                0,
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT search_filter_values('x', '\"y\"')")
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


@pytest.fixture()
def free_region(services):  # type: ignore[no-untyped-def]
    from db.engine import session_scope
    from db.policy import delete_region_rule, set_region_rule

    with session_scope() as session:
        set_region_rule(session, "ZF", minors_restricted=False, note="test")
    yield "ZF"
    with session_scope() as session:
        delete_region_rule(session, "ZF")
