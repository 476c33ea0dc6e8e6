"""Alembic: empty → head → empty → head on a fresh Postgres, and the objects the service relies on exist."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from cli.local_services import LocalPostgres
from migrations.apply import downgrade, upgrade


@pytest.fixture(scope="module")
def empty_postgres() -> Iterator[LocalPostgres]:
    home = Path(tempfile.mkdtemp(prefix="wsm-", dir="/tmp"))
    server = LocalPostgres(home / "pg")
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def _objects(dsn: str) -> dict[str, set[str]]:
    with psycopg.connect(dsn) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        views = {r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
        functions = {
            r[0]
            for r in conn.execute(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "LEFT JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e' "
                "WHERE n.nspname = 'public' AND d.objid IS NULL"
            )
        }
        extensions = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
    return {"tables": tables, "views": views, "functions": functions, "extensions": extensions}


def test_upgrade_downgrade_upgrade_on_empty_database(empty_postgres: LocalPostgres) -> None:
    dsn = empty_postgres.url.replace("+psycopg", "")
    upgrade(empty_postgres.url)
    head = _objects(dsn)
    assert {"photos", "photo_embeddings", "embedding_models", "alembic_version"} <= head["tables"]
    assert "searchable_photos" in head["views"]
    assert {"search_photos", "similar_photos", "ensure_embedding_index"} <= head["functions"]
    assert "vector" in head["extensions"]

    downgrade(empty_postgres.url, "base")
    empty = _objects(dsn)
    assert empty["tables"] <= {"alembic_version"}
    assert not empty["views"]
    assert not empty["functions"]
    assert "vector" not in empty["extensions"]

    upgrade(empty_postgres.url)
    assert _objects(dsn) == head


def test_pgvector_is_new_enough_for_iterative_scans(empty_postgres: LocalPostgres) -> None:
    upgrade(empty_postgres.url)
    with psycopg.connect(empty_postgres.url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert row is not None
    version = row[0]
    assert tuple(int(part) for part in version.split(".")[:2]) >= (0, 8)


def _new_id(conn: psycopg.Connection, query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _hnsw_options(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        return {
            name: sorted(options or [])
            for name, options in conn.execute(
                "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
                "WHERE a.amname = 'hnsw' AND c.relname LIKE 'ix_photo_embeddings_hnsw_model_%'"
            )
        }


def test_hnsw_indexes_move_to_ef_construction_128_and_back(empty_postgres: LocalPostgres) -> None:
    """0005: an index made before it gets the new build setting, new models get it, downgrade restores 64."""
    dsn = empty_postgres.url.replace("+psycopg", "")
    downgrade(empty_postgres.url, "base")
    upgrade(empty_postgres.url, "0004")
    with psycopg.connect(dsn, autocommit=True) as conn:
        old = _new_id(
            conn, "INSERT INTO embedding_models (name, revision, dimension) VALUES ('old', 'r1', 8) RETURNING id"
        )
        conn.execute("SELECT ensure_embedding_index(%s)", (old,))
    assert _hnsw_options(dsn) == {f"ix_photo_embeddings_hnsw_model_{old}": ["ef_construction=64", "m=16"]}

    upgrade(empty_postgres.url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        new = _new_id(
            conn, "INSERT INTO embedding_models (name, revision, dimension) VALUES ('new', 'r2', 512) RETURNING id"
        )
        conn.execute("SELECT ensure_embedding_index(%s)", (new,))
        conn.execute(f"REINDEX INDEX ix_photo_embeddings_hnsw_model_{int(old)}")  # what the operator runs
    assert _hnsw_options(dsn) == {
        f"ix_photo_embeddings_hnsw_model_{old}": ["ef_construction=128", "m=16"],
        f"ix_photo_embeddings_hnsw_model_{new}": ["ef_construction=128", "m=16"],
    }

    downgrade(empty_postgres.url, "0004")
    after = _hnsw_options(dsn)
    assert len(after) == 2 and all(options == ["ef_construction=64", "m=16"] for options in after.values())
    downgrade(empty_postgres.url, "base")
    upgrade(empty_postgres.url)


# The SQL surface as code (db/sql/): what the migrations leave is what the definition files say.


@dataclass(frozen=True)
class Surface:
    """Every function and view of the public schema as the catalogue states it, with who may use it."""

    functions: dict[str, tuple[str, str | None]]  # name(arguments) -> (pg_get_functiondef, ACL)
    views: dict[str, tuple[str, str | None, str | None]]  # name -> (pg_get_viewdef, options, ACL)


def _surface(conn: psycopg.Connection) -> Surface:
    functions = {
        f"{name}({args})": (definition, acl)
        for name, args, definition, acl in conn.execute(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid), p.proacl::text "
            "FROM pg_proc p LEFT JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e' "
            "WHERE p.pronamespace = 'public'::regnamespace AND d.objid IS NULL"
        )
    }
    views = {
        name: (definition, options, acl)
        for name, definition, options, acl in conn.execute(
            "SELECT c.relname, pg_get_viewdef(c.oid), c.reloptions::text, c.relacl::text FROM pg_class c "
            "WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace"
        )
    }
    return Surface(functions, views)


def _reapplied(dsn: str, at: str) -> tuple[Surface, Surface]:
    """The surface as it is, and as it is after running every definition file as of revision `at` again."""
    from db import sql

    with psycopg.connect(dsn) as conn:
        before = _surface(conn)
        for name in sql.names():
            if sql.versions(name)[0] <= at:
                conn.execute(sql.definition(name, at))  # no parameters: the text goes to the server as it is
        after = _surface(conn)
        conn.rollback()
    return before, after


def test_every_function_and_view_is_its_definition_file(empty_postgres: LocalPostgres) -> None:
    """At head the database is exactly the newest definition files; each object has one."""
    from db import sql

    dsn = empty_postgres.url.replace("+psycopg", "")
    upgrade(empty_postgres.url)
    before, after = _reapplied(dsn, "9999")
    assert after == before
    live = {key.split("(")[0] for key in before.functions} | set(before.views)
    assert live == set(sql.names()), "every view and function of the public schema has a folder in db/sql/"


def test_0007_downgrade_restores_0006_exactly_and_keeps_the_readers_grants(empty_postgres: LocalPostgres) -> None:
    dsn = empty_postgres.url.replace("+psycopg", "")
    downgrade(empty_postgres.url, "base")
    upgrade(empty_postgres.url, "0006")
    at_0006, reapplied = _reapplied(dsn, "0006")
    assert reapplied == at_0006, "the files named 0001-0006 are the state those revisions leave"

    upgrade(empty_postgres.url)
    with psycopg.connect(dsn) as conn:
        head = _surface(conn)
    for name in (
        "search_photos(query_embedding vector, k integer, region text)",
        "similar_photos(source_photo_id uuid, k integer, region text)",
        "photo_visibility(p_photo_id uuid, region text)",
        "region_is_restricted(region text)",
    ):
        assert head.functions[name][1] == at_0006.functions[name][1]
        assert "withsense_reader=X/" in (head.functions[name][1] or "")
    assert head.views["searchable_photos"][2] == at_0006.views["searchable_photos"][2]
    assert head.views["searchable_photos"][1] == "{security_barrier=true}"
    for name in ("photo_is_visible(photo photos, minors_allowed boolean)", "normalise_region(region text)"):
        # The reader role may call them (the view uses the first); PUBLIC may not.
        assert head.functions[name][1] == "{postgres=X/postgres,withsense_reader=X/postgres}"

    downgrade(empty_postgres.url, "0006")
    with psycopg.connect(dsn) as conn:
        assert _surface(conn) == at_0006
    upgrade(empty_postgres.url)


def _columns(dsn: str, table: str) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT column_name, data_type, generation_expression FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position",
            (table,),
        ).fetchall()


def test_0008_downgrade_restores_0007_exactly(empty_postgres: LocalPostgres) -> None:
    """Metadata columns, their indexes and the search functions come and go with 0008; the view returns to the
    0007 text with the reader's grant, and the functions 0007 left are untouched."""
    dsn = empty_postgres.url.replace("+psycopg", "")
    downgrade(empty_postgres.url, "base")
    upgrade(empty_postgres.url, "0007")
    with psycopg.connect(dsn) as conn:
        at_0007 = _surface(conn)
    columns_0007 = _columns(dsn, "photos")

    upgrade(empty_postgres.url)
    with psycopg.connect(dsn) as conn:
        head = _surface(conn)
    added = {name for name, *_ in _columns(dsn, "photos")} - {name for name, *_ in columns_0007}
    assert added == {
        "taken_at", "camera", "lens", "description", "tags", "gps_latitude", "gps_longitude", "metadata_read_at",
        "orientation", "search_document",
    }  # fmt: skip
    for name in (
        "search_photos_filtered(query_embedding vector, query_text text, k integer, region text, filters jsonb, "
        "options jsonb)",
        "similar_photos_filtered(source_photo_id uuid, k integer, region text, filters jsonb, options jsonb)",
    ):
        assert "withsense_reader=X/" in (head.functions[name][1] or ""), name
    assert head.functions["search_filter_values(filter_name text, filter_value jsonb)"][1] == "{postgres=X/postgres}"
    assert "taken_at" in head.views["searchable_photos"][0] and "gps" not in head.views["searchable_photos"][0]

    downgrade(empty_postgres.url, "0007")
    with psycopg.connect(dsn) as conn:
        assert _surface(conn) == at_0007
    assert _columns(dsn, "photos") == columns_0007
    upgrade(empty_postgres.url)


