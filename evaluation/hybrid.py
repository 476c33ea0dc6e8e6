"""Keywords fused with CLIP, measured: a synthetic catalogue whose titles, tags and photographers carry facts the
pixels do not (where a photo was taken, who took it), and queries that need the pixels, the words, or both.

Every image is a coloured shape (evaluation/synthetic.py): the model can see "a red circle", never "at Lake
Baikal" or "by Anna Petrova". Each place holds every colour and shape once, so:

- "a red circle at Lake Baikal" has exactly one relevant photo: semantic search finds the red circles (one per
  place) and cannot tell them apart, keyword search finds Lake Baikal's photos and cannot tell them apart;
  only both together put the right one first;
- "Lake Baikal" and "Anna Petrova" (and the Russian "на Байкале") need the words alone;
- "a red circle" needs the pixels alone.

R@5 of a query = |relevant in the top 5| / min(5, |relevant|), averaged per kind and over all queries. The
runner (bench/hybrid_recall.py) indexes the catalogue into a real Postgres and asks the service's own search in
each mode. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.synthetic import COLOURS, SHAPES, SyntheticImage, article, generate

# Where the photos were taken: (English title words, tag, Russian title words for some).
PLACES: tuple[tuple[str, str, str | None], ...] = (
    ("Lake Baikal", "baikal", "Озеро Байкал"),
    ("Olkhon Island", "olkhon", None),
    ("Kamchatka", "kamchatka", "Камчатка"),
    ("Lisbon", "lisbon", None),
    ("Reykjavik", "reykjavik", None),
    ("Kyoto", "kyoto", None),
    ("Patagonia", "patagonia", None),
    ("Zanzibar", "zanzibar", None),
)
PEOPLE: tuple[str, ...] = (
    "Anna Petrova",
    "Ivan Sokolov",
    "Maria Lindqvist",
    "Kenji Watanabe",
    "Lucia Fernandes",
    "Omar Haddad",
)
TITLE_WORDS = ("Morning at", "Evening in", "A day in", "Light over", "Winter in", "Summer at")


@dataclass(frozen=True)
class CatalogueEntry:
    """One synthetic photo and what its words say about it."""

    image: SyntheticImage
    title: str
    tags: tuple[str, ...]
    photographer: str
    place: str  # the place's tag
    description: str | None = None


@dataclass(frozen=True)
class Query:
    text: str
    kind: str  # "pixels and words", "words: place", "words: photographer", "words: Russian", "pixels"
    relevant: frozenset[int]  # indices into the catalogue


def catalogue(seed: int = 2024) -> list[CatalogueEntry]:
    """Every colour and shape once per place (len(COLOURS) x len(SHAPES) x len(PLACES) photos)."""
    per_place = len(COLOURS) * len(SHAPES)
    images = generate(per_place * len(PLACES), seed, templates="heldout")
    entries: list[CatalogueEntry] = []
    for index, image in enumerate(images):
        place_index = index // per_place
        place, tag, russian = PLACES[place_index]
        words = TITLE_WORDS[index % len(TITLE_WORDS)]
        # Every other photo of a place with a Russian name is titled in Russian: keyword search must read both.
        title = russian if russian and index % 2 else f"{words} {place}"
        entries.append(
            CatalogueEntry(
                image=image,
                title=title,
                tags=(tag, "travel"),
                photographer=PEOPLE[(index * 7 + place_index) % len(PEOPLE)],
                place=tag,
            )
        )
    return entries


def queries(entries: Sequence[CatalogueEntry]) -> list[Query]:
    """The query set: every kind, each relevant set computed from the catalogue's truth."""
    found: list[Query] = []
    by_place: dict[str, set[int]] = {}
    by_person: dict[str, set[int]] = {}
    by_look: dict[tuple[str, str], set[int]] = {}
    for index, entry in enumerate(entries):
        by_place.setdefault(entry.place, set()).add(index)
        by_person.setdefault(entry.photographer, set()).add(index)
        by_look.setdefault((entry.image.colour, entry.image.shape), set()).add(index)
    places = {tag: (name, russian) for name, tag, russian in PLACES}
    place_tags = [tag for _, tag, _ in PLACES]
    for number, ((colour, shape), looks) in enumerate(sorted(by_look.items())):
        found.append(Query(f"{article(colour)} {colour} {shape}", "pixels", frozenset(looks)))
        for tag in (place_tags[number % len(place_tags)], place_tags[(number + 3) % len(place_tags)]):
            name = places[tag][0]
            relevant = looks & by_place[tag]
            found.append(
                Query(f"{article(colour)} {colour} {shape} at {name}", "pixels and words", frozenset(relevant))
            )
    for tag, (name, russian) in sorted(places.items()):
        found.append(Query(f"photos from {name}", "words: place", frozenset(by_place[tag])))
        if russian:  # another case of the Russian name than the titles use
            inflected = {"Озеро Байкал": "на озере Байкале", "Камчатка": "вулканы Камчатки"}[russian]
            found.append(Query(inflected, "words: Russian", frozenset(by_place[tag])))
    for person, indices in sorted(by_person.items()):
        found.append(Query(f"by {person}", "words: photographer", frozenset(indices)))
    return found


def recall_at(ranked: Sequence[int], relevant: frozenset[int], k: int = 5) -> float:
    """|relevant in the first k| / min(k, |relevant|): 1.0 when the first k are as good as they can be."""
    if not relevant:
        return float("nan")
    return len(set(ranked[:k]) & relevant) / min(k, len(relevant))


@dataclass(frozen=True)
class ModeRecall:
    mode: str
    overall: float
    by_kind: dict[str, float]
    queries: int


def summarise(mode: str, results: Sequence[tuple[Query, Sequence[int]]], k: int = 5) -> ModeRecall:
    """Mean R@k over all queries and per kind of query."""
    per_kind: dict[str, list[float]] = {}
    scores: list[float] = []
    for query, ranked in results:
        value = recall_at(ranked, query.relevant, k)
        scores.append(value)
        per_kind.setdefault(query.kind, []).append(value)
    return ModeRecall(
        mode=mode,
        overall=float(np.mean(scores)) if scores else float("nan"),
        by_kind={kind: float(np.mean(values)) for kind, values in sorted(per_kind.items())},
        queries=len(scores),
    )


def suggest_floor(relevant: Sequence[float], keep: float = 0.95) -> float:
    """A relevance floor from labelled scores: the highest cosine that keeps `keep` of the relevant pairs."""
    if not len(relevant):
        raise ValueError("no relevant pairs to choose a floor from")
    return float(np.quantile(np.asarray(relevant, dtype=np.float64), 1.0 - keep))
