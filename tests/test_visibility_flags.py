"""The visibility rule kept on the embedding rows (issue 16, item 5): never stale, the minors law exactly as before.

photo_embeddings carries photo_is_visible() of its photo for both answers of minors_allowed, and the HNSW scan
tests those flags instead of looking each candidate up in photos. These tests flip every column the rule reads,
through the API and in SQL, and see the search change at once: through the API, and through the reader role's
SQL functions, in a restricted region and in one where the law does not apply. They also check the flags against
the rule itself on every combination of the columns, that nobody can write a flag by hand, and that a change of
the photo racing an embedding's insertion leaves the flags right.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from pgvector import HalfVector
from sqlalchemy import text

from tests.conftest import Services, create_api_key

N = 300
FREE = "XG"  # a region where the minors law does not apply (set by the module)
RESTRICTED = "RU"


@dataclass
class Catalogue:
    model_id: int
    ids: list[uuid.UUID]
    vectors: np.ndarray
    reader_dsn: str
    admin_dsn: str


@pytest.fixture(scope="module")
def catalogue(services: Services) -> Iterator[Catalogue]:
    """N visible photos with random vectors of the active model, written straight into Postgres; a reader role."""
    from db.engine import session_scope
    from db.policy import delete_region_rule, set_region_rule
    from services.indexing import registered_model

    model = registered_model()
    rng = np.random.default_rng(16)
    vectors = rng.normal(size=(N, model.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with session_scope() as session:
        session.execute(text("TRUNCATE photos CASCADE"))
        set_region_rule(session, FREE, minors_restricted=False, note="test")
        ids = list(
            session.execute(
                text(
                    "INSERT INTO photos (storage_key, sha256, format, width, height, bytes, status, moderation_status,"
                    " title) SELECT 'vis/' || g, lpad(to_hex(g), 64, '0'), 'JPEG', 800, 600, 1, 'indexed',"
                    " 'approved', 'Photo ' || g FROM generate_series(0, :n - 1) g ORDER BY g RETURNING id"
                ),
                {"n": N},
            ).scalars()
        )
        session.execute(
            text("INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (:p, :m, :e)"),
            [{"p": p, "m": model.id, "e": HalfVector(v.tolist())} for p, v in zip(ids, vectors, strict=True)],
        )
        session.execute(text("ANALYZE photos; ANALYZE photo_embeddings"))
    role = f"vis_{uuid.uuid4().hex[:8]}"
    admin_dsn = services.database_url.replace("+psycopg", "")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role}-pw' IN ROLE withsense_reader")
    try:
        yield Catalogue(model.id, ids, vectors, services.postgres.dsn_for(role, f"{role}-pw"), admin_dsn)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
        with session_scope() as session:
            session.execute(text("TRUNCATE photos CASCADE"))
            delete_region_rule(session, FREE)


@pytest.fixture(scope="module")
def search_client(catalogue: Catalogue) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(), headers={"Authorization": f"Bearer {create_api_key('search')}"}) as client:
        yield client


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in vector.tolist()) + "]"


def _sql_top(
    cat: Catalogue, index: int, region: str, *, filtered: bool, k: int = 5, exact: bool | None = None
) -> list[uuid.UUID]:
    """The reader role's search for photo `index`'s own vector (it is its own nearest neighbour); `exact` forces
    the exact distances (True) or the HNSW scan (False), None leaves the functions' own choice."""
    with psycopg.connect(cat.reader_dsn, autocommit=True) as conn:
        if exact is not None:
            conn.execute(f"SET withsense.exact_scan = '{'on' if exact else 'off'}'")
        if filtered:
            sql = (
                "SELECT photo_id FROM search_photos_filtered(%s::vector, NULL, %s, %s, '{}', "
                '\'{"mode": "semantic", "min_score": null}\')'
            )
        else:
            sql = "SELECT photo_id FROM search_photos(%s::vector, %s, %s)"
        return [row[0] for row in conn.execute(sql, (_literal(cat.vectors[index]), k, region))]


def _api_top(client: TestClient, cat: Catalogue, index: int, region: str, k: int = 5) -> list[uuid.UUID]:
    body = {"embedding": cat.vectors[index].tolist(), "k": k, "region": region, "mode": "semantic"}
    response = client.post("/v1/search/vector", json=body)
    assert response.status_code == 200, response.text
    return [uuid.UUID(hit["id"]) for hit in response.json()["results"]]


def _shown(client: TestClient, cat: Catalogue, index: int, region: str) -> dict[str, bool]:
    """Whether photo `index` is found by each way of searching, in `region`."""
    photo = cat.ids[index]
    return {
        **{
            f"{name}, {path}": photo in _sql_top(cat, index, region, filtered=filtered, exact=path == "exact")
            for name, filtered in (("search_photos", False), ("search_photos_filtered", True))
            for path in ("hnsw", "exact")
        },
        "api": photo in _api_top(client, cat, index, region),
    }


WAYS = tuple(f"{name}, {path}" for name in ("search_photos", "search_photos_filtered") for path in ("hnsw", "exact"))


