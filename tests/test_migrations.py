"""Alembic: empty → head → empty → head on a fresh Postgres, and the objects the service relies on exist."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
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
        [(version,)] = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchall()
    assert tuple(int(part) for part in version.split(".")[:2]) >= (0, 8)


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
        [(old,)] = conn.execute(
            "INSERT INTO embedding_models (name, revision, dimension) VALUES ('old', 'r1', 8) RETURNING id"
        ).fetchall()
        conn.execute("SELECT ensure_embedding_index(%s)", (old,))
    assert _hnsw_options(dsn) == {f"ix_photo_embeddings_hnsw_model_{old}": ["ef_construction=64", "m=16"]}

    upgrade(empty_postgres.url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        [(new,)] = conn.execute(
            "INSERT INTO embedding_models (name, revision, dimension) VALUES ('new', 'r2', 512) RETURNING id"
        ).fetchall()
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
