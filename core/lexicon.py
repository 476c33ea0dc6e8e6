"""The dictionaries the content policy consults: is a word real, and what are a Russian lemma's forms?

Fuzzy matching (core/policy.py) reads a word one edit away from a child word as a slip ("chlidren",
"рибенок") unless the word is itself a real word of its language ("chilled", "точка", "Chile"). Real
means: known to pymorphy3's OpenCorpora dictionary (Russian), or at least as frequent as a threshold
in wordfreq's lists (English, and Russian words the dictionary lacks). Both libraries ship their data:
nothing is fetched, nothing is written.

The lists load once per process (about a second), behind a lock; lookups are dictionary reads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Final

__all__ = ["Lexicon", "get_lexicon"]

# wordfreq's "large" lists reach Zipf 1 (one use in a billion words): rare real words (names, brands,
# "детокс", "sprigs") must be found there, or a slip of a child word would take their place.
_WORDLISTS: Final[Mapping[str, str]] = {"en": "large", "ru": "large"}
_WORD_CACHE: Final[int] = 65536


def _is_cyrillic(word: str) -> bool:
    return any("\u0400" <= ch <= "\u04ff" for ch in word)


class Lexicon:
    """Word frequencies (wordfreq) and Russian morphology (pymorphy3), loaded once."""

    def __init__(self) -> None:
        import pymorphy3
        import wordfreq

        self._frequencies = {
            language: wordfreq.get_frequency_dict(language, wordlist=wordlist)
            for language, wordlist in _WORDLISTS.items()
        }
        self._morph = pymorphy3.MorphAnalyzer()
        self._real: dict[tuple[str, float], bool] = {}

    def zipf(self, word: str, language: str) -> float:
        """wordfreq's Zipf frequency of a lower-case word: log10 of uses per billion words, 0 when unseen."""
        frequency = self._frequencies[language].get(word, 0.0)
        return math.log10(frequency) + 9.0 if frequency > 0 else 0.0

    def is_known_russian(self, word: str) -> bool:
        """Whether OpenCorpora lists ``word`` as a form of some word (ё and е read alike)."""
        return bool(self._morph.word_is_known(word))

    def word_zipf(self, word: str) -> float:
        """The Zipf frequency of ``word`` in the language of its script (Russian for Cyrillic, else English)."""
        return self.zipf(word, "ru" if _is_cyrillic(word) else "en")

    def is_real_word(self, word: str, min_zipf: float) -> bool:
        """Whether ``word`` (lower case) is a word of its language: the dictionary knows it or it is common enough."""
        key = (word, min_zipf)
        known = self._real.get(key)
        if known is None:
            known = (_is_cyrillic(word) and self.is_known_russian(word)) or self.word_zipf(word) >= min_zipf
            if len(self._real) >= _WORD_CACHE:
                self._real.clear()  # bounded memory; a lost entry is only recomputed
            self._real[key] = known
        return known

    def russian_lexeme(self, lemma: str) -> tuple[str, ...]:
        """Every noun and full-adjective form the dictionary gives the lemma (no short forms, no comparatives)."""
        forms: dict[str, None] = {}
        for parse in self._morph.parse(lemma):
            if not parse.is_known or parse.normal_form.replace("ё", "е") != lemma.replace("ё", "е"):
                continue
            if parse.tag.POS not in {"NOUN", "ADJF"}:
                continue
            for form in parse.lexeme:
                if form.tag.POS in {"NOUN", "ADJF"}:
                    forms.setdefault(form.word, None)
        return tuple(forms)


_lexicon: Lexicon | None = None
_lock = threading.Lock()


def get_lexicon() -> Lexicon:
    """The process-wide lexicon, loaded on first use."""
    global _lexicon
    if _lexicon is None:
        with _lock:
            if _lexicon is None:
                _lexicon = Lexicon()
    return _lexicon