def _set(cat: Catalogue, photo: uuid.UUID, **columns: object) -> None:
    with psycopg.connect(cat.admin_dsn, autocommit=True) as conn:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        conn.execute(f"UPDATE photos SET {assignments} WHERE id = %s", (*columns.values(), photo))


VISIBLE = {
    "status": "indexed",
    "visibility": "public",
    "moderation_status": "approved",
    "depicts_minor": False,
    "parental_consent": False,
}
# Each change of one column from VISIBLE, and where it must hide the photo.
CHANGES: list[tuple[dict[str, object], set[str]]] = [
    ({"status": "failed"}, {RESTRICTED, FREE}),
    ({"status": "pending"}, {RESTRICTED, FREE}),
    ({"visibility": "private"}, {RESTRICTED, FREE}),
    ({"moderation_status": "rejected"}, {RESTRICTED, FREE}),
    ({"moderation_status": "pending_review"}, {RESTRICTED, FREE}),
    ({"depicts_minor": True}, {RESTRICTED}),  # a child without consent: hidden only where the law applies
    ({"depicts_minor": True, "parental_consent": True}, set()),
]


CHANGE_IDS = ["+".join(f"{name}={value}" for name, value in change.items()) for change, _ in CHANGES]


@pytest.mark.parametrize(("change", "hidden_in"), CHANGES, ids=CHANGE_IDS)
def test_each_column_of_the_rule_changes_every_search_at_once(
    catalogue: Catalogue, search_client: TestClient, change: dict[str, object], hidden_in: set[str]
) -> None:
    index = 10 + CHANGES.index((change, hidden_in))
    photo = catalogue.ids[index]
    for region in (RESTRICTED, FREE):
        assert all(_shown(search_client, catalogue, index, region).values()), "visible before the change"
    _set(catalogue, photo, **change)
    try:
        for region in (RESTRICTED, FREE):
            expected = region not in hidden_in
            assert _shown(search_client, catalogue, index, region) == dict.fromkeys((*WAYS, "api"), expected), (
                f"after {change} in {region}"
            )
    finally:
        _set(catalogue, photo, **VISIBLE)
    for region in (RESTRICTED, FREE):
        assert all(_shown(search_client, catalogue, index, region).values()), "visible again once restored"


def test_the_flags_are_the_rule_on_every_combination_of_its_columns(catalogue: Catalogue) -> None:
    """Every combination of the rule's columns, set on as many photos: each row's flags are photo_is_visible()."""
    combinations = list(
        itertools.product(
            ("indexed", "pending", "failed"),
            ("public", "private"),
            ("approved", "rejected", "pending_review"),
            (False, True),
            (False, True),
        )
    )
    targets = catalogue.ids[50 : 50 + len(combinations)]
    try:
        for photo, (status, visibility, moderation, minor, consent) in zip(targets, combinations, strict=True):
            _set(
                catalogue,
                photo,
                status=status,
                visibility=visibility,
                moderation_status=moderation,
                depicts_minor=minor,
                parental_consent=consent,
            )
        with psycopg.connect(catalogue.admin_dsn, autocommit=True) as conn:
            wrong = conn.execute(
                "SELECT p.id FROM photos p JOIN photo_embeddings e ON e.photo_id = p.id "
                "WHERE e.visible_restricted IS DISTINCT FROM photo_is_visible(p, false) "
                "   OR e.visible_unrestricted IS DISTINCT FROM photo_is_visible(p, true)"
            ).fetchall()
            counts = conn.execute(
                "SELECT count(*) FILTER (WHERE visible_restricted), count(*) FILTER (WHERE visible_unrestricted) "
                "FROM photo_embeddings WHERE photo_id = ANY(%s)",
                (targets,),
            ).fetchone()
    finally:
        for photo in targets:
            _set(catalogue, photo, **VISIBLE)
    assert wrong == []
    # indexed, public, approved: 4 minor/consent combinations; 3 of them shown where the law applies.
    assert counts == (3, 4)


def test_a_flag_cannot_be_written_by_hand(catalogue: Catalogue) -> None:
    photo = catalogue.ids[100]
    _set(catalogue, photo, depicts_minor=True)
    try:
        with psycopg.connect(catalogue.admin_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE photo_embeddings SET visible_restricted = true, visible_unrestricted = false "
                "WHERE photo_id = %s",
                (photo,),
            )
            flags = conn.execute(
                "SELECT visible_restricted, visible_unrestricted FROM photo_embeddings WHERE photo_id = %s", (photo,)
            ).fetchone()
        assert flags == (False, True)
        assert photo not in _sql_top(catalogue, 100, RESTRICTED, filtered=False)
    finally:
        _set(catalogue, photo, **VISIBLE)


