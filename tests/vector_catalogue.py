"""A catalogue of random unit vectors on the real stack, for the index-layout tests (partitions, binary index).

`random_catalogue()` fills photos and photo_embeddings with N indexed, approved photos (every `minor_every`-th one,
from `minor_at`, depicting a minor without consent), records a free region, and makes a login in the reader role;
`Catalogue.exact()` is the answer every search must give: the nearest visible photos by the halfvec cosine.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector import HalfVector
from sqlalchemy import text

from tests.conftest import Services

K = 10


@dataclass
class Catalogue:
    model_id: int
    ids: list[uuid.UUID]
    vectors: np.ndarray
    minor: np.ndarray
    admin_dsn: str
    reader_dsn: str

    def exact(self, query: np.ndarray, restricted: bool, k: int = K) -> list[uuid.UUID]:
        stored = self.vectors.astype(np.float16).astype(np.float32)
        asked = query.astype(np.float16).astype(np.float32)
        scores = (stored @ asked) / (np.linalg.norm(stored, axis=1) * np.linalg.norm(asked))
        if restricted:
            scores[self.minor] = -np.inf
        return [self.ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in vector.tolist()) + "]"


@contextmanager
def random_catalogue(
    services: Services,
    *,
    n: int,
    seed: int,
    minor_every: int,
    minor_at: int,
    prefix: str,
    free_region: str,
    tags_sql: str = "'{}'",
    analyze: bool = False,
) -> Iterator[Catalogue]:
    """N photos with random vectors of the registered model; everything is removed afterwards.

    `tags_sql`: an SQL expression of the row number `g` for each photo's tags (default: none)."""
    from db.engine import session_scope
    from db.policy import delete_region_rule, set_region_rule
    from services.indexing import registered_model

    model = registered_model()
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, model.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    minor = np.arange(n) % minor_every == minor_at
    with session_scope() as session:
        session.execute(text("TRUNCATE photos CASCADE"))
        set_region_rule(session, free_region, minors_restricted=False, note="test")
        ids = list(
            session.execute(
                text(
                    "INSERT INTO photos (storage_key, sha256, format, width, height, bytes, status, moderation_status,"
                    f" depicts_minor, title, tags) SELECT :prefix || g, lpad(to_hex(g), 64, '0'), 'JPEG', 800, 600,"
                    f" 1, 'indexed', 'approved', g % :every = :at, 'Photo ' || g, {tags_sql}"
                    " FROM generate_series(0, :n - 1) g ORDER BY g RETURNING id"
                ),
                {"n": n, "prefix": prefix, "every": minor_every, "at": minor_at},
            ).scalars()
        )
        session.execute(
            text("INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (:p, :m, :e)"),
            [{"p": p, "m": model.id, "e": HalfVector(v.tolist())} for p, v in zip(ids, vectors, strict=True)],
        )
        if analyze:
            session.execute(text("ANALYZE photos; ANALYZE photo_embeddings"))
    role = f"{prefix.strip('/')}_{uuid.uuid4().hex[:8]}"
    admin_dsn = services.database_url.replace("+psycopg", "")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role}-pw' IN ROLE withsense_reader")
    try:
        yield Catalogue(model.id, ids, vectors, minor, admin_dsn, services.postgres.dsn_for(role, f"{role}-pw"))
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
        with session_scope() as session:
            session.execute(text("TRUNCATE photos CASCADE"))
            delete_region_rule(session, free_region)
