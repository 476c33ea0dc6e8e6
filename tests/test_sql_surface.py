"""The SQL surface (db/sql/): one visibility rule for every consumer, one region rule for the API and SQL,
and a read-only role that cannot see past the view."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from pgvector import HalfVector, Vector
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.regions import InvalidRegion, normalise_region, normalise_rule_region
from db.models import EmbeddingModel
from tests.conftest import Services

pytestmark = pytest.mark.usefixtures("clean_db")


@dataclass(frozen=True)
class PhotoState:
    status: str
    visibility: str
    moderation_status: str
    depicts_minor: bool
    parental_consent: bool

    def visible(self, minors_allowed: bool) -> bool:
        """The rule, spelled out independently of SQL."""
        return (
            self.status == "indexed"
            and self.visibility == "public"
            and self.moderation_status == "approved"
            and (minors_allowed or not self.depicts_minor or self.parental_consent)
        )


# The model row and every photo state the visibility rule distinguishes, by photo id.
EveryState = tuple[EmbeddingModel, dict[uuid.UUID, PhotoState]]


STATES = [
    PhotoState(*combo)
    for combo in itertools.product(
        ("indexed", "pending"),
        ("public", "private"),
        ("approved", "pending_review", "rejected"),
        (False, True),
        (False, True),
    )
]
FREE = "XF"  # made unrestricted inside each test's own transaction


@pytest.fixture()
def session(services: Services) -> Iterator[Session]:
    """A session whose work is rolled back at the end: region rules changed here never reach other tests."""
    from db.engine import get_sessionmaker

    with get_sessionmaker()() as session:
        try:
            yield session
        finally:
            session.rollback()


@pytest.fixture()
def every_state(services: Services) -> EveryState:
    """One photo for each combination of the columns the rule reads, each with a vector of the active model."""
    from db.engine import session_scope
    from services.indexing import registered_model

    model = registered_model()
    rng = np.random.default_rng(5)
    photos: dict[uuid.UUID, PhotoState] = {}
    with session_scope() as session:
        for n, state in enumerate(STATES):
            photo_id = session.execute(
                text(
                    "INSERT INTO photos (storage_key, sha256, format, width, height, bytes, title, status, visibility, "
                    "moderation_status, depicts_minor, parental_consent) VALUES (:key, :sha, 'JPEG', 1, 1, 1, :title, "
                    ":status, :visibility, :moderation, :minor, :consent) RETURNING id"
                ),
                {
                    "key": f"rule/{n}",
                    "sha": f"{n:064x}",
                    "title": f"state {n}",
                    "status": state.status,
                    "visibility": state.visibility,
                    "moderation": state.moderation_status,
                    "minor": state.depicts_minor,
                    "consent": state.parental_consent,
                },
            ).scalar_one()
            vector = rng.normal(size=model.dimension).astype(np.float32)
            session.execute(
                text("INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (:p, :m, :e)"),
                {"p": photo_id, "m": model.id, "e": HalfVector((vector / np.linalg.norm(vector)).tolist())},
            )
            photos[photo_id] = state
    return model, photos


def _free_region(session: Session) -> None:
    from db.policy import set_region_rule

    set_region_rule(session, FREE, minors_restricted=False, note="test_sql_surface")


def test_every_consumer_applies_the_one_visibility_rule(session: Session, every_state: EveryState) -> None:
    """The view, search_photos, similar_photos and photo_visibility agree with the rule on every combination."""
    from db.moderation import photo_visibility
    from db.search import search_by_vector, similar_to_photo

    model, photos = every_state
    _free_region(session)
    query = np.ones(model.dimension, dtype=np.float32) / np.sqrt(model.dimension)

    in_view = set(session.scalars(text("SELECT id FROM searchable_photos")))
    assert in_view == {p for p, s in photos.items() if s.visible(minors_allowed=False)}
    assert len(in_view) == 3  # approved, indexed, public: no minor, or a minor with consent (either way)

    for region, minors_allowed in (("RU", False), (None, False), (FREE, True), (" xf ", True)):
        expected = {p for p, s in photos.items() if s.visible(minors_allowed)}
        found = {hit.photo_id for hit in search_by_vector(session, query, 1000, region)}
        assert found == expected, region
        for photo_id, state in photos.items():
            answer = photo_visibility(session, photo_id, region)
            if state.visible(minors_allowed):
                assert answer == "visible"
            elif state.visible(minors_allowed=True):
                assert answer == "restricted"  # visible but for the minors law
            else:
                assert answer == "hidden"
        source = next(iter(expected))
        assert {hit.photo_id for hit in similar_to_photo(session, source, 1000, region)} == expected - {source}
        hidden = next(p for p in photos if p not in expected)
        assert similar_to_photo(session, hidden, 1000, region) == []
    assert photo_visibility(session, uuid.uuid4(), None) == "missing"


def test_the_rule_is_written_once() -> None:
    """No current definition but photo_is_visible spells out the moderation and minors conditions."""
    from db import sql

    for column in ("moderation_status", "parental_consent", "depicts_minor", "visibility = 'public'"):
        spelled_out = [name for name in sql.names() if column in sql.current(name)[1]]
        assert spelled_out == ["photo_is_visible"], column


# Region values a client may send. None means no region at all.
REGION_INPUTS = [
    None,
    "",
    "   ",
    "XF",
    "xf",
    " xF  ",
    "XF\t",
    "\tXF",
    "XF\n",
    "X F",
    "XF\u00a0",  # no-break space
    "\u200bXF",  # zero-width space
    "ＸＦ",  # full-width letters
    "xı",  # dotless i: upper() in some locales reads it as XI
    "XI",
    "XR",
    " xr",
    "XRR",
    "XF-01",
    "xf-01",
    "XR-ABC",
    "XR-ABCD",
    "XF-",
    "-XF",
    "X",
    "XFRU",
    "*",
    " * ",
    "XF;DROP",
    "x\u0301f",  # combining accent
]


@pytest.mark.parametrize("default_restricted", [True, False])
def test_python_and_sql_read_every_region_value_alike(session: Session, default_restricted: bool) -> None:
    """Where the API accepts a value, SQL normalises it the same and answers the same; where the API refuses
    one, SQL answers "restricted", even when the default rule says otherwise."""
    from db.policy import region_is_restricted, set_region_rule

    set_region_rule(session, "*", minors_restricted=default_restricted)
    set_region_rule(session, FREE, minors_restricted=False)
    set_region_rule(session, "XI", minors_restricted=False)
    set_region_rule(session, "XR", minors_restricted=True)
    answers: dict[str | None, bool] = {}
    for raw in REGION_INPUTS:
        in_sql = session.scalar(text("SELECT region_is_restricted(:r)"), {"r": raw})
        try:
            code = normalise_region(raw)
        except InvalidRegion:
            assert in_sql is True, f"SQL lets {raw!r} through, which the API refuses"
            continue
        assert session.scalar(text("SELECT normalise_region(:r)"), {"r": raw}) == code, raw
        assert in_sql == region_is_restricted(session, code), raw
        answers[raw] = in_sql
    # What the rule means, so that agreement is not agreement on nonsense.
    assert answers == {
        None: default_restricted,
        "": default_restricted,
        "   ": default_restricted,
        "XF": False,
        "xf": False,
        " xF  ": False,
        "XI": False,
        "XR": True,
        " xr": True,
        "XRR": default_restricted,  # an alpha-3 code without a rule of its own
        "XF-01": False,  # a subdivision follows its country
        "xf-01": False,
        "XR-ABC": True,
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("DE\t", "control"),
        ("D\x00E", "control"),
        ("ＤＥ", "ASCII"),
        ("D E", "ISO 3166"),
        ("DEUT", "ISO 3166"),
        ("*", "default rule"),
        ("x" * 100, "..."),
    ],
)
def test_the_normaliser_refuses_what_sql_would_read_differently(value: str, message: str) -> None:
    with pytest.raises(InvalidRegion, match=message):
        normalise_region(value)


def test_rules_are_set_per_country_or_for_the_default() -> None:
    assert normalise_rule_region(" de ") == "DE"
    assert normalise_rule_region("*") == "*"
    assert normalise_rule_region("deu") == "DEU"
    for value in ("US-CA", "", "DE\t", "D"):
        with pytest.raises(InvalidRegion):
            normalise_rule_region(value)


def test_region_rules_are_written_as_sql_reads_them(session: Session) -> None:
    from db.policy import delete_region_rule, region_is_restricted, region_rules, set_region_rule

    set_region_rule(session, " xq ", minors_restricted=False, note="spaces and case")
    assert ("XQ", False, "spaces and case") in region_rules(session)
    assert region_is_restricted(session, "xq") is False
    assert region_is_restricted(session, "XQ-7") is False
    with pytest.raises(InvalidRegion):
        set_region_rule(session, "XQ\t", minors_restricted=False)
    with pytest.raises(ValueError, match="default rule"):
        delete_region_rule(session, " * ")
    assert delete_region_rule(session, "xq ") is True
    assert delete_region_rule(session, "XQ") is False


def test_the_api_refuses_a_region_it_cannot_read(api: TestClient) -> None:
    for params, headers in (
        ({"region": "DE\t"}, {}),
        ({"region": "DE\x00"}, {}),
        ({"region": "ＤＥ"}, {}),
        ({"region": "*"}, {}),
        ({}, {"X-Region": "D E"}),
    ):
        for route in ("/v1/search", f"/v1/photos/{uuid.uuid4()}"):
            response = api.get(route, params={"q": "a red circle", **params}, headers=headers)
            assert response.status_code == 422, (route, params, headers, response.text)
            assert "region" in response.json()["detail"]
    accepted = api.get("/v1/search", params={"q": "a red circle"}, headers={"X-Region": " de "})
    assert accepted.status_code == 200 and accepted.json()["region"] == "DE"
    assert api.get("/v1/search", params={"q": "a red circle", "region": "us-ca"}).json()["region"] == "US-CA"


def test_the_reader_role_cannot_see_past_the_view(services: Services, every_state: EveryState) -> None:
    """A function of the reader's own in a WHERE clause sees only the rows the view shows (security_barrier)."""
    _model, photos = every_state
    visible_titles = {f"state {STATES.index(s)}" for s in photos.values() if s.visible(minors_allowed=False)}
    role = f"catalogue_{uuid.uuid4().hex[:8]}"
    admin_dsn = services.database_url.replace("+psycopg", "")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role}-pw' IN ROLE withsense_reader")
    try:
        with psycopg.connect(services.postgres.dsn_for(role, f"{role}-pw"), autocommit=True) as conn:
            seen: list[str] = []
            conn.add_notice_handler(lambda notice: seen.append(str(notice.message_primary)))
            conn.execute(
                "CREATE FUNCTION pg_temp.peek(t text) RETURNS boolean LANGUAGE plpgsql COST 0.000001 "
                "AS $$ BEGIN RAISE NOTICE '%', t; RETURN true; END $$"
            )
            rows = conn.execute("SELECT title FROM searchable_photos WHERE pg_temp.peek(title)").fetchall()
            assert {r[0] for r in rows} == visible_titles
            assert set(seen) == visible_titles, "the reader's function saw rows the view hides"
            for table in ("photos", "region_rules", "photo_embeddings"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT 1 FROM {table} LIMIT 1")
            assert conn.execute("SELECT normalise_region(' de ')").fetchone() == ("DE",)
            conn.execute("DROP FUNCTION pg_temp.peek(text)")  # before DROP ROLE, which it would block
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def test_search_photos_refuses_a_bad_ef_search_setting(session: Session, every_state: EveryState) -> None:
    model, _photos = every_state
    query = Vector([1.0] + [0.0] * (model.dimension - 1))
    for bad in ("abc", "0", "1001", "-5", "12.5"):
        session.execute(text("SELECT set_config('withsense.ef_search', :v, true)"), {"v": bad})
        with (
            pytest.raises(DBAPIError, match=r"withsense\.ef_search must be an integer from 1 to 1000"),
            session.begin_nested(),
        ):
            session.execute(text("SELECT * FROM search_photos(:q, 5)"), {"q": query}).all()
    from db.search import search_by_vector

    with pytest.raises(ValueError, match="ef_search"):
        search_by_vector(session, np.asarray(query.to_list()), 5, ef_search=0)


def test_search_photos_refuses_bad_exact_path_settings(session: Session, every_state: EveryState) -> None:
    """withsense.exact_below / withsense.exact_scan (migration 0014) are read as search_photos_filtered reads them:
    a value it cannot read is refused with its name, not taken for something else."""
    model, _photos = every_state
    query = Vector([1.0] + [0.0] * (model.dimension - 1))
    for setting, bad, message in (
        ("withsense.exact_below", "many", r"withsense\.exact_below must be a whole number"),
        ("withsense.exact_below", "-1", r"withsense\.exact_below must be a whole number"),
        ("withsense.exact_scan", "sometimes", r"withsense\.exact_scan must be on or off"),
    ):
        with pytest.raises(DBAPIError, match=message), session.begin_nested():
            session.execute(text("SELECT set_config(:s, :v, true)"), {"s": setting, "v": bad})
            session.execute(text("SELECT * FROM search_photos(:q, 5)"), {"q": query}).all()
    answers = []
    for setting, value in (
        ("withsense.exact_scan", "on"),
        ("withsense.exact_scan", "off"),
        ("withsense.exact_below", "0"),
    ):
        with session.begin_nested():
            session.execute(text("SELECT set_config(:s, :v, true)"), {"s": setting, "v": value})
            rows = session.execute(text("SELECT * FROM search_photos(:q, 5)"), {"q": query}).all()
            answers.append([row[0] for row in rows])
            session.execute(text("SELECT set_config(:s, '', true)"), {"s": setting})
    assert answers[0] and answers[0] == answers[1] == answers[2], "each accepted value: the same photos, best first"