def test_definition_files_are_frozen() -> None:
    from db import sql

    assert sql.problems() == []


def test_a_later_definition_never_changes_what_an_older_migration_applies(
    empty_postgres: LocalPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hard rule of db/sql/: a fresh database replays every revision identically, whatever was added since."""
    import shutil

    from db import sql

    dsn = empty_postgres.url.replace("+psycopg", "")
    with psycopg.connect(dsn) as conn:
        head = _surface(conn)

    copy = tmp_path / "sql"
    shutil.copytree(sql.SQL_DIR, copy)
    monkeypatch.setattr(sql, "SQL_DIR", copy)
    monkeypatch.setattr(sql, "MANIFEST", copy / "SHA256SUMS")
    newest = (copy / "search_photos" / "0007.sql").read_text()
    (copy / "search_photos" / "9000.sql").write_text(newest.replace("k must be between", "k (a later text) between"))
    assert sql.freeze() == ["search_photos/9000.sql"]
    assert "a later text" in sql.current("search_photos")[1]
    assert "a later text" not in sql.definition("search_photos", at="0007")

    downgrade(empty_postgres.url, "base")
    upgrade(empty_postgres.url)
    with psycopg.connect(dsn) as conn:
        assert _surface(conn) == head

    # A released file that changes is refused, by the loader and by freeze.
    (copy / "search_photos" / "0007.sql").write_text(newest + "\n-- edited later\n")
    with pytest.raises(sql.DefinitionError, match="changed after it was frozen"):
        sql.definition("search_photos", at="0007")
    with pytest.raises(sql.DefinitionError, match=r"search_photos/0007\.sql"):
        sql.freeze()
    assert sql.problems() == [
        "search_photos/0007.sql: changed after it was frozen (a released definition never changes: add a new version)"
    ]
    with pytest.raises(sql.DefinitionError, match="no definition as of revision 0006"):
        sql.definition("photo_is_visible", at="0006")
