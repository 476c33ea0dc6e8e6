"""photo_embeddings' layout: one table, or hash partitions of photo_id (db/sql/repartition_photo_embeddings/)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

PARTITIONS_SQL = text(
    "SELECT CASE WHEN c.relkind = 'p' THEN (SELECT count(*) FROM pg_inherits WHERE inhparent = c.oid) ELSE 1 END "
    "FROM pg_class c WHERE c.oid = 'photo_embeddings'::regclass"
)


def embedding_partitions(session: Session) -> int:
    """How many hash partitions photo_embeddings has (1: a plain table)."""
    return int(session.execute(PARTITIONS_SQL).scalar_one())


def repartition_embeddings(session: Session, partitions: int) -> int:
    """Rebuild photo_embeddings as `partitions` hash partitions of photo_id, in the caller's transaction.

    Locks photos against changes and photo_embeddings against everything until the transaction ends, and
    builds each model's HNSW index again (one build per model per partition). Returns the partitions now there.
    """
    return int(session.execute(text("SELECT repartition_photo_embeddings(:n)"), {"n": partitions}).scalar_one())
