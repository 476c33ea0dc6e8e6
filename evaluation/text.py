"""Query text cleaning: normalisation, exact and near duplicates, uninformative queries.

Flickr-style captions are tokenised with spaces before punctuation ("A dog runs .") and vary
in case and spacing; two query ids can carry the same caption. Training on such copies
counts the same evidence twice, and a query like "a photo ." says nothing about the image.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:)\]}'])")
_WHITESPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"[^\W\d_]+", re.UNICODE)

# Words that carry no visual content in a photo query, on top of the usual English stop words.
QUERY_FILLER_WORDS = frozenset(
    {"photo", "photograph", "picture", "image", "pic", "shot", "thing", "things", "something", "stuff", "view", "scene"}
)
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS) | QUERY_FILLER_WORDS

MIN_TOKENS = 3
MIN_CONTENT_WORDS = 1


def normalise_text(text: str) -> str:
    """Canonical form used for comparison: NFKC, lower case, single spaces, no space before
    punctuation, no trailing full stop."""
    text = unicodedata.normalize("NFKC", text).replace("\u00a0", " ")
    text = _WHITESPACE.sub(" ", text).strip().lower()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.rstrip(" .")


def tokens(text: str) -> list[str]:
    """Alphabetic words of the normalised text (digits and punctuation dropped)."""
    return _TOKEN.findall(normalise_text(text))


def content_words(text: str) -> list[str]:
    """Words that describe something visible: not stop words, not filler like "photo"."""
    return [t for t in tokens(text) if len(t) > 1 and t not in STOP_WORDS]


def uninformative_reason(
    text: str, *, min_tokens: int = MIN_TOKENS, min_content_words: int = MIN_CONTENT_WORDS
) -> str | None:
    """Why a query says too little to rank images by ("too short", "no content words"), or None."""
    words = tokens(text)
    if len(words) < min_tokens:
        return f"too short ({len(words)} word(s) < {min_tokens})"
    if len(content_words(text)) < min_content_words:
        return "no content words"
    return None


@dataclass
class TextCleaningReport:
    """What the cleaning found in one set of queries (one row per query id)."""

    n_queries: int
    # Groups of query ids whose normalised texts are identical (each group has 2+ ids).
    exact_duplicate_groups: list[list[str]] = field(default_factory=list)
    # (first query_id, other query_id) for different normalised texts with the same content words.
    near_duplicate_pairs: list[tuple[str, str]] = field(default_factory=list)
    # query_id -> reason
    uninformative: dict[str, str] = field(default_factory=dict)
    # query_id -> id of the first query of its duplicate cluster (itself if unique)
    canonical: dict[str, str] = field(default_factory=dict)
    normalised: dict[str, str] = field(default_factory=dict)

    @property
    def n_exact_duplicates(self) -> int:
        """Query ids that repeat an earlier query's text exactly (after normalisation)."""
        return sum(len(g) - 1 for g in self.exact_duplicate_groups)

    @property
    def n_duplicates(self) -> int:
        """Query ids folded into an earlier query (exact or near duplicates)."""
        return sum(1 for q, c in self.canonical.items() if q != c)

    def summary(self) -> dict[str, int]:
        return {
            "queries": self.n_queries,
            "exact_duplicate_queries": self.n_exact_duplicates,
            "near_duplicate_pairs": len(self.near_duplicate_pairs),
            "queries_folded_into_a_duplicate": self.n_duplicates,
            "uninformative_queries": len(self.uninformative),
        }


def analyse_queries(
    queries: pd.DataFrame,
    *,
    min_tokens: int = MIN_TOKENS,
    min_content_words: int = MIN_CONTENT_WORDS,
) -> TextCleaningReport:
    """Find exact duplicates, near duplicates and uninformative queries.

    ``queries`` has columns ``query_id`` and ``query_text`` (repeated ids are collapsed).
    Near duplicates are different normalised texts with the same set of content words, up to a
    plural "s" ("a dog runs on grass" / "dogs run on the grass"): they differ only in stop
    words, punctuation, number and word order. Duplicates are clustered transitively; the first query
    id of a cluster is its canonical id.
    """
    unique = queries.drop_duplicates("query_id")[["query_id", "query_text"]]
    ids = [str(q) for q in unique["query_id"]]
    normalised = [normalise_text(str(t)) for t in unique["query_text"]]
    report = TextCleaningReport(n_queries=len(ids), normalised=dict(zip(ids, normalised, strict=True)))

    for query_id, text in zip(ids, unique["query_text"], strict=True):
        reason = uninformative_reason(str(text), min_tokens=min_tokens, min_content_words=min_content_words)
        if reason:
            report.uninformative[query_id] = reason

    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            # The earlier query stays the representative, so "first occurrence wins".
            parent[max(a, b)] = min(a, b)

    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(normalised):
        by_text.setdefault(text, []).append(i)
    for members in by_text.values():
        if len(members) > 1:
            report.exact_duplicate_groups.append([ids[i] for i in members])
            for i in members[1:]:
                union(members[0], i)

    # Near duplicates: different texts with the same content words ("a dog runs on the grass" /
    # "dogs run on grass"). A set key is exact and corpus-independent, unlike a tuned similarity.
    by_key: dict[frozenset[str], list[int]] = {}
    for text, members in by_text.items():
        key = content_key(text)
        if key:
            by_key.setdefault(key, []).append(members[0])
    for firsts in by_key.values():
        for i in firsts[1:]:
            report.near_duplicate_pairs.append((ids[firsts[0]], ids[i]))
            union(firsts[0], i)

    report.canonical = {ids[i]: ids[find(i)] for i in range(len(ids))}
    return report


def _stem(word: str) -> str:
    # Plural and third-person "s" only: enough for "dogs run" ~ "dog runs" without a stemmer's surprises.
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_key(text: str) -> frozenset[str]:
    """The set of content-word stems: equal keys mean the same request in other words."""
    return frozenset(_stem(w) for w in content_words(text))
