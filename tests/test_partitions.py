"""photo_embeddings as hash partitions of photo id (issue 16, item 3): same answers, the rule kept, one query.

The table is rebuilt as 4 partitions and back to one by the product's own function; before and after, the
searches return the exact nearest visible photos (300 photos: the HNSW scan is exact at this size), in a
restricted region and in a free one, through search_photos and search_photos_filtered, for the reader role too.
On the partitioned table the visibility flags still follow the photos at once, new vectors land in their
partition, and a deleted photo's vector goes with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from services.errors import InvalidRequest
from tests.conftest import Services
from tests.vector_catalogue import Catalogue, K, literal, random_catalogue

N = 300
FREE = "XP"


@pytest.fixture()
def catalogue(services: Services) -> Iterator[Catalogue]:
    from services.partitions import repartition

    with random_catalogue(
        services, n=N, seed=3, minor_every=7, minor_at=3, prefix="part/", free_region=FREE
    ) as catalogue:
        try:
            yield catalogue
        finally:
            repartition(1)  # the layout every other test expects


def _searches(cat: Catalogue, query: np.ndarray, region: str) -> dict[str, list[uuid.UUID]]:
    with psycopg.connect(cat.reader_dsn, autocommit=True) as conn:
        # The partitions' merged HNSW scans, not the exact distances a few hundred visible rows would get.
        conn.execute("SET withsense.exact_scan = 'off'")
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


def _check_exact(cat: Catalogue, seeds: range) -> None:
    for seed in seeds:
        query = np.random.default_rng(seed).normal(size=int(cat.vectors.shape[1])).astype(np.float32)
        query /= np.linalg.norm(query)
        for region, restricted in (("RU", True), (FREE, False)):
            want = cat.exact(query, restricted)
            for name, got in _searches(cat, query, region).items():
                assert got == want, f"{name} in {region}, query {seed}"


def _layout(cat: Catalogue) -> tuple[int, int]:
    """(partitions, HNSW indexes on photo_embeddings and its partitions)."""
    with psycopg.connect(cat.admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pg_inherits WHERE inhparent = 'photo_embeddings'::regclass), "
            "(SELECT count(*) FROM pg_indexes i JOIN pg_class c ON c.relname = i.indexname "
            " JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'hnsw' AND i.tablename LIKE 'photo_embeddings%')"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_four_partitions_give_the_same_answers_and_keep_the_rule(catalogue: Catalogue) -> None:
    from services.partitions import current_partitions, repartition

    # One HNSW index per registered model (earlier tests in the session may have registered more than this one).
    models = _layout(catalogue)[1]
    assert current_partitions() == 1 and _layout(catalogue) == (0, models) and models >= 1
    _check_exact(catalogue, range(5))
    assert repartition(4).after == 4 and current_partitions() == 4
    assert _layout(catalogue) == (4, 5 * models)  # per model: the parent's index and one per partition
    _check_exact(catalogue, range(5))

    # The flags follow the photos on the partitioned table, at once.
    index = int(np.flatnonzero(~catalogue.minor)[0])
    photo, vector = catalogue.ids[index], catalogue.vectors[index]
    with psycopg.connect(catalogue.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE photos SET depicts_minor = true WHERE id = %s", (photo,))
    assert photo not in _searches(catalogue, vector, "RU")["search_photos"]
    assert photo in _searches(catalogue, vector, FREE)["search_photos_filtered"]
    with psycopg.connect(catalogue.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE photos SET parental_consent = true WHERE id = %s", (photo,))
    assert photo in _searches(catalogue, vector, "RU")["search_photos"]

    # A new vector lands in its partition with its flags; a deleted photo takes its vector with it.
    with psycopg.connect(catalogue.admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM photo_embeddings WHERE photo_id = %s", (photo,))
        conn.execute(
            "INSERT INTO photo_embeddings (photo_id, model_id, embedding) VALUES (%s, %s, %s::halfvec)",
            (photo, catalogue.model_id, literal(vector)),
        )
        flags = conn.execute(
            "SELECT tableoid::regclass::text, visible_restricted FROM photo_embeddings WHERE photo_id = %s", (photo,)
        ).fetchone()
        assert flags is not None and flags[0].startswith("photo_embeddings_p") and flags[1] is True
        conn.execute("DELETE FROM photos WHERE id = %s", (photo,))
        assert conn.execute("SELECT count(*) FROM photo_embeddings WHERE photo_id = %s", (photo,)).fetchone() == (0,)
    assert photo not in _searches(catalogue, vector, FREE)["search_photos"]

    assert repartition(1).after == 1 and _layout(catalogue) == (0, models)
    assert repartition(1).before == 1  # already so: nothing rebuilt


def test_a_partition_count_out_of_range_is_refused(services: Services) -> None:
    from services.partitions import repartition

    for wrong in (0, -1, 257):
        with pytest.raises(InvalidRequest, match="partitions must be from 1 to 256"):
            repartition(wrong)