def test_the_flags_change_in_the_writing_transaction_and_a_rollback_undoes_them(catalogue: Catalogue) -> None:
    photo = catalogue.ids[110]
    literal = _literal(catalogue.vectors[110])
    with psycopg.connect(catalogue.admin_dsn) as conn:
        conn.execute("UPDATE photos SET parental_consent = false, depicts_minor = true WHERE id = %s", (photo,))
        inside = [r[0] for r in conn.execute("SELECT photo_id FROM search_photos(%s::vector, 5, 'RU')", (literal,))]
        assert photo not in inside, "the writing transaction sees its own change"
        assert photo in _sql_top(catalogue, 110, RESTRICTED, filtered=False), "others see it only once committed"
        conn.rollback()
    assert photo in _sql_top(catalogue, 110, RESTRICTED, filtered=False)


def test_a_new_embedding_takes_the_flags_of_its_photo(catalogue: Catalogue) -> None:
    """A vector of a photo that is hidden (here: a child without consent) is written hidden, whatever it says."""
    photo, index = catalogue.ids[120], 120
    with psycopg.connect(catalogue.admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM photo_embeddings WHERE photo_id = %s", (photo,))
        conn.execute("UPDATE photos SET depicts_minor = true WHERE id = %s", (photo,))
        conn.execute(
            "INSERT INTO photo_embeddings (photo_id, model_id, embedding, visible_restricted, visible_unrestricted) "
            "VALUES (%s, %s, %s::halfvec, true, true)",
            (photo, catalogue.model_id, _literal(catalogue.vectors[index])),
        )
    try:
        assert photo not in _sql_top(catalogue, index, RESTRICTED, filtered=True)
        assert photo in _sql_top(catalogue, index, FREE, filtered=True)
    finally:
        _set(catalogue, photo, **VISIBLE)


def test_a_change_racing_an_insertion_leaves_the_flags_right(catalogue: Catalogue) -> None:
    """One transaction writes a vector while another hides the photo: whichever commits first, the flag is right.

    The insertion reads the photo FOR SHARE, so the moderation waits for it, then updates the new row."""
    photo, index = catalogue.ids[130], 130
    with psycopg.connect(catalogue.admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM photo_embeddings WHERE photo_id = %s", (photo,))
    errors: list[psycopg.Error] = []
    with psycopg.connect(catalogue.admin_dsn) as writer:
        writer.execute(
            "INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (%s, %s, %s::halfvec)",
            (photo, catalogue.model_id, _literal(catalogue.vectors[index])),
        )

        def moderate() -> None:
            try:
                with psycopg.connect(catalogue.admin_dsn, autocommit=True) as other:
                    other.execute("SET lock_timeout = '20s'")
                    other.execute("UPDATE photos SET moderation_status = 'rejected' WHERE id = %s", (photo,))
            except psycopg.Error as exc:  # reported below, in the test's thread
                errors.append(exc)

        thread = threading.Thread(target=moderate)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive(), "the moderation waits for the transaction that is writing the vector"
        writer.commit()
    thread.join(30.0)
    assert not thread.is_alive() and errors == []
    try:
        with psycopg.connect(catalogue.admin_dsn, autocommit=True) as conn:
            flags = conn.execute(
                "SELECT visible_restricted, visible_unrestricted FROM photo_embeddings WHERE photo_id = %s", (photo,)
            ).fetchone()
        assert flags == (False, False)
        assert photo not in _sql_top(catalogue, index, FREE, filtered=False)
    finally:
        _set(catalogue, photo, **VISIBLE)


def test_decisions_through_the_api_change_search_at_once(
    catalogue: Catalogue, search_client: TestClient, api: TestClient
) -> None:
    """Moderation, the declarations, visibility and deletion through the API: the next search reflects each."""
    index = 140
    photo = catalogue.ids[index]
    steps: list[tuple[Callable[[], object], dict[str, bool]]] = [
        (
            lambda: api.post(f"/v1/photos/{photo}/moderation", json={"depicts_minor": True, "reason": "a child"}),
            {RESTRICTED: False, FREE: True},
        ),
        (
            lambda: api.post(
                f"/v1/photos/{photo}/moderation", json={"parental_consent": True, "reason": "signed form #7"}
            ),
            {RESTRICTED: True, FREE: True},
        ),
        (
            lambda: api.post(f"/v1/photos/{photo}/moderation", json={"status": "rejected", "reason": "off topic"}),
            {RESTRICTED: False, FREE: False},
        ),
        (
            lambda: api.post(f"/v1/photos/{photo}/moderation", json={"status": "approved", "reason": "on appeal"}),
            {RESTRICTED: True, FREE: True},
        ),
        (lambda: api.patch(f"/v1/photos/{photo}", json={"visibility": "private"}), {RESTRICTED: False, FREE: False}),
        (lambda: api.patch(f"/v1/photos/{photo}", json={"visibility": "public"}), {RESTRICTED: True, FREE: True}),
        (lambda: api.delete(f"/v1/photos/{photo}"), {RESTRICTED: False, FREE: False}),
    ]
    for step, expected in steps:
        response = step()
        assert response.status_code in (200, 204), response.text  # type: ignore[attr-defined]
        for region, shown in expected.items():
            assert (photo in _api_top(search_client, catalogue, index, region)) is shown, (response, region)
            assert (photo in _sql_top(catalogue, index, region, filtered=True)) is shown, (response, region)
