"""The partitioning of the vectors (WITHSENSE_EMBEDDING_PARTITIONS): one table or hash partitions of photo id."""

from __future__ import annotations

from dataclasses import dataclass

from db import partitions as partition_sql
from db.engine import session_scope
from services.errors import InvalidRequest

MAX_PARTITIONS = 256


@dataclass(frozen=True)
class Repartitioned:
    before: int
    after: int


def current_partitions() -> int:
    """How many hash partitions photo_embeddings has now (1: a plain table)."""
    with session_scope() as session:
        return partition_sql.embedding_partitions(session)


def repartition(partitions: int) -> Repartitioned:
    """Bring photo_embeddings to `partitions` hash partitions (1: a plain table) in one transaction.

    Searches and writes of vectors wait while it runs: about one HNSW build per model (SCALING.md)."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidRequest(f"partitions must be from 1 to {MAX_PARTITIONS}, got {partitions}")
    with session_scope() as session:
        before = partition_sql.embedding_partitions(session)
        after = partition_sql.repartition_embeddings(session, partitions)
    return Repartitioned(before, after)
